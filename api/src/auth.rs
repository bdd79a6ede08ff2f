//! Scopes and token claims.

use serde::{Deserialize, Serialize};

/// The audience every runner token carries and every runner requires.
pub const AUDIENCE: &str = "bus-containers";

/// A permission a token may carry in its space-separated `scope` claim.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Scope {
    /// Status, list and get runs, read logs.
    Read,
    /// Create runs.
    Run,
    /// Delete runs.
    Delete,
    /// Read the account's plan, usage and limits.
    BillingRead,
    /// List and inspect the account's images, save them, read its builds and their logs.
    ImageRead,
    /// Pull, push, load, tag and remove the account's images.
    ImageWrite,
    /// Start, cancel and delete builds.
    ImageBuild,
}

impl Scope {
    /// Every scope, in the order they are documented.
    pub const ALL: [Scope; 7] = [
        Scope::Read,
        Scope::Run,
        Scope::Delete,
        Scope::BillingRead,
        Scope::ImageRead,
        Scope::ImageWrite,
        Scope::ImageBuild,
    ];

    /// The scope's name on the wire, e.g. `container:read`.
    pub fn as_str(self) -> &'static str {
        match self {
            Scope::Read => "container:read",
            Scope::Run => "container:run",
            Scope::Delete => "container:delete",
            Scope::BillingRead => "billing:read",
            Scope::ImageRead => "image:read",
            Scope::ImageWrite => "image:write",
            Scope::ImageBuild => "image:build",
        }
    }

    /// Parses a scope name; `None` for names this version does not know.
    pub fn parse(name: &str) -> Option<Scope> {
        Scope::ALL.into_iter().find(|s| s.as_str() == name)
    }
}

impl std::fmt::Display for Scope {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The claims of a runner token (a JWT signed with the runner's Ed25519 key).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claims {
    /// The account the token speaks for; the owner of every run it creates.
    pub sub: String,
    /// Who issued the token.
    pub iss: String,
    /// Always [`AUDIENCE`].
    pub aud: String,
    /// Expiry, seconds since the Unix epoch.
    pub exp: i64,
    /// Not valid before, seconds since the Unix epoch.
    pub nbf: i64,
    /// Issued at, seconds since the Unix epoch.
    pub iat: i64,
    /// Space-separated scope names.
    pub scope: String,
    /// Unique token id.
    pub jti: String,
    /// What the account may do beyond its scopes' defaults; absent means no narrowing.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub grant: Option<Grant>,
    /// The run this token was minted for (a run token, given to the run's container as
    /// `BUS_AI_TOKEN`): refused once that run has ended, and never mints other tokens.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub run: Option<String>,
    /// The role a run token acts in (`agent` unless the run named its own).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub role: Option<String>,
    /// The participant a run token acts for, when the run named one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub participant: Option<String>,
}

/// A token's narrowing of what its scopes allow, from the account's configuration.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Grant {
    /// Images runs may use: exact names (`localhost/busybox:latest`), repositories without a
    /// tag or digest (`localhost/busybox`, any tag), or prefixes ending in `*`
    /// (`docker.io/library/*`). Absent means any image.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub images: Option<Vec<String>>,
    /// Whether run output may be streamed (`GET .../logs`); absent means yes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub logs: Option<bool>,
}

impl Grant {
    /// Whether `image` (as the run names it, after profile resolution) is allowed.
    pub fn allows_image(&self, image: &str) -> bool {
        match &self.images {
            None => true,
            Some(allowed) => allowed.iter().any(|pattern| image_matches(pattern, image)),
        }
    }

    /// Whether logs may be streamed.
    pub fn allows_logs(&self) -> bool {
        self.logs.unwrap_or(true)
    }
}

/// Whether `image` matches one allowed-image `pattern`: equal; or `pattern` ends in `*` and
/// `image` starts with the rest; or `pattern` names a repository without tag or digest and
/// `image` is that repository with a tag or digest. Names compare as written (no registry or
/// `library/` normalization).
pub fn image_matches(pattern: &str, image: &str) -> bool {
    if let Some(prefix) = pattern.strip_suffix('*') {
        return image.starts_with(prefix);
    }
    if pattern == image {
        return true;
    }
    let Some(rest) = image.strip_prefix(pattern) else {
        return false;
    };
    let last_segment = pattern.rsplit('/').next().unwrap_or(pattern);
    let pattern_is_bare = !last_segment.contains(':') && !pattern.contains('@');
    pattern_is_bare
        && match rest.as_bytes().first() {
            Some(b'@') => true,
            // A tag (maybe with a digest after it), not a registry port followed by a path.
            Some(b':') => !rest.contains('/'),
            _ => false,
        }
}

/// The longest TTL `POST /api/v1/auth/token` grants, in seconds (24 hours).
pub const MAX_TOKEN_TTL_SECONDS: u64 = 24 * 60 * 60;
/// The TTL `POST /api/v1/auth/token` grants when the request names none (1 hour).
pub const DEFAULT_TOKEN_TTL_SECONDS: u64 = 60 * 60;

/// The body of `POST /api/v1/auth/token` (sent with `Authorization: Bearer <API key>`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct TokenRequest {
    /// Space-separated scope names, a subset of what the account may hold; absent means
    /// every scope the account may hold.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(
        feature = "openapi",
        schema(
            pattern = r"^\s*(container:read|container:run|container:delete|billing:read|image:read|image:write|image:build)(\s+(container:read|container:run|container:delete|billing:read|image:read|image:write|image:build))*\s*$"
        )
    )]
    pub resources: Option<String>,
    /// How long the token lives, in seconds: at most 86400 ([`MAX_TOKEN_TTL_SECONDS`]);
    /// absent means 3600 ([`DEFAULT_TOKEN_TTL_SECONDS`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "openapi", schema(minimum = 1, maximum = 86400))]
    pub ttl_seconds: Option<u64>,
}

/// The reply of `POST /api/v1/auth/token`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct TokenResponse {
    /// The JWT, for `Authorization: Bearer` on every other call.
    pub token: String,
    /// When it expires.
    #[serde(with = "time::serde::rfc3339")]
    pub expires_at: time::OffsetDateTime,
    /// The scopes it carries, space-separated.
    pub scope: String,
}

impl Claims {
    /// The scope names this token claims, in order.
    pub fn scopes(&self) -> impl Iterator<Item = &str> {
        self.scope.split_whitespace()
    }

    /// Whether the token claims `scope`.
    pub fn has(&self, scope: Scope) -> bool {
        self.scopes().any(|s| s == scope.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scopes_round_trip() {
        for scope in Scope::ALL {
            assert_eq!(Scope::parse(scope.as_str()), Some(scope));
        }
        assert_eq!(Scope::parse("billing:read"), Some(Scope::BillingRead));
        assert_eq!(Scope::parse("billing:write"), None);
    }

    #[test]
    fn image_patterns() {
        let yes = [
            ("localhost/busybox:latest", "localhost/busybox:latest"),
            ("localhost/busybox", "localhost/busybox:latest"),
            ("localhost/busybox", "localhost/busybox@sha256:abc"),
            ("localhost/busybox", "localhost/busybox:1@sha256:abc"),
            ("localhost:5000/app", "localhost:5000/app:v1"),
            ("docker.io/library/*", "docker.io/library/alpine:3"),
            ("*", "anything"),
        ];
        for (pattern, image) in yes {
            assert!(
                image_matches(pattern, image),
                "{pattern} should allow {image}"
            );
        }
        let no = [
            ("localhost/busybox:latest", "localhost/busybox:1"),
            ("localhost/busybox", "localhost/busybox-evil:latest"),
            ("localhost/busybox", "localhost/busybox/x:1"),
            ("localhost", "localhost:5000/x"),
            ("busybox", "docker.io/library/busybox"),
            ("docker.io/library/*", "docker.io/other/alpine"),
            ("", "busybox"),
        ];
        for (pattern, image) in no {
            assert!(
                !image_matches(pattern, image),
                "{pattern} should refuse {image}"
            );
        }
    }

    #[test]
    fn grants_default_to_allowing() {
        let open = Grant::default();
        assert!(open.allows_image("x") && open.allows_logs());
        let closed = Grant {
            images: Some(vec!["localhost/busybox".into()]),
            logs: Some(false),
        };
        assert!(closed.allows_image("localhost/busybox:latest"));
        assert!(!closed.allows_image("alpine") && !closed.allows_logs());
    }

    #[test]
    fn claims_without_grant_parse() {
        let c: Claims = serde_json::from_str(
            r#"{"sub":"a","iss":"i","aud":"x","exp":2,"nbf":1,"iat":1,"scope":"container:read","jti":"j"}"#,
        )
        .unwrap();
        assert_eq!(c.grant, None);
        assert!(!serde_json::to_string(&c).unwrap().contains("grant"));
    }
}

//! Where the bearer token comes from, reading it safely, and what it claims.
//!
//! The token is read fresh for each upstream call (a stat and a small read), so a renewed
//! token file takes effect without a restart. Its claims are decoded without verification,
//! only to report identity and expiry; the runner is the one that verifies.

use std::fmt;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use bus_api::auth::Claims;

/// Environment variables that may hold a token, first wins.
pub const TOKEN_ENV_VARS: [&str; 2] = ["BUS_AI_TOKEN", "BUS_API_TOKEN"];

/// Largest token file busd reads.
const MAX_TOKEN_BYTES: u64 = 16 * 1024;

/// Where a token comes from. Never holds the token itself, so it can be logged.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TokenSource {
    /// A file named by `--token-file` or the default location.
    File(PathBuf),
    /// An environment variable of busd's (or, per call, of the CLI's) environment.
    Env(&'static str),
}

impl fmt::Display for TokenSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TokenSource::File(path) => write!(f, "{}", path.display()),
            TokenSource::Env(name) => write!(f, "${name}"),
        }
    }
}

/// A bearer token. Its `Debug` is redacted so it cannot reach a log line by accident.
#[derive(Clone, PartialEq, Eq)]
pub struct Token(String);

impl Token {
    /// Wraps a token string, trimmed of surrounding whitespace.
    pub fn new(raw: &str) -> Self {
        Token(raw.trim().to_owned())
    }

    /// The token, for the `Authorization` header and nothing else.
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// The claims, decoded but NOT verified; `None` when the token is not a JWT.
    pub fn claims(&self) -> Option<Claims> {
        let payload = self.0.split('.').nth(1)?;
        let bytes = URL_SAFE_NO_PAD.decode(payload).ok()?;
        serde_json::from_slice(&bytes).ok()
    }
}

impl fmt::Debug for Token {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Token(<redacted>)")
    }
}

/// Why no usable token could be read.
#[derive(Debug, thiserror::Error)]
pub enum CredentialError {
    /// No source holds a token.
    #[error("no API token found (looked in {looked})")]
    Missing {
        /// The places that were looked at, for the message.
        looked: String,
    },
    /// The token file is readable by other users.
    #[error("the token file {path} is readable by other users (mode {mode:o})")]
    Insecure {
        /// The file.
        path: PathBuf,
        /// Its permission bits.
        mode: u32,
    },
    /// The token file exists but cannot be read.
    #[error("cannot read the token file {path}: {source}")]
    Unreadable {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The source holds something that is not a token.
    #[error("{source_name} does not hold a token ({why})")]
    Malformed {
        /// Where it came from.
        source_name: String,
        /// What is wrong with it (never the content).
        why: &'static str,
    },
    /// The token's `exp` claim has passed (decoded, not verified: the runner would refuse it).
    #[error("the token from {source_name} expired at {expired_at}")]
    Expired {
        /// Where it came from.
        source_name: String,
        /// A token file to name in the renewal command, when the token came from one.
        token_file: Option<PathBuf>,
        /// When it expired, RFC 3339.
        expired_at: String,
        /// The account it was for.
        subject: String,
        /// The scopes it carried, space-separated.
        scopes: String,
    },
}

impl CredentialError {
    /// What the user can do about it.
    pub fn guidance(&self) -> String {
        match self {
            CredentialError::Missing { .. } => "save a token to ~/.config/bus/auth/api-token (mode 0600), \
                 or point --token-file or BUS_AI_TOKEN at one; a local runner mints one with \
                 `bus-runner token --state-dir DIR --account ID --resources \"container:read container:run container:delete\"`"
                .to_owned(),
            CredentialError::Insecure { path, .. } => {
                format!("run `chmod 600 {}` and try again", path.display())
            }
            CredentialError::Unreadable { path, .. } => {
                format!("check that {} exists and is readable by you", path.display())
            }
            CredentialError::Malformed { .. } => {
                "replace it with a token from `bus-runner token` (a JWT: three dot-separated parts)"
                    .to_owned()
            }
            CredentialError::Expired {
                token_file,
                subject,
                scopes,
                ..
            } => {
                let scopes = if scopes.is_empty() {
                    "container:read container:run container:delete"
                } else {
                    scopes
                };
                let file = token_file
                    .as_ref()
                    .map(|p| format!(" --token-file {}", p.display()))
                    .unwrap_or_default();
                let account = if subject.is_empty() { "ID" } else { subject };
                format!(
                    "renew it with `bus auth token --resources \"{scopes}\"{file}` (API key in \
                     BUS_API_KEY), or for a local runner with `bus-runner token --state-dir DIR \
                     --account {account} --resources \"{scopes}\"`"
                )
            }
        }
    }
}

/// Fails with [`CredentialError::Expired`] when the token's (unverified) `exp` is at or before
/// `now`; a token whose claims do not decode is left for the runner to judge.
pub fn check_expiry(
    token: &Token,
    source: &TokenSource,
    now: time::OffsetDateTime,
) -> Result<(), CredentialError> {
    let Some(claims) = token.claims() else {
        return Ok(());
    };
    if claims.exp > now.unix_timestamp() {
        return Ok(());
    }
    let expired_at = time::OffsetDateTime::from_unix_timestamp(claims.exp)
        .ok()
        .and_then(|t| {
            t.format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
        .unwrap_or_else(|| claims.exp.to_string());
    Err(CredentialError::Expired {
        source_name: source.to_string(),
        token_file: match source {
            TokenSource::File(path) => Some(path.clone()),
            TokenSource::Env(_) => None,
        },
        expired_at,
        subject: claims.sub.clone(),
        scopes: claims.scopes().collect::<Vec<_>>().join(" "),
    })
}

/// Resolves the token source: `--token-file` > `BUS_AI_TOKEN` > `BUS_API_TOKEN` > the
/// default file under the config directory.
pub fn resolve_source(
    token_file: Option<&Path>,
    env: impl Fn(&str) -> Option<String>,
    config_dir: &Path,
) -> TokenSource {
    if let Some(path) = token_file {
        return TokenSource::File(path.to_path_buf());
    }
    for name in TOKEN_ENV_VARS {
        if env(name).is_some_and(|v| !v.trim().is_empty()) {
            return TokenSource::Env(name);
        }
    }
    TokenSource::File(default_token_file(config_dir))
}

/// `<config dir>/auth/api-token`.
pub fn default_token_file(config_dir: &Path) -> PathBuf {
    config_dir.join("auth").join("api-token")
}

/// Reads the token from `source`; environment lookups go through `env`.
pub fn load(
    source: &TokenSource,
    env: impl Fn(&str) -> Option<String>,
) -> Result<Token, CredentialError> {
    let token = match source {
        TokenSource::Env(name) => match env(name) {
            Some(value) if !value.trim().is_empty() => Token::new(&value),
            _ => {
                return Err(CredentialError::Missing {
                    looked: format!("${name}"),
                });
            }
        },
        TokenSource::File(path) => read_token_file(path)?,
    };
    check_shape(&token, source)?;
    Ok(token)
}

fn read_token_file(path: &Path) -> Result<Token, CredentialError> {
    let meta = match std::fs::metadata(path) {
        Ok(meta) => meta,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(CredentialError::Missing {
                looked: format!("{}, $BUS_AI_TOKEN, $BUS_API_TOKEN", path.display()),
            });
        }
        Err(source) => {
            return Err(CredentialError::Unreadable {
                path: path.into(),
                source,
            });
        }
    };
    let mode = meta.permissions().mode() & 0o777;
    if mode & 0o077 != 0 {
        return Err(CredentialError::Insecure {
            path: path.into(),
            mode,
        });
    }
    if meta.len() > MAX_TOKEN_BYTES {
        return Err(CredentialError::Malformed {
            source_name: path.display().to_string(),
            why: "the file is larger than any token",
        });
    }
    let text = std::fs::read_to_string(path).map_err(|source| CredentialError::Unreadable {
        path: path.into(),
        source,
    })?;
    if text.trim().is_empty() {
        return Err(CredentialError::Missing {
            looked: format!("{} (empty)", path.display()),
        });
    }
    Ok(Token::new(&text))
}

fn check_shape(token: &Token, source: &TokenSource) -> Result<(), CredentialError> {
    let raw = token.expose();
    let well_formed = raw.split('.').count() == 3
        && raw
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'));
    if well_formed {
        Ok(())
    } else {
        Err(CredentialError::Malformed {
            source_name: source.to_string(),
            why: "not a JWT: expected three dot-separated base64url parts",
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn no_env(_: &str) -> Option<String> {
        None
    }

    const JWT: &str = "eyJhbGciOiJFZERTQSJ9.eyJzdWIiOiJhbGljZSJ9.c2ln";

    #[test]
    fn precedence_is_flag_then_env_then_default_file() {
        let dir = Path::new("/cfg");
        let both = |name: &str| Some(format!("{name}-value"));
        assert_eq!(
            resolve_source(Some(Path::new("/t")), both, dir),
            TokenSource::File("/t".into())
        );
        assert_eq!(
            resolve_source(None, both, dir),
            TokenSource::Env("BUS_AI_TOKEN")
        );
        let api_only = |name: &str| (name == "BUS_API_TOKEN").then(|| "x".to_owned());
        assert_eq!(
            resolve_source(None, api_only, dir),
            TokenSource::Env("BUS_API_TOKEN")
        );
        assert_eq!(
            resolve_source(None, no_env, dir),
            TokenSource::File("/cfg/auth/api-token".into())
        );
    }

    #[test]
    fn group_readable_file_is_refused_with_the_chmod() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tok");
        std::fs::File::create(&path)
            .unwrap()
            .write_all(JWT.as_bytes())
            .unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o640)).unwrap();
        let err = load(&TokenSource::File(path.clone()), no_env).unwrap_err();
        assert!(
            matches!(err, CredentialError::Insecure { mode: 0o640, .. }),
            "{err}"
        );
        assert_eq!(
            err.guidance(),
            format!("run `chmod 600 {}` and try again", path.display())
        );

        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        assert_eq!(
            load(&TokenSource::File(path), no_env).unwrap().expose(),
            JWT
        );
    }

    #[test]
    fn malformed_tokens_are_refused_without_echoing_them() {
        let env = |_: &str| Some("not a token at all".to_owned());
        let err = load(&TokenSource::Env("BUS_AI_TOKEN"), env).unwrap_err();
        assert!(!err.to_string().contains("not a token at all"));
        assert!(matches!(err, CredentialError::Malformed { .. }));
    }

    fn jwt_with(claims: &str) -> Token {
        let payload = URL_SAFE_NO_PAD.encode(claims);
        Token::new(&format!("eyJhbGciOiJFZERTQSJ9.{payload}.c2ln"))
    }

    fn claims_json(exp: i64) -> String {
        format!(
            r#"{{"sub":"alice","iss":"i","aud":"bus-containers","exp":{exp},"nbf":0,"iat":0,"scope":"container:read container:run","jti":"j"}}"#
        )
    }

    #[test]
    fn an_expired_token_is_refused_with_its_expiry_and_the_renewal() {
        let now = time::OffsetDateTime::from_unix_timestamp(2_000_000_000).unwrap();
        let source = TokenSource::File("/home/a/tok".into());
        let fresh = jwt_with(&claims_json(2_000_000_060));
        check_expiry(&fresh, &source, now).unwrap();

        let stale = jwt_with(&claims_json(1_700_000_000));
        let err = check_expiry(&stale, &source, now).unwrap_err();
        assert_eq!(
            err.to_string(),
            "the token from /home/a/tok expired at 2023-11-14T22:13:20Z"
        );
        let guidance = err.guidance();
        assert!(
            guidance.contains(
                "bus auth token --resources \"container:read container:run\" --token-file /home/a/tok"
            ),
            "{guidance}"
        );
        assert!(
            guidance.contains("bus-runner token --state-dir DIR --account alice"),
            "{guidance}"
        );
        assert!(!guidance.contains(stale.expose()) && !err.to_string().contains(stale.expose()));

        // Exactly at exp is expired; a token without decodable claims is the runner's to judge.
        assert!(check_expiry(&jwt_with(&claims_json(2_000_000_000)), &source, now).is_err());
        check_expiry(&Token::new(JWT), &source, now).unwrap();
    }

    #[test]
    fn claims_decode_and_debug_is_redacted() {
        let token = Token::new(&format!("  {JWT}\n"));
        assert_eq!(format!("{token:?}"), "Token(<redacted>)");
        // The payload lacks most claims, so it does not decode as runner Claims.
        assert!(token.claims().is_none());
    }
}

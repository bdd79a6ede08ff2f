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
}

impl Scope {
    /// Every scope, in the order they are documented.
    pub const ALL: [Scope; 3] = [Scope::Read, Scope::Run, Scope::Delete];

    /// The scope's name on the wire, e.g. `container:read`.
    pub fn as_str(self) -> &'static str {
        match self {
            Scope::Read => "container:read",
            Scope::Run => "container:run",
            Scope::Delete => "container:delete",
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

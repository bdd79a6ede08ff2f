//! Where the bearer token comes from, reading it safely, and what it claims.
//!
//! The token file is looked at for each upstream call (a stat), so a renewed token file takes
//! effect on the next call without a restart; a [`TokenCache`] re-reads it only when its
//! metadata changed. Claims are decoded without verification, once per token, only to report
//! identity and expiry; the runner is the one that verifies.

use std::collections::HashMap;
use std::fmt;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, SystemTime};

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

/// A bearer token, cheap to clone; its claims and header value are worked out once. Its
/// `Debug` is redacted so it cannot reach a log line by accident.
#[derive(Clone)]
pub struct Token(Arc<TokenInner>);

struct TokenInner {
    raw: Box<str>,
    claims: OnceLock<Option<Claims>>,
    bearer: OnceLock<Option<reqwest::header::HeaderValue>>,
}

impl Token {
    /// Wraps a token string, trimmed of surrounding whitespace.
    pub fn new(raw: &str) -> Self {
        Token(Arc::new(TokenInner {
            raw: raw.trim().into(),
            claims: OnceLock::new(),
            bearer: OnceLock::new(),
        }))
    }

    /// The token, for the `Authorization` header and nothing else.
    pub fn expose(&self) -> &str {
        &self.0.raw
    }

    /// The claims, decoded (once) but NOT verified; `None` when the token is not a JWT.
    pub fn claims(&self) -> Option<&Claims> {
        self.0
            .claims
            .get_or_init(|| {
                let payload = self.0.raw.split('.').nth(1)?;
                let bytes = URL_SAFE_NO_PAD.decode(payload).ok()?;
                serde_json::from_slice(&bytes).ok()
            })
            .as_ref()
    }

    /// `Bearer <token>` as a sensitive header value; `None` when the token holds bytes a
    /// header cannot (a token that passed the shape check never does).
    pub fn bearer(&self) -> Option<reqwest::header::HeaderValue> {
        self.0
            .bearer
            .get_or_init(|| {
                let mut value =
                    reqwest::header::HeaderValue::from_str(&format!("Bearer {}", self.0.raw))
                        .ok()?;
                value.set_sensitive(true);
                Some(value)
            })
            .clone()
    }
}

impl PartialEq for Token {
    fn eq(&self, other: &Self) -> bool {
        self.0.raw == other.0.raw
    }
}

impl Eq for Token {}

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
            CredentialError::Missing { .. } => "get one with `bus local up` (the local runner) or \
                 `bus auth token` (it reads the account's API key from --api-key-file, BUS_API_KEY \
                 or ~/.config/bus/auth/api-key), which save it to \
                 ~/.config/bus/auth/api-token; or point --token-file or BUS_AI_TOKEN at one"
                .to_owned(),
            CredentialError::Insecure { path, .. } => {
                format!("run `chmod 600 {}` and try again", path.display())
            }
            CredentialError::Unreadable { path, .. } => {
                format!(
                    "check that {} exists and is readable by you",
                    path.display()
                )
            }
            CredentialError::Malformed { .. } => {
                "replace it with a token from `bus auth token` or `bus local up` (a JWT: three \
                 dot-separated parts)"
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
                let key = if subject.is_empty() {
                    "the account's API key".to_owned()
                } else {
                    format!("the API key of the account {subject}")
                };
                format!(
                    "renew it with `bus auth token --resources \"{scopes}\"{file}` ({key} \
                     from --api-key-file, BUS_API_KEY or ~/.config/bus/auth/api-key), or with \
                     `bus local up` for the local runner"
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
    let expired_at =
        bus::timestamp::unix_rfc3339(claims.exp).unwrap_or_else(|| claims.exp.to_string());
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

/// Tokens already read and checked, so an unchanged source is not read and decoded again on
/// every call: a file's token is kept with the file's metadata (device, inode, length, mtime,
/// ctime, mode) and re-read when any of it differs; a token given as a value (an environment
/// variable, a caller's token) is kept per distinct value. A file modified less than
/// [`RACY_WINDOW`] before it was read is not kept, since a rewrite in the same clock tick
/// with the same length and inode could leave its metadata unchanged.
#[derive(Default)]
pub struct TokenCache {
    files: Mutex<HashMap<PathBuf, (FileStamp, Token)>>,
    values: Mutex<HashMap<Box<str>, Token>>,
    file_reads: AtomicU64,
}

/// How recently modified a token file may be and still be read afresh on every call.
pub const RACY_WINDOW: Duration = Duration::from_secs(2);

/// Most distinct token values kept; past it the cache of values starts over.
const MAX_CACHED_VALUES: usize = 64;

/// What identifies one version of a token file's content and permissions.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct FileStamp {
    dev: u64,
    ino: u64,
    len: u64,
    mtime: (i64, i64),
    ctime: (i64, i64),
    mode: u32,
}

impl FileStamp {
    fn of(meta: &std::fs::Metadata) -> Self {
        FileStamp {
            dev: meta.dev(),
            ino: meta.ino(),
            len: meta.len(),
            mtime: (meta.mtime(), meta.mtime_nsec()),
            ctime: (meta.ctime(), meta.ctime_nsec()),
            mode: meta.mode(),
        }
    }
}

impl TokenCache {
    /// Like [`load`], reusing the token of an unchanged file or a value seen before.
    pub fn load(
        &self,
        source: &TokenSource,
        env: impl Fn(&str) -> Option<String>,
    ) -> Result<Token, CredentialError> {
        match source {
            TokenSource::Env(name) => match env(name) {
                Some(value) if !value.trim().is_empty() => self.value(&value, source),
                _ => Err(CredentialError::Missing {
                    looked: format!("${name}"),
                }),
            },
            TokenSource::File(path) => self.file(path, source),
        }
    }

    /// How many times a token file was read (for tests and diagnostics).
    pub fn file_reads(&self) -> u64 {
        self.file_reads.load(Ordering::Relaxed)
    }

    fn value(&self, value: &str, source: &TokenSource) -> Result<Token, CredentialError> {
        let value = value.trim();
        let mut values = self.values.lock().expect("token cache lock poisoned");
        if let Some(token) = values.get(value) {
            return Ok(token.clone());
        }
        let token = Token::new(value);
        check_shape(&token, source)?;
        if values.len() >= MAX_CACHED_VALUES {
            values.clear();
        }
        values.insert(value.into(), token.clone());
        Ok(token)
    }

    fn file(&self, path: &Path, source: &TokenSource) -> Result<Token, CredentialError> {
        let meta = file_metadata(path)?;
        let stamp = FileStamp::of(&meta);
        let kept = self
            .files
            .lock()
            .expect("token cache lock poisoned")
            .get(path)
            .filter(|(kept, _)| *kept == stamp)
            .map(|(_, token)| token.clone());
        if let Some(token) = kept {
            return Ok(token);
        }
        self.file_reads.fetch_add(1, Ordering::Relaxed);
        let token = read_checked_file(path, &meta)?;
        check_shape(&token, source)?;
        let mut files = self.files.lock().expect("token cache lock poisoned");
        let settled = meta
            .modified()
            .ok()
            .and_then(|modified| SystemTime::now().duration_since(modified).ok())
            .is_some_and(|age| age >= RACY_WINDOW);
        if settled {
            if files.len() >= MAX_CACHED_VALUES {
                files.clear();
            }
            files.insert(path.to_path_buf(), (stamp, token.clone()));
        } else {
            files.remove(path);
        }
        Ok(token)
    }
}

fn read_token_file(path: &Path) -> Result<Token, CredentialError> {
    let meta = file_metadata(path)?;
    read_checked_file(path, &meta)
}

fn file_metadata(path: &Path) -> Result<std::fs::Metadata, CredentialError> {
    match std::fs::metadata(path) {
        Ok(meta) => Ok(meta),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Err(CredentialError::Missing {
            looked: format!("{}, $BUS_AI_TOKEN, $BUS_API_TOKEN", path.display()),
        }),
        Err(source) => Err(CredentialError::Unreadable {
            path: path.into(),
            source,
        }),
    }
}

fn read_checked_file(path: &Path, meta: &std::fs::Metadata) -> Result<Token, CredentialError> {
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
    let bytes = std::fs::read(path).map_err(|source| CredentialError::Unreadable {
        path: path.into(),
        source,
    })?;
    let text = String::from_utf8(bytes).map_err(|_| CredentialError::Malformed {
        source_name: path.display().to_string(),
        why: "not UTF-8 text",
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
    use std::os::unix::fs::OpenOptionsExt;

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
        assert!(guidance.contains("`bus local up`"), "{guidance}");
        assert!(!guidance.contains("bus-runner"), "{guidance}");
        assert!(!guidance.contains(stale.expose()) && !err.to_string().contains(stale.expose()));

        // Exactly at exp is expired; a token without decodable claims is the runner's to judge.
        assert!(check_expiry(&jwt_with(&claims_json(2_000_000_000)), &source, now).is_err());
        check_expiry(&Token::new(JWT), &source, now).unwrap();
    }

    /// Writes `content` to `path` (0600) in place, with its mtime set to `mtime`.
    fn write_settled(path: &Path, content: &str, mtime: SystemTime) {
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(path)
            .unwrap();
        file.write_all(content.as_bytes()).unwrap();
        file.set_modified(mtime).unwrap();
    }

    #[test]
    fn an_unchanged_file_is_read_once_and_a_rewrite_is_picked_up_at_once() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tok");
        let source = TokenSource::File(path.clone());
        let cache = TokenCache::default();
        let old = SystemTime::now() - Duration::from_secs(3600);
        write_settled(&path, JWT, old);
        for _ in 0..3 {
            assert_eq!(cache.load(&source, no_env).unwrap().expose(), JWT);
        }
        assert_eq!(cache.file_reads(), 1, "an unchanged file is read once");

        // Rewritten in place, a different length, the very same mtime: picked up.
        let longer = "eyJhbGciOiJFZERTQSJ9.eyJzdWIiOiJib2IifQ.c2lnMg";
        write_settled(&path, longer, old);
        assert_eq!(cache.load(&source, no_env).unwrap().expose(), longer);
        assert_eq!(cache.file_reads(), 2);

        // Replaced by rename with the same length and mtime: a new inode, picked up.
        let same_len = "eyJhbGciOiJFZERTQSJ9.eyJzdWIiOiJldmUifQ.c2lnMw";
        assert_eq!(same_len.len(), longer.len());
        let staged = dir.path().join("tok.new");
        write_settled(&staged, same_len, old);
        std::fs::rename(&staged, &path).unwrap();
        assert_eq!(cache.load(&source, no_env).unwrap().expose(), same_len);

        // Made readable by others: refused at once, not served from the cache.
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        assert!(matches!(
            cache.load(&source, no_env),
            Err(CredentialError::Insecure { .. })
        ));
        std::fs::remove_file(&path).unwrap();
        assert!(matches!(
            cache.load(&source, no_env),
            Err(CredentialError::Missing { .. })
        ));
    }

    #[test]
    fn a_file_written_just_now_is_read_on_every_call() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tok");
        write_settled(&path, JWT, SystemTime::now());
        let cache = TokenCache::default();
        let source = TokenSource::File(path);
        cache.load(&source, no_env).unwrap();
        cache.load(&source, no_env).unwrap();
        assert_eq!(cache.file_reads(), 2);
    }

    #[test]
    fn token_values_are_checked_once_per_value() {
        let cache = TokenCache::default();
        let source = TokenSource::Env("BUS_AI_TOKEN");
        let first = cache.load(&source, |_| Some(format!(" {JWT}\n"))).unwrap();
        let again = cache.load(&source, |_| Some(JWT.to_owned())).unwrap();
        assert!(Arc::ptr_eq(&first.0, &again.0), "the same value is reused");
        let err = cache
            .load(&source, |_| Some("not a token".to_owned()))
            .unwrap_err();
        assert!(matches!(err, CredentialError::Malformed { .. }));
        assert!(matches!(
            cache.load(&source, |_| None),
            Err(CredentialError::Missing { .. })
        ));
    }

    #[test]
    fn the_bearer_header_is_sensitive() {
        let bearer = Token::new(JWT).bearer().unwrap();
        assert!(bearer.is_sensitive());
        assert_eq!(bearer.to_str().unwrap(), format!("Bearer {JWT}"));
    }

    #[test]
    fn claims_decode_and_debug_is_redacted() {
        let token = Token::new(&format!("  {JWT}\n"));
        assert_eq!(format!("{token:?}"), "Token(<redacted>)");
        // The payload lacks most claims, so it does not decode as runner Claims.
        assert!(token.claims().is_none());
    }
}

//! Tokens: the runner's Ed25519 signing key, minting JWTs, and verifying them on every request;
//! the scopes a token request names.
//!
//! The key lives in the state dir as `signing-key.pk8` (PKCS#8 DER, mode 0600), generated on
//! first use. Tokens are EdDSA JWTs with [`Claims`]; nothing else is accepted (no `alg: none`,
//! no HMAC, so a token signed with HS256 using the public key as the secret is refused). The
//! token itself never reaches a message or a log line.
//! Checking a request's bearer token is the HTTP layer's ([`crate::http::auth`]).

use std::fs;
use std::io::{self, Write as _};
use std::os::unix::fs::{DirBuilderExt as _, OpenOptionsExt as _, PermissionsExt as _};
use std::path::{Path, PathBuf};
use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use bus_api::auth::{AUDIENCE, Claims, Grant, Scope};
use ed25519_dalek::SigningKey;
use ed25519_dalek::pkcs8::{DecodePrivateKey as _, EncodePrivateKey as _};
use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use time::OffsetDateTime;

use crate::util::rfc3339;
pub use crate::util::{random_bytes, sha256, to_hex};

/// The `iss` of every token a runner mints and requires.
pub const ISSUER: &str = "bus-runner";
/// The signing key's file name inside the state dir.
pub const KEY_FILE: &str = "signing-key.pk8";
/// How far past `exp` (or before `nbf`) a token is still accepted, for clock skew.
pub const LEEWAY_SECONDS: i64 = 5;
/// The longest TTL `mint` accepts.
pub const MAX_TTL: Duration = Duration::from_secs(366 * 24 * 60 * 60);

/// A token is refused; the text says why (and never holds the token).
#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    /// Malformed, signed by another key, for another audience or issuer, not yet valid.
    #[error("{0}")]
    Invalid(String),
    /// Its `exp` has passed.
    #[error("the token expired at {}", rfc3339(*.at))]
    Expired {
        /// When it expired.
        at: OffsetDateTime,
    },
}

/// The signing key cannot be loaded or created.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    /// A filesystem operation failed.
    #[error("cannot {action} {path}: {source}")]
    Io {
        /// What was being done.
        action: &'static str,
        /// The file or directory.
        path: PathBuf,
        /// Why it failed.
        source: io::Error,
    },
    /// The key file is readable by group or others.
    #[error(
        "the signing key {path} is accessible to other users (mode {mode:o}); run `chmod 600 {path}`"
    )]
    Exposed {
        /// The key file.
        path: PathBuf,
        /// Its permission bits.
        mode: u32,
    },
    /// The key file is not a PKCS#8 Ed25519 key.
    #[error(
        "the signing key {path} is not a PKCS#8 Ed25519 key; move it away to generate a new one"
    )]
    Malformed {
        /// The key file.
        path: PathBuf,
    },
    /// The system has no randomness to offer.
    #[error("cannot get random bytes from the system: {0}")]
    Random(getrandom::Error),
}

/// The runner's signing and verifying keys.
#[derive(Clone)]
pub struct Keys {
    encoding: EncodingKey,
    decoding: DecodingKey,
    public: [u8; 32],
}

impl std::fmt::Debug for Keys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Keys(..)")
    }
}

impl Keys {
    /// Loads the state dir's signing key, generating it (and the dir, 0700) on first use.
    pub fn load_or_create(state_dir: &Path) -> Result<Keys, KeyError> {
        let io = |action, path: &Path| {
            let path = path.to_owned();
            move |source| KeyError::Io {
                action,
                path,
                source,
            }
        };
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(state_dir)
            .map_err(io("create the state dir", state_dir))?;
        let path = state_dir.join(KEY_FILE);
        match fs::metadata(&path) {
            Ok(meta) => {
                let mode = meta.permissions().mode() & 0o777;
                if mode & 0o077 != 0 {
                    return Err(KeyError::Exposed { path, mode });
                }
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                Self::create_key_file(&path)?;
            }
            Err(e) => return Err(io("read", &path)(e)),
        }
        let der = fs::read(&path).map_err(io("read", &path))?;
        let key = SigningKey::from_pkcs8_der(&der).map_err(|_| KeyError::Malformed { path })?;
        Ok(Keys::from_signing_key(&key))
    }

    /// Writes a fresh key to `path` atomically; if another process won the race, keeps theirs.
    fn create_key_file(path: &Path) -> Result<(), KeyError> {
        let seed = random_bytes::<32>().map_err(KeyError::Random)?;
        let key = SigningKey::from_bytes(&seed);
        let der = key.to_pkcs8_der().map_err(|_| KeyError::Malformed {
            path: path.to_owned(),
        })?;
        let suffix = to_hex(&random_bytes::<8>().map_err(KeyError::Random)?);
        let tmp = path.with_extension(format!("tmp-{suffix}"));
        let io = |action, p: &Path| {
            let p = p.to_owned();
            move |source| KeyError::Io {
                action,
                path: p,
                source,
            }
        };
        let mut file = fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&tmp)
            .map_err(io("create", &tmp))?;
        file.write_all(der.as_bytes())
            .and_then(|()| file.sync_all())
            .map_err(io("write", &tmp))?;
        drop(file);
        // A hard link is atomic and refuses to replace: the first key written wins.
        let linked = fs::hard_link(&tmp, path);
        let _ = fs::remove_file(&tmp);
        match linked {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Ok(()),
            Err(e) => Err(io("create", path)(e)),
        }
    }

    /// Keys from an Ed25519 signing key.
    pub fn from_signing_key(key: &SigningKey) -> Keys {
        let der = key
            .to_pkcs8_der()
            .expect("an Ed25519 key always encodes as PKCS#8");
        let x = URL_SAFE_NO_PAD.encode(key.verifying_key().to_bytes());
        Keys {
            encoding: EncodingKey::from_ed_der(der.as_bytes()),
            decoding: DecodingKey::from_ed_components(&x)
                .expect("base64url of 32 bytes always decodes"),
            public: key.verifying_key().to_bytes(),
        }
    }

    /// The public (verifying) key's 32 bytes. Not a secret; tests use it to forge tokens
    /// that must be refused.
    pub fn public_key(&self) -> [u8; 32] {
        self.public
    }

    /// Mints a token for `account` with `scopes` and `grant`, valid for `ttl` from now;
    /// returns it with its claims.
    pub fn mint_with_grant(
        &self,
        account: &str,
        scopes: &[Scope],
        ttl: Duration,
        grant: Option<Grant>,
    ) -> (String, Claims) {
        let now = OffsetDateTime::now_utc().unix_timestamp();
        let ttl = i64::try_from(ttl.as_secs()).unwrap_or(i64::MAX);
        let mut c = claims(account, scopes, now, now.saturating_add(ttl));
        c.grant = grant;
        (self.sign(&c), c)
    }

    /// Mints a token for `account` with `scopes`, valid for `ttl` from now.
    pub fn mint(&self, account: &str, scopes: &[Scope], ttl: Duration) -> String {
        let now = OffsetDateTime::now_utc().unix_timestamp();
        let ttl = i64::try_from(ttl.as_secs()).unwrap_or(i64::MAX);
        self.sign(&claims(account, scopes, now, now.saturating_add(ttl)))
    }

    /// Mints a token that expired an hour ago (for tests of expiry handling).
    pub fn mint_expired(&self, account: &str, scopes: &[Scope]) -> String {
        let now = OffsetDateTime::now_utc().unix_timestamp();
        let mut c = claims(account, scopes, now - 7200, now - 3600);
        c.iat = now - 7200;
        self.sign(&c)
    }

    /// Signs arbitrary claims.
    pub fn sign(&self, claims: &Claims) -> String {
        jsonwebtoken::encode(&Header::new(Algorithm::EdDSA), claims, &self.encoding)
            .expect("signing with a well-formed Ed25519 key cannot fail")
    }

    /// Verifies a token: EdDSA only, signature, `aud`, `iss`, `exp` and `nbf` (with
    /// [`LEEWAY_SECONDS`]).
    pub fn verify(&self, token: &str) -> Result<Claims, TokenError> {
        check_algorithm(token)?;
        let mut validation = Validation::new(Algorithm::EdDSA);
        validation.set_audience(&[AUDIENCE]);
        validation.set_issuer(&[ISSUER]);
        validation.set_required_spec_claims(&["exp", "nbf", "aud", "iss", "sub"]);
        // Time is checked below, to say when the token expired.
        validation.validate_exp = false;
        validation.validate_nbf = false;
        let data = jsonwebtoken::decode::<Claims>(token, &self.decoding, &validation)
            .map_err(|e| TokenError::Invalid(invalid_reason(e.kind())))?;
        let claims = data.claims;
        let now = OffsetDateTime::now_utc().unix_timestamp();
        if now > claims.exp.saturating_add(LEEWAY_SECONDS) {
            let at = OffsetDateTime::from_unix_timestamp(claims.exp)
                .unwrap_or(OffsetDateTime::UNIX_EPOCH);
            return Err(TokenError::Expired { at });
        }
        if claims.nbf > now.saturating_add(LEEWAY_SECONDS) {
            let at = OffsetDateTime::from_unix_timestamp(claims.nbf)
                .map(rfc3339)
                .unwrap_or_else(|_| claims.nbf.to_string());
            return Err(TokenError::Invalid(format!(
                "the token is not valid before {at}"
            )));
        }
        if claims.sub.trim().is_empty() {
            return Err(TokenError::Invalid(
                "the token names no account (`sub`)".to_owned(),
            ));
        }
        Ok(claims)
    }
}

/// Refuses tokens whose header names another algorithm than EdDSA, with a message that says so.
fn check_algorithm(token: &str) -> Result<(), TokenError> {
    let malformed = || TokenError::Invalid("the token is malformed: it is not a JWT".to_owned());
    let header = token.split('.').next().ok_or_else(malformed)?;
    let bytes = URL_SAFE_NO_PAD
        .decode(header.trim_end_matches('='))
        .map_err(|_| malformed())?;
    let value: serde_json::Value = serde_json::from_slice(&bytes).map_err(|_| malformed())?;
    match value.get("alg").and_then(|a| a.as_str()) {
        Some("EdDSA") => Ok(()),
        Some(alg) => Err(TokenError::Invalid(format!(
            "the token's algorithm \"{}\" is not accepted; this runner only accepts EdDSA",
            alg.escape_debug()
        ))),
        None => Err(TokenError::Invalid(
            "the token's header names no algorithm".to_owned(),
        )),
    }
}

fn invalid_reason(kind: &ErrorKind) -> String {
    match kind {
        ErrorKind::InvalidSignature => {
            "the token's signature does not verify with this runner's key: \
                                         it was issued by another deployment or altered"
                .to_owned()
        }
        ErrorKind::InvalidAudience => {
            format!("the token is for another service: its audience is not \"{AUDIENCE}\"")
        }
        ErrorKind::InvalidIssuer => {
            format!("the token was not issued by a bus runner: its issuer is not \"{ISSUER}\"")
        }
        // A time claim that is not a whole number of seconds since 1970 counts as missing.
        ErrorKind::MissingRequiredClaim(claim) if claim == "exp" || claim == "nbf" => {
            format!("the token's `{claim}` claim is missing or not a time in seconds since 1970")
        }
        ErrorKind::MissingRequiredClaim(claim) => format!("the token lacks the `{claim}` claim"),
        ErrorKind::InvalidClaimFormat(claim) => format!("the token's `{claim}` claim is malformed"),
        ErrorKind::Json(_) => "the token's claims are not the ones this runner issues".to_owned(),
        ErrorKind::InvalidAlgorithm
        | ErrorKind::InvalidAlgorithmName
        | ErrorKind::MissingAlgorithm => {
            "the token's algorithm is not accepted; this runner only accepts EdDSA".to_owned()
        }
        _ => "the token is malformed: it is not a JWT".to_owned(),
    }
}

/// The claims of a new token.
pub fn claims(account: &str, scopes: &[Scope], now: i64, exp: i64) -> Claims {
    let jti = random_bytes::<16>().map(|b| to_hex(&b)).unwrap_or_default();
    Claims {
        sub: account.to_owned(),
        iss: ISSUER.to_owned(),
        aud: AUDIENCE.to_owned(),
        exp,
        nbf: now,
        iat: now,
        scope: scopes
            .iter()
            .map(|s| s.as_str())
            .collect::<Vec<_>>()
            .join(" "),
        jti,
        grant: None,
        run: None,
        role: None,
        participant: None,
    }
}

/// Parses space-separated scope names; unknown names are refused with the valid ones listed.
pub fn parse_scopes(text: &str) -> Result<Vec<Scope>, String> {
    let mut scopes = Vec::new();
    for name in text.split_whitespace() {
        let scope = Scope::parse(name).ok_or_else(|| {
            let valid: Vec<&str> = Scope::ALL.iter().map(|s| s.as_str()).collect();
            format!(
                "unknown resource \"{name}\"; valid resources: {}",
                valid.join(", ")
            )
        })?;
        if !scopes.contains(&scope) {
            scopes.push(scope);
        }
    }
    if scopes.is_empty() {
        return Err(
            "name at least one resource, e.g. --resources \"container:read container:run\""
                .to_owned(),
        );
    }
    Ok(scopes)
}

/// Parses a TTL such as `30s`, `15m`, `1h` or `2d`; zero, negative and huge TTLs are refused.
pub fn parse_ttl(text: &str) -> Result<Duration, String> {
    let usage = "write the TTL as a positive number with a unit, like 30s, 15m, 1h or 2d";
    let text = text.trim();
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (digits, unit) = text.split_at(split);
    if digits.is_empty() {
        return Err(format!("invalid TTL \"{text}\": {usage}"));
    }
    let n: u64 = digits
        .parse()
        .map_err(|_| format!("invalid TTL \"{text}\": {usage}"))?;
    let unit_secs = match unit {
        "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86400,
        _ => return Err(format!("invalid TTL \"{text}\": {usage}")),
    };
    if n == 0 {
        return Err(format!("invalid TTL \"{text}\": {usage}"));
    }
    let ttl = n
        .checked_mul(unit_secs)
        .map(Duration::from_secs)
        .unwrap_or(Duration::MAX);
    if ttl > MAX_TTL {
        return Err(format!(
            "the TTL \"{text}\" is longer than the 366 days a token may live"
        ));
    }
    Ok(ttl)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// Keys in a fresh state dir (removed with the returned guard).
    pub(crate) fn keys() -> (tempfile::TempDir, Keys) {
        let dir = tempfile::tempdir().unwrap();
        let keys = Keys::load_or_create(&dir.path().join("state")).unwrap();
        (dir, keys)
    }

    #[test]
    fn round_trip() {
        let (_d, k) = keys();
        let token = k.mint(
            "acct-1",
            &[Scope::Read, Scope::Run],
            Duration::from_secs(60),
        );
        let c = k.verify(&token).unwrap();
        assert_eq!(c.sub, "acct-1");
        assert_eq!(c.aud, AUDIENCE);
        assert_eq!(c.iss, ISSUER);
        assert!(c.has(Scope::Read) && c.has(Scope::Run) && !c.has(Scope::Delete));
        assert_eq!(c.exp - c.iat, 60);
    }

    #[test]
    fn key_file_is_private_and_reused() {
        let dir = tempfile::tempdir().unwrap();
        let state = dir.path().join("state");
        let k1 = Keys::load_or_create(&state).unwrap();
        let mode = |p: &Path| fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&state), 0o700);
        assert_eq!(mode(&state.join(KEY_FILE)), 0o600);
        let k2 = Keys::load_or_create(&state).unwrap();
        let token = k1.mint("a", &[Scope::Read], Duration::from_secs(60));
        assert!(
            k2.verify(&token).is_ok(),
            "the second load reads the same key"
        );
        assert_eq!(
            fs::read_dir(&state).unwrap().count(),
            1,
            "no temp files left"
        );

        fs::set_permissions(state.join(KEY_FILE), fs::Permissions::from_mode(0o644)).unwrap();
        let err = Keys::load_or_create(&state).unwrap_err();
        assert!(err.to_string().contains("chmod 600"), "{err}");
    }

    #[test]
    fn expired() {
        let (_d, k) = keys();
        let token = k.mint_expired("a", &[Scope::Read]);
        let err = k.verify(&token).unwrap_err();
        let detail = err.to_string();
        assert!(matches!(err, TokenError::Expired { .. }), "{err:?}");
        assert!(detail.starts_with("the token expired at 20"), "{detail}");
    }

    #[test]
    fn wrong_key() {
        let (_d1, k1) = keys();
        let (_d2, k2) = keys();
        let token = k1.mint("a", &[Scope::Read], Duration::from_secs(60));
        let err = k2.verify(&token).unwrap_err();
        assert!(
            err.to_string().contains("another deployment"),
            "{}",
            err.to_string()
        );
        assert!(matches!(err, TokenError::Invalid(_)), "{err:?}");
    }

    #[test]
    fn wrong_audience_and_issuer() {
        let (_d, k) = keys();
        let now = OffsetDateTime::now_utc().unix_timestamp();
        let mut c = claims("a", &[Scope::Read], now, now + 60);
        c.aud = "someone-else".into();
        let err = k.verify(&k.sign(&c)).unwrap_err();
        assert!(err.to_string().contains("audience"), "{}", err.to_string());
        assert!(matches!(err, TokenError::Invalid(_)), "{err:?}");

        let mut c = claims("a", &[Scope::Read], now, now + 60);
        c.iss = "mallory".into();
        let err = k.verify(&k.sign(&c)).unwrap_err();
        assert!(err.to_string().contains("issuer"), "{}", err.to_string());
    }

    #[test]
    fn not_yet_valid() {
        let (_d, k) = keys();
        let now = OffsetDateTime::now_utc().unix_timestamp();
        let mut c = claims("a", &[Scope::Read], now, now + 7200);
        c.nbf = now + 3600;
        let err = k.verify(&k.sign(&c)).unwrap_err();
        assert!(
            err.to_string().contains("not valid before"),
            "{}",
            err.to_string()
        );
    }

    /// Found by fuzzing: a signed token with a negative `nbf` was refused as lacking the
    /// claim; the refusal stays, and now says what is wrong.
    #[test]
    fn a_time_before_1970_is_refused_as_not_a_time() {
        let (_d, k) = keys();
        let now = OffsetDateTime::now_utc().unix_timestamp();
        let mut c = claims("a", &[Scope::Read], now, now + 60);
        c.nbf = -1;
        let err = k.verify(&k.sign(&c)).unwrap_err();
        let detail = err.to_string();
        assert!(matches!(err, TokenError::Invalid(_)), "{err:?}");
        assert_eq!(
            detail,
            "the token's `nbf` claim is missing or not a time in seconds since 1970"
        );
    }

    #[test]
    fn alg_none_and_hmac_refused() {
        let (_d, k) = keys();
        let token = k.mint("a", &[Scope::Read], Duration::from_secs(60));
        let payload = token.split('.').nth(1).unwrap();
        for alg in ["none", "HS256"] {
            let header = URL_SAFE_NO_PAD.encode(format!(r#"{{"alg":"{alg}","typ":"JWT"}}"#));
            let forged = format!("{header}.{payload}.");
            let err = k.verify(&forged).unwrap_err();
            let detail = err.to_string();
            assert!(matches!(err, TokenError::Invalid(_)), "{err:?}");
            assert!(
                detail.contains(&format!("\"{alg}\" is not accepted")),
                "{detail}"
            );
        }
    }

    /// Algorithm confusion: an HS256 token whose HMAC secret is the public key, in every form
    /// an attacker might guess (raw, base64url, hex), is refused even though its MAC is valid.
    #[test]
    fn hs256_with_the_public_key_as_secret_refused() {
        let (_d, k) = keys();
        let now = OffsetDateTime::now_utc().unix_timestamp();
        let c = claims("mallory", &Scope::ALL, now, now + 60);
        let public = k.public_key();
        let secrets = [
            public.to_vec(),
            URL_SAFE_NO_PAD.encode(public).into_bytes(),
            to_hex(&public).into_bytes(),
        ];
        for secret in secrets {
            let forged = jsonwebtoken::encode(
                &Header::new(Algorithm::HS256),
                &c,
                &EncodingKey::from_secret(&secret),
            )
            .unwrap();
            let err = k.verify(&forged).unwrap_err();
            let detail = err.to_string();
            assert!(matches!(err, TokenError::Invalid(_)), "{err:?}");
            assert!(detail.contains("\"HS256\" is not accepted"), "{detail}");
        }
    }

    #[test]
    fn grants_ride_in_the_token() {
        let (_d, k) = keys();
        let grant = Grant {
            images: Some(vec!["localhost/busybox".into()]),
            logs: Some(false),
        };
        let (token, c) = k.mint_with_grant(
            "a",
            &[Scope::Run],
            Duration::from_secs(60),
            Some(grant.clone()),
        );
        assert_eq!(c.grant.as_ref(), Some(&grant));
        assert_eq!(k.verify(&token).unwrap().grant, Some(grant));
    }

    #[test]
    fn tampered_payload_refused() {
        let (_d, k) = keys();
        let token = k.mint("a", &[Scope::Read], Duration::from_secs(60));
        let mut parts: Vec<String> = token.split('.').map(str::to_owned).collect();
        let mut c: Claims =
            serde_json::from_slice(&URL_SAFE_NO_PAD.decode(&parts[1]).unwrap()).unwrap();
        c.sub = "b".into();
        c.scope = "container:read container:run container:delete".into();
        parts[1] = URL_SAFE_NO_PAD.encode(serde_json::to_vec(&c).unwrap());
        let err = k.verify(&parts.join(".")).unwrap_err();
        assert!(err.to_string().contains("signature"), "{}", err.to_string());
        assert!(matches!(k.verify("not-a-jwt"), Err(TokenError::Invalid(_))));
    }

    #[test]
    fn scopes_parse() {
        assert_eq!(
            parse_scopes("container:read  container:run container:read").unwrap(),
            [Scope::Read, Scope::Run]
        );
        assert_eq!(parse_scopes("billing:read").unwrap(), [Scope::BillingRead]);
        let err = parse_scopes("container:read billing:write").unwrap_err();
        assert_eq!(
            err,
            "unknown resource \"billing:write\"; valid resources: container:read, container:run, container:delete, billing:read, image:read, image:write, image:build"
        );
        assert!(parse_scopes(" ").is_err());
    }

    #[test]
    fn ttl_parse() {
        assert_eq!(parse_ttl("30s").unwrap(), Duration::from_secs(30));
        assert_eq!(parse_ttl("15m").unwrap(), Duration::from_secs(900));
        assert_eq!(parse_ttl("1h").unwrap(), Duration::from_secs(3600));
        assert_eq!(parse_ttl("2d").unwrap(), Duration::from_secs(172_800));
        for bad in [
            "0h",
            "-1h",
            "1",
            "h",
            "1w",
            "1.5h",
            "",
            "99999999999999999999d",
            "400d",
        ] {
            assert!(parse_ttl(bad).is_err(), "{bad}");
        }
    }
}

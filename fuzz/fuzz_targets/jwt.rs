//! Tokens: the runner's verification (`bus_runner::http::auth::authorize`, `Keys::verify`) and
//! busd's unverified decoding of the same token (`busd::credentials::Token::claims`,
//! `check_expiry`).
//!
//! Properties: no header the fuzzer writes is accepted without the runner's signature; a
//! signed token is accepted only with `alg` EdDSA, this runner's audience and issuer, a
//! subject, and times that hold, and then yields exactly the claims that were signed — the
//! same claims busd decodes, so busd shows the identity the runner verifies; a well-formed,
//! in-date token is accepted; any change to a signed token's text is refused; refusals never
//! repeat the token.

#![no_main]

use std::sync::OnceLock;

use arbitrary::Arbitrary;
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use bus_api::auth::{AUDIENCE, Claims, Grant, Scope};
use bus_runner::auth::{ISSUER, Keys, LEEWAY_SECONDS};
use bus_runner::http::auth::authorize;
use busd::credentials::{Token, TokenSource, check_expiry};
use ed25519_dalek::{Signer as _, SigningKey};
use libfuzzer_sys::fuzz_target;
use time::OffsetDateTime;

fn signing_key() -> &'static (SigningKey, Keys) {
    static KEYS: OnceLock<(SigningKey, Keys)> = OnceLock::new();
    KEYS.get_or_init(|| {
        let key = SigningKey::from_bytes(&[7; 32]);
        let keys = Keys::from_signing_key(&key);
        (key, keys)
    })
}

#[derive(Arbitrary, Debug)]
enum Input {
    /// Any `Authorization` header.
    Header(Vec<u8>),
    /// A token signed with the runner's key.
    Signed {
        header: HeaderChoice,
        payload: PayloadChoice,
        tamper: Tamper,
    },
}

#[derive(Arbitrary, Debug)]
enum HeaderChoice {
    EdDsa,
    EdDsaJwt,
    Alg(String),
    Raw(String),
}

#[derive(Arbitrary, Debug)]
enum PayloadChoice {
    Claims(FuzzClaims),
    Raw(String),
}

#[derive(Arbitrary, Debug)]
struct FuzzClaims {
    sub: String,
    iss: Option<String>,
    aud: Option<String>,
    /// Seconds from now.
    exp: i32,
    nbf: i32,
    scope: String,
    jti: String,
    images: Option<Vec<String>>,
    logs: Option<bool>,
    /// A run token's claims.
    run: Option<String>,
    role: Option<String>,
    participant: Option<String>,
}

#[derive(Arbitrary, Debug)]
enum Tamper {
    None,
    /// XOR a byte of the token's text (at the index modulo its length).
    Flip(u16, u8),
    /// Append to one of the three parts.
    Append(u8, String),
}

fn header_json(choice: &HeaderChoice) -> String {
    match choice {
        HeaderChoice::EdDsa => r#"{"alg":"EdDSA"}"#.to_owned(),
        HeaderChoice::EdDsaJwt => r#"{"typ":"JWT","alg":"EdDSA"}"#.to_owned(),
        HeaderChoice::Alg(alg) => serde_json::json!({ "alg": alg, "typ": "JWT" }).to_string(),
        HeaderChoice::Raw(raw) => raw.clone(),
    }
}

fn check_refusal(detail: &str, token: &str) {
    assert!(!detail.is_empty() && !detail.contains('\n'), "{detail:?}");
    if token.len() >= 16 {
        assert!(!detail.contains(token), "the detail repeats the token");
    }
}

/// busd's view of a token must never panic, whatever it holds.
fn busd_reads(token: &str) -> Option<Claims> {
    let token = Token::new(token);
    let source = TokenSource::Env("BUS_AI_TOKEN");
    let _ = check_expiry(&token, &source, OffsetDateTime::now_utc());
    token.claims().cloned()
}

fuzz_target!(|input: Input| {
    let (key, keys) = signing_key();
    match input {
        Input::Header(value) => {
            let refused = authorize(keys, Some(&value), Scope::Read)
                .expect_err("nothing unsigned is accepted");
            let text = String::from_utf8_lossy(&value);
            check_refusal(&refused.problem().detail, text.trim());
            busd_reads(&text);
        }
        Input::Signed {
            header,
            payload,
            tamper,
        } => {
            let now = OffsetDateTime::now_utc().unix_timestamp();
            let (payload_json, expected) = match &payload {
                PayloadChoice::Raw(raw) => (raw.clone(), None),
                PayloadChoice::Claims(c) => {
                    let claims = Claims {
                        sub: c.sub.clone(),
                        iss: c.iss.clone().unwrap_or_else(|| ISSUER.to_owned()),
                        aud: c.aud.clone().unwrap_or_else(|| AUDIENCE.to_owned()),
                        exp: now + i64::from(c.exp),
                        nbf: now + i64::from(c.nbf),
                        iat: now,
                        scope: c.scope.clone(),
                        jti: c.jti.clone(),
                        grant: (c.images.is_some() || c.logs.is_some()).then(|| Grant {
                            images: c.images.clone(),
                            logs: c.logs,
                        }),
                        run: c.run.clone(),
                        role: c.role.clone(),
                        participant: c.participant.clone(),
                    };
                    (serde_json::to_string(&claims).unwrap(), Some(claims))
                }
            };
            let signing_input = format!(
                "{}.{}",
                URL_SAFE_NO_PAD.encode(header_json(&header)),
                URL_SAFE_NO_PAD.encode(&payload_json)
            );
            let signature = key.sign(signing_input.as_bytes());
            let token = format!(
                "{signing_input}.{}",
                URL_SAFE_NO_PAD.encode(signature.to_bytes())
            );
            let sent = match &tamper {
                Tamper::None => token.clone(),
                Tamper::Flip(at, xor) => {
                    let mut bytes = token.clone().into_bytes();
                    let at = usize::from(*at) % bytes.len();
                    bytes[at] ^= xor;
                    String::from_utf8_lossy(&bytes).into_owned()
                }
                Tamper::Append(part, extra) => {
                    let mut parts: Vec<String> = token.split('.').map(str::to_owned).collect();
                    parts[usize::from(*part) % 3].push_str(extra);
                    parts.join(".")
                }
            };
            let changed = sent != token;
            let verified = keys.verify(&sent);
            let busd = busd_reads(&sent);
            match verified {
                Ok(claims) => {
                    assert!(!changed, "a changed token was accepted: {sent:?}");
                    let header: serde_json::Value =
                        serde_json::from_str(&header_json(&header)).expect("the header parsed");
                    assert_eq!(header["alg"], "EdDSA");
                    assert_eq!(claims.aud, AUDIENCE);
                    assert_eq!(claims.iss, ISSUER);
                    assert!(!claims.sub.trim().is_empty());
                    let now = OffsetDateTime::now_utc().unix_timestamp();
                    assert!(
                        claims.exp + LEEWAY_SECONDS + 2 >= now,
                        "expired yet accepted"
                    );
                    assert!(
                        claims.nbf <= now + LEEWAY_SECONDS,
                        "not yet valid yet accepted"
                    );
                    let signed: Claims = serde_json::from_str(&payload_json).unwrap();
                    assert_eq!(claims, signed, "the claims are the ones signed");
                    assert_eq!(
                        busd.as_ref(),
                        Some(&claims),
                        "busd decodes what the runner verified"
                    );
                }
                Err(refused) => {
                    check_refusal(&refused.to_string(), &sent);
                    // A good token, unchanged, with times clear of the edges, must pass.
                    let clear = |delta: i32| {
                        (i64::from(delta) - LEEWAY_SECONDS).abs() > 3
                            && (i64::from(delta) + LEEWAY_SECONDS).abs() > 3
                    };
                    if let (
                        Some(c),
                        PayloadChoice::Claims(f),
                        HeaderChoice::EdDsa | HeaderChoice::EdDsaJwt,
                    ) = (&expected, &payload, &header)
                    {
                        let good = !changed
                            && c.aud == AUDIENCE
                            && c.iss == ISSUER
                            && !c.sub.trim().is_empty()
                            && f.exp > 0
                            && f.nbf <= 0
                            && c.nbf >= 0
                            && clear(f.exp)
                            && clear(f.nbf);
                        assert!(!good, "a good token was refused: {:?}", refused.to_string());
                    }
                }
            }
        }
    }
});

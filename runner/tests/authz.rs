//! Accounts, authorization and billing: token exchange, the authorization matrix of every
//! endpoint, grants, billing and quotas — against a real Podman engine where a run is needed.

mod common;

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use axum::Router;
use axum::http::{Method, StatusCode, header};
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use bus_api::auth::{Claims, Scope};
use bus_runner::AppState;
use bus_runner::auth::{self, Keys};
use bus_runner::config::Config;
use bus_runner::engine::Engine;
use common::{Cleanup, Podman, Reply, call, create_run, follow, get_run};
use serde_json::{Value, json};
use time::OffsetDateTime;

const RUNS: &str = "/api/v1/containers/runs";
const TOKEN: &str = "/api/v1/auth/token";
const BILLING: &str = "/api/v1/billing/status";
const EVERY: &str =
    "container:read container:run container:delete billing:read image:read image:write image:build";
const GHOST: &str = "run_00000000000000000000000000000000";

/// Accounts (id, API key, plan, extra TOML lines). Ids are unique to this file, so containers
/// can be counted by their owner label while other tests share the engine's storage.
const ACCOUNTS: &[(&str, &str, &str, &str)] = &[
    ("authz-alice", "key-alice", "local", ""),
    ("authz-bob", "key-bob", "local", ""),
    (
        "authz-reader",
        "key-reader",
        "local",
        "resources = \"container:read\"\n",
    ),
    (
        "authz-payer",
        "key-payer",
        "local",
        "billing = \"required\"\n",
    ),
    ("authz-solo", "key-solo", "solo", ""),
    ("authz-meter", "key-meter", "meter", ""),
    ("authz-ledger", "key-ledger", "ledger", ""),
    (
        "authz-narrow",
        "key-narrow",
        "local",
        "images = [\"localhost/busybox\", \"docker.io/library/*\"]\nlogs = false\n",
    ),
];

fn config_text() -> String {
    let mut text = String::from(
        "[plans.solo]\nmax_concurrent_runs = 1\n\n\
         [plans.meter]\nrun_seconds_per_period = 1\nperiod = \"1d\"\n\n\
         [plans.ledger]\nrun_seconds_per_period = 2\nperiod = \"366d\"\n",
    );
    for (id, key, plan, extra) in ACCOUNTS {
        let hash = auth::to_hex(&auth::sha256(key.as_bytes()));
        let resources = if extra.contains("resources") {
            String::new()
        } else {
            format!("resources = \"{EVERY}\"\n")
        };
        text.push_str(&format!(
            "\n[[accounts]]\nid = \"{id}\"\napi_key_sha256 = \"{hash}\"\nplan = \"{plan}\"\n{resources}{extra}"
        ));
    }
    text
}

/// A runner with `config` on `engine_url`, its state in `dir`.
fn runner_in(dir: &Path, engine_url: &str, config: Config) -> (Keys, Router) {
    let keys = Keys::load_or_create(&dir.join("state")).unwrap();
    let engine = Engine::connect(engine_url).unwrap();
    let app = bus_runner::app(AppState::new(keys.clone(), config, engine));
    (keys, app)
}

/// A runner with the accounts above on a real engine.
fn accounts_runner(engine_url: &str) -> (tempfile::TempDir, Keys, Router) {
    let dir = tempfile::tempdir().unwrap();
    let config = Config::parse(&config_text()).unwrap();
    let (keys, app) = runner_in(dir.path(), engine_url, config);
    (dir, keys, app)
}

/// A runner whose engine is never called: its "socket" is an ordinary file.
fn runner_without_engine(config: Config) -> (tempfile::TempDir, Keys, Router) {
    let dir = tempfile::tempdir().unwrap();
    let fake = dir.path().join("no-engine.sock");
    std::fs::write(&fake, b"").unwrap();
    let (keys, app) = runner_in(dir.path(), &format!("unix://{}", fake.display()), config);
    (dir, keys, app)
}

/// Exchanges `key` for a token with `resources` (asserting success).
async fn exchange(app: &Router, key: &str, resources: &str) -> String {
    let reply = call(
        app,
        Method::POST,
        TOKEN,
        Some(key),
        Some(json!({"resources": resources, "ttl_seconds": 600})),
    )
    .await;
    assert_eq!(reply.status, StatusCode::OK, "{}", text(&reply));
    reply.json()["token"].as_str().unwrap().to_owned()
}

fn text(reply: &Reply) -> String {
    String::from_utf8_lossy(&reply.body).into_owned()
}

fn claims_of(token: &str) -> Claims {
    let payload = token.split('.').nth(1).unwrap();
    serde_json::from_slice(&URL_SAFE_NO_PAD.decode(payload).unwrap()).unwrap()
}

fn assert_problem(reply: &Reply, status: StatusCode, code: &str, context: &str) {
    assert_eq!(
        (reply.status, reply.problem_code().as_str()),
        (status, code),
        "{context}: {}",
        text(reply)
    );
}

/// Containers the engine holds for `owner` (by the runner's owner label).
fn containers_of(podman: &Podman, owner: &str) -> usize {
    let out = Command::new("podman")
        .arg("--url")
        .arg(podman.url())
        .args(["ps", "-a", "-q", "--filter"])
        .arg(format!("label=bus.owner={owner}"))
        .stderr(Stdio::inherit())
        .output()
        .unwrap();
    assert!(out.status.success(), "podman ps failed");
    String::from_utf8_lossy(&out.stdout).lines().count()
}

/// Creates a run as `token`, asserting 201; returns its id.
async fn create(app: &Router, token: &str, body: Value) -> String {
    create_run(app, token, body).await["id"]
        .as_str()
        .unwrap()
        .to_owned()
}

/// Waits until the run's container exists and runs (state `running`), at most 30 s.
async fn wait_running(app: &Router, token: &str, id: &str) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        let reply = get_run(app, token, id).await;
        if reply.json()["state"] == "running" {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "run {id} never ran: {}",
            text(&reply)
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}

/// Follows a run's logs to its end.
async fn wait_ended(app: &Router, token: &str, id: &str) {
    assert!(
        matches!(
            follow(app, token, id).await.last(),
            Some(bus_api::LogFrame::Exit { .. })
        ),
        "the follow ends with the exit frame"
    );
}

#[tokio::test]
async fn token_exchange() {
    let (_dir, keys, app) = runner_without_engine(Config::parse(&config_text()).unwrap());

    // A good key: a token for the key's account with exactly the subset asked for.
    let before = OffsetDateTime::now_utc().unix_timestamp();
    let reply = call(
        &app,
        Method::POST,
        TOKEN,
        Some("key-alice"),
        Some(json!({"resources": "container:run container:read", "ttl_seconds": 120})),
    )
    .await;
    assert_eq!(reply.status, StatusCode::OK, "{}", text(&reply));
    assert_eq!(reply.headers[header::CACHE_CONTROL], "no-store");
    let body = reply.json();
    assert_eq!(body["scope"], "container:run container:read");
    let token = body["token"].as_str().unwrap();
    let claims = keys.verify(token).unwrap();
    assert_eq!(claims.sub, "authz-alice");
    assert_eq!(claims.scope, "container:run container:read");
    assert_eq!(claims.exp - claims.iat, 120);
    assert!(claims.iat >= before);
    assert_eq!(claims.grant, None, "alice's account has no grant");
    let expires = OffsetDateTime::parse(
        body["expires_at"].as_str().unwrap(),
        &time::format_description::well_known::Rfc3339,
    )
    .unwrap();
    assert_eq!(expires.unix_timestamp(), claims.exp);

    // Default TTL one hour; 24 h is the most.
    let reply = call(
        &app,
        Method::POST,
        TOKEN,
        Some("key-alice"),
        Some(json!({"resources": "billing:read"})),
    )
    .await;
    let claims = keys
        .verify(reply.json()["token"].as_str().unwrap())
        .unwrap();
    assert_eq!(claims.exp - claims.iat, 3600);
    let reply = call(
        &app,
        Method::POST,
        TOKEN,
        Some("key-alice"),
        Some(json!({"resources": "billing:read", "ttl_seconds": 86400})),
    )
    .await;
    assert_eq!(reply.status, StatusCode::OK);
    for ttl in [0, 86401, u64::MAX] {
        let reply = call(
            &app,
            Method::POST,
            TOKEN,
            Some("key-alice"),
            Some(json!({"resources": "billing:read", "ttl_seconds": ttl})),
        )
        .await;
        assert_problem(&reply, StatusCode::BAD_REQUEST, "invalid_request", "ttl");
        assert!(
            text(&reply).contains("between 1 and 86400"),
            "{}",
            text(&reply)
        );
    }

    // The grant rides along when the account has one.
    let token = exchange(&app, "key-narrow", "container:run container:read").await;
    let grant = keys.verify(&token).unwrap().grant.unwrap();
    assert_eq!(
        grant.images.unwrap(),
        ["localhost/busybox", "docker.io/library/*"]
    );
    assert_eq!(grant.logs, Some(false));

    // Without `resources`: every scope the account may hold, and no more.
    for (key, scope) in [("key-reader", "container:read"), ("key-alice", EVERY)] {
        let reply = call(&app, Method::POST, TOKEN, Some(key), Some(json!({}))).await;
        assert_eq!(reply.status, StatusCode::OK, "{}", text(&reply));
        assert_eq!(reply.json()["scope"], scope, "{key}");
    }

    // Over-asking names what the account may not hold; unknown resources are a 400.
    let reply = call(
        &app,
        Method::POST,
        TOKEN,
        Some("key-reader"),
        Some(json!({"resources": "container:read container:run billing:read"})),
    )
    .await;
    assert_problem(
        &reply,
        StatusCode::FORBIDDEN,
        "scope_not_allowed",
        "over-asking",
    );
    let problem = reply.json();
    assert_eq!(
        problem["detail"],
        "this account may not hold `container:run`, `billing:read`; it may hold: container:read"
    );
    assert!(problem["guidance"].as_str().unwrap().contains("subset"));
    for (body, needle) in [
        (
            json!({"resources": "container:read container:fly"}),
            "container:fly",
        ),
        (json!({"resources": "  "}), "at least one resource"),
        (
            json!({"resources": "container:read", "account": "x"}),
            "account",
        ),
    ] {
        let reply = call(
            &app,
            Method::POST,
            TOKEN,
            Some("key-alice"),
            Some(body.clone()),
        )
        .await;
        assert_problem(
            &reply,
            StatusCode::BAD_REQUEST,
            "invalid_request",
            &body.to_string(),
        );
        assert!(text(&reply).contains(needle), "{body}: {}", text(&reply));
    }

    // Bad keys: 401 with guidance and a challenge; a token is not a key.
    let good_token = exchange(&app, "key-alice", "container:read").await;
    for (key, needle) in [
        (Some("key-alicE"), "matches no account"),
        (Some("key-alice "), ""), // trimmed like every bearer value: still alice
        (None, "needs the account's API key"),
        (Some(good_token.as_str()), "this is a token, not an API key"),
    ] {
        let reply = call(
            &app,
            Method::POST,
            TOKEN,
            key,
            Some(json!({"resources": "container:read"})),
        )
        .await;
        if needle.is_empty() {
            assert_eq!(reply.status, StatusCode::OK);
            continue;
        }
        assert_problem(&reply, StatusCode::UNAUTHORIZED, "api_key_invalid", needle);
        let problem = reply.json();
        assert!(
            problem["detail"].as_str().unwrap().contains(needle),
            "{problem}"
        );
        assert!(
            problem["guidance"]
                .as_str()
                .unwrap()
                .contains("bus-runner hash-key"),
            "{problem}"
        );
        assert!(reply.headers.contains_key(header::WWW_AUTHENTICATE));
        assert!(
            !text(&reply).contains("key-alic"),
            "the key is never echoed"
        );
    }
    // A bad key is refused before the body is looked at.
    let reply = call(
        &app,
        Method::POST,
        TOKEN,
        Some("nope"),
        Some(json!({"x": 1})),
    )
    .await;
    assert_problem(
        &reply,
        StatusCode::UNAUTHORIZED,
        "api_key_invalid",
        "bad key, bad body",
    );

    // Without accounts, no key works, and the reply says why.
    let (_d2, _k2, bare) = runner_without_engine(Config::builtin());
    let reply = call(
        &bare,
        Method::POST,
        TOKEN,
        Some("key-alice"),
        Some(json!({"resources": "container:read"})),
    )
    .await;
    assert_problem(
        &reply,
        StatusCode::UNAUTHORIZED,
        "api_key_invalid",
        "no accounts",
    );
    assert!(text(&reply).contains("no accounts configured"));
}

#[tokio::test]
async fn billing_status_reports_plan_usage_and_limits() {
    let (_dir, keys, app) = runner_without_engine(Config::parse(&config_text()).unwrap());
    let alice = exchange(&app, "key-alice", "billing:read").await;
    let reply = call(&app, Method::GET, BILLING, Some(&alice), None).await;
    assert_eq!(reply.status, StatusCode::OK, "{}", text(&reply));
    let status = reply.json();
    assert_eq!(status["account"], "authz-alice");
    assert_eq!(status["plan"], "local");
    assert_eq!(status["billing"], "active");
    assert_eq!(
        status["usage"],
        json!({"run_seconds": 0, "concurrent_runs": 0})
    );
    assert_eq!(status["limits"], json!({"period_seconds": 30 * 86400}));
    assert!(status.get("guidance_url").is_none(), "{status}");
    let start = OffsetDateTime::parse(
        status["period_start"].as_str().unwrap(),
        &time::format_description::well_known::Rfc3339,
    )
    .unwrap();
    let end = OffsetDateTime::parse(
        status["period_end"].as_str().unwrap(),
        &time::format_description::well_known::Rfc3339,
    )
    .unwrap();
    let now = OffsetDateTime::now_utc();
    assert!(start <= now && now < end && (end - start).whole_days() == 30);

    let payer = exchange(&app, "key-payer", "billing:read").await;
    let status = call(&app, Method::GET, BILLING, Some(&payer), None)
        .await
        .json();
    assert_eq!(status["billing"], "required");
    assert_eq!(status["guidance_url"], "https://bus.dev/billing/setup");

    let meter = exchange(&app, "key-meter", "billing:read").await;
    let status = call(&app, Method::GET, BILLING, Some(&meter), None)
        .await
        .json();
    assert_eq!(status["plan"], "meter");
    assert_eq!(
        status["limits"],
        json!({"run_seconds_per_period": 1, "period_seconds": 86400})
    );

    // An account the config does not list (a token from `bus-runner token`) is on `local`.
    let local = keys.mint(
        "someone-local",
        &[Scope::BillingRead],
        Duration::from_secs(60),
    );
    let status = call(&app, Method::GET, BILLING, Some(&local), None)
        .await
        .json();
    assert_eq!(
        (status["plan"].as_str(), status["billing"].as_str()),
        (Some("local"), Some("active"))
    );

    let reader = keys.mint("authz-alice", &[Scope::Read], Duration::from_secs(60));
    let reply = call(&app, Method::GET, BILLING, Some(&reader), None).await;
    assert_problem(
        &reply,
        StatusCode::FORBIDDEN,
        "scope_missing",
        "no billing:read",
    );
    assert!(text(&reply).contains("billing:read"));
}

/// Who presents what.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Who {
    Owner,
    Other,
    NoToken,
    Expired,
    NotYetValid,
    BadSignature,
    AlgNone,
    Hs256Confusion,
    MissingScope,
}

const WHO: [Who; 9] = [
    Who::Owner,
    Who::Other,
    Who::NoToken,
    Who::Expired,
    Who::NotYetValid,
    Who::BadSignature,
    Who::AlgNone,
    Who::Hs256Confusion,
    Who::MissingScope,
];

struct Tokens {
    owner: String,
    other: String,
    expired: String,
    not_yet_valid: String,
    bad_signature: String,
    alg_none: String,
    hs256: String,
}

impl Tokens {
    async fn new(app: &Router, keys: &Keys) -> Tokens {
        let owner = exchange(app, "key-alice", EVERY).await;
        let other = exchange(app, "key-bob", EVERY).await;
        let now = OffsetDateTime::now_utc().unix_timestamp();
        let mut early = auth::claims("authz-alice", &Scope::ALL, now, now + 7200);
        early.nbf = now + 3600;
        let seed = auth::random_bytes::<32>().unwrap();
        let foreign = Keys::from_signing_key(&ed25519_dalek::SigningKey::from_bytes(&seed));
        let payload = owner.split('.').nth(1).unwrap();
        let none_header = URL_SAFE_NO_PAD.encode(r#"{"alg":"none","typ":"JWT"}"#);
        let hs256 = jsonwebtoken::encode(
            &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
            &claims_of(&owner),
            &jsonwebtoken::EncodingKey::from_secret(&keys.public_key()),
        )
        .unwrap();
        Tokens {
            expired: keys.mint_expired("authz-alice", &Scope::ALL),
            not_yet_valid: keys.sign(&early),
            bad_signature: foreign.mint("authz-alice", &Scope::ALL, Duration::from_secs(600)),
            alg_none: format!("{none_header}.{payload}."),
            hs256,
            owner,
            other,
        }
    }

    /// The token `who` presents to an endpoint that needs `need`.
    async fn of(&self, app: &Router, who: Who, need: Scope) -> Option<String> {
        Some(match who {
            Who::Owner => self.owner.clone(),
            Who::Other => self.other.clone(),
            Who::NoToken => return None,
            Who::Expired => self.expired.clone(),
            Who::NotYetValid => self.not_yet_valid.clone(),
            Who::BadSignature => self.bad_signature.clone(),
            Who::AlgNone => self.alg_none.clone(),
            Who::Hs256Confusion => self.hs256.clone(),
            Who::MissingScope => {
                let rest: Vec<&str> = Scope::ALL
                    .iter()
                    .filter(|s| **s != need)
                    .map(|s| s.as_str())
                    .collect();
                exchange(app, "key-alice", &rest.join(" ")).await
            }
        })
    }
}

/// What a caller who is not the owner, or not authenticated, must get.
fn refusal(who: Who) -> Option<(StatusCode, &'static str)> {
    match who {
        Who::Owner | Who::Other => None,
        Who::NoToken => Some((StatusCode::UNAUTHORIZED, "token_missing")),
        Who::Expired => Some((StatusCode::UNAUTHORIZED, "token_expired")),
        Who::NotYetValid | Who::BadSignature | Who::AlgNone | Who::Hs256Confusion => {
            Some((StatusCode::UNAUTHORIZED, "token_invalid"))
        }
        Who::MissingScope => Some((StatusCode::FORBIDDEN, "scope_missing")),
    }
}

/// One endpoint of the matrix.
struct Endpoint {
    method: Method,
    /// The path; `{id}` is replaced by the run's id.
    path: &'static str,
    body: Option<Value>,
    need: Scope,
    /// The owner's status.
    ok: StatusCode,
    /// Whether the path names a run (then another account gets the 404 of a missing run).
    per_run: bool,
}

#[tokio::test(flavor = "multi_thread")]
async fn authorization_matrix() {
    let podman = Podman::start();
    let (_dir, keys, app) = accounts_runner(&podman.url());
    let tokens = Tokens::new(&app, &keys).await;
    let mut cleanup = Cleanup(&podman, vec![]);

    let run = create(
        &app,
        &tokens.owner,
        json!({"argv": ["sh", "-c", "echo hi"]}),
    )
    .await;
    cleanup.1.push(format!("bus-{run}"));
    wait_ended(&app, &tokens.owner, &run).await;

    let ep = |method: Method, path, body, need, ok, per_run| Endpoint {
        method,
        path,
        body,
        need,
        ok,
        per_run,
    };
    let endpoints = [
        ep(
            Method::GET,
            "/api/v1/containers/status",
            None,
            Scope::Read,
            StatusCode::OK,
            false,
        ),
        ep(Method::GET, RUNS, None, Scope::Read, StatusCode::OK, false),
        ep(
            Method::POST,
            RUNS,
            Some(json!({"argv": ["true"]})),
            Scope::Run,
            StatusCode::CREATED,
            false,
        ),
        ep(
            Method::GET,
            BILLING,
            None,
            Scope::BillingRead,
            StatusCode::OK,
            false,
        ),
        ep(
            Method::GET,
            "/api/v1/containers/runs/{id}",
            None,
            Scope::Read,
            StatusCode::OK,
            true,
        ),
        ep(
            Method::GET,
            "/api/v1/containers/runs/{id}/logs",
            None,
            Scope::Read,
            StatusCode::OK,
            true,
        ),
        ep(
            Method::POST,
            "/api/v1/containers/runs/{id}/stop",
            Some(json!({"force": true})),
            Scope::Run,
            StatusCode::OK,
            true,
        ),
        // Last: the owner's delete removes the run.
        ep(
            Method::DELETE,
            "/api/v1/containers/runs/{id}",
            None,
            Scope::Delete,
            StatusCode::NO_CONTENT,
            true,
        ),
    ];

    let mut checked = 0;
    for e in &endpoints {
        let path = e.path.replace("{id}", &run);
        // The owner goes last, so refusals are checked while the run still exists.
        let mut order = WHO.to_vec();
        order.rotate_left(1);
        for who in order {
            let token = tokens.of(&app, who, e.need).await;
            let reply = call(
                &app,
                e.method.clone(),
                &path,
                token.as_deref(),
                e.body.clone(),
            )
            .await;
            let context = format!("{who:?} {} {path}", e.method);
            if let Some((status, code)) = refusal(who) {
                assert_problem(&reply, status, code, &context);
                assert!(
                    !text(&reply).contains(token.as_deref().unwrap_or("\u{0}")),
                    "{context}: the token is never echoed"
                );
            } else if who == Who::Other && e.per_run {
                // Indistinguishable from a run that does not exist, modulo the id.
                let ghost = call(
                    &app,
                    e.method.clone(),
                    &e.path.replace("{id}", GHOST),
                    Some(&tokens.owner),
                    e.body.clone(),
                )
                .await;
                assert_problem(&reply, StatusCode::NOT_FOUND, "not_found", &context);
                assert_eq!(reply.status, ghost.status, "{context}");
                assert_eq!(
                    text(&reply).replace(&run, "{id}"),
                    text(&ghost).replace(GHOST, "{id}"),
                    "{context}"
                );
                assert_eq!(
                    reply.headers[header::CONTENT_TYPE],
                    ghost.headers[header::CONTENT_TYPE]
                );
            } else {
                assert_eq!(reply.status, e.ok, "{context}: {}", text(&reply));
                if e.method == Method::POST {
                    let id = reply.json()["id"].as_str().unwrap().to_owned();
                    cleanup.1.push(format!("bus-{id}"));
                }
                if e.path == BILLING {
                    let account = if who == Who::Owner {
                        "authz-alice"
                    } else {
                        "authz-bob"
                    };
                    assert_eq!(reply.json()["account"], account);
                }
                if e.path == RUNS && e.method == Method::GET && who == Who::Other {
                    let ids: Vec<Value> = reply.json()["runs"].as_array().unwrap().clone();
                    assert!(
                        ids.iter().all(|r| r["id"] != run.as_str()),
                        "another account's list never shows the run"
                    );
                }
            }
            checked += 1;
        }
    }
    assert_eq!(checked, endpoints.len() * WHO.len());

    // The token endpoint takes API keys: every JWT above, valid or not, is refused as a key.
    for who in WHO {
        let token = tokens.of(&app, who, Scope::Read).await;
        let reply = call(
            &app,
            Method::POST,
            TOKEN,
            token.as_deref(),
            Some(json!({"resources": "container:read"})),
        )
        .await;
        assert_problem(
            &reply,
            StatusCode::UNAUTHORIZED,
            "api_key_invalid",
            &format!("{who:?} at {TOKEN}"),
        );
    }
    let reply = call(
        &app,
        Method::GET,
        &format!("{RUNS}/{run}"),
        Some(&tokens.owner),
        None,
    )
    .await;
    assert_eq!(reply.status, StatusCode::NOT_FOUND, "the owner deleted it");
    cleanup.1.clear();
}

#[tokio::test(flavor = "multi_thread")]
async fn identity_comes_from_the_token_not_the_body() {
    let podman = Podman::start();
    let (_dir, _keys, app) = accounts_runner(&podman.url());
    let alice = exchange(&app, "key-alice", EVERY).await;
    let bob = exchange(&app, "key-bob", EVERY).await;
    let id = create(
        &app,
        &alice,
        json!({"argv": ["true"], "owner": "authz-bob", "account_id": "authz-bob"}),
    )
    .await;
    let _cleanup = Cleanup(&podman, vec![format!("bus-{id}")]);
    wait_ended(&app, &alice, &id).await;
    let reply = get_run(&app, &alice, &id).await;
    assert_eq!(reply.status, StatusCode::OK);
    assert!(reply.json().get("owner").is_none());
    let reply = get_run(&app, &bob, &id).await;
    assert_problem(&reply, StatusCode::NOT_FOUND, "not_found", "bob");
    let page = call(&app, Method::GET, RUNS, Some(&bob), None).await.json();
    assert_eq!(page["runs"], json!([]));
    let page = call(&app, Method::GET, RUNS, Some(&alice), None)
        .await
        .json();
    assert_eq!(page["runs"][0]["id"], id.as_str());
    // Other unknown fields are still refused.
    let reply = call(
        &app,
        Method::POST,
        RUNS,
        Some(&alice),
        Some(json!({"argv": ["true"], "user": "x"})),
    )
    .await;
    assert_problem(
        &reply,
        StatusCode::BAD_REQUEST,
        "invalid_request",
        "unknown field",
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn billing_and_quotas_refuse_before_the_engine() {
    let podman = Podman::start();
    let (_dir, _keys, app) = accounts_runner(&podman.url());
    let mut cleanup = Cleanup(&podman, vec![]);

    // Billing required: 402 with setup guidance, and no container.
    let payer = exchange(&app, "key-payer", EVERY).await;
    let before = containers_of(&podman, "authz-payer");
    let reply = call(
        &app,
        Method::POST,
        RUNS,
        Some(&payer),
        Some(json!({"argv": ["true"]})),
    )
    .await;
    assert_problem(
        &reply,
        StatusCode::PAYMENT_REQUIRED,
        "billing_required",
        "payer",
    );
    let problem = reply.json();
    assert_eq!(problem["guidance_url"], "https://bus.dev/billing/setup");
    assert!(
        problem["guidance"]
            .as_str()
            .unwrap()
            .contains("set up billing")
    );
    assert_eq!(containers_of(&podman, "authz-payer"), before);
    let page = call(&app, Method::GET, RUNS, Some(&payer), None)
        .await
        .json();
    assert_eq!(page["runs"], json!([]), "a refused create records no run");

    // One concurrent run: the second is a 429 with Retry-After, and no container.
    let solo = exchange(&app, "key-solo", EVERY).await;
    let live = create(&app, &solo, json!({"argv": ["sleep", "30"]})).await;
    cleanup.1.push(format!("bus-{live}"));
    // Count only once its container exists: the executor creates it after the 201.
    wait_running(&app, &solo, &live).await;
    let count = containers_of(&podman, "authz-solo");
    let reply = call(
        &app,
        Method::POST,
        RUNS,
        Some(&solo),
        Some(json!({"argv": ["true"]})),
    )
    .await;
    assert_problem(
        &reply,
        StatusCode::TOO_MANY_REQUESTS,
        "quota_exhausted",
        "solo",
    );
    assert_eq!(reply.headers[header::RETRY_AFTER], "5");
    let problem = reply.json();
    assert_eq!(problem["guidance_url"], "https://bus.dev/billing/upgrade");
    assert_eq!(
        problem["detail"],
        "the plan \"solo\" allows 1 concurrent run and 1 is live"
    );
    assert!(problem["guidance"].as_str().unwrap().contains("upgrade"));
    assert_eq!(containers_of(&podman, "authz-solo"), count);
    let status = call(&app, Method::GET, BILLING, Some(&solo), None)
        .await
        .json();
    assert_eq!(status["usage"]["concurrent_runs"], 1);
    assert_eq!(status["limits"]["max_concurrent_runs"], 1);
    assert_eq!(status["guidance_url"], "https://bus.dev/billing/upgrade");
    // Ending the live run frees the slot.
    let reply = call(
        &app,
        Method::DELETE,
        &format!("{RUNS}/{live}"),
        Some(&solo),
        None,
    )
    .await;
    assert_eq!(reply.status, StatusCode::NO_CONTENT);
    let next = create(&app, &solo, json!({"argv": ["true"]})).await;
    cleanup.1.push(format!("bus-{next}"));
    wait_ended(&app, &solo, &next).await;

    // Run-seconds: one per day; a run of about a second uses it up.
    let meter = exchange(&app, "key-meter", EVERY).await;
    let first = create(&app, &meter, json!({"argv": ["sleep", "1"]})).await;
    cleanup.1.push(format!("bus-{first}"));
    wait_ended(&app, &meter, &first).await;
    let count = containers_of(&podman, "authz-meter");
    let reply = call(
        &app,
        Method::POST,
        RUNS,
        Some(&meter),
        Some(json!({"argv": ["true"]})),
    )
    .await;
    assert_problem(
        &reply,
        StatusCode::TOO_MANY_REQUESTS,
        "quota_exhausted",
        "meter",
    );
    let retry: u64 = reply.headers[header::RETRY_AFTER]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((1..=86400).contains(&retry), "{retry}");
    let detail = reply.json()["detail"].as_str().unwrap().to_owned();
    assert!(
        detail.starts_with("the plan \"meter\" allows 1 run-seconds per 1d period and "),
        "{detail}"
    );
    assert_eq!(containers_of(&podman, "authz-meter"), count);
    let status = call(&app, Method::GET, BILLING, Some(&meter), None)
        .await
        .json();
    assert!(
        status["usage"]["run_seconds"].as_u64().unwrap() >= 1,
        "{status}"
    );
    cleanup.1.clear();
}

/// Run-seconds come from the usage ledger: deleting a finished run gives none back.
#[tokio::test(flavor = "multi_thread")]
async fn deleting_runs_does_not_give_run_seconds_back() {
    let podman = Podman::start();
    let (_dir, _keys, app) = accounts_runner(&podman.url());
    let mut cleanup = Cleanup(&podman, vec![]);
    let ledger = exchange(&app, "key-ledger", EVERY).await;
    let used = |status: &Value| status["usage"]["run_seconds"].as_u64().unwrap();

    // A run of about 3 s on a plan of 2 run-seconds.
    let run = create(&app, &ledger, json!({"argv": ["sleep", "3"]})).await;
    cleanup.1.push(format!("bus-{run}"));
    wait_ended(&app, &ledger, &run).await;
    let status = call(&app, Method::GET, BILLING, Some(&ledger), None)
        .await
        .json();
    let seconds = used(&status);
    assert!(seconds >= 3, "{status}");

    let reply = call(
        &app,
        Method::DELETE,
        &format!("{RUNS}/{run}"),
        Some(&ledger),
        None,
    )
    .await;
    assert_eq!(reply.status, StatusCode::NO_CONTENT, "{}", text(&reply));
    let page = call(&app, Method::GET, RUNS, Some(&ledger), None)
        .await
        .json();
    assert_eq!(page["runs"], json!([]), "the run is gone");

    // The next create is still refused, until the period ends.
    let reply = call(
        &app,
        Method::POST,
        RUNS,
        Some(&ledger),
        Some(json!({"argv": ["true"]})),
    )
    .await;
    assert_problem(
        &reply,
        StatusCode::TOO_MANY_REQUESTS,
        "quota_exhausted",
        "after deleting the run",
    );
    let retry: u64 = reply.headers[header::RETRY_AFTER]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((1..=366 * 86400).contains(&retry), "{retry}");
    let detail = reply.json()["detail"].as_str().unwrap().to_owned();
    assert!(
        detail.starts_with(&format!(
            "the plan \"ledger\" allows 2 run-seconds per 366d period and {seconds} are used"
        )),
        "{detail}"
    );
    let status = call(&app, Method::GET, BILLING, Some(&ledger), None)
        .await
        .json();
    assert_eq!(used(&status), seconds, "{status}");
    assert_eq!(status["usage"]["concurrent_runs"], 0);
    assert_eq!(status["guidance_url"], "https://bus.dev/billing/upgrade");
    cleanup.1.clear();
}

#[tokio::test(flavor = "multi_thread")]
async fn grants_narrow_images_and_logs() {
    let podman = Podman::start();
    let (_dir, keys, app) = accounts_runner(&podman.url());
    let narrow = exchange(&app, "key-narrow", EVERY).await;

    // An image outside the grant: 403 naming it and the allowed list, and no container.
    let before = containers_of(&podman, "authz-narrow");
    for body in [
        json!({"image": "localhost/other:1", "argv": ["true"]}),
        json!({"image": "localhost/busybox-evil:latest", "argv": ["true"]}),
    ] {
        let reply = call(&app, Method::POST, RUNS, Some(&narrow), Some(body.clone())).await;
        assert_problem(
            &reply,
            StatusCode::FORBIDDEN,
            "image_not_allowed",
            &body.to_string(),
        );
        let detail = reply.json()["detail"].as_str().unwrap().to_owned();
        let image = body["image"].as_str().unwrap();
        assert_eq!(
            detail,
            format!(
                "this account may not run the image \"{image}\"; allowed images: \
                 localhost/busybox, docker.io/library/*"
            )
        );
    }
    assert_eq!(containers_of(&podman, "authz-narrow"), before);

    // The profile's image (localhost/busybox:latest) is covered by the repository entry.
    let id = create(&app, &narrow, json!({"argv": ["sh", "-c", "echo secret"]})).await;
    let _cleanup = Cleanup(&podman, vec![format!("bus-{id}")]);

    // Logs are off: own run and a missing one get the same 403, for the logs and for an
    // attach to the run's command (which replays them); the record is still readable.
    let targets = [id.as_str(), GHOST];
    for (target, route) in targets
        .iter()
        .flat_map(|t| [(t, "logs?follow=true"), (t, "attach")])
    {
        let reply = call(
            &app,
            Method::GET,
            &format!("{RUNS}/{target}/{route}"),
            Some(&narrow),
            None,
        )
        .await;
        assert_problem(&reply, StatusCode::FORBIDDEN, "logs_disabled", target);
        assert!(!text(&reply).contains("secret"));
        assert!(
            reply.json()["guidance"]
                .as_str()
                .unwrap()
                .contains("logs = true")
        );
    }
    let reply = get_run(&app, &narrow, &id).await;
    assert_eq!(reply.status, StatusCode::OK);

    // Without a grant (a token minted locally for the same account) nothing is narrowed.
    let local = keys.mint("authz-narrow", &Scope::ALL, Duration::from_secs(60));
    wait_ended(&app, &local, &id).await;
}

#[test]
fn hash_key_reads_stdin_only() {
    use std::io::Write as _;
    let bin = env!("CARGO_BIN_EXE_bus-runner");
    let run = |input: &[u8], args: &[&str]| {
        let mut child = Command::new(bin)
            .arg("hash-key")
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        child.stdin.take().unwrap().write_all(input).unwrap();
        child.wait_with_output().unwrap()
    };
    let out = run(b"  key-alice\n", &[]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        String::from_utf8(out.stdout).unwrap(),
        format!("{}\n", auth::to_hex(&auth::sha256(b"key-alice")))
    );
    let out = run(b"\n", &[]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("held no API key"));
    let out = run(b"", &["key-alice"]);
    assert_eq!(out.status.code(), Some(2), "no key on the command line");
}

/// A create whose caller will follow the output (`follow=true`) answers for the logs read
/// too: without `container:read` it is refused before anything is recorded, so busd can
/// follow a run it created for a caller without asking the runner again.
#[tokio::test]
async fn a_create_with_follow_needs_container_read_and_records_nothing_without_it() {
    let (_dir, keys, app) = runner_without_engine(Config::builtin());
    let runner_only = keys.mint("authz-follow", &[Scope::Run], Duration::from_secs(60));
    let reply = call(
        &app,
        Method::POST,
        &format!("{RUNS}?follow=true"),
        Some(&runner_only),
        Some(json!({"argv": ["true"]})),
    )
    .await;
    assert_problem(
        &reply,
        StatusCode::FORBIDDEN,
        "scope_missing",
        "create, follow",
    );
    assert!(
        reply.json()["guidance"]
            .as_str()
            .unwrap()
            .contains("container:read"),
        "{}",
        text(&reply)
    );
    let reader = keys.mint("authz-follow", &[Scope::Read], Duration::from_secs(60));
    let page = call(&app, Method::GET, RUNS, Some(&reader), None)
        .await
        .json();
    assert_eq!(page["runs"], json!([]), "nothing was recorded: {page}");
}

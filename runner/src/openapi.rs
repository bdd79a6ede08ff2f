//! The REST contract as an OpenAPI 3.1 document, generated from the code: the wire types in
//! `bus_api` derive their schemas (its `openapi` feature), and every route is described below
//! with the problem responses it can give. Served at `GET /api/v1/openapi.json` (no token
//! needed) and checked in as `api/openapi.json`; a test fails when the two differ. Regenerate
//! the checked-in copy with
//!
//! ```sh
//! cargo run -p bus-runner -- openapi > api/openapi.json
//! ```
//!
//! The route functions here only carry the documentation; the handlers live in
//! [`crate::routes`].

use std::sync::LazyLock;

use axum::http::header;
use axum::response::IntoResponse;
use bus_api::auth::{TokenRequest, TokenResponse};
use bus_api::billing::{BillingState, Limits, Usage};
use bus_api::exec::{CreateExec, ExecRecord, ExecState, ExecStatus, SignalFrame, TerminalSize};
use bus_api::problem::PROBLEM_JSON;
use bus_api::{
    BillingStatus, CreateRun, LogFrame, Port, Problem, ProblemCode, Protocol, Run, RunOptions,
    RunPage, RunState, RunnerStatus, StopRun, StorageMount, Stream,
};
use utoipa::openapi::path::{Operation, PathItem};
use utoipa::openapi::response::{Response, ResponseBuilder};
use utoipa::openapi::security::{Http, HttpAuthScheme, SecurityScheme};
use utoipa::openapi::{ContentBuilder, HeaderBuilder, Ref, RefOr};
use utoipa::{Modify, OpenApi, ToResponse};

/// The path the document is served at.
pub const PATH: &str = "/api/v1/openapi.json";
/// The command that regenerates the checked-in copy.
pub const REGENERATE: &str = "cargo run -p bus-runner -- openapi > api/openapi.json";

/// The document's root.
#[derive(OpenApi)]
#[openapi(
    info(
        title = "bus container runner",
        description = "Runs short-lived, isolated containers for accounts. Every endpoint but \
            this document and `POST /api/v1/auth/token` needs `Authorization: Bearer <token>`, \
            a JWT whose `scope` covers the endpoint (`container:read`, `container:run`, \
            `container:delete`, `billing:read`); the run's owner is the token's `sub`, and \
            another account's run answers 404 like a missing one. Errors are RFC 9457 \
            problem documents (`application/problem+json`) with a stable `code`.",
        license(name = "Apache-2.0", identifier = "Apache-2.0"),
    ),
    paths(
        get_status,
        create_run,
        list_runs,
        get_run,
        delete_run,
        stop_run,
        run_logs,
        exec_run,
        attach_run,
        create_exec,
        get_exec,
        attach_exec,
        issue_token,
        billing_status,
        openapi_json,
    ),
    components(
        schemas(
            Problem, ProblemCode, RunnerStatus, CreateRun, Port, Protocol, StorageMount, Run,
            RunOptions, RunState, RunPage, StopRun, LogFrame, Stream, TokenRequest,
            TokenResponse, BillingStatus, BillingState, Usage, Limits, ExecStatus,
            TerminalSize, SignalFrame, CreateExec, ExecRecord, ExecState,
        ),
        responses(
            BadRequest, Unauthorized, Forbidden, NotFound, PayloadTooLarge, PaymentRequired,
            Unprocessable, TooManyRequests, Internal, EngineUnavailable, Conflict,
        ),
    ),
    modifiers(&Security),
    tags(
        (name = "containers", description = "Runs: containers owned by an account."),
        (name = "auth", description = "Tokens."),
        (name = "billing", description = "Plans, usage and limits."),
        (name = "meta", description = "This document."),
    ),
)]
pub struct ApiDoc;

/// The security schemes: `bearer` (a runner token, a JWT) and `api_key` (an account's API
/// key, sent the same way to `POST /api/v1/auth/token`).
struct Security;

impl Modify for Security {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        let mut bearer = Http::new(HttpAuthScheme::Bearer);
        bearer.bearer_format = Some("JWT".to_owned());
        bearer.description = Some(
            "A runner token (EdDSA-signed JWT) from `POST /api/v1/auth/token` or \
             `bus-runner token`; the scopes listed on an operation are the ones it needs."
                .to_owned(),
        );
        components.add_security_scheme("bearer", SecurityScheme::Http(bearer));
        let mut key = Http::new(HttpAuthScheme::Bearer);
        key.description =
            Some("An account's API key (the runner's config lists its SHA-256).".to_owned());
        components.add_security_scheme("api_key", SecurityScheme::Http(key));
        // Every operation of a secured route can also fail for want of a valid token.
        for item in openapi.paths.paths.values_mut() {
            for op in operations(item) {
                if op.security.as_ref().is_some_and(|s| !s.is_empty())
                    && !op.responses.responses.contains_key("401")
                {
                    op.responses
                        .responses
                        .insert("401".to_owned(), RefOr::Ref(response_ref("Unauthorized")));
                }
            }
        }
    }
}

fn operations(item: &mut PathItem) -> impl Iterator<Item = &mut Operation> {
    [
        item.get.as_mut(),
        item.put.as_mut(),
        item.post.as_mut(),
        item.delete.as_mut(),
        item.patch.as_mut(),
    ]
    .into_iter()
    .flatten()
}

fn response_ref(name: &str) -> Ref {
    Ref::new(format!("#/components/responses/{name}"))
}

/// A problem response: `application/problem+json` with the `Problem` schema.
fn problem(description: &str) -> ResponseBuilder {
    ResponseBuilder::new().description(description).content(
        PROBLEM_JSON,
        ContentBuilder::new()
            .schema(Some(Ref::from_schema_name("Problem")))
            .build(),
    )
}

macro_rules! problem_response {
    ($name:ident, $description:expr $(, $header:expr => $header_doc:expr)?) => {
        #[doc = $description]
        struct $name;

        impl<'r> ToResponse<'r> for $name {
            fn response() -> (&'r str, RefOr<Response>) {
                let response = problem($description)
                    $(.header(
                        $header,
                        HeaderBuilder::new()
                            .schema(String::schema_ref())
                            .description(Some($header_doc))
                            .build(),
                    ))?;
                (stringify!($name), RefOr::T(response.build()))
            }
        }
    };
}

/// `String`'s schema, for headers.
trait SchemaRef {
    fn schema_ref() -> RefOr<utoipa::openapi::schema::Schema>;
}

impl SchemaRef for String {
    fn schema_ref() -> RefOr<utoipa::openapi::schema::Schema> {
        RefOr::T(utoipa::openapi::schema::Schema::Object(
            utoipa::openapi::schema::ObjectBuilder::new()
                .schema_type(utoipa::openapi::schema::Type::String)
                .build(),
        ))
    }
}

problem_response!(
    BadRequest,
    "The request is malformed or a field is out of bounds (`invalid_request`; the detail names \
     the field and its bound), or it names an unknown profile (`unknown_profile`)."
);
problem_response!(
    Conflict,
    "The run is not running (`run_not_running`): it is queued, starting or has ended."
);
problem_response!(
    Unauthorized,
    "No bearer token (`token_missing`), or one that is malformed, signed by another key, for \
     another audience or issuer, not yet valid (`token_invalid`) or expired \
     (`token_expired`); for `POST /api/v1/auth/token`, a missing or unknown API key \
     (`api_key_invalid`). `guidance` says how to get a valid one.",
    "WWW-Authenticate" => "`Bearer realm=\"bus\"`, with `error=\"invalid_token\"` for a bad one."
);
problem_response!(
    Forbidden,
    "The token lacks the scope the endpoint needs (`scope_missing`; `guidance` names the \
     `bus auth token --resources ...` that fixes it), or its grant does not cover the run's \
     image (`image_not_allowed`) or switches off log streaming (`logs_disabled`); a token \
     request that asks for a resource the account may not hold (`scope_not_allowed`)."
);
problem_response!(
    NotFound,
    "No such run in the caller's account (`not_found`); another account's run looks the same."
);
problem_response!(
    PayloadTooLarge,
    "The body is larger than the endpoint accepts (`payload_too_large`)."
);
problem_response!(
    PaymentRequired,
    "The account must set up billing before runs start (`billing_required`); checked before \
     any container work. `guidance_url` is the setup page."
);
problem_response!(
    Unprocessable,
    "The `Idempotency-Key` was used, within 24 hours, with a different body \
     (`idempotency_key_reused`)."
);
problem_response!(
    TooManyRequests,
    "A plan limit is reached: concurrent runs or run-seconds in the period \
     (`quota_exhausted`); checked before any container work. `guidance_url` is the upgrade \
     page.",
    "Retry-After" => "Seconds until a retry may succeed."
);
problem_response!(Internal, "The runner could not store the run (`internal`).");
problem_response!(
    EngineUnavailable,
    "The container engine failed or cannot be reached (`engine_unavailable`)."
);

/// The runner's status.
///
/// Its state (`ready`, `starting` or `degraded`, from real engine reachability), the engine's
/// name and version, and the run profiles it offers.
#[utoipa::path(
    get,
    path = "/api/v1/containers/status",
    tag = "containers",
    operation_id = "getStatus",
    security(("bearer" = ["container:read"])),
    responses(
        (status = 200, description = "The runner's status.", body = RunnerStatus),
        (status = 403, response = Forbidden),
    )
)]
#[allow(dead_code)]
fn get_status() {}

/// Starts a run.
///
/// Validates the request (every field bounded), checks grant, billing and quota before any
/// container work, records the run as `queued` and starts it in the background.
/// Follow it with the logs endpoint. With an `Idempotency-Key` that this account used in the
/// last 24 hours with the same body, answers with the original run instead of starting
/// another (`Idempotent-Replayed: true`). `owner` and `account_id` in the body are ignored:
/// the run belongs to the token's account.
#[utoipa::path(
    post,
    path = "/api/v1/containers/runs",
    tag = "containers",
    operation_id = "createRun",
    security(("bearer" = ["container:run"])),
    params(
        ("Idempotency-Key" = Option<String>, Header, pattern = "^[!-~]{1,255}$",
            description = "1 to 255 printable ASCII characters without spaces, e.g. a UUID."),
        ("wait" = Option<String>, Query, pattern = "^running$",
            description = "`running`: answer once the run runs or has ended (a command that \
                exits at once is answered ended, with its exit code or the reason it failed to \
                start), at most `wait_ms`; then the run as it is."),
        ("wait_ms" = Option<u64>, Query, minimum = 1, maximum = 600000,
            description = "With `wait`: the longest wait in milliseconds (default 60000)."),
        ("follow" = Option<bool>, Query,
            description = "The caller will follow the run's output: refused with \
                `logs_disabled`, before anything starts, when the token's grant switches logs off."),
    ),
    request_body(content = CreateRun, content_type = "application/json"),
    responses(
        (status = 201, description = "The run: `queued`, or with `wait` as it is once it runs \
            or has ended.", body = Run,
            headers(
                ("Location" = String, description = "The run's URL path."),
                ("Idempotent-Replayed" = String,
                    description = "`true` when this is the response to an earlier request with the same key."),
            )),
        (status = 400, response = BadRequest),
        (status = 402, response = PaymentRequired),
        (status = 403, response = Forbidden),
        (status = 413, response = PayloadTooLarge),
        (status = 422, response = Unprocessable),
        (status = 429, response = TooManyRequests),
        (status = 500, response = Internal),
    )
)]
#[allow(dead_code)]
fn create_run() {}

/// Lists the caller's runs.
///
/// Newest first, a page at a time.
#[utoipa::path(
    get,
    path = "/api/v1/containers/runs",
    tag = "containers",
    operation_id = "listRuns",
    security(("bearer" = ["container:read"])),
    params(
        ("page_size" = Option<u32>, Query, minimum = 0,
            description = "Runs per page: 0 or absent means 50; more than 200 means 200."),
        ("page_token" = Option<String>, Query,
            description = "`next_page_token` of the previous page."),
    ),
    responses(
        (status = 200, description = "A page of runs.", body = RunPage),
        (status = 400, response = BadRequest),
        (status = 403, response = Forbidden),
    )
)]
#[allow(dead_code)]
fn list_runs() {}

/// Gets one run.
///
/// Its state, exit code, reason, times and usage.
#[utoipa::path(
    get,
    path = "/api/v1/containers/runs/{id}",
    tag = "containers",
    operation_id = "getRun",
    security(("bearer" = ["container:read"])),
    params(("id" = String, Path, description = "The run's id (`run_...`).")),
    responses(
        (status = 200, description = "The run.", body = Run),
        (status = 403, response = Forbidden),
        (status = 404, response = NotFound),
    )
)]
#[allow(dead_code)]
fn get_run() {}

/// Deletes a run.
///
/// The run and its output are forgotten; a live run's container is removed first.
#[utoipa::path(
    delete,
    path = "/api/v1/containers/runs/{id}",
    tag = "containers",
    operation_id = "deleteRun",
    security(("bearer" = ["container:delete"])),
    params(("id" = String, Path, description = "The run's id (`run_...`).")),
    responses(
        (status = 204, description = "Deleted."),
        (status = 403, response = Forbidden),
        (status = 404, response = NotFound),
        (status = 503, response = EngineUnavailable),
    )
)]
#[allow(dead_code)]
fn delete_run() {}

/// Stops a run.
///
/// SIGTERM, then SIGKILL after `grace_seconds` (default 10), or SIGKILL at once with `force`;
/// answers once the run has ended (`stopped`, reason "stopped on
/// request"). A run that has already ended is returned unchanged. The body is optional.
#[utoipa::path(
    post,
    path = "/api/v1/containers/runs/{id}/stop",
    tag = "containers",
    operation_id = "stopRun",
    security(("bearer" = ["container:run"])),
    params(("id" = String, Path, description = "The run's id (`run_...`).")),
    request_body(content = Option<StopRun>, content_type = "application/json"),
    responses(
        (status = 200, description = "The run, ended.", body = Run),
        (status = 400, response = BadRequest),
        (status = 403, response = Forbidden),
        (status = 404, response = NotFound),
        (status = 413, response = PayloadTooLarge),
    )
)]
#[allow(dead_code)]
fn stop_run() {}

/// Streams a run's output.
///
/// NDJSON, one `LogFrame` per line: `output` frames with a dense
/// per-run `seq` (resume after the last one seen with `after_seq`, and nothing is lost or
/// repeated), then one `exit` frame once the run has ended. With `follow`, the stream stays
/// open for new frames, and an idle one carries `keepalive` frames.
#[utoipa::path(
    get,
    path = "/api/v1/containers/runs/{id}/logs",
    tag = "containers",
    operation_id = "runLogs",
    security(("bearer" = ["container:read"])),
    params(
        ("id" = String, Path, description = "The run's id (`run_...`)."),
        ("follow" = Option<bool>, Query,
            description = "Keep the stream open and send new frames until the exit frame."),
        ("after_seq" = Option<u64>, Query,
            description = "Send only frames with a greater `seq`."),
        ("tail" = Option<u64>, Query,
            description = "Start with the last `tail` output frames (of the streams asked for)."),
        ("stdout" = Option<bool>, Query, description = "Include stdout frames (default true)."),
        ("stderr" = Option<bool>, Query, description = "Include stderr frames (default true)."),
        ("keepalive_seconds" = Option<u64>, Query, minimum = 1, maximum = 300,
            description = "With `follow`: a keepalive frame after this many idle seconds (default 15)."),
    ),
    responses(
        (status = 200, description = "NDJSON: one `LogFrame` per line.",
            content_type = "application/x-ndjson", body = LogFrame),
        (status = 400, response = BadRequest),
        (status = 403, response = Forbidden),
        (status = 404, response = NotFound),
    )
)]
#[allow(dead_code)]
fn run_logs() {}

/// Runs a command in a running run, over a WebSocket.
///
/// A `GET` with `Connection: Upgrade` and `Upgrade: websocket` (subprotocol
/// `v1.exec.bus.dev`, optional); every refusal comes before the upgrade, as a problem
/// document. After `101 Switching Protocols` every message is binary and starts with a channel
/// byte, as Kubernetes' `v5.channel.k8s.io`: 0 stdin (client → runner), 1 stdout, 2 stderr,
/// 3 status (JSON `ExecStatus`, the last frame, exactly once after the last output byte),
/// 4 resize (JSON `TerminalSize`, client → runner), 5 signal (JSON `SignalFrame`, client →
/// runner; with a terminal SIGINT, SIGQUIT and SIGTSTP are typed as ^C, ^\ and ^Z), 255 close
/// (payload `0`: close stdin, EOF). A command that died of a signal the session sent has
/// `signal` in its status.
/// The status carries `exit_code` only when the engine reported one; otherwise `reason` is
/// `error` and no exit code is made up. An idle session gets a WebSocket ping every 15 s.
#[utoipa::path(
    get,
    path = "/api/v1/containers/runs/{id}/exec",
    tag = "containers",
    operation_id = "execRun",
    security(("bearer" = ["container:run"])),
    params(
        ("id" = String, Path, description = "The run's id (`run_...`); it must be running."),
        ("command" = Vec<String>, Query, style = Form, explode,
            description = "The command and its arguments, one parameter each, in order."),
        ("env" = Option<Vec<String>>, Query, style = Form, explode,
            description = "`NAME=value` added to the command's environment (repeatable)."),
        ("workdir" = Option<String>, Query, description = "An absolute working directory."),
        ("tty" = Option<bool>, Query,
            description = "Allocate a terminal; output then comes on stdout only."),
        ("stdin" = Option<bool>, Query, description = "Attach the command's stdin."),
        ("cols" = Option<u16>, Query, minimum = 1,
            description = "With `tty`: the terminal's initial columns (with `rows`)."),
        ("rows" = Option<u16>, Query, minimum = 1,
            description = "With `tty`: the terminal's initial rows (with `cols`)."),
    ),
    responses(
        (status = 101, description = "Switched to the WebSocket exec protocol."),
        (status = 400, response = BadRequest),
        (status = 403, response = Forbidden),
        (status = 404, response = NotFound),
        (status = 409, response = Conflict),
    )
)]
#[allow(dead_code)]
fn exec_run() {}

/// Attaches to the run's own command, over a WebSocket.
///
/// The exec protocol of `GET /api/v1/containers/runs/{id}/exec`: the run's output from its
/// first byte (stdout and stderr frames), then one status frame once the run has ended (its
/// exit code; `reason` is the run's final state; without an exit code, `error`). Stdin frames
/// reach the command when the run was created with `stdin` (close-stdin is its EOF, for
/// good); resize frames, and `cols`/`rows`, resize its terminal when it has one; signal frames
/// go to its main process. Input waits until the container runs.
#[utoipa::path(
    get,
    path = "/api/v1/containers/runs/{id}/attach",
    tag = "containers",
    operation_id = "attachRun",
    security(("bearer" = ["container:run"])),
    params(
        ("id" = String, Path, description = "The run's id (`run_...`)."),
        ("cols" = Option<u16>, Query, minimum = 1,
            description = "With a terminal: its columns (with `rows`)."),
        ("rows" = Option<u16>, Query, minimum = 1,
            description = "With a terminal: its rows (with `cols`)."),
    ),
    responses(
        (status = 101, description = "Switched to the WebSocket exec protocol."),
        (status = 400, response = BadRequest),
        (status = 403, response = Forbidden),
        (status = 404, response = NotFound),
    )
)]
#[allow(dead_code)]
fn attach_run() {}

/// Starts a command in a running run, detached.
///
/// The runner captures its output (kept in its state dir, with the run); read it, and its exit
/// status, with `GET /api/v1/containers/execs/{exec_id}/attach`.
#[utoipa::path(
    post,
    path = "/api/v1/containers/runs/{id}/execs",
    tag = "containers",
    operation_id = "createExec",
    security(("bearer" = ["container:run"])),
    params(("id" = String, Path, description = "The run's id (`run_...`); it must be running.")),
    request_body(content = CreateExec, content_type = "application/json"),
    responses(
        (status = 201, description = "The exec, `running`.", body = ExecRecord),
        (status = 400, response = BadRequest),
        (status = 403, response = Forbidden),
        (status = 404, response = NotFound),
        (status = 409, response = Conflict),
        (status = 413, response = PayloadTooLarge),
        (status = 422, response = Unprocessable),
        (status = 500, response = Internal),
        (status = 503, response = EngineUnavailable),
    )
)]
#[allow(dead_code)]
fn create_exec() {}

/// One detached exec: its state and, once it ended, its exit code.
#[utoipa::path(
    get,
    path = "/api/v1/containers/execs/{exec_id}",
    tag = "containers",
    operation_id = "getExec",
    security(("bearer" = ["container:run"])),
    params(("exec_id" = String, Path, description = "The exec's id (`exec_...`).")),
    responses(
        (status = 200, description = "The exec.", body = ExecRecord),
        (status = 403, response = Forbidden),
        (status = 404, response = NotFound),
    )
)]
#[allow(dead_code)]
fn get_exec() {}

/// A detached exec's output and status, over a WebSocket.
///
/// The exec protocol of `GET /api/v1/containers/runs/{id}/exec`, output only: every byte
/// captured from the start (stdout and stderr frames), then, with `follow` (the default), new
/// output as it comes, then the status frame. Without `follow`, an exec that still runs ends
/// the replay with a status whose `reason` is `running` (no exit code). Frames sent in are
/// ignored.
#[utoipa::path(
    get,
    path = "/api/v1/containers/execs/{exec_id}/attach",
    tag = "containers",
    operation_id = "attachExec",
    security(("bearer" = ["container:run"])),
    params(
        ("exec_id" = String, Path, description = "The exec's id (`exec_...`)."),
        ("follow" = Option<bool>, Query,
            description = "Keep sending output until the exec ends (default true)."),
    ),
    responses(
        (status = 101, description = "Switched to the WebSocket exec protocol."),
        (status = 400, response = BadRequest),
        (status = 403, response = Forbidden),
        (status = 404, response = NotFound),
    )
)]
#[allow(dead_code)]
fn attach_exec() {}

/// Issues a token.
///
/// Exchanges an account's API key (as `Authorization: Bearer <API key>`) for a token carrying
/// the requested resources (a subset of the account's) for `ttl_seconds` (default 3600, at
/// most 86400). Only a runner whose config lists accounts accepts API keys.
#[utoipa::path(
    post,
    path = "/api/v1/auth/token",
    tag = "auth",
    operation_id = "issueToken",
    security(("api_key" = [])),
    request_body(content = TokenRequest, content_type = "application/json"),
    responses(
        (status = 200, description = "The token; never cached (`Cache-Control: no-store`).",
            body = TokenResponse),
        (status = 400, response = BadRequest),
        (status = 401, response = Unauthorized),
        (status = 403, response = Forbidden),
        (status = 413, response = PayloadTooLarge),
    )
)]
#[allow(dead_code)]
fn issue_token() {}

/// The caller's billing status.
///
/// The account's plan, billing state, usage in the current period and limits.
#[utoipa::path(
    get,
    path = "/api/v1/billing/status",
    tag = "billing",
    operation_id = "billingStatus",
    security(("bearer" = ["billing:read"])),
    responses(
        (status = 200, description = "The billing status.", body = BillingStatus),
        (status = 403, response = Forbidden),
    )
)]
#[allow(dead_code)]
fn billing_status() {}

/// This document.
///
/// The REST API's OpenAPI 3.1 document; needs no token.
#[utoipa::path(
    get,
    path = "/api/v1/openapi.json",
    tag = "meta",
    operation_id = "openapi",
    security(()),
    responses(
        (status = 200, description = "The OpenAPI document.", body = Object,
            content_type = "application/json"),
    )
)]
#[allow(dead_code)]
fn openapi_json() {}

/// The document as pretty JSON with a final newline: what `bus-runner openapi` prints and
/// `api/openapi.json` holds.
pub fn document() -> String {
    let mut api = ApiDoc::openapi();
    api.merge(crate::images::openapi::ImagesDoc::openapi());
    let mut doc = serde_json::to_value(api).expect("the OpenAPI document serializes");
    tidy(&mut doc);
    let mut text = serde_json::to_string_pretty(&doc).expect("JSON serializes");
    text.push('\n');
    text
}

/// What the derives cannot say: parameters are never `null` (only absent); the stop body is
/// optional but never `null`; `CreateRun` refuses unknown fields except the ignored `owner`
/// and `account_id`.
fn tidy(doc: &mut serde_json::Value) {
    use serde_json::{Value, json};
    if let Some(paths) = doc["paths"].as_object_mut() {
        for item in paths.values_mut() {
            for op in item
                .as_object_mut()
                .into_iter()
                .flat_map(|i| i.values_mut())
            {
                let params = op.get_mut("parameters").and_then(Value::as_array_mut);
                for param in params.into_iter().flatten() {
                    let Some(schema) = param.get_mut("schema") else {
                        continue;
                    };
                    if let Some(Value::Array(types)) = schema.get_mut("type") {
                        types.retain(|t| t != "null");
                        if types.len() == 1 {
                            schema["type"] = types[0].clone();
                        }
                    }
                }
            }
        }
    }
    let stop = &mut doc["paths"]["/api/v1/containers/runs/{id}/stop"]["post"]["requestBody"];
    stop["content"]["application/json"]["schema"] = json!({"$ref": "#/components/schemas/StopRun"});
    stop["required"] = json!(false);
    stop["description"] = json!("Optional: an empty body means the defaults.");
    let create = &mut doc["components"]["schemas"]["CreateRun"];
    create["additionalProperties"] = json!(false);
    for field in ["owner", "account_id"] {
        create["properties"][field] = json!({
            "deprecated": true,
            "description": "Ignored: a run always belongs to the token's account."
        });
    }
}

static DOCUMENT: LazyLock<String> = LazyLock::new(document);

/// `GET /api/v1/openapi.json`.
pub async fn serve() -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "application/json")],
        DOCUMENT.as_str(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checked_in_copy_is_current() {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../api/openapi.json");
        let checked_in = std::fs::read_to_string(&path).unwrap_or_default();
        assert!(
            checked_in == document(),
            "{} is not what the code generates; regenerate it with `{REGENERATE}` (from the \
             workspace root) and commit it",
            path.display()
        );
    }

    #[tokio::test]
    async fn is_served_without_a_token() {
        use axum::body::Body;
        use axum::http::{Request, StatusCode};
        use http_body_util::BodyExt as _;
        use tower::ServiceExt as _;

        let dir = tempfile::tempdir().unwrap();
        let fake = dir.path().join("engine.sock");
        std::fs::write(&fake, b"").unwrap();
        let keys = crate::auth::Keys::load_or_create(&dir.path().join("state")).unwrap();
        let engine = crate::engine::Engine::connect(&format!("unix://{}", fake.display())).unwrap();
        let app = crate::app(crate::AppState::new(
            keys,
            crate::config::Config::builtin(),
            engine,
        ));
        let request = Request::get(PATH).body(Body::empty()).unwrap();
        let response = app.oneshot(request).await.unwrap();
        assert_eq!(response.status(), StatusCode::OK);
        assert_eq!(response.headers()[header::CONTENT_TYPE], "application/json");
        let body = response.into_body().collect().await.unwrap().to_bytes();
        assert_eq!(body, document().as_bytes());
    }

    #[test]
    fn documents_every_route_and_problem() {
        let doc: serde_json::Value = serde_json::from_str(&document()).unwrap();
        assert_eq!(doc["openapi"], "3.1.0");
        let paths = doc["paths"].as_object().unwrap();
        for (path, method) in [
            ("/api/v1/containers/status", "get"),
            ("/api/v1/containers/runs", "post"),
            ("/api/v1/containers/runs", "get"),
            ("/api/v1/containers/runs/{id}", "get"),
            ("/api/v1/containers/runs/{id}", "delete"),
            ("/api/v1/containers/runs/{id}/stop", "post"),
            ("/api/v1/containers/runs/{id}/logs", "get"),
            ("/api/v1/auth/token", "post"),
            ("/api/v1/billing/status", "get"),
            ("/api/v1/openapi.json", "get"),
        ] {
            let op = &paths[path][method];
            assert!(op.is_object(), "{method} {path} is not documented");
            if path != PATH {
                assert_eq!(
                    op["responses"]["401"]["$ref"], "#/components/responses/Unauthorized",
                    "{method} {path}"
                );
            }
        }
        let unauthorized = &doc["components"]["responses"]["Unauthorized"];
        assert_eq!(
            unauthorized["content"][PROBLEM_JSON]["schema"]["$ref"],
            "#/components/schemas/Problem"
        );
        let codes = &doc["components"]["schemas"]["ProblemCode"]["enum"];
        for code in [
            "scope_missing",
            "billing_required",
            "quota_exhausted",
            "not_found",
        ] {
            assert!(
                codes.as_array().unwrap().iter().any(|c| c == code),
                "{code} missing from {codes}"
            );
        }
        assert_eq!(
            doc["components"]["securitySchemes"]["bearer"]["scheme"],
            "bearer"
        );
        assert!(
            paths[PATH]["get"]["security"]
                .as_array()
                .unwrap()
                .iter()
                .all(|s| s.as_object().unwrap().is_empty()),
            "the document needs no token"
        );
    }
}

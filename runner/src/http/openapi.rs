//! The root of the REST contract's OpenAPI 3.1 document: its info, security schemes, tags,
//! the problem responses routes share and the schemas only WebSocket frames carry. Every
//! operation is described on its handler (`#[utoipa::path]` in [`crate::http::routes`]), and the
//! router adds a route only together with its operation, so the document lists exactly the
//! routes served. The wire types in `bus_api` derive their schemas (its `openapi` feature).
//! Served at `GET /api/v1/openapi.json` (no token needed) and checked in as
//! `api/openapi.json`; a test fails when the two differ. Regenerate the checked-in copy with
//!
//! ```sh
//! cargo run -p bus-runner -- openapi > api/openapi.json
//! ```

use axum::Extension;
use axum::http::header;
use axum::response::IntoResponse;
use bus_api::exec::{ExecStatus, SignalFrame, TerminalSize};
use bus_api::problem::PROBLEM_JSON;
use bus_api::runs::REVISION_HEADER;
use bus_api::{Problem, ProblemCode};
use utoipa::openapi::path::{Operation, PathItem};
use utoipa::openapi::response::{Response, ResponseBuilder};
use utoipa::openapi::security::{Http, HttpAuthScheme, SecurityScheme};
use utoipa::openapi::{ContentBuilder, HeaderBuilder, Ref, RefOr};
use utoipa::{Modify, OpenApi, ToResponse};

/// The path the document is served at.
pub const PATH: &str = "/api/v1/openapi.json";
/// The command that regenerates the checked-in copy.
pub const REGENERATE: &str = "cargo run -p bus-runner -- openapi > api/openapi.json";

/// The document's root, which the router completes with every route's operation.
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
    components(
        schemas(Problem, ProblemCode, ExecStatus, TerminalSize, SignalFrame),
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
        (name = "images", description = "Images an account pulled, loaded, built or tagged, and the public ones."),
        (name = "builds", description = "Image builds from a context tar."),
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
    }
}

/// Every operation of a secured route can also fail for want of a valid token: adds the
/// `Unauthorized` response where an operation does not list a 401 of its own.
fn add_unauthorized(openapi: &mut utoipa::openapi::OpenApi) {
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
        pub struct $name;

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
    "The run is not running (`run_not_running`): it is queued, starting or has ended; or the \
     run's name stands for several ended runs (`run_name_ambiguous`; the detail lists their \
     ids); or, creating a run, a run that has not ended already has its name \
     (`run_name_taken`)."
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

/// `api` (the root completed with every route's operation) as pretty JSON with a final
/// newline: what `bus-runner openapi` prints, `GET /api/v1/openapi.json` serves and
/// `api/openapi.json` holds.
pub fn render(mut api: utoipa::openapi::OpenApi) -> String {
    add_unauthorized(&mut api);
    let mut doc = serde_json::to_value(api).expect("the OpenAPI document serializes");
    tidy(&mut doc);
    let mut text = serde_json::to_string_pretty(&doc).expect("JSON serializes");
    text.push('\n');
    text
}

/// What the derives cannot say: parameters are never `null` (only absent); an optional
/// request body (`Option<T>` on the handler) is `required: false` but never `null`;
/// `CreateRun` refuses unknown fields except the ignored `owner` and `account_id`; every
/// success of an operation that takes a bearer token carries the `bus-revision` header.
fn tidy(doc: &mut serde_json::Value) {
    use serde_json::{Value, json};
    if let Some(paths) = doc["paths"].as_object_mut() {
        for item in paths.values_mut() {
            for op in item
                .as_object_mut()
                .into_iter()
                .flat_map(|i| i.values_mut())
            {
                add_revision_header(op);
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
                if let Some(body) = op.get_mut("requestBody") {
                    optional_body(body);
                }
            }
        }
    }
    let create = &mut doc["components"]["schemas"]["CreateRun"];
    create["additionalProperties"] = json!(false);
    for field in ["owner", "account_id"] {
        create["properties"][field] = json!({
            "deprecated": true,
            "description": "Ignored: a run always belongs to the token's account."
        });
    }
}

/// Adds [`REVISION_HEADER`] to the successes of `op` when it takes a bearer token (the
/// `Caller` extractor notes the account those answers report the revision of).
fn add_revision_header(op: &mut serde_json::Value) {
    use serde_json::{Value, json};
    let bearer = op["security"]
        .as_array()
        .is_some_and(|s| s.iter().any(|r| r.get("bearer").is_some()));
    if !bearer {
        return;
    }
    let responses = op.get_mut("responses").and_then(Value::as_object_mut);
    for (status, response) in responses.into_iter().flatten() {
        if status.starts_with('2') && response.get("$ref").is_none() {
            response["headers"][REVISION_HEADER] = json!({
                "description": "The caller's account's revision of its runs after the call: \
                    a watch (`GET /api/v1/containers/runs?watch=true`) that has sent a line \
                    with this revision or a later one has reported every change the call \
                    made or saw.",
                "schema": {"type": "integer", "format": "int64", "minimum": 0}
            });
        }
    }
}

/// A request body utoipa leaves without `required` (the handler's `Option<T>`): `required:
/// false`, and each schema `T` itself instead of "null or `T`".
fn optional_body(body: &mut serde_json::Value) {
    use serde_json::{Value, json};
    if body.get("required").is_some() {
        return;
    }
    body["required"] = json!(false);
    let contents = body.get_mut("content").and_then(Value::as_object_mut);
    for content in contents.into_iter().flat_map(|c| c.values_mut()) {
        let Some(Value::Array(one_of)) = content["schema"].get_mut("oneOf") else {
            continue;
        };
        one_of.retain(|s| s != &json!({"type": "null"}));
        if let [only] = one_of.as_slice() {
            content["schema"] = only.clone();
        }
    }
}

/// The rendered document, handed to [`serve`] by the router it describes.
#[derive(Clone)]
pub struct Document(bytes::Bytes);

impl Document {
    /// Renders `api` as [`render`] does.
    pub fn new(api: utoipa::openapi::OpenApi) -> Self {
        Self(render(api).into())
    }
}

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
pub async fn serve(Extension(Document(document)): Extension<Document>) -> impl IntoResponse {
    ([(header::CONTENT_TYPE, "application/json")], document)
}

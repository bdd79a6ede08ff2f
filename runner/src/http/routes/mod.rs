//! The HTTP routes, one module per resource. Each handler carries its OpenAPI operation
//! (`#[utoipa::path]`), and the router is built from the handlers with `routes!`, so a route
//! is served only together with its documentation.

use axum::Extension;
use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::middleware::from_fn_with_state;
use axum::routing::any;
use utoipa::OpenApi as _;
use utoipa_axum::router::{OpenApiRouter, UtoipaMethodRouter, UtoipaMethodRouterExt as _};
use utoipa_axum::routes;

mod image_routes;

use crate::AppState;
use crate::http::openapi::{self, ApiDoc, Document};
use crate::http::problem::limit_body;

pub mod attach;
pub mod auth;
pub mod billing;
pub mod builds;
pub mod exec;
pub mod idempotency;
pub mod images;
pub mod input;
pub mod logs;
pub mod proxy;
pub mod runs;
pub mod status;
pub mod stop;
pub mod watch;

/// Every route below `/api/v1`, each with its operation in the document [`crate::http::openapi`]
/// roots.
fn documented() -> OpenApiRouter<AppState> {
    OpenApiRouter::with_openapi(ApiDoc::openapi())
        .routes(routes!(status::get))
        .routes(json_limited(
            routes!(runs::list, runs::create),
            runs::BODY_LIMIT,
        ))
        .routes(routes!(runs::get, runs::delete))
        .routes(routes!(logs::get))
        .routes(routes!(exec::exec))
        .routes(routes!(attach::attach))
        .routes(json_limited(
            routes!(exec::create_detached),
            exec::BODY_LIMIT,
        ))
        .routes(routes!(exec::get_detached))
        .routes(routes!(exec::attach_detached))
        .routes(json_limited(routes!(stop::stop), stop::BODY_LIMIT))
        .routes(json_limited(routes!(auth::token), auth::BODY_LIMIT))
        .routes(routes!(billing::status))
        .routes(routes!(openapi::serve))
        .merge(image_routes::router())
}

/// Every route below `/api/v1`; `GET /api/v1/openapi.json` serves their document.
pub fn router() -> Router<AppState> {
    let (router, api) = documented().split_for_parts();
    // The proxies pass arbitrary upstream APIs through: not described by the document.
    let proxies = Router::new()
        .route("/api/v1/proxy/{name}", any(proxy::forward_root))
        .route("/api/v1/proxy/{name}/{*path}", any(proxy::forward_path));
    router.layer(Extension(Document::new(api))).merge(proxies)
}

/// The routes' OpenAPI document as [`openapi::render`] writes it: what `bus-runner openapi`
/// prints and `api/openapi.json` holds.
pub fn document() -> String {
    openapi::render(documented().into_openapi())
}

/// A route whose JSON body may be at most `limit` bytes: a larger declared length is refused
/// with 413 before the body is read, a body without one once it passes the limit; either
/// way the problem names the limit.
pub(crate) fn json_limited<S: Clone + Send + Sync + 'static>(
    route: UtoipaMethodRouter<S>,
    limit: usize,
) -> UtoipaMethodRouter<S> {
    route.map(|route| {
        route
            .layer(DefaultBodyLimit::max(limit))
            .layer(from_fn_with_state(limit, limit_body))
    })
}

#[cfg(test)]
mod tests {
    use axum::http::header;
    use bus_api::problem::PROBLEM_JSON;

    use super::*;
    use crate::http::openapi::{PATH, REGENERATE};

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
        let list = &paths["/api/v1/containers/runs"]["get"]["responses"]["200"];
        assert_eq!(
            list["content"]["application/x-ndjson"]["schema"]["$ref"],
            "#/components/schemas/RunEvent"
        );
        for (path, method, status) in [
            ("/api/v1/containers/runs", "get", "200"),
            ("/api/v1/containers/runs", "post", "201"),
            ("/api/v1/containers/runs/{id}", "delete", "204"),
            ("/api/v1/containers/runs/{id}/stop", "post", "200"),
        ] {
            let headers = &paths[path][method]["responses"][status]["headers"];
            assert!(
                headers[bus_api::runs::REVISION_HEADER].is_object(),
                "{method} {path}: {headers}"
            );
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

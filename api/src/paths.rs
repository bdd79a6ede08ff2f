//! The endpoints' paths, below an origin. Ids and image references are one path segment each:
//! they are percent-encoded here, so no value can change a path's shape.

use crate::API_PREFIX;

/// `GET /api/v1/containers/status`.
pub const STATUS: &str = "/api/v1/containers/status";
/// `GET /api/v1/billing/status`.
pub const BILLING_STATUS: &str = "/api/v1/billing/status";
/// `POST /api/v1/auth/token`.
pub const AUTH_TOKEN: &str = "/api/v1/auth/token";
/// `POST` (create) and `GET` (list) runs.
pub const RUNS: &str = "/api/v1/containers/runs";
/// `GET /api/v1/containers/images`.
pub const IMAGES: &str = "/api/v1/containers/images";
/// `POST /api/v1/containers/images/pull`.
pub const IMAGES_PULL: &str = "/api/v1/containers/images/pull";
/// `POST /api/v1/containers/images/push`.
pub const IMAGES_PUSH: &str = "/api/v1/containers/images/push";
/// `POST /api/v1/containers/images/load`.
pub const IMAGES_LOAD: &str = "/api/v1/containers/images/load";
/// `POST /api/v1/containers/images/load-from-storage`.
pub const IMAGES_LOAD_FROM_STORAGE: &str = "/api/v1/containers/images/load-from-storage";
/// `POST` (create) and `GET` (list) builds.
pub const BUILDS: &str = "/api/v1/containers/builds";

/// One path segment, percent-encoded.
fn segment(value: &str) -> String {
    form_urlencoded::byte_serialize(value.as_bytes()).collect()
}

/// `/api/v1/containers/runs/{id}` followed by `suffix` (empty, `/logs`, `/stop`, ...).
fn below(collection: &str, id: &str, suffix: &str) -> String {
    format!(
        "{API_PREFIX}/containers/{collection}/{}{suffix}",
        segment(id)
    )
}

/// `/api/v1/containers/runs/{id}`: get, delete.
pub fn run(id: &str) -> String {
    below("runs", id, "")
}

/// `/api/v1/containers/runs/{id}/logs`.
pub fn run_logs(id: &str) -> String {
    below("runs", id, "/logs")
}

/// `/api/v1/containers/runs/{id}/stop`.
pub fn run_stop(id: &str) -> String {
    below("runs", id, "/stop")
}

/// `/api/v1/containers/runs/{id}/attach` (WebSocket).
pub fn run_attach(id: &str) -> String {
    below("runs", id, "/attach")
}

/// `/api/v1/containers/runs/{id}/exec` (WebSocket).
pub fn run_exec(id: &str) -> String {
    below("runs", id, "/exec")
}

/// `/api/v1/containers/runs/{id}/execs`: start a detached exec.
pub fn run_execs(id: &str) -> String {
    below("runs", id, "/execs")
}

/// `/api/v1/containers/execs/{exec_id}`.
pub fn exec(exec_id: &str) -> String {
    below("execs", exec_id, "")
}

/// `/api/v1/containers/execs/{exec_id}/attach` (WebSocket).
pub fn exec_attach(exec_id: &str) -> String {
    below("execs", exec_id, "/attach")
}

/// `/api/v1/containers/images/{reference}`: inspect, remove.
pub fn image(reference: &str) -> String {
    below("images", reference, "")
}

/// `/api/v1/containers/images/{reference}/tag`.
pub fn image_tag(reference: &str) -> String {
    below("images", reference, "/tag")
}

/// `/api/v1/containers/images/{reference}/archive`.
pub fn image_archive(reference: &str) -> String {
    below("images", reference, "/archive")
}

/// `/api/v1/containers/builds/{id}`: get, delete.
pub fn build(id: &str) -> String {
    below("builds", id, "")
}

/// `/api/v1/containers/builds/{id}/logs`.
pub fn build_logs(id: &str) -> String {
    below("builds", id, "/logs")
}

/// `/api/v1/containers/builds/{id}/cancel`.
pub fn build_cancel(id: &str) -> String {
    below("builds", id, "/cancel")
}

/// `path` with `query` (one of this crate's query types) appended, without a `?` when the
/// query is empty.
pub fn with_query<Q: serde::Serialize>(path: &str, query: &Q) -> String {
    match crate::query_string(query) {
        q if q.is_empty() => path.to_owned(),
        q => format!("{path}?{q}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_cannot_change_the_path() {
        assert_eq!(run_logs("../x"), "/api/v1/containers/runs/..%2Fx/logs");
        assert_eq!(run("run_1"), "/api/v1/containers/runs/run_1");
        assert_eq!(
            image_tag("docker.io/library/busybox:1"),
            "/api/v1/containers/images/docker.io%2Flibrary%2Fbusybox%3A1/tag"
        );
        assert_eq!(
            exec_attach("exec_1"),
            "/api/v1/containers/execs/exec_1/attach"
        );
    }
}

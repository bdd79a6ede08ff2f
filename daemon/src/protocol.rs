//! busd's protocol revision and the refusal of clients newer than it.
//!
//! A client (the CLI) sends its revision ([`bus::PROTOCOL`]) as the call metadata
//! `bus-protocol`. A busd older than the client — one left running across an upgrade —
//! refuses every call but the Daemon service's with `FAILED_PRECONDITION` and the `ErrorInfo`
//! reason `PROTOCOL_MISMATCH` before doing anything, so the CLI can restart it (when a CLI
//! started it) and run the command again, at no cost to calls that match. A client older
//! than busd is served: the protocol only grows. Calls without the metadata (stock gRPC
//! tools, the Python and TypeScript clients, which compare `DaemonInfo.protocol` on connect)
//! are served too.

use std::sync::OnceLock;
use std::task::{Context, Poll};

use tonic::Status;
use tonic::codegen::http;

use crate::status::Error;

/// The metadata key a client puts its revision in.
pub const META_PROTOCOL: &str = "bus-protocol";

pub use crate::status::PROTOCOL_MISMATCH;

/// Debug builds only: the revision this busd claims instead of [`bus::PROTOCOL`]. It exists
/// so the tests can run a busd "from before an upgrade" beside the current CLI without a
/// second build; release builds ignore it.
pub const OVERRIDE_ENV: &str = "BUSD_PROTOCOL_OVERRIDE";

/// What [`init`] recorded.
#[derive(Debug, Clone, Copy)]
struct Identity {
    revision: u32,
    started_by_cli: bool,
}

static IDENTITY: OnceLock<Identity> = OnceLock::new();

/// Records, once at start-up, whether a CLI started this busd (it then may restart it).
pub fn init(started_by_cli: bool) {
    let _ = IDENTITY.set(Identity {
        revision: revision_from(|name| std::env::var(name).ok()),
        started_by_cli,
    });
}

fn identity() -> Identity {
    *IDENTITY.get_or_init(|| Identity {
        revision: revision_from(|name| std::env::var(name).ok()),
        started_by_cli: false,
    })
}

/// This busd's protocol revision (`DaemonInfo.protocol`).
pub fn revision() -> u32 {
    identity().revision
}

fn revision_from(env: impl Fn(&str) -> Option<String>) -> u32 {
    if cfg!(debug_assertions)
        && let Some(revision) = env(OVERRIDE_ENV).and_then(|v| v.trim().parse().ok())
    {
        return revision;
    }
    bus::PROTOCOL
}

/// The refusal of a call from a client of revision `client`, or `None` to serve it.
fn check(path: &str, client: Option<u32>) -> Option<Status> {
    let me = identity();
    let client = client?;
    // The Daemon service stays callable, so an old busd can still be asked to stop.
    if client <= me.revision || path.starts_with("/bus.daemon.v1.Daemon/") {
        return None;
    }
    Some(
        Error::ProtocolMismatch {
            busd: me.revision,
            client,
            started_by_cli: me.started_by_cli,
            pid: std::process::id(),
        }
        .into(),
    )
}

/// The tower layer that refuses calls from clients newer than this busd.
#[derive(Debug, Clone, Copy, Default)]
pub struct ProtocolLayer;

impl<S> tower::Layer<S> for ProtocolLayer {
    type Service = ProtocolCheck<S>;

    fn layer(&self, inner: S) -> ProtocolCheck<S> {
        ProtocolCheck { inner }
    }
}

/// The service [`ProtocolLayer`] makes.
#[derive(Debug, Clone)]
pub struct ProtocolCheck<S> {
    inner: S,
}

impl<S, B, R> tower::Service<http::Request<B>> for ProtocolCheck<S>
where
    S: tower::Service<http::Request<B>, Response = http::Response<R>>,
    S::Future: Send + 'static,
    R: Default + Send + 'static,
{
    type Response = http::Response<R>;
    type Error = S::Error;
    type Future = futures::future::Either<
        S::Future,
        futures::future::Ready<Result<http::Response<R>, S::Error>>,
    >;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        let client = request
            .headers()
            .get(META_PROTOCOL)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse().ok());
        match check(request.uri().path(), client) {
            None => futures::future::Either::Left(self.inner.call(request)),
            Some(refusal) => {
                tracing::warn!(
                    client_protocol = client,
                    protocol = revision(),
                    "refused a call from a newer client; restart busd"
                );
                futures::future::Either::Right(futures::future::ready(Ok(refusal.into_http())))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use tonic::Code;
    use tonic_types::StatusExt as _;

    use super::*;

    #[test]
    fn only_newer_clients_are_refused_and_never_the_daemon_service() {
        let me = revision();
        assert!(check("/bus.containers.v1.Containers/ListRuns", None).is_none());
        assert!(check("/bus.containers.v1.Containers/ListRuns", Some(me)).is_none());
        assert!(check("/bus.containers.v1.Containers/ListRuns", Some(me - 1)).is_none());
        assert!(check("/bus.daemon.v1.Daemon/Shutdown", Some(me + 1)).is_none());
        let refusal = check("/bus.containers.v1.Containers/ListRuns", Some(me + 1)).unwrap();
        assert_eq!(refusal.code(), Code::FailedPrecondition);
        let info = refusal.get_error_details().error_info().cloned().unwrap();
        assert_eq!(info.reason, PROTOCOL_MISMATCH);
        assert_eq!(info.metadata["client_protocol"], (me + 1).to_string());
    }

    #[test]
    fn the_override_is_read_only_in_debug_builds() {
        let env = |name: &str| (name == OVERRIDE_ENV).then(|| "7".to_owned());
        let want = if cfg!(debug_assertions) {
            7
        } else {
            bus::PROTOCOL
        };
        assert_eq!(revision_from(env), want);
        assert_eq!(revision_from(|_| None), bus::PROTOCOL);
    }
}

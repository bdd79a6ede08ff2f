//! busd's life: counting calls and streams, asking for shutdown (signal, `Shutdown` RPC or idle
//! exit), and draining within a bound.
//!
//! A tower layer around every service counts each call from its request until its response
//! body is dropped, so a server stream counts for as long as it is open; the streaming methods
//! are known from the embedded descriptor set, not from a hand-kept list.

use std::collections::HashSet;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use prost::Message as _;
use tokio::sync::watch;
use tokio::time::Instant;
use tonic::codegen::http;

/// How long open streams may take to finish once shutdown begins, unless told otherwise.
pub const DEFAULT_DRAIN: Duration = Duration::from_secs(5);

/// How busd is run beyond its configuration.
#[derive(Debug, Clone)]
pub struct ServeOptions {
    /// Exit after this long without any call in flight; `None` = never.
    pub idle_exit: Option<Duration>,
    /// How long open streams may take to finish once shutdown begins.
    pub drain: Duration,
    /// Whether the listener came from systemd (busd then leaves the socket file alone).
    pub socket_activated: bool,
}

impl Default for ServeOptions {
    fn default() -> Self {
        ServeOptions {
            idle_exit: None,
            drain: DEFAULT_DRAIN,
            socket_activated: false,
        }
    }
}

/// Why busd is stopping.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StopReason {
    /// SIGTERM or SIGINT (or the embedding's shutdown future).
    Signal,
    /// The `Shutdown` RPC.
    Requested,
    /// No call for the idle-exit period.
    Idle,
}

/// Shared by the tracking layer, the Daemon service and the serve loop.
pub struct Lifecycle {
    calls: AtomicUsize,
    streams: AtomicUsize,
    last_active: Mutex<Instant>,
    streaming: HashSet<String>,
    stop: watch::Sender<Option<(StopReason, Duration)>>,
    options: Mutex<ServeOptions>,
}

impl Default for Lifecycle {
    fn default() -> Self {
        Lifecycle {
            calls: AtomicUsize::new(0),
            streams: AtomicUsize::new(0),
            last_active: Mutex::new(Instant::now()),
            streaming: streaming_methods(bus::FILE_DESCRIPTOR_SET),
            stop: watch::channel(None).0,
            options: Mutex::new(ServeOptions::default()),
        }
    }
}

impl Lifecycle {
    /// The options busd was started with.
    pub fn options(&self) -> ServeOptions {
        self.options.lock().expect("options lock").clone()
    }

    /// Sets the options (once, before serving).
    pub fn set_options(&self, options: ServeOptions) {
        *self.options.lock().expect("options lock") = options;
    }

    /// Streams open right now.
    pub fn open_streams(&self) -> usize {
        self.streams.load(Ordering::SeqCst)
    }

    /// Calls in flight right now (streams included).
    pub fn open_calls(&self) -> usize {
        self.calls.load(Ordering::SeqCst)
    }

    /// Asks busd to stop, draining for at most `drain`; the first request wins.
    pub fn request_stop(&self, reason: StopReason, drain: Duration) {
        self.stop.send_if_modified(|stop| {
            if stop.is_none() {
                *stop = Some((reason, drain));
                true
            } else {
                false
            }
        });
    }

    /// Whether a stop was requested.
    pub fn stopping(&self) -> bool {
        self.stop.borrow().is_some()
    }

    /// Completes once a stop is requested, with its reason and drain bound.
    pub async fn stop_requested(&self) -> (StopReason, Duration) {
        let mut rx = self.stop.subscribe();
        loop {
            if let Some(stop) = *rx.borrow_and_update() {
                return stop;
            }
            if rx.changed().await.is_err() {
                // The sender lives in `self`; this cannot happen while `self` does.
                std::future::pending::<()>().await;
            }
        }
    }

    /// Completes once no call has been in flight for `limit`.
    pub async fn idle_for(&self, limit: Duration) {
        loop {
            let since = *self.last_active.lock().expect("activity lock");
            let idle_until = since + limit;
            if self.open_calls() == 0 && Instant::now() >= idle_until {
                return;
            }
            let wake = if self.open_calls() == 0 {
                idle_until
            } else {
                Instant::now() + limit.min(Duration::from_secs(1))
            };
            tokio::time::sleep_until(wake).await;
        }
    }

    fn enter(self: &Arc<Self>, path: &str) -> CallGuard {
        let stream = self.streaming.contains(path);
        self.calls.fetch_add(1, Ordering::SeqCst);
        if stream {
            self.streams.fetch_add(1, Ordering::SeqCst);
        }
        *self.last_active.lock().expect("activity lock") = Instant::now();
        CallGuard {
            lifecycle: self.clone(),
            stream,
        }
    }
}

/// `incoming` until a stop is requested; then the listener is dropped at once, so new
/// clients are refused (and may start a new busd) while open calls drain.
pub fn close_on_stop<S>(
    incoming: S,
    lifecycle: Arc<Lifecycle>,
) -> impl futures::Stream<Item = S::Item> + Send + 'static
where
    S: futures::Stream + Send + 'static,
{
    let stop: BoxFuture<()> = Box::pin(async move {
        lifecycle.stop_requested().await;
    });
    CloseOnStop {
        inner: Some(Box::pin(incoming)),
        stop,
    }
}

struct CloseOnStop<S> {
    inner: Option<Pin<Box<S>>>,
    stop: BoxFuture<()>,
}

impl<S: futures::Stream> futures::Stream for CloseOnStop<S> {
    type Item = S::Item;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<S::Item>> {
        if self.inner.is_some() && self.stop.as_mut().poll(cx).is_ready() {
            self.inner = None;
        }
        match self.inner.as_mut() {
            Some(inner) => inner.as_mut().poll_next(cx),
            None => Poll::Ready(None),
        }
    }
}

/// `/package.Service/Method` of every client- or server-streaming method in `descriptors`.
fn streaming_methods(descriptors: &[u8]) -> HashSet<String> {
    let Ok(set) = prost_types::FileDescriptorSet::decode(descriptors) else {
        return HashSet::new();
    };
    let mut paths = HashSet::new();
    for file in &set.file {
        for service in &file.service {
            for method in &service.method {
                if method.client_streaming() || method.server_streaming() {
                    paths.insert(format!(
                        "/{}.{}/{}",
                        file.package(),
                        service.name(),
                        method.name()
                    ));
                }
            }
        }
    }
    paths
}

/// Counts one call until dropped (with the response body).
struct CallGuard {
    lifecycle: Arc<Lifecycle>,
    stream: bool,
}

impl Drop for CallGuard {
    fn drop(&mut self) {
        if self.stream {
            self.lifecycle.streams.fetch_sub(1, Ordering::SeqCst);
        }
        self.lifecycle.calls.fetch_sub(1, Ordering::SeqCst);
        *self.lifecycle.last_active.lock().expect("activity lock") = Instant::now();
    }
}

/// The tower layer that counts calls and streams.
#[derive(Clone)]
pub struct TrackLayer(Arc<Lifecycle>);

impl TrackLayer {
    /// A layer reporting to `lifecycle`.
    pub fn new(lifecycle: Arc<Lifecycle>) -> Self {
        TrackLayer(lifecycle)
    }
}

impl<S> tower::Layer<S> for TrackLayer {
    type Service = Track<S>;

    fn layer(&self, inner: S) -> Track<S> {
        Track {
            inner,
            lifecycle: self.0.clone(),
        }
    }
}

/// The service [`TrackLayer`] makes.
#[derive(Clone)]
pub struct Track<S> {
    inner: S,
    lifecycle: Arc<Lifecycle>,
}

type BoxFuture<T> = Pin<Box<dyn std::future::Future<Output = T> + Send + 'static>>;

impl<S, B, R> tower::Service<http::Request<B>> for Track<S>
where
    S: tower::Service<http::Request<B>, Response = http::Response<R>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    B: Send + 'static,
{
    type Response = http::Response<Tracked<R>>;
    type Error = S::Error;
    type Future = BoxFuture<Result<Self::Response, S::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        let guard = self.lifecycle.enter(request.uri().path());
        // The ready service answers this call; a fresh clone waits for the next one.
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        Box::pin(async move {
            let response = inner.call(request).await?;
            Ok(response.map(|body| Tracked {
                body,
                _guard: guard,
            }))
        })
    }
}

/// A response body that keeps its call counted until it is dropped.
pub struct Tracked<B> {
    body: B,
    _guard: CallGuard,
}

impl<B> http_body::Body for Tracked<B>
where
    B: http_body::Body + Unpin,
{
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Self::Data>, Self::Error>>> {
        Pin::new(&mut self.body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.body.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn streaming_methods_come_from_the_descriptor_set() {
        let paths = streaming_methods(bus::FILE_DESCRIPTOR_SET);
        assert!(
            paths.contains("/bus.containers.v1.Containers/Run"),
            "{paths:?}"
        );
        assert!(!paths.contains("/bus.containers.v1.Containers/GetStatus"));
        assert!(!paths.contains("/bus.daemon.v1.Daemon/GetInfo"));
    }

    #[tokio::test]
    async fn guards_count_calls_and_streams_until_dropped() {
        let lifecycle = Arc::new(Lifecycle::default());
        let stream = lifecycle.enter("/bus.containers.v1.Containers/Run");
        let unary = lifecycle.enter("/bus.daemon.v1.Daemon/GetInfo");
        assert_eq!((lifecycle.open_calls(), lifecycle.open_streams()), (2, 1));
        drop(unary);
        assert_eq!((lifecycle.open_calls(), lifecycle.open_streams()), (1, 1));
        drop(stream);
        assert_eq!((lifecycle.open_calls(), lifecycle.open_streams()), (0, 0));
    }

    #[tokio::test(start_paused = true)]
    async fn idle_exit_waits_for_quiet() {
        let lifecycle = Arc::new(Lifecycle::default());
        let call = lifecycle.enter("/bus.containers.v1.Containers/Run");
        let limit = Duration::from_secs(30);
        let idle = tokio::time::timeout(Duration::from_secs(120), lifecycle.idle_for(limit));
        // While a stream is open busd is never idle.
        assert!(idle.await.is_err());
        drop(call);
        let started = tokio::time::Instant::now();
        lifecycle.idle_for(limit).await;
        assert!(started.elapsed() >= limit);
    }

    #[tokio::test]
    async fn the_first_stop_request_wins() {
        let lifecycle = Lifecycle::default();
        assert!(!lifecycle.stopping());
        lifecycle.request_stop(StopReason::Requested, Duration::from_secs(1));
        lifecycle.request_stop(StopReason::Signal, Duration::from_secs(9));
        assert_eq!(
            lifecycle.stop_requested().await,
            (StopReason::Requested, Duration::from_secs(1))
        );
    }
}

//! busd in-process against a fake upstream that accepts and never answers: the caller's gRPC
//! deadline must bound the REST call, so busd answers DEADLINE_EXCEEDED with its own details
//! (UPSTREAM_TIMEOUT) before the caller's timer fires, rather than hanging on the upstream.

use std::os::unix::fs::PermissionsExt;
use std::time::{Duration, Instant};

use bus::proto::containers::v1::{GetStatusRequest, containers_client::ContainersClient};
use busd::config::{ApiOrigin, Config};
use busd::credentials::TokenSource;
use tonic_types::StatusExt;

#[tokio::test]
async fn the_grpc_deadline_bounds_the_rest_call() {
    let dir = tempfile::tempdir().unwrap();
    let token = dir.path().join("token");
    std::fs::write(&token, "eyJhbGciOiJFZERTQSJ9.eyJzdWIiOiJhbGljZSJ9.c2ln").unwrap();
    std::fs::set_permissions(&token, std::fs::Permissions::from_mode(0o600)).unwrap();

    // Accepts connections (the kernel does, from the backlog) and never answers.
    let silent = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let origin = ApiOrigin::parse(&format!("http://{}", silent.local_addr().unwrap())).unwrap();

    let socket = dir.path().join("busd.sock");
    let listener = busd::socket::bind(&socket).await.unwrap();
    let config = Config {
        socket: socket.clone(),
        api_origin: origin,
        token_source: TokenSource::File(token),
        trusted_cas: Default::default(),
        resume_for: busd::config::DEFAULT_RESUME_FOR,
    };
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(busd::serve(listener, config, async {
        let _ = stopped.await;
    }));

    let mut client = ContainersClient::new(bus::connect(&socket).await.unwrap());
    let mut request = tonic::Request::new(GetStatusRequest {});
    request.set_timeout(Duration::from_secs(1));
    let started = Instant::now();
    let status = client.get_status(request).await.unwrap_err();
    assert_eq!(status.code(), tonic::Code::DeadlineExceeded, "{status:?}");
    let reason = status
        .get_error_details()
        .error_info()
        .map(|i| i.reason.clone());
    assert_eq!(reason.as_deref(), Some("UPSTREAM_TIMEOUT"), "{status:?}");
    assert!(started.elapsed() < Duration::from_secs(1));
    drop(silent);

    let _ = stop.send(());
    server.await.unwrap().unwrap();
}

//! Egress proxies: `/api/v1/proxy/NAME/...` forwards a run's request to the proxy's upstream
//! with the real credential ([`crate::config::proxies`]), so the container holds only its
//! run token.
//!
//! The caller's key is the run token, as `Authorization: Bearer` or in the proxy's `header`
//! (an `x-api-key`-style proxy). It must be a run token of a run that has not ended, whose
//! profile lists the proxy. The caller's key header is dropped, the credential put in its
//! place, and both bodies stream through unbuffered. These routes pass arbitrary upstream APIs
//! through, so the OpenAPI document does not describe them.

use axum::body::Body;
use axum::extract::{Path, Request, State};
use axum::http::{HeaderMap, HeaderName, HeaderValue, Uri, header};
use axum::response::Response;
use hyper_util::rt::TokioIo;
use rustls_pki_types::ServerName;

use crate::AppState;
use crate::config::proxies::Proxy;
use crate::http::auth::{authorize_token, check_run_live};
use crate::http::problem::ApiError;

/// Headers that belong to one connection and are not forwarded.
const HOP_BY_HOP: [&str; 8] = [
    "connection",
    "keep-alive",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
];

/// `ANY /api/v1/proxy/{name}`: the upstream's base path itself.
pub async fn forward_root(
    State(state): State<AppState>,
    Path(name): Path<String>,
    request: Request,
) -> Result<Response, ApiError> {
    forward(&state, &name, "", request).await
}

/// `ANY /api/v1/proxy/{name}/{*path}`: a path below the upstream's base path.
pub async fn forward_path(
    State(state): State<AppState>,
    Path((name, path)): Path<(String, String)>,
    request: Request,
) -> Result<Response, ApiError> {
    forward(&state, &name, &path, request).await
}

async fn forward(
    state: &AppState,
    name: &str,
    path: &str,
    request: Request,
) -> Result<Response, ApiError> {
    let proxy = state
        .config()
        .proxies
        .get(name)
        .ok_or_else(|| ApiError::ProxyNotFound(name.to_owned()))?;
    check_caller(state, proxy, request.headers())?;
    let (mut parts, body) = request.into_parts();
    let target = target(proxy, path, parts.uri.query())?;
    let host = proxy.upstream.host_str().unwrap_or_default().to_owned();
    let port = proxy.upstream.port_or_known_default().unwrap_or(80);
    let headers = &mut parts.headers;
    for name in HOP_BY_HOP {
        headers.remove(name);
    }
    headers.remove(header::AUTHORIZATION);
    headers.remove(proxy.header.as_str());
    let authority = match proxy.upstream.port() {
        Some(port) => format!("{host}:{port}"),
        None => host.clone(),
    };
    headers.insert(
        header::HOST,
        HeaderValue::from_str(&authority).map_err(|_| upstream("its host is not a header"))?,
    );
    headers.insert(credential_header(proxy), credential_value(proxy)?);
    parts.uri = target;
    let outgoing = axum::http::Request::from_parts(parts, body);

    let stream = tokio::net::TcpStream::connect((host.as_str(), port))
        .await
        .map_err(|e| upstream(&format!("cannot connect to {authority}: {e}")))?;
    let _ = stream.set_nodelay(true);
    let reply = match &proxy.tls {
        None => send(stream, outgoing, &authority).await?,
        Some(tls) => {
            let name = ServerName::try_from(host.clone())
                .map_err(|_| upstream(&format!("{host} is not a TLS server name")))?;
            let stream = tokio_rustls::TlsConnector::from(tls.config.clone())
                .connect(name, stream)
                .await
                .map_err(|e| upstream(&format!("TLS with {authority} failed: {e}")))?;
            send(stream, outgoing, &authority).await?
        }
    };
    let (mut parts, body) = reply.into_parts();
    for name in HOP_BY_HOP {
        parts.headers.remove(name);
    }
    Ok(Response::from_parts(parts, Body::new(body)))
}

/// Sends `request` over a fresh HTTP/1.1 connection on `io`.
async fn send<IO>(
    io: IO,
    request: axum::http::Request<Body>,
    authority: &str,
) -> Result<axum::http::Response<hyper::body::Incoming>, ApiError>
where
    IO: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(io))
        .await
        .map_err(|e| upstream(&format!("{authority}: {e}")))?;
    tokio::spawn(async move {
        if let Err(e) = connection.await {
            tracing::debug!(error = %e, "proxy connection ended");
        }
    });
    sender
        .send_request(request)
        .await
        .map_err(|e| upstream(&format!("{authority}: {e}")))
}

/// Verifies the caller's run token: a live run whose profile lists `proxy`.
fn check_caller(state: &AppState, proxy: &Proxy, headers: &HeaderMap) -> Result<(), ApiError> {
    let key = match headers.get(header::AUTHORIZATION) {
        Some(value) => Some(value.as_bytes().to_vec()),
        None if proxy.header != "authorization" => headers
            .get(proxy.header.as_str())
            .map(|v| [b"Bearer ".as_slice(), v.as_bytes()].concat()),
        None => None,
    };
    let claims = authorize_token(state.keys(), key.as_deref())?;
    let Some(run) = claims.run.clone() else {
        return Err(ApiError::RunTokenRefused(format!(
            "the proxy \"{}\" takes a run's token (BUS_AI_TOKEN inside the run), not an \
             account's",
            proxy.name
        )));
    };
    check_run_live(state, &claims)?;
    let profile = state
        .store()
        .get(&claims.sub, &run)
        .and_then(|entry| entry.snapshot().profile);
    let allowed = profile
        .as_deref()
        .and_then(|p| state.config().profile(p))
        .is_some_and(|p| p.proxies.contains(&proxy.name));
    if !allowed {
        return Err(ApiError::RunTokenRefused(format!(
            "run {run}'s profile does not list the proxy \"{}\"",
            proxy.name
        )));
    }
    Ok(())
}

/// The upstream URI for `path` (below the proxy's name) and `query`.
fn target(proxy: &Proxy, path: &str, query: Option<&str>) -> Result<Uri, ApiError> {
    let base = proxy.upstream.path().trim_end_matches('/');
    let mut target = format!("{base}/{path}");
    if let Some(query) = query {
        target.push('?');
        target.push_str(query);
    }
    target
        .parse()
        .map_err(|_| ApiError::InvalidRequest("the proxied path is not a valid URI".to_owned()))
}

fn credential_header(proxy: &Proxy) -> HeaderName {
    HeaderName::from_bytes(proxy.header.as_bytes()).unwrap_or(header::AUTHORIZATION)
}

fn credential_value(proxy: &Proxy) -> Result<HeaderValue, ApiError> {
    let secret = proxy.credential.expose();
    let text = if proxy.header == "authorization" {
        format!("Bearer {secret}")
    } else {
        secret.to_owned()
    };
    let mut value = HeaderValue::from_str(&text)
        .map_err(|_| upstream("its credential is not a valid header value"))?;
    value.set_sensitive(true);
    Ok(value)
}

fn upstream(why: &str) -> ApiError {
    ApiError::ProxyUpstream(why.to_owned())
}

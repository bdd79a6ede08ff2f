//! The bench's own clients: concurrent unary calls, log followers, keystroke round trips and
//! bulk log reads, each beside its anchor.

use std::io::{Read as _, Write as _};
use std::path::Path;
use std::process::Stdio;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bus::proto::containers::v1::containers_client::ContainersClient;
use bus::proto::containers::v1::log_event::Event;
use bus::proto::containers::v1::{GetRunRequest, StreamLogsRequest};
use futures::StreamExt as _;
use tonic::metadata::MetadataValue;
use tonic::transport::Channel;

use crate::Failed;
use crate::measure::Cmd;

/// The request metadata that names the API origin busd calls for that request.
const API_URL_KEY: &str = "bus-api-url";

/// How many calls completed in the measured window, per second.
#[derive(Debug, Clone, Copy)]
pub struct Throughput {
    /// Completed calls per second.
    pub per_second: f64,
    /// Every call made, warm-up included (for CPU time per call).
    pub total: u64,
}

/// The measured window of a load: `warmup` first, then `measure`.
#[derive(Debug, Clone, Copy)]
pub struct Window {
    /// Not counted.
    pub warmup: Duration,
    /// Counted.
    pub measure: Duration,
}

async fn connect(socket: &Path) -> Result<Channel, Failed> {
    bus::connect(socket)
        .await
        .map_err(|e| Failed(format!("cannot connect to busd: {e}")))
}

/// `GetRun(run_id)` through busd from `clients` connections at once, each calling in a loop.
pub async fn grpc_get_run(
    socket: &Path,
    run_id: &str,
    clients: usize,
    window: Window,
) -> Result<Throughput, Failed> {
    let mut channels = Vec::with_capacity(clients);
    for _ in 0..clients {
        channels.push(connect(socket).await?);
    }
    let from = Instant::now() + window.warmup;
    let until = from + window.measure;
    let tasks: Vec<_> = channels
        .into_iter()
        .map(|channel| {
            let run_id = run_id.to_owned();
            tokio::spawn(async move {
                let mut client = ContainersClient::new(channel);
                let (mut calls, mut total) = (0u64, 0u64);
                while Instant::now() < until {
                    let request = GetRunRequest {
                        run_id: run_id.clone(),
                    };
                    client
                        .get_run(request)
                        .await
                        .map_err(|s| Failed(format!("GetRun through busd failed: {s}")))?;
                    total += 1;
                    let now = Instant::now();
                    if now >= from && now < until {
                        calls += 1;
                    }
                }
                Ok::<_, Failed>((calls, total))
            })
        })
        .collect();
    sum_calls(tasks, window).await
}

/// A REST client trusting the bench's CA, one keep-alive HTTP/1.1 connection at most (the
/// plain REST client the anchors stand for, whatever ALPN the runner offers).
pub fn rest_client(ca_pem: &[u8]) -> Result<reqwest::Client, Failed> {
    let ca = reqwest::Certificate::from_pem(ca_pem)
        .map_err(|e| Failed(format!("the CA certificate is not usable: {e}")))?;
    reqwest::Client::builder()
        .add_root_certificate(ca)
        .http1_only()
        .tcp_nodelay(true)
        .pool_max_idle_per_host(1)
        .build()
        .map_err(|e| Failed(format!("cannot build an HTTP client: {e}")))
}

/// `GET /api/v1/containers/runs/{run_id}` straight to the runner from `clients` keep-alive
/// clients at once, each calling in a loop.
pub async fn rest_get_run(
    origin: &str,
    ca_pem: &[u8],
    token: &str,
    run_id: &str,
    clients: usize,
    window: Window,
) -> Result<Throughput, Failed> {
    let url = Arc::new(format!("{origin}/api/v1/containers/runs/{run_id}"));
    let bearer = Arc::new(format!("Bearer {token}"));
    let from = Instant::now() + window.warmup;
    let until = from + window.measure;
    let mut tasks = Vec::with_capacity(clients);
    for _ in 0..clients {
        let client = rest_client(ca_pem)?;
        let (url, bearer) = (url.clone(), bearer.clone());
        tasks.push(tokio::spawn(async move {
            let (mut calls, mut total) = (0u64, 0u64);
            while Instant::now() < until {
                let response = client
                    .get(url.as_str())
                    .header("authorization", bearer.as_str())
                    .send()
                    .await
                    .and_then(|r| r.error_for_status())
                    .map_err(|e| Failed(format!("GET {url} failed: {e}")))?;
                response
                    .bytes()
                    .await
                    .map_err(|e| Failed(format!("GET {url} failed: {e}")))?;
                total += 1;
                let now = Instant::now();
                if now >= from && now < until {
                    calls += 1;
                }
            }
            Ok::<_, Failed>((calls, total))
        }));
    }
    sum_calls(tasks, window).await
}

async fn sum_calls(
    tasks: Vec<tokio::task::JoinHandle<Result<(u64, u64), Failed>>>,
    window: Window,
) -> Result<Throughput, Failed> {
    let (mut calls, mut total) = (0, 0);
    for task in tasks {
        let (c, t) = task
            .await
            .map_err(|e| Failed(format!("a load task failed: {e}")))??;
        calls += c;
        total += t;
    }
    Ok(Throughput {
        per_second: calls as f64 / window.measure.as_secs_f64(),
        total,
    })
}

/// What a set of followers of one live run saw.
#[derive(Debug, Default)]
pub struct Followed {
    /// Delivery lag of every chunk the runner read after all followers were in place, ms:
    /// when a follower got it minus when the runner read it (the frame's `time`).
    pub lags_ms: Vec<f64>,
    /// Chunks each follower got in that window.
    pub chunks: Vec<usize>,
    /// What `during` returned, called while every follower is still connected.
    pub sampled: u64,
}

fn now_ns() -> i128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as i128)
        .unwrap_or_default()
}

/// How a set of busd followers is made up.
#[derive(Debug, Clone, Copy)]
pub struct Follow<'a> {
    /// How many `StreamLogs(follow)` calls.
    pub followers: usize,
    /// Over how many connections to busd they are spread.
    pub connections: usize,
    /// How long they are held once all are open.
    pub window: Duration,
    /// The API origin busd should call for them (its own when `None`).
    pub api_url: Option<&'a str>,
}

/// `StreamLogs(follow)` calls of `run_id` through busd, made up as `follow` says; `during` is
/// called at the end of its window.
pub async fn follow_busd(
    socket: &Path,
    run_id: &str,
    follow: Follow<'_>,
    during: impl FnOnce() -> u64,
) -> Result<Followed, Failed> {
    let Follow {
        followers,
        connections,
        window,
        api_url,
    } = follow;
    let mut channels = Vec::with_capacity(connections);
    for _ in 0..connections {
        channels.push(connect(socket).await?);
    }
    let api_url = api_url
        .map(|url| MetadataValue::try_from(url).map_err(|e| Failed(format!("API URL {url}: {e}"))))
        .transpose()?;
    let mut streams = Vec::with_capacity(followers);
    for i in 0..followers {
        let mut client = ContainersClient::new(channels[i % connections].clone());
        let mut request = tonic::Request::new(StreamLogsRequest {
            run_id: run_id.to_owned(),
            follow: true,
            ..Default::default()
        });
        if let Some(url) = &api_url {
            request.metadata_mut().insert(API_URL_KEY, url.clone());
        }
        let stream = client
            .stream_logs(request)
            .await
            .map_err(|s| Failed(format!("StreamLogs through busd failed: {s}")))?
            .into_inner();
        streams.push(stream);
    }
    let since = now_ns();
    let until = Instant::now() + window;
    let tasks: Vec<_> = streams
        .into_iter()
        .map(|mut stream| {
            tokio::spawn(async move {
                let mut lags = Vec::new();
                loop {
                    let left = until.saturating_duration_since(Instant::now());
                    let Ok(next) = tokio::time::timeout(left, stream.message()).await else {
                        break;
                    };
                    let received = now_ns();
                    match next {
                        Ok(Some(event)) => {
                            if let Some(Event::Output(chunk)) = event.event {
                                let Some(t) = chunk.time else { continue };
                                let read =
                                    i128::from(t.seconds) * 1_000_000_000 + i128::from(t.nanos);
                                if read >= since {
                                    lags.push((received - read) as f64 / 1e6);
                                }
                            }
                        }
                        Ok(None) => return Err(Failed("a busd follow ended early".to_owned())),
                        Err(s) => return Err(Failed(format!("a busd follow failed: {s}"))),
                    }
                }
                Ok::<_, Failed>((lags, stream))
            })
        })
        .collect();
    tokio::time::sleep_until(until.into()).await;
    let sampled = during();
    collect_follows(tasks)
        .await
        .map(|(lags_ms, chunks)| Followed {
            lags_ms,
            chunks,
            sampled,
        })
}

/// A follower's task: its lags, and its stream (held open until every follower is done).
type FollowTask<S> = tokio::task::JoinHandle<Result<(Vec<f64>, S), Failed>>;

async fn collect_follows<S>(tasks: Vec<FollowTask<S>>) -> Result<(Vec<f64>, Vec<usize>), Failed> {
    let mut all = Vec::new();
    let mut chunks = Vec::new();
    let mut held = Vec::new();
    for task in tasks {
        let (lags, stream) = task
            .await
            .map_err(|e| Failed(format!("a follower task failed: {e}")))??;
        chunks.push(lags.len());
        all.extend(lags);
        held.push(stream);
    }
    drop(held);
    Ok((all, chunks))
}

/// `followers` separate `GET .../logs?follow=true` straight to the runner, one connection
/// each, held for `window` once all are open; `during` is called at its end.
pub async fn follow_rest(
    origin: &str,
    ca_pem: &[u8],
    token: &str,
    run_id: &str,
    followers: usize,
    window: Duration,
    during: impl FnOnce() -> u64,
) -> Result<Followed, Failed> {
    let url = format!("{origin}/api/v1/containers/runs/{run_id}/logs?follow=true");
    let mut bodies = Vec::with_capacity(followers);
    for _ in 0..followers {
        let response = rest_client(ca_pem)?
            .get(&url)
            .bearer_auth(token)
            .send()
            .await
            .and_then(|r| r.error_for_status())
            .map_err(|e| Failed(format!("GET {url} failed: {e}")))?;
        bodies.push(response.bytes_stream());
    }
    let since = now_ns();
    let until = Instant::now() + window;
    let tasks: Vec<_> = bodies
        .into_iter()
        .map(|mut body| {
            tokio::spawn(async move {
                let mut lags = Vec::new();
                let mut line = Vec::new();
                loop {
                    let left = until.saturating_duration_since(Instant::now());
                    let Ok(next) = tokio::time::timeout(left, body.next()).await else {
                        break;
                    };
                    let received = now_ns();
                    let bytes = match next {
                        Some(Ok(bytes)) => bytes,
                        Some(Err(e)) => return Err(Failed(format!("a REST follow failed: {e}"))),
                        None => return Err(Failed("a REST follow ended early".to_owned())),
                    };
                    for &b in bytes.iter() {
                        if b != b'\n' {
                            line.push(b);
                            continue;
                        }
                        if let Some(read) = frame_time_ns(&line) {
                            if read >= since {
                                lags.push((received - read) as f64 / 1e6);
                            }
                        }
                        line.clear();
                    }
                }
                Ok::<_, Failed>((lags, body))
            })
        })
        .collect();
    tokio::time::sleep_until(until.into()).await;
    let sampled = during();
    collect_follows(tasks)
        .await
        .map(|(lags_ms, chunks)| Followed {
            lags_ms,
            chunks,
            sampled,
        })
}

/// The `time` of an NDJSON output frame, ns since the epoch.
fn frame_time_ns(line: &[u8]) -> Option<i128> {
    let frame: serde_json::Value = serde_json::from_slice(line).ok()?;
    if frame["type"] != "output" {
        return None;
    }
    let t = time::OffsetDateTime::parse(
        frame["time"].as_str()?,
        &time::format_description::well_known::Rfc3339,
    )
    .ok()?;
    Some(t.unix_timestamp_nanos())
}

/// Starts `cmd` (a `cat` on the far side) and times `n` one-byte echoes after `warmup`, ms.
pub fn keystroke_rtt(cmd: &Cmd, n: usize, warmup: usize) -> Result<Vec<f64>, Failed> {
    let mut child = cmd
        .command()
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|e| Failed(format!("cannot run `{}`: {e}", cmd.display())))?;
    let mut stdin = child.stdin.take().expect("piped stdin");
    let mut stdout = child.stdout.take().expect("piped stdout");
    let mut times = Vec::with_capacity(n);
    for i in 0..warmup + n {
        let byte = [b'a' + (i % 26) as u8];
        let start = Instant::now();
        let mut got = [0u8];
        stdin
            .write_all(&byte)
            .and_then(|()| stdin.flush())
            .and_then(|()| stdout.read_exact(&mut got))
            .map_err(|e| Failed(format!("`{}`: echo {i} failed: {e}", cmd.display())))?;
        let elapsed = start.elapsed();
        if got != byte {
            return Err(Failed(format!(
                "`{}`: sent {byte:?}, got {got:?}",
                cmd.display()
            )));
        }
        if i >= warmup {
            times.push(elapsed.as_secs_f64() * 1e3);
        }
    }
    drop(stdin);
    let _ = child.wait();
    Ok(times)
}

/// Runs `cmd`, reading everything it prints on stdout: (wall time, bytes).
pub fn read_all(cmd: &Cmd) -> Result<(Duration, u64), Failed> {
    let start = Instant::now();
    let mut child = cmd
        .command()
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|e| Failed(format!("cannot run `{}`: {e}", cmd.display())))?;
    let mut stdout = child.stdout.take().expect("piped stdout");
    let mut buf = vec![0u8; 1 << 20];
    let mut total = 0u64;
    loop {
        match stdout.read(&mut buf) {
            Ok(0) => break,
            Ok(k) => total += k as u64,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(Failed(format!("reading `{}`: {e}", cmd.display()))),
        }
    }
    let status = child
        .wait()
        .map_err(|e| Failed(format!("waiting for `{}`: {e}", cmd.display())))?;
    let wall = start.elapsed();
    if !status.success() {
        return Err(Failed(format!("`{}` failed ({status})", cmd.display())));
    }
    Ok((wall, total))
}

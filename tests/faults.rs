//! End to end under faults: a proxy between busd and the runner cuts connections, goes
//! half-open (answers headers, then swallows everything), or is re-pointed at a runner that
//! was killed with SIGKILL and started again; the token file is rotated under a live follow.
//! Followers must see every stored seq exactly once, in order, and the exit once — or, when
//! the upstream stays silent, fail with UNAVAILABLE in bounded time instead of hanging.
//!
//! Measured recovery times are printed (`cargo test --test faults -- --nocapture`).

mod common;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bus::proto::containers::v1::{
    RunExited, StreamLogsRequest, containers_client::ContainersClient, log_event::Event,
};
use common::{ALL_SCOPES, Stack, mint, one_line_error, stdout};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

// ---------------------------------------------------------------------------------------------
// The fault proxy.

/// A TCP proxy in front of the runner, run on the test's tokio runtime.
struct Proxy {
    addr: SocketAddr,
    state: Arc<ProxyState>,
}

struct ProxyState {
    /// Where connections go (`host:port`).
    target: Mutex<String>,
    /// Bumped to cut every open connection.
    cuts: watch::Sender<u64>,
    /// Half-open mode: requests go through, response bytes after the headers are swallowed.
    silent: AtomicBool,
    /// Connections accepted so far.
    accepted: AtomicU64,
    /// Keepalive frames forwarded to busd so far.
    keepalives: AtomicU64,
}

impl Proxy {
    async fn start(origin: &str) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let state = Arc::new(ProxyState {
            target: Mutex::new(host_port(origin)),
            cuts: watch::channel(0).0,
            silent: AtomicBool::new(false),
            accepted: AtomicU64::new(0),
            keepalives: AtomicU64::new(0),
        });
        let shared = state.clone();
        tokio::spawn(async move {
            loop {
                let Ok((client, _)) = listener.accept().await else {
                    return;
                };
                shared.accepted.fetch_add(1, Ordering::SeqCst);
                tokio::spawn(connection(shared.clone(), client));
            }
        });
        Proxy { addr, state }
    }

    /// The origin busd is pointed at.
    fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Closes every open connection (both sides) at once.
    fn cut_all(&self) {
        self.state.cuts.send_modify(|n| *n += 1);
    }

    /// Sends new connections to `origin`.
    fn point_at(&self, origin: &str) {
        *self.state.target.lock().unwrap() = host_port(origin);
    }

    /// Half-open mode on or off. A connection that had bytes swallowed stays dead (as a real
    /// half-open one would); healing helps new connections only.
    fn set_silent(&self, silent: bool) {
        self.state.silent.store(silent, Ordering::SeqCst);
    }

    fn keepalives(&self) -> u64 {
        self.state.keepalives.load(Ordering::SeqCst)
    }

    fn accepted(&self) -> u64 {
        self.state.accepted.load(Ordering::SeqCst)
    }
}

fn host_port(origin: &str) -> String {
    origin.trim_start_matches("http://").to_owned()
}

/// One proxied connection: client to runner as is; runner to client as is, unless silent.
async fn connection(state: Arc<ProxyState>, client: TcpStream) {
    let mut cuts = state.cuts.subscribe();
    cuts.borrow_and_update();
    let target = state.target.lock().unwrap().clone();
    // A dead runner: the client sees its connection closed, as through a real gateway.
    let Ok(upstream) = TcpStream::connect(&target).await else {
        return;
    };
    let _ = client.set_nodelay(true);
    let _ = upstream.set_nodelay(true);
    let (mut client_read, mut client_write) = client.into_split();
    let (mut upstream_read, mut upstream_write) = upstream.into_split();
    let requests = tokio::io::copy(&mut client_read, &mut upstream_write);
    let responses = async {
        let mut buf = vec![0u8; 64 * 1024];
        // The last bytes seen, to find the end of the first response's headers.
        let mut tail: Vec<u8> = Vec::new();
        let mut headers_done = false;
        let mut swallowed = false;
        loop {
            let n = match upstream_read.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => n,
            };
            let mut data = &buf[..n];
            let text = String::from_utf8_lossy(data);
            let keepalives = text.matches(r#"{"type":"keepalive"}"#).count() as u64;
            if swallowed || state.silent.load(Ordering::SeqCst) {
                // Forward what is left of the first response's headers, swallow the rest.
                let mut forward = 0;
                if !headers_done {
                    let mut seen = tail.clone();
                    for (i, b) in data.iter().enumerate() {
                        seen.push(*b);
                        if seen.ends_with(b"\r\n\r\n") {
                            headers_done = true;
                            forward = i + 1;
                            break;
                        }
                    }
                    if !headers_done {
                        forward = data.len();
                    }
                }
                if forward > 0 {
                    if client_write.write_all(&data[..forward]).await.is_err() {
                        return;
                    }
                    remember_tail(&mut tail, &data[..forward]);
                }
                if forward < data.len() {
                    swallowed = true;
                }
                continue;
            }
            state.keepalives.fetch_add(keepalives, Ordering::SeqCst);
            if !headers_done {
                let mut seen = tail.clone();
                seen.extend_from_slice(data);
                headers_done = seen.windows(4).any(|w| w == b"\r\n\r\n");
            }
            remember_tail(&mut tail, data);
            while !data.is_empty() {
                match client_write.write(data).await {
                    Ok(0) | Err(_) => return,
                    Ok(n) => data = &data[n..],
                }
            }
        }
    };
    tokio::select! {
        _ = requests => {}
        () = responses => {}
        _ = cuts.changed() => {}
    }
    // Dropping both halves of both sockets closes them.
}

fn remember_tail(tail: &mut Vec<u8>, data: &[u8]) {
    tail.extend_from_slice(data);
    let excess = tail.len().saturating_sub(3);
    tail.drain(..excess);
}

// ---------------------------------------------------------------------------------------------
// Followers.

/// What one SDK follower (`StreamLogs`, follow) received.
#[derive(Debug, Default)]
struct Followed {
    seqs: Vec<u64>,
    /// When each chunk arrived.
    arrivals: Vec<Instant>,
    text: Vec<u8>,
    exits: Vec<RunExited>,
    gaps: usize,
    error: Option<tonic::Status>,
    /// When the stream ended (with the exit, an error or nothing).
    ended: Option<Instant>,
}

/// Follows `id` through busd until the stream ends; `progress` holds the last seq seen.
async fn follow(socket: std::path::PathBuf, id: String, progress: Arc<AtomicU64>) -> Followed {
    let channel = bus::connect(&socket).await.unwrap();
    let mut client = ContainersClient::new(channel);
    let mut got = Followed::default();
    let request = StreamLogsRequest {
        run_id: id,
        follow: true,
        ..Default::default()
    };
    let mut stream = match client.stream_logs(request).await {
        Ok(response) => response.into_inner(),
        Err(status) => {
            got.error = Some(status);
            got.ended = Some(Instant::now());
            return got;
        }
    };
    loop {
        match stream.message().await {
            Ok(Some(event)) => match event.event {
                Some(Event::Output(chunk)) => {
                    got.seqs.push(chunk.seq);
                    got.arrivals.push(Instant::now());
                    got.text.extend_from_slice(&chunk.data);
                    progress.store(chunk.seq, Ordering::SeqCst);
                }
                Some(Event::Exited(exit)) => got.exits.push(exit),
                Some(Event::Gap(_)) => got.gaps += 1,
                Some(Event::Keepalive(_)) | None => {}
            },
            Ok(None) => break,
            Err(status) => {
                got.error = Some(status);
                break;
            }
        }
    }
    got.ended = Some(Instant::now());
    got
}

/// Waits until `progress` reaches `seq`, for at most a minute.
async fn reached(progress: &AtomicU64, seq: u64) {
    let start = Instant::now();
    while progress.load(Ordering::SeqCst) < seq {
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "no seq {seq} within a minute (at {})",
            progress.load(Ordering::SeqCst)
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// The time from `at` to the first chunk that arrived after it.
fn recovery(followed: &Followed, at: Instant) -> Option<Duration> {
    followed
        .arrivals
        .iter()
        .find(|t| **t > at)
        .map(|t| t.duration_since(at))
}

/// Asserts seqs 1..=N exactly once in order, no gap event, no error and one exit whose
/// `last_seq` is N and whose exit code is 0; returns N.
fn assert_complete(who: &str, followed: &Followed) -> u64 {
    assert!(
        followed.error.is_none(),
        "{who}: failed: {:?}",
        followed.error
    );
    let n = followed.seqs.len() as u64;
    let dense: Vec<u64> = (1..=n).collect();
    assert_eq!(followed.seqs, dense, "{who}: every seq once, in order");
    assert_eq!(followed.gaps, 0, "{who}: no gap");
    assert_eq!(followed.exits.len(), 1, "{who}: the exit once");
    assert_eq!(followed.exits[0].last_seq, n, "{who}");
    assert_eq!(followed.exits[0].exit_code, 0, "{who}");
    n
}

/// The numbers of the `line N` lines of `text`.
fn line_numbers(text: &str) -> Vec<u32> {
    text.lines()
        .map(|l| {
            l.strip_prefix("line ")
                .and_then(|n| n.parse().ok())
                .unwrap_or_else(|| panic!("unexpected line {l:?}"))
        })
        .collect()
}

/// A shell loop printing `line 1` .. `line {count}`, sleeping `pause` after each.
fn numbered(count: u32, pause: &str) -> String {
    format!("i=0; while [ $i -lt {count} ]; do i=$((i+1)); echo line $i; sleep {pause}; done")
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap()
}

/// Starts busd through the CLI with `BUS_AI_API_URL` = `api_url` and `extra` environment.
fn start_busd(stack: &Stack, api_url: &str, extra: &[(&str, &str)]) -> u32 {
    let out = stack
        .bus_at(api_url)
        .envs(extra.iter().copied())
        .args(["daemon", "start"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    stack.busd_pid().expect("busd runs")
}

fn detached(stack: &Stack, api_url: &str, script: &str) -> String {
    let out = stack.run_at(
        api_url,
        &["containers", "run", "-d", "--", "sh", "-c", script],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout(&out).trim().to_owned()
}

fn resumes_logged(stack: &Stack) -> usize {
    stack
        .busd_log()
        .matches("log stream broke; resuming")
        .count()
}

// ---------------------------------------------------------------------------------------------
// The tests.

#[test]
fn followers_get_every_seq_once_through_connection_cuts() {
    let stack = Stack::start();
    let rt = runtime();
    let proxy = rt.block_on(Proxy::start(&stack.runner.origin));
    start_busd(&stack, &proxy.url(), &[]);
    let lines = 300;
    let id = detached(&stack, &proxy.url(), &numbered(lines, "0.02"));

    let cli = stack
        .bus_at(&proxy.url())
        .args(["containers", "logs", "-f", &id])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let (followers, cuts) = rt.block_on(async {
        let progress: Vec<_> = (0..2).map(|_| Arc::new(AtomicU64::new(0))).collect();
        let followers: Vec<_> = progress
            .iter()
            .map(|p| tokio::spawn(follow(stack.socket.clone(), id.clone(), p.clone())))
            .collect();
        let mut cuts = Vec::new();
        for at_seq in [50, 150] {
            reached(&progress[0], at_seq).await;
            proxy.cut_all();
            cuts.push(Instant::now());
        }
        let mut done = Vec::new();
        for follower in followers {
            done.push(follower.await.unwrap());
        }
        (done, cuts)
    });
    let cli = cli.wait_with_output().unwrap();

    let expected: String = (1..=lines).map(|i| format!("line {i}\n")).collect();
    let mut n = None;
    for (i, followed) in followers.iter().enumerate() {
        let last = assert_complete(&format!("follower {i}"), followed);
        assert_eq!(String::from_utf8_lossy(&followed.text), expected);
        assert_eq!(*n.get_or_insert(last), last, "both saw the same seqs");
    }
    assert!(
        cli.status.success(),
        "{}",
        String::from_utf8_lossy(&cli.stderr)
    );
    assert_eq!(stdout(&cli), expected, "the CLI printed every line once");
    assert!(
        resumes_logged(&stack) >= 2,
        "both cuts broke the upstream stream: {}",
        stack.busd_log()
    );
    for (i, at) in cuts.iter().enumerate() {
        eprintln!(
            "cut {}: next chunk after {:?}",
            i + 1,
            recovery(&followers[0], *at)
        );
    }
}

#[test]
fn followers_resume_after_the_runner_is_killed_and_restarted() {
    let mut stack = Stack::start();
    let rt = runtime();
    let proxy = rt.block_on(Proxy::start(&stack.runner.origin));
    let busd = start_busd(&stack, &proxy.url(), &[]);
    let id = detached(&stack, &proxy.url(), &numbered(300, "0.03"));

    let cli = stack
        .bus_at(&proxy.url())
        .args(["containers", "logs", "-f", &id])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let progress: Vec<_> = (0..2).map(|_| Arc::new(AtomicU64::new(0))).collect();
    let followers: Vec<_> = progress
        .iter()
        .map(|p| rt.spawn(follow(stack.socket.clone(), id.clone(), p.clone())))
        .collect();
    rt.block_on(reached(&progress[0], 60));

    let old_pid = stack.runner.pid();
    let killed = Instant::now();
    stack.runner.kill();
    stack.runner.restart();
    proxy.point_at(&stack.runner.origin);
    let restarted = Instant::now();
    assert_ne!(stack.runner.pid(), old_pid);

    let followers: Vec<Followed> = rt.block_on(async {
        let mut done = Vec::new();
        for follower in followers {
            done.push(follower.await.unwrap());
        }
        done
    });
    let cli = cli.wait_with_output().unwrap();

    let mut n = None;
    for (i, followed) in followers.iter().enumerate() {
        let last = assert_complete(&format!("follower {i}"), followed);
        assert_eq!(*n.get_or_insert(last), last, "both saw the same seqs");
        // Output written while no runner was attached is lost; what was stored is whole.
        let numbers = line_numbers(&String::from_utf8_lossy(&followed.text));
        assert!(
            numbers.windows(2).all(|w| w[0] < w[1]),
            "no line twice, none out of order: {numbers:?}"
        );
        assert_eq!(numbers.last(), Some(&300), "the run went on to its end");
    }
    assert!(
        cli.status.success(),
        "{}",
        String::from_utf8_lossy(&cli.stderr)
    );
    assert_eq!(
        stdout(&cli),
        String::from_utf8_lossy(&followers[0].text),
        "the CLI printed what the SDK followers got"
    );
    assert_eq!(stack.busd_pid(), Some(busd), "busd rode it out");
    eprintln!(
        "runner restart took {:?}; next chunk {:?} after the kill, {:?} after the restart",
        restarted - killed,
        recovery(&followers[0], killed),
        recovery(&followers[0], restarted)
    );
}

#[test]
fn a_rotated_token_file_does_not_disturb_a_follow_and_is_used_next() {
    let stack = Stack::start();
    let origin = stack.runner.origin.clone();
    let busd = start_busd(&stack, &origin, &[]);
    let id = detached(&stack, &origin, &numbered(40, "0.1"));
    let rt = runtime();
    let progress = Arc::new(AtomicU64::new(0));
    let follower = rt.spawn(follow(stack.socket.clone(), id.clone(), progress.clone()));
    rt.block_on(reached(&progress, 5));

    // Another token for the same account (a different lifetime makes it a different token).
    let old = std::fs::read_to_string(stack.config_dir().join("auth/api-token")).unwrap();
    let new = mint(
        stack.runner.state_dir.path(),
        "alice",
        ALL_SCOPES,
        &["--ttl", "2h"],
    );
    assert_ne!(old.trim(), new);
    stack.write_token(&new);

    let followed = rt.block_on(follower).unwrap();
    assert_complete("the follower", &followed);
    assert_eq!(followed.seqs.len(), 40);

    let got = stack.run(&["containers", "get", &id]);
    assert!(
        got.status.success(),
        "{}",
        String::from_utf8_lossy(&got.stderr)
    );
    assert!(stdout(&got).contains("exited"), "{}", stdout(&got));
    let status = stdout(&stack.run(&["auth", "status"]));
    assert!(status.contains("identity:  alice"), "{status}");
    assert_eq!(stack.busd_pid(), Some(busd), "the same busd");

    stack.write_token(&stack.runner.expired_token("alice"));
    let line = one_line_error(&stack.run(&["containers", "get", &id]));
    let path = stack.config_dir().join("auth/api-token");
    assert!(
        line.contains(&format!("the token from {} expired at", path.display())),
        "{line}"
    );
    assert_eq!(stack.busd_pid(), Some(busd), "busd keeps running");
}

/// With `BUSD_UPSTREAM_KEEPALIVE_SECONDS=1` busd asks the runner for a keepalive every second
/// and presumes a stream broken after 3 s without a byte (once it has seen a keepalive).
const FAST_KEEPALIVE: (&str, &str) = ("BUSD_UPSTREAM_KEEPALIVE_SECONDS", "1");

#[test]
fn a_silent_upstream_fails_the_follower_with_unavailable_in_bounded_time() {
    let stack = Stack::start();
    let rt = runtime();
    let proxy = rt.block_on(Proxy::start(&stack.runner.origin));
    let busd = start_busd(&stack, &proxy.url(), &[FAST_KEEPALIVE]);
    let id = detached(&stack, &proxy.url(), "echo line 1; sleep 120");

    let progress = Arc::new(AtomicU64::new(0));
    let follower = rt.spawn(follow(stack.socket.clone(), id.clone(), progress.clone()));
    rt.block_on(async {
        reached(&progress, 1).await;
        // The runner has shown busd that it sends keepalives on this stream.
        while proxy.keepalives() < 1 {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    });
    let before = proxy.accepted();
    proxy.set_silent(true);
    let silent = Instant::now();

    let followed = rt
        .block_on(async { tokio::time::timeout(Duration::from_secs(90), follower).await })
        .expect("the follower did not hang")
        .unwrap();
    let took = followed.ended.unwrap() - silent;
    assert_eq!(followed.seqs, [1]);
    assert!(followed.exits.is_empty());
    let status = followed.error.expect("the follow failed");
    assert_eq!(status.code(), tonic::Code::Unavailable, "{status:?}");
    assert!(
        status.message().contains("sent nothing for 3 s"),
        "{status:?}"
    );
    // Six silences of 3 s, five pauses (0.2 s .. 3.2 s) between them: about 25 s.
    assert!(
        took >= Duration::from_secs(3) && took < Duration::from_secs(60),
        "{took:?}"
    );
    assert!(
        proxy.accepted() > before,
        "busd resumed (on new connections) before giving up"
    );
    assert_eq!(stack.busd_pid(), Some(busd), "busd keeps running");
    eprintln!("silent upstream: UNAVAILABLE after {took:?}");

    // The run is still there, and a delete goes through once the proxy forwards again.
    proxy.set_silent(false);
    let out = stack.run_at(&proxy.url(), &["containers", "delete", &id]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn a_follower_resumes_without_a_gap_when_a_silent_upstream_heals() {
    let stack = Stack::start();
    let rt = runtime();
    let proxy = rt.block_on(Proxy::start(&stack.runner.origin));
    start_busd(&stack, &proxy.url(), &[FAST_KEEPALIVE]);
    // Pauses longer than the keepalive interval, so keepalives flow between lines.
    let lines = 12;
    let id = detached(&stack, &proxy.url(), &numbered(lines, "1.3"));

    let progress = Arc::new(AtomicU64::new(0));
    let follower = rt.spawn(follow(stack.socket.clone(), id.clone(), progress.clone()));
    rt.block_on(async {
        reached(&progress, 3).await;
        while proxy.keepalives() < 1 {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    });
    proxy.set_silent(true);
    std::thread::sleep(Duration::from_secs(4));
    let resumes_while_silent = resumes_logged(&stack);
    proxy.set_silent(false);
    let healed = Instant::now();

    let followed = rt
        .block_on(async { tokio::time::timeout(Duration::from_secs(90), follower).await })
        .expect("the follower did not hang")
        .unwrap();
    assert_complete("the follower", &followed);
    assert_eq!(followed.seqs.len() as u32, lines, "nothing stored was lost");
    let expected: String = (1..=lines).map(|i| format!("line {i}\n")).collect();
    assert_eq!(String::from_utf8_lossy(&followed.text), expected);
    assert!(
        resumes_while_silent >= 1,
        "the silence was noticed: {}",
        stack.busd_log()
    );
    eprintln!(
        "healed upstream: next chunk {:?} after healing",
        recovery(&followed, healed)
    );
}

// ---------------------------------------------------------------------------------------------
// The CLI under faults, watched line by line.

/// A `bus` process whose stdout is read as it comes, line by line.
struct Watched {
    child: std::process::Child,
    /// Complete lines read so far.
    lines: Arc<AtomicU64>,
    reader: std::thread::JoinHandle<Vec<u8>>,
}

impl Watched {
    fn spawn(mut command: std::process::Command) -> Watched {
        let mut child = command
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let mut out = child.stdout.take().unwrap();
        let lines = Arc::new(AtomicU64::new(0));
        let counter = lines.clone();
        let reader = std::thread::spawn(move || {
            let mut all = Vec::new();
            let mut buf = [0u8; 4096];
            loop {
                match std::io::Read::read(&mut out, &mut buf) {
                    Ok(0) | Err(_) => return all,
                    Ok(n) => {
                        all.extend_from_slice(&buf[..n]);
                        let count = all.iter().filter(|b| **b == b'\n').count();
                        counter.store(count as u64, Ordering::SeqCst);
                    }
                }
            }
        });
        Watched {
            child,
            lines,
            reader,
        }
    }

    /// Waits until at least `n` lines were printed, for at most a minute.
    fn reached(&self, n: u64) {
        let start = Instant::now();
        while self.lines.load(Ordering::SeqCst) < n {
            assert!(
                start.elapsed() < Duration::from_secs(60),
                "the CLI printed {} lines within a minute, not {n}",
                self.lines.load(Ordering::SeqCst)
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Waits for the process (at most `limit`); returns its exit code, stdout and stderr.
    fn finish(mut self, limit: Duration) -> (Option<i32>, String, String) {
        let start = Instant::now();
        let status = loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                break status;
            }
            if start.elapsed() > limit {
                let _ = self.child.kill();
                panic!("the CLI did not end within {limit:?}");
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        let stdout = String::from_utf8_lossy(&self.reader.join().unwrap()).into_owned();
        let mut stderr = String::new();
        std::io::Read::read_to_string(&mut self.child.stderr.take().unwrap(), &mut stderr).unwrap();
        (status.code(), stdout, stderr)
    }
}

/// `line 1\n` .. `line {count}\n`.
fn expected_lines(count: u32) -> String {
    (1..=count).map(|i| format!("line {i}\n")).collect()
}

#[test]
fn runs_go_on_and_lose_no_output_when_the_engine_restarts() {
    let mut stack = Stack::start();
    let origin = stack.runner.origin.clone();
    let busd = start_busd(&stack, &origin, &[]);
    let lines = 300;
    let script = format!("{}; exit 7", numbered(lines, "0.03"));

    // One run streamed by `bus containers run`; one detached run followed by `logs -f` and
    // by an SDK follower.
    let mut run = stack.bus();
    run.args(["containers", "run", "--", "sh", "-c", &script]);
    let run = Watched::spawn(run);
    let id = detached(&stack, &origin, &script);
    let mut logs = stack.bus();
    logs.args(["containers", "logs", "-f", &id]);
    let logs = Watched::spawn(logs);
    let rt = runtime();
    let progress = Arc::new(AtomicU64::new(0));
    let follower = rt.spawn(follow(stack.socket.clone(), id.clone(), progress.clone()));
    rt.block_on(reached(&progress, 40));
    run.reached(40);
    logs.reached(40);

    let old_engine = stack.runner.engine.pid();
    let runner = stack.runner.pid();
    let stopped = Instant::now();
    stack.runner.engine.restart();
    let restarted = Instant::now();
    assert_ne!(stack.runner.engine.pid(), old_engine);

    let followed = rt
        .block_on(async { tokio::time::timeout(Duration::from_secs(120), follower).await })
        .expect("the follower did not hang")
        .unwrap();
    let expected = expected_lines(lines);
    assert!(followed.error.is_none(), "{:?}", followed.error);
    let dense: Vec<u64> = (1..=followed.seqs.len() as u64).collect();
    assert_eq!(followed.seqs, dense, "every seq once, in order");
    assert_eq!(followed.gaps, 0);
    assert_eq!(
        String::from_utf8_lossy(&followed.text),
        expected,
        "every line once, including those written while the engine was away"
    );
    assert_eq!(followed.exits.len(), 1, "the exit once");
    assert_eq!(followed.exits[0].exit_code, 7);
    assert_eq!(followed.exits[0].last_seq, followed.seqs.len() as u64);

    let (code, out, err) = logs.finish(Duration::from_secs(60));
    assert_eq!(code, Some(0), "logs -f: {err}");
    assert_eq!(out, expected, "logs -f printed every line once");
    let (code, out, err) = run.finish(Duration::from_secs(60));
    assert_eq!(code, Some(7), "run exits with the command's code: {err}");
    assert_eq!(out, expected, "run printed every line once");
    assert_eq!(err, "", "run printed no error");

    let got = stack.run(&["containers", "get", &id, "-o", "json"]);
    let run: serde_json::Value = serde_json::from_slice(&got.stdout).unwrap();
    assert_eq!(run["state"], "exited", "{run}");
    assert_eq!(run["exit_code"], 7, "{run}");
    assert_eq!(stack.runner.pid(), runner, "the runner rode it out");
    assert_eq!(stack.busd_pid(), Some(busd), "busd rode it out");
    eprintln!(
        "engine restart took {:?}; next chunk {:?} after it came back",
        restarted - stopped,
        recovery(&followed, restarted)
    );
}

/// The seq in a `bus: the connection to busd broke; reconnected, resuming after seq N` line.
fn resumed_after(stderr: &str) -> u64 {
    let prefix = "bus: the connection to busd broke; reconnected, resuming after seq ";
    assert_eq!(stderr.lines().count(), 1, "one line on stderr: {stderr}");
    stderr
        .trim_end()
        .strip_prefix(prefix)
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("unexpected stderr: {stderr}"))
}

#[test]
fn the_cli_starts_a_killed_busd_again_and_resumes_where_it_stopped() {
    let stack = Stack::start();
    let origin = stack.runner.origin.clone();
    let busd = start_busd(&stack, &origin, &[]);
    let lines = 200;
    let script = format!("{}; exit 7", numbered(lines, "0.03"));

    let mut run = stack.bus();
    run.args(["containers", "run", "--", "sh", "-c", &script]);
    let run = Watched::spawn(run);
    let id = detached(&stack, &origin, &script);
    let mut logs = stack.bus();
    logs.args(["containers", "logs", "-f", &id]);
    let logs = Watched::spawn(logs);
    let mut wait = stack.bus();
    wait.args(["containers", "wait", &id]);
    let wait = Watched::spawn(wait);
    run.reached(30);
    logs.reached(30);

    let killed = Instant::now();
    let pid = rustix::process::Pid::from_raw(busd as i32).unwrap();
    rustix::process::kill_process(pid, rustix::process::Signal::KILL).unwrap();

    let expected = expected_lines(lines);
    let (code, out, err) = logs.finish(Duration::from_secs(120));
    assert_eq!(code, Some(0), "logs -f: {err}");
    assert_eq!(out, expected, "logs -f printed every line once");
    let after = resumed_after(&err);
    assert!((30..lines as u64).contains(&after), "{err}");
    eprintln!("logs -f: {}", err.trim_end());

    let (code, out, err) = run.finish(Duration::from_secs(120));
    assert_eq!(code, Some(7), "run exits with the command's code: {err}");
    assert_eq!(out, expected, "run printed every line once");
    let after = resumed_after(&err);
    assert!((30..lines as u64).contains(&after), "{err}");
    eprintln!("run: {}", err.trim_end());

    let (code, out, err) = wait.finish(Duration::from_secs(120));
    assert_eq!(code, Some(7), "wait exits with the run's code: {err}");
    assert_eq!(
        (out.as_str(), err.as_str()),
        ("", ""),
        "wait prints nothing"
    );

    let new = stack.busd_pid().expect("a busd runs again");
    assert_ne!(new, busd, "a new busd");
    eprintln!(
        "busd killed; all three commands done {:?} later",
        killed.elapsed()
    );
}

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
    NoticeKind, RunExited, StreamLogsRequest, StreamNotice, containers_client::ContainersClient,
    log_event::Event,
};
use common::{ALL_SCOPES, Stack, Watched, bins, mint, one_line_error, stdout};
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
    /// busd's notices about the stream.
    notices: Vec<StreamNotice>,
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
                Some(Event::Notice(notice)) => got.notices.push(notice),
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
    assert_eq!(followed.exits[0].exit_code, Some(0), "{who}");
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
    let stack = Stack::start(bins());
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
    let mut stack = Stack::start(bins());
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
        // Every line once, in order: those written while no runner was attached too (the
        // restarted runner reads them from the engine's log).
        let numbers = line_numbers(&String::from_utf8_lossy(&followed.text));
        assert_eq!(numbers, (1..=300).collect::<Vec<u32>>(), "follower {i}");
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

/// The runner is killed (SIGKILL, by PID) under an attached `run`, a `logs -f` and a `wait`,
/// and started again only 10 s later: longer than busd's resume budget used to last (five
/// resumes, about 6 s). busd keeps resuming; each command says once that the runner is
/// unreachable and that busd retries, then ends with the run's exit code. No line comes
/// twice and none is missing, those written while no runner was attached included.
#[test]
fn attached_commands_ride_out_a_runner_that_is_down_for_a_while() {
    let mut stack = Stack::start(bins());
    let rt = runtime();
    let proxy = rt.block_on(Proxy::start(&stack.runner.origin));
    let busd = start_busd(&stack, &proxy.url(), &[]);
    let lines = 400;
    let script = format!("{}; exit 7", numbered(lines, "0.05"));

    let mut run = stack.bus_at(&proxy.url());
    run.args(["containers", "run", "--", "sh", "-c", &script]);
    let run = Watched::spawn(run);
    run.reached(1);
    let id = stdout(&stack.run_at(&proxy.url(), &["containers", "runs", "-q"]))
        .lines()
        .next()
        .expect("the run is listed")
        .to_owned();
    let mut logs = stack.bus_at(&proxy.url());
    logs.args(["containers", "logs", "-f", &id]);
    let logs = Watched::spawn(logs);
    let mut wait = stack.bus_at(&proxy.url());
    wait.args(["containers", "wait", &id]);
    let wait = Watched::spawn(wait);
    run.reached(20);
    logs.reached(20);

    stack.runner.kill();
    let killed = Instant::now();
    std::thread::sleep(Duration::from_secs(10));
    stack.runner.restart();
    proxy.point_at(&stack.runner.origin);
    eprintln!("runner down for {:?}", killed.elapsed());

    let notice = format!(
        "bus: the runner at {} is unreachable; retrying for up to 2m",
        proxy.url()
    );
    let mut printed = Vec::new();
    for (name, watched, code) in [("run", run, 7), ("logs -f", logs, 0), ("wait", wait, 7)] {
        let (got, out, err) = watched.finish(Duration::from_secs(180));
        assert_eq!(got, Some(code), "{name}: {err}");
        assert_eq!(
            err.lines().filter(|l| *l == notice).count(),
            1,
            "{name} shows the notice once: {err}"
        );
        assert!(
            err.lines().all(|l| l == notice),
            "{name} shows nothing else: {err}"
        );
        if name == "wait" {
            assert_eq!(out, "", "wait prints no output");
            continue;
        }
        let numbers = line_numbers(&out);
        assert_eq!(
            numbers,
            (1..=lines).collect::<Vec<_>>(),
            "{name}: every line once"
        );
        printed.push(out);
    }
    assert_eq!(printed[0], printed[1], "run and logs -f printed the same");
    assert_eq!(stack.busd_pid(), Some(busd), "busd rode it out");
}

#[test]
fn a_rotated_token_file_does_not_disturb_a_follow_and_is_used_next() {
    let stack = Stack::start(bins());
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
    let stack = Stack::start(bins());
    let rt = runtime();
    let proxy = rt.block_on(Proxy::start(&stack.runner.origin));
    // A resume budget shorter than the default two minutes, through busd's environment.
    let busd = start_busd(
        &stack,
        &proxy.url(),
        &[FAST_KEEPALIVE, ("BUS_RESUME_FOR", "10s")],
    );
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
    assert!(
        proxy.accepted() > before,
        "busd resumed (on new connections) before giving up"
    );
    // Told once, when the first resume went silent too.
    assert_eq!(followed.notices.len(), 1, "{:?}", followed.notices);
    let notice = &followed.notices[0];
    assert_eq!(
        notice.kind,
        NoticeKind::UpstreamUnreachable as i32,
        "{notice:?}"
    );
    assert_eq!(notice.retry_for_seconds, 10, "{notice:?}");
    assert!(
        notice
            .message
            .contains(&format!("the runner at {} is unreachable", proxy.url())),
        "{notice:?}"
    );
    assert_eq!(stack.busd_pid(), Some(busd), "busd keeps running");
    // Silences of 3 s with short pauses between them until 10 s have passed since the first:
    // about 13 s.
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
    let stack = Stack::start(bins());
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

/// `line 1\n` .. `line {count}\n`.
fn expected_lines(count: u32) -> String {
    (1..=count).map(|i| format!("line {i}\n")).collect()
}

#[test]
fn runs_go_on_and_lose_no_output_when_the_engine_restarts() {
    let mut stack = Stack::start(bins());
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
    assert_eq!(followed.exits[0].exit_code, Some(7));
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
    let stack = Stack::start(bins());
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
    // Output chunks are seqs; under load one chunk can carry several lines, so 30 lines
    // printed mean at least one seq, not 30. That every line came once is checked above.
    let after = resumed_after(&err);
    assert!((1..lines as u64).contains(&after), "{err}");
    eprintln!("logs -f: {}", err.trim_end());

    let (code, out, err) = run.finish(Duration::from_secs(120));
    assert_eq!(code, Some(7), "run exits with the command's code: {err}");
    assert_eq!(out, expected, "run printed every line once");
    let after = resumed_after(&err);
    assert!((1..lines as u64).contains(&after), "{err}");
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

// ---------------------------------------------------------------------------------------------
// An HTTP-aware fault proxy: it reads each request (busd speaks HTTP/1.1 to the runner, one
// request at a time per connection) and answers, delays or passes it by rule.

/// What the HTTP proxy does to a request that matches a rule.
#[derive(Debug, Clone, Copy)]
enum Fault {
    /// Answers `503 Service Unavailable` (plain text, as a gateway does) with `Retry-After`
    /// seconds, without passing the request on.
    Refuse { retry_after: u64 },
    /// Passes the request on and, once the runner's answer begins (so the runner acted on it),
    /// drops that answer and sends a 503 instead.
    Swallow { retry_after: u64 },
    /// Passes the request on and holds the answer back this long.
    Delay(Duration),
}

struct Rule {
    method: &'static str,
    /// The exact path (without the query).
    path: String,
    fault: Fault,
    /// How many more requests it applies to.
    left: u32,
}

/// A request the HTTP proxy saw.
#[derive(Debug, Clone)]
struct Seen {
    method: String,
    path: String,
    idempotency_key: Option<String>,
    fault: Option<Fault>,
}

struct HttpProxy {
    addr: SocketAddr,
    state: Arc<HttpState>,
}

struct HttpState {
    target: String,
    rules: Mutex<Vec<Rule>>,
    seen: Mutex<Vec<Seen>>,
}

impl HttpProxy {
    async fn start(origin: &str) -> HttpProxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let state = Arc::new(HttpState {
            target: host_port(origin),
            rules: Mutex::default(),
            seen: Mutex::default(),
        });
        let shared = state.clone();
        tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                tokio::spawn(http_connection(shared.clone(), client));
            }
        });
        HttpProxy { addr, state }
    }

    fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Applies `fault` to the next `times` requests `method path`.
    fn fault(&self, method: &'static str, path: &str, fault: Fault, times: u32) {
        self.state.rules.lock().unwrap().push(Rule {
            method,
            path: path.to_owned(),
            fault,
            left: times,
        });
    }

    /// Removes every rule.
    fn heal(&self) {
        self.state.rules.lock().unwrap().clear();
    }

    /// The requests `method path` seen so far.
    fn seen(&self, method: &str, path: &str) -> Vec<Seen> {
        self.state
            .seen
            .lock()
            .unwrap()
            .iter()
            .filter(|s| s.method == method && s.path == path)
            .cloned()
            .collect()
    }
}

impl HttpState {
    /// The fault for a request (using up one application of its rule), recorded as seen.
    fn decide(&self, head: &RequestHead) -> Option<Fault> {
        let mut rules = self.rules.lock().unwrap();
        let fault = rules
            .iter_mut()
            .find(|r| r.left > 0 && r.method == head.method && r.path == head.path)
            .map(|r| {
                r.left -= 1;
                r.fault
            });
        self.seen.lock().unwrap().push(Seen {
            method: head.method.clone(),
            path: head.path.clone(),
            idempotency_key: head.idempotency_key.clone(),
            fault,
        });
        fault
    }
}

struct RequestHead {
    method: String,
    path: String,
    idempotency_key: Option<String>,
    content_length: usize,
    /// A body of unknown length, or an upgrade: the rest of the connection is passed as is.
    raw_after: bool,
}

/// Reads one request (head and body) from `read`, with `buf` holding bytes read ahead; `None`
/// at the end of the connection.
async fn read_request(
    read: &mut tokio::net::tcp::OwnedReadHalf,
    buf: &mut Vec<u8>,
) -> Option<(RequestHead, Vec<u8>)> {
    let mut chunk = [0u8; 16 * 1024];
    let head_end = loop {
        if let Some(at) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break at + 4;
        }
        match read.read(&mut chunk).await {
            Ok(0) | Err(_) => return None,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    };
    let text = String::from_utf8_lossy(&buf[..head_end]).into_owned();
    let mut lines = text.split("\r\n");
    let mut first = lines.next()?.split(' ');
    let method = first.next()?.to_owned();
    let target = first.next()?;
    let path = target.split('?').next().unwrap_or(target).to_owned();
    let mut head = RequestHead {
        method,
        path,
        idempotency_key: None,
        content_length: 0,
        raw_after: false,
    };
    for line in lines {
        let Some((name, value)) = line.split_once(':') else {
            continue;
        };
        let value = value.trim();
        match name.to_ascii_lowercase().as_str() {
            "content-length" => head.content_length = value.parse().unwrap_or(0),
            "transfer-encoding" | "upgrade" => head.raw_after = true,
            "idempotency-key" => head.idempotency_key = Some(value.to_owned()),
            _ => {}
        }
    }
    while buf.len() < head_end + head.content_length {
        match read.read(&mut chunk).await {
            Ok(0) | Err(_) => return None,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    }
    let request: Vec<u8> = buf.drain(..head_end + head.content_length).collect();
    Some((head, request))
}

fn gateway_503(retry_after: u64) -> Vec<u8> {
    let body = "upstream temporarily unavailable\n";
    format!(
        "HTTP/1.1 503 Service Unavailable\r\nContent-Type: text/plain\r\nRetry-After: {retry_after}\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

/// Aborts a task when dropped.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

async fn http_connection(state: Arc<HttpState>, client: TcpStream) {
    let _ = client.set_nodelay(true);
    let (mut client_read, client_write) = client.into_split();
    let client_write = Arc::new(tokio::sync::Mutex::new(client_write));
    // The held-back answer's delay, for the pump to apply to the next bytes it forwards.
    let delay: Arc<Mutex<Option<Duration>>> = Arc::default();
    let mut upstream: Option<(tokio::net::tcp::OwnedWriteHalf, AbortOnDrop)> = None;
    let mut buf = Vec::new();
    while let Some((head, request)) = read_request(&mut client_read, &mut buf).await {
        let fault = state.decide(&head);
        match fault {
            Some(Fault::Refuse { retry_after }) => {
                let mut out = client_write.lock().await;
                if out.write_all(&gateway_503(retry_after)).await.is_err() {
                    return;
                }
            }
            Some(Fault::Swallow { retry_after }) => {
                let Ok(mut side) = TcpStream::connect(&state.target).await else {
                    return;
                };
                let _ = side.write_all(&request).await;
                let mut answer = Vec::new();
                let mut chunk = [0u8; 4096];
                while !answer.windows(4).any(|w| w == b"\r\n\r\n") {
                    match side.read(&mut chunk).await {
                        Ok(0) | Err(_) => break,
                        Ok(n) => answer.extend_from_slice(&chunk[..n]),
                    }
                }
                drop(side);
                let mut out = client_write.lock().await;
                if out.write_all(&gateway_503(retry_after)).await.is_err() {
                    return;
                }
            }
            None | Some(Fault::Delay(_)) => {
                if upstream.is_none() {
                    let Ok(stream) = TcpStream::connect(&state.target).await else {
                        return;
                    };
                    let _ = stream.set_nodelay(true);
                    let (mut up_read, up_write) = stream.into_split();
                    let out = client_write.clone();
                    let delay = delay.clone();
                    let pump = tokio::spawn(async move {
                        let mut chunk = vec![0u8; 64 * 1024];
                        loop {
                            let n = match up_read.read(&mut chunk).await {
                                Ok(0) | Err(_) => break,
                                Ok(n) => n,
                            };
                            let hold = delay.lock().unwrap().take();
                            if let Some(hold) = hold {
                                tokio::time::sleep(hold).await;
                            }
                            if out.lock().await.write_all(&chunk[..n]).await.is_err() {
                                break;
                            }
                        }
                        // The runner closed: close the client side too.
                        let _ = out.lock().await.shutdown().await;
                    });
                    upstream = Some((up_write, AbortOnDrop(pump)));
                }
                if let Some(Fault::Delay(hold)) = fault {
                    *delay.lock().unwrap() = Some(hold);
                }
                let (up_write, _) = upstream.as_mut().unwrap();
                if up_write.write_all(&request).await.is_err() {
                    return;
                }
                if head.raw_after {
                    let _ = up_write.write_all(&buf).await;
                    let _ = tokio::io::copy(&mut client_read, up_write).await;
                    return;
                }
            }
        }
    }
}

/// The runs (JSON) of `runs -o json` through the runner itself whose argv ends with `marker`.
fn runs_with(stack: &Stack, marker: &str) -> Vec<serde_json::Value> {
    stack
        .runs()
        .into_iter()
        .filter(|r| {
            r["argv"]
                .as_array()
                .and_then(|a| a.last())
                .and_then(|v| v.as_str())
                == Some(marker)
        })
        .collect()
}

const RUNS_PATH: &str = "/api/v1/containers/runs";

#[test]
fn bursts_of_503_are_retried_and_a_retried_create_makes_one_run() {
    let stack = Stack::start(bins());
    let rt = runtime();
    let proxy = rt.block_on(HttpProxy::start(&stack.runner.origin));
    let url = proxy.url();
    let busd = start_busd(&stack, &url, &[]);
    let id = detached(&stack, &url, "echo first");
    let run_path = format!("{RUNS_PATH}/{id}");

    // A read: two 503s, then the answer.
    proxy.fault("GET", &run_path, Fault::Refuse { retry_after: 1 }, 2);
    let got = stack.run_at(&url, &["containers", "get", &id, "-q"]);
    assert!(
        got.status.success(),
        "{}",
        String::from_utf8_lossy(&got.stderr)
    );
    assert_eq!(stdout(&got).trim(), id);
    assert_eq!(
        String::from_utf8_lossy(&got.stderr),
        "",
        "nothing on stderr"
    );
    let gets = proxy.seen("GET", &run_path);
    assert_eq!(gets.len(), 3, "two refused tries, then the one that passed");
    assert!(gets[2].fault.is_none());

    // A streamed run whose create the runner carried out twice before the answer got through.
    let before = proxy.seen("POST", RUNS_PATH).len();
    proxy.fault("POST", RUNS_PATH, Fault::Swallow { retry_after: 1 }, 2);
    let marker = "echo made once; exit 3";
    let out = stack.run_at(&url, &["containers", "run", "--", "sh", "-c", marker]);
    assert_eq!(
        out.status.code(),
        Some(3),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(stdout(&out), "made once\n", "the output once");
    assert_eq!(String::from_utf8_lossy(&out.stderr), "");
    let posts = proxy.seen("POST", RUNS_PATH)[before..].to_vec();
    assert_eq!(posts.len(), 3, "{posts:?}");
    let key = posts[0]
        .idempotency_key
        .clone()
        .expect("an Idempotency-Key");
    assert!(
        posts
            .iter()
            .all(|p| p.idempotency_key.as_ref() == Some(&key)),
        "every try under the same key: {posts:?}"
    );
    let runs = runs_with(&stack, marker);
    assert_eq!(runs.len(), 1, "one run: {runs:?}");
    assert_eq!(runs[0]["exit_code"], 3);

    // The same for a detached create.
    let before = proxy.seen("POST", RUNS_PATH).len();
    proxy.fault("POST", RUNS_PATH, Fault::Swallow { retry_after: 1 }, 2);
    let marker = "echo detached once";
    let out = stack.run_at(&url, &["containers", "run", "-d", "--", "sh", "-c", marker]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let detached_id = stdout(&out).trim().to_owned();
    assert_eq!(proxy.seen("POST", RUNS_PATH).len() - before, 3);
    let runs = runs_with(&stack, marker);
    assert_eq!(runs.len(), 1, "one run: {runs:?}");
    assert_eq!(runs[0]["id"], detached_id.as_str());
    let logs = stack.run(&["containers", "logs", "-f", &detached_id]);
    assert_eq!(stdout(&logs), "detached once\n");
    assert_eq!(stack.busd_pid(), Some(busd));
}

#[test]
fn a_503_burst_longer_than_the_retries_ends_in_one_line_with_retry_after() {
    let stack = Stack::start(bins());
    let rt = runtime();
    let proxy = rt.block_on(HttpProxy::start(&stack.runner.origin));
    let url = proxy.url();
    start_busd(&stack, &url, &[]);
    let id = detached(&stack, &url, "echo hi");
    let run_path = format!("{RUNS_PATH}/{id}");

    // A read: tried three times (waiting the 1 s asked for between tries), then one line.
    proxy.fault("GET", &run_path, Fault::Refuse { retry_after: 1 }, 1000);
    let started = Instant::now();
    let out = stack.run_at(&url, &["containers", "get", &id]);
    let took = started.elapsed();
    let line = one_line_error(&out);
    assert_eq!(out.status.code(), Some(6), "exit 6: unavailable");
    assert_eq!(
        line,
        format!(
            "bus: error: the container runner at {url} is unavailable: it answered HTTP 503 Service Unavailable to 3 tries; try again shortly; if it persists, check the runner at {url} and any proxy in front of it; retry after 1s"
        )
    );
    assert_eq!(proxy.seen("GET", &run_path).len(), 3);
    eprintln!("read, 503 every time: after {took:?}: {line}");

    // A create asked to wait longer than busd waits: not retried, no run made.
    proxy.fault("POST", RUNS_PATH, Fault::Refuse { retry_after: 30 }, 1000);
    let before = proxy.seen("POST", RUNS_PATH).len();
    let marker = "echo never";
    let out = stack.run_at(&url, &["containers", "run", "-d", "--", "sh", "-c", marker]);
    let line = one_line_error(&out);
    assert_eq!(
        out.status.code(),
        Some(125),
        "run: bus, busd or the runner failed"
    );
    assert_eq!(
        line,
        format!(
            "bus: error: the container runner at {url} is unavailable: it answered HTTP 503 Service Unavailable; try again shortly; if it persists, check the runner at {url} and any proxy in front of it; retry after 30s"
        )
    );
    assert_eq!(proxy.seen("POST", RUNS_PATH).len() - before, 1);
    assert!(runs_with(&stack, marker).is_empty(), "no run was made");
    eprintln!("create, 503 with Retry-After 30: {line}");

    // Healed: the same calls go through.
    proxy.heal();
    let got = stack.run_at(&url, &["containers", "get", &id, "-q"]);
    assert_eq!(stdout(&got).trim(), id);
}

#[test]
fn a_slow_upstream_fails_the_call_at_its_deadline_and_nothing_else() {
    let stack = Stack::start(bins());
    let rt = runtime();
    let proxy = rt.block_on(HttpProxy::start(&stack.runner.origin));
    let url = proxy.url();
    let busd = start_busd(&stack, &url, &[]);
    let lines = 60;
    let id = detached(&stack, &url, &numbered(lines, "0.05"));
    let run_path = format!("{RUNS_PATH}/{id}");
    let progress = Arc::new(AtomicU64::new(0));
    let follower = rt.spawn(follow(stack.socket.clone(), id.clone(), progress.clone()));
    rt.block_on(reached(&progress, 5));

    // A read whose answer is held back far past the caller's 2 s deadline.
    proxy.fault("GET", &run_path, Fault::Delay(Duration::from_secs(60)), 1);
    let started = Instant::now();
    let out = stack.run_at(&url, &["--timeout", "2s", "containers", "get", &id]);
    let took = started.elapsed();
    let line = one_line_error(&out);
    assert_eq!(out.status.code(), Some(6));
    assert_eq!(
        line,
        format!(
            "bus: error: the container runner at {url} did not answer within the call's deadline; raise --timeout, or check that the runner at {url} is not overloaded"
        )
    );
    eprintln!("read held back 60 s, --timeout 2s: after {took:?}: {line}");

    // A create whose answer is held back: the call fails at its deadline, the run is made
    // once and runs to its end.
    proxy.fault("POST", RUNS_PATH, Fault::Delay(Duration::from_secs(60)), 1);
    let marker = "echo created anyway";
    let out = stack.run_at(
        &url,
        &[
            "--timeout",
            "2s",
            "containers",
            "run",
            "-d",
            "--",
            "sh",
            "-c",
            marker,
        ],
    );
    let create_line = one_line_error(&out);
    assert!(
        create_line.contains("did not answer within the call's deadline"),
        "{create_line}"
    );

    // busd keeps serving, the followed run is untouched.
    let followed = rt.block_on(follower).unwrap();
    assert_complete("the follower", &followed);
    assert_eq!(
        String::from_utf8_lossy(&followed.text),
        expected_lines(lines)
    );
    let got = stack.run_at(&url, &["containers", "get", &id, "-o", "json"]);
    let run: serde_json::Value = serde_json::from_slice(&got.stdout).unwrap();
    assert_eq!(run["state"], "exited", "{run}");
    assert_eq!(stack.busd_pid(), Some(busd), "busd keeps running");
    let start = Instant::now();
    let made = loop {
        let runs = runs_with(&stack, marker);
        if runs.iter().any(|r| r["state"] == "exited") {
            break runs;
        }
        assert!(start.elapsed() < Duration::from_secs(60), "{runs:?}");
        std::thread::sleep(Duration::from_millis(100));
    };
    assert_eq!(made.len(), 1, "one run: {made:?}");
    let logs = stack.run(&["containers", "logs", made[0]["id"].as_str().unwrap()]);
    assert_eq!(stdout(&logs), "created anyway\n");
    eprintln!(
        "create held back 60 s, --timeout 2s: {create_line}; the run was made once and exited"
    );
}

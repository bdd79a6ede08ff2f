//! busd's connection hygiene on a real socket: a connection that never sends the HTTP/2
//! preface is closed; out of file descriptors, busd backs off instead of spinning, says so
//! once, keeps its open calls going and serves new ones once descriptors are free.

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{Stack, bins, stop_pid};

/// The HTTP/2 connection preface and an empty SETTINGS frame: what a client sends first.
const HELLO: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x00\x04\x00\x00\x00\x00\x00";

/// busd started by hand (under `prefix`, e.g. prlimit), its stderr in `log`; stopped on drop.
struct Busd {
    child: Child,
}

impl Busd {
    fn start(stack: &Stack, prefix: &[&str], log: &Path) -> Busd {
        let busd = stack.busd();
        let mut cmd = if prefix.is_empty() {
            busd
        } else {
            let mut cmd = Command::new(prefix[0]);
            cmd.args(&prefix[1..]).arg(busd.get_program());
            cmd.args(busd.get_args());
            cmd.env_clear();
            for (k, v) in busd.get_envs() {
                if let Some(v) = v {
                    cmd.env(k, v);
                }
            }
            cmd
        };
        cmd.stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(log).unwrap());
        let child = cmd.spawn().expect("busd starts");
        let started = Instant::now();
        while UnixStream::connect(&stack.socket).is_err() {
            assert!(
                started.elapsed() < Duration::from_secs(30),
                "busd did not listen on {}: {}",
                stack.socket.display(),
                std::fs::read_to_string(log).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        Busd { child }
    }

    /// User plus system CPU time busd has used.
    fn cpu(&self) -> Duration {
        let stat = std::fs::read_to_string(format!("/proc/{}/stat", self.child.id())).unwrap();
        // Fields after the parenthesised command name; utime and stime are the 14th and 15th.
        let rest = &stat[stat.rfind(')').unwrap() + 2..];
        let fields: Vec<&str> = rest.split(' ').collect();
        let ticks: u64 = fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap();
        let per_second = rustix::param::clock_ticks_per_second();
        Duration::from_secs_f64(ticks as f64 / per_second as f64)
    }
}

impl Drop for Busd {
    fn drop(&mut self) {
        stop_pid(self.child.id());
        let _ = self.child.wait();
    }
}

fn wait_for(what: &str, limit: Duration, mut done: impl FnMut() -> bool) {
    let started = Instant::now();
    while !done() {
        assert!(started.elapsed() < limit, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn a_connection_that_sends_nothing_is_closed() {
    let stack = Stack::start(bins());
    let log = stack.home.path().join("busd.log");
    let _busd = Busd::start(&stack, &[], &log);

    let mut silent = UnixStream::connect(&stack.socket).unwrap();
    // A bound far above busd's preface timeout (5 s): only a hung connection reaches it.
    silent
        .set_read_timeout(Some(Duration::from_secs(60)))
        .unwrap();
    // busd's own SETTINGS come first; then the end of the connection.
    let mut buf = [0u8; 64];
    let end = loop {
        match silent.read(&mut buf) {
            Ok(0) => break Ok(()),
            Ok(_) => continue,
            Err(e) => break Err(e),
        }
    };
    assert!(
        end.is_ok() || matches!(&end, Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset),
        "busd did not close a connection that sent nothing: {end:?}"
    );

    // One that sent its preface stays open past that timeout.
    let mut greeted = UnixStream::connect(&stack.socket).unwrap();
    greeted.write_all(HELLO).unwrap();
    std::thread::sleep(Duration::from_secs(7));
    greeted
        .set_read_timeout(Some(Duration::from_millis(500)))
        .unwrap();
    // busd's SETTINGS (and its ACK) are there to read; the connection is not closed.
    let n = greeted.read(&mut buf).unwrap();
    assert!(n > 0, "busd closed a connection that sent its preface");
}

#[test]
fn out_of_descriptors_busd_backs_off_logs_once_and_recovers() {
    let stack = Stack::start(bins());
    let log = stack.home.path().join("busd.log");
    // A low limit for this busd alone, so it runs out after a few dozen connections.
    let busd = Busd::start(&stack, &["prlimit", "--nofile=64:64", "--"], &log);

    // An established stream: a run printing a line every 0.5 s for 10 s.
    let mut run = stack
        .bus()
        .args([
            "containers",
            "run",
            "--",
            "sh",
            "-c",
            "i=0; while [ $i -lt 20 ]; do echo tick$i; i=$((i+1)); sleep 0.5; done",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(run.stdout.take().unwrap()).lines();
    assert_eq!(lines.next().unwrap().unwrap(), "tick0");

    // Hold connections (each greeted, so the preface timeout does not close it) until busd's
    // accept fails: more than its limit allows.
    let mut held = Vec::new();
    for _ in 0..120 {
        let mut conn = UnixStream::connect(&stack.socket).unwrap();
        conn.write_all(HELLO).unwrap();
        held.push(conn);
    }
    let exhausted = "out of file descriptors";
    wait_for(
        "busd to log that it is out of descriptors",
        Duration::from_secs(30),
        || {
            std::fs::read_to_string(&log)
                .unwrap_or_default()
                .contains(exhausted)
        },
    );

    // Not spinning: over 2 s busd uses a small fraction of a core.
    let before = busd.cpu();
    std::thread::sleep(Duration::from_secs(2));
    let used = busd.cpu() - before;
    assert!(
        used < Duration::from_millis(500),
        "busd used {used:?} of CPU in 2 s while out of descriptors"
    );

    // The established stream goes on to its end.
    let rest: Vec<String> = lines.map(|l| l.unwrap()).collect();
    assert_eq!(rest.last().map(String::as_str), Some("tick19"), "{rest:?}");
    let status = run.wait().unwrap();
    let mut stderr = String::new();
    run.stderr
        .take()
        .unwrap()
        .read_to_string(&mut stderr)
        .unwrap();
    assert!(status.success(), "the run failed: {stderr}");

    // Said once, however long it lasted.
    let text = std::fs::read_to_string(&log).unwrap();
    assert_eq!(text.matches(exhausted).count(), 1, "{text}");

    // Descriptors free again: a new call is served.
    drop(held);
    wait_for("busd to accept again", Duration::from_secs(30), || {
        std::fs::read_to_string(&log)
            .unwrap_or_default()
            .contains("accepting connections")
    });
    let info = stack.run(&["daemon", "info"]);
    assert!(
        info.status.success(),
        "a call after the held connections closed failed: {}",
        String::from_utf8_lossy(&info.stderr)
    );
    let printed = String::from_utf8_lossy(&info.stdout);
    let pid = printed
        .lines()
        .find_map(|l| l.strip_prefix("pid:").map(|p| p.trim().to_owned()));
    assert_eq!(pid, Some(busd.child.id().to_string()), "{printed}");
}

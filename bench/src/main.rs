//! `bus-bench`: bus against its anchors, every figure beside an anchor measured in the same run
//! on this machine, printed as one markdown table.
//!
//! It starts its own Podman API service, a certificate authority and a server certificate
//! (openssl), bus-runner serving HTTPS (that certificate, as a remote deployment would) and
//! plain HTTP, a token, and busd (started by the `bus` CLI, talking HTTPS to the runner and
//! trusting the CA through `BUS_CA_FILE`), all on temporary paths; it stops them by PID and
//! removes its files on exit. `bench/run` builds the release binaries and runs it.
//!
//! Wall times are of fresh processes, spawn to reap, with the compared commands interleaved
//! (their order rotating each round) so that drift hits them alike; peak RSS is
//! `/usr/bin/time -f %M`'s. It is a benchmark, not a test: it asserts nothing, and prints each
//! target beside what was measured.

mod delay;
mod load;
mod measure;
mod output;
mod remote;
mod stack;
mod waiting;

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use clap::Parser;

use load::Window;
use measure::{Cmd, Ms, mib, ms};
use stack::Stack;

/// A failure that ends the bench, with what went wrong.
#[derive(Debug)]
pub struct Failed(pub String);

/// A progress line on stderr (the table goes to stdout).
pub fn say(message: &str) {
    eprintln!("bench: {message}");
}

/// bus against its anchors, measured in one run (release binaries, real Podman).
#[derive(Debug, Parser)]
#[command(name = "bus-bench")]
struct Args {
    /// Fewer rounds, a shorter load and 64 MB of logs: done in under two minutes
    #[arg(long)]
    quick: bool,
    /// Timed rounds per command (default 30, 10 with --quick)
    #[arg(short, value_name = "N")]
    n: Option<usize>,
    /// Megabytes the log-throughput run prints (default 500, 64 with --quick)
    #[arg(long, value_name = "MB")]
    log_mb: Option<u64>,
    /// Only these figures (comma-separated): reads, status, memory, run, waiting, exec,
    /// throughput, fanout, logs, live, remote
    #[arg(long, value_delimiter = ',', value_name = "FIGURES")]
    only: Vec<String>,
    /// The round trip the remote figures' delay proxy adds, ms (half each way)
    #[arg(long, value_name = "MS", default_value_t = 20)]
    rtt: u64,
    /// Where bus, busd and bus-runner are [default: this binary's directory]
    #[arg(long, value_name = "DIR")]
    bin_dir: Option<PathBuf>,
}

/// How much of everything to do.
struct Plan {
    n: usize,
    warmup: usize,
    load: Window,
    follow_window: Duration,
    streams_window: Duration,
    exec_n: usize,
    log_bytes: u64,
    log_reps: usize,
    rss_runs: usize,
    rtt: Duration,
    /// How long a waiting run's CPU is measured.
    idle_window: Duration,
    only: Vec<String>,
}

impl Plan {
    fn wants(&self, figure: &str) -> bool {
        self.only.is_empty() || self.only.iter().any(|f| f == figure)
    }
}

/// One row of the table.
struct Row {
    figure: String,
    ours: String,
    anchors: String,
    target: String,
}

fn main() -> ExitCode {
    let args = Args::parse();
    let quick = args.quick;
    let plan = Plan {
        n: args.n.unwrap_or(if quick { 10 } else { 30 }).max(1),
        warmup: 3,
        load: Window {
            warmup: Duration::from_secs(1),
            measure: Duration::from_secs(if quick { 3 } else { 10 }),
        },
        follow_window: Duration::from_secs(if quick { 3 } else { 10 }),
        streams_window: Duration::from_secs(2),
        exec_n: if quick { 200 } else { 1000 },
        log_bytes: args.log_mb.unwrap_or(if quick { 64 } else { 500 }) * 1_000_000,
        log_reps: if quick { 1 } else { 3 },
        rss_runs: if quick { 3 } else { 5 },
        rtt: Duration::from_millis(args.rtt),
        idle_window: Duration::from_secs(if quick { 5 } else { 10 }),
        only: args.only,
    };
    let bin = match args.bin_dir {
        Some(dir) => dir,
        None => std::env::current_exe()
            .ok()
            .and_then(|p| p.parent().map(Path::to_path_buf))
            .unwrap_or_else(|| PathBuf::from("target/release")),
    };
    let started = Instant::now();
    let result = Stack::start(&bin).and_then(|stack| {
        let rows = measure_all(&stack, &plan);
        drop(stack);
        rows
    });
    match result {
        Ok((preamble, rows)) => {
            print_table(&preamble, &rows);
            say(&format!("done in {:.0} s", started.elapsed().as_secs_f64()));
            ExitCode::SUCCESS
        }
        Err(Failed(message)) => {
            say(&format!("error: {message}"));
            ExitCode::FAILURE
        }
    }
}

fn print_table(preamble: &str, rows: &[Row]) {
    let mut out = String::new();
    let _ = writeln!(out, "\n{preamble}\n");
    let _ = writeln!(out, "| figure | ours | anchor(s), same run | target |");
    let _ = writeln!(out, "|---|---|---|---|");
    for row in rows {
        let _ = writeln!(
            out,
            "| {} | {} | {} | {} |",
            row.figure, row.ours, row.anchors, row.target
        );
    }
    print!("{out}");
}

/// `anchor / ours` as "N× faster" (or "N× slower").
fn faster(anchor: f64, ours: f64) -> String {
    let r = anchor / ours;
    if r >= 1.0 {
        format!("**{r:.1}×** faster")
    } else {
        format!("{:.2}× slower", 1.0 / r)
    }
}

fn check(met: bool) -> &'static str {
    if met { "met" } else { "**missed**" }
}

fn measure_all(stack: &Stack, plan: &Plan) -> Result<(String, Vec<Row>), Failed> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(|e| Failed(format!("cannot start the async runtime: {e}")))?;
    let scratch = &stack.tmp;
    let docker = docker_env(stack);
    if docker.is_none() {
        say("note: no `docker` on PATH; the docker CLI anchors are left out");
    }
    // A run, so that the list is not empty and GetRun has something to get.
    stack.bus(&["containers", "run", "--", "true"])?;
    let run_id = stack
        .bus(&["containers", "runs", "-q"])?
        .lines()
        .next()
        .map(str::to_owned)
        .ok_or_else(|| Failed("`bus containers runs -q` listed no run".to_owned()))?;

    let floor = measure::interleaved(
        &[stack.engine_cmd("true", &["/bin/true"])],
        plan.n,
        plan.warmup,
        scratch,
    )?;
    let mut preamble = format!(
        "{} timed rounds per command after {} warm-ups, median (p99); fresh process per call, \
         spawn to reap; process-spawn floor (`/bin/true`): {}. {} CPUs, load average {}.",
        plan.n,
        plan.warmup,
        Ms::of(&floor[0]),
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        std::fs::read_to_string("/proc/loadavg")
            .ok()
            .and_then(|l| l.split_whitespace().next().map(str::to_owned))
            .unwrap_or_default(),
    );
    let mut rows = Vec::new();

    for (key, what, path) in [
        ("reads", "runs", "/api/v1/containers/runs"),
        ("status", "status", "/api/v1/containers/status"),
    ] {
        if !plan.wants(key) {
            continue;
        }
        say(&format!(
            "measuring `bus containers {what}` and its anchors"
        ));
        let mut cmds = vec![
            stack.bus_cmd("bus", &["containers", what]),
            stack.curl_cmd("`curl` over TLS (cold)", &stack.https, path),
            stack.curl_cmd("`curl` plain HTTP", &stack.http, path),
            stack.engine_cmd("`podman ps`", &["podman", "ps"]),
        ];
        if let Some(env) = &docker {
            cmds.push(Cmd::new("`docker ps`", ["docker", "ps"], env));
        }
        let answered = stack.lists_answered()?;
        let walls = measure::interleaved(&cmds, plan.n, plan.warmup, scratch)?;
        let answered = stack.lists_answered()? - answered;
        let stats: Vec<Ms> = walls.iter().map(|w| Ms::of(w)).collect();
        let ours = stats[0].median;
        let anchors = cmds[1..]
            .iter()
            .zip(&stats[1..])
            .map(|(c, s)| format!("{}: {s}, {}", c.label, faster(s.median, ours)))
            .collect::<Vec<_>>()
            .join("<br>");
        let ratio = |label: &str| {
            cmds.iter()
                .position(|c| c.label == label)
                .map(|i| stats[i].median / ours)
        };
        let mut met = ours <= 3.0 && ratio("`curl` over TLS (cold)").is_some_and(|r| r >= 4.0);
        met &= ratio("`podman ps`").is_some_and(|r| r >= 15.0);
        met &= ratio("`docker ps`").is_none_or(|r| r >= 8.0);
        rows.push(Row {
            figure: format!("`bus containers {what}` wall time, warm busd (CLI end to end)"),
            ours: if what == "runs" {
                format!(
                    "{}<br>{answered} of {} calls answered from busd's watched list",
                    stats[0],
                    plan.n + plan.warmup
                )
            } else {
                stats[0].to_string()
            },
            anchors,
            target: format!(
                "≤ 3 ms, ≥ 4× curl TLS, ≥ 8× docker ps, ≥ 15× podman ps: {}",
                check(met)
            ),
        });
    }

    let mut memory_row = None;
    if plan.wants("memory") {
        if measure::have_gnu_time() {
            say("measuring peak RSS of the CLIs");
            let mut cmds = vec![
                stack.engine_cmd("`/bin/true` (floor)", &["/bin/true"]),
                stack.bus_cmd("`bus containers runs`", &["containers", "runs"]),
                stack.engine_cmd("`podman ps`", &["podman", "ps"]),
            ];
            if let Some(env) = &docker {
                cmds.push(Cmd::new("`docker ps`", ["docker", "ps"], env));
            }
            let mut peaks = Vec::new();
            for cmd in &cmds {
                peaks.push(measure::peak_rss_kib(cmd, plan.rss_runs, scratch)?);
            }
            std::thread::sleep(Duration::from_secs(1));
            let busd_idle = measure::vm_rss_kib(stack.busd_pid)?;
            let podman_service = measure::vm_rss_kib(stack.podman_pid)?;
            memory_row = Some((cmds, peaks, busd_idle, podman_service));
        } else {
            say("note: no /usr/bin/time (apt-get install time); peak RSS is left out");
        }
    }

    if plan.wants("run") {
        say("measuring run overhead");
        let cmds = [
            stack.bus_cmd("bus", &["containers", "run", "--", "true"]),
            stack.engine_cmd(
                "`podman run --rm --network none localhost/busybox true`",
                &[
                    "podman",
                    "run",
                    "--rm",
                    "--network",
                    "none",
                    "localhost/busybox",
                    "true",
                ],
            ),
        ];
        let walls = measure::interleaved(&cmds, plan.n, plan.warmup, scratch)?;
        let (ours, podman) = (Ms::of(&walls[0]), Ms::of(&walls[1]));
        let ratio = ours.median / podman.median;
        rows.push(Row {
            figure: "run overhead: `bus containers run -- true` wall time".to_owned(),
            ours: ours.to_string(),
            anchors: format!(
                "{}: {podman}; ours is **{ratio:.2}×** its time",
                cmds[1].label
            ),
            target: format!("≤ 1.0×: {}", check(ratio <= 1.0)),
        });
    }

    if plan.wants("waiting") {
        rows.push(waiting::waiting(stack, plan)?);
    }

    if plan.wants("exec") {
        say("measuring exec keystroke round trips");
        let run = stack
            .bus(&["containers", "run", "-d", "--", "sleep", "3600"])?
            .trim()
            .to_owned();
        let container = stack.container_of(&run)?;
        let ours = load::keystroke_rtt(
            &stack.bus_cmd("bus", &["containers", "exec", "-i", &run, "--", "cat"]),
            plan.exec_n,
            20,
        )?;
        let podman = load::keystroke_rtt(
            &stack.engine_cmd("podman", &["podman", "exec", "-i", &container, "cat"]),
            plan.exec_n,
            20,
        )?;
        stack.bus(&["containers", "delete", &run])?;
        let (o, p) = (Ms::of_ms(&ours), Ms::of_ms(&podman));
        rows.push(Row {
            figure: format!(
                "exec keystroke round trip (one byte to `cat` and back, {} in one session)",
                plan.exec_n
            ),
            ours: format!("{o} (`bus containers exec -i`, CLI → busd → runner)"),
            anchors: format!("`podman exec -i`: {p}, {}", faster(p.median, o.median)),
            target: format!("median ≤ 2 ms: {}", check(o.median <= 2.0)),
        });
    }

    if plan.wants("throughput") {
        say("measuring unary throughput (64 concurrent clients)");
        let ca = stack.ca_pem()?;
        let pids = [stack.busd_pid, stack.runner_pid, 0];
        let cpu =
            || -> Result<Vec<u64>, Failed> { pids.iter().map(|&p| measure::cpu_us(p)).collect() };
        let before = cpu()?;
        let ours = runtime.block_on(load::grpc_get_run(&stack.socket, &run_id, 64, plan.load))?;
        let middle = cpu()?;
        let direct = runtime.block_on(load::rest_get_run(
            &stack.https,
            &ca,
            stack.token(),
            &run_id,
            64,
            plan.load,
        ))?;
        let after = cpu()?;
        let per_call = |from: &[u64], to: &[u64], i: usize, calls: u64| {
            (to[i] - from[i]) as f64 / calls.max(1) as f64
        };
        let ratio = ours.per_second / direct.per_second;
        rows.push(Row {
            figure: format!(
                "unary throughput, 64 concurrent clients, {} s",
                plan.load.measure.as_secs()
            ),
            ours: format!(
                "{:.0} req/s (`GetRun` through busd)<br>CPU per call: busd {:.0} µs, runner \
                 {:.0} µs, client {:.0} µs",
                ours.per_second,
                per_call(&before, &middle, 0, ours.total),
                per_call(&before, &middle, 1, ours.total),
                per_call(&before, &middle, 2, ours.total),
            ),
            anchors: format!(
                "`GET /api/v1/containers/runs/{{id}}` straight to the runner over TLS, 64 \
                 keep-alive clients: {:.0} req/s; ours is **{ratio:.2}×** of it<br>CPU per \
                 call: runner {:.0} µs, client {:.0} µs",
                direct.per_second,
                per_call(&middle, &after, 1, direct.total),
                per_call(&middle, &after, 2, direct.total),
            ),
            target: format!("≥ 0.7×: {}", check(ratio >= 0.7)),
        });
    }

    if plan.wants("fanout") {
        rows.push(fanout(stack, plan, &runtime)?);
    }

    let mut streams_kib = None;
    if plan.wants("memory") {
        say("measuring busd with 1000 open streams");
        let run = live_run(stack)?;
        let idle = measure::vm_rss_kib(stack.busd_pid)?;
        let busd = stack.busd_pid;
        let followed = runtime.block_on(load::follow_busd(
            &stack.socket,
            &run,
            load::Follow {
                followers: 1000,
                connections: 16,
                window: plan.streams_window,
                api_url: None,
            },
            || measure::vm_rss_kib(busd).unwrap_or(0),
        ))?;
        end_run(stack, &run)?;
        streams_kib = Some((idle, followed.sampled));
    }
    if let Some((cmds, peaks, busd_idle, podman_service)) = memory_row {
        let cli = peaks[1];
        let mut ours = format!("busd idle: {}", mib(busd_idle));
        if let Some((before, with)) = streams_kib {
            let _ = write!(
                ours,
                "<br>busd with 1000 open log streams: {} (+{:.1} KiB per stream)",
                mib(with),
                with.saturating_sub(before) as f64 / 1000.0
            );
        }
        let _ = write!(ours, "<br>`bus containers runs` peak: {}", mib(cli));
        let anchors = cmds[2..]
            .iter()
            .zip(&peaks[2..])
            .map(|(c, &p)| {
                format!(
                    "{} peak: {}, {:.1}× ours",
                    c.label,
                    mib(p),
                    p as f64 / cli as f64
                )
            })
            .chain([
                format!("podman API service: {}", mib(podman_service)),
                format!("floor (`/bin/true` under time): {}", mib(peaks[0])),
            ])
            .collect::<Vec<_>>()
            .join("<br>");
        let met = busd_idle <= 20 * 1000 * 1000 / 1024 && cli <= 15 * 1000 * 1000 / 1024;
        rows.push(Row {
            figure: "memory (VmRSS; peak RSS by `/usr/bin/time -f %M`)".to_owned(),
            ours,
            anchors,
            target: format!("busd idle ≤ 20 MB, CLI peak ≤ 15 MB: {}", check(met)),
        });
    }

    if plan.wants("logs") {
        rows.push(output::log_throughput(stack, plan)?);
    }
    if plan.wants("live") {
        rows.push(output::live_output(stack, plan)?);
    }
    if plan.wants("remote") {
        rows.extend(remote::figures(stack, plan, &runtime)?);
    }
    let _ = write!(
        preamble,
        " Versions: {}.",
        [
            ("podman", "podman --version"),
            ("docker", "docker --version"),
            ("curl", "curl --version")
        ]
        .iter()
        .filter_map(|(_, cmd)| first_line(cmd))
        .collect::<Vec<_>>()
        .join("; ")
    );
    Ok((preamble, rows))
}

fn first_line(cmd: &str) -> Option<String> {
    let mut parts = cmd.split_whitespace();
    let out = std::process::Command::new(parts.next()?)
        .args(parts)
        .output()
        .ok()?;
    let text = String::from_utf8_lossy(&out.stdout);
    let line = text.lines().next()?;
    Some(line.split(" (").next().unwrap_or(line).to_owned())
}

/// The docker CLI's environment against Podman's socket, or `None` without a `docker`.
fn docker_env(stack: &Stack) -> Option<Vec<(std::ffi::OsString, std::ffi::OsString)>> {
    let found = std::process::Command::new("docker")
        .arg("--version")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !found {
        return None;
    }
    let mut env = stack.env.clone();
    env.push((
        "DOCKER_HOST".into(),
        format!("unix://{}", stack.podman_sock.display()).into(),
    ));
    env.push(("DOCKER_CONFIG".into(), stack.tmp.join("docker").into()));
    Some(env)
}

/// A run that prints a line every 20 ms until it is stopped.
fn live_run(stack: &Stack) -> Result<String, Failed> {
    let run = stack
        .bus(&[
            "containers",
            "run",
            "-d",
            "--",
            "sh",
            "-c",
            "while :; do echo tick; usleep 20000; done",
        ])?
        .trim()
        .to_owned();
    stack.container_of(&run)?;
    Ok(run)
}

fn end_run(stack: &Stack, run: &str) -> Result<(), Failed> {
    stack.bus(&["containers", "stop", run])?;
    stack.bus(&["containers", "delete", run])?;
    Ok(())
}

fn fanout(stack: &Stack, plan: &Plan, runtime: &tokio::runtime::Runtime) -> Result<Row, Failed> {
    const FOLLOWERS: usize = 100;
    say("measuring fan-out: 100 followers of one live run");
    let ca = stack.ca_pem()?;
    let run = live_run(stack)?;
    let busd = stack.busd_pid;
    let runner = stack.runner_pid;

    let requests_before = stack.runner_log_requests(&run);
    let busd_before = measure::vm_rss_kib(busd)?;
    let ours = runtime.block_on(load::follow_busd(
        &stack.socket,
        &run,
        load::Follow {
            followers: FOLLOWERS,
            connections: FOLLOWERS,
            window: plan.follow_window,
            api_url: None,
        },
        || measure::vm_rss_kib(busd).unwrap_or(0),
    ))?;
    std::thread::sleep(Duration::from_millis(300));
    let ours_requests = stack.runner_log_requests(&run) - requests_before;

    let requests_before = stack.runner_log_requests(&run);
    let runner_before = measure::vm_rss_kib(runner)?;
    let direct = runtime.block_on(load::follow_rest(
        &stack.https,
        &ca,
        stack.token(),
        &run,
        FOLLOWERS,
        plan.follow_window,
        || measure::vm_rss_kib(runner).unwrap_or(0),
    ))?;
    let direct_requests = stack.runner_log_requests(&run) - requests_before;
    end_run(stack, &run)?;

    let per_follower = ours.sampled.saturating_sub(busd_before) as f64 / FOLLOWERS as f64;
    let per_direct = direct.sampled.saturating_sub(runner_before) as f64 / FOLLOWERS as f64;
    let (lo, hi) = min_max(&ours.chunks);
    let (dlo, dhi) = min_max(&direct.chunks);
    let (ol, dl) = (Ms::of_ms(&ours.lags_ms), Ms::of_ms(&direct.lags_ms));
    let met = ours_requests == 1 && per_follower <= 64.0 && lo > 0;
    Ok(Row {
        figure: format!(
            "fan-out: {FOLLOWERS} followers of one live run (a line every 20 ms, {} s)",
            plan.follow_window.as_secs()
        ),
        ours: format!(
            "upstream log streams: **{ours_requests}**<br>busd RSS +{per_follower:.1} KiB per \
             follower ({} → {})<br>lag {} (runner read → follower), {lo}–{hi} chunks each",
            mib(busd_before),
            mib(ours.sampled),
            ol_fmt(ol),
        ),
        anchors: format!(
            "{FOLLOWERS} direct REST follows over TLS: upstream log streams: {direct_requests}; \
             runner RSS +{per_direct:.1} KiB per follow; lag {}, {dlo}–{dhi} chunks each",
            ol_fmt(dl)
        ),
        target: format!("1 upstream stream, ≤ 64 KiB per follower: {}", check(met)),
    })
}

fn ol_fmt(m: Ms) -> String {
    format!("median {}, p99 {}", ms(m.median), ms(m.p99))
}

fn min_max(values: &[usize]) -> (usize, usize) {
    (
        values.iter().copied().min().unwrap_or(0),
        values.iter().copied().max().unwrap_or(0),
    )
}

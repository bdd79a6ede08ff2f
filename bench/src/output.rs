//! Reading a run's output in bulk: the logs of a finished run, and the live output of an
//! attached run, each against Podman doing the same.

use crate::load;
use crate::measure::Cmd;
use crate::stack::Stack;
use crate::{Failed, Plan, Row, check, say};

/// A shell script printing `bytes` bytes of 64-byte lines.
fn printer(bytes: u64) -> String {
    format!("yes 0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcde | head -c {bytes}")
}

/// Live output: `bus containers run` printing `plan.log_bytes` to a pipe read to the end,
/// against `podman run --rm` attached, the same image and command, through the same Podman
/// API service (and, for reference, podman's local mode). Each figure includes the start and
/// removal of its container.
pub fn live_output(stack: &Stack, plan: &Plan) -> Result<Row, Failed> {
    let bytes = plan.log_bytes;
    let mb = bytes as f64 / 1e6;
    let script = printer(bytes);
    say(&format!("measuring live output ({mb:.0} MB to a pipe)"));
    let url = format!("unix://{}", stack.podman_sock.display());
    let podman_run = [
        "run",
        "--rm",
        "--network",
        "none",
        "localhost/busybox",
        "sh",
        "-c",
    ];
    let service_argv = [&["podman", "--url", &url][..], &podman_run, &[&script]].concat();
    let local_argv = [&["podman"][..], &podman_run, &[&script]].concat();
    let cmds = [
        stack.bus_cmd("bus", &["containers", "run", "--", "sh", "-c", &script]),
        stack.engine_cmd(
            "`podman --url … run --rm` attached, through the same API service",
            &service_argv,
        ),
        stack.engine_cmd("`podman run --rm` attached, local mode", &local_argv),
    ];
    let mut rates = vec![Vec::new(); cmds.len()];
    for _ in 0..plan.log_reps {
        for (cmd, rate) in cmds.iter().zip(&mut rates) {
            rate.push(read_rate(cmd, bytes)?);
        }
    }
    let [ours, service, local] = [0, 1, 2].map(|i| median(&mut rates[i]));
    let ratio = ours / service;
    Ok(Row {
        figure: format!(
            "live output: a run printing {mb:.0} MB to a pipe, start to exit (median of {})",
            plan.log_reps
        ),
        ours: format!("{ours:.0} MB/s (`bus containers run -- sh -c …` attached)"),
        anchors: format!(
            "{}: {service:.0} MB/s; ours is **{ratio:.2}×** of it<br>{}: {local:.0} MB/s",
            cmds[1].label, cmds[2].label
        ),
        target: format!("≥ 0.8×: {}", check(ratio >= 0.8)),
    })
}

/// Reading a finished run's output: `bus containers logs` against `podman logs`.
pub fn log_throughput(stack: &Stack, plan: &Plan) -> Result<Row, Failed> {
    let bytes = plan.log_bytes;
    let mb = bytes as f64 / 1e6;
    let script = printer(bytes);
    say(&format!("measuring log throughput ({mb:.0} MB of output)"));
    let run = stack
        .bus(&["containers", "run", "-d", "--", "sh", "-c", &script])?
        .trim()
        .to_owned();
    let name = format!("bus-bench-logs-{}", std::process::id());
    let podman = |args: &[&str]| -> Result<String, Failed> {
        let out = stack
            .engine_cmd("podman", &[&["podman"][..], args].concat())
            .command()
            .output()
            .map_err(|e| Failed(format!("cannot run podman: {e}")))?;
        if !out.status.success() {
            return Err(Failed(format!(
                "podman {} failed: {}",
                args.join(" "),
                String::from_utf8_lossy(&out.stderr).trim()
            )));
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    };
    podman(&[
        "run",
        "-d",
        "--name",
        &name,
        "--network",
        "none",
        "localhost/busybox",
        "sh",
        "-c",
        &script,
    ])?;
    let result = (|| {
        stack.bus(&["containers", "wait", &run])?;
        podman(&["wait", &name])?;
        let mut ours = Vec::new();
        let mut theirs = Vec::new();
        let bus = stack.bus_cmd("bus", &["containers", "logs", &run]);
        let podman_logs = stack.engine_cmd("podman", &["podman", "logs", &name]);
        for _ in 0..plan.log_reps {
            ours.push(read_rate(&bus, bytes)?);
            theirs.push(read_rate(&podman_logs, bytes)?);
        }
        Ok::<_, Failed>((median(&mut ours), median(&mut theirs)))
    })();
    let _ = podman(&["rm", "-f", &name]);
    let _ = stack.bus(&["containers", "delete", &run]);
    let (ours, theirs) = result?;
    let ratio = ours / theirs;
    Ok(Row {
        figure: format!(
            "log throughput: reading a finished run's {mb:.0} MB of output (median of {})",
            plan.log_reps
        ),
        ours: format!("{ours:.0} MB/s (`bus containers logs RUN`)"),
        anchors: format!(
            "`podman logs` of a container that printed the same: {theirs:.0} MB/s; ours is \
             **{ratio:.1}×** of it"
        ),
        target: format!("≥ 0.8×: {}", check(ratio >= 0.8)),
    })
}

/// MB/s of reading everything `cmd` prints; it must print at least 99% of `expected` bytes.
fn read_rate(cmd: &Cmd, expected: u64) -> Result<f64, Failed> {
    let (wall, got) = load::read_all(cmd)?;
    if got < expected - expected / 100 {
        return Err(Failed(format!(
            "`{}` printed {got} bytes, not the {expected} the run wrote",
            cmd.display()
        )));
    }
    Ok(got as f64 / 1e6 / wall.as_secs_f64())
}

fn median(values: &mut [f64]) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

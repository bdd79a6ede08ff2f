//! What a run that only waits costs: the engine's CPU (and the runner's) while one `sleep`
//! run goes on, against the same container under Podman's own remote client and with nobody
//! waiting on it. Podman answers a wait by polling the container's state, so how often it is
//! asked to poll is what shows here.

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use crate::measure::cpu_us;
use crate::stack::Stack;
use crate::{Failed, Plan, Row, say};

/// Seconds after the start before measuring: past the runner's first, fastest polling.
const SETTLE: Duration = Duration::from_secs(3);

/// One row: CPU share of the Podman API service (and the runner) over `plan.idle_window`.
pub fn waiting(stack: &Stack, plan: &Plan) -> Result<Row, Failed> {
    say("measuring what a waiting run costs the engine");
    let window = plan.idle_window;
    let share = |pid: u32, f: &dyn Fn()| -> Result<f64, Failed> {
        let before = cpu_us(pid)?;
        f();
        let used = cpu_us(pid)? - before;
        Ok(used as f64 / window.as_micros() as f64 * 100.0)
    };

    let run = stack
        .bus(&["containers", "run", "-d", "--", "sleep", "600"])?
        .trim()
        .to_owned();
    stack.container_of(&run)?;
    std::thread::sleep(SETTLE);
    let runner_before = cpu_us(stack.runner_pid)?;
    let ours = share(stack.podman_pid, &|| std::thread::sleep(window))?;
    let runner =
        (cpu_us(stack.runner_pid)? - runner_before) as f64 / window.as_micros() as f64 * 100.0;
    stack.bus(&["containers", "delete", &run])?;

    let mut attached = podman(stack, &["run", "--rm", "--network", "none", "--name"])
        .args(["bus-bench-waiting", "localhost/busybox", "sleep", "600"])
        .stdout(Stdio::null())
        .spawn()
        .map_err(|e| Failed(format!("cannot run podman: {e}")))?;
    std::thread::sleep(SETTLE);
    let podman_client = share(stack.podman_pid, &|| std::thread::sleep(window));
    remove(stack, &mut attached);
    let podman_client = podman_client?;

    let alone = podman(stack, &["run", "-d", "--rm", "--network", "none", "--name"])
        .args(["bus-bench-waiting", "localhost/busybox", "sleep", "600"])
        .output()
        .map_err(|e| Failed(format!("cannot run podman: {e}")))?;
    if !alone.status.success() {
        return Err(Failed(format!(
            "podman run -d failed: {}",
            String::from_utf8_lossy(&alone.stderr).trim()
        )));
    }
    std::thread::sleep(SETTLE);
    let nobody = share(stack.podman_pid, &|| std::thread::sleep(window));
    let _ = podman(stack, &["rm", "-f", "-t", "0", "bus-bench-waiting"]).output();
    let nobody = nobody?;

    Ok(Row {
        figure: format!(
            "a waiting run: CPU of the Podman API service over {} s while one `sleep` run goes \
             on, from {} s after its start",
            window.as_secs(),
            SETTLE.as_secs()
        ),
        ours: format!(
            "{ours:.2}% of a core (`bus containers run -d -- sleep`); the runner {runner:.2}%"
        ),
        anchors: format!(
            "`podman --url … run --rm … sleep` attached: {podman_client:.2}%<br>\
             the same container with nobody waiting (`run -d`): {nobody:.2}%"
        ),
        target: "no target; shows the cost of the engine's polling".to_owned(),
    })
}

/// `podman --url unix://SOCKET ARGS…` in the engine's environment.
fn podman(stack: &Stack, args: &[&str]) -> Command {
    let mut cmd = Command::new("podman");
    cmd.arg("--url")
        .arg(format!("unix://{}", stack.podman_sock.display()))
        .args(args)
        .env_clear()
        .envs(stack.env.iter().map(|(k, v)| (k, v)))
        .stderr(Stdio::null());
    cmd
}

/// Removes the attached anchor's container and reaps its client.
fn remove(stack: &Stack, client: &mut Child) {
    let _ = podman(stack, &["rm", "-f", "-t", "0", "bus-bench-waiting"]).output();
    let _ = client.wait();
}

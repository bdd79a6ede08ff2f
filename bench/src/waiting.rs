//! What a run that only waits costs: the engine's CPU (and the runner's) while one `sleep`
//! run goes on, against the same container under Podman's own remote client and with nobody
//! waiting on it. Podman answers a wait by polling the container's state, so how often it is
//! asked to poll is what shows here.

use std::process::Stdio;
use std::time::Duration;

use crate::measure::cpu_us;
use crate::stack::Stack;
use crate::{Failed, Plan, Row, say};

/// How long after a start measuring begins: past the runner's first, fastest polling.
const SETTLE: Duration = Duration::from_secs(3);

/// The anchors' container name.
const ANCHOR: &str = "bus-bench-waiting";

/// One row: CPU share of the Podman API service (and the runner) over `plan.idle_window`.
pub fn waiting(stack: &Stack, plan: &Plan) -> Result<Row, Failed> {
    say("measuring what a waiting run costs the engine");
    let window = plan.idle_window;
    let pids = [stack.podman_pid, stack.runner_pid];

    let run = stack
        .bus(&["containers", "run", "-d", "--", "sleep", "600"])?
        .trim()
        .to_owned();
    stack.container_of(&run)?;
    let [ours, runner] = shares_after_settling(pids, window)?;
    stack.bus(&["containers", "delete", &run])?;

    let sleeping = ["localhost/busybox", "sleep", "600"];
    let mut client = stack
        .podman(&["run", "--rm", "--network", "none", "--name", ANCHOR])
        .args(sleeping)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|e| Failed(format!("cannot run podman: {e}")))?;
    let attached = shares_after_settling(pids, window);
    remove_anchor(stack);
    let _ = client.wait();
    let [attached, _] = attached?;

    let alone = stack
        .podman(&["run", "-d", "--rm", "--network", "none", "--name", ANCHOR])
        .args(sleeping)
        .output()
        .map_err(|e| Failed(format!("cannot run podman: {e}")))?;
    if !alone.status.success() {
        return Err(Failed(format!(
            "podman run -d failed: {}",
            String::from_utf8_lossy(&alone.stderr).trim()
        )));
    }
    let nobody = shares_after_settling(pids, window);
    remove_anchor(stack);
    let [nobody, _] = nobody?;

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
            "`podman --url … run --rm … sleep` attached: {attached:.2}%<br>\
             the same container with nobody waiting (`run -d`): {nobody:.2}%"
        ),
        target: "no target; shows the cost of the engine's polling".to_owned(),
    })
}

/// After [`SETTLE`], each process's CPU over `window`, in percent of a core.
fn shares_after_settling(pids: [u32; 2], window: Duration) -> Result<[f64; 2], Failed> {
    std::thread::sleep(SETTLE);
    let before = [cpu_us(pids[0])?, cpu_us(pids[1])?];
    std::thread::sleep(window);
    let share = |i: usize| -> Result<f64, Failed> {
        let used = cpu_us(pids[i])? - before[i];
        Ok(used as f64 / window.as_micros() as f64 * 100.0)
    };
    Ok([share(0)?, share(1)?])
}

/// Removes the anchors' container, if it is there.
fn remove_anchor(stack: &Stack) {
    let _ = stack
        .podman(&["rm", "-f", "-t", "0", ANCHOR])
        .stderr(Stdio::null())
        .output();
}

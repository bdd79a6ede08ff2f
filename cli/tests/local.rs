//! `bus local up --state-dir DIR`: a whole deployment (Podman's API service, bus-runner, busd)
//! kept to temporary directories, and `bus local down` stopping every process it recorded.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::{alive, bin, free_port, one_line_error, stop_pid};

/// A deployment in a temporary HOME (config, token, busd's socket and log under it) and a
/// temporary state directory; `down` on drop, and whatever it recorded stopped by PID.
struct Deployment {
    home: tempfile::TempDir,
    state: tempfile::TempDir,
    /// The working directory of every `bus` command.
    cwd: tempfile::TempDir,
}

impl Deployment {
    /// `bus` with only this deployment's environment; `BUS_LOCAL_STATE_DIR` when `by_env`.
    fn bus(&self, by_env: bool) -> Command {
        let home = self.home.path();
        let mut cmd = Command::new(bin("bus"));
        cmd.env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .env("HOME", home)
            .env("XDG_CONFIG_HOME", home.join("xdg-config"))
            .env("XDG_STATE_HOME", home.join("xdg-state"))
            .env("BUS_SOCKET", home.join("run/busd.sock"))
            .current_dir(self.cwd.path())
            .stdin(Stdio::null());
        if by_env {
            cmd.env("BUS_LOCAL_STATE_DIR", self.state.path());
        }
        cmd
    }

    /// `bus local ARGS --state-dir <state>`.
    fn local(&self, args: &[&str]) -> Output {
        self.bus(false)
            .arg("local")
            .args(args)
            .arg("--state-dir")
            .arg(self.state.path())
            .output()
            .unwrap()
    }

    /// The PIDs in the state directory's pidfiles.
    fn recorded(&self) -> Vec<(String, u32)> {
        ["podman.pid", "bus-runner.pid", "busd.pid"]
            .into_iter()
            .filter_map(|name| {
                let pid = std::fs::read_to_string(self.state.path().join(name)).ok()?;
                Some((name.to_owned(), pid.trim().parse().ok()?))
            })
            .collect()
    }
}

impl Drop for Deployment {
    fn drop(&mut self) {
        let recorded = self.recorded();
        let _ = self.local(&["down"]);
        for (_, pid) in recorded {
            if alive(pid) {
                stop_pid(pid);
            }
        }
    }
}

/// Every absolute path named in `text` (words starting with `/`, trailing punctuation off).
fn paths_in(text: &str) -> Vec<PathBuf> {
    text.split(|c: char| c.is_whitespace() || c == '`')
        .filter(|w| w.starts_with('/'))
        .map(|w| PathBuf::from(w.trim_end_matches([':', ',', '.', ')', ';'])))
        .collect()
}

fn success(out: &Output) -> String {
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success(), "{stderr}");
    stderr
}

#[test]
fn local_up_with_a_state_dir_stays_in_its_temp_dirs_and_down_stops_every_recorded_pid() {
    let deployment = Deployment {
        home: tempfile::tempdir().unwrap(),
        state: tempfile::tempdir().unwrap(),
        cwd: tempfile::tempdir().unwrap(),
    };
    let (home, state) = (deployment.home.path(), deployment.state.path());
    let listen = format!("127.0.0.1:{}", free_port());

    // A --runner-config that cannot be read starts nothing.
    let absent = state.join("absent.toml");
    let out = deployment.local(&["up", "--runner-config", absent.to_str().unwrap()]);
    let line = one_line_error(&out);
    assert!(line.contains("--runner-config"), "{line}");
    assert!(
        deployment.recorded().is_empty(),
        "{:?}",
        deployment.recorded()
    );

    let said = success(&deployment.local(&["up", "--listen", &listen]));

    // What `up` wrote, by what it said: all in the two temporary directories.
    let named = paths_in(&said);
    assert!(!named.is_empty(), "{said}");
    for path in &named {
        assert!(
            path.starts_with(home) || path.starts_with(state),
            "{} is outside the temporary dirs:\n{said}",
            path.display()
        );
    }
    for file in ["podman.sock", "runner.toml", "runner/runner-id"] {
        assert!(state.join(file).exists(), "{file} in the state dir");
    }
    let config = home.join("xdg-config/bus");
    assert!(config.join("auth/api-token").is_file(), "the token file");
    assert!(config.join("auth/api-key").is_file(), "the API key file");
    assert!(home.join("run/busd.sock").exists(), "busd's socket");
    assert!(
        !home.join("xdg-state/bus/local").exists(),
        "nothing in the default state dir"
    );

    // The pids it recorded are the ones running, as `status` reads them through the env.
    let recorded = deployment.recorded();
    assert_eq!(recorded.len(), 3, "{recorded:?}");
    assert!(recorded.iter().all(|(_, pid)| alive(*pid)), "{recorded:?}");
    let out = deployment
        .bus(true)
        .args(["local", "status", "-o", "json"])
        .output()
        .unwrap();
    success(&out);
    let status: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(status["running"], true, "{status}");
    assert_eq!(Path::new(status["state_dir"].as_str().unwrap()), state);
    let pids: Vec<u64> = status["components"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["pid"].as_u64().unwrap())
        .collect();
    let mut expected: Vec<u64> = recorded.iter().map(|(_, p)| u64::from(*p)).collect();
    let mut seen = pids.clone();
    expected.sort();
    seen.sort();
    assert_eq!(seen, expected, "{status}");

    // `down` (the state dir from the environment) stops every recorded process.
    success(
        &deployment
            .bus(true)
            .args(["local", "down"])
            .output()
            .unwrap(),
    );
    for (name, pid) in &recorded {
        let deadline = Instant::now() + Duration::from_secs(10);
        while alive(*pid) {
            assert!(Instant::now() < deadline, "{name}: pid {pid} still runs");
            std::thread::sleep(Duration::from_millis(50));
        }
    }
    let leftovers: Vec<_> = std::fs::read_dir(state)
        .unwrap()
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".pid") || n.ends_with(".sock"))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
    let in_cwd: Vec<_> = std::fs::read_dir(deployment.cwd.path())
        .unwrap()
        .filter_map(|e| e.ok())
        .map(|e| e.file_name())
        .collect();
    assert!(
        in_cwd.is_empty(),
        "written to the working directory: {in_cwd:?}"
    );
}

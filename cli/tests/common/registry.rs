//! A real image registry on loopback (Debian's `docker-registry`), with htpasswd auth, a temp
//! storage dir and a free port; stopped by PID on drop. And what the engine needs to use it:
//! a `registries.conf` naming it insecure (plain HTTP), and a credentials file for `bus`.

use std::io::Write as _;
use std::net::{TcpListener, TcpStream};
use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::stop_pid;

/// A running registry.
pub struct Registry {
    child: Child,
    /// `127.0.0.1:PORT`.
    pub host: String,
    /// Its user name.
    pub username: String,
    /// Its password: random, so a test can look for it in logs.
    pub password: String,
    /// Storage, config, htpasswd and the log.
    pub dir: tempfile::TempDir,
}

fn random_hex() -> String {
    let mut bytes = [0u8; 12];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| std::io::Read::read_exact(&mut f, &mut bytes))
        .expect("randomness");
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

impl Registry {
    /// Starts a registry that wants a user name and password for every request.
    pub fn start() -> Registry {
        let dir = tempfile::tempdir().unwrap();
        let username = "bus-test".to_owned();
        let password = format!("reg-pw-{}", random_hex());
        // The password goes to htpasswd on stdin, never in its arguments.
        let mut htpasswd = Command::new("htpasswd")
            .args(["-niB", &username])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("htpasswd is installed (scripts/setup-engine installs apache2-utils)");
        writeln!(htpasswd.stdin.take().unwrap(), "{password}").unwrap();
        let out = htpasswd.wait_with_output().unwrap();
        assert!(out.status.success(), "htpasswd failed");
        std::fs::write(dir.path().join("htpasswd"), &out.stdout).unwrap();
        for _ in 0..5 {
            let port = TcpListener::bind("127.0.0.1:0")
                .unwrap()
                .local_addr()
                .unwrap()
                .port();
            let host = format!("127.0.0.1:{port}");
            let config = dir.path().join("config.yml");
            std::fs::write(
                &config,
                format!(
                    "version: 0.1\nlog:\n  level: info\nstorage:\n  filesystem:\n    rootdirectory: {}\n  delete:\n    enabled: true\nhttp:\n  addr: {host}\nauth:\n  htpasswd:\n    realm: bus-test\n    path: {}\n",
                    dir.path().join("storage").display(),
                    dir.path().join("htpasswd").display()
                ),
            )
            .unwrap();
            let log = std::fs::File::create(dir.path().join("registry.log")).unwrap();
            let mut child = Command::new("docker-registry")
                .arg("serve")
                .arg(&config)
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(log)
                .spawn()
                .expect("docker-registry is installed (scripts/setup-engine installs it)");
            let start = Instant::now();
            while start.elapsed() < Duration::from_secs(15) {
                if child.try_wait().unwrap().is_some() {
                    break; // the port was taken meanwhile: try another
                }
                if TcpStream::connect(&host).is_ok() {
                    return Registry {
                        child,
                        host,
                        username,
                        password,
                        dir,
                    };
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            stop_pid(child.id());
            let _ = child.wait();
        }
        panic!("the registry did not start; see its log in a kept temp dir");
    }

    /// A `registries.conf` that lets the engine use this registry over plain HTTP.
    pub fn registries_conf(&self) -> PathBuf {
        let path = self.dir.path().join("registries.conf");
        std::fs::write(
            &path,
            format!(
                "[[registry]]\nlocation = \"{}\"\ninsecure = true\n",
                self.host
            ),
        )
        .unwrap();
        path
    }

    /// A credentials file for `bus images pull/push --credentials-file`, mode 0600.
    pub fn credentials_file(&self, dir: &Path) -> PathBuf {
        let path = dir.join("registry-credentials.json");
        std::fs::write(
            &path,
            format!(
                "{{\"username\": \"{}\", \"password\": \"{}\"}}",
                self.username, self.password
            ),
        )
        .unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        path
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        stop_pid(self.child.id());
        let _ = self.child.wait();
    }
}

/// Removes images from the engine at `socket` by id when dropped (tests share the engine's
/// store, so each removes exactly what it made); first it waits (bounded) for the build
/// containers that appeared meanwhile to go, as the engine removes them once a build's last
/// step has ended, which may be after the build's stream did.
pub struct ImageCleanup {
    socket: PathBuf,
    ids: Vec<String>,
    builders: Vec<String>,
}

/// The engine's build containers (`podman ps --external`, named `*-working-container*`).
fn build_containers(socket: &Path) -> Vec<String> {
    let out = Command::new("podman")
        .arg("--url")
        .arg(format!("unix://{}", socket.display()))
        .args([
            "ps",
            "-a",
            "--external",
            "--no-trunc",
            "--format",
            "{{.ID}} {{.Names}}",
        ])
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .output();
    let Ok(out) = out else { return Vec::new() };
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| l.contains("-working-container"))
        .filter_map(|l| l.split_whitespace().next().map(str::to_owned))
        .collect()
}

impl ImageCleanup {
    /// Cleans up on the engine at `socket`.
    pub fn new(socket: &Path) -> ImageCleanup {
        ImageCleanup {
            socket: socket.to_owned(),
            ids: Vec::new(),
            builders: build_containers(socket),
        }
    }

    /// Removes `id` at the end.
    pub fn add(&mut self, id: &str) {
        let id = id.trim().to_owned();
        if !id.is_empty() && !self.ids.contains(&id) {
            self.ids.push(id);
        }
    }
}

impl Drop for ImageCleanup {
    fn drop(&mut self) {
        let start = Instant::now();
        while build_containers(&self.socket)
            .iter()
            .any(|c| !self.builders.contains(c))
            && start.elapsed() < Duration::from_secs(30)
        {
            std::thread::sleep(Duration::from_millis(200));
        }
        let podman = || {
            let mut command = Command::new("podman");
            command
                .arg("--url")
                .arg(format!("unix://{}", self.socket.display()));
            command
        };
        // Never the shared base image, whatever a test added.
        let base = podman()
            .args([
                "image",
                "inspect",
                "--format",
                "{{.Id}}",
                "localhost/busybox:latest",
            ])
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
            .unwrap_or_default();
        for id in self.ids.iter().rev() {
            let bare = id.trim_start_matches("sha256:");
            if base.is_empty() || base.trim_start_matches("sha256:").starts_with(bare) {
                continue;
            }
            let _ = podman()
                .args(["rmi", "-f", id])
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status();
        }
    }
}

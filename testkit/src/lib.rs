//! The one test harness of the workspace: Podman's API service, `bus-runner`, `busd` and the
//! whole stack (with the `bus` CLI), each started on temporary sockets and directories by a
//! builder and stopped by the PID it started on drop, never by name.
//!
//! Binaries are named by a [`Bins`]: an integration test of the package that builds one of
//! them passes Cargo's `CARGO_BIN_EXE_<name>`, and the others are its siblings in the same
//! target directory (`cargo build --workspace --bins` builds them all).

mod bins;
mod busd;
mod output;
mod podman;
mod process;
mod runner;
pub mod script;
mod stack;
pub mod tls;
mod watch;

pub use bins::Bins;
pub use busd::Busd;
pub use output::{describe, expect_success, last_error_line, one_line_error, stdout};
pub use podman::Podman;
pub use process::{alive, stop_pid, wait_until, write_secret};
pub use runner::{ALL_SCOPES, Runner, RunnerProcess, Serve, hash_key, mint};
pub use stack::Stack;
pub use watch::Watched;

/// Why something the harness starts could not be started.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A binary of the workspace is not built.
    #[error("{0} is missing: run `cargo build --workspace --bins` first")]
    Missing(std::path::PathBuf),
    /// A program could not be run at all.
    #[error("cannot run {program}: {source}{hint}")]
    Spawn {
        /// The program.
        program: String,
        /// What to do about it, with a leading "; ", or nothing.
        hint: &'static str,
        /// The OS error.
        source: std::io::Error,
    },
    /// A service did not become ready.
    #[error("{0}")]
    NotReady(String),
    /// A file or directory the harness needs could not be written.
    #[error("{0}: {1}")]
    Io(String, std::io::Error),
}

/// The repository's root, for files the harness shares with deployments (deploy/).
pub fn repo_root() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("testkit/ is inside the repository")
        .to_path_buf()
}

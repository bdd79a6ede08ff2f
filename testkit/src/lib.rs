//! The one test harness of the workspace: Podman's API service, `bus-runner`, `busd` and the
//! whole stack (with the `bus` CLI), each started on temporary sockets and directories by a
//! builder and stopped by the PID it started on drop, never by name.
//!
//! Binaries are named by a [`Bins`]: an integration test of the package that builds one of
//! them passes Cargo's `CARGO_BIN_EXE_<name>`, and the others are its siblings in the same
//! target directory (`cargo build --workspace --bins` builds them all).

mod bins;
mod busd;
mod error;
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
pub use error::Error;
pub use output::{describe, expect_success, last_error_line, one_line_error, stdout};
pub use podman::{Podman, PodmanBuilder, repo_root};
pub use process::{alive, free_port, stop_pid, wait_until, write_secret};
pub use runner::{ALL_SCOPES, Runner, RunnerProcess, Serve, hash_key, mint};
pub use stack::Stack;
pub use watch::Watched;

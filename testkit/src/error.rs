//! What can keep the harness from starting something.

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

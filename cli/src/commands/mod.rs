//! One module per subcommand: an `Args` struct and `run()`.

pub mod delete;
pub mod info;
pub mod run;
pub mod runs;
pub mod status;

//! One module per subcommand: an `Args` struct and `run()`.

pub mod attach;
pub mod auth;
pub mod billing;
pub mod builds;
pub mod completion;
pub mod config;
pub mod daemon;
pub mod delete;
pub mod exec;
pub mod execs;
pub mod get;
pub mod images;
pub mod info;
pub mod local;
pub mod logs;
pub mod run;
pub mod runs;
pub mod status;
pub mod stop;
pub mod wait;

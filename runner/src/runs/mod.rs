//! Runs: a request validated into a [`spec::RunSpec`], driven on the engine by [`executor`]
//! from create to removal, commands exec'd into them ([`execs`]), and each account's storage
//! volume they may mount ([`storage`]); the run token and proxy settings a profile gives its
//! runs ([`agent`]).

pub mod agent;
pub mod execs;
pub mod executor;
pub mod spec;
pub mod storage;

//! Subcommands that clap builds only when the command line enters them.
//!
//! clap's derive builds every command and argument of the whole tree before it parses; for a
//! call such as `bus containers runs` that was most of the CLI's clap work and a quarter of
//! its instructions. A group or a command's arguments wrapped in [`Deferred`] are handed to
//! `Command::defer`, so only what the command line passes through is built. Completions and
//! man pages need the whole tree at once: [`build_everything`] turns deferral off for them.

use std::sync::atomic::{AtomicBool, Ordering};

use clap::{ArgMatches, Args, Command, FromArgMatches, Subcommand};

static EAGER: AtomicBool = AtomicBool::new(false);

/// From now on, [`Deferred`] builds at once (before `Cli::command()` for completions and man
/// pages, whose `help` subcommand mirrors the tree as it stands when its parent is built).
pub fn build_everything() {
    EAGER.store(true, Ordering::Relaxed);
}

/// A subcommand group, or a command's arguments, built only when parsing enters it; `.0` is
/// what was parsed.
#[derive(Debug)]
pub struct Deferred<T>(pub T);

impl<T: FromArgMatches> FromArgMatches for Deferred<T> {
    fn from_arg_matches(matches: &ArgMatches) -> Result<Self, clap::Error> {
        T::from_arg_matches(matches).map(Deferred)
    }

    fn update_from_arg_matches(&mut self, matches: &ArgMatches) -> Result<(), clap::Error> {
        self.0.update_from_arg_matches(matches)
    }
}

impl<T: Subcommand> Subcommand for Deferred<T> {
    fn augment_subcommands(cmd: Command) -> Command {
        defer(cmd, |cmd| {
            crate::guides::point(keep_about(cmd, T::augment_subcommands))
        })
    }

    fn augment_subcommands_for_update(cmd: Command) -> Command {
        defer(cmd, |cmd| {
            crate::guides::point(keep_about(cmd, T::augment_subcommands_for_update))
        })
    }

    fn has_subcommand(name: &str) -> bool {
        T::has_subcommand(name)
    }
}

impl<T: Args> Args for Deferred<T> {
    fn augment_args(cmd: Command) -> Command {
        defer(cmd, |cmd| keep_about(cmd, T::augment_args))
    }

    fn augment_args_for_update(cmd: Command) -> Command {
        defer(cmd, |cmd| keep_about(cmd, T::augment_args_for_update))
    }

    fn group_id() -> Option<clap::Id> {
        T::group_id()
    }
}

fn defer(cmd: Command, build: fn(Command) -> Command) -> Command {
    if EAGER.load(Ordering::Relaxed) {
        build(cmd)
    } else {
        cmd.defer(build)
    }
}

/// Runs `build` on `cmd` keeping the about texts it had: the ones from the variant's doc
/// comment were set before the deferred part (whose type has a doc comment too) was built.
fn keep_about(cmd: Command, build: fn(Command) -> Command) -> Command {
    let about = cmd.get_about().cloned();
    let long_about = cmd.get_long_about().cloned();
    let mut cmd = build(cmd);
    if let Some(about) = about {
        cmd = cmd.about(about);
    }
    if let Some(long_about) = long_about {
        cmd = cmd.long_about(long_about);
    }
    cmd
}

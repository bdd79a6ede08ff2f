//! `bus containers runs`: the account's runs, newest first; `--watch` redraws them.

use std::io::{IsTerminal as _, Write as _};
use std::time::Duration;

use bus::proto::containers::v1::{ListRunsRequest, Run, RunState};
use time::OffsetDateTime;

use crate::context::Ctx;
use crate::error::CliError;
use crate::render::{self, OutputArgs, RunJson, TableStyle};

/// The shortest refresh `--watch` allows.
const MIN_INTERVAL: Duration = Duration::from_millis(500);

/// Lists runs.
#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(flatten)]
    output: OutputArgs,
    /// Keep the list up to date: on a terminal the table is redrawn in place; otherwise the
    /// table is printed again, after a blank line, whenever a run changed. Ctrl-C ends it.
    #[arg(short, long)]
    watch: bool,
    /// How often --watch refreshes (at least 500ms)
    #[arg(long, value_name = "DURATION", value_parser = humantime::parse_duration,
          default_value = "2s", requires = "watch")]
    interval: Duration,
    #[command(flatten)]
    filter: Filter,
}

/// Which runs to list.
#[derive(Debug, Clone, clap::Args)]
struct Filter {
    /// Only runs in these states (comma-separated or repeated), e.g. running,queued
    #[arg(long, value_enum, value_delimiter = ',', value_name = "STATE")]
    state: Vec<StateArg>,
    /// Only runs with this name
    #[arg(long, value_name = "NAME")]
    name: Option<String>,
    /// Only runs for this participant
    #[arg(long, value_name = "NAME")]
    participant: Option<String>,
    /// Only runs in this role
    #[arg(long, value_name = "ROLE")]
    role: Option<String>,
    /// At most this many runs, newest first
    #[arg(short = 'n', long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
    limit: Option<u32>,
    /// Runs in every state, which is what is listed anyway (docker's `ps -a`; `--state
    /// running` lists what `docker ps` does)
    #[arg(short, long, conflicts_with = "state")]
    all: bool,
}

/// A run state as `--state` takes it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum StateArg {
    Queued,
    Starting,
    Running,
    Exited,
    Failed,
    Stopped,
    /// As the JSON output and the runner name it.
    #[value(name = "timed_out")]
    TimedOut,
}

impl StateArg {
    fn proto(self) -> RunState {
        match self {
            StateArg::Queued => RunState::Queued,
            StateArg::Starting => RunState::Starting,
            StateArg::Running => RunState::Running,
            StateArg::Exited => RunState::Exited,
            StateArg::Failed => RunState::Failed,
            StateArg::Stopped => RunState::Stopped,
            StateArg::TimedOut => RunState::TimedOut,
        }
    }
}

impl Args {
    /// Runs the command; returns the exit code.
    pub async fn run(self, ctx: &Ctx) -> Result<u8, CliError> {
        if self.watch {
            return self.watch(ctx).await;
        }
        let runs = list(ctx, &self.filter).await?;
        self.print(&runs)?;
        Ok(0)
    }

    fn print(&self, runs: &[Run]) -> Result<(), CliError> {
        let now = OffsetDateTime::now_utc();
        self.output.print(
            runs,
            |run| &run.id,
            |runs| {
                runs.iter()
                    .map(|r| RunJson::new(r, now))
                    .collect::<Vec<_>>()
            },
            |runs| render::runs_table_styled(runs, now, TableStyle::for_stdout()),
        )?;
        Ok(())
    }

    async fn watch(&self, ctx: &Ctx) -> Result<u8, CliError> {
        let interval = self.interval.max(MIN_INTERVAL);
        let terminal = std::io::stdout().is_terminal();
        // Without a terminal a table is printed again only when a run changed (not for the
        // relative times alone).
        let mut last = None;
        let stop = tokio::signal::ctrl_c();
        tokio::pin!(stop);
        loop {
            let runs = list(ctx, &self.filter).await?;
            let now = OffsetDateTime::now_utc();
            let table = if terminal {
                render::runs_table_styled(&runs, now, TableStyle::for_stdout())
            } else {
                render::runs_table(&runs, now)
            };
            let mut out = std::io::stdout().lock();
            if terminal {
                // Home, clear, then the table under a one-line heading (as `watch` does).
                let stamp = now
                    .format(&time::format_description::well_known::Rfc3339)
                    .unwrap_or_default();
                write!(
                    out,
                    "\x1b[H\x1b[2JEvery {}: bus containers runs    {stamp}\n\n{table}",
                    humantime::format_duration(interval)
                )?;
            } else {
                let key: Vec<_> = runs
                    .iter()
                    .map(|r| (r.id.clone(), r.state, r.exit_code))
                    .collect();
                if last.as_ref() != Some(&key) {
                    if last.is_some() {
                        writeln!(out)?;
                    }
                    write!(out, "{table}")?;
                    last = Some(key);
                }
            }
            out.flush()?;
            drop(out);
            tokio::select! {
                _ = &mut stop => return Ok(0),
                _ = tokio::time::sleep(interval) => {}
            }
        }
    }
}

/// The account's runs that `filter` asks for, newest first, over as many pages as needed.
async fn list(ctx: &Ctx, filter: &Filter) -> Result<Vec<Run>, CliError> {
    let limit = filter.limit.map_or(usize::MAX, |n| n as usize);
    let mut runs = Vec::new();
    let mut page_token = String::new();
    loop {
        let request = ctx.request(ListRunsRequest {
            // The server caps it; 0 is its default.
            page_size: filter.limit.unwrap_or(0),
            page_token,
            states: filter.state.iter().map(|s| s.proto() as i32).collect(),
            name: filter.name.clone().unwrap_or_default(),
            participant: filter.participant.clone().unwrap_or_default(),
            role: filter.role.clone().unwrap_or_default(),
        });
        let page = ctx.containers().list_runs(request).await?.into_inner();
        runs.extend(page.runs);
        if runs.len() >= limit {
            runs.truncate(limit);
            return Ok(runs);
        }
        if page.next_page_token.is_empty() {
            return Ok(runs);
        }
        page_token = page.next_page_token;
    }
}

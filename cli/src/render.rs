//! Turning proto values into text for people.

use bus::proto::containers::v1::{PortMapping, Run, RunState};
use bus::timestamp::{timestamp_rfc3339 as rfc3339, unix_rfc3339};
use time::OffsetDateTime;

/// A run state's short name, e.g. `timed_out`.
pub fn state_name(state: i32) -> &'static str {
    match RunState::try_from(state).unwrap_or(RunState::Unspecified) {
        RunState::Unspecified => "unknown",
        RunState::Queued => "queued",
        RunState::Starting => "starting",
        RunState::Running => "running",
        RunState::Exited => "exited",
        RunState::Failed => "failed",
        RunState::Stopped => "stopped",
        RunState::TimedOut => "timed_out",
    }
}

/// How long ago `t` was, e.g. `3m ago`.
pub fn ago(t: Option<&prost_types::Timestamp>, now: OffsetDateTime) -> String {
    let Some(t) = t else { return "-".to_owned() };
    let secs = (now.unix_timestamp() - t.seconds).max(0);
    match secs {
        0..=59 => format!("{secs}s ago"),
        60..=3599 => format!("{}m ago", secs / 60),
        3600..=86_399 => format!("{}h ago", secs / 3600),
        _ => format!("{}d ago", secs / 86_400),
    }
}

/// `-o table|json`: how listing and get commands print.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    /// Aligned columns (or `key: value` lines) for people.
    Table,
    /// One JSON document on stdout; its shape is documented in docs/cli.md and stable.
    Json,
}

impl std::str::FromStr for Format {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s.trim() {
            "table" => Ok(Format::Table),
            "json" => Ok(Format::Json),
            other => Err(format!(
                "unknown output format {other:?}; use table or json"
            )),
        }
    }
}

/// The format when a command has no `-o`: `BUS_OUTPUT`, else `output` in config.toml (set
/// once at start by `main`), else table.
static DEFAULT_FORMAT: std::sync::OnceLock<Format> = std::sync::OnceLock::new();

/// Sets the default format (once, at start).
pub fn set_default_format(format: Format) {
    let _ = DEFAULT_FORMAT.set(format);
}

/// The `-o` flag and `-q`, shared by every listing and get command.
#[derive(Debug, Clone, clap::Args)]
pub struct OutputArgs {
    /// Output format [env: BUS_OUTPUT] [default: `output` in config.toml, else table]
    #[arg(short = 'o', long = "output", value_enum, value_name = "FORMAT")]
    format: Option<Format>,
    /// Print only ids, one per line.
    #[arg(short, long, conflicts_with = "format")]
    pub quiet: bool,
}

impl OutputArgs {
    /// The format in force.
    pub fn format(&self) -> Format {
        self.format
            .or_else(|| DEFAULT_FORMAT.get().copied())
            .unwrap_or(Format::Table)
    }

    /// Prints `items` as asked, the one way every listing and get command prints: their ids
    /// one per line (`-q`), `json` of them as one JSON document, or `table` of them.
    pub fn print<T, J: serde::Serialize>(
        &self,
        items: &[T],
        id: impl Fn(&T) -> &str,
        json: impl FnOnce(&[T]) -> J,
        table: impl FnOnce(&[T]) -> String,
    ) -> std::io::Result<()> {
        if self.quiet {
            for item in items {
                println!("{}", id(item));
            }
            return Ok(());
        }
        match self.format() {
            Format::Json => print_json(&json(items)),
            Format::Table => {
                print!("{}", table(items));
                Ok(())
            }
        }
    }

    /// [`OutputArgs::print`] with a plain table: `header` over one `row` per item.
    pub fn print_rows<T, J: serde::Serialize>(
        &self,
        items: &[T],
        id: impl Fn(&T) -> &str,
        json: impl FnOnce(&[T]) -> J,
        header: &[&str],
        row: impl Fn(&T) -> Vec<String>,
    ) -> std::io::Result<()> {
        self.print(items, id, json, |items| {
            let rows: Vec<Vec<String>> = items.iter().map(row).collect();
            table(header, &rows)
        })
    }
}

/// Rows in aligned columns under a header.
pub fn table(header: &[&str], rows: &[Vec<String>]) -> String {
    let count = |s: &str| s.chars().count();
    let mut widths: Vec<usize> = header.iter().map(|h| count(h)).collect();
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(count(cell));
        }
    }
    let mut out = String::new();
    let header: Vec<String> = header.iter().map(|h| (*h).to_owned()).collect();
    for row in std::iter::once(&header).chain(rows) {
        let mut line = String::new();
        for (i, (cell, w)) in row.iter().zip(&widths).enumerate() {
            if i > 0 {
                line.push_str("  ");
            }
            line.push_str(cell);
            line.push_str(&" ".repeat(w.saturating_sub(count(cell))));
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

/// `-o` alone, for commands that show one thing without an id (status, info).
#[derive(Debug, Clone, clap::Args)]
pub struct FormatArg {
    /// Output format [env: BUS_OUTPUT] [default: `output` in config.toml, else table]
    #[arg(short = 'o', long = "output", value_enum, value_name = "FORMAT")]
    format: Option<Format>,
}

impl FormatArg {
    /// The format in force.
    pub fn format(&self) -> Format {
        self.format
            .or_else(|| DEFAULT_FORMAT.get().copied())
            .unwrap_or(Format::Table)
    }
}

/// Prints `value` as pretty JSON and a newline.
pub fn print_json(value: &impl serde::Serialize) -> std::io::Result<()> {
    use std::io::Write as _;
    let mut out = std::io::stdout().lock();
    serde_json::to_writer_pretty(&mut out, value).map_err(std::io::Error::from)?;
    writeln!(out)
}

/// Whether to colour stdout: a terminal, and `NO_COLOR` unset or empty.
pub fn colour_stdout() -> bool {
    use std::io::IsTerminal as _;
    colour_allowed(
        std::io::stdout().is_terminal(),
        std::env::var_os("NO_COLOR").as_deref(),
    )
}

/// [`colour_stdout`]'s rule, pure.
pub fn colour_allowed(terminal: bool, no_color: Option<&std::ffi::OsStr>) -> bool {
    terminal && no_color.is_none_or(|v| v.is_empty())
}

/// The terminal's width when stdout is one: its window size, else `$COLUMNS`.
pub fn terminal_width() -> Option<usize> {
    use std::io::IsTerminal as _;
    if !std::io::stdout().is_terminal() {
        return None;
    }
    rustix::termios::tcgetwinsize(std::io::stdout())
        .ok()
        .map(|w| usize::from(w.ws_col))
        .filter(|w| *w > 0)
        .or_else(|| std::env::var("COLUMNS").ok()?.parse().ok())
}

/// The JSON shape of a run (`bus containers runs -o json` is an array of these, `get -o json`
/// one). Stable: fields are only ever added. Times are RFC 3339 UTC or null.
#[derive(Debug, serde::Serialize)]
pub struct RunJson {
    /// The run id.
    pub id: String,
    /// queued, starting, running, exited, failed, stopped, timed_out or unknown.
    pub state: &'static str,
    /// The exit code once the run has one, else null.
    pub exit_code: Option<i32>,
    /// Why it ended when it did not simply exit, else null.
    pub reason: Option<String>,
    /// The image.
    pub image: String,
    /// The profile, or null.
    pub profile: Option<String>,
    /// The command.
    pub argv: Vec<String>,
    /// The run's name, or null.
    pub name: Option<String>,
    /// Who the run is for, or null.
    pub participant: Option<String>,
    /// The role the run acts in, or null.
    pub role: Option<String>,
    /// Published ports: `host_ip`, `host_port` (null until the engine picked one),
    /// `container_port`, `protocol`.
    pub ports: Vec<PortJson>,
    /// Where the account's storage is mounted (`mount_path`, `subpath`), or null.
    pub storage: Option<StorageJson>,
    /// Whether the run is a service (started again when it fails).
    pub service: bool,
    /// How many times the service was started again.
    pub restarts: u32,
    /// Labels.
    pub labels: std::collections::BTreeMap<String, String>,
    /// When it was created.
    pub created_at: Option<String>,
    /// When it started.
    pub started_at: Option<String>,
    /// When it finished.
    pub finished_at: Option<String>,
    /// finished (or now, while running) minus started, in seconds; null before it started.
    pub duration_seconds: Option<f64>,
}

/// A published port in JSON output.
#[derive(Debug, serde::Serialize)]
pub struct PortJson {
    /// The host address it is bound to.
    pub host_ip: String,
    /// The host port, once known.
    pub host_port: Option<u32>,
    /// The port inside the container.
    pub container_port: u32,
    /// tcp or udp.
    pub protocol: String,
}

/// A storage mount in JSON output.
#[derive(Debug, serde::Serialize)]
pub struct StorageJson {
    /// The path inside the container.
    pub mount_path: String,
    /// The directory of the storage mounted there, or null for its root.
    pub subpath: Option<String>,
}

/// A published port as docker shows it: `127.0.0.1:8080->80/tcp` (`?` for a host port the
/// engine has not picked yet).
pub fn port_text(port: &PortMapping) -> String {
    let host = match port.host_port {
        0 => "?".to_owned(),
        n => n.to_string(),
    };
    let ip = if port.host_ip.contains(':') {
        format!("[{}]", port.host_ip)
    } else {
        port.host_ip.clone()
    };
    let protocol = if port.protocol.is_empty() {
        "tcp"
    } else {
        &port.protocol
    };
    format!("{ip}:{host}->{}/{protocol}", port.container_port)
}

fn non_empty(s: &str) -> Option<String> {
    (!s.is_empty()).then(|| s.to_owned())
}

/// How long the run ran: finished (or `now`, while it has not) minus started.
pub fn duration(run: &Run, now: OffsetDateTime) -> Option<f64> {
    let secs = |t: &prost_types::Timestamp| t.seconds as f64 + f64::from(t.nanos) / 1e9;
    let started = secs(run.started_at.as_ref()?);
    let end = match &run.finished_at {
        Some(t) => secs(t),
        None if is_active(run.state) => now.unix_timestamp_nanos() as f64 / 1e9,
        None => return None,
    };
    Some((end - started).max(0.0))
}

fn is_active(state: i32) -> bool {
    matches!(
        RunState::try_from(state).unwrap_or(RunState::Unspecified),
        RunState::Queued | RunState::Starting | RunState::Running
    )
}

/// A duration for people, exact to what the unit shows: `512ms`, `2.8s`, `12s`, `1m03s`,
/// `2h10m`.
pub fn human_duration(secs: f64) -> String {
    let secs = secs.max(0.0);
    let ms = (secs * 1000.0).round() as u64;
    if ms < 1000 {
        return format!("{ms}ms");
    }
    let tenths = (secs * 10.0).round() as u64;
    if tenths < 600 {
        return match tenths % 10 {
            0 => format!("{}s", tenths / 10),
            t => format!("{}.{t}s", tenths / 10),
        };
    }
    let s = secs.round() as u64;
    match s {
        0..=3599 => format!("{}m{:02}s", s / 60, s % 60),
        _ => format!("{}h{:02}m", s / 3600, (s % 3600) / 60),
    }
}

/// Seconds from `start` to `end`, to the nanosecond; never negative.
pub fn span(start: &prost_types::Timestamp, end: &prost_types::Timestamp) -> f64 {
    let secs = |t: &prost_types::Timestamp| t.seconds as f64 + f64::from(t.nanos) / 1e9;
    (secs(end) - secs(start)).max(0.0)
}

impl RunJson {
    /// The JSON shape of `run`.
    pub fn new(run: &Run, now: OffsetDateTime) -> Self {
        RunJson {
            id: run.id.clone(),
            state: state_name(run.state),
            exit_code: run.exit_code,
            reason: non_empty(&run.reason),
            image: run.image.clone(),
            profile: non_empty(&run.profile),
            argv: run.argv.clone(),
            name: non_empty(&run.name),
            participant: non_empty(&run.participant),
            role: non_empty(&run.role),
            ports: run
                .ports
                .iter()
                .map(|p| PortJson {
                    host_ip: p.host_ip.clone(),
                    host_port: (p.host_port > 0).then_some(p.host_port),
                    container_port: p.container_port,
                    protocol: p.protocol.clone(),
                })
                .collect(),
            storage: run.storage.as_ref().map(|s| StorageJson {
                mount_path: s.mount_path.clone(),
                subpath: non_empty(&s.subpath),
            }),
            service: run.service,
            restarts: run.restarts,
            labels: run.labels.clone().into_iter().collect(),
            created_at: rfc3339(run.created_at.as_ref()),
            started_at: rfc3339(run.started_at.as_ref()),
            finished_at: rfc3339(run.finished_at.as_ref()),
            duration_seconds: duration(run, now).map(|d| (d * 1000.0).round() / 1000.0),
        }
    }
}

/// The JSON shape of a foreground run's result (`bus containers run -o json`): the run's
/// fields ([`RunJson`]) and its output. Stable: fields are only ever added.
#[derive(Debug, serde::Serialize)]
pub struct RunResultJson {
    /// The run, as `get -o json` shows it once it ended.
    #[serde(flatten)]
    pub run: RunJson,
    /// Everything the command wrote to stdout, or null when it is not UTF-8 (then see
    /// `stdout_base64`).
    pub stdout: Option<String>,
    /// Everything the command wrote to stderr, or null when it is not UTF-8.
    pub stderr: Option<String>,
    /// stdout's bytes in base64, only when they are not UTF-8.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stdout_base64: Option<String>,
    /// stderr's bytes in base64, only when they are not UTF-8.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stderr_base64: Option<String>,
}

impl RunResultJson {
    /// The result of `run` with the output it wrote.
    pub fn new(run: &Run, now: OffsetDateTime, stdout: Vec<u8>, stderr: Vec<u8>) -> Self {
        let (stdout, stdout_base64) = text_or_base64(stdout);
        let (stderr, stderr_base64) = text_or_base64(stderr);
        RunResultJson {
            run: RunJson::new(run, now),
            stdout,
            stderr,
            stdout_base64,
            stderr_base64,
        }
    }
}

/// The bytes as text when they are UTF-8, else in base64.
fn text_or_base64(bytes: Vec<u8>) -> (Option<String>, Option<String>) {
    use base64::Engine as _;
    match String::from_utf8(bytes) {
        Ok(text) => (Some(text), None),
        Err(e) => (
            None,
            Some(base64::engine::general_purpose::STANDARD.encode(e.as_bytes())),
        ),
    }
}

/// How a table is drawn: the terminal's width (None: unbounded) and whether to colour.
#[derive(Debug, Clone, Copy, Default)]
pub struct TableStyle {
    /// The widest a line may be.
    pub width: Option<usize>,
    /// ANSI colour on the state column.
    pub colour: bool,
}

impl TableStyle {
    /// The style for stdout as it is now.
    pub fn for_stdout() -> Self {
        TableStyle {
            width: terminal_width(),
            colour: colour_stdout(),
        }
    }
}

/// The rows of `bus containers runs`, aligned in columns, plain (no colour, no width bound).
pub fn runs_table(runs: &[Run], now: OffsetDateTime) -> String {
    runs_table_styled(runs, now, TableStyle::default())
}

fn state_colour(run: &Run) -> &'static str {
    match RunState::try_from(run.state).unwrap_or(RunState::Unspecified) {
        RunState::Exited if run.exit_code == Some(0) => "32",
        RunState::Exited | RunState::Failed | RunState::TimedOut => "31",
        RunState::Queued | RunState::Starting | RunState::Running => "33",
        _ => "2",
    }
}

/// The IMAGE column's index: the one shortened to fit the terminal.
const IMAGE_COLUMN: usize = 4;
/// The column coloured by state.
const STATE_COLUMN: usize = 2;

/// The runs table with `style`: IMAGE is cut (with `…`) so lines fit the width; STATE is
/// coloured when asked.
pub fn runs_table_styled(runs: &[Run], now: OffsetDateTime, style: TableStyle) -> String {
    // PORTS only when a run has some, so the usual table stays narrow.
    let with_ports = runs.iter().any(|r| !r.ports.is_empty());
    let mut header: Vec<String> = [
        "ID", "NAME", "STATE", "EXIT", "IMAGE", "CREATED", "DURATION", "PORTS",
    ]
    .map(str::to_owned)
    .to_vec();
    if !with_ports {
        header.pop();
    }
    let dash = |s: &str| {
        if s.is_empty() {
            "-".to_owned()
        } else {
            s.to_owned()
        }
    };
    let mut rows: Vec<Vec<String>> = runs
        .iter()
        .map(|run| {
            let mut row = vec![
                run.id.clone(),
                dash(&run.name),
                state_name(run.state).to_owned(),
                run.exit_code
                    .map_or_else(|| "-".to_owned(), |c| c.to_string()),
                if run.profile.is_empty() {
                    run.image.clone()
                } else {
                    format!("{} ({})", run.image, run.profile)
                },
                ago(run.created_at.as_ref(), now),
                duration(run, now).map_or_else(|| "-".to_owned(), human_duration),
                run.ports
                    .iter()
                    .map(port_text)
                    .collect::<Vec<_>>()
                    .join(", "),
            ];
            row.truncate(header.len());
            row
        })
        .collect();
    let count = |s: &str| s.chars().count();
    let mut widths: Vec<usize> = header.iter().map(|h| count(h)).collect();
    for row in &rows {
        for (width, cell) in widths.iter_mut().zip(row) {
            *width = (*width).max(count(cell));
        }
    }
    if let Some(limit) = style.width {
        let total: usize = widths.iter().sum::<usize>() + 2 * (widths.len() - 1);
        if total > limit {
            let image = widths[IMAGE_COLUMN]
                .saturating_sub(total - limit)
                .max(count("IMAGE"));
            widths[IMAGE_COLUMN] = image;
            for row in &mut rows {
                let cell = &mut row[IMAGE_COLUMN];
                if count(cell) > image {
                    *cell = cell.chars().take(image - 1).collect::<String>() + "…";
                }
            }
        }
    }
    let mut out = String::new();
    let mut line = |cells: &[String], colour: Option<&str>| {
        let mut text = String::new();
        for (i, (cell, w)) in cells.iter().zip(&widths).enumerate() {
            if i > 0 {
                text.push_str("  ");
            }
            let pad = " ".repeat(w.saturating_sub(count(cell)));
            match colour {
                Some(code) if i == STATE_COLUMN => {
                    text.push_str(&format!("\x1b[{code}m{cell}\x1b[0m{pad}"))
                }
                _ => {
                    text.push_str(cell);
                    text.push_str(&pad);
                }
            }
        }
        out.push_str(text.trim_end());
        out.push('\n');
    };
    line(&header, None);
    for (row, run) in rows.iter().zip(runs) {
        line(row, style.colour.then(|| state_colour(run)));
    }
    out
}

/// `bus containers get`: one field per line.
pub fn run_details(run: &Run, now: OffsetDateTime) -> String {
    // Whole seconds: a person reads these.
    let time = |t: Option<&prost_types::Timestamp>| {
        t.and_then(|t| unix_rfc3339(t.seconds))
            .unwrap_or_else(|| "-".to_owned())
    };
    let dash = |s: &str| {
        if s.is_empty() {
            "-".to_owned()
        } else {
            s.to_owned()
        }
    };
    let mut out = String::new();
    let mut line = |k: &str, v: String| out.push_str(&format!("{k:<10} {v}\n"));
    line("id:", run.id.clone());
    line("state:", state_name(run.state).to_owned());
    line(
        "exit:",
        run.exit_code
            .map_or_else(|| "-".to_owned(), |c| c.to_string()),
    );
    line("reason:", dash(&run.reason));
    line("image:", run.image.clone());
    line("profile:", dash(&run.profile));
    line("command:", run.argv.join(" "));
    line("name:", dash(&run.name));
    if !run.participant.is_empty() || !run.role.is_empty() {
        line("for:", dash(&run.participant));
        line("role:", dash(&run.role));
    }
    if !run.ports.is_empty() {
        line(
            "ports:",
            run.ports
                .iter()
                .map(port_text)
                .collect::<Vec<_>>()
                .join(", "),
        );
    }
    if run.service {
        line(
            "service:",
            match run.restarts {
                0 => "yes".to_owned(),
                1 => "yes, started again once after it failed".to_owned(),
                n => format!("yes, started again {n} times after it failed"),
            },
        );
    }
    if let Some(storage) = &run.storage {
        let from = if storage.subpath.is_empty() {
            String::new()
        } else {
            format!(" (storage: {})", storage.subpath)
        };
        line("storage:", format!("{}{from}", storage.mount_path));
    }
    line(
        "created:",
        format!(
            "{} ({})",
            time(run.created_at.as_ref()),
            ago(run.created_at.as_ref(), now)
        ),
    );
    line("started:", time(run.started_at.as_ref()));
    line("finished:", time(run.finished_at.as_ref()));
    line(
        "duration:",
        duration(run, now).map_or_else(|| "-".to_owned(), human_duration),
    );
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_aligns_columns() {
        let now = OffsetDateTime::from_unix_timestamp(1_000_000).unwrap();
        let run = Run {
            id: "run_abc".into(),
            state: RunState::Exited as i32,
            exit_code: Some(3),
            image: "localhost/busybox:latest".into(),
            profile: "codex".into(),
            created_at: Some(prost_types::Timestamp {
                seconds: 1_000_000 - 120,
                nanos: 0,
            }),
            ..Default::default()
        };
        let table = runs_table(std::slice::from_ref(&run), now);
        assert_eq!(
            table,
            "ID       NAME  STATE   EXIT  IMAGE                             CREATED  DURATION\n\
             run_abc  -     exited  3     localhost/busybox:latest (codex)  2m ago   -\n"
        );
        // PORTS once a run publishes some.
        let mut web = run.clone();
        web.name = "web".into();
        web.ports = vec![PortMapping {
            container_port: 80,
            host_port: 8080,
            protocol: "tcp".into(),
            host_ip: "127.0.0.1".into(),
        }];
        let table = runs_table(&[web, run.clone()], now);
        assert_eq!(
            table,
            "ID       NAME  STATE   EXIT  IMAGE                             CREATED  DURATION  PORTS\n\
             run_abc  web   exited  3     localhost/busybox:latest (codex)  2m ago   -         127.0.0.1:8080->80/tcp\n\
             run_abc  -     exited  3     localhost/busybox:latest (codex)  2m ago   -\n"
        );
        let mut timed = run.clone();
        timed.started_at = Some(prost_types::Timestamp {
            seconds: 1_000_000 - 119,
            nanos: 0,
        });
        timed.finished_at = Some(prost_types::Timestamp {
            seconds: 1_000_000 - 54,
            nanos: 0,
        });
        let narrow = runs_table_styled(
            &[timed],
            now,
            TableStyle {
                width: Some(56),
                colour: true,
            },
        );
        let row = narrow.lines().nth(1).unwrap();
        assert!(row.contains("\x1b[31mexited\x1b[0m"), "{row:?}");
        assert!(row.contains("  localho…  "), "{row:?}");
        assert!(row.ends_with("1m05s"), "{row:?}");
        assert!(narrow.lines().next().unwrap().chars().count() <= 56);
    }

    #[test]
    fn colour_only_on_a_terminal_without_no_color() {
        use std::ffi::OsStr;
        assert!(colour_allowed(true, None));
        assert!(colour_allowed(true, Some(OsStr::new(""))));
        assert!(!colour_allowed(true, Some(OsStr::new("1"))));
        assert!(!colour_allowed(false, None));
    }

    #[test]
    fn run_json_shape() {
        let now = OffsetDateTime::from_unix_timestamp(1_000_000).unwrap();
        let run = Run {
            id: "run_x".into(),
            state: RunState::Running as i32,
            image: "img".into(),
            argv: vec!["sh".into()],
            started_at: Some(prost_types::Timestamp {
                seconds: 1_000_000 - 10,
                nanos: 0,
            }),
            ..Default::default()
        };
        let json = serde_json::to_value(RunJson::new(&run, now)).unwrap();
        assert_eq!(json["state"], "running");
        assert_eq!(json["exit_code"], serde_json::Value::Null);
        assert_eq!(json["profile"], serde_json::Value::Null);
        assert_eq!(json["duration_seconds"], 10.0);
        assert_eq!(json["started_at"], "1970-01-12T13:46:30Z");
        assert_eq!(human_duration(0.25), "250ms");
        assert_eq!(human_duration(0.512), "512ms");
        assert_eq!(human_duration(0.9996), "1s");
        assert_eq!(human_duration(2.8), "2.8s");
        assert_eq!(human_duration(12.0), "12s");
        assert_eq!(human_duration(59.97), "1m00s");
        assert_eq!(human_duration(63.2), "1m03s");
        assert_eq!(human_duration(7325.0), "2h02m");
    }
}

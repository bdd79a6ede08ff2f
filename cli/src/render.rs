//! Turning proto values into text for people.

use bus::proto::containers::v1::{Run, RunState};
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

/// The rows of `bus containers runs`, aligned in columns.
pub fn runs_table(runs: &[Run], now: OffsetDateTime) -> String {
    let header = ["ID", "STATE", "EXIT", "IMAGE", "CREATED"].map(str::to_owned);
    let rows: Vec<[String; 5]> = runs
        .iter()
        .map(|run| {
            [
                run.id.clone(),
                state_name(run.state).to_owned(),
                run.exit_code
                    .map_or_else(|| "-".to_owned(), |c| c.to_string()),
                if run.profile.is_empty() {
                    run.image.clone()
                } else {
                    format!("{} ({})", run.image, run.profile)
                },
                ago(run.created_at.as_ref(), now),
            ]
        })
        .collect();
    let mut widths = header.clone().map(|h| h.len());
    for row in &rows {
        for (width, cell) in widths.iter_mut().zip(row) {
            *width = (*width).max(cell.len());
        }
    }
    let mut out = String::new();
    for row in std::iter::once(&header).chain(&rows) {
        let line: Vec<String> = row
            .iter()
            .zip(widths)
            .map(|(cell, w)| format!("{cell:<w$}"))
            .collect();
        out.push_str(line.join("  ").trim_end());
        out.push('\n');
    }
    out
}

/// `bus containers get`: one field per line.
pub fn run_details(run: &Run, now: OffsetDateTime) -> String {
    let time = |t: Option<&prost_types::Timestamp>| {
        t.and_then(|t| OffsetDateTime::from_unix_timestamp(t.seconds).ok())
            .and_then(|t| {
                t.format(&time::format_description::well_known::Rfc3339)
                    .ok()
            })
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
        let table = runs_table(&[run], now);
        assert_eq!(
            table,
            "ID       STATE   EXIT  IMAGE                             CREATED\n\
             run_abc  exited  3     localhost/busybox:latest (codex)  2m ago\n"
        );
    }
}

//! `bus containers logs [-f] [-t] [--since WHEN] [--since-seq N] [--tail N] RUN`: a run's
//! output, resumable.
//!
//! `--tail N` counts lines, as docker's and kubectl's do: the runner keeps output in chunks
//! (whatever each write held), so the command reads the last chunks, more of them until they
//! hold N lines, and prints from where the N-th line from the end begins.
//!
//! When busd goes away under the stream (it died, or was killed), the command starts it again
//! and resumes after the last seq it printed, so no chunk is lost or printed twice.

use bus::proto::containers::v1::{
    LogChunk, NoticeKind, RunExited, StdStream, StreamLogsRequest, StreamNotice, log_event::Event,
};

use time::OffsetDateTime;

use crate::context::Ctx;
use crate::error::CliError;
use crate::output::Output;
use crate::resume::{BUSD_LOST_STEP, Resumes};

/// Prints a run's output.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// The run, by id or name.
    #[arg(value_name = "RUN")]
    run_id: String,
    /// Keep printing new output until the run ends.
    #[arg(short, long)]
    follow: bool,
    /// Only output after this seq (resume where an earlier read stopped).
    #[arg(long, value_name = "N", conflicts_with = "tail")]
    since_seq: Option<u64>,
    /// Only the last N lines that exist now (0: none; with -f, only what comes next; `all`,
    /// as docker takes it: every line).
    #[arg(short = 'n', long, value_name = "N", value_parser = parse_tail)]
    tail: Option<Tail>,
    /// Only output written since this time: a duration before now (10m, 1h30m) or an RFC 3339
    /// time (2026-12-01T14:00:00Z).
    #[arg(long, value_name = "WHEN", value_parser = parse_since)]
    since: Option<OffsetDateTime>,
    /// Begin each line with the time it was written (RFC 3339, UTC).
    #[arg(short, long)]
    timestamps: bool,
    /// Only stdout.
    #[arg(long, conflicts_with = "stderr")]
    stdout: bool,
    /// Only stderr.
    #[arg(long)]
    stderr: bool,
}

impl Args {
    /// Runs the command; returns the exit code.
    pub async fn run(self, ctx: &Ctx) -> Result<u8, CliError> {
        let streams = match (self.stdout, self.stderr) {
            (true, _) => vec![StdStream::Stdout as i32],
            (_, true) => vec![StdStream::Stderr as i32],
            _ => Vec::new(),
        };
        let mut request = StreamLogsRequest {
            run_id: self.run_id.clone(),
            follow: self.follow,
            after_seq: self.since_seq.unwrap_or(0),
            tail: 0,
            streams,
            keepalive_seconds: 0,
            exit_only: false,
        };
        let mut output = Output::lock().since(self.since).timestamps(self.timestamps);
        if let Some(Tail::Last(lines)) = self.tail {
            request.after_seq = print_last_lines(ctx, &request, lines, &mut output).await?;
            if !self.follow {
                return Ok(0);
            }
        }
        match print_logs(ctx, request, &mut output, false).await? {
            Some(_) => Ok(0),
            None if self.follow => Err(CliError::StreamCut(self.run_id)),
            None => Ok(0),
        }
    }
}

/// Prints the chunks of `request`'s stream as they come; returns the exit event, or `None`
/// when the stream ended without one. Resumes after the last printed seq when busd is lost
/// (see the module docs), saying so on stderr once the resumed stream is open; `resumed`
/// says the caller resumes already (and the line is due at once).
pub async fn print_logs(
    ctx: &Ctx,
    mut request: StreamLogsRequest,
    output: &mut Output,
    mut resumed: bool,
) -> Result<Option<RunExited>, CliError> {
    let mut resumes = Resumes::new(BUSD_LOST_STEP);
    loop {
        let mut progressed = false;
        let outcome = stream_once(ctx, &mut request, output, &mut resumed, &mut progressed).await;
        match outcome {
            Err(lost) if lost.busd_lost() => {
                if progressed {
                    resumes.progressed();
                }
                if !resumes.reconnect(ctx).await? {
                    return Err(lost);
                }
                resumed = true;
            }
            other => return other,
        }
    }
}

/// Prints the last `lines` lines of `request`'s streams as they are now; returns the seq of
/// the last chunk read (where a follow goes on), 0 when there is none.
async fn print_last_lines(
    ctx: &Ctx,
    request: &StreamLogsRequest,
    lines: u32,
    output: &mut Output,
) -> Result<u64, CliError> {
    // A chunk holds a line or more as a rule: start with as many chunks as lines.
    let mut chunks_wanted = lines.max(1);
    loop {
        let mut chunks = last_chunks(ctx, request, chunks_wanted).await?;
        let all = chunks.len() < chunks_wanted as usize;
        let last_seq = chunks.last().map_or(0, |chunk| chunk.seq);
        // Chunks older than --since count for nothing; once one is among them, none before it
        // can count either.
        let shown = chunks.len();
        chunks.retain(|chunk| output.shows(chunk));
        let all = all || chunks.len() < shown;
        let start = match last_lines_start(&chunks, lines) {
            Some(start) => start,
            None if all || chunks_wanted == u32::MAX => (0, 0),
            None => {
                chunks_wanted = chunks_wanted.saturating_mul(4);
                continue;
            }
        };
        let (first, offset) = start;
        for (i, chunk) in chunks.iter().enumerate().skip(first) {
            if i == first && offset > 0 {
                let rest = LogChunk {
                    data: chunk.data[offset..].to_vec(),
                    ..chunk.clone()
                };
                output.write(&rest)?;
            } else {
                output.write(chunk)?;
            }
        }
        return Ok(last_seq);
    }
}

/// How much of the output `--tail` asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Tail {
    /// Every line, as without `--tail`.
    All,
    /// The last this many lines.
    Last(u32),
}

/// A `--tail` value: a number of lines, or `all`.
fn parse_tail(text: &str) -> Result<Tail, String> {
    if text == "all" {
        return Ok(Tail::All);
    }
    text.parse()
        .map(Tail::Last)
        .map_err(|_| format!("{text:?} is neither a number of lines nor `all`"))
}

/// `--since`: a duration before now, or an RFC 3339 time.
fn parse_since(text: &str) -> Result<OffsetDateTime, String> {
    if let Ok(ago) = humantime::parse_duration(text) {
        return time::Duration::try_from(ago)
            .ok()
            .and_then(|ago| OffsetDateTime::now_utc().checked_sub(ago))
            .ok_or_else(|| format!("{text} reaches back too far"));
    }
    OffsetDateTime::parse(text, &time::format_description::well_known::Rfc3339).map_err(|_| {
        format!("{text:?} is neither a duration (10m, 1h30m) nor an RFC 3339 time (2026-12-01T14:00:00Z)")
    })
}

/// The last `count` chunks of `request`'s streams that exist now, oldest first.
async fn last_chunks(
    ctx: &Ctx,
    request: &StreamLogsRequest,
    count: u32,
) -> Result<Vec<LogChunk>, CliError> {
    let request = StreamLogsRequest {
        follow: false,
        tail: count,
        ..request.clone()
    };
    let mut events = ctx
        .containers()
        .stream_logs(ctx.long_request(request))
        .await?
        .into_inner();
    let mut chunks = Vec::new();
    while let Some(event) = events.message().await? {
        if let Some(Event::Output(chunk)) = event.event {
            chunks.push(chunk);
        }
    }
    Ok(chunks)
}

/// Where the last `lines` lines of `chunks` begin: the index of a chunk and the offset in it.
/// A line ends with a newline, or is the unterminated rest at the very end (as `tail -n`
/// counts). `None` when the chunks hold fewer lines, so the start may lie further back.
fn last_lines_start(chunks: &[LogChunk], lines: u32) -> Option<(usize, usize)> {
    let end = chunks.len();
    if lines == 0 {
        return Some((end, 0));
    }
    // The newline that ends the last line is not a line's start.
    let mut skip_final_newline = true;
    let mut newlines = 0;
    for (i, chunk) in chunks.iter().enumerate().rev() {
        for (at, &byte) in chunk.data.iter().enumerate().rev() {
            if std::mem::take(&mut skip_final_newline) && byte == b'\n' {
                continue;
            }
            if byte == b'\n' {
                newlines += 1;
                if newlines == lines {
                    return Some((i, at + 1));
                }
            }
        }
    }
    None
}

/// Shows a notice of busd's on stderr: that it lost the runner and retries (one line per
/// outage); a restored runner shows itself by the output that follows.
pub fn show_notice(notice: &StreamNotice) {
    if notice.kind == NoticeKind::UpstreamUnreachable as i32 {
        eprintln!("bus: {}", notice.message);
    }
}

/// The line shown on stderr when a stream goes on through a new connection to busd.
pub fn resuming(after_seq: u64) -> String {
    format!("bus: the connection to busd broke; reconnected, resuming after seq {after_seq}")
}

/// One stream: prints its chunks, moving `request`'s `after_seq` past each (and dropping its
/// `tail`, so a resumed stream starts right after what was printed).
async fn stream_once(
    ctx: &Ctx,
    request: &mut StreamLogsRequest,
    output: &mut Output,
    resumed: &mut bool,
    progressed: &mut bool,
) -> Result<Option<RunExited>, CliError> {
    let mut events = ctx
        .containers()
        .stream_logs(ctx.long_request(request.clone()))
        .await?
        .into_inner();
    if std::mem::take(resumed) {
        eprintln!("{}", resuming(request.after_seq));
    }
    while let Some(event) = events.message().await? {
        match event.event {
            Some(Event::Output(chunk)) => {
                output.write(&chunk)?;
                request.after_seq = chunk.seq;
                request.tail = 0;
                *progressed = true;
            }
            Some(Event::Gap(gap)) => {
                eprintln!(
                    "bus: output missing before seq {}: {}",
                    gap.first_available_seq, gap.reason
                );
            }
            Some(Event::Exited(exited)) => return Ok(Some(exited)),
            Some(Event::Notice(notice)) => show_notice(&notice),
            Some(Event::Keepalive(_)) | None => {}
        }
    }
    Ok(None)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tail_takes_a_number_of_lines_or_all() {
        assert_eq!(parse_tail("3"), Ok(Tail::Last(3)));
        assert_eq!(parse_tail("0"), Ok(Tail::Last(0)));
        assert_eq!(parse_tail("all"), Ok(Tail::All));
        for bad in ["-1", "ALL", "", "3 lines"] {
            let err = parse_tail(bad).unwrap_err();
            assert!(
                err.contains(&format!("{bad:?}")) && !err.contains('\n'),
                "{err}"
            );
        }
    }

    fn chunks(parts: &[&str]) -> Vec<LogChunk> {
        parts
            .iter()
            .enumerate()
            .map(|(i, part)| LogChunk {
                seq: i as u64 + 1,
                data: part.as_bytes().to_vec(),
                ..Default::default()
            })
            .collect()
    }

    /// The text from `start` on, as printed.
    fn from(chunks: &[LogChunk], (first, offset): (usize, usize)) -> String {
        let mut text = Vec::new();
        for (i, chunk) in chunks.iter().enumerate().skip(first) {
            text.extend_from_slice(&chunk.data[if i == first { offset } else { 0 }..]);
        }
        String::from_utf8(text).unwrap()
    }

    #[test]
    fn the_last_lines_start_wherever_the_chunks_split_them() {
        let c = chunks(&["a\nb\n", "c", "\nd\n"]);
        let tail = |n| last_lines_start(&c, n).map(|start| from(&c, start));
        assert_eq!(tail(0).as_deref(), Some(""));
        assert_eq!(tail(1).as_deref(), Some("d\n"));
        assert_eq!(
            tail(2).as_deref(),
            Some("c\nd\n"),
            "a line split over chunks"
        );
        assert_eq!(tail(3).as_deref(), Some("b\nc\nd\n"));
        assert_eq!(
            tail(4),
            None,
            "the first line may go on in an earlier chunk"
        );

        let unterminated = chunks(&["x\ny\nz"]);
        let start = last_lines_start(&unterminated, 1).unwrap();
        assert_eq!(
            from(&unterminated, start),
            "z",
            "the unterminated rest is a line"
        );
        let start = last_lines_start(&unterminated, 2).unwrap();
        assert_eq!(from(&unterminated, start), "y\nz");
        assert_eq!(last_lines_start(&[], 1), None);
    }
}

//! `bus builds create|ls|get|logs|wait|cancel|rm`: image builds. `create` tars the context
//! directory and streams it, then follows the build's output until it ended, as `docker build`
//! does (`-d`: prints the build's id at once); the build runs in the runner whether or not
//! anyone watches.

use std::path::{Path, PathBuf};
use std::time::Duration;

use bus::proto::images::v1 as pb;
use bus::proto::images::v1::builds_service_client::BuildsServiceClient;
use serde::Serialize;
use time::OffsetDateTime;
use tonic::Code;

use bus::timestamp::timestamp_rfc3339 as rfc3339;

use crate::commands::images::file_messages;
use crate::context::Ctx;
use crate::error::CliError;
use crate::progress::Transfer;
use crate::render::{self, Format, OutputArgs};
use crate::resume::Resumes;

/// Image builds.
#[derive(Debug, clap::Subcommand)]
pub enum Builds {
    /// Build an image from a context directory and print the builder's output until the image
    /// exists (-d: print the build's id and return).
    Create(CreateArgs),
    /// List the account's builds, newest first.
    Ls(LsArgs),
    /// Show one build.
    Get(GetArgs),
    /// Print a build's output; -f follows it until the build ends.
    Logs(LogsArgs),
    /// Wait for a build to end: exit 0 when it succeeded, 1 with the builder's error otherwise.
    Wait(WaitArgs),
    /// Cancel builds.
    Cancel(IdsArgs),
    /// Delete builds and their output (cancelling running ones).
    Rm(IdsArgs),
}

impl Builds {
    /// Runs the command; returns the exit code.
    pub async fn run(self, ctx: &Ctx) -> Result<u8, CliError> {
        match self {
            Builds::Create(args) => args.run(ctx).await,
            Builds::Ls(args) => args.run(ctx).await,
            Builds::Get(args) => args.run(ctx).await,
            Builds::Logs(args) => args.run(ctx).await,
            Builds::Wait(args) => args.run(ctx).await,
            Builds::Cancel(args) => args.cancel(ctx).await,
            Builds::Rm(args) => args.remove(ctx).await,
        }
    }
}

fn client(ctx: &Ctx) -> BuildsServiceClient<tonic::transport::Channel> {
    BuildsServiceClient::new(ctx.channel())
}

/// A build state's short name.
pub fn state_name(state: i32) -> &'static str {
    match pb::BuildState::try_from(state).unwrap_or(pb::BuildState::Unspecified) {
        pb::BuildState::Unspecified => "unknown",
        pb::BuildState::Queued => "queued",
        pb::BuildState::Running => "running",
        pb::BuildState::Succeeded => "succeeded",
        pb::BuildState::Failed => "failed",
        pb::BuildState::Cancelled => "cancelled",
    }
}

/// Starts a build.
#[derive(Debug, clap::Args)]
pub struct CreateArgs {
    /// A name for the image (repeatable), e.g. -t localhost/app:1.
    #[arg(short = 't', long = "tag", value_name = "TAG")]
    tags: Vec<String>,
    /// The Dockerfile, inside the context [default: CONTEXT_DIR/Dockerfile].
    #[arg(short = 'f', long = "file", value_name = "DOCKERFILE")]
    dockerfile: Option<PathBuf>,
    /// Print the build's id once the context is sent, instead of following the build.
    #[arg(short, long)]
    detach: bool,
    /// The directory sent to the builder.
    #[arg(value_name = "CONTEXT_DIR")]
    context: PathBuf,
}

/// The Dockerfile's path inside `context`, as the builder names it.
fn dockerfile_in(context: &Path, dockerfile: Option<&Path>) -> Result<String, CliError> {
    let context_abs = std::fs::canonicalize(context).map_err(|e| {
        CliError::Usage(format!(
            "the build context {} cannot be read: {e}; name a directory",
            context.display()
        ))
    })?;
    if !context_abs.is_dir() {
        return Err(CliError::Usage(format!(
            "the build context {} is not a directory",
            context.display()
        )));
    }
    let file = match dockerfile {
        Some(path) => std::fs::canonicalize(path).map_err(|e| {
            CliError::Usage(format!(
                "the Dockerfile {} cannot be read: {e}",
                path.display()
            ))
        })?,
        None => {
            let path = context_abs.join("Dockerfile");
            if !path.is_file() {
                return Err(CliError::Usage(format!(
                    "{} has no Dockerfile; add one or name it with -f",
                    context.display()
                )));
            }
            path
        }
    };
    let relative = file.strip_prefix(&context_abs).map_err(|_| {
        CliError::Usage(format!(
            "the Dockerfile {} is outside the context {}; move it into the context",
            file.display(),
            context.display()
        ))
    })?;
    Ok(relative.to_string_lossy().into_owned())
}

/// Tars `context` into a temporary file (symlinks as links, never followed).
fn tar_context(context: &Path) -> Result<tempfile::NamedTempFile, CliError> {
    let local = |e: std::io::Error| {
        CliError::Local(format!(
            "cannot pack the build context {}: {e}",
            context.display()
        ))
    };
    let file = tempfile::NamedTempFile::new().map_err(local)?;
    let mut builder = tar::Builder::new(std::io::BufWriter::new(file.reopen().map_err(local)?));
    builder.follow_symlinks(false);
    builder.append_dir_all(".", context).map_err(local)?;
    builder
        .into_inner()
        .map_err(local)?
        .into_inner()
        .map_err(|e| local(e.into_error()))?;
    Ok(file)
}

impl CreateArgs {
    async fn run(self, ctx: &Ctx) -> Result<u8, CliError> {
        let dockerfile = dockerfile_in(&self.context, self.dockerfile.as_deref())?;
        let packed = tar_context(&self.context)?;
        let file = tokio::fs::File::open(packed.path())
            .await
            .map_err(|e| CliError::Local(format!("cannot read the packed context: {e}")))?;
        let size = file
            .metadata()
            .await
            .map_err(|e| CliError::Local(format!("cannot read the packed context: {e}")))?
            .len();
        let transfer = Transfer::new(
            &format!("sending the context {}", self.context.display()),
            Some(size),
        );
        let first = pb::CreateBuildRequest {
            part: Some(pb::create_build_request::Part::Options(pb::BuildOptions {
                tags: self.tags,
                dockerfile,
                context_bytes: size,
            })),
        };
        let messages = file_messages(
            file,
            first,
            |data| pb::CreateBuildRequest {
                part: Some(pb::create_build_request::Part::Context(data)),
            },
            transfer.clone(),
        );
        // An upload lasts as long as the context takes: `--timeout` must not cut it off.
        match client(ctx)
            .create_build(ctx.session_request(messages))
            .await
        {
            Ok(response) => {
                transfer.finish();
                let build = response.into_inner().build.unwrap_or_default();
                if self.detach {
                    println!("{}", build.id);
                    return Ok(0);
                }
                crate::commands::run::announce(&build.id);
                match follow(ctx, &build.id, true, 0, true).await? {
                    Some(ended) => Ok(outcome(&ended)),
                    None => Err(CliError::Local(format!(
                        "the output of build {} ended before the build did; see `bus builds wait {}`",
                        build.id, build.id
                    ))),
                }
            }
            Err(status) => {
                transfer.abandon();
                Err(status.into())
            }
        }
    }
}

/// The JSON shape of a build (`bus builds ls -o json` prints an array of these).
#[derive(Debug, Serialize)]
pub struct BuildJson {
    id: String,
    state: &'static str,
    tags: Vec<String>,
    dockerfile: String,
    context_bytes: u64,
    image_id: Option<String>,
    error: Option<String>,
    created_at: Option<String>,
    started_at: Option<String>,
    finished_at: Option<String>,
}

impl From<&pb::Build> for BuildJson {
    fn from(b: &pb::Build) -> Self {
        let non_empty = |s: &str| (!s.is_empty()).then(|| s.to_owned());
        BuildJson {
            id: b.id.clone(),
            state: state_name(b.state),
            tags: b.tags.clone(),
            dockerfile: b.dockerfile.clone(),
            context_bytes: b.context_bytes,
            image_id: non_empty(&b.image_id),
            error: non_empty(&b.error),
            created_at: rfc3339(b.created_at.as_ref()),
            started_at: rfc3339(b.started_at.as_ref()),
            finished_at: rfc3339(b.finished_at.as_ref()),
        }
    }
}

/// Lists builds.
#[derive(Debug, clap::Args)]
pub struct LsArgs {
    #[command(flatten)]
    output: OutputArgs,
}

impl LsArgs {
    async fn run(self, ctx: &Ctx) -> Result<u8, CliError> {
        let builds = client(ctx)
            .list_builds(ctx.request(pb::ListBuildsRequest {}))
            .await?
            .into_inner()
            .builds;
        let now = OffsetDateTime::now_utc();
        self.output.print_rows(
            &builds,
            |build| &build.id,
            |builds| builds.iter().map(BuildJson::from).collect::<Vec<_>>(),
            &["ID", "STATE", "TAGS", "CREATED", "DURATION"],
            |b| {
                vec![
                    b.id.clone(),
                    state_name(b.state).to_owned(),
                    if b.tags.is_empty() {
                        "-".to_owned()
                    } else {
                        b.tags.join(", ")
                    },
                    render::ago(b.created_at.as_ref(), now),
                    took(b),
                ]
            },
        )?;
        Ok(0)
    }
}

/// Prints a build's output.
#[derive(Debug, clap::Args)]
pub struct LogsArgs {
    /// The build.
    #[arg(value_name = "BUILD_ID")]
    id: String,
    /// Keep printing new output until the build ends.
    #[arg(short, long)]
    follow: bool,
    /// Only output after this seq (resume where an earlier read stopped).
    #[arg(long, value_name = "N", default_value_t = 0)]
    since_seq: u64,
}

impl LogsArgs {
    async fn run(self, ctx: &Ctx) -> Result<u8, CliError> {
        match follow(ctx, &self.id, self.follow, self.since_seq, true).await? {
            Some(ended) => Ok(outcome(&ended)),
            None if self.follow => Err(CliError::Local(format!(
                "the output of build {} ended before the build did; see `bus builds wait {}`",
                self.id, self.id
            ))),
            None => Ok(0),
        }
    }
}

/// Waits for a build to end.
#[derive(Debug, clap::Args)]
pub struct WaitArgs {
    /// The build.
    #[arg(value_name = "BUILD_ID")]
    id: String,
}

impl WaitArgs {
    async fn run(self, ctx: &Ctx) -> Result<u8, CliError> {
        match follow(ctx, &self.id, true, 0, false).await? {
            Some(ended) => Ok(outcome(&ended)),
            None => Err(CliError::Local(format!(
                "the stream of build {} ended before the build did; run `bus builds wait {}` again",
                self.id, self.id
            ))),
        }
    }
}

/// Shows one build.
#[derive(Debug, clap::Args)]
pub struct GetArgs {
    /// The build.
    #[arg(value_name = "BUILD_ID")]
    id: String,
    #[command(flatten)]
    output: render::FormatArg,
}

impl GetArgs {
    async fn run(self, ctx: &Ctx) -> Result<u8, CliError> {
        let build = client(ctx)
            .get_build(ctx.request(pb::GetBuildRequest { id: self.id }))
            .await?
            .into_inner()
            .build
            .unwrap_or_default();
        match self.output.format() {
            Format::Json => render::print_json(&BuildJson::from(&build))?,
            Format::Table => {
                let or_dash = |s: Option<String>| s.unwrap_or_else(|| "-".to_owned());
                let rows = [
                    ("id:", build.id.clone()),
                    ("state:", state_name(build.state).to_owned()),
                    (
                        "tags:",
                        or_dash((!build.tags.is_empty()).then(|| build.tags.join(", "))),
                    ),
                    ("dockerfile:", build.dockerfile.clone()),
                    (
                        "image:",
                        or_dash((!build.image_id.is_empty()).then(|| build.image_id.clone())),
                    ),
                    (
                        "error:",
                        or_dash((!build.error.is_empty()).then(|| build.error.clone())),
                    ),
                    ("created:", or_dash(rfc3339(build.created_at.as_ref()))),
                    ("started:", or_dash(rfc3339(build.started_at.as_ref()))),
                    ("finished:", or_dash(rfc3339(build.finished_at.as_ref()))),
                    ("duration:", took(&build)),
                ];
                for (key, value) in rows {
                    println!("{key:<12}{value}");
                }
            }
        }
        Ok(0)
    }
}

/// How long a build took (started to finished), or `-`.
fn took(build: &pb::Build) -> String {
    match (&build.started_at, &build.finished_at) {
        (Some(s), Some(f)) => render::human_duration(render::span(s, f)),
        _ => "-".to_owned(),
    }
}

/// The exit code for an ended build: 0 when it succeeded; else 1, after one line on stderr
/// with the builder's own error.
fn outcome(build: &pb::Build) -> u8 {
    if build.state == pb::BuildState::Succeeded as i32 {
        return 0;
    }
    let state = state_name(build.state);
    // A cancelled build's error only repeats that it was cancelled.
    if build.error.is_empty() || build.state == pb::BuildState::Cancelled as i32 {
        eprintln!("bus: error: build {} {state}", build.id);
    } else {
        let error = build.error.trim_end().replace('\n', "; ");
        eprintln!("bus: error: build {} {state}: {error}", build.id);
    }
    1
}

/// Reads build `id`'s output after `after`, printing each line on stdout when `print`, and
/// with `follow` until it ended (resuming a stream that broke); returns the build as it
/// ended, or `None` when the stream ended before it did.
async fn follow(
    ctx: &Ctx,
    id: &str,
    follow: bool,
    mut after: u64,
    print: bool,
) -> Result<Option<pb::Build>, CliError> {
    use std::io::Write as _;
    // Resumes are counted over the whole follow, not only in a row.
    let mut resumes = Resumes::new(Duration::from_millis(200));
    loop {
        let request = ctx.session_request(pb::StreamBuildLogsRequest {
            id: id.to_owned(),
            follow,
            after_seq: after,
        });
        let mut stream = client(ctx).stream_build_logs(request).await?.into_inner();
        loop {
            let event = match stream.message().await {
                Ok(Some(message)) => message.event,
                Ok(None) if follow => break,
                Ok(None) => return Ok(None),
                // A stream that broke resumes after the last line printed.
                Err(status) if follow && status.code() == Code::Unavailable => {
                    if !resumes.next().await {
                        return Err(status.into());
                    }
                    break;
                }
                Err(status) => return Err(status.into()),
            };
            match event {
                Some(pb::stream_build_logs_response::Event::Line(line)) => {
                    if print {
                        let mut out = std::io::stdout().lock();
                        writeln!(out, "{}", line.text)?;
                        out.flush()?;
                    }
                    after = line.seq;
                }
                Some(pb::stream_build_logs_response::Event::Ended(ended)) => {
                    return Ok(Some(ended.build.unwrap_or_default()));
                }
                Some(pb::stream_build_logs_response::Event::Keepalive(_)) | None => {}
            }
        }
    }
}

/// Names builds.
#[derive(Debug, clap::Args)]
pub struct IdsArgs {
    /// The builds.
    #[arg(required = true, value_name = "BUILD_ID")]
    ids: Vec<String>,
}

impl IdsArgs {
    async fn cancel(self, ctx: &Ctx) -> Result<u8, CliError> {
        for id in self.ids {
            let build = client(ctx)
                .cancel_build(ctx.request(pb::CancelBuildRequest { id }))
                .await?
                .into_inner()
                .build
                .unwrap_or_default();
            println!("{} {}", build.id, state_name(build.state));
        }
        Ok(0)
    }

    async fn remove(self, ctx: &Ctx) -> Result<u8, CliError> {
        for id in self.ids {
            client(ctx)
                .delete_build(ctx.request(pb::DeleteBuildRequest { id: id.clone() }))
                .await?;
            println!("{id}");
        }
        Ok(0)
    }
}

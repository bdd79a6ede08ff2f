//! Runs: `POST/GET /api/v1/containers/runs`, `GET/DELETE /api/v1/containers/runs/{id}`,
//! `GET /api/v1/containers/runs/{id}/logs` and `POST /api/v1/containers/runs/{id}/stop`.

use std::collections::BTreeMap;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

/// Most argv entries a run may have.
pub const MAX_ARGV: usize = 256;
/// Most bytes in all of a run's argv, env and labels together.
pub const MAX_SPEC_BYTES: usize = 64 * 1024;
/// Longest timeout a run may ask for, in seconds (one day).
pub const MAX_TIMEOUT_SECONDS: u32 = 24 * 60 * 60;
/// Largest page a list call returns.
pub const MAX_PAGE_SIZE: u32 = 200;
/// Page size when the caller gives none.
pub const DEFAULT_PAGE_SIZE: u32 = 50;
/// Most ports a run may publish.
pub const MAX_PORTS: usize = 16;
/// Longest storage `mount_path` or `subpath`, in bytes.
pub const MAX_STORAGE_PATH_BYTES: usize = 1024;
/// How many times a service that failed is started again before it is left failed.
pub const MAX_SERVICE_RESTARTS: u32 = 3;
/// Every run id starts with this; run names may not, so the two never mix.
pub const RUN_ID_PREFIX: &str = "run_";
/// The host address a published port binds when the request names none.
pub const DEFAULT_HOST_IP: &str = "127.0.0.1";

/// The body of `POST /api/v1/containers/runs`.
///
/// Unknown fields are refused, except `owner` and `account_id`: those are accepted and
/// ignored, because a run always belongs to the token's account (`sub`), never to what the
/// body claims (see `CreateRunBody`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(from = "CreateRunBody")]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct CreateRun {
    /// A run profile (image, limits, timeout) defined by the deployment.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub profile: Option<String>,
    /// An image reference; overrides the profile's image.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,
    /// The command; empty means the image's default.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub argv: Vec<String>,
    /// Extra environment variables.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub env: BTreeMap<String, String>,
    /// Working directory inside the container.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub workdir: Option<String>,
    /// A human name for the run.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Labels to find the run by.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    /// Seconds before the run is killed; `None` means the profile's timeout.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "openapi", schema(minimum = 1, maximum = 86400))]
    pub timeout_seconds: Option<u32>,
    /// Container ports to publish on the host (at most 16, [`MAX_PORTS`]); only profiles
    /// whose `network` is `bridge` allow them.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[cfg_attr(feature = "openapi", schema(max_items = 16))]
    pub ports: Vec<Port>,
    /// Give the command a terminal: the engine merges stderr into stdout, so all output comes
    /// as `stdout` frames.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub tty: bool,
    /// Keep the command's stdin open, for a client attached with
    /// `GET /api/v1/containers/runs/{id}/attach`; it closes when that client closes it.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub stdin: bool,
    /// Mount the account's persistent storage; overrides the profile's storage mount.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub storage: Option<StorageMount>,
    /// Who the run is for, e.g. the user an agent acts for (1 to 128 characters).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub participant: Option<String>,
    /// The role the run acts in, e.g. `agent` (1 to 64 of `a-z0-9_.-`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub role: Option<String>,
    /// Whether to pull the image first: `missing` (the default), `always` or `never`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pull: Option<PullPolicy>,
    /// Credentials for the image's registry when it has to be pulled; used for that pull
    /// only, never stored or logged.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub credentials: Option<crate::images::RegistryCredentials>,
    /// A long-running service: it publishes a TCP port, has no timeout of its own (only the
    /// plan's run-seconds bound it), and is started again when its command fails, at most
    /// [`MAX_SERVICE_RESTARTS`] times. Combine with `wait=ready`.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub service: bool,
    /// Delete the run and its stored output once it has ended (docker's `--rm`).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub auto_remove: bool,
}

/// When a run pulls its image before it starts.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub enum PullPolicy {
    /// Only when the runner does not have the image (the account must be allowed to pull it).
    #[default]
    Missing,
    /// Every time, so the run gets the registry's current image.
    Always,
    /// Never: a missing image is refused.
    Never,
}

impl PullPolicy {
    /// The policy's name on the wire.
    pub fn as_str(self) -> &'static str {
        match self {
            PullPolicy::Missing => "missing",
            PullPolicy::Always => "always",
            PullPolicy::Never => "never",
        }
    }
}

/// A container port published on the host.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Port {
    /// The port inside the container.
    #[cfg_attr(feature = "openapi", schema(minimum = 1, maximum = 65535))]
    pub container_port: u16,
    /// The host port; absent means the engine picks a free one (the run record then shows
    /// it once the run is running).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "openapi", schema(minimum = 1, maximum = 65535))]
    pub host_port: Option<u16>,
    /// `tcp` (the default) or `udp`.
    #[serde(default)]
    pub protocol: Protocol,
    /// The host address to bind; default 127.0.0.1 (loopback only).
    #[serde(default = "default_host_ip")]
    #[cfg_attr(feature = "openapi", schema(default = "127.0.0.1"))]
    pub host_ip: String,
}

fn default_host_ip() -> String {
    DEFAULT_HOST_IP.to_owned()
}

/// A published port's transport protocol.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub enum Protocol {
    /// TCP.
    #[default]
    Tcp,
    /// UDP.
    Udp,
}

impl Protocol {
    /// The protocol's name on the wire and in the engine's port keys (`8080/tcp`).
    pub fn as_str(self) -> &'static str {
        match self {
            Protocol::Tcp => "tcp",
            Protocol::Udp => "udp",
        }
    }
}

/// Where a run mounts its account's persistent storage (one volume per account, created on
/// first use; files written there outlive the run).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct StorageMount {
    /// An absolute path inside the container, e.g. `/data`.
    pub mount_path: String,
    /// A directory inside the storage to mount instead of its root: relative, without `..`
    /// (created when missing).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subpath: Option<String>,
}

/// The wire form of [`CreateRun`]: its fields, plus `owner` and `account_id`, which are read
/// and dropped so that a client that sends them gets its run (owned by the token's account)
/// instead of a 400. Every other unknown field is refused.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CreateRunBody {
    #[serde(default)]
    profile: Option<String>,
    #[serde(default)]
    image: Option<String>,
    #[serde(default)]
    argv: Vec<String>,
    #[serde(default)]
    env: BTreeMap<String, String>,
    #[serde(default)]
    workdir: Option<String>,
    #[serde(default)]
    name: Option<String>,
    #[serde(default)]
    labels: BTreeMap<String, String>,
    #[serde(default)]
    timeout_seconds: Option<u32>,
    #[serde(default)]
    ports: Vec<Port>,
    #[serde(default)]
    tty: bool,
    #[serde(default)]
    stdin: bool,
    #[serde(default)]
    storage: Option<StorageMount>,
    #[serde(default)]
    participant: Option<String>,
    #[serde(default)]
    role: Option<String>,
    #[serde(default)]
    pull: Option<PullPolicy>,
    #[serde(default)]
    credentials: Option<crate::images::RegistryCredentials>,
    #[serde(default)]
    service: bool,
    #[serde(default)]
    auto_remove: bool,
    /// Ignored: the owner is the token's account.
    #[serde(default, rename = "owner")]
    _owner: Option<serde::de::IgnoredAny>,
    /// Ignored: the owner is the token's account.
    #[serde(default, rename = "account_id")]
    _account_id: Option<serde::de::IgnoredAny>,
}

impl From<CreateRunBody> for CreateRun {
    fn from(body: CreateRunBody) -> CreateRun {
        CreateRun {
            profile: body.profile,
            image: body.image,
            argv: body.argv,
            env: body.env,
            workdir: body.workdir,
            name: body.name,
            labels: body.labels,
            timeout_seconds: body.timeout_seconds,
            ports: body.ports,
            tty: body.tty,
            stdin: body.stdin,
            storage: body.storage,
            participant: body.participant,
            role: body.role,
            pull: body.pull,
            credentials: body.credentials,
            service: body.service,
            auto_remove: body.auto_remove,
        }
    }
}

/// Where a run is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub enum RunState {
    /// Accepted, not yet given to the engine.
    Queued,
    /// The container is being created and started.
    Starting,
    /// The container is running.
    Running,
    /// The command exited; `exit_code` says how.
    Exited,
    /// The run could not be started or was lost.
    Failed,
    /// Stopped on request.
    Stopped,
    /// Killed when its timeout passed.
    TimedOut,
}

impl RunState {
    /// Whether the run has ended for good.
    pub fn is_terminal(self) -> bool {
        matches!(
            self,
            Self::Exited | Self::Failed | Self::Stopped | Self::TimedOut
        )
    }

    /// Every state, in life order.
    pub const ALL: [RunState; 7] = [
        Self::Queued,
        Self::Starting,
        Self::Running,
        Self::Exited,
        Self::Failed,
        Self::Stopped,
        Self::TimedOut,
    ];

    /// The state named `name` on the wire (`timed_out`), if there is one.
    pub fn from_name(name: &str) -> Option<RunState> {
        Self::ALL.into_iter().find(|s| s.as_str() == name)
    }

    /// The state's name on the wire, e.g. `timed_out`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Queued => "queued",
            Self::Starting => "starting",
            Self::Running => "running",
            Self::Exited => "exited",
            Self::Failed => "failed",
            Self::Stopped => "stopped",
            Self::TimedOut => "timed_out",
        }
    }
}

/// A run as the runner records it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Run {
    /// `run_` followed by an unguessable id.
    pub id: String,
    /// Where the run is in its life.
    pub state: RunState,
    /// Set once the command has exited.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exit_code: Option<i32>,
    /// The profile the run was started from, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub profile: Option<String>,
    /// The image the container runs.
    pub image: String,
    /// The command.
    #[serde(default)]
    pub argv: Vec<String>,
    /// The run's human name, if given: unique among the account's live runs, and usable
    /// wherever the run's id is.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Who the run is for, if given.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub participant: Option<String>,
    /// The role the run acts in, if given.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub role: Option<String>,
    /// Labels given at creation.
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    /// When the run was accepted.
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: OffsetDateTime,
    /// When the container started.
    #[serde(default, with = "time::serde::rfc3339::option")]
    pub started_at: Option<OffsetDateTime>,
    /// When the run ended.
    #[serde(default, with = "time::serde::rfc3339::option")]
    pub finished_at: Option<OffsetDateTime>,
    /// Why the run ended when it did not simply exit.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// Usage: whole seconds from `started_at` to `finished_at`, rounded up; set once a run
    /// that started has ended.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub wall_seconds: Option<u64>,
    /// How the container is set up: ports, terminal, storage, memory limit.
    #[serde(flatten)]
    pub options: RunOptions,
}

/// The container settings a run was created with (part of [`Run`], flattened).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct RunOptions {
    /// Published ports; a `host_port` the engine picked is filled in once the run runs.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ports: Vec<Port>,
    /// Whether the command has a terminal (all output is then `stdout`).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub tty: bool,
    /// Whether the command's stdin is open for an attached client.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub stdin: bool,
    /// Where the account's storage is mounted, if it is.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub storage: Option<StorageMount>,
    /// The container's memory limit in MiB, from the profile; absent means none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory_mb: Option<u32>,
    /// How much output (stdout and stderr together) the runner stores for the run, in MiB,
    /// from the profile; absent means no limit. A run whose output reaches it is killed and
    /// ends `failed`, its output up to the limit kept.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_output_mb: Option<u32>,
    /// Whether the run is a service (restarted when it fails).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub service: bool,
    /// How many times the service was started again after its command failed.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub restarts: u32,
    /// Whether the run is deleted, with its stored output, once it has ended.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub auto_remove: bool,
}

fn is_zero(n: &u32) -> bool {
    *n == 0
}

/// The body of `POST /api/v1/containers/runs/{id}/stop`; an empty body means the defaults.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct StopRun {
    /// Seconds between SIGTERM and SIGKILL (at most 3600); absent means 10
    /// ([`DEFAULT_STOP_GRACE_SECONDS`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "openapi", schema(maximum = 3600))]
    pub grace_seconds: Option<u32>,
    /// Kill (SIGKILL) at once, without a grace period.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub force: bool,
}

/// Grace period of a stop request that names none, in seconds.
pub const DEFAULT_STOP_GRACE_SECONDS: u32 = 10;
/// Longest grace period a stop request may ask for, in seconds.
pub const MAX_STOP_GRACE_SECONDS: u32 = 3600;

/// The runner's keepalive interval on follow streams when the logs query names none, in
/// seconds.
pub const KEEPALIVE_SECONDS: u64 = 15;
/// The values `keepalive_seconds` may take.
pub const KEEPALIVE_SECONDS_RANGE: std::ops::RangeInclusive<u64> = 1..=300;
/// The longest `wait_ms` a create accepts (10 minutes).
pub const MAX_WAIT_MS: u64 = 600_000;

fn yes() -> bool {
    true
}

fn is_true(value: &bool) -> bool {
    *value
}

/// The query of `GET /api/v1/containers/runs/{id}/logs`.
///
/// Serialized, it names only what differs from the defaults, besides `follow` and
/// `after_seq` (runners refuse parameters they do not know, so an old runner still answers a
/// query that does not use what it lacks).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
#[cfg_attr(
    feature = "openapi",
    derive(utoipa::IntoParams),
    into_params(parameter_in = Query)
)]
pub struct LogsQuery {
    /// Keep the stream open and send new frames until the exit frame.
    #[serde(default)]
    pub follow: bool,
    /// Send only frames with a greater `seq` (resume after the last one seen).
    #[serde(default)]
    pub after_seq: u64,
    /// With `follow`: send a keepalive frame after this many seconds without a frame
    /// (1 to 300; default [`KEEPALIVE_SECONDS`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub keepalive_seconds: Option<u64>,
    /// Include stdout frames (default true).
    #[serde(default = "yes", skip_serializing_if = "is_true")]
    pub stdout: bool,
    /// Include stderr frames (default true).
    #[serde(default = "yes", skip_serializing_if = "is_true")]
    pub stderr: bool,
    /// Start with the last `tail` output frames stored (of the streams asked for); combined
    /// with `after_seq`, whichever starts later wins.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tail: Option<u64>,
}

impl LogsQuery {
    /// Both streams, everything after `after_seq`, followed or not.
    pub fn after(after_seq: u64, follow: bool) -> Self {
        LogsQuery {
            follow,
            after_seq,
            keepalive_seconds: None,
            stdout: true,
            stderr: true,
            tail: None,
        }
    }
}

impl Default for LogsQuery {
    /// Both streams from the start, not followed.
    fn default() -> Self {
        LogsQuery::after(0, false)
    }
}

/// What `wait` in the query of `POST /api/v1/containers/runs` waits for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub enum WaitFor {
    /// The run is running (its container started) or has ended.
    Running,
    /// Every TCP port the run publishes accepts connections, or the run has ended.
    Ready,
}

/// The query of `POST /api/v1/containers/runs`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
#[cfg_attr(
    feature = "openapi",
    derive(utoipa::IntoParams),
    into_params(parameter_in = Query)
)]
pub struct CreateRunQuery {
    /// The caller will follow the run's output: refused before anything is recorded or
    /// started when the token lacks `container:read` (`scope_missing`) or its grant switches
    /// logs off (`logs_disabled`).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub follow: bool,
    /// `running`: answer once the run runs or has ended (at most `wait_ms`), not as soon as
    /// it is recorded; `ready`: once every TCP port it publishes accepts connections, or it
    /// has ended.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub wait: Option<WaitFor>,
    /// With `wait`: the longest wait, 1 to [`MAX_WAIT_MS`] ms (default 60 s); after it the
    /// answer is the run as it is then.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub wait_ms: Option<u64>,
}

/// The query of `GET /api/v1/containers/runs`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
#[cfg_attr(
    feature = "openapi",
    derive(utoipa::IntoParams),
    into_params(parameter_in = Query)
)]
pub struct ListRunsQuery {
    /// Runs per page; 0 or absent means the default, larger than the maximum means the maximum.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub page_size: Option<u32>,
    /// From a previous page's `next_page_token`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub page_token: Option<String>,
    /// Only runs in these states: comma-separated, e.g. `running,queued`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub state: Option<String>,
    /// Only runs with this name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Only runs for this participant.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub participant: Option<String>,
    /// Only runs in this role.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub role: Option<String>,
    /// Answer with an NDJSON stream of [`RunEvent`]s instead of a page: every run of the
    /// caller's, then each change as it happens. Takes no other parameter.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub watch: bool,
}

impl ListRunsQuery {
    /// Runs per page: [`DEFAULT_PAGE_SIZE`] for none or 0, at most [`MAX_PAGE_SIZE`].
    pub fn page_size_or_default(&self) -> u32 {
        match self.page_size {
            None | Some(0) => DEFAULT_PAGE_SIZE,
            Some(n) => n.min(MAX_PAGE_SIZE),
        }
    }

    /// The query of a watch: `watch=true` and nothing else.
    pub fn watch() -> Self {
        ListRunsQuery {
            watch: true,
            ..ListRunsQuery::default()
        }
    }
}

/// Which runs a list query asks for: the runner lists with it, and busd answers from its
/// watched lists with the same.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RunFilter {
    /// Only runs in one of these states; empty means any.
    pub states: Vec<RunState>,
    /// Only runs with this name.
    pub name: Option<String>,
    /// Only runs for this participant.
    pub participant: Option<String>,
    /// Only runs in this role.
    pub role: Option<String>,
}

impl RunFilter {
    /// The filter of `query` (its `state` is comma-separated names, e.g. `running, queued`);
    /// an unknown state is refused with a message that lists the states there are.
    pub fn of(query: &ListRunsQuery) -> Result<RunFilter, String> {
        let states = match query.state.as_deref() {
            None | Some("") => Vec::new(),
            Some(states) => states
                .split(',')
                .map(|name| {
                    RunState::from_name(name.trim()).ok_or_else(|| {
                        format!(
                            "state \"{}\" is not a run state; use {}",
                            name.escape_debug(),
                            RunState::ALL.map(RunState::as_str).join(", ")
                        )
                    })
                })
                .collect::<Result<_, _>>()?,
        };
        Ok(RunFilter {
            states,
            name: query.name.clone(),
            participant: query.participant.clone(),
            role: query.role.clone(),
        })
    }

    /// Whether `run` is one the filter asks for.
    pub fn matches(&self, run: &Run) -> bool {
        (self.states.is_empty() || self.states.contains(&run.state))
            && (self.name.is_none() || run.name == self.name)
            && (self.participant.is_none() || run.participant == self.participant)
            && (self.role.is_none() || run.role == self.role)
    }
}

/// The response header on calls about runs that carries the caller's account's revision
/// after the call: every change to the account's runs is numbered, and a watch that has
/// reported this revision (in [`RunEvent`]s) has reported every change the call made or saw.
pub const REVISION_HEADER: &str = "bus-revision";

/// How often a watch of runs reports [`RunEvent::Alive`] when nothing changes, in seconds.
pub const WATCH_ALIVE_SECONDS: u64 = 2;

/// A run as a watch reports it, with its place in the newest-first order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct WatchedRun {
    /// Creation order: a newer run has a larger one.
    pub serial: u64,
    /// The `page_token` that lists the runs after this one (older ones), as a page ending
    /// with this run would give it as `next_page_token`.
    pub page_token: String,
    /// The run's record now.
    pub run: Run,
}

/// One line of `GET /api/v1/containers/runs?watch=true`.
///
/// The stream opens with one `changed` line per run of the caller's, newest first, each with
/// the revision the listing is current to, then one `listed` line with that revision; after
/// it, each change to the caller's runs in the order the runner numbered them. Each line
/// carries the revision it brings the reader up to: once a reader has applied a line, it has
/// seen every change up to that revision. The stream ends when the token expires (or, for a
/// run token, when its run ends); a reader that wants more watches again.
// One line at a time is decoded and applied: the small variants' unused room costs nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub enum RunEvent {
    /// A run was created or changed (or, before `listed`, exists): its record now, which may
    /// include later changes.
    Changed {
        /// The revision of the change (before `listed`: the listing's).
        revision: u64,
        /// The run.
        #[serde(flatten)]
        run: WatchedRun,
    },
    /// A run was deleted.
    Deleted {
        /// The revision of the deletion.
        revision: u64,
        /// The deleted run's id.
        id: String,
    },
    /// Every run that existed when the watch began has been sent (once, after those runs'
    /// `changed` lines).
    Listed {
        /// The account's revision the listing is current to.
        revision: u64,
    },
    /// Nothing has changed: sent every [`WATCH_ALIVE_SECONDS`] so that a reader can tell a
    /// quiet stream from a broken one.
    Alive {
        /// The revision of the last line before it.
        revision: u64,
    },
}

impl RunEvent {
    /// The revision a reader is up to once it has applied this line.
    pub fn revision(&self) -> u64 {
        match self {
            RunEvent::Listed { revision }
            | RunEvent::Changed { revision, .. }
            | RunEvent::Deleted { revision, .. }
            | RunEvent::Alive { revision } => *revision,
        }
    }
}

/// The query of `GET /api/v1/containers/runs/{id}/attach`: the caller's terminal size.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
#[cfg_attr(
    feature = "openapi",
    derive(utoipa::IntoParams),
    into_params(parameter_in = Query)
)]
pub struct AttachQuery {
    /// Columns, with `rows`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cols: Option<u16>,
    /// Rows, with `cols`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rows: Option<u16>,
}

/// A page of `GET /api/v1/containers/runs`, newest first.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct RunPage {
    /// The runs on this page.
    pub runs: Vec<Run>,
    /// Pass as `page_token` for the next page; absent on the last page.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_page_token: Option<String>,
}

/// Which of a container's output streams a chunk came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub enum Stream {
    /// Standard output.
    Stdout,
    /// Standard error.
    Stderr,
}

/// One line of a run's NDJSON log stream.
///
/// Output frames carry a `seq` that is dense per run (1, 2, 3, ...); a reader that lost its
/// connection asks again with `after_seq` set to the last one it saw. The `exit` frame comes
/// exactly once, after the last output frame, and only once the run has ended.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub enum LogFrame {
    /// A chunk of output.
    Output {
        /// Dense per-run sequence number, from 1.
        seq: u64,
        /// The stream it was written to.
        stream: Stream,
        /// The bytes, base64 (standard alphabet, padded).
        data: String,
        /// When the runner read it.
        #[serde(with = "time::serde::rfc3339")]
        time: OffsetDateTime,
    },
    /// The run has ended.
    Exit {
        /// The final state.
        state: RunState,
        /// The command's exit code, when it exited.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        exit_code: Option<i32>,
        /// Why it ended, when it did not simply exit.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        reason: Option<String>,
        /// The seq of the last output frame (0 when there was none).
        last_seq: u64,
        /// When it ended.
        #[serde(default, with = "time::serde::rfc3339::option")]
        finished_at: Option<OffsetDateTime>,
    },
    /// Sent on an idle follow stream every 15 s (or every `keepalive_seconds`, 1 to 300, when
    /// the request names it); carries nothing. It only proves the connection is alive: a
    /// reader ignores it, and may treat a stream that sent one and then went silent for a few
    /// intervals as broken (and resume it with `after_seq`). Never stored, never counted in
    /// `seq`; a stream that is not followed never carries one.
    Keepalive,
}

impl LogFrame {
    /// An output frame carrying `bytes`.
    pub fn output(seq: u64, stream: Stream, bytes: &[u8], time: OffsetDateTime) -> Self {
        LogFrame::Output {
            seq,
            stream,
            data: STANDARD.encode(bytes),
            time,
        }
    }

    /// Decodes the bytes of an output frame; `None` for an exit or keepalive frame.
    pub fn output_bytes(&self) -> Option<Result<Vec<u8>, base64::DecodeError>> {
        match self {
            LogFrame::Output { data, .. } => Some(STANDARD.decode(data)),
            LogFrame::Exit { .. } | LogFrame::Keepalive => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn run_events_are_tagged_lines() {
        let alive: RunEvent = serde_json::from_str(r#"{"type":"alive","revision":7}"#).unwrap();
        assert_eq!(alive, RunEvent::Alive { revision: 7 });
        let deleted = RunEvent::Deleted {
            revision: 9,
            id: "run_x".into(),
        };
        let text = serde_json::to_string(&deleted).unwrap();
        assert_eq!(text, r#"{"type":"deleted","revision":9,"id":"run_x"}"#);
        assert_eq!(serde_json::from_str::<RunEvent>(&text).unwrap(), deleted);
        assert_eq!(deleted.revision(), 9);
    }

    #[test]
    fn list_states_are_names_and_an_unknown_one_lists_the_valid_ones() {
        let query = |state: &str| ListRunsQuery {
            state: Some(state.into()),
            ..ListRunsQuery::default()
        };
        assert_eq!(
            RunFilter::of(&query("running, timed_out")).unwrap().states,
            [RunState::Running, RunState::TimedOut]
        );
        assert!(RunFilter::of(&query("")).unwrap().states.is_empty());
        for bad in ["sleeping", "running,", "RUNNING"] {
            let message = RunFilter::of(&query(bad)).unwrap_err();
            assert!(
                message.contains("use queued, starting, running, exited"),
                "{bad}: {message}"
            );
        }
    }

    #[test]
    fn page_sizes_default_and_are_capped() {
        let size = |page_size| {
            ListRunsQuery {
                page_size,
                ..ListRunsQuery::default()
            }
            .page_size_or_default()
        };
        assert_eq!(
            [size(None), size(Some(0)), size(Some(7)), size(Some(9999))],
            [DEFAULT_PAGE_SIZE, DEFAULT_PAGE_SIZE, 7, MAX_PAGE_SIZE]
        );
    }

    #[test]
    fn a_watch_query_is_watch_alone() {
        let query: ListRunsQuery = serde_urlencoded::from_str("watch=true").unwrap();
        assert_eq!(query, ListRunsQuery::watch());
        assert_eq!(
            serde_urlencoded::to_string(ListRunsQuery::watch()).unwrap(),
            "watch=true"
        );
    }

    #[test]
    fn create_run_refuses_unknown_fields() {
        let err =
            serde_json::from_str::<CreateRun>(r#"{"argv":["true"],"imgae":"x"}"#).unwrap_err();
        assert!(err.to_string().contains("unknown field `imgae`"), "{err}");
    }

    #[test]
    fn create_run_ignores_owner_and_account_id() {
        let req: CreateRun = serde_json::from_str(
            r#"{"argv":["true"],"owner":"bob","account_id":{"id":"bob"},"image":"x"}"#,
        )
        .unwrap();
        assert_eq!(
            req,
            CreateRun {
                argv: vec!["true".into()],
                image: Some("x".into()),
                ..CreateRun::default()
            }
        );
        let text = serde_json::to_string(&req).unwrap();
        assert!(
            !text.contains("owner") && !text.contains("account_id"),
            "{text}"
        );
    }

    #[test]
    fn create_run_takes_identity_pull_and_credentials() {
        let req: CreateRun = serde_json::from_str(
            r#"{"participant":"ann","role":"agent","pull":"always",
                "credentials":{"username":"u","password":"secret-pw"}}"#,
        )
        .unwrap();
        assert_eq!(
            (req.participant.as_deref(), req.role.as_deref(), req.pull),
            (Some("ann"), Some("agent"), Some(PullPolicy::Always))
        );
        assert!(!format!("{req:?}").contains("secret-pw"));
        let back: CreateRun = serde_json::from_str(&serde_json::to_string(&req).unwrap()).unwrap();
        assert_eq!(back, req);
        let err = serde_json::from_str::<CreateRun>(r#"{"pull":"sometimes"}"#).unwrap_err();
        assert!(
            err.to_string().contains("unknown variant `sometimes`"),
            "{err}"
        );
    }

    #[test]
    fn logs_queries_round_trip() {
        crate::assert_round_trips([
            LogsQuery::default(),
            LogsQuery::after(4, true),
            LogsQuery {
                keepalive_seconds: Some(2),
                stdout: false,
                tail: Some(0),
                ..LogsQuery::after(9, true)
            },
            LogsQuery {
                stderr: false,
                tail: Some(10),
                ..LogsQuery::default()
            },
        ]);
        assert_eq!(
            crate::query_string(&LogsQuery::after(4, true)),
            "follow=true&after_seq=4"
        );
    }

    #[test]
    fn create_run_queries_round_trip() {
        crate::assert_round_trips([
            CreateRunQuery::default(),
            CreateRunQuery {
                follow: true,
                wait: Some(WaitFor::Running),
                wait_ms: Some(250),
            },
        ]);
        assert_eq!(crate::query_string(&CreateRunQuery::default()), "");
    }

    #[test]
    fn list_runs_queries_round_trip() {
        crate::assert_round_trips([
            ListRunsQuery::default(),
            ListRunsQuery {
                page_size: Some(5),
                page_token: Some("cnVucy52MS40Mg".to_owned()),
                ..ListRunsQuery::default()
            },
            ListRunsQuery {
                state: Some("running,queued".to_owned()),
                name: Some("web 1".to_owned()),
                participant: Some("ann@example.com".to_owned()),
                role: Some("agent".to_owned()),
                ..ListRunsQuery::default()
            },
        ]);
    }

    #[test]
    fn attach_queries_round_trip() {
        crate::assert_round_trips([
            AttachQuery::default(),
            AttachQuery {
                cols: Some(80),
                rows: Some(24),
            },
        ]);
    }

    #[test]
    fn stop_bodies_round_trip() {
        for body in [
            StopRun::default(),
            StopRun {
                grace_seconds: Some(3),
                force: true,
            },
        ] {
            let text = serde_json::to_string(&body).unwrap();
            assert_eq!(serde_json::from_str::<StopRun>(&text).unwrap(), body);
        }
    }

    #[test]
    fn log_frames_round_trip() {
        let now = OffsetDateTime::from_unix_timestamp(1_700_000_000).unwrap();
        let frame = LogFrame::output(7, Stream::Stderr, b"err\n", now);
        let line = serde_json::to_string(&frame).unwrap();
        assert_eq!(
            line,
            r#"{"type":"output","seq":7,"stream":"stderr","data":"ZXJyCg==","time":"2023-11-14T22:13:20Z"}"#
        );
        let back: LogFrame = serde_json::from_str(&line).unwrap();
        assert_eq!(back.output_bytes().unwrap().unwrap(), b"err\n");

        let exit = LogFrame::Exit {
            state: RunState::Exited,
            exit_code: Some(3),
            reason: None,
            last_seq: 7,
            finished_at: Some(now),
        };
        let line = serde_json::to_string(&exit).unwrap();
        assert_eq!(serde_json::from_str::<LogFrame>(&line).unwrap(), exit);

        let keepalive = serde_json::to_string(&LogFrame::Keepalive).unwrap();
        assert_eq!(keepalive, r#"{"type":"keepalive"}"#);
        assert_eq!(
            serde_json::from_str::<LogFrame>(&keepalive).unwrap(),
            LogFrame::Keepalive
        );
        assert!(LogFrame::Keepalive.output_bytes().is_none());
    }
}

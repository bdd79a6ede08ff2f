//! The deployment's configuration: run profiles, plans and accounts, from built-in defaults
//! and an optional TOML file (`bus-runner serve --config FILE`).
//!
//! ```toml
//! default_profile = "codex"
//! ports_profile = "service"        # what a run that publishes ports gets when it names none
//!
//! [profiles.codex]
//! image = "localhost/busybox:latest"
//! network = "none"                 # or "bridge": runs may publish ports
//! timeout_seconds = 600
//! memory_mb = 512                  # the container's memory limit; 0: none (default 512)
//! max_output_mb = 1024             # output stored per run; reaching it kills the run; 0: none
//! env = { LANG = "C.UTF-8" }
//!
//! [profiles.service]               # built in like this: the codex profile with
//! network = "bridge"               # network "bridge", so `-p` works by default
//!
//! [profiles.agent]                 # built in like this
//! image = "localhost/busybox:latest"
//! timeout_seconds = 600
//! storage = { mount_path = "/data" }   # the account's storage; optional subpath = "dir"
//! env = { AGENT_HOME = "/data" }
//!
//! [profiles.agent]                 # built in as above, plus:
//! network = "runner"               # slirp4netns with the host's loopback at 10.0.2.2
//! token_scopes = ["container:read"]  # runs get BUS_AI_API_URL and a run token, BUS_AI_TOKEN
//! proxies = ["openai"]             # egress proxies its runs get (none built in)
//!
//! [proxies.openai]                 # see `proxies::ProxyConfig`
//! upstream = "http://127.0.0.1:9000/v1"
//! credential_file = "/etc/bus/openai-key"   # read at start, never logged
//! base_url_env = "OPENAI_BASE_URL"
//! key_env = "OPENAI_API_KEY"
//!
//! [plans.team]
//! max_concurrent_runs = 4          # absent: no limit
//! run_seconds_per_period = 36000   # absent: no limit
//! period = "30d"                   # s, m, h or d; default 30d
//!
//! [[accounts]]
//! id = "alice"
//! api_key_sha256 = "<64 hex digits>"   # `bus-runner hash-key < key-file`
//! plan = "team"
//! billing = "active"                   # or "required": no run starts (402)
//! resources = ["container:read", "container:run", "container:delete", "billing:read"]
//! images = ["localhost/busybox", "docker.io/library/*"]   # optional grant
//! logs = false                                            # optional grant: no log streaming
//!
//! [images]                        # optional; see `ImagesConfig`
//! public = ["localhost/busybox"]   # every account may see and run these (added to the
//!                                  # profiles' images, which are always public)
//! max_build_context_mb = 256       # largest build context upload
//! max_load_archive_mb = 4096       # largest image archive upload
//! ```
//!
//! Profiles and plans in the file are added to the built-in ones; one with a built-in's name
//! replaces it. The built-in plan `local` has no limits; it is the plan of every account the
//! file does not list, such as those `bus-runner token --account ID` mints for (with billing
//! `active`), so a runner without a config keeps working for local use. A `[plans.local]`
//! table limits those accounts too.
//!
//! Periods are aligned to the Unix epoch: a `30d` period starts at a multiple of 30 days
//! since 1970-01-01T00:00:00Z.

pub mod checks;
pub mod proxies;

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use bus_api::StorageMount;
use bus_api::auth::{Grant, Scope};
use bus_api::billing::BillingState;
use bus_api::runs::MAX_TIMEOUT_SECONDS;
use serde::Deserialize;

/// The profile a run gets when it names none.
pub const DEFAULT_PROFILE: &str = "codex";
/// The built-in profile with a network, which runs that publish ports get by default.
pub const SERVICE_PROFILE: &str = "service";
/// The built-in profile that mounts the account's storage at `/data`.
pub const AGENT_PROFILE: &str = "agent";
/// A profile's memory limit when it names none, in MiB.
pub const DEFAULT_MEMORY_MB: u32 = 512;
/// The smallest memory limit the engines accept, in MiB.
pub const MIN_MEMORY_MB: u32 = 6;
/// The largest memory limit a profile may set, in MiB (1 TiB).
pub const MAX_MEMORY_MB: u32 = 1024 * 1024;
/// How much output a profile's runs may store when it names no limit, in MiB: a command that
/// writes without end (`yes`) is killed before it fills the disk.
pub const DEFAULT_MAX_OUTPUT_MB: u32 = 1024;
/// The largest output limit a profile may set, in MiB (1 TiB).
pub const MAX_MAX_OUTPUT_MB: u32 = 1024 * 1024;
/// The plan of accounts the config does not list (built in: no limits).
pub const LOCAL_PLAN: &str = "local";
/// A plan's period when it names none.
pub const DEFAULT_PERIOD: Duration = Duration::from_secs(30 * 86400);
/// The longest period a plan may have.
pub const MAX_PERIOD: Duration = Duration::from_secs(366 * 86400);

/// A plan: how much an account on it may run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    /// Most runs live at once; `None` means no limit.
    pub max_concurrent_runs: Option<u32>,
    /// Most run-seconds per period; `None` means no limit.
    pub run_seconds_per_period: Option<u64>,
    /// The period's length (whole seconds, at least one).
    pub period: Duration,
}

impl Plan {
    /// The built-in `local` plan: no limits, 30-day periods.
    pub fn unlimited() -> Plan {
        Plan {
            max_concurrent_runs: None,
            run_seconds_per_period: None,
            period: DEFAULT_PERIOD,
        }
    }
}

/// An account that may exchange its API key for tokens.
#[derive(Clone, PartialEq, Eq)]
pub struct Account {
    /// The account id: every token it gets has this `sub`.
    pub id: String,
    /// SHA-256 of its API key.
    pub api_key_sha256: [u8; 32],
    /// Its plan's name (a key of [`Config::plans`]).
    pub plan: String,
    /// Whether billing is set up.
    pub billing: BillingState,
    /// The scopes its tokens may carry.
    pub resources: Vec<Scope>,
    /// The grant its tokens carry, when the config narrows images or logs.
    pub grant: Option<Grant>,
}

impl std::fmt::Debug for Account {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Account")
            .field("id", &self.id)
            .field("plan", &self.plan)
            .field("billing", &self.billing)
            .field("resources", &self.resources)
            .field("grant", &self.grant)
            .finish_non_exhaustive()
    }
}

/// How a run's container reaches the network.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Network {
    /// No network at all, only loopback; runs cannot publish ports.
    #[default]
    None,
    /// The engine's default bridge network: outbound access, and runs may publish ports.
    Bridge,
    /// slirp4netns with the host's loopback reachable at [`RUNNER_HOST`]: outbound access,
    /// and the runner's API on 127.0.0.1 reachable from inside (the network of runs that
    /// get a run token).
    Runner,
}

/// The address the host's loopback has inside a container on [`Network::Runner`].
pub const RUNNER_HOST: &str = "10.0.2.2";

impl Network {
    /// The engine's `NetworkMode` value, which is also the name in the config.
    pub fn mode(self) -> &'static str {
        match self {
            Network::None => "none",
            Network::Bridge => "bridge",
            Network::Runner => "slirp4netns:allow_host_loopback=true",
        }
    }
}

/// A named recipe for runs: image, network, timeout, environment.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Profile {
    /// The image runs use unless the request names another.
    pub image: String,
    /// How the container reaches the network.
    #[serde(default)]
    pub network: Network,
    /// Seconds before a run is killed, unless the request asks for fewer or more.
    pub timeout_seconds: u32,
    /// The container's memory limit in MiB (swap included, so it is a hard limit); 0 means
    /// none. Default [`DEFAULT_MEMORY_MB`].
    #[serde(default = "default_memory_mb")]
    pub memory_mb: u32,
    /// How much output (stdout and stderr together) the runner stores per run, in MiB; a run
    /// whose output reaches it is killed and ends `failed`. 0 means no limit. Default
    /// [`DEFAULT_MAX_OUTPUT_MB`].
    #[serde(default = "default_max_output_mb")]
    pub max_output_mb: u32,
    /// Mount the account's storage here unless the request names its own mount.
    #[serde(default)]
    pub storage: Option<StorageMount>,
    /// Environment every run of the profile gets; a request's env wins on conflicts.
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    /// When set, each run gets `BUS_AI_API_URL` and `BUS_AI_TOKEN`, a token minted for that
    /// run only with these scopes (those the creating token also holds).
    #[serde(default)]
    pub token_scopes: Option<Vec<String>>,
    /// The egress proxies (`[proxies.NAME]`) this profile's runs get; needs `token_scopes`.
    #[serde(default)]
    pub proxies: Vec<String>,
}

fn default_memory_mb() -> u32 {
    DEFAULT_MEMORY_MB
}

fn default_max_output_mb() -> u32 {
    DEFAULT_MAX_OUTPUT_MB
}

impl Profile {
    /// The profile's timeout.
    pub fn timeout(&self) -> Duration {
        Duration::from_secs(self.timeout_seconds.into())
    }

    /// The scopes of the run token its runs get, if they get one (names checked at load).
    pub fn run_token_scopes(&self) -> Option<Vec<Scope>> {
        self.token_scopes
            .as_ref()
            .map(|names| names.iter().filter_map(|n| Scope::parse(n)).collect())
    }

    /// The memory limit in MiB, if there is one.
    pub fn memory_limit_mb(&self) -> Option<u32> {
        (self.memory_mb > 0).then_some(self.memory_mb)
    }

    /// The limit on a run's stored output in MiB, if there is one.
    pub fn output_limit_mb(&self) -> Option<u32> {
        (self.max_output_mb > 0).then_some(self.max_output_mb)
    }
}

/// The runner's configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    /// Profiles by name.
    pub profiles: BTreeMap<String, Profile>,
    /// The profile a run gets when it names none.
    pub default_profile: String,
    /// The profile a run that publishes ports gets when it names none (its network is not
    /// `none`).
    pub ports_profile: String,
    /// Plans by name (always holds [`LOCAL_PLAN`]).
    pub plans: BTreeMap<String, Plan>,
    /// Accounts that may exchange API keys for tokens; empty without a config file.
    pub accounts: Vec<Account>,
    /// Public images and upload limits.
    pub images: ImagesConfig,
    /// Egress proxies by name, with their credentials (`[proxies.NAME]`).
    pub proxies: BTreeMap<String, proxies::Proxy>,
}

/// A config file that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file cannot be read.
    #[error("cannot read the config file {path}: {source}")]
    Read {
        /// The file.
        path: String,
        /// Why.
        source: std::io::Error,
    },
    /// The file is not valid TOML or has unknown keys.
    #[error("the config file {path} is not valid: {message}")]
    Parse {
        /// The file.
        path: String,
        /// The parser's message.
        message: String,
    },
    /// The file parses but a value is out of bounds.
    #[error("the config file {path} is not valid: {message}")]
    Invalid {
        /// The file.
        path: String,
        /// What is wrong and where.
        message: String,
    },
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    #[serde(default)]
    default_profile: Option<String>,
    #[serde(default)]
    ports_profile: Option<String>,
    #[serde(default)]
    profiles: BTreeMap<String, Profile>,
    #[serde(default)]
    plans: BTreeMap<String, PlanFile>,
    #[serde(default)]
    accounts: Vec<AccountFile>,
    #[serde(default)]
    images: Option<ImagesConfig>,
    #[serde(default)]
    proxies: BTreeMap<String, proxies::ProxyConfig>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PlanFile {
    #[serde(default)]
    max_concurrent_runs: Option<u32>,
    #[serde(default)]
    run_seconds_per_period: Option<u64>,
    #[serde(default)]
    period: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct AccountFile {
    id: String,
    api_key_sha256: String,
    plan: String,
    #[serde(default)]
    billing: BillingState,
    resources: Resources,
    #[serde(default)]
    images: Option<Vec<String>>,
    #[serde(default)]
    logs: Option<bool>,
}

/// Resources as a list (`["container:read", ...]`) or one space-separated string.
#[derive(Deserialize)]
#[serde(untagged)]
enum Resources {
    List(Vec<String>),
    Text(String),
}

impl Config {
    /// The configuration when no file is given: the `codex` profile on the local busybox
    /// image; `service`, the same on the `bridge` network (the profile of runs that publish
    /// ports); and `agent`, which also mounts the account's storage at `/data` (and says so
    /// in `AGENT_HOME`).
    pub fn builtin() -> Config {
        let codex = Profile {
            image: "localhost/busybox:latest".to_owned(),
            network: Network::None,
            timeout_seconds: 600,
            memory_mb: DEFAULT_MEMORY_MB,
            max_output_mb: DEFAULT_MAX_OUTPUT_MB,
            storage: None,
            env: BTreeMap::new(),
            token_scopes: None,
            proxies: Vec::new(),
        };
        let agent = Profile {
            storage: Some(StorageMount {
                mount_path: "/data".to_owned(),
                subpath: None,
            }),
            env: BTreeMap::from([("AGENT_HOME".to_owned(), "/data".to_owned())]),
            network: Network::Runner,
            token_scopes: Some(vec![Scope::Read.as_str().to_owned()]),
            ..codex.clone()
        };
        let service = Profile {
            network: Network::Bridge,
            ..codex.clone()
        };
        Config {
            profiles: BTreeMap::from([
                (DEFAULT_PROFILE.to_owned(), codex),
                (SERVICE_PROFILE.to_owned(), service),
                (AGENT_PROFILE.to_owned(), agent),
            ]),
            default_profile: DEFAULT_PROFILE.to_owned(),
            ports_profile: SERVICE_PROFILE.to_owned(),
            plans: BTreeMap::from([(LOCAL_PLAN.to_owned(), Plan::unlimited())]),
            accounts: Vec::new(),
            images: ImagesConfig::default(),
            proxies: BTreeMap::new(),
        }
    }

    /// Reads a TOML config file on top of the built-in profiles.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let shown = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: shown.clone(),
            source,
        })?;
        Config::parse(&text).map_err(|e| match e {
            ConfigError::Parse { message, .. } => ConfigError::Parse {
                path: shown,
                message,
            },
            ConfigError::Invalid { message, .. } => ConfigError::Invalid {
                path: shown,
                message,
            },
            other => other,
        })
    }

    /// Parses config text on top of the built-in profiles.
    pub fn parse(text: &str) -> Result<Config, ConfigError> {
        let file: File = toml::from_str(text).map_err(|e| ConfigError::Parse {
            path: String::new(),
            message: one_line(e.message()),
        })?;
        let invalid = |message: String| ConfigError::Invalid {
            path: String::new(),
            message: one_line(&message),
        };
        let mut config = Config::builtin();
        config.profiles.extend(file.profiles);
        if let Some(ports) = file.ports_profile {
            config.ports_profile = ports;
        }
        if let Some(default) = file.default_profile {
            config.default_profile = default;
        }
        for (name, plan) in file.plans {
            let plan = plan_from_file(&name, plan).map_err(invalid)?;
            config.plans.insert(name, plan);
        }
        for (i, account) in file.accounts.into_iter().enumerate() {
            let account = account_from_file(i, account).map_err(invalid)?;
            config.accounts.push(account);
        }
        if let Some(images) = file.images {
            config.images = images;
        }
        for (name, proxy) in file.proxies {
            let proxy = proxies::Proxy::from_config(&name, proxy).map_err(invalid)?;
            config.proxies.insert(name, proxy);
        }
        config.check().map_err(invalid)?;
        Ok(config)
    }

    fn check(&self) -> Result<(), String> {
        if !self.profiles.contains_key(&self.default_profile) {
            return Err(format!(
                "default_profile \"{}\" is not defined; defined profiles: {}",
                self.default_profile,
                self.profile_names().join(", ")
            ));
        }
        match self.profiles.get(&self.ports_profile) {
            None => {
                return Err(format!(
                    "ports_profile \"{}\" is not defined; defined profiles: {}",
                    self.ports_profile,
                    self.profile_names().join(", ")
                ));
            }
            Some(p) if p.network == Network::None => {
                return Err(format!(
                    "ports_profile \"{}\" has network \"none\", so its runs cannot publish \
                     ports; name a profile with network = \"bridge\"",
                    self.ports_profile
                ));
            }
            Some(_) => {}
        }
        for (name, p) in &self.profiles {
            if name.is_empty() || name.chars().any(|c| c.is_whitespace() || c.is_control()) {
                return Err(format!(
                    "profile name \"{name}\" must be non-empty without spaces"
                ));
            }
            if p.image.trim().is_empty() {
                return Err(format!("profiles.{name}.image must not be empty"));
            }
            // What a profile holds must pass the checks a request naming it would.
            checks::check_image(&p.image).map_err(|e| format!("profiles.{name}.{e}"))?;
            for (key, value) in &p.env {
                checks::check_env(key, value).map_err(|e| format!("profiles.{name}.{e}"))?;
            }
            if p.timeout_seconds == 0 || p.timeout_seconds > MAX_TIMEOUT_SECONDS {
                return Err(format!(
                    "profiles.{name}.timeout_seconds must be between 1 and {MAX_TIMEOUT_SECONDS}"
                ));
            }
            if p.memory_mb != 0 && !(MIN_MEMORY_MB..=MAX_MEMORY_MB).contains(&p.memory_mb) {
                return Err(format!(
                    "profiles.{name}.memory_mb must be 0 (no limit) or between {MIN_MEMORY_MB} \
                     and {MAX_MEMORY_MB}"
                ));
            }
            if p.max_output_mb > MAX_MAX_OUTPUT_MB {
                return Err(format!(
                    "profiles.{name}.max_output_mb must be 0 (no limit) or at most \
                     {MAX_MAX_OUTPUT_MB}"
                ));
            }
            if let Some(storage) = &p.storage {
                checks::check_storage(storage)
                    .map_err(|e| format!("profiles.{name}.storage: {e}"))?;
            }
            proxies::check_profile(name, p, &self.proxies)?;
        }
        for name in self.plans.keys() {
            if name.is_empty() || name.chars().any(|c| c.is_whitespace() || c.is_control()) {
                return Err(format!(
                    "plan name \"{name}\" must be non-empty without spaces"
                ));
            }
        }
        for (i, a) in self.accounts.iter().enumerate() {
            if !self.plans.contains_key(&a.plan) {
                return Err(format!(
                    "accounts[{i}] (\"{}\"): plan \"{}\" is not defined; defined plans: {}",
                    a.id,
                    a.plan,
                    self.plans.keys().cloned().collect::<Vec<_>>().join(", ")
                ));
            }
            if let Some(other) = self.accounts[..i].iter().find(|b| b.id == a.id) {
                return Err(format!(
                    "accounts[{i}]: the id \"{}\" is used twice",
                    other.id
                ));
            }
            if let Some(other) = self.accounts[..i]
                .iter()
                .find(|b| b.api_key_sha256 == a.api_key_sha256)
            {
                return Err(format!(
                    "accounts[{i}] (\"{}\"): api_key_sha256 is also the key of \"{}\"; give each account its own key",
                    a.id, other.id
                ));
            }
        }
        Ok(())
    }

    /// The account `id` lists, if the config has it.
    pub fn account(&self, id: &str) -> Option<&Account> {
        self.accounts.iter().find(|a| a.id == id)
    }

    /// The plan called `name`.
    pub fn plan(&self, name: &str) -> Option<&Plan> {
        self.plans.get(name)
    }

    /// The profile called `name`.
    pub fn profile(&self, name: &str) -> Option<&Profile> {
        self.profiles.get(name)
    }

    /// The names of all profiles, sorted.
    pub fn profile_names(&self) -> Vec<String> {
        self.profiles.keys().cloned().collect()
    }
}

impl Default for Config {
    fn default() -> Self {
        Config::builtin()
    }
}

/// `text` with control characters (a newline in a quoted value, say) escaped, so an error
/// stays one line.
fn one_line(text: &str) -> String {
    text.chars()
        .map(|c| {
            if c.is_control() {
                c.escape_default().to_string()
            } else {
                c.to_string()
            }
        })
        .collect()
}

fn plan_from_file(name: &str, file: PlanFile) -> Result<Plan, String> {
    let period = match &file.period {
        None => DEFAULT_PERIOD,
        Some(text) => parse_period(text).map_err(|e| format!("plans.{name}.period: {e}"))?,
    };
    Ok(Plan {
        max_concurrent_runs: file.max_concurrent_runs,
        run_seconds_per_period: file.run_seconds_per_period,
        period,
    })
}

/// Parses a period such as `3600s`, `90m`, `24h` or `30d` (at most 366 days).
pub fn parse_period(text: &str) -> Result<Duration, String> {
    let usage = "write it as a positive number with a unit, like 3600s, 90m, 24h or 30d";
    let text = text.trim();
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (digits, unit) = text.split_at(split);
    let n: u64 = digits
        .parse()
        .ok()
        .filter(|n| *n > 0)
        .ok_or_else(|| format!("\"{text}\" is not a period; {usage}"))?;
    let unit_secs: u64 = match unit {
        "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86400,
        _ => return Err(format!("\"{text}\" is not a period; {usage}")),
    };
    let period = n
        .checked_mul(unit_secs)
        .map(Duration::from_secs)
        .unwrap_or(Duration::MAX);
    if period > MAX_PERIOD {
        return Err(format!(
            "\"{text}\" is longer than the 366 days a period may last"
        ));
    }
    Ok(period)
}

fn account_from_file(i: usize, file: AccountFile) -> Result<Account, String> {
    let id = file.id.trim().to_owned();
    let at = format!("accounts[{i}] (\"{id}\")");
    if id.is_empty() || id.len() > 128 || id.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(format!(
            "accounts[{i}].id must be 1 to 128 characters without spaces"
        ));
    }
    let api_key_sha256 = parse_sha256(&file.api_key_sha256).ok_or_else(|| {
        format!(
            "{at}: api_key_sha256 must be 64 hex digits, the SHA-256 of the API key; \
             compute it with `bus-runner hash-key < KEY_FILE`"
        )
    })?;
    if file.billing == BillingState::Unknown {
        return Err(format!("{at}: billing must be \"active\" or \"required\""));
    }
    let text = match file.resources {
        Resources::List(list) => list.join(" "),
        Resources::Text(text) => text,
    };
    let resources =
        crate::auth::parse_scopes(&text).map_err(|e| format!("{at}: resources: {e}"))?;
    if let Some(images) = &file.images {
        for image in images {
            let bad_star = image.find('*').is_some_and(|p| p + 1 != image.len());
            if image.trim().is_empty()
                || image.chars().any(|c| c.is_whitespace() || c.is_control())
                || bad_star
            {
                return Err(format!(
                    "{at}: images entry \"{image}\" must be an image name, a repository, or a \
                     prefix ending in `*`, without spaces"
                ));
            }
        }
    }
    let grant = (file.images.is_some() || file.logs.is_some()).then_some(Grant {
        images: file.images,
        logs: file.logs,
    });
    Ok(Account {
        id,
        api_key_sha256,
        plan: file.plan,
        billing: file.billing,
        resources,
        grant,
    })
}

/// Parses 64 hex digits (either case) into 32 bytes.
pub fn parse_sha256(text: &str) -> Option<[u8; 32]> {
    let text = text.trim().as_bytes();
    if text.len() != 64 {
        return None;
    }
    let digit = |c: u8| (c as char).to_digit(16).map(|d| d as u8);
    let mut out = [0u8; 32];
    for (i, pair) in text.chunks(2).enumerate() {
        out[i] = digit(pair[0])? << 4 | digit(pair[1])?;
    }
    Some(out)
}

/// A build context's size limit when the config names none, in MiB.
pub const DEFAULT_MAX_BUILD_CONTEXT_MB: u64 = 256;
/// An image archive's size limit when the config names none, in MiB.
pub const DEFAULT_MAX_LOAD_ARCHIVE_MB: u64 = 4096;
/// `[images]` in the runner's config.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ImagesConfig {
    /// Image names (or repositories, or prefixes ending in `*`) every account may see and
    /// run, besides every profile's image.
    #[serde(default)]
    pub public: Vec<String>,
    /// The largest build context accepted, in MiB.
    #[serde(default = "default_context_mb")]
    pub max_build_context_mb: u64,
    /// The largest image archive accepted, in MiB.
    #[serde(default = "default_archive_mb")]
    pub max_load_archive_mb: u64,
}

fn default_context_mb() -> u64 {
    DEFAULT_MAX_BUILD_CONTEXT_MB
}

fn default_archive_mb() -> u64 {
    DEFAULT_MAX_LOAD_ARCHIVE_MB
}

impl Default for ImagesConfig {
    fn default() -> Self {
        ImagesConfig {
            public: Vec::new(),
            max_build_context_mb: DEFAULT_MAX_BUILD_CONTEXT_MB,
            max_load_archive_mb: DEFAULT_MAX_LOAD_ARCHIVE_MB,
        }
    }
}

/// The account whose API key is `key`: its SHA-256 is compared in constant time against
/// every account's hash (all of them, so the time says nothing about which matched).
pub fn account_for_api_key<'c>(config: &'c Config, key: &str) -> Option<&'c Account> {
    let digest = crate::util::sha256(key.as_bytes());
    let mut found = None;
    for account in &config.accounts {
        if bool::from(subtle::ConstantTimeEq::ct_eq(
            &account.api_key_sha256[..],
            &digest[..],
        )) {
            found = Some(account);
        }
    }
    found
}

#[cfg(test)]
mod tests {
    use super::*;

    const HASH_A: &str = "2bb80d537b1da3e38bd30361aa855686bde0eacd7162fef6a25fe97bf527a25b";
    const HASH_B: &str = "0000000000000000000000000000000000000000000000000000000000000001";

    #[test]
    fn api_keys_match_by_hash() {
        let hash = crate::util::to_hex(&crate::util::sha256(b"k-alice"));
        let config = Config::parse(&format!(
            "[[accounts]]\nid = \"alice\"\napi_key_sha256 = \"{}\"\nplan = \"local\"\nresources = \"container:read\"\n",
            hash.to_uppercase()
        ))
        .unwrap();
        assert_eq!(
            account_for_api_key(&config, "k-alice").map(|a| a.id.as_str()),
            Some("alice")
        );
        assert!(account_for_api_key(&config, "k-alic").is_none());
        assert!(account_for_api_key(&config, "").is_none());
        assert!(account_for_api_key(&Config::builtin(), "k-alice").is_none());
        assert_eq!(
            crate::util::to_hex(&crate::util::sha256(b"abc")),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }

    #[test]
    fn accounts_and_plans() {
        let c = Config::parse(&format!(
            r#"
[plans.team]
max_concurrent_runs = 2
run_seconds_per_period = 600
period = "7d"

[plans.free]

[[accounts]]
id = "alice"
api_key_sha256 = "{HASH_A}"
plan = "team"
resources = ["container:read", "container:run", "billing:read"]
images = ["localhost/busybox", "docker.io/library/*"]
logs = false

[[accounts]]
id = "bob"
api_key_sha256 = "{HASH_B}"
plan = "free"
billing = "required"
resources = "container:read"
"#
        ))
        .unwrap();
        let names: Vec<_> = c.plans.keys().map(String::as_str).collect();
        assert_eq!(names, ["free", "local", "team"]);
        assert_eq!(
            c.plan("team").unwrap(),
            &Plan {
                max_concurrent_runs: Some(2),
                run_seconds_per_period: Some(600),
                period: Duration::from_secs(7 * 86400),
            }
        );
        assert_eq!(c.plan("free").unwrap(), &Plan::unlimited());
        let alice = c.account("alice").unwrap();
        assert_eq!(alice.billing, BillingState::Active);
        assert_eq!(
            alice.resources,
            [Scope::Read, Scope::Run, Scope::BillingRead]
        );
        assert_eq!(alice.api_key_sha256, parse_sha256(HASH_A).unwrap());
        let grant = alice.grant.as_ref().unwrap();
        assert_eq!(grant.logs, Some(false));
        assert!(grant.allows_image("localhost/busybox:latest"));
        let bob = c.account("bob").unwrap();
        assert_eq!(bob.billing, BillingState::Required);
        assert_eq!(bob.grant, None);
        assert!(
            !format!("{bob:?}").contains("0000"),
            "Debug leaves the hash out"
        );
        assert!(c.account("carol").is_none());
        assert!(Config::builtin().accounts.is_empty());
    }

    #[test]
    fn account_errors_name_the_field() {
        let account = |extra: &str| {
            format!(
                "[[accounts]]\nid = \"a\"\napi_key_sha256 = \"{HASH_A}\"\nplan = \"local\"\nresources = \"container:read\"\n{extra}"
            )
        };
        let cases = [
            ("billing = \"maybe\"".to_owned(), "billing must be"),
            ("images = [\"a*b\"]".to_owned(), "prefix ending in `*`"),
            ("images = [\"\"]".to_owned(), "images entry"),
            ("color = 1".to_owned(), "color"),
            ("[plans.x]\nperiod = \"1w\"".to_owned(), "plans.x.period"),
            (
                format!(
                    "[[accounts]]\nid = \"a\"\napi_key_sha256 = \"{HASH_B}\"\nplan = \"local\"\nresources = \"container:read\""
                ),
                "used twice",
            ),
            (
                format!(
                    "[[accounts]]\nid = \"b\"\napi_key_sha256 = \"{HASH_A}\"\nplan = \"local\"\nresources = \"container:read\""
                ),
                "also the key of",
            ),
        ];
        for (extra, needle) in cases {
            let err = Config::parse(&account(&extra)).unwrap_err().to_string();
            assert!(err.contains(needle), "{extra}: {err}");
        }
        for (text, needle) in [
            (
                account("").replace("plan = \"local\"", "plan = \"gold\""),
                "plan \"gold\" is not defined",
            ),
            (account("").replace(HASH_A, "abc"), "bus-runner hash-key"),
            (
                account("").replace("container:read", "container:fly"),
                "unknown resource \"container:fly\"",
            ),
            (
                account("").replace("id = \"a\"", "id = \"a b\""),
                "accounts[0].id",
            ),
        ] {
            let err = Config::parse(&text).unwrap_err().to_string();
            assert!(err.contains(needle), "{text}: {err}");
        }
    }

    #[test]
    fn periods_parse() {
        assert_eq!(
            parse_period("30d").unwrap(),
            Duration::from_secs(30 * 86400)
        );
        assert_eq!(parse_period("90m").unwrap(), Duration::from_secs(5400));
        for bad in [
            "0d",
            "d",
            "30",
            "1w",
            "-1d",
            "400d",
            "99999999999999999999s",
        ] {
            assert!(parse_period(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn profile_limits_network_and_storage() {
        let c = Config::parse(
            "[profiles.web]\nimage = \"x\"\ntimeout_seconds = 5\nnetwork = \"bridge\"\nmemory_mb = 0\nmax_output_mb = 0\nstorage = { mount_path = \"/w\", subpath = \"a/b\" }\n",
        )
        .unwrap();
        let web = c.profile("web").unwrap();
        assert_eq!(web.network, Network::Bridge);
        assert_eq!(web.memory_limit_mb(), None);
        assert_eq!(web.output_limit_mb(), None);
        assert_eq!(
            web.storage.as_ref().unwrap().subpath.as_deref(),
            Some("a/b")
        );
        let agent = c.profile("agent").unwrap();
        assert_eq!(agent.storage.as_ref().unwrap().mount_path, "/data");
        assert_eq!(agent.env["AGENT_HOME"], "/data");
        assert_eq!(agent.memory_limit_mb(), Some(512));
        assert_eq!(agent.output_limit_mb(), Some(DEFAULT_MAX_OUTPUT_MB));
        for (extra, needle) in [
            ("memory_mb = 3", "profiles.p.memory_mb"),
            ("max_output_mb = 1048577", "profiles.p.max_output_mb"),
            (
                "storage = { mount_path = \"data\" }",
                "profiles.p.storage: mount_path",
            ),
            (
                "storage = { mount_path = \"/d\", subpath = \"../x\" }",
                "profiles.p.storage: subpath",
            ),
        ] {
            let text = format!("[profiles.p]\nimage = \"x\"\ntimeout_seconds = 5\n{extra}\n");
            let err = Config::parse(&text).unwrap_err().to_string();
            assert!(err.contains(needle), "{extra}: {err}");
        }
    }

    #[test]
    fn builtin_has_codex() {
        let c = Config::builtin();
        assert_eq!(c.default_profile, "codex");
        assert_eq!(
            c.profile("codex").unwrap().image,
            "localhost/busybox:latest"
        );
        assert_eq!(
            c.profile("codex").unwrap().timeout(),
            Duration::from_secs(600)
        );
        assert_eq!(c.profile("codex").unwrap().memory_limit_mb(), Some(512));
    }

    #[test]
    fn file_adds_profiles() {
        let c = Config::parse(
            "default_profile = \"quick\"\n[profiles.quick]\nimage = \"localhost/x\"\ntimeout_seconds = 5\nenv = { A = \"1\" }\n",
        )
        .unwrap();
        assert_eq!(c.profile_names(), ["agent", "codex", "quick", "service"]);
        assert_eq!(c.default_profile, "quick");
        assert_eq!(c.ports_profile, "service");
        assert_eq!(c.profile("quick").unwrap().env["A"], "1");
    }

    #[test]
    fn file_errors_name_the_field() {
        let err = Config::parse("[profiles.a]\nimage = \"x\"\ntimeout_seconds = 0\n").unwrap_err();
        assert!(
            err.to_string().contains("profiles.a.timeout_seconds"),
            "{err}"
        );
        let err = Config::parse("default_profile = \"nope\"\n").unwrap_err();
        assert!(err.to_string().contains("\"nope\" is not defined"), "{err}");
        let err =
            Config::parse("[profiles.a]\nimage = \"x\"\ntimeout_seconds = 5\nnetwork = \"host\"\n")
                .unwrap_err();
        assert!(err.to_string().contains("host"), "{err}");
        let err = Config::parse("imgae = 1\n").unwrap_err();
        assert!(err.to_string().contains("imgae"), "{err}");
        let err = Config::parse("ports_profile = \"nope\"\n").unwrap_err();
        assert!(
            err.to_string()
                .contains("ports_profile \"nope\" is not defined"),
            "{err}"
        );
        // The ports profile must have a network, replaced or not.
        let err = Config::parse("ports_profile = \"codex\"\n").unwrap_err();
        assert!(err.to_string().contains("network = \"bridge\""), "{err}");
        let err =
            Config::parse("[profiles.service]\nimage = \"localhost/x\"\ntimeout_seconds = 5\n")
                .unwrap_err();
        assert!(
            err.to_string()
                .contains("ports_profile \"service\" has network \"none\""),
            "{err}"
        );
    }

    /// Found by fuzzing: a value with a newline made a two-line error.
    #[test]
    fn errors_are_one_line_whatever_the_file_holds() {
        for text in [
            "[profiles.p]\nimage = \"x\"\ntimeout_seconds = 5\nnetwork = \"\\none\"\n",
            "[profiles.\"a\\nb\"]\nimage = \"x\"\ntimeout_seconds = 5\n",
            "default_profile = \"\\n\"\n",
            "ports_profile = \"\\n\"\n",
        ] {
            let err = Config::parse(text).unwrap_err().to_string();
            assert!(!err.contains('\n') && err.contains("\\n"), "{text}: {err}");
        }
    }

    /// A profile may not hold what a request naming it could not say: every run of it would
    /// fail at the engine (or set another variable than written).
    #[test]
    fn profiles_pass_the_checks_of_a_request() {
        for (profile, field) in [
            (
                "image = \"a b\"\n",
                "profiles.p.image must not contain spaces",
            ),
            (
                "image = \"x\"\nenv = { \"\" = \"v\" }\n",
                "profiles.p.env keys must not be empty",
            ),
            (
                "image = \"x\"\nenv = { \"A=B\" = \"v\" }\n",
                "profiles.p.env key \"A=B\"",
            ),
            (
                "image = \"x\"\nenv = { A = \"v\\u0000\" }\n",
                "profiles.p.env[\"A\"] must not contain NUL",
            ),
        ] {
            let text = format!("[profiles.p]\ntimeout_seconds = 5\n{profile}");
            let err = Config::parse(&text).unwrap_err().to_string();
            assert!(err.contains(field), "{text}: {err}");
        }
    }
}

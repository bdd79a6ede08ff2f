//! What every command gets: a channel to busd and the caller's per-call overrides.

use std::path::PathBuf;
use std::time::Duration;

use bus::proto::containers::v1::containers_client::ContainersClient;
use bus::proto::daemon::v1::daemon_client::DaemonClient;
use tonic::metadata::MetadataValue;
use tonic::transport::Channel;

/// Metadata keys busd reads per call (see busd's `service` module).
const META_API_URL: &str = "bus-api-url";
const META_TOKEN_FILE: &str = "bus-token-file";
const META_TOKEN: &str = "bus-token";

/// Settings of this invocation that busd must honour for its calls, whatever environment
/// the daemon itself was started with.
#[derive(Debug, Default, Clone)]
pub struct Overrides {
    /// `--api-url`, else `BUS_AI_API_URL` / `BUS_API_BASE_URL` of this process.
    pub api_url: Option<String>,
    /// `--token-file`, made absolute.
    pub token_file: Option<PathBuf>,
    /// `BUS_AI_TOKEN` / `BUS_API_TOKEN` of this process, when no token file was named.
    pub token: Option<String>,
    /// `--timeout`: the gRPC deadline, which bounds busd's REST call too.
    pub timeout: Option<Duration>,
}

/// A connected invocation.
pub struct Ctx {
    channel: Channel,
    overrides: Overrides,
}

impl Ctx {
    /// A context over an open channel.
    pub fn new(channel: Channel, overrides: Overrides) -> Self {
        Ctx { channel, overrides }
    }

    /// The Containers client.
    pub fn containers(&self) -> ContainersClient<Channel> {
        ContainersClient::new(self.channel.clone())
    }

    /// The Exec client.
    pub fn exec(&self) -> bus::proto::containers::v1::exec_client::ExecClient<Channel> {
        bus::proto::containers::v1::exec_client::ExecClient::new(self.channel.clone())
    }

    /// The channel to busd, for clients of other services.
    pub fn channel(&self) -> Channel {
        self.channel.clone()
    }

    /// The Daemon client.
    pub fn daemon(&self) -> DaemonClient<Channel> {
        DaemonClient::new(self.channel.clone())
    }

    /// `--timeout`, if any.
    pub fn timeout(&self) -> Option<Duration> {
        self.overrides.timeout
    }

    /// Like [`Ctx::request`] but without the deadline: for sessions that last as long as the
    /// user wants (exec), where `--timeout` bounds only the start.
    pub fn session_request<T>(&self, message: T) -> tonic::Request<T> {
        let mut request = self.request(message);
        request.metadata_mut().remove("grpc-timeout");
        request
    }

    /// Wraps `message` in a request carrying the overrides and the deadline.
    pub fn request<T>(&self, message: T) -> tonic::Request<T> {
        let mut request = tonic::Request::new(message);
        let metadata = request.metadata_mut();
        let overrides = &self.overrides;
        let mut put = |key: &'static str, value: &str| {
            // Values that are not valid header text are left out; busd then uses its own.
            if let Ok(value) = MetadataValue::try_from(value) {
                metadata.insert(key, value);
            }
        };
        if let Some(url) = &overrides.api_url {
            put(META_API_URL, url);
        }
        if let Some(path) = overrides.token_file.as_ref().and_then(|p| p.to_str()) {
            put(META_TOKEN_FILE, path);
        } else if let Some(token) = &overrides.token {
            put(META_TOKEN, token);
        }
        if let Some(timeout) = overrides.timeout {
            request.set_timeout(timeout);
        }
        request
    }
}

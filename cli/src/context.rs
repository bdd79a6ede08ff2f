//! What every command gets: a channel to busd and the caller's per-call overrides.

use std::path::PathBuf;
use std::sync::Mutex;
use std::time::Duration;

use bus::proto::containers::v1::containers_client::ContainersClient;
use bus::proto::daemon::v1::daemon_client::DaemonClient;
use tonic::metadata::MetadataValue;
use tonic::transport::Channel;

use crate::link::{self, default_timeout};

/// Metadata keys busd reads per call (see busd's `service` module).
const META_API_URL: &str = "bus-api-url";
const META_TOKEN_FILE: &str = "bus-token-file";
const META_TOKEN: &str = "bus-token";
/// Metadata key: the client's protocol revision ([`bus::PROTOCOL`]); a busd older than it
/// refuses the call before doing anything (`PROTOCOL_MISMATCH`).
const META_PROTOCOL: &str = "bus-protocol";

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
    /// `--timeout` (or `BUS_TIMEOUT`, or the setting): the gRPC deadline of every call but
    /// sessions, which bounds busd's REST call too. Without it, single calls get
    /// [`default_timeout`] and streams and waits none.
    pub timeout: Option<Duration>,
}

/// A connected invocation.
pub struct Ctx {
    channel: Mutex<Channel>,
    overrides: Overrides,
    /// busd's socket, when the context may start busd again after losing it.
    socket: Option<PathBuf>,
}

impl Ctx {
    /// A context over an open channel.
    pub fn new(channel: Channel, overrides: Overrides) -> Self {
        link::set_timeout(overrides.timeout);
        Ctx {
            channel: Mutex::new(channel),
            overrides,
            socket: None,
        }
    }

    /// This context, able to [`Ctx::reconnect`] to (or start) the busd on `socket`.
    pub fn reconnectable(mut self, socket: PathBuf) -> Self {
        self.socket = Some(socket);
        self
    }

    /// Connects to busd again, starting it if none answers (after busd died under a call).
    /// `false` when this context was not made [`Ctx::reconnectable`].
    pub async fn reconnect(&self) -> Result<bool, crate::error::CliError> {
        let Some(socket) = &self.socket else {
            return Ok(false);
        };
        let channel = crate::daemon::connect_or_start(socket).await?;
        *self.channel.lock().expect("channel lock") = channel;
        Ok(true)
    }

    /// The channel to busd (the one [`Ctx::reconnect`] made last), for clients of any service.
    pub fn channel(&self) -> Channel {
        self.channel.lock().expect("channel lock").clone()
    }

    /// The Containers client.
    pub fn containers(&self) -> ContainersClient<Channel> {
        ContainersClient::new(self.channel())
    }

    /// The Exec client.
    pub fn exec(&self) -> bus::proto::containers::v1::exec_client::ExecClient<Channel> {
        bus::proto::containers::v1::exec_client::ExecClient::new(self.channel())
    }

    /// The Daemon client.
    pub fn daemon(&self) -> DaemonClient<Channel> {
        DaemonClient::new(self.channel())
    }

    /// `--timeout`, if any.
    pub fn timeout(&self) -> Option<Duration> {
        self.overrides.timeout
    }

    /// Like [`Ctx::request`], but without a `timeout` the user set the default deadline is
    /// lengthened by `extra`: for single calls that wait that long by design (a stop's grace).
    pub fn request_allowing<T>(&self, message: T, extra: Duration) -> tonic::Request<T> {
        let mut request = self.request(message);
        if self.overrides.timeout.is_none() {
            request.set_timeout(default_timeout() + extra);
        }
        request
    }

    /// Like [`Ctx::request`] but bounded only by a `timeout` the user set, not by the default:
    /// for calls that last as long as the run does (`Run`, following logs, waits).
    pub fn long_request<T>(&self, message: T) -> tonic::Request<T> {
        let mut request = self.request(message);
        if self.overrides.timeout.is_none() {
            request.metadata_mut().remove("grpc-timeout");
        }
        request
    }

    /// Like [`Ctx::request`] but without the deadline: for sessions that last as long as the
    /// user wants (exec) or as long as a transfer takes (pull, push, load, save, a build's
    /// upload), where `--timeout` bounds only the start.
    pub fn session_request<T>(&self, message: T) -> tonic::Request<T> {
        let mut request = self.request(message);
        request.metadata_mut().remove("grpc-timeout");
        request
    }

    /// Wraps `message` in a request carrying the overrides and the deadline (`--timeout`, else
    /// [`default_timeout`]).
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
        put(META_PROTOCOL, &bus::PROTOCOL.to_string());
        request.set_timeout(overrides.timeout.unwrap_or_else(default_timeout));
        request
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::link::deadline_in_force;

    fn ctx(timeout: Option<Duration>) -> Ctx {
        let channel = tonic::transport::Endpoint::from_static("http://busd.local").connect_lazy();
        Ctx::new(
            channel,
            Overrides {
                timeout,
                ..Overrides::default()
            },
        )
    }

    fn deadline<T>(request: &tonic::Request<T>) -> Option<&str> {
        request
            .metadata()
            .get("grpc-timeout")
            .map(|v| v.to_str().unwrap())
    }

    #[tokio::test]
    async fn single_calls_get_the_default_deadline_and_long_ones_only_a_set_timeout() {
        let ctx = ctx(None);
        let request = ctx.request(());
        assert_eq!(deadline(&request), Some("30000000u"));
        assert_eq!(
            request.metadata().get(META_PROTOCOL).unwrap(),
            &bus::PROTOCOL.to_string()
        );
        assert_eq!(deadline(&ctx.long_request(())), None);
        assert_eq!(deadline(&ctx.session_request(())), None);
        assert_eq!(
            deadline(&ctx.request_allowing((), Duration::from_secs(10))),
            Some("40000000u")
        );
        assert_eq!(deadline_in_force(), (Duration::from_secs(30), true));

        let ctx = self::ctx(Some(Duration::from_secs(2)));
        assert_eq!(deadline(&ctx.request(())), Some("2000000u"));
        assert_eq!(deadline(&ctx.long_request(())), Some("2000000u"));
        assert_eq!(
            deadline(&ctx.request_allowing((), Duration::from_secs(10))),
            Some("2000000u")
        );
        assert_eq!(deadline(&ctx.session_request(())), None);
        assert_eq!(deadline_in_force(), (Duration::from_secs(2), false));
    }
}

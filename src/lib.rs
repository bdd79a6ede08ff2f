//! # bus — the Rust SDK for busd
//!
//! busd is the local daemon that fronts the container-runner REST API. It serves gRPC on a
//! Unix socket; this crate holds the generated clients and servers for that contract
//! (`proto/`), finds the socket the way every bus tool does, and connects to it.
//!
//! # Layout
//! - [`proto`]: the generated `bus.containers.v1`, `bus.images.v1` and `bus.daemon.v1` modules.
//! - [`default_socket_path`]: `$BUS_SOCKET`, else `$XDG_RUNTIME_DIR/bus/busd.sock`, else a
//!   per-user directory under the config directory.
//! - [`connect`]: a tonic [`Channel`] over that socket.
//! - [`timestamp`]: times between `time`, protobuf timestamps and RFC 3339.
//!
//! ```no_run
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! use bus::proto::containers::v1::{containers_client::ContainersClient, GetStatusRequest};
//! let channel = bus::connect(&bus::default_socket_path()).await?;
//! let status = ContainersClient::new(channel).get_status(GetStatusRequest {}).await?;
//! println!("{}", status.into_inner().state);
//! # Ok(()) }
//! ```

use std::path::{Path, PathBuf};

use hyper_util::rt::TokioIo;
use tokio::net::UnixStream;
use tonic::transport::{Channel, Endpoint, Uri};

pub mod config;
pub mod timestamp;

/// Generated protobuf and gRPC code.
pub mod proto {
    /// `bus.containers.*`
    pub mod containers {
        /// `bus.containers.v1`: runs, their output and the runner's status.
        #[allow(missing_docs, clippy::large_enum_variant)]
        pub mod v1 {
            tonic::include_proto!("bus.containers.v1");
        }
    }
    /// `bus.images.*`
    pub mod images {
        /// `bus.images.v1`: images and builds.
        #[allow(missing_docs, clippy::large_enum_variant)]
        pub mod v1 {
            tonic::include_proto!("bus.images.v1");
        }
    }
    /// `bus.daemon.*`
    pub mod daemon {
        /// `bus.daemon.v1`: the daemon's own info.
        #[allow(missing_docs, clippy::large_enum_variant)]
        pub mod v1 {
            tonic::include_proto!("bus.daemon.v1");
        }
    }
}

/// The encoded descriptor set of every proto file, for server reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/bus_descriptor.bin"));

/// busd's wire protocol revision; the CLI restarts a daemon that reports another one.
pub const PROTOCOL: u32 = 1;

/// The environment variable that names busd's socket.
pub const SOCKET_ENV: &str = "BUS_SOCKET";

/// Where busd listens unless told otherwise: `$BUS_SOCKET`, else
/// `$XDG_RUNTIME_DIR/bus/busd.sock`, else `<config dir>/run/busd.sock`.
pub fn default_socket_path() -> PathBuf {
    socket_path_from(|name| std::env::var_os(name).filter(|v| !v.is_empty()))
}

/// [`default_socket_path`] with the environment supplied by `env`; pure, for tests.
pub fn socket_path_from(env: impl Fn(&str) -> Option<std::ffi::OsString>) -> PathBuf {
    if let Some(path) = env(SOCKET_ENV) {
        return PathBuf::from(path);
    }
    if let Some(runtime) = env("XDG_RUNTIME_DIR") {
        return PathBuf::from(runtime).join("bus").join("busd.sock");
    }
    config_dir_from(env).join("run").join("busd.sock")
}

/// bus' configuration directory: `$BUS_CONFIG_DIR`, else `$XDG_CONFIG_HOME/bus`, else
/// `~/.config/bus`.
pub fn config_dir() -> PathBuf {
    config_dir_from(|name| std::env::var_os(name).filter(|v| !v.is_empty()))
}

/// [`config_dir`] with the environment supplied by `env`; pure, for tests.
pub fn config_dir_from(env: impl Fn(&str) -> Option<std::ffi::OsString>) -> PathBuf {
    if let Some(dir) = env("BUS_CONFIG_DIR") {
        return PathBuf::from(dir);
    }
    if let Some(dir) = env("XDG_CONFIG_HOME") {
        return PathBuf::from(dir).join("bus");
    }
    let home = env("HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/"));
    home.join(".config").join("bus")
}

/// Opens a gRPC channel to busd on the Unix socket at `path`.
///
/// The connection is made eagerly, so a missing or dead daemon shows up here as a transport
/// error whose source is the `io::Error` of the connect.
pub async fn connect(path: &Path) -> Result<Channel, tonic::transport::Error> {
    let path = path.to_path_buf();
    // The authority is required by the URI type but unused: the connector ignores it.
    Endpoint::from_static("http://busd.local")
        .connect_with_connector(tower::service_fn(move |_: Uri| {
            let path = path.clone();
            async move { Ok::<_, std::io::Error>(TokioIo::new(UnixStream::connect(path).await?)) }
        }))
        .await
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;
    use std::ffi::OsString;

    fn env(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<OsString> {
        let map: HashMap<String, OsString> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), OsString::from(v)))
            .collect();
        move |name| map.get(name).cloned()
    }

    #[test]
    fn socket_path_precedence() {
        let all = env(&[
            ("BUS_SOCKET", "/s/x.sock"),
            ("XDG_RUNTIME_DIR", "/run/user/7"),
            ("HOME", "/h"),
        ]);
        assert_eq!(socket_path_from(all), PathBuf::from("/s/x.sock"));
        let runtime = env(&[("XDG_RUNTIME_DIR", "/run/user/7"), ("HOME", "/h")]);
        assert_eq!(
            socket_path_from(runtime),
            PathBuf::from("/run/user/7/bus/busd.sock")
        );
        let home = env(&[("HOME", "/h")]);
        assert_eq!(
            socket_path_from(home),
            PathBuf::from("/h/.config/bus/run/busd.sock")
        );
        let config = env(&[("BUS_CONFIG_DIR", "/c"), ("HOME", "/h")]);
        assert_eq!(socket_path_from(config), PathBuf::from("/c/run/busd.sock"));
    }
}

//! The Unix socket: directory 0700, socket 0600, a stale socket removed only after a refused
//! connect, same-uid peers only.

use std::io;
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::Path;

use futures::{Stream, StreamExt};
use tokio::net::{UnixListener, UnixStream};
use tokio_stream::wrappers::UnixListenerStream;

/// Why the socket could not be bound.
#[derive(Debug, thiserror::Error)]
pub enum BindError {
    /// Another busd answers on the socket.
    #[error("another busd is already serving on {0}")]
    InUse(String),
    /// The filesystem refused.
    #[error("cannot bind {path}: {source}")]
    Io {
        /// The socket path.
        path: String,
        /// Why.
        source: io::Error,
    },
}

/// Binds the socket at `path`, creating its directory (0700) if needed and leaving the
/// socket 0600.
pub async fn bind(path: &Path) -> Result<UnixListener, BindError> {
    let io_err = |source| BindError::Io {
        path: path.display().to_string(),
        source,
    };
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        if !dir.exists() {
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(dir)
                .map_err(io_err)?;
        }
    }
    if path.exists() {
        match UnixStream::connect(path).await {
            Ok(_) => return Err(BindError::InUse(path.display().to_string())),
            Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => {
                tracing::info!(socket = %path.display(), "removing a stale socket");
                std::fs::remove_file(path).map_err(io_err)?;
            }
            Err(e) => return Err(io_err(e)),
        }
    }
    let listener = UnixListener::bind(path).map_err(io_err)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).map_err(io_err)?;
    Ok(listener)
}

/// Accepted connections from processes of this user only; others are closed at once.
pub fn same_uid_incoming(listener: UnixListener) -> impl Stream<Item = io::Result<UnixStream>> {
    let uid = rustix::process::getuid().as_raw();
    UnixListenerStream::new(listener).filter_map(move |conn| async move {
        match conn {
            Ok(stream) => match stream.peer_cred() {
                Ok(cred) if cred.uid() == uid => Some(Ok(stream)),
                Ok(cred) => {
                    tracing::warn!(
                        peer_uid = cred.uid(),
                        "refused a connection from another user"
                    );
                    None
                }
                Err(e) => {
                    tracing::warn!(error = %e, "refused a connection without peer credentials");
                    None
                }
            },
            Err(e) => Some(Err(e)),
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::MetadataExt;

    #[tokio::test]
    async fn bind_sets_modes_and_replaces_only_stale_sockets() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("run").join("busd.sock");
        let listener = bind(&path).await.unwrap();
        assert_eq!(std::fs::metadata(&path).unwrap().mode() & 0o777, 0o600);
        assert_eq!(
            std::fs::metadata(path.parent().unwrap()).unwrap().mode() & 0o777,
            0o700
        );

        // A live socket is not taken over.
        assert!(matches!(bind(&path).await, Err(BindError::InUse(_))));
        // A dead one is.
        drop(listener);
        bind(&path).await.unwrap();
    }
}

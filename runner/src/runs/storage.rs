//! Accounts' persistent storage: one engine volume per account, `bus-storage-<account>`
//! (labelled `bus.owner=<account>`), created on first use. A run that asks for it (or whose
//! profile does) mounts the volume's root, or a directory inside it (`subpath`), so files
//! written there outlive the run; another account's runs never see it.
//!
//! The engine mounts a volume's root itself. A `subpath` is mounted by the runner's own hands,
//! because the engines of API version < 1.45 (Podman 4 among them) ignore `VolumeOptions.Subpath`:
//! the runner walks the volume's directory on the host one component at a time, refusing
//! symlinks (`O_NOFOLLOW`) and creating missing directories, then bind-mounts the directory it
//! opened (through its file descriptor, so nothing can swap a component for a symlink in
//! between) onto `<state-dir>/mounts/<run-id>`, hands that path to the engine as a bind mount,
//! and unmounts it once the container has started (the container keeps its own copy of the
//! mount). That needs the runner on the engine's host, in its mount namespace, allowed to
//! mount (root); otherwise a run with a `subpath` fails with a reason that says so.

use std::os::fd::{AsRawFd as _, OwnedFd};
use std::os::unix::fs::DirBuilderExt as _;
use std::path::{Path, PathBuf};

use bus_api::StorageMount;
use rustix::fs::{Mode, OFlags};
use rustix::io::Errno;

use crate::engine::{Engine, Mount};
use crate::store::Store;

/// The prefix of every storage volume's name.
pub const VOLUME_PREFIX: &str = "bus-storage-";
/// The directory below the state dir where subpath mounts are staged.
pub const MOUNTS_DIR: &str = "mounts";

/// The name of `account`'s storage volume: `bus-storage-<account>` when the account id is a
/// valid volume name, else `bus-storage--<hash>` (a form no plain id produces).
pub fn volume_name(account: &str) -> String {
    let plain = account.len() <= 100
        && account.starts_with(|c: char| c.is_ascii_alphanumeric())
        && account
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'));
    if plain {
        format!("{VOLUME_PREFIX}{account}")
    } else {
        let hash = crate::util::to_hex(&crate::util::sha256(account.as_bytes()));
        format!("{VOLUME_PREFIX}-{}", &hash[..32])
    }
}

/// Where subpath mounts of runs in `store` are staged.
pub fn mounts_dir(store: &Store) -> PathBuf {
    store
        .path()
        .parent()
        .unwrap_or_else(|| Path::new("."))
        .join(MOUNTS_DIR)
}

/// A storage mount ready for the container's create request. Keep it until the container has
/// started: dropping it undoes the staging mount of a subpath.
#[derive(Debug)]
pub struct Prepared {
    /// The mount to give the engine.
    pub mount: Mount,
    _staging: Option<Staging>,
}

/// Makes sure `owner`'s volume exists and prepares the mount `storage` asks for, for the run
/// `run_id`. The error is a reason for the run's record.
pub async fn prepare(
    engine: &Engine,
    owner: &str,
    run_id: &str,
    storage: &StorageMount,
    mounts_dir: &Path,
) -> Result<Prepared, String> {
    let name = volume_name(owner);
    let mountpoint = engine
        .ensure_volume(&name, owner)
        .await
        .map_err(|e| format!("the account's storage volume {name} cannot be used: {e}"))?;
    let Some(subpath) = &storage.subpath else {
        return Ok(Prepared {
            mount: Mount::Volume {
                name,
                target: storage.mount_path.clone(),
            },
            _staging: None,
        });
    };
    let staging = stage(Path::new(&mountpoint), subpath, &mounts_dir.join(run_id))
        .map_err(|e| format!("cannot mount the storage subpath \"{subpath}\": {e}"))?;
    Ok(Prepared {
        mount: Mount::Bind {
            source: staging.path.display().to_string(),
            target: storage.mount_path.clone(),
        },
        _staging: Some(staging),
    })
}

/// A bind mount of a storage directory at a staging path, undone on drop.
#[derive(Debug)]
struct Staging {
    path: PathBuf,
}

impl Drop for Staging {
    fn drop(&mut self) {
        unstage(&self.path);
    }
}

fn unstage(path: &Path) {
    if let Err(e) = rustix::mount::unmount(path, rustix::mount::UnmountFlags::DETACH) {
        if e != Errno::INVAL && e != Errno::NOENT {
            tracing::warn!(path = %path.display(), error = %e, "cannot unmount a staged storage mount");
        }
    }
    let _ = std::fs::remove_dir(path);
}

/// Opens `root/subpath` without following symlinks (creating missing directories) and
/// bind-mounts it onto `target`.
fn stage(root: &Path, subpath: &str, target: &Path) -> Result<Staging, String> {
    let dir_flags = OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC;
    let mut dir: OwnedFd = rustix::fs::open(root, dir_flags, Mode::empty()).map_err(|e| {
        format!(
            "the volume's directory {} is not reachable from the runner ({e}); a subpath needs \
             the runner on the engine's host",
            root.display()
        )
    })?;
    for part in subpath.split('/') {
        match rustix::fs::mkdirat(&dir, part, Mode::from_raw_mode(0o755)) {
            Ok(()) | Err(Errno::EXIST) => {}
            Err(e) => return Err(format!("cannot create \"{part}\": {e}")),
        }
        dir = rustix::fs::openat(&dir, part, dir_flags | OFlags::NOFOLLOW, Mode::empty()).map_err(
            |e| match e {
                Errno::LOOP | Errno::NOTDIR => {
                    format!("\"{part}\" in the storage is a symlink or a file, not a directory")
                }
                e => format!("cannot open \"{part}\": {e}"),
            },
        )?;
    }
    if let Some(parent) = target.parent() {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(parent)
            .map_err(|e| format!("cannot create {}: {e}", parent.display()))?;
    }
    match std::fs::DirBuilder::new().mode(0o700).create(target) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => unstage(target),
        Err(e) => return Err(format!("cannot create {}: {e}", target.display())),
    }
    let staging = Staging {
        path: target.to_owned(),
    };
    let source = format!("/proc/self/fd/{}", dir.as_raw_fd());
    rustix::mount::mount_bind(source.as_str(), target).map_err(|e| {
        if e == Errno::PERM || e == Errno::ACCESS {
            "the runner may not bind-mount directories (it needs to run as root); mount the \
             storage root instead (leave `subpath` out)"
                .to_owned()
        } else {
            format!("bind-mounting it failed: {e}")
        }
    })?;
    Ok(staging)
}

/// Undoes staging mounts left by a runner process that died between staging and starting.
pub fn clean_stale(mounts_dir: &Path) {
    let Ok(entries) = std::fs::read_dir(mounts_dir) else {
        return;
    };
    for entry in entries.flatten() {
        unstage(&entry.path());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn volume_names_are_valid_and_distinct() {
        assert_eq!(volume_name("alice"), "bus-storage-alice");
        assert_eq!(volume_name("a.b_c-1"), "bus-storage-a.b_c-1");
        let odd = ["a/b", "a b", "-x", "ümlaut", "a:b", &"x".repeat(101)];
        let names: Vec<String> = odd.iter().map(|a| volume_name(a)).collect();
        for name in &names {
            assert!(name.starts_with("bus-storage--"), "{name}");
            assert_eq!(name.len(), "bus-storage--".len() + 32);
        }
        let unique: std::collections::HashSet<_> = names.iter().collect();
        assert_eq!(unique.len(), names.len());
    }

    #[test]
    fn staging_refuses_symlinks() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("root");
        std::fs::create_dir(&root).unwrap();
        std::os::unix::fs::symlink("/", root.join("link")).unwrap();
        std::fs::write(root.join("file"), b"x").unwrap();
        for sub in ["link", "link/etc", "file"] {
            let err = stage(&root, sub, &dir.path().join("m").join("r")).unwrap_err();
            assert!(err.contains("is a symlink or a file"), "{sub}: {err}");
        }
    }
}

//! Image archives read from an account's storage (the volume `bus-storage-<account>` its runs
//! mount, see [`crate::runs::storage`]), for `POST /api/v1/containers/images/load-from-storage`.
//!
//! The path is relative to the volume's root: absolute paths and `..` are refused before
//! anything is opened. The runner then walks the volume's directory on the host one component
//! at a time without following symlinks (`O_NOFOLLOW`, as a run's `subpath` is staged), so
//! nothing a run wrote can point it outside the account's storage. The archive is copied (up to
//! the load limit) before it is read, so a run writing to it meanwhile cannot change what was
//! checked.

use std::os::fd::OwnedFd;
use std::path::Path;

use rustix::fs::{AtFlags, FileType, Mode, OFlags};
use rustix::io::Errno;

/// Why an archive in the account's storage cannot be loaded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StoragePathError {
    /// No path, or only `.` and `/`.
    #[error("the storage path is empty")]
    Empty,
    /// The path starts at `/`.
    #[error("the storage path \"{0}\" is absolute")]
    Absolute(String),
    /// A component is `..`.
    #[error("the storage path \"{0}\" goes up with \"..\"")]
    Parent(String),
    /// A NUL byte.
    #[error("the storage path holds a NUL byte")]
    Nul,
    /// A component is a symlink.
    #[error("\"{part}\" in the storage path \"{path}\" is a symlink")]
    Symlink {
        /// The path asked for.
        path: String,
        /// The component that is a symlink.
        part: String,
    },
    /// Nothing there.
    #[error("there is no file \"{0}\" in this account's storage")]
    Missing(String),
    /// A directory (or a device, a FIFO ...) where the archive should be, or a file where a
    /// directory should be.
    #[error("\"{0}\" in this account's storage is not a regular file")]
    NotAFile(String),
    /// The volume's directory cannot be reached (the runner is not on the engine's host).
    #[error("the account's storage cannot be read by the runner: {0}")]
    Unreachable(String),
}

/// The components of `path`, relative to the storage root: empty and `.` components are
/// dropped; absolute paths and `..` are refused.
pub fn components(path: &str) -> Result<Vec<&str>, StoragePathError> {
    if path.contains('\0') {
        return Err(StoragePathError::Nul);
    }
    if path.starts_with('/') {
        return Err(StoragePathError::Absolute(path.to_owned()));
    }
    let parts: Vec<&str> = path
        .split('/')
        .filter(|p| !p.is_empty() && *p != ".")
        .collect();
    if parts.contains(&"..") {
        return Err(StoragePathError::Parent(path.to_owned()));
    }
    if parts.is_empty() {
        return Err(StoragePathError::Empty);
    }
    Ok(parts)
}

/// Opens the regular file at `path` below `root`, following no symlink on the way.
pub fn open(root: &Path, path: &str) -> Result<std::fs::File, StoragePathError> {
    let parts = components(path)?;
    let shown = parts.join("/");
    let dir_flags = OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC;
    let mut dir: OwnedFd = rustix::fs::open(root, dir_flags, Mode::empty()).map_err(|e| {
        StoragePathError::Unreachable(format!(
            "its directory {} cannot be opened ({e})",
            root.display()
        ))
    })?;
    let (last, dirs) = parts.split_last().expect("components are not empty");
    let mut walked = String::new();
    for part in dirs {
        walked = join(&walked, part);
        check(&dir, part, &shown, &walked, FileType::Directory)?;
        dir = rustix::fs::openat(&dir, *part, dir_flags | OFlags::NOFOLLOW, Mode::empty())
            .map_err(|e| opened(e, &shown, part))?;
    }
    check(&dir, last, &shown, &shown, FileType::RegularFile)?;
    // NONBLOCK: should it be swapped for a FIFO meanwhile, opening it does not hang.
    let flags = OFlags::RDONLY | OFlags::CLOEXEC | OFlags::NOFOLLOW | OFlags::NONBLOCK;
    let fd = rustix::fs::openat(&dir, *last, flags, Mode::empty())
        .map_err(|e| opened(e, &shown, last))?;
    let stat = rustix::fs::fstat(&fd).map_err(|e| opened(e, &shown, last))?;
    if FileType::from_raw_mode(stat.st_mode) != FileType::RegularFile {
        return Err(StoragePathError::NotAFile(shown));
    }
    Ok(std::fs::File::from(fd))
}

fn join(walked: &str, part: &str) -> String {
    if walked.is_empty() {
        part.to_owned()
    } else {
        format!("{walked}/{part}")
    }
}

/// Refuses `part` (in `dir`) unless it is of kind `want`, telling a symlink and a missing
/// entry apart; `walked` is the path up to it.
fn check(
    dir: &OwnedFd,
    part: &str,
    shown: &str,
    walked: &str,
    want: FileType,
) -> Result<(), StoragePathError> {
    let stat = match rustix::fs::statat(dir, part, AtFlags::SYMLINK_NOFOLLOW) {
        Ok(stat) => stat,
        Err(Errno::NOENT) => return Err(StoragePathError::Missing(shown.to_owned())),
        Err(e) => return Err(opened(e, shown, part)),
    };
    match FileType::from_raw_mode(stat.st_mode) {
        FileType::Symlink => Err(StoragePathError::Symlink {
            path: shown.to_owned(),
            part: walked.to_owned(),
        }),
        kind if kind == want => Ok(()),
        _ => Err(StoragePathError::NotAFile(walked.to_owned())),
    }
}

/// An open that failed after the checks passed (the entry changed in between, or the
/// runner may not read it).
fn opened(err: Errno, shown: &str, part: &str) -> StoragePathError {
    match err {
        Errno::LOOP => StoragePathError::Symlink {
            path: shown.to_owned(),
            part: part.to_owned(),
        },
        Errno::NOENT => StoragePathError::Missing(shown.to_owned()),
        Errno::NOTDIR => StoragePathError::NotAFile(part.to_owned()),
        e => StoragePathError::Unreachable(format!("\"{part}\" cannot be opened ({e})")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_are_relative_and_stay_inside() {
        assert_eq!(components("a//./b.tar").unwrap(), ["a", "b.tar"]);
        assert_eq!(components("./b.tar/").unwrap(), ["b.tar"]);
        assert_eq!(
            components("/data/x.tar"),
            Err(StoragePathError::Absolute("/data/x.tar".into()))
        );
        assert_eq!(
            components("a/../../x"),
            Err(StoragePathError::Parent("a/../../x".into()))
        );
        assert_eq!(components("./"), Err(StoragePathError::Empty));
        assert_eq!(components(""), Err(StoragePathError::Empty));
        assert_eq!(components("a\0b"), Err(StoragePathError::Nul));
    }

    #[test]
    fn files_open_and_symlinks_missing_files_and_directories_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("root");
        std::fs::create_dir_all(root.join("sub")).unwrap();
        std::fs::write(root.join("sub/a.tar"), b"archive").unwrap();
        std::fs::write(dir.path().join("outside.tar"), b"secret").unwrap();
        std::os::unix::fs::symlink(dir.path().join("outside.tar"), root.join("escape.tar"))
            .unwrap();
        std::os::unix::fs::symlink(dir.path(), root.join("up")).unwrap();
        std::os::unix::fs::symlink("sub/a.tar", root.join("inside.tar")).unwrap();

        let mut file = open(&root, "sub/a.tar").unwrap();
        let mut text = String::new();
        std::io::Read::read_to_string(&mut file, &mut text).unwrap();
        assert_eq!(text, "archive");

        for (path, part) in [
            ("escape.tar", "escape.tar"),
            ("up/outside.tar", "up"),
            ("inside.tar", "inside.tar"),
        ] {
            assert_eq!(
                open(&root, path).unwrap_err(),
                StoragePathError::Symlink {
                    path: path.into(),
                    part: part.into()
                },
                "{path}"
            );
        }
        assert_eq!(
            open(&root, "sub/none.tar").unwrap_err(),
            StoragePathError::Missing("sub/none.tar".into())
        );
        assert_eq!(
            open(&root, "none/a.tar").unwrap_err(),
            StoragePathError::Missing("none/a.tar".into())
        );
        assert_eq!(
            open(&root, "sub").unwrap_err(),
            StoragePathError::NotAFile("sub".into())
        );
        assert_eq!(
            open(&root, "sub/a.tar/x").unwrap_err(),
            StoragePathError::NotAFile("sub/a.tar".into())
        );
        assert!(matches!(
            open(&dir.path().join("nope"), "a.tar").unwrap_err(),
            StoragePathError::Unreachable(_)
        ));
    }
}

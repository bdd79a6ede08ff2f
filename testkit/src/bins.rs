//! Where the workspace's binaries are.

use std::path::{Path, PathBuf};

use crate::Error;

/// The paths of `bus`, `busd` and `bus-runner`; each is checked to exist when it is asked for.
#[derive(Debug, Clone)]
pub struct Bins {
    dir: PathBuf,
}

impl Bins {
    /// The binaries in the same directory as `exe`: pass `env!("CARGO_BIN_EXE_<name>")` of a
    /// binary of the test's own package, and its siblings are found beside it.
    pub fn beside(exe: impl AsRef<Path>) -> Bins {
        let exe = exe.as_ref();
        Bins {
            dir: exe
                .parent()
                .unwrap_or_else(|| panic!("{} has no directory", exe.display()))
                .to_path_buf(),
        }
    }

    /// The binaries in `dir` (e.g. target/release).
    pub fn in_dir(dir: impl Into<PathBuf>) -> Bins {
        Bins { dir: dir.into() }
    }

    /// The directory holding them.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The binary `name`, or why it cannot be used.
    pub fn try_get(&self, name: &str) -> Result<PathBuf, Error> {
        let path = self.dir.join(name);
        if path.is_file() {
            Ok(path)
        } else {
            Err(Error::Missing(path))
        }
    }

    /// The binary `name`; panics, naming the build command, when it is not built.
    pub fn get(&self, name: &str) -> PathBuf {
        self.try_get(name).unwrap_or_else(|e| panic!("{e}"))
    }

    /// `bus`.
    pub fn bus(&self) -> PathBuf {
        self.get("bus")
    }

    /// `busd`.
    pub fn busd(&self) -> PathBuf {
        self.get("busd")
    }

    /// `bus-runner`.
    pub fn runner(&self) -> PathBuf {
        self.get("bus-runner")
    }
}

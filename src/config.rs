//! The user's settings file, `<config dir>/config.toml`, and the one precedence every bus tool
//! applies to a setting: flag > environment > file > default.
//!
//! ```toml
//! api_url = "http://127.0.0.1:8650"   # the runner's origin
//! timeout = "30s"                     # the CLI's per-call deadline (default 30s, single calls)
//! output = "table"                    # table or json
//! socket = "/run/user/1000/bus/busd.sock"
//! resume_for = "2m"                   # how long busd retries a runner lost under a stream
//! ```
//!
//! busd and the CLI both resolve `api_url` and `socket` through [`resolve`], busd also
//! `resume_for`; nothing else reads the file.

use std::path::{Path, PathBuf};

/// The settings file's name inside the config directory.
pub const FILE_NAME: &str = "config.toml";

/// Environment variables that may name the API origin, first wins.
pub const API_URL_ENV_VARS: [&str; 2] = ["BUS_AI_API_URL", "BUS_API_BASE_URL"];

/// The origin used when nothing else names one: the local runner's default address.
pub const DEFAULT_API_URL: &str = "http://127.0.0.1:8650";

/// How long busd goes on resuming a log stream whose runner it lost, unless `resume_for` says
/// otherwise.
pub const DEFAULT_RESUME_FOR: std::time::Duration = std::time::Duration::from_secs(120);

/// The CLI's deadline for a single call (not a stream, a wait or a transfer) when no
/// `timeout` is set anywhere.
pub const DEFAULT_TIMEOUT: &str = "30s";

/// A setting the file may hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Key {
    /// The runner's origin.
    ApiUrl,
    /// The CLI's per-call deadline, e.g. `30s`.
    Timeout,
    /// `table` or `json`.
    Output,
    /// busd's socket.
    Socket,
    /// How long busd goes on resuming a log stream whose runner it lost, e.g. `2m`.
    ResumeFor,
}

impl Key {
    /// Every key, in the order `bus config list` shows them.
    pub const ALL: [Key; 5] = [
        Key::ApiUrl,
        Key::Timeout,
        Key::Output,
        Key::Socket,
        Key::ResumeFor,
    ];

    /// The key's name in the file.
    pub fn name(self) -> &'static str {
        match self {
            Key::ApiUrl => "api_url",
            Key::Timeout => "timeout",
            Key::Output => "output",
            Key::Socket => "socket",
            Key::ResumeFor => "resume_for",
        }
    }

    /// The key named `name`.
    pub fn parse(name: &str) -> Option<Key> {
        Key::ALL.into_iter().find(|k| k.name() == name)
    }

    /// The environment variables that set it, first wins.
    pub fn env_vars(self) -> &'static [&'static str] {
        match self {
            Key::ApiUrl => &API_URL_ENV_VARS,
            Key::Timeout => &["BUS_TIMEOUT"],
            Key::Output => &["BUS_OUTPUT"],
            Key::Socket => &[crate::SOCKET_ENV],
            Key::ResumeFor => &["BUS_RESUME_FOR"],
        }
    }
}

/// Where a resolved value came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    /// A command-line flag.
    Flag,
    /// The named environment variable.
    Env(&'static str),
    /// The settings file.
    File,
    /// Built in.
    Default,
}

impl std::fmt::Display for Source {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Source::Flag => f.write_str("flag"),
            Source::Env(name) => write!(f, "env {name}"),
            Source::File => f.write_str("file"),
            Source::Default => f.write_str("default"),
        }
    }
}

/// Why the settings file could not be used.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileError(pub String);

impl std::fmt::Display for FileError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for FileError {}

/// The settings file's contents (unknown keys are kept, and refused by [`Settings::load`]).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Settings {
    table: toml::Table,
}

/// The settings file's path: `<config dir>/config.toml`.
pub fn file_path() -> PathBuf {
    crate::config_dir().join(FILE_NAME)
}

impl Settings {
    /// Reads `path`; a missing file is an empty one.
    pub fn load(path: &Path) -> Result<Settings, FileError> {
        let text = match std::fs::read_to_string(path) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Settings::default()),
            Err(e) => return Err(FileError(format!("cannot read {}: {e}", path.display()))),
        };
        let settings =
            Settings::parse(&text).map_err(|e| FileError(format!("{}: {e}", path.display())))?;
        Ok(settings)
    }

    /// Reads the default file ([`file_path`]).
    pub fn load_default() -> Result<Settings, FileError> {
        Settings::load(&file_path())
    }

    /// Parses the file's text: every key known, every value a string.
    pub fn parse(text: &str) -> Result<Settings, String> {
        let table: toml::Table = text
            .parse()
            .map_err(|e: toml::de::Error| e.message().to_owned())?;
        for (key, value) in &table {
            if Key::parse(key).is_none() {
                return Err(format!("unknown setting {key:?}; known: {}", known_keys()));
            }
            if !value.is_str() {
                return Err(format!("{key} must be a string, e.g. {key} = \"...\""));
            }
        }
        Ok(Settings { table })
    }

    /// The file's value for `key`.
    pub fn get(&self, key: Key) -> Option<&str> {
        self.table.get(key.name()).and_then(|v| v.as_str())
    }

    /// Sets (or, with `None`, removes) `key`.
    pub fn set(&mut self, key: Key, value: Option<&str>) {
        match value {
            Some(value) => {
                self.table
                    .insert(key.name().to_owned(), toml::Value::String(value.to_owned()));
            }
            None => {
                self.table.remove(key.name());
            }
        }
    }

    /// The file's text.
    pub fn to_text(&self) -> String {
        toml::to_string(&self.table).unwrap_or_default()
    }

    /// Writes the file atomically (mode 0600), creating its directory (0700).
    pub fn save(&self, path: &Path) -> Result<(), FileError> {
        use std::io::Write as _;
        use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
        let fail = |e: std::io::Error| FileError(format!("cannot write {}: {e}", path.display()));
        let dir = path.parent().unwrap_or(Path::new("."));
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(fail)?;
        let tmp = dir.join(format!(".{FILE_NAME}.{}", std::process::id()));
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)
            .map_err(fail)?;
        file.write_all(self.to_text().as_bytes()).map_err(fail)?;
        file.sync_all().map_err(fail)?;
        std::fs::rename(&tmp, path).map_err(fail)
    }
}

/// The known keys, for messages.
pub fn known_keys() -> String {
    Key::ALL.map(Key::name).join(", ")
}

/// Resolves `key`: `flag`, else the first non-empty of its environment variables (read with
/// `env`), else the file's value, else `None` (the caller's default).
pub fn resolve(
    key: Key,
    flag: Option<&str>,
    env: impl Fn(&str) -> Option<String>,
    file: &Settings,
) -> Option<(String, Source)> {
    if let Some(value) = flag {
        return Some((value.to_owned(), Source::Flag));
    }
    for name in key.env_vars() {
        if let Some(value) = env(name).filter(|v| !v.trim().is_empty()) {
            return Some((value, Source::Env(name)));
        }
    }
    file.get(key)
        .filter(|v| !v.trim().is_empty())
        .map(|v| (v.to_owned(), Source::File))
}

/// The API origin: flag > `BUS_AI_API_URL` > `BUS_API_BASE_URL` > file > [`DEFAULT_API_URL`].
pub fn resolve_api_url(
    flag: Option<&str>,
    env: impl Fn(&str) -> Option<String>,
    file: &Settings,
) -> (String, Source) {
    resolve(Key::ApiUrl, flag, env, file)
        .unwrap_or_else(|| (DEFAULT_API_URL.to_owned(), Source::Default))
}

/// busd's socket: flag > `BUS_SOCKET` > file > [`crate::socket_path_from`]'s default.
pub fn resolve_socket(
    flag: Option<&Path>,
    env: impl Fn(&str) -> Option<String>,
    file: &Settings,
) -> (PathBuf, Source) {
    let flag = flag.and_then(Path::to_str);
    match resolve(Key::Socket, flag, &env, file) {
        Some((path, source)) => (PathBuf::from(path), source),
        None => (
            crate::socket_path_from(|name| env(name).map(Into::into)),
            Source::Default,
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &'static [(&'static str, &'static str)]) -> impl Fn(&str) -> Option<String> {
        move |name| {
            pairs
                .iter()
                .find(|(k, _)| *k == name)
                .map(|(_, v)| v.to_string())
        }
    }

    #[test]
    fn precedence_is_flag_env_file_default() {
        let file = Settings::parse("api_url = \"http://file\"\n").unwrap();
        let empty = Settings::default();
        let both = env(&[
            ("BUS_AI_API_URL", "http://ai"),
            ("BUS_API_BASE_URL", "http://base"),
        ]);
        let base = env(&[("BUS_API_BASE_URL", "http://base")]);
        let blank = env(&[("BUS_AI_API_URL", " ")]);
        let none = env(&[]);
        type Env<'a> = &'a dyn Fn(&str) -> Option<String>;
        let cases: [(Option<&str>, Env, &Settings, &str, Source); 7] = [
            (
                Some("http://flag"),
                &both,
                &file,
                "http://flag",
                Source::Flag,
            ),
            (
                None,
                &both,
                &file,
                "http://ai",
                Source::Env("BUS_AI_API_URL"),
            ),
            (
                None,
                &base,
                &file,
                "http://base",
                Source::Env("BUS_API_BASE_URL"),
            ),
            (None, &none, &file, "http://file", Source::File),
            (None, &blank, &file, "http://file", Source::File),
            (None, &none, &empty, DEFAULT_API_URL, Source::Default),
            (
                Some("http://flag"),
                &none,
                &empty,
                "http://flag",
                Source::Flag,
            ),
        ];
        for (flag, env, file, want, source) in cases {
            assert_eq!(
                resolve_api_url(flag, env, file),
                (want.to_owned(), source),
                "{flag:?} {file:?}"
            );
        }
    }

    #[test]
    fn socket_precedence() {
        let file = Settings::parse("socket = \"/file.sock\"\n").unwrap();
        let xdg = env(&[("XDG_RUNTIME_DIR", "/run/u")]);
        let sock = env(&[("BUS_SOCKET", "/env.sock"), ("XDG_RUNTIME_DIR", "/run/u")]);
        assert_eq!(
            resolve_socket(Some(Path::new("/flag.sock")), &sock, &file).0,
            PathBuf::from("/flag.sock")
        );
        assert_eq!(
            resolve_socket(None, &sock, &file).0,
            PathBuf::from("/env.sock")
        );
        assert_eq!(
            resolve_socket(None, &xdg, &file).0,
            PathBuf::from("/file.sock")
        );
        assert_eq!(
            resolve_socket(None, &xdg, &Settings::default()),
            (PathBuf::from("/run/u/bus/busd.sock"), Source::Default)
        );
    }

    #[test]
    fn the_file_is_checked_and_round_trips() {
        assert!(
            Settings::parse("colour = \"x\"")
                .unwrap_err()
                .contains("unknown setting")
        );
        assert!(
            Settings::parse("timeout = 3")
                .unwrap_err()
                .contains("must be a string")
        );
        assert!(Settings::parse("= broken").is_err());
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub").join(FILE_NAME);
        assert_eq!(Settings::load(&path).unwrap(), Settings::default());
        let mut settings = Settings::default();
        settings.set(Key::Output, Some("json"));
        settings.set(Key::Timeout, Some("30s"));
        settings.save(&path).unwrap();
        let loaded = Settings::load(&path).unwrap();
        assert_eq!(loaded.get(Key::Output), Some("json"));
        assert_eq!(loaded.get(Key::Timeout), Some("30s"));
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        settings.set(Key::Timeout, None);
        assert_eq!(settings.get(Key::Timeout), None);
    }
}

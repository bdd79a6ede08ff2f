//! `bus config get|set|unset|list|path`: the settings file, `<config dir>/config.toml`.

use bus::config::{Key, Settings};

use crate::error::CliError;
use crate::render::{self, Format, FormatArg};
use crate::settings;

/// The settings file.
#[derive(Debug, clap::Subcommand)]
pub enum Config {
    /// Print the value in force for KEY (env > file > default) and nothing else.
    Get {
        /// api_url, timeout, output or socket.
        key: String,
    },
    /// Write KEY = VALUE to the settings file.
    Set {
        /// api_url, timeout, output or socket.
        key: String,
        /// The value.
        value: String,
    },
    /// Remove KEY from the settings file.
    Unset {
        /// api_url, timeout, output or socket.
        key: String,
    },
    /// Every setting, its value in force and where that came from.
    List(FormatArg),
    /// Print the settings file's path.
    Path,
}

/// One row of `bus config list`.
#[derive(Debug, serde::Serialize)]
struct Row {
    key: &'static str,
    value: Option<String>,
    source: String,
}

fn key(name: &str) -> Result<Key, CliError> {
    Key::parse(name).ok_or_else(|| {
        CliError::Usage(format!(
            "unknown setting {name:?}; known: {}",
            bus::config::known_keys()
        ))
    })
}

fn load() -> Result<Settings, CliError> {
    Settings::load_default().map_err(|e| CliError::Usage(e.0))
}

/// The value in force for `key`, and its source.
fn effective(k: Key, file: &Settings) -> (Option<String>, String) {
    let env = |name: &str| std::env::var(name).ok();
    match k {
        Key::Socket => {
            let (path, source) = bus::config::resolve_socket(None, env, file);
            (Some(path.display().to_string()), source.to_string())
        }
        Key::ApiUrl => {
            let (url, source) = bus::config::resolve_api_url(None, env, file);
            (Some(url), source.to_string())
        }
        Key::Output => match bus::config::resolve(k, None, env, file) {
            Some((v, s)) => (Some(v), s.to_string()),
            None => (Some("table".to_owned()), "default".to_owned()),
        },
        Key::Timeout => match bus::config::resolve(k, None, env, file) {
            Some((v, s)) => (Some(v), s.to_string()),
            None => (
                Some(bus::config::DEFAULT_TIMEOUT.to_owned()),
                "default".to_owned(),
            ),
        },
        // busd's setting, read when busd starts.
        Key::ResumeFor => match bus::config::resolve(k, None, env, file) {
            Some((v, s)) => (Some(v), s.to_string()),
            None => (
                Some(humantime::format_duration(bus::config::DEFAULT_RESUME_FOR).to_string()),
                "default".to_owned(),
            ),
        },
    }
}

impl Config {
    /// Runs the command; returns the exit code.
    pub fn run(self) -> Result<u8, CliError> {
        let path = bus::config::file_path();
        match self {
            Config::Get { key: name } => {
                let (value, _) = effective(key(&name)?, &load()?);
                println!("{}", value.unwrap_or_default());
            }
            Config::Set { key: name, value } => {
                let k = key(&name)?;
                settings::validate(k, &value).map_err(CliError::Usage)?;
                let mut file = load()?;
                file.set(k, Some(&value));
                file.save(&path).map_err(|e| CliError::Local(e.0))?;
            }
            Config::Unset { key: name } => {
                let k = key(&name)?;
                let mut file = load()?;
                file.set(k, None);
                file.save(&path).map_err(|e| CliError::Local(e.0))?;
            }
            Config::List(output) => {
                let file = load()?;
                let rows: Vec<Row> = Key::ALL
                    .into_iter()
                    .map(|k| {
                        let (value, source) = effective(k, &file);
                        Row {
                            key: k.name(),
                            value,
                            source,
                        }
                    })
                    .collect();
                if output.format() == Format::Json {
                    render::print_json(&rows)?;
                } else {
                    for row in rows {
                        println!(
                            "{:<10} {:<40} ({})",
                            row.key,
                            row.value.as_deref().unwrap_or("-"),
                            row.source
                        );
                    }
                }
            }
            Config::Path => println!("{}", path.display()),
        }
        Ok(0)
    }
}

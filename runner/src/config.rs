//! Run profiles: the built-in ones and those a deployment's TOML config file adds.
//!
//! ```toml
//! default_profile = "codex"
//!
//! [profiles.codex]
//! image = "localhost/busybox:latest"
//! network = "none"
//! timeout_seconds = 600
//! env = { LANG = "C.UTF-8" }
//! ```
//!
//! Profiles in the file are added to the built-in ones; a file profile with a built-in's name
//! replaces it.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use bus_api::runs::MAX_TIMEOUT_SECONDS;
use serde::Deserialize;

/// The profile a run gets when it names none.
pub const DEFAULT_PROFILE: &str = "codex";

/// How a run's container reaches the network.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Network {
    /// No network at all, only loopback.
    #[default]
    None,
}

impl Network {
    /// The engine's `NetworkMode` value.
    pub fn mode(self) -> &'static str {
        match self {
            Network::None => "none",
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
    /// Environment every run of the profile gets; a request's env wins on conflicts.
    #[serde(default)]
    pub env: BTreeMap<String, String>,
}

impl Profile {
    /// The profile's timeout.
    pub fn timeout(&self) -> Duration {
        Duration::from_secs(self.timeout_seconds.into())
    }
}

/// The runner's configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    /// Profiles by name.
    pub profiles: BTreeMap<String, Profile>,
    /// The profile a run gets when it names none.
    pub default_profile: String,
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
    profiles: BTreeMap<String, Profile>,
}

impl Config {
    /// The configuration when no file is given: the `codex` profile on the local busybox image.
    pub fn builtin() -> Config {
        let codex = Profile {
            image: "localhost/busybox:latest".to_owned(),
            network: Network::None,
            timeout_seconds: 600,
            env: BTreeMap::new(),
        };
        Config {
            profiles: BTreeMap::from([(DEFAULT_PROFILE.to_owned(), codex)]),
            default_profile: DEFAULT_PROFILE.to_owned(),
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
            message: e.message().to_owned(),
        })?;
        let mut config = Config::builtin();
        config.profiles.extend(file.profiles);
        if let Some(default) = file.default_profile {
            config.default_profile = default;
        }
        config.check().map_err(|message| ConfigError::Invalid {
            path: String::new(),
            message,
        })?;
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
        for (name, p) in &self.profiles {
            if name.is_empty() || name.chars().any(|c| c.is_whitespace() || c.is_control()) {
                return Err(format!(
                    "profile name \"{name}\" must be non-empty without spaces"
                ));
            }
            if p.image.trim().is_empty() {
                return Err(format!("profiles.{name}.image must not be empty"));
            }
            if p.timeout_seconds == 0 || p.timeout_seconds > MAX_TIMEOUT_SECONDS {
                return Err(format!(
                    "profiles.{name}.timeout_seconds must be between 1 and {MAX_TIMEOUT_SECONDS}"
                ));
            }
        }
        Ok(())
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

#[cfg(test)]
mod tests {
    use super::*;

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
    }

    #[test]
    fn file_adds_profiles() {
        let c = Config::parse(
            "default_profile = \"quick\"\n[profiles.quick]\nimage = \"localhost/x\"\ntimeout_seconds = 5\nenv = { A = \"1\" }\n",
        )
        .unwrap();
        assert_eq!(c.profile_names(), ["codex", "quick"]);
        assert_eq!(c.default_profile, "quick");
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
    }
}

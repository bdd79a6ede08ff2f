//! This invocation's settings, each resolved flag > environment > `config.toml` > default
//! through the SDK's [`bus::config`] (the same code busd uses for `api_url` and `socket`).

use std::path::{Path, PathBuf};
use std::time::Duration;

use bus::config::{Key, Settings, Source};

use crate::error::CliError;
use crate::render::Format;

/// The settings in force.
#[derive(Debug, Clone)]
pub struct Resolved {
    /// The API origin when something other than the default names it (forwarded to busd).
    pub api_url: Option<String>,
    /// The per-call deadline.
    pub timeout: Option<Duration>,
    /// The default output format.
    pub output: Format,
    /// busd's socket.
    pub socket: PathBuf,
}

/// Flags that have a setting behind them.
#[derive(Debug, Default)]
pub struct Flags<'a> {
    /// `--api-url`.
    pub api_url: Option<&'a str>,
    /// `--timeout`.
    pub timeout: Option<Duration>,
    /// `--socket`.
    pub socket: Option<&'a Path>,
}

/// Resolves every setting; a bad value names where it came from (exit code 2).
pub fn resolve(
    flags: &Flags<'_>,
    env: impl Fn(&str) -> Option<String>,
    file: &Settings,
) -> Result<Resolved, CliError> {
    let bad = |key: Key, source: &Source, why: String| {
        CliError::Usage(format!(
            "invalid {} (from {}): {why}",
            key.name(),
            describe(source)
        ))
    };
    let api_url = bus::config::resolve(Key::ApiUrl, flags.api_url, &env, file).map(|(v, _)| v);
    let timeout = match flags.timeout {
        Some(timeout) => Some(timeout),
        None => match bus::config::resolve(Key::Timeout, None, &env, file) {
            Some((text, source)) => Some(
                humantime::parse_duration(text.trim())
                    .map_err(|e| bad(Key::Timeout, &source, format!("{text:?}: {e}")))?,
            ),
            None => None,
        },
    };
    let output = match bus::config::resolve(Key::Output, None, &env, file) {
        Some((text, source)) => text
            .parse::<Format>()
            .map_err(|e| bad(Key::Output, &source, e))?,
        None => Format::Table,
    };
    let (socket, _) = bus::config::resolve_socket(flags.socket, &env, file);
    Ok(Resolved {
        api_url,
        timeout,
        output,
        socket,
    })
}

/// Where a value came from, for messages: `config.toml (PATH)` for the file.
pub fn describe(source: &Source) -> String {
    match source {
        Source::File => format!("{}", bus::config::file_path().display()),
        other => other.to_string(),
    }
}

/// Checks a value before `bus config set` writes it.
pub fn validate(key: Key, value: &str) -> Result<(), String> {
    match key {
        Key::ApiUrl => {
            let ok = (value.starts_with("http://") || value.starts_with("https://"))
                && !value.trim_end_matches('/').contains("/api/");
            if ok {
                Ok(())
            } else {
                Err(format!(
                    "api_url must be an origin such as {}, without /api/...",
                    bus::config::DEFAULT_API_URL
                ))
            }
        }
        Key::Timeout => humantime::parse_duration(value)
            .map(|_| ())
            .map_err(|e| format!("timeout {value:?}: {e} (e.g. 30s, 2m)")),
        Key::ResumeFor => match humantime::parse_duration(value) {
            Ok(d) if !d.is_zero() => Ok(()),
            Ok(_) => Err("resume_for must be longer than zero (e.g. 2m)".to_owned()),
            Err(e) => Err(format!("resume_for {value:?}: {e} (e.g. 90s, 5m)")),
        },
        Key::Output => value.parse::<Format>().map(|_| ()),
        Key::Socket => {
            if Path::new(value).is_absolute() {
                Ok(())
            } else {
                Err("socket must be an absolute path".to_owned())
            }
        }
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
    fn timeout_and_output_precedence() {
        let file = Settings::parse("timeout = \"9s\"\noutput = \"json\"").unwrap();
        let r = resolve(&Flags::default(), env(&[]), &file).unwrap();
        assert_eq!(
            (r.timeout, r.output),
            (Some(Duration::from_secs(9)), Format::Json)
        );
        let r = resolve(
            &Flags::default(),
            env(&[("BUS_TIMEOUT", "2s"), ("BUS_OUTPUT", "table")]),
            &file,
        )
        .unwrap();
        assert_eq!(
            (r.timeout, r.output),
            (Some(Duration::from_secs(2)), Format::Table)
        );
        let flags = Flags {
            timeout: Some(Duration::from_secs(1)),
            ..Flags::default()
        };
        let r = resolve(&flags, env(&[("BUS_TIMEOUT", "2s")]), &file).unwrap();
        assert_eq!(r.timeout, Some(Duration::from_secs(1)));
        let r = resolve(&Flags::default(), env(&[]), &Settings::default()).unwrap();
        assert_eq!(
            (r.timeout, r.output, r.api_url),
            (None, Format::Table, None)
        );
    }

    #[test]
    fn bad_values_are_usage_errors_naming_their_source() {
        let err = resolve(
            &Flags::default(),
            env(&[("BUS_OUTPUT", "yaml")]),
            &Settings::default(),
        )
        .unwrap_err();
        assert_eq!(err.exit_code(), 2);
        assert!(err.to_string().contains("env BUS_OUTPUT"), "{err}");
        assert!(validate(Key::Timeout, "soon").is_err());
        assert!(validate(Key::ApiUrl, "http://h/api/v1").is_err());
        assert!(validate(Key::Socket, "rel.sock").is_err());
        assert!(validate(Key::Output, "json").is_ok());
    }
}

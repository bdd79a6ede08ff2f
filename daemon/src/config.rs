//! busd's settings and their precedence; pure functions, unit-tested.

use std::path::PathBuf;
use std::time::Duration;

use crate::credentials::TokenSource;

pub use crate::fanout::DEFAULT_RESUME_FOR;
pub use crate::upstream::{ApiOrigin, ApiUrlError, TrustedCas};
pub use bus::config::{API_URL_ENV_VARS, DEFAULT_API_URL, Key, Settings};

/// What busd was started with.
#[derive(Debug, Clone)]
pub struct Config {
    /// The socket busd serves on.
    pub socket: PathBuf,
    /// The default upstream origin (a call may name another).
    pub api_origin: ApiOrigin,
    /// The default token source (a call may name another).
    pub token_source: TokenSource,
    /// CA certificates trusted for https origins besides the web roots (`--ca-file`).
    pub trusted_cas: TrustedCas,
    /// How long a shared log stream goes on resuming when its runner is lost (`--resume-for`).
    pub resume_for: Duration,
}

/// Resolves the API origin: flag > `BUS_AI_API_URL` > `BUS_API_BASE_URL` > the settings
/// file's `api_url` > default. The one implementation is the SDK's, which the CLI uses too.
pub fn resolve_api_url(
    flag: Option<&str>,
    env: impl Fn(&str) -> Option<String>,
    file: &Settings,
) -> String {
    bus::config::resolve_api_url(flag, env, file).0
}

/// Resolves the resume budget: flag > `BUS_RESUME_FOR` > the settings file's `resume_for` >
/// [`DEFAULT_RESUME_FOR`]; a value that is not a duration (`90s`, `5m`) or is zero is refused
/// with where it came from.
pub fn resolve_resume_for(
    flag: Option<&str>,
    env: impl Fn(&str) -> Option<String>,
    file: &Settings,
) -> Result<Duration, String> {
    let Some((text, source)) = bus::config::resolve(Key::ResumeFor, flag, env, file) else {
        return Ok(DEFAULT_RESUME_FOR);
    };
    match humantime::parse_duration(text.trim()) {
        Ok(d) if !d.is_zero() => Ok(d),
        Ok(_) => Err(format!(
            "resume_for ({source}) must be longer than zero; give a duration such as 2m"
        )),
        Err(e) => Err(format!(
            "resume_for {text:?} ({source}) is not a duration: {e}; give one such as 90s or 5m"
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resume_for_precedence_and_refusals() {
        let none = Settings::default();
        let file = Settings::parse("resume_for = \"10m\"").unwrap();
        let env = |name: &str| (name == "BUS_RESUME_FOR").then(|| "3m".to_owned());
        let no_env = |_: &str| None;
        let minutes = |m: u64| Duration::from_secs(60 * m);
        assert_eq!(resolve_resume_for(Some("1m"), env, &file), Ok(minutes(1)));
        assert_eq!(resolve_resume_for(None, env, &file), Ok(minutes(3)));
        assert_eq!(resolve_resume_for(None, no_env, &file), Ok(minutes(10)));
        assert_eq!(
            resolve_resume_for(None, no_env, &none),
            Ok(DEFAULT_RESUME_FOR)
        );
        assert!(DEFAULT_RESUME_FOR >= minutes(2));
        let err = resolve_resume_for(Some("soon"), no_env, &none).unwrap_err();
        assert!(err.contains("\"soon\" (flag) is not a duration"), "{err}");
        let err = resolve_resume_for(None, |_| Some("0s".to_owned()), &none).unwrap_err();
        assert!(err.contains("env BUS_RESUME_FOR"), "{err}");
    }

    #[test]
    fn api_url_precedence() {
        let env = |name: &str| Some(format!("http://{}", name.to_lowercase()));
        let none = Settings::default();
        let file = Settings::parse("api_url = \"http://file\"").unwrap();
        assert_eq!(
            resolve_api_url(Some("http://flag"), env, &file),
            "http://flag"
        );
        assert_eq!(resolve_api_url(None, env, &file), "http://bus_ai_api_url");
        let base_only = |name: &str| (name == "BUS_API_BASE_URL").then(|| "http://b".to_owned());
        assert_eq!(resolve_api_url(None, base_only, &file), "http://b");
        assert_eq!(resolve_api_url(None, |_| None, &file), "http://file");
        assert_eq!(resolve_api_url(None, |_| None, &none), DEFAULT_API_URL);
    }
}

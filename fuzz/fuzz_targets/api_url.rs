//! busd's API origin (`busd::config::ApiOrigin`), from `--api-url`, the environment or the
//! settings file.
//!
//! Properties: an accepted origin is stable (its text parses to the same origin) and every
//! API URL busd builds from it is that origin plus the path, nothing more; the origin a
//! refusal suggests is itself accepted; a refusal is one line and never repeats a password.

#![no_main]

use busd::config::{ApiOrigin, ApiUrlError};
use libfuzzer_sys::fuzz_target;

const PATH: &str = "/api/v1/containers/runs/run_0/logs";

fuzz_target!(|given: &str| {
    match ApiOrigin::parse(given) {
        Ok(origin) => {
            let text = origin.as_str();
            assert!(!text.ends_with('/'), "{text}");
            assert_eq!(ApiOrigin::parse(text).as_ref(), Ok(&origin), "{text}");
            let parsed = url::Url::parse(given.trim()).expect("accepted, so a URL");
            let joined =
                url::Url::parse(origin.join(PATH).as_str()).expect("a URL busd builds parses");
            assert_eq!(joined.scheme(), parsed.scheme());
            assert_eq!(joined.host(), parsed.host());
            assert_eq!(
                joined.port_or_known_default(),
                parsed.port_or_known_default()
            );
            assert_eq!(joined.path(), PATH);
            assert!(joined.query().is_none() && joined.fragment().is_none());
            assert!(joined.username().is_empty() && joined.password().is_none());
        }
        Err(err) => {
            let message = format!("{err}; {}", err.guidance());
            assert!(!message.contains('\n'), "{message:?}");
            if let ApiUrlError::HasApiPath { origin, .. } = &err {
                assert!(
                    ApiOrigin::parse(origin).is_ok(),
                    "the suggestion {origin:?} is refused"
                );
            }
            if let Ok(url) = url::Url::parse(given.trim()) {
                // The user-info, as the parser reads it, is never shown with its password; nor
                // is a password written once. (Only where the URL holds them once: the same
                // text elsewhere, in a path say, is not the password.)
                // A password of `***` is the redaction mark itself, shown whatever is done.
                if let Some(password) = url.password().filter(|p| *p != "***") {
                    let once = |text: &str, part: &str| text.matches(part).count() == 1;
                    let userinfo = format!("{}:{password}@", url.username());
                    if once(url.as_str(), &userinfo) {
                        assert!(
                            !message.contains(&userinfo),
                            "the password is shown: {message}"
                        );
                    }
                    if password.len() >= 4 && once(url.as_str(), password) && once(given, password)
                    {
                        assert!(
                            !message.contains(password),
                            "the password is shown: {message}"
                        );
                    }
                }
            }
        }
    }
});

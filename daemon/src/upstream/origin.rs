//! The runner's origin, validated: the one address every REST call and WebSocket hangs below.

use bus::config::DEFAULT_API_URL;

/// A validated API origin such as `https://runner.example.com` or `http://127.0.0.1:8650`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ApiOrigin(url::Url);

/// Why an API URL was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ApiUrlError {
    /// Not a URL at all.
    #[error("the API URL {0:?} is not a valid URL: {1}")]
    Unparsable(String, String),
    /// A scheme other than http or https.
    #[error("the API URL {0:?} must start with http:// or https://")]
    Scheme(String),
    /// The URL includes the API path, which busd appends itself.
    #[error("the API URL {given:?} includes the API path; busd appends /api/v1/... itself")]
    HasApiPath {
        /// What was given.
        given: String,
        /// The origin to use instead.
        origin: String,
    },
    /// Some other path, a query or a fragment.
    #[error(
        "the API URL {0:?} must be an origin only (scheme, host and port), without a path, query or credentials"
    )]
    NotAnOrigin(String),
}

impl ApiUrlError {
    /// What the user can do about it.
    pub fn guidance(&self) -> String {
        match self {
            ApiUrlError::HasApiPath { origin, .. } => format!("use --api-url {origin}"),
            _ => format!("pass an origin such as --api-url {DEFAULT_API_URL}"),
        }
    }
}

impl ApiOrigin {
    /// Parses and validates an origin. A refusal repeats what was given with any password
    /// in it replaced by `***`.
    pub fn parse(given: &str) -> Result<Self, ApiUrlError> {
        let trimmed = given.trim();
        let url = url::Url::parse(trimmed)
            .map_err(|e| ApiUrlError::Unparsable(redact_password(given), e.to_string()))?;
        let shown = || match url.password() {
            // As the parser read it, so no spelling of the URL can slip its password through.
            Some(_) => {
                let mut hidden = url.clone();
                match hidden.set_password(Some("***")) {
                    Ok(()) => hidden.to_string(),
                    Err(()) => "(a URL with a password, not shown)".to_owned(),
                }
            }
            None => given.to_owned(),
        };
        if !matches!(url.scheme(), "http" | "https") || url.host().is_none() {
            return Err(ApiUrlError::Scheme(shown()));
        }
        let path = url.path().trim_end_matches('/');
        if path.ends_with("/api/v1/containers") || path.ends_with("/api/v1") {
            // Scheme, host and port only: no credentials, query or fragment either.
            return Err(ApiUrlError::HasApiPath {
                given: shown(),
                origin: url.origin().ascii_serialization(),
            });
        }
        if !path.is_empty()
            || url.query().is_some()
            || url.fragment().is_some()
            || !url.username().is_empty()
            || url.password().is_some()
        {
            return Err(ApiUrlError::NotAnOrigin(shown()));
        }
        // One form per origin: `http://h//` is `http://h`, and compares equal to it.
        let mut url = url;
        url.set_path("/");
        Ok(ApiOrigin(url))
    }

    /// The URL of `path` (which starts with `/api/v1/` and may end in a query) below this
    /// origin. Only the path and query are parsed: a busy busd builds one per call.
    pub fn join(&self, path: &str) -> url::Url {
        let (path, query) = match path.split_once('?') {
            Some((path, query)) => (path, Some(query)),
            None => (path, None),
        };
        let mut url = self.0.clone();
        url.set_path(path);
        url.set_query(query);
        url
    }

    /// The origin as text, without a trailing slash.
    pub fn as_str(&self) -> &str {
        self.0.as_str().trim_end_matches('/')
    }
}

/// `given`, which does not parse as a URL, with what looks like the password of a
/// `user:password@` part replaced by `***`.
fn redact_password(given: &str) -> String {
    // As the URL parser reads it: any number of slashes (or backslashes) after the scheme.
    let Some(colon) = given.find(':') else {
        return given.to_owned();
    };
    let after = &given[colon + 1..];
    let scheme_end = given.len() - after.trim_start_matches(['/', '\\']).len();
    let rest = &given[scheme_end..];
    let authority = &rest[..rest.find(['/', '\\', '?', '#']).unwrap_or(rest.len())];
    let Some(at) = authority.rfind('@') else {
        return given.to_owned();
    };
    match authority[..at].find(':') {
        Some(colon) => format!(
            "{}***{}",
            &given[..scheme_end + colon + 1],
            &given[scheme_end + at..]
        ),
        None => given.to_owned(),
    }
}

impl std::fmt::Display for ApiOrigin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn origins_are_accepted_with_or_without_a_slash() {
        for good in [
            "http://127.0.0.1:8650",
            "https://runner.example.com/",
            "http://[::1]:80",
        ] {
            ApiOrigin::parse(good).unwrap_or_else(|e| panic!("{good}: {e}"));
        }
        assert_eq!(
            ApiOrigin::parse("http://h:1/")
                .unwrap()
                .join("/api/v1/containers/status")
                .as_str(),
            "http://h:1/api/v1/containers/status"
        );
        assert_eq!(
            ApiOrigin::parse("https://h.example")
                .unwrap()
                .join("/api/v1/containers/runs/run_1/logs?follow=true&tail=10")
                .as_str(),
            "https://h.example/api/v1/containers/runs/run_1/logs?follow=true&tail=10"
        );
    }

    #[test]
    fn a_url_with_the_api_path_is_refused_with_its_origin() {
        let err = ApiOrigin::parse("https://h.example/api/v1/containers/").unwrap_err();
        assert_eq!(err.guidance(), "use --api-url https://h.example");
    }

    #[test]
    fn other_bad_urls_are_refused() {
        assert!(matches!(
            ApiOrigin::parse("ftp://h"),
            Err(ApiUrlError::Scheme(_))
        ));
        assert!(matches!(
            ApiOrigin::parse("localhost:8650"),
            Err(ApiUrlError::Scheme(_))
        ));
        assert!(matches!(
            ApiOrigin::parse("no url"),
            Err(ApiUrlError::Unparsable(..))
        ));
        assert!(matches!(
            ApiOrigin::parse("http://h/x"),
            Err(ApiUrlError::NotAnOrigin(_))
        ));
        assert!(matches!(
            ApiOrigin::parse("http://u:p@h"),
            Err(ApiUrlError::NotAnOrigin(_))
        ));
    }

    /// The origin suggested for a URL with the API path has no query, fragment or
    /// credentials, so the suggestion is accepted in turn.
    #[test]
    fn the_suggested_origin_is_one_that_is_accepted() {
        for (given, origin) in [
            ("http://h/api/v1?x=1", "http://h"),
            (
                "https://u:secret@h:8443/api/v1/containers#f",
                "https://h:8443",
            ),
            ("http://[::1]:8650/prefix/api/v1/", "http://[::1]:8650"),
        ] {
            let err = ApiOrigin::parse(given).unwrap_err();
            assert_eq!(err.guidance(), format!("use --api-url {origin}"), "{given}");
            ApiOrigin::parse(origin).unwrap();
        }
    }

    /// Found by fuzzing: `http://s//` was accepted as an origin unequal to `http://s`, which
    /// its own text parses to.
    #[test]
    fn an_origin_has_one_form() {
        let slashes = ApiOrigin::parse("http://s//").unwrap();
        assert_eq!(slashes, ApiOrigin::parse("http://s").unwrap());
        assert_eq!(ApiOrigin::parse(slashes.as_str()).unwrap(), slashes);
        assert_eq!(slashes.as_str(), "http://s");
    }

    #[test]
    fn a_password_in_a_refused_url_is_not_repeated() {
        for given in [
            "http://user:hunter22@h/api/v1",
            "http://user:hunter22@h",
            "ftp://user:hunter22@h",
            "http://user:hunter22@h:99999",
            // Found by fuzzing: the parser also reads one slash, or backslashes.
            "https:/user:hunter22@h?q",
            "http:\\\\user:hunter22@h/x",
        ] {
            let err = ApiOrigin::parse(given).unwrap_err();
            let shown = format!("{err}; {}", err.guidance());
            assert!(!shown.contains("hunter22"), "{shown}");
            assert!(shown.contains("user:***@h"), "{shown}");
        }
        // Found by fuzzing: a scheme where a backslash is no delimiter.
        let err = ApiOrigin::parse("\0ht://a\\b:hunter22@h").unwrap_err();
        assert!(!err.to_string().contains("hunter22"), "{err}");
    }
}

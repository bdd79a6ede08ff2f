//! Egress proxies (`[proxies.NAME]`): an upstream URL and the credential the runner adds to
//! every request it forwards there for a run, so the credential never enters the container.
//!
//! ```toml
//! [proxies.openai]
//! upstream = "https://api.openai.com/v1"    # https:// (public roots) or http://
//! credential_file = "/etc/bus/openai-key"   # mode 0600; read once at start, never logged
//! ca_file = "/etc/bus/private-ca.pem"       # optional: CAs trusted beside the public roots
//! base_url_env = "OPENAI_BASE_URL"          # default NAME_BASE_URL (NAME upper-cased)
//! key_env = "OPENAI_API_KEY"                # default NAME_API_KEY
//! header = "authorization"                  # default: `Authorization: Bearer CREDENTIAL`;
//!                                           # another name carries the bare credential
//! ```

use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls_pki_types::CertificateDer;
use rustls_pki_types::pem::PemObject as _;
use tokio_rustls::rustls;

use serde::Deserialize;

use super::{Profile, checks};

/// A `[proxies.NAME]` table as written.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProxyConfig {
    /// The origin and base path requests are forwarded to.
    pub upstream: String,
    /// The file holding the credential (surrounding whitespace ignored).
    pub credential_file: PathBuf,
    /// The env variable that carries the proxy's URL into the container.
    #[serde(default)]
    pub base_url_env: Option<String>,
    /// The env variable that carries the run token (the proxy's key) into the container.
    #[serde(default)]
    pub key_env: Option<String>,
    /// The header the credential goes upstream in.
    #[serde(default)]
    pub header: Option<String>,
    /// PEM certificates of CAs an `https://` upstream may be signed by, beside the public
    /// roots.
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
}

/// How an `https://` upstream is trusted: the public roots and the `ca_file`'s CAs.
#[derive(Clone)]
pub struct UpstreamTls {
    /// The client configuration every connection to the upstream uses.
    pub config: Arc<rustls::ClientConfig>,
    ca_file: Option<PathBuf>,
}

impl UpstreamTls {
    fn new(ca_file: Option<&Path>) -> Result<UpstreamTls, String> {
        let mut roots = rustls::RootCertStore {
            roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
        };
        if let Some(path) = ca_file {
            let shown = path.display();
            let certs = CertificateDer::pem_file_iter(path)
                .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
                .map_err(|e| format!("ca_file {shown}: {e}"))?;
            if certs.is_empty() {
                return Err(format!("ca_file {shown} holds no CERTIFICATE block"));
            }
            for cert in certs {
                roots
                    .add(cert)
                    .map_err(|e| format!("ca_file {shown}: a certificate is not usable: {e}"))?;
            }
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let config = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| e.to_string())?
            .with_root_certificates(roots)
            .with_no_client_auth();
        Ok(UpstreamTls {
            config: Arc::new(config),
            ca_file: ca_file.map(Path::to_owned),
        })
    }
}

impl std::fmt::Debug for UpstreamTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UpstreamTls")
            .field("ca_file", &self.ca_file)
            .finish_non_exhaustive()
    }
}

impl PartialEq for UpstreamTls {
    fn eq(&self, other: &Self) -> bool {
        self.ca_file == other.ca_file
    }
}

impl Eq for UpstreamTls {}

/// The credential a proxy forwards with; its `Debug` hides it.
#[derive(Clone, PartialEq, Eq)]
pub struct Credential(String);

impl Credential {
    /// The secret itself, only for the header the proxy sends upstream.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for Credential {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Credential(..)")
    }
}

/// An egress proxy, checked and with its credential loaded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Proxy {
    /// The name in `/api/v1/proxy/NAME/...` and in profiles' `proxies`.
    pub name: String,
    /// Where requests go: `upstream` + the path after the proxy's name.
    pub upstream: url::Url,
    /// The credential added upstream.
    pub credential: Credential,
    /// The header (lower case) the credential goes in; `authorization` means `Bearer` auth.
    pub header: String,
    /// The env variable with the proxy's URL as seen from the container.
    pub base_url_env: String,
    /// The env variable with the run token.
    pub key_env: String,
    /// For an `https://` upstream: how its certificate is checked.
    pub tls: Option<UpstreamTls>,
}

impl Proxy {
    /// Checks a `[proxies.NAME]` table and reads its credential file.
    pub fn from_config(name: &str, file: ProxyConfig) -> Result<Proxy, String> {
        let at = format!("proxies.{name}");
        if name.is_empty()
            || !name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        {
            return Err(format!(
                "proxy name \"{name}\" must be letters, digits, '-' or '_'"
            ));
        }
        let upstream = url::Url::parse(&file.upstream)
            .map_err(|e| format!("{at}.upstream is not a URL: {e}"))?;
        if !matches!(upstream.scheme(), "http" | "https") || upstream.host_str().is_none() {
            return Err(format!(
                "{at}.upstream must be an https:// or http:// URL with a host"
            ));
        }
        let tls = match upstream.scheme() {
            "https" => {
                Some(UpstreamTls::new(file.ca_file.as_deref()).map_err(|e| format!("{at}.{e}"))?)
            }
            _ if file.ca_file.is_some() => {
                return Err(format!(
                    "{at}.ca_file is for an https:// upstream; this one is http://"
                ));
            }
            _ => None,
        };
        let path = &file.credential_file;
        let meta = std::fs::metadata(path)
            .map_err(|e| format!("{at}.credential_file {}: {e}", path.display()))?;
        let mode = meta.permissions().mode() & 0o777;
        if mode & 0o077 != 0 {
            return Err(format!(
                "{at}.credential_file {} is accessible to other users (mode {mode:o}); run \
                 `chmod 600 {}`",
                path.display(),
                path.display()
            ));
        }
        let text = std::fs::read_to_string(path)
            .map_err(|e| format!("{at}.credential_file {}: {e}", path.display()))?;
        let secret = text.trim();
        if secret.is_empty() || secret.chars().any(|c| c.is_control()) {
            return Err(format!(
                "{at}.credential_file {} must hold one line, the credential",
                path.display()
            ));
        }
        let upper = name.to_ascii_uppercase().replace('-', "_");
        let base_url_env = file
            .base_url_env
            .unwrap_or_else(|| format!("{upper}_BASE_URL"));
        let key_env = file.key_env.unwrap_or_else(|| format!("{upper}_API_KEY"));
        for (key, value) in [("base_url_env", &base_url_env), ("key_env", &key_env)] {
            checks::check_env(value, "").map_err(|e| format!("{at}.{key}: {e}"))?;
        }
        let header = file
            .header
            .unwrap_or_else(|| "authorization".to_owned())
            .to_ascii_lowercase();
        if axum::http::HeaderName::from_bytes(header.as_bytes()).is_err() {
            return Err(format!("{at}.header \"{header}\" is not a header name"));
        }
        Ok(Proxy {
            name: name.to_owned(),
            upstream,
            credential: Credential(secret.to_owned()),
            header,
            base_url_env,
            key_env,
            tls,
        })
    }
}

/// Checks a profile's `token_scopes` and `proxies` against the scopes and proxies defined.
pub fn check_profile(
    name: &str,
    profile: &Profile,
    proxies: &BTreeMap<String, Proxy>,
) -> Result<(), String> {
    if let Some(scopes) = &profile.token_scopes {
        for scope in scopes {
            if bus_api::auth::Scope::parse(scope).is_none() {
                return Err(format!(
                    "profiles.{name}.token_scopes: unknown resource \"{scope}\""
                ));
            }
        }
    }
    for proxy in &profile.proxies {
        if !proxies.contains_key(proxy) {
            let defined: Vec<&str> = proxies.keys().map(String::as_str).collect();
            return Err(format!(
                "profiles.{name}.proxies: proxy \"{proxy}\" is not defined; defined proxies: {}",
                if defined.is_empty() {
                    "none (add a [proxies.NAME] table)".to_owned()
                } else {
                    defined.join(", ")
                }
            ));
        }
    }
    if !profile.proxies.is_empty() && profile.token_scopes.is_none() {
        return Err(format!(
            "profiles.{name}.proxies needs token_scopes: a proxy's key is the run token"
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt as _;

    use super::super::Config;

    fn write_key(dir: &std::path::Path, mode: u32) -> std::path::PathBuf {
        let path = dir.join("key");
        std::fs::write(&path, "sk-real-secret\n").unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
        path
    }

    #[test]
    fn proxies_parse_with_defaults_and_hide_the_credential() {
        let dir = tempfile::tempdir().unwrap();
        let key = write_key(dir.path(), 0o600);
        let config = Config::parse(&format!(
            "[proxies.open-ai]\nupstream = \"http://127.0.0.1:9/v1\"\ncredential_file = \"{}\"\n\
             [profiles.agent]\nimage = \"localhost/busybox:latest\"\ntimeout_seconds = 60\n\
             network = \"runner\"\ntoken_scopes = [\"container:read\"]\nproxies = [\"open-ai\"]\n",
            key.display()
        ))
        .unwrap();
        let proxy = &config.proxies["open-ai"];
        assert_eq!(proxy.credential.expose(), "sk-real-secret");
        assert_eq!(proxy.base_url_env, "OPEN_AI_BASE_URL");
        assert_eq!(proxy.key_env, "OPEN_AI_API_KEY");
        assert_eq!(proxy.header, "authorization");
        assert!(!format!("{config:?}").contains("sk-real-secret"));
        assert_eq!(config.profiles["agent"].proxies, ["open-ai"]);
    }

    #[test]
    fn bad_proxies_are_config_errors() {
        let dir = tempfile::tempdir().unwrap();
        let key = write_key(dir.path(), 0o600);
        let err = Config::parse(
            "[profiles.a]\nimage = \"x:1\"\ntimeout_seconds = 60\ntoken_scopes = []\n\
             proxies = [\"nope\"]\n",
        )
        .unwrap_err()
        .to_string();
        assert!(
            err.contains("proxy \"nope\" is not defined; defined proxies: none"),
            "{err}"
        );
        let err = Config::parse(&format!(
            "[proxies.p]\nupstream = \"ftp://x/\"\ncredential_file = \"{}\"\n",
            key.display()
        ))
        .unwrap_err()
        .to_string();
        assert!(err.contains("must be an https:// or http:// URL"), "{err}");
        // https upstreams are checked against the public roots, and a ca_file's CAs.
        let https = Config::parse(&format!(
            "[proxies.p]\nupstream = \"https://api.example.com/v1\"\ncredential_file = \"{}\"\n",
            key.display()
        ))
        .unwrap();
        assert!(https.proxies["p"].tls.is_some());
        let no_ca = dir.path().join("empty.pem");
        std::fs::write(&no_ca, "not a certificate\n").unwrap();
        for (upstream, says) in [
            ("https://x/", "holds no CERTIFICATE block"),
            ("http://x/", "ca_file is for an https:// upstream"),
        ] {
            let err = Config::parse(&format!(
                "[proxies.p]\nupstream = \"{upstream}\"\ncredential_file = \"{}\"\n\
                 ca_file = \"{}\"\n",
                key.display(),
                no_ca.display()
            ))
            .unwrap_err()
            .to_string();
            assert!(err.contains(says), "{err}");
        }
        let open = dir.path().join("open");
        std::fs::create_dir(&open).unwrap();
        let loose = write_key(&open, 0o644);
        let err = Config::parse(&format!(
            "[proxies.p]\nupstream = \"http://x/\"\ncredential_file = \"{}\"\n",
            loose.display()
        ))
        .unwrap_err()
        .to_string();
        assert!(err.contains("chmod 600"), "{err}");
        assert!(!err.contains("sk-real-secret"), "{err}");
        let err = Config::parse(
            "[profiles.a]\nimage = \"x:1\"\ntimeout_seconds = 60\ntoken_scopes = [\"root\"]\n",
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("unknown resource \"root\""), "{err}");
    }

    #[test]
    fn the_agent_profile_gets_a_read_token_on_the_runner_network() {
        let config = Config::builtin();
        let agent = &config.profiles["agent"];
        assert_eq!(agent.network, super::super::Network::Runner);
        assert_eq!(
            agent.run_token_scopes(),
            Some(vec![bus_api::auth::Scope::Read])
        );
        assert_eq!(config.profiles["codex"].run_token_scopes(), None);
    }
}

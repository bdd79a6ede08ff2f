//! `bus auth status|token|reload`: whom the token speaks for, getting a new one from an API
//! key, and making busd re-read it. The token itself is never printed.

use std::io::Write as _;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::Duration;

use bus::proto::daemon::v1::{CreateTokenRequest, GetInfoRequest, ReloadCredentialsRequest};
use tonic::metadata::MetadataValue;

use crate::commands::daemon::expiry;
use crate::context::Ctx;
use crate::error::CliError;

/// The environment variable holding an account's API key.
pub const API_KEY_ENV: &str = "BUS_API_KEY";
/// Metadata key busd reads the API key from (`CreateToken` only).
const META_API_KEY: &str = "bus-api-key";
/// Metadata keys of the per-call token overrides (see `context`).
const META_TOKEN_FILE: &str = "bus-token-file";
const META_TOKEN: &str = "bus-token";
/// Largest API key file read.
const MAX_KEY_BYTES: u64 = 16 * 1024;

/// Credentials.
#[derive(Debug, clap::Subcommand)]
pub enum Auth {
    /// Show whom the token speaks for: identity, scopes, expiry and source (never the token).
    Status(StatusArgs),
    /// Exchange the account's API key for a token and save it (mode 0600).
    Token(TokenArgs),
    /// Make busd re-read the token now, and show whom it speaks for.
    Reload(ReloadArgs),
}

/// `bus auth status`.
#[derive(Debug, clap::Args)]
pub struct StatusArgs {}

/// `bus auth reload`.
#[derive(Debug, clap::Args)]
pub struct ReloadArgs {}

/// `bus auth token`.
#[derive(Debug, clap::Args)]
pub struct TokenArgs {
    /// Space-separated resources the token may use, e.g. "container:read container:run"
    /// [default: every resource the account may hold]
    #[arg(long, value_name = "RESOURCES")]
    resources: Option<String>,
    /// How long the token lives, e.g. 1h or 8h (at most 24h) [default: the runner's, 1h]
    #[arg(long, value_name = "DURATION", value_parser = humantime::parse_duration)]
    ttl: Option<Duration>,
    /// Read the account's API key from this file (mode 0600) [default: $BUS_API_KEY, else
    /// <config dir>/auth/api-key]
    #[arg(long, value_name = "PATH")]
    api_key_file: Option<PathBuf>,
}

impl Auth {
    /// Runs the command; `token_file` is `--token-file` (where `token` saves).
    pub async fn run(self, ctx: &Ctx, token_file: Option<&Path>) -> Result<u8, CliError> {
        match self {
            Auth::Status(_) => status(ctx).await,
            Auth::Reload(_) => reload(ctx).await,
            Auth::Token(args) => args.run(ctx, token_file).await,
        }
    }
}

async fn status(ctx: &Ctx) -> Result<u8, CliError> {
    let info = ctx
        .daemon()
        .get_info(ctx.request(GetInfoRequest {}))
        .await?
        .into_inner();
    let dash = |s: &str| {
        if s.is_empty() {
            "-".to_owned()
        } else {
            s.to_owned()
        }
    };
    println!("identity:  {}", dash(&info.identity));
    println!("scopes:    {}", dash(&info.scopes.join(" ")));
    println!("expires:   {}", expiry(info.token_expires_at.as_ref()));
    println!("source:    {}", info.token_source);
    println!("upstream:  {}", info.upstream_origin);
    if info.token_error.is_empty() {
        Ok(0)
    } else {
        Err(CliError::Local(info.token_error))
    }
}

async fn reload(ctx: &Ctx) -> Result<u8, CliError> {
    let reloaded = ctx
        .daemon()
        .reload_credentials(ctx.request(ReloadCredentialsRequest {}))
        .await?
        .into_inner();
    println!("identity:  {}", reloaded.identity);
    println!("scopes:    {}", reloaded.scopes.join(" "));
    println!("expires:   {}", expiry(reloaded.token_expires_at.as_ref()));
    println!("source:    {}", reloaded.token_source);
    Ok(0)
}

impl TokenArgs {
    async fn run(self, ctx: &Ctx, token_file: Option<&Path>) -> Result<u8, CliError> {
        let default_key_file = default_api_key_file();
        let api_key = read_api_key(
            self.api_key_file.as_deref(),
            |name| std::env::var(name).ok(),
            &default_key_file,
        )?;
        let destination = token_file
            .map(Path::to_path_buf)
            .unwrap_or_else(|| bus::config_dir().join("auth").join("api-token"));
        let mut request = ctx.request(CreateTokenRequest {
            // Empty: every resource the account may hold.
            resources: self.resources.unwrap_or_default(),
            ttl_seconds: self.ttl.map_or(0, |d| d.as_secs().max(1)),
        });
        let key = MetadataValue::try_from(api_key.as_str()).map_err(|_| {
            CliError::Local(
                "the API key holds characters no API key has; check the file or BUS_API_KEY"
                    .to_owned(),
            )
        })?;
        request.metadata_mut().insert(META_API_KEY, key);
        let issued = ctx.daemon().create_token(request).await?.into_inner();
        write_secret_atomically(&destination, &issued.token).map_err(|e| {
            CliError::Local(format!(
                "cannot save the token to {}: {e}",
                destination.display()
            ))
        })?;

        // Ask busd to read it back: proves it is usable and names the account it is for.
        let mut check = ctx.request(ReloadCredentialsRequest {});
        if let Some(path) = destination
            .to_str()
            .and_then(|p| MetadataValue::try_from(p).ok())
        {
            check.metadata_mut().remove(META_TOKEN);
            check.metadata_mut().insert(META_TOKEN_FILE, path);
        }
        let identity = match ctx.daemon().reload_credentials(check).await {
            Ok(reply) => format!(" for {}", reply.into_inner().identity),
            Err(_) => String::new(),
        };
        println!(
            "saved a token{identity} to {} (scopes: {}; expires {})",
            destination.display(),
            issued.scope,
            expiry(issued.expires_at.as_ref())
        );
        if token_file.is_none() {
            if let Some(name) = ["BUS_AI_TOKEN", "BUS_API_TOKEN"]
                .into_iter()
                .find(|n| std::env::var(n).is_ok_and(|v| !v.trim().is_empty()))
            {
                eprintln!(
                    "bus: note: ${name} is set and takes precedence over {}; unset it to use the new token",
                    destination.display()
                );
            }
        }
        Ok(0)
    }
}

/// Where `bus auth token` looks for the API key when neither `--api-key-file` nor
/// `$BUS_API_KEY` names one (and where `bus local up` keeps the local account's key):
/// `<config dir>/auth/api-key`.
pub fn default_api_key_file() -> PathBuf {
    bus::config_dir().join("auth").join("api-key")
}

/// The API key: `--api-key-file`, else `$BUS_API_KEY`, else `default_file` when it exists.
/// A file must not be readable by group or others. Never an argument.
fn read_api_key(
    file: Option<&Path>,
    env: impl Fn(&str) -> Option<String>,
    default_file: &Path,
) -> Result<String, CliError> {
    let from_env = || env(API_KEY_ENV).filter(|k| !k.trim().is_empty());
    let file = match (file, from_env()) {
        (Some(path), _) => Some(path),
        (None, Some(_)) => None,
        (None, None) => default_file.exists().then_some(default_file),
    };
    let key = match file {
        Some(path) => {
            let meta = std::fs::metadata(path).map_err(|e| {
                CliError::Local(format!(
                    "cannot read the API key file {}: {e}",
                    path.display()
                ))
            })?;
            let mode = meta.permissions().mode() & 0o777;
            if mode & 0o077 != 0 {
                return Err(CliError::Local(format!(
                    "the API key file {} is readable by other users (mode {mode:o}); run `chmod 600 {}` and try again",
                    path.display(),
                    path.display()
                )));
            }
            if meta.len() > MAX_KEY_BYTES {
                return Err(CliError::Local(format!(
                    "{} is larger than any API key",
                    path.display()
                )));
            }
            std::fs::read_to_string(path).map_err(|e| {
                CliError::Local(format!(
                    "cannot read the API key file {}: {e}",
                    path.display()
                ))
            })?
        }
        None => from_env().unwrap_or_default(),
    };
    let key = key.trim().to_owned();
    if key.is_empty() {
        return Err(CliError::Local(format!(
            "no API key: set {API_KEY_ENV}, pass --api-key-file PATH, or save it in {} (mode \
             0600; `bus local up` does for its account); API keys are never accepted as \
             arguments",
            default_file.display()
        )));
    }
    Ok(key)
}

/// Writes `secret` to `path` so that no reader ever sees a partial file or a moment where it
/// is readable by others: a fresh 0600 file in the same directory, synced, then renamed over
/// `path`. The directory is created 0700 if missing.
pub fn write_secret_atomically(path: &Path, secret: &str) -> std::io::Result<()> {
    let dir = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    if !dir.exists() {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)?;
    }
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "token".to_owned());
    let nonce = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    let temp = dir.join(format!(".{name}.tmp-{}-{nonce}", std::process::id()));
    let written = (|| {
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&temp)?;
        // The umask cannot widen 0600, but a pre-set ACL default could: be explicit.
        file.set_permissions(std::fs::Permissions::from_mode(0o600))?;
        file.write_all(secret.trim().as_bytes())?;
        file.write_all(b"\n")?;
        file.sync_all()?;
        std::fs::rename(&temp, path)?;
        if let Ok(dir) = std::fs::File::open(dir) {
            let _ = dir.sync_all();
        }
        Ok(())
    })();
    if written.is_err() {
        let _ = std::fs::remove_file(&temp);
    }
    written
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::MetadataExt;

    #[test]
    fn the_token_file_is_written_0600_and_replaced_whole() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("auth").join("api-token");
        write_secret_atomically(&path, "first").unwrap();
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "first\n");
        assert_eq!(std::fs::metadata(&path).unwrap().mode() & 0o777, 0o600);
        assert_eq!(
            std::fs::metadata(path.parent().unwrap()).unwrap().mode() & 0o777,
            0o700
        );

        // An old, too-open file is replaced by a private one, not rewritten in place.
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        let old_inode = std::fs::metadata(&path).unwrap().ino();
        write_secret_atomically(&path, "second").unwrap();
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "second\n");
        let meta = std::fs::metadata(&path).unwrap();
        assert_eq!(meta.mode() & 0o777, 0o600);
        assert_ne!(meta.ino(), old_inode);
        let names: Vec<_> = std::fs::read_dir(path.parent().unwrap())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, ["api-token"], "no temporary file is left behind");
    }

    #[test]
    fn the_api_key_comes_from_a_private_file_or_the_environment() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("key");
        std::fs::write(&file, "sk-file\n").unwrap();
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o600)).unwrap();
        let default = dir.path().join("auth").join("api-key");
        let env = |name: &str| (name == API_KEY_ENV).then(|| "sk-env".to_owned());
        assert_eq!(read_api_key(Some(&file), env, &default).unwrap(), "sk-file");
        assert_eq!(read_api_key(None, env, &default).unwrap(), "sk-env");

        let err = read_api_key(None, |_| None, &default)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("BUS_API_KEY")
                && err.contains("--api-key-file")
                && err.contains(&default.display().to_string()),
            "{err}"
        );

        // The default file comes last: after the flag and the environment.
        std::fs::create_dir_all(default.parent().unwrap()).unwrap();
        std::fs::write(&default, "sk-default\n").unwrap();
        std::fs::set_permissions(&default, std::fs::Permissions::from_mode(0o600)).unwrap();
        assert_eq!(
            read_api_key(None, |_| None, &default).unwrap(),
            "sk-default"
        );
        assert_eq!(read_api_key(None, env, &default).unwrap(), "sk-env");
        assert_eq!(read_api_key(Some(&file), env, &default).unwrap(), "sk-file");
        std::fs::set_permissions(&default, std::fs::Permissions::from_mode(0o640)).unwrap();
        let err = read_api_key(None, |_| None, &default)
            .unwrap_err()
            .to_string();
        assert!(err.contains("chmod 600"), "{err}");

        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o644)).unwrap();
        let err = read_api_key(Some(&file), env, &default)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains(&format!("chmod 600 {}", file.display())),
            "{err}"
        );
        assert!(!err.contains("sk-file"));
    }
}

//! What a profile with `token_scopes` gives its runs: `BUS_AI_API_URL` (the runner as seen
//! from the container), `BUS_AI_TOKEN` (a token minted for the run only), `BUS_RUN_ID` and,
//! per proxy the
//! profile lists, `NAME_BASE_URL` (the runner's proxy route) with the run token as its key.
//!
//! The run token carries the account (`sub`), the profile's scopes that the creating token
//! also holds, its grant, `run` (the run's id), `role` (`agent` unless the run names one) and
//! `participant` (when the run names one). It expires when the run's timeout would end it (plus
//! [`QUEUE_ALLOWANCE`]) and is refused as soon as the run has ended. It is put into the
//! container's environment only: never into the run's record, a log line or an error.

use std::time::Duration;

use bus_api::auth::{Claims, Scope};

use crate::auth::Keys;
use crate::config::Config;
use crate::runs::spec::RunSpec;

/// The run token's role when the run names none.
pub const AGENT_ROLE: &str = "agent";
/// The env variable with the runner's origin as seen from the container.
pub const API_URL_ENV: &str = "BUS_AI_API_URL";
/// The env variable with the run token.
pub const TOKEN_ENV: &str = "BUS_AI_TOKEN";
/// The env variable with the run's own id.
pub const RUN_ID_ENV: &str = "BUS_RUN_ID";
/// Time a run token lives beyond the run's timeout, for the time a run waits to start.
pub const QUEUE_ALLOWANCE: Duration = Duration::from_secs(120);
/// The route prefix of the egress proxies.
pub const PROXY_PREFIX: &str = "/api/v1/proxy";

/// Why a run cannot be given a token.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    /// The creating token is itself a run token: run tokens mint no tokens.
    #[error(
        "the profile \"{profile}\" gives its runs a token, and a run's token cannot mint \
         another; create this run with the account's own token"
    )]
    Nested {
        /// The run's profile.
        profile: String,
    },
}

/// Whether runs of `spec`'s profile get a token, and if so whether `creator` may create one.
pub fn check(config: &Config, creator: &Claims, spec: &RunSpec) -> Result<(), AgentError> {
    let gets_token = config
        .profile(&spec.profile)
        .is_some_and(|p| p.token_scopes.is_some());
    if gets_token && creator.run.is_some() {
        return Err(AgentError::Nested {
            profile: spec.profile.clone(),
        });
    }
    Ok(())
}

/// The claims of run `run_id`'s token, minted by `creator`'s request.
pub fn run_claims(
    creator: &Claims,
    profile_scopes: &[Scope],
    run_id: &str,
    spec: &RunSpec,
    now: i64,
) -> Claims {
    let scopes: Vec<Scope> = profile_scopes
        .iter()
        .copied()
        .filter(|s| creator.has(*s))
        .collect();
    let life = spec.timeout.saturating_add(QUEUE_ALLOWANCE).as_secs();
    let exp = now.saturating_add(i64::try_from(life).unwrap_or(i64::MAX));
    let mut claims = crate::auth::claims(&creator.sub, &scopes, now, exp);
    claims.grant = creator.grant.clone();
    claims.run = Some(run_id.to_owned());
    claims.role = Some(spec.role.clone().unwrap_or_else(|| AGENT_ROLE.to_owned()));
    claims.participant = spec.participant.clone();
    claims
}

/// Adds the run token and the proxies' settings to `spec`'s environment, when its profile
/// gives runs a token and `origin` (the runner as seen from the container) is known: a runner
/// with no plain-HTTP listener (HTTPS only, or a router tested in-process) gives none.
pub fn equip(
    keys: &Keys,
    config: &Config,
    origin: Option<&str>,
    creator: &Claims,
    run_id: &str,
    spec: &mut RunSpec,
) {
    let Some(profile) = config.profile(&spec.profile) else {
        return;
    };
    let (Some(scopes), Some(origin)) = (profile.run_token_scopes(), origin) else {
        return;
    };
    let now = time::OffsetDateTime::now_utc().unix_timestamp();
    let token = keys.sign(&run_claims(creator, &scopes, run_id, spec, now));
    spec.env.insert(API_URL_ENV.to_owned(), origin.to_owned());
    spec.env.insert(RUN_ID_ENV.to_owned(), run_id.to_owned());
    for name in &profile.proxies {
        if let Some(proxy) = config.proxies.get(name) {
            spec.env.insert(
                proxy.base_url_env.clone(),
                format!("{origin}{PROXY_PREFIX}/{name}"),
            );
            spec.env.insert(proxy.key_env.clone(), token.clone());
        }
    }
    spec.env.insert(TOKEN_ENV.to_owned(), token);
}

/// The runner's origin as a container on [`crate::config::Network::Runner`] sees it, from the
/// address of a plain-HTTP listener: the host's loopback is [`crate::config::RUNNER_HOST`]
/// there, any other address is reached as it is.
pub fn origin_for(addr: std::net::SocketAddr) -> String {
    let ip = addr.ip();
    if ip.is_loopback() || ip.is_unspecified() {
        format!("http://{}:{}", crate::config::RUNNER_HOST, addr.port())
    } else {
        format!("http://{addr}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::tests::keys;

    fn spec_of(profile: &str, role: Option<&str>) -> RunSpec {
        let request: bus_api::runs::CreateRun = serde_json::from_value(serde_json::json!({
            "profile": profile,
            "argv": ["true"],
            "timeout_seconds": 60,
        }))
        .unwrap();
        let mut spec = RunSpec::parse(request, &Config::builtin()).unwrap();
        spec.role = role.map(str::to_owned);
        spec
    }

    #[test]
    fn run_tokens_carry_the_run_and_the_profiles_scopes_the_creator_holds() {
        let (_d, k) = keys();
        let creator = k
            .verify(&k.mint("acct", &[Scope::Read, Scope::Run], Duration::from_secs(600)))
            .unwrap();
        let mut spec = spec_of("agent", None);
        spec.participant = Some("p1".into());
        equip(
            &k,
            &Config::builtin(),
            Some("http://10.0.2.2:8650"),
            &creator,
            "run-1",
            &mut spec,
        );
        assert_eq!(spec.env[API_URL_ENV], "http://10.0.2.2:8650");
        assert_eq!(spec.env[RUN_ID_ENV], "run-1");
        let claims = k.verify(&spec.env[TOKEN_ENV]).unwrap();
        assert_eq!(claims.sub, "acct");
        assert_eq!(claims.scope, "container:read");
        assert_eq!(claims.run.as_deref(), Some("run-1"));
        assert_eq!(claims.role.as_deref(), Some("agent"));
        assert_eq!(claims.participant.as_deref(), Some("p1"));
        assert_eq!(claims.exp - claims.iat, 60 + 120, "bounded by the timeout");

        // The run's own role wins; scopes the creator lacks are not granted.
        let writer = k
            .verify(&k.mint("acct", &[Scope::Run], Duration::from_secs(600)))
            .unwrap();
        let now = time::OffsetDateTime::now_utc().unix_timestamp();
        let c = run_claims(
            &writer,
            &[Scope::Read, Scope::Run],
            "run-2",
            &spec_of("agent", Some("reviewer")),
            now,
        );
        assert_eq!(
            (c.scope.as_str(), c.role.as_deref()),
            ("container:run", Some("reviewer"))
        );
    }

    #[test]
    fn other_profiles_get_nothing_and_run_tokens_mint_nothing() {
        let (_d, k) = keys();
        let creator = k
            .verify(&k.mint("acct", &[Scope::Read], Duration::from_secs(60)))
            .unwrap();
        let mut plain = spec_of("codex", None);
        equip(
            &k,
            &Config::builtin(),
            Some("http://o"),
            &creator,
            "r",
            &mut plain,
        );
        assert!(!plain.env.contains_key(TOKEN_ENV));

        let mut run_token = creator.clone();
        run_token.run = Some("r".into());
        let err = check(&Config::builtin(), &run_token, &spec_of("agent", None)).unwrap_err();
        assert!(err.to_string().contains("cannot mint another"), "{err}");
        assert!(check(&Config::builtin(), &run_token, &plain).is_ok());
        let mut unreachable = spec_of("agent", None);
        equip(
            &k,
            &Config::builtin(),
            None,
            &creator,
            "r",
            &mut unreachable,
        );
        assert!(!unreachable.env.contains_key(TOKEN_ENV));
    }

    #[test]
    fn origins_as_seen_from_a_container() {
        assert_eq!(
            origin_for("127.0.0.1:8650".parse().unwrap()),
            "http://10.0.2.2:8650"
        );
        assert_eq!(
            origin_for("0.0.0.0:9".parse().unwrap()),
            "http://10.0.2.2:9"
        );
        assert_eq!(
            origin_for("192.0.2.2:9".parse().unwrap()),
            "http://192.0.2.2:9"
        );
    }
}

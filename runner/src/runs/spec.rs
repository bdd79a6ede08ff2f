//! Parse, then act: a [`CreateRun`] request becomes a validated [`RunSpec`] before the store or
//! the engine is touched. Every violation is one sentence naming the field and its bound.

use std::collections::BTreeMap;
use std::time::Duration;

use std::collections::HashSet;
use std::net::IpAddr;

use bus_api::runs::{MAX_ARGV, MAX_PORTS, MAX_SPEC_BYTES, MAX_TIMEOUT_SECONDS, RUN_ID_PREFIX};
use bus_api::{CreateRun, Port, Protocol, StorageMount};

use crate::config::checks::{check_env, check_image, check_storage};
use crate::config::{Config, Network};
use crate::engine::{ContainerSpec, Mount, OWNER_LABEL, RUN_LABEL, RUNNER_LABEL};

/// Why a run request is refused.
#[derive(Debug, thiserror::Error)]
pub enum SpecError {
    /// A field is malformed or out of bounds; the text names which.
    #[error("{0}")]
    Invalid(String),
    /// The named profile does not exist.
    #[error("there is no run profile \"{name}\"; valid profiles: {}", valid.join(", "))]
    UnknownProfile {
        /// The name asked for.
        name: String,
        /// The profiles that exist.
        valid: Vec<String>,
    },
}

/// Longest run name.
pub const MAX_NAME_CHARS: usize = 128;
/// Most labels on a run.
pub const MAX_LABELS: usize = 64;
/// Longest label key.
pub const MAX_LABEL_KEY_BYTES: usize = 256;
/// Longest working directory.
pub const MAX_WORKDIR_BYTES: usize = 4096;
/// Longest participant.
pub const MAX_PARTICIPANT_CHARS: usize = 128;
/// Longest role.
pub const MAX_ROLE_BYTES: usize = 64;
/// Label keys with this prefix are the runner's own.
pub const RESERVED_LABEL_PREFIX: &str = "bus.";

/// A run request that has passed every check, with its profile applied.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunSpec {
    /// The profile the run uses.
    pub profile: String,
    /// The image to run.
    pub image: String,
    /// The command; empty means the image's default.
    pub argv: Vec<String>,
    /// The environment: the profile's, overridden by the request's.
    pub env: BTreeMap<String, String>,
    /// The working directory, if given.
    pub workdir: Option<String>,
    /// The human name, if given.
    pub name: Option<String>,
    /// Who the run is for, if given.
    pub participant: Option<String>,
    /// The role the run acts in, if given.
    pub role: Option<String>,
    /// Whether the run is a service: started again when its command fails, with no timeout
    /// of its own.
    pub service: bool,
    /// Whether the run is deleted, with its stored output, once it has ended.
    pub auto_remove: bool,
    /// The caller's labels.
    pub labels: BTreeMap<String, String>,
    /// When to kill the run.
    pub timeout: Duration,
    /// The container's network.
    pub network: Network,
    /// Ports to publish (only with [`Network::Bridge`]).
    pub ports: Vec<Port>,
    /// Whether the command gets a terminal (stderr is merged into stdout).
    pub tty: bool,
    /// Whether the command's stdin stays open for an attached client.
    pub stdin: bool,
    /// Where to mount the account's storage, normalized (`/data`, subpath `a/b`).
    pub storage: Option<StorageMount>,
    /// The memory limit in MiB, if any.
    pub memory_mb: Option<u32>,
    /// How much output the runner stores before it kills the run, in MiB, if there is a limit.
    pub max_output_mb: Option<u32>,
}

fn invalid(msg: impl Into<String>) -> SpecError {
    SpecError::Invalid(msg.into())
}

fn no_nul(field: &str, value: &str) -> Result<(), SpecError> {
    if value.contains('\0') {
        return Err(invalid(format!("{field} must not contain NUL bytes")));
    }
    Ok(())
}

impl RunSpec {
    /// Validates `req` against the bounds and `config`'s profiles.
    pub fn parse(req: CreateRun, config: &Config) -> Result<RunSpec, SpecError> {
        // A run that publishes ports needs a network: without a profile named, it gets the
        // one the deployment keeps for that.
        let profile_name = req.profile.unwrap_or_else(|| {
            if req.ports.is_empty() {
                config.default_profile.clone()
            } else {
                config.ports_profile.clone()
            }
        });
        let profile = config
            .profile(&profile_name)
            .ok_or_else(|| SpecError::UnknownProfile {
                name: profile_name.clone(),
                valid: config.profile_names(),
            })?;

        let image = match req.image {
            Some(image) => {
                if image.trim().is_empty() {
                    return Err(invalid(
                        "image must not be empty; leave it out to use the profile's",
                    ));
                }
                check_image(&image).map_err(invalid)?;
                image
            }
            None => profile.image.clone(),
        };

        if req.argv.len() > MAX_ARGV {
            return Err(invalid(format!(
                "argv has {} entries; at most {MAX_ARGV} are allowed",
                req.argv.len()
            )));
        }
        for (i, arg) in req.argv.iter().enumerate() {
            no_nul(&format!("argv[{i}]"), arg)?;
        }

        for (key, value) in &req.env {
            check_env(key, value).map_err(invalid)?;
        }

        if req.labels.len() > MAX_LABELS {
            return Err(invalid(format!(
                "labels has {} entries; at most {MAX_LABELS} are allowed",
                req.labels.len()
            )));
        }
        for (key, value) in &req.labels {
            if key.is_empty() || key.len() > MAX_LABEL_KEY_BYTES {
                return Err(invalid(format!(
                    "label keys must be 1 to {MAX_LABEL_KEY_BYTES} bytes long"
                )));
            }
            if key.starts_with(RESERVED_LABEL_PREFIX) {
                return Err(invalid(format!(
                    "label key \"{}\" uses the reserved prefix \"{RESERVED_LABEL_PREFIX}\"",
                    key.escape_debug()
                )));
            }
            no_nul("label keys", key)?;
            no_nul(&format!("labels[\"{key}\"]"), value)?;
        }

        let spec_bytes: usize = req.argv.iter().map(String::len).sum::<usize>()
            + req
                .env
                .iter()
                .map(|(k, v)| k.len() + v.len())
                .sum::<usize>()
            + req
                .labels
                .iter()
                .map(|(k, v)| k.len() + v.len())
                .sum::<usize>();
        if spec_bytes > MAX_SPEC_BYTES {
            return Err(invalid(format!(
                "argv, env and labels total {spec_bytes} bytes; at most {MAX_SPEC_BYTES} are allowed"
            )));
        }

        if let Some(workdir) = &req.workdir {
            if !workdir.starts_with('/') {
                return Err(invalid("workdir must be an absolute path"));
            }
            if workdir.len() > MAX_WORKDIR_BYTES {
                return Err(invalid(format!(
                    "workdir must be at most {MAX_WORKDIR_BYTES} bytes"
                )));
            }
            no_nul("workdir", workdir)?;
        }

        if let Some(name) = &req.name {
            if name.is_empty() || name.chars().count() > MAX_NAME_CHARS {
                return Err(invalid(format!(
                    "name must be 1 to {MAX_NAME_CHARS} characters long"
                )));
            }
            if name.chars().any(char::is_control) {
                return Err(invalid("name must not contain control characters"));
            }
            if name.starts_with(RUN_ID_PREFIX) {
                return Err(invalid(format!(
                    "name must not start with \"{RUN_ID_PREFIX}\", which marks run ids"
                )));
            }
        }
        if let Some(participant) = &req.participant {
            if participant.is_empty() || participant.chars().count() > MAX_PARTICIPANT_CHARS {
                return Err(invalid(format!(
                    "participant must be 1 to {MAX_PARTICIPANT_CHARS} characters long"
                )));
            }
            if participant.chars().any(char::is_control) {
                return Err(invalid("participant must not contain control characters"));
            }
        }
        if let Some(role) = &req.role {
            check_role(role).map_err(invalid)?;
        }

        if req.service {
            if !req.ports.iter().any(|p| p.protocol == Protocol::Tcp) {
                return Err(invalid(
                    "a service must publish a TCP port (ports), which tells when it is ready",
                ));
            }
            if req.timeout_seconds.is_some() {
                return Err(invalid(
                    "a service has no timeout of its own (the plan's run-seconds bound it); \
                     leave timeout_seconds out",
                ));
            }
        }
        let timeout = match req.timeout_seconds {
            Some(0) => return Err(invalid("timeout_seconds must be at least 1")),
            Some(t) if t > MAX_TIMEOUT_SECONDS => {
                return Err(invalid(format!(
                    "timeout_seconds is {t}; at most {MAX_TIMEOUT_SECONDS} (one day) is allowed"
                )));
            }
            Some(t) => Duration::from_secs(t.into()),
            None => profile.timeout(),
        };

        check_ports(&req.ports)?;
        if !req.ports.is_empty() && profile.network == Network::None {
            let allowing: Vec<&str> = config
                .profiles
                .iter()
                .filter(|(_, p)| p.network != Network::None)
                .map(|(name, _)| name.as_str())
                .collect();
            return Err(invalid(format!(
                "ports cannot be published: the profile \"{profile_name}\" has network \"none\"; {}",
                if allowing.is_empty() {
                    "no profile of this runner allows a network (its operator can set \
                     network = \"bridge\" on one)"
                        .to_owned()
                } else {
                    format!(
                        "use a profile whose network allows them: {}",
                        allowing.join(", ")
                    )
                }
            )));
        }

        let storage = match req.storage.or_else(|| profile.storage.clone()) {
            Some(storage) => Some(check_storage(&storage).map_err(invalid)?),
            None => None,
        };

        let mut env = profile.env.clone();
        env.extend(req.env);
        Ok(RunSpec {
            profile: profile_name,
            image,
            argv: req.argv,
            env,
            workdir: req.workdir,
            name: req.name,
            participant: req.participant,
            role: req.role,
            service: req.service,
            auto_remove: req.auto_remove,
            labels: req.labels,
            timeout,
            network: profile.network,
            ports: req.ports,
            tty: req.tty,
            stdin: req.stdin,
            storage,
            memory_mb: profile.memory_limit_mb(),
            max_output_mb: profile.output_limit_mb(),
        })
    }
}

impl RunSpec {
    /// The container this spec asks for, for the run `run_id` of `owner`, labelled as the
    /// runner `runner_id`'s, with the account's storage `mount` when it has one.
    pub fn container(
        &self,
        run_id: &str,
        owner: &str,
        runner_id: &str,
        mount: Option<Mount>,
    ) -> ContainerSpec {
        let mut labels = self.labels.clone();
        labels.insert(RUN_LABEL.to_owned(), run_id.to_owned());
        labels.insert(OWNER_LABEL.to_owned(), owner.to_owned());
        labels.insert(RUNNER_LABEL.to_owned(), runner_id.to_owned());
        ContainerSpec {
            name: format!("bus-{run_id}"),
            image: self.image.clone(),
            argv: self.argv.clone(),
            env: self.env.clone(),
            workdir: self.workdir.clone(),
            labels,
            tty: self.tty,
            stdin: self.stdin,
            network: self.network.mode().to_owned(),
            ports: self.ports.clone(),
            memory_mb: self.memory_mb,
            mount,
        }
    }
}

/// A role: 1 to [`MAX_ROLE_BYTES`] of `a-z`, `0-9`, `_`, `.` and `-`.
pub fn check_role(role: &str) -> Result<(), String> {
    let allowed = |c: char| c.is_ascii_lowercase() || c.is_ascii_digit() || "_.-".contains(c);
    if role.is_empty() || role.len() > MAX_ROLE_BYTES || !role.chars().all(allowed) {
        return Err(format!(
            "role \"{}\" must be 1 to {MAX_ROLE_BYTES} of a-z, 0-9, '_', '.' and '-', e.g. agent",
            role.escape_debug()
        ));
    }
    Ok(())
}

fn check_ports(ports: &[Port]) -> Result<(), SpecError> {
    if ports.len() > MAX_PORTS {
        return Err(invalid(format!(
            "ports has {} entries; at most {MAX_PORTS} are allowed",
            ports.len()
        )));
    }
    let mut inside = HashSet::new();
    let mut outside = HashSet::new();
    for (i, port) in ports.iter().enumerate() {
        if port.container_port == 0 {
            return Err(invalid(format!(
                "ports[{i}].container_port must be between 1 and 65535"
            )));
        }
        if port.host_port == Some(0) {
            return Err(invalid(format!(
                "ports[{i}].host_port must be between 1 and 65535; leave it out to let the \
                 engine pick a free port"
            )));
        }
        let ip: IpAddr = port.host_ip.parse().map_err(|_| {
            invalid(format!(
                "ports[{i}].host_ip \"{}\" is not an IP address; leave it out for 127.0.0.1",
                port.host_ip.escape_debug()
            ))
        })?;
        if !inside.insert((port.container_port, port.protocol)) {
            return Err(invalid(format!(
                "ports[{i}] publishes {}/{} a second time",
                port.container_port,
                port.protocol.as_str()
            )));
        }
        if let Some(host_port) = port.host_port {
            if !outside.insert((ip, host_port, port.protocol)) {
                return Err(invalid(format!(
                    "ports[{i}] binds {}:{host_port}/{} a second time",
                    port.host_ip,
                    port.protocol.as_str()
                )));
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(req: CreateRun) -> Result<RunSpec, String> {
        RunSpec::parse(req, &Config::builtin()).map_err(|e| match e {
            SpecError::Invalid(detail) => format!("invalid_request: {detail}"),
            other => format!("unknown_profile: {other}"),
        })
    }

    fn argv(args: &[&str]) -> CreateRun {
        CreateRun {
            argv: args.iter().map(|s| s.to_string()).collect(),
            ..Default::default()
        }
    }

    #[test]
    fn defaults_come_from_the_profile() {
        let spec = parse(argv(&["true"])).unwrap();
        assert_eq!(spec.profile, "codex");
        assert_eq!(spec.memory_mb, Some(512));
        assert_eq!((spec.tty, spec.storage.as_ref()), (false, None));
        assert_eq!(spec.image, "localhost/busybox:latest");
        assert_eq!(spec.timeout, Duration::from_secs(600));
        assert_eq!(spec.network, Network::None);
        let spec = parse(CreateRun {
            image: Some("localhost/x".into()),
            timeout_seconds: Some(5),
            ..argv(&["true"])
        })
        .unwrap();
        assert_eq!(
            (spec.image.as_str(), spec.timeout),
            ("localhost/x", Duration::from_secs(5))
        );
    }

    #[test]
    fn unknown_profile_lists_the_valid_ones() {
        let err = parse(CreateRun {
            profile: Some("nope".into()),
            ..argv(&["true"])
        })
        .unwrap_err();
        assert_eq!(
            err,
            "unknown_profile: there is no run profile \"nope\"; valid profiles: agent, codex, service"
        );
    }

    #[test]
    fn bounds_are_named() {
        let cases: Vec<(CreateRun, &str)> = vec![
            (
                argv(&vec!["x"; MAX_ARGV + 1]),
                "argv has 257 entries; at most 256",
            ),
            (argv(&["a\0b"]), "argv[0] must not contain NUL"),
            (
                argv(&[&"x".repeat(MAX_SPEC_BYTES + 1)]),
                "at most 65536 are allowed",
            ),
            (
                CreateRun {
                    timeout_seconds: Some(0),
                    ..argv(&[])
                },
                "timeout_seconds must be at least 1",
            ),
            (
                CreateRun {
                    timeout_seconds: Some(MAX_TIMEOUT_SECONDS + 1),
                    ..argv(&[])
                },
                "at most 86400",
            ),
            (
                CreateRun {
                    env: [("".into(), "v".into())].into(),
                    ..argv(&[])
                },
                "env keys must not be empty",
            ),
            (
                CreateRun {
                    env: [("A=B".into(), "v".into())].into(),
                    ..argv(&[])
                },
                "must not contain '='",
            ),
            (
                CreateRun {
                    env: [("A".into(), "v\0".into())].into(),
                    ..argv(&[])
                },
                "env[\"A\"] must not contain NUL",
            ),
            (
                CreateRun {
                    labels: [("bus.owner".into(), "x".into())].into(),
                    ..argv(&[])
                },
                "reserved prefix",
            ),
            (
                CreateRun {
                    name: Some("n".repeat(MAX_NAME_CHARS + 1)),
                    ..argv(&[])
                },
                "name must be 1 to 128",
            ),
            (
                CreateRun {
                    workdir: Some("rel".into()),
                    ..argv(&[])
                },
                "workdir must be an absolute path",
            ),
            (
                CreateRun {
                    image: Some(" ".into()),
                    ..argv(&[])
                },
                "image must not be empty",
            ),
        ];
        for (req, want) in cases {
            let err = parse(req).unwrap_err();
            assert!(err.starts_with("invalid_request: "), "{err}");
            assert!(err.contains(want), "{err} should contain {want}");
        }
    }

    fn port(container_port: u16) -> Port {
        Port {
            container_port,
            host_port: None,
            protocol: Default::default(),
            host_ip: "127.0.0.1".into(),
        }
    }

    #[test]
    fn ports_need_a_network() {
        // Without a profile named, a run that publishes ports gets the ports profile.
        let req = CreateRun {
            ports: vec![port(8080)],
            ..argv(&["true"])
        };
        let spec = parse(req.clone()).unwrap();
        assert_eq!(
            (spec.profile.as_str(), spec.network, &spec.ports[..]),
            ("service", Network::Bridge, &[port(8080)][..])
        );
        // A profile without a network refuses them, naming the ones that allow them.
        let codex = CreateRun {
            profile: Some("codex".into()),
            ..req.clone()
        };
        let err = parse(codex.clone()).unwrap_err();
        assert!(
            err.starts_with("invalid_request: ports cannot be published: the profile \"codex\" has network \"none\""),
            "{err}"
        );
        assert!(err.contains("allows them: agent, service"), "{err}");

        let mut config = Config::builtin();
        let mut web = config.profiles["codex"].clone();
        web.network = Network::Bridge;
        config.profiles.insert("web".into(), web);
        let err = RunSpec::parse(codex.clone(), &config).unwrap_err();
        assert!(
            err.to_string().contains("allows them: agent, service, web"),
            "{}",
            err.to_string()
        );
        // With no profile that has a network, the operator is told how to make one.
        let mut none = Config::builtin();
        none.profiles.remove("service");
        none.profiles.remove("agent");
        let err = RunSpec::parse(codex, &none).unwrap_err().to_string();
        assert!(err.contains("network = \"bridge\""), "{err}");
        let spec = RunSpec::parse(
            CreateRun {
                profile: Some("web".into()),
                ..req
            },
            &config,
        )
        .unwrap();
        assert_eq!(spec.ports, [port(8080)]);
        assert_eq!(spec.network, Network::Bridge);

        let bad: Vec<(Vec<Port>, &str)> = vec![
            (
                vec![port(0)],
                "ports[0].container_port must be between 1 and 65535",
            ),
            (
                vec![Port {
                    host_port: Some(0),
                    ..port(1)
                }],
                "ports[0].host_port must be between 1",
            ),
            (
                vec![Port {
                    host_ip: "localhost".into(),
                    ..port(1)
                }],
                "ports[0].host_ip \"localhost\" is not an IP address",
            ),
            (
                vec![port(1), port(1)],
                "ports[1] publishes 1/tcp a second time",
            ),
            (
                vec![
                    Port {
                        host_port: Some(9000),
                        ..port(1)
                    },
                    Port {
                        host_port: Some(9000),
                        ..port(2)
                    },
                ],
                "ports[1] binds 127.0.0.1:9000/tcp a second time",
            ),
            (
                (1..=17).map(port).collect(),
                "ports has 17 entries; at most 16",
            ),
        ];
        for (ports, want) in bad {
            let err = RunSpec::parse(
                CreateRun {
                    profile: Some("web".into()),
                    ports,
                    ..argv(&[])
                },
                &config,
            )
            .unwrap_err();
            let detail = err.to_string();
            assert!(detail.contains(want), "{detail} should contain {want}");
        }
    }

    #[test]
    fn storage_is_checked_and_normalized() {
        let mount = |mount_path: &str, subpath: Option<&str>| StorageMount {
            mount_path: mount_path.into(),
            subpath: subpath.map(Into::into),
        };
        assert_eq!(
            check_storage(&mount("/data//x/", Some("a//b/"))).unwrap(),
            mount("/data/x", Some("a/b"))
        );
        for (bad, want) in [
            (mount("data", None), "mount_path must be an absolute path"),
            (mount("/", None), "mount_path must not be /"),
            (mount("/proc", None), "inside /proc"),
            (mount("/usr/local/x", None), "inside /usr"),
            (mount("/etc/", None), "inside /etc"),
            (mount("/a/../b", None), "mount_path must not contain \"..\""),
            (mount("/a", Some("/abs")), "must be relative"),
            (
                mount("/a", Some("x/../../y")),
                "subpath must not contain \"..\"",
            ),
            (mount("/a", Some("./x")), "subpath must not contain \".\""),
            (mount("/a", Some("")), "subpath must name a directory"),
            (mount("/a", Some("x\ny")), "control characters"),
            (mount("/a", Some(&"x".repeat(1025))), "at most 1024 bytes"),
            (
                mount("/a", Some(&"x".repeat(256))),
                "at most 255 are allowed",
            ),
        ] {
            let err = check_storage(&bad).unwrap_err();
            assert!(err.contains(want), "{err} should contain {want}");
        }
        // The agent profile mounts storage at /data; a request's mount wins.
        let spec = parse(CreateRun {
            profile: Some("agent".into()),
            ..argv(&["true"])
        })
        .unwrap();
        assert_eq!(spec.storage, Some(mount("/data", None)));
        assert_eq!(spec.env["AGENT_HOME"], "/data");
        let spec = parse(CreateRun {
            profile: Some("agent".into()),
            storage: Some(mount("/work", Some("p"))),
            tty: true,
            ..argv(&["true"])
        })
        .unwrap();
        assert_eq!(spec.storage, Some(mount("/work", Some("p"))));
        assert!(spec.tty);
        let err = parse(CreateRun {
            storage: Some(mount("/a", Some(".."))),
            ..argv(&["true"])
        })
        .unwrap_err();
        assert!(
            err.starts_with("invalid_request: subpath must not"),
            "{err}"
        );
    }

    #[test]
    fn request_env_overrides_profile_env() {
        let mut config = Config::builtin();
        config.profiles.get_mut("codex").unwrap().env = [
            ("A".to_owned(), "1".to_owned()),
            ("B".to_owned(), "2".to_owned()),
        ]
        .into();
        let req = CreateRun {
            env: [("B".into(), "3".into())].into(),
            ..argv(&["env"])
        };
        let spec = RunSpec::parse(req, &config).unwrap();
        assert_eq!(spec.env["A"], "1");
        assert_eq!(spec.env["B"], "3");
    }
}

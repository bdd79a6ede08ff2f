//! Usage mistakes that deserve more than clap's own message.

use std::ffi::OsString;

use bus::proto::containers::v1::PortMapping;
use clap::error::{ContextKind, ContextValue, ErrorKind};

/// One line for a usage mistake clap's own message would not fix, or `None` to leave it
/// to clap. `is_containers_command` tells the names (and aliases) `containers` takes.
pub fn hint(
    error: &clap::Error,
    args: &[OsString],
    is_containers_command: impl Fn(&str) -> bool,
) -> Option<String> {
    let args: Vec<String> = args
        .iter()
        .map(|a| a.to_string_lossy().into_owned())
        .collect();
    match error.kind() {
        ErrorKind::UnknownArgument => {
            let unexpected = context(error, ContextKind::InvalidArg)?;
            // `containers run` or `containers exec`, where the word came before the command.
            let verb = args
                .windows(2)
                .position(|w| w[0] == "containers" && (w[1] == "run" || w[1] == "exec"))?
                + 1;
            if unexpected.starts_with('-') {
                docker_only_flag(unexpected)
            } else {
                command_without_dashes(&args, verb, unexpected)
            }
        }
        ErrorKind::InvalidSubcommand => containers_command_at_top(
            error,
            &args,
            context(error, ContextKind::InvalidSubcommand)?,
            is_containers_command,
        ),
        _ => None,
    }
}

/// The text clap's error holds for `kind`.
fn context(error: &clap::Error, kind: ContextKind) -> Option<&str> {
    match error.get(kind) {
        Some(ContextValue::String(text)) => Some(text),
        _ => None,
    }
}

/// `bus` and `words` as a shell command line.
fn command_line<S: AsRef<str>>(words: &[S]) -> String {
    let shown: Vec<String> = words.iter().map(|a| shell_quote(a.as_ref())).collect();
    format!("bus {}", shown.join(" "))
}

/// For a command given to `containers run` or `containers exec` (`args[verb]`) without `--`
/// before it (clap sees its first word as an unexpected argument): one line showing the
/// command line with the `--` in place, e.g. `bus containers run -- sh -c 'echo hi'`.
fn command_without_dashes(args: &[String], verb: usize, unexpected: &str) -> Option<String> {
    let at = verb
        + 1
        + args[verb + 1..]
            .iter()
            .take_while(|a| *a != "--")
            .position(|a| a == unexpected)?;
    let mut fixed: Vec<&str> = args[..at].iter().map(String::as_str).collect();
    fixed.push("--");
    fixed.extend(args[at..].iter().map(String::as_str));
    let mut hint = format!(
        "unexpected argument '{unexpected}': the command goes after `--`: {}",
        command_line(&fixed)
    );
    // `docker run IMAGE CMD...` habits: the word may be the image.
    let image_given = args[verb + 1..at]
        .iter()
        .any(|a| a == "--image" || a.starts_with("--image="));
    if args[verb] == "run" && !image_given {
        let mut as_image: Vec<&str> = args[..at].iter().map(String::as_str).collect();
        as_image.extend(["--image", unexpected]);
        if at + 1 < args.len() {
            as_image.push("--");
            as_image.extend(args[at + 1..].iter().map(String::as_str));
        }
        hint.push_str(&format!(
            " (or, if {} is the image: {})",
            shell_quote(unexpected),
            command_line(&as_image)
        ));
    }
    Some(hint)
}

/// For a `containers` command given at the top, as docker takes `docker ps` and `docker run`
/// (clap sees an unknown subcommand): one line showing the command line with `containers` in
/// place, e.g. `bus containers ps`.
fn containers_command_at_top(
    error: &clap::Error,
    args: &[String],
    word: &str,
    is_containers_command: impl Fn(&str) -> bool,
) -> Option<String> {
    // At the top, not within another group (`bus images ps`): clap's usage line names the
    // command it was parsing.
    let at_top = match error.get(ContextKind::Usage) {
        Some(ContextValue::StyledStr(usage)) => {
            usage.to_string().contains("bus [OPTIONS] <COMMAND>")
        }
        _ => false,
    };
    if !at_top || !is_containers_command(word) {
        return None;
    }
    let at = args.iter().position(|a| a == word)?;
    let mut fixed: Vec<&str> = args.iter().map(String::as_str).collect();
    fixed.insert(at, "containers");
    Some(format!(
        "unrecognized subcommand '{word}': it is a containers command: {}",
        command_line(&fixed)
    ))
}

/// Flags of `docker run` and `docker exec` that bus has no flag for, each with where that
/// setting lives in bus.
const DOCKER_ONLY: &[(&[&str], &str)] = &[
    (
        &["-v", "--volume", "--mount"],
        "a run cannot mount host paths; --mount-path DIR mounts the account's persistent \
         storage there (--mount-subpath SUB a directory of it)",
    ),
    (
        &[
            "-m",
            "--memory",
            "--memory-swap",
            "--cpus",
            "--cpu-shares",
            "--pids-limit",
        ],
        "a run's limits come from its profile: choose one with --profile NAME (`bus containers \
         status` lists them)",
    ),
    (
        &["--network", "--net"],
        "a run's network comes from its profile: choose one with --profile NAME (`bus \
         containers status` lists them), or publish a port with -p, which picks one with a \
         bridge network",
    ),
    (
        &["-u", "--user"],
        "commands run as the image's user (its USER); use an image that sets the user you want",
    ),
    (
        &["--entrypoint"],
        "the command after `--` replaces the image's CMD and keeps its ENTRYPOINT; use an image \
         whose ENTRYPOINT is the one you want",
    ),
    (
        &["--restart"],
        "--service starts a long-lived run that fails again (at most 3 times)",
    ),
    (
        &["--privileged", "--cap-add", "--device", "--security-opt"],
        "runs are unprivileged, and no flag changes that",
    ),
];

/// For a `docker run`/`docker exec` flag (`unexpected`, maybe with `=VALUE`) that bus does
/// not take: one line saying where that setting lives in bus, instead of clap's tip to put
/// the flag after `--`, which would make it part of the command.
fn docker_only_flag(unexpected: &str) -> Option<String> {
    let flag = unexpected.split_once('=').map_or(unexpected, |(f, _)| f);
    let (_, why) = DOCKER_ONLY
        .iter()
        .find(|(flags, _)| flags.contains(&flag))?;
    Some(format!(
        "unexpected argument '{flag}', a docker flag: {why}"
    ))
}

/// `arg` as a POSIX shell word.
fn shell_quote(arg: &str) -> String {
    let plain = !arg.is_empty()
        && arg
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "_@%+=:,./-".contains(c));
    if plain {
        arg.to_owned()
    } else {
        format!("'{}'", arg.replace('\'', r"'\''"))
    }
}

/// A `-p` value, `[HOST_IP:][HOST_PORT:]CONTAINER_PORT[/PROTO]` as docker takes it: host
/// port absent or empty means one the engine picks; an IPv6 host address goes in brackets.
pub fn parse_publish(s: &str) -> Result<PortMapping, String> {
    let usage = || {
        format!(
            "expected [HOST_IP:][HOST_PORT:]CONTAINER_PORT[/tcp|udp], e.g. 8080, 8080:80 or \
             127.0.0.1:8080:80/tcp; got {s:?}"
        )
    };
    let (rest, protocol) = match s.rsplit_once('/') {
        Some((rest, protocol @ ("tcp" | "udp"))) => (rest, protocol),
        Some(_) => return Err(usage()),
        None => (s, "tcp"),
    };
    let (host_ip, ports) = match rest.strip_prefix('[') {
        Some(bracketed) => {
            let (ip, ports) = bracketed.split_once("]:").ok_or_else(usage)?;
            (Some(ip), ports)
        }
        None => match rest.matches(':').count() {
            0 | 1 => (None, rest),
            2 => {
                let (ip, ports) = rest.split_once(':').ok_or_else(usage)?;
                (Some(ip), ports)
            }
            _ => return Err(usage()),
        },
    };
    let number = |text: &str| -> Result<u32, String> {
        match text.parse::<u16>() {
            Ok(n) if n > 0 => Ok(n.into()),
            _ => Err(format!(
                "port {text:?} in {s:?} is not a port number from 1 to 65535"
            )),
        }
    };
    let (host_port, container_port) = match ports.split_once(':') {
        Some(("", container)) if host_ip.is_some() => (0, number(container)?),
        Some((host, container)) => (number(host)?, number(container)?),
        None => (0, number(ports)?),
    };
    if let Some(ip) = host_ip {
        ip.parse::<std::net::IpAddr>().map_err(|_| {
            format!("{ip:?} in {s:?} is not an IP address; e.g. 127.0.0.1 or [::1]")
        })?;
    }
    Ok(PortMapping {
        container_port,
        host_port,
        protocol: protocol.to_owned(),
        host_ip: host_ip.unwrap_or_default().to_owned(),
    })
}

#[cfg(test)]
mod tests {
    use super::{parse_publish, shell_quote};

    #[test]
    fn publish_takes_what_docker_takes() {
        let p = |s: &str| {
            parse_publish(s).map(|p| (p.host_ip, p.host_port, p.container_port, p.protocol))
        };
        let tcp = "tcp".to_owned();
        assert_eq!(p("80"), Ok((String::new(), 0, 80, tcp.clone())));
        assert_eq!(p("8080:80"), Ok((String::new(), 8080, 80, tcp.clone())));
        assert_eq!(
            p("127.0.0.1:8080:80/udp"),
            Ok(("127.0.0.1".into(), 8080, 80, "udp".into()))
        );
        assert_eq!(
            p("127.0.0.1::80"),
            Ok(("127.0.0.1".into(), 0, 80, tcp.clone()))
        );
        assert_eq!(p("[::1]:8080:80"), Ok(("::1".into(), 8080, 80, tcp)));
        for bad in [
            "",
            "0",
            "70000",
            "80/sctp",
            "a:80",
            "1:2:3:4",
            "localhost:8080:80",
            "8080:",
        ] {
            let err = parse_publish(bad).unwrap_err();
            assert!(
                !err.contains('\n') && err.contains(&format!("{bad:?}")),
                "{bad}: {err}"
            );
        }
    }

    #[test]
    fn words_are_quoted_only_when_needed() {
        assert_eq!(shell_quote("sh"), "sh");
        assert_eq!(shell_quote("echo hi"), "'echo hi'");
        assert_eq!(shell_quote("it's"), r"'it'\''s'");
        assert_eq!(shell_quote(""), "''");
    }
}

//! Usage mistakes that deserve more than clap's own message.

use std::ffi::OsString;

use clap::error::{ContextKind, ContextValue, ErrorKind};

/// For a command given to `containers run` or `containers exec` without `--` before it (clap
/// sees its first word as an unexpected argument): one line showing the command line with the
/// `--` in place, e.g. `bus containers run -- sh -c 'echo hi'`.
pub fn command_without_dashes(error: &clap::Error, args: &[OsString]) -> Option<String> {
    if error.kind() != ErrorKind::UnknownArgument {
        return None;
    }
    let Some(ContextValue::String(unexpected)) = error.get(ContextKind::InvalidArg) else {
        return None;
    };
    if unexpected.starts_with('-') {
        return None;
    }
    let args: Vec<String> = args
        .iter()
        .map(|a| a.to_string_lossy().into_owned())
        .collect();
    let verb = args
        .windows(2)
        .position(|w| w[0] == "containers" && (w[1] == "run" || w[1] == "exec"))?
        + 1;
    let at = verb
        + 1
        + args[verb + 1..]
            .iter()
            .take_while(|a| *a != "--")
            .position(|a| a == unexpected)?;
    let mut fixed: Vec<&str> = args[..at].iter().map(String::as_str).collect();
    fixed.push("--");
    fixed.extend(args[at..].iter().map(String::as_str));
    let shown: Vec<String> = fixed.iter().map(|a| shell_quote(a)).collect();
    Some(format!(
        "unexpected argument '{unexpected}': the command goes after `--`: bus {}",
        shown.join(" ")
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

/// A `KEY=VALUE` argument (`--env`), as its key and value; the value may be empty.
pub fn parse_key_value(s: &str) -> Result<(String, String), String> {
    match s.split_once('=') {
        Some((key, value)) if !key.is_empty() => Ok((key.to_owned(), value.to_owned())),
        _ => Err(format!("expected KEY=VALUE, got {s:?}")),
    }
}

#[cfg(test)]
mod tests {
    use super::shell_quote;

    #[test]
    fn words_are_quoted_only_when_needed() {
        assert_eq!(shell_quote("sh"), "sh");
        assert_eq!(shell_quote("echo hi"), "'echo hi'");
        assert_eq!(shell_quote("it's"), r"'it'\''s'");
        assert_eq!(shell_quote(""), "''");
    }
}

//! Refuses a token given on the command line, before anything else runs: process arguments
//! are readable by every user of the machine (`ps`, `/proc/*/cmdline`).

use std::ffi::OsString;

/// The message shown when a token is found among the arguments. It never repeats the token.
pub const TOKEN_ON_COMMAND_LINE: &str = "a token was given on the command line, where other \
     users can read it; save it to a file with mode 0600 and pass --token-file PATH, or set \
     BUS_AI_TOKEN in the environment";

/// Whether any argument is a `--token` flag or looks like a JWT.
pub fn has_token_argument(args: &[OsString]) -> bool {
    args.iter().filter_map(|a| a.to_str()).any(|arg| {
        arg == "--token"
            || arg.starts_with("--token=")
            || arg
                .split_once('=')
                .map_or(looks_like_jwt(arg), |(_, v)| looks_like_jwt(v))
    })
}

/// A JWT is three base64url parts; its header always starts `{"` = `eyJ` in base64url.
fn looks_like_jwt(s: &str) -> bool {
    let s = s.strip_prefix("Bearer ").unwrap_or(s);
    s.starts_with("eyJ")
        && s.len() >= 20
        && s.matches('.').count() == 2
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(list: &[&str]) -> Vec<OsString> {
        list.iter().map(OsString::from).collect()
    }

    #[test]
    fn token_flags_and_jwts_are_caught() {
        let jwt = "eyJhbGciOiJFZERTQSJ9.eyJzdWIiOiJhIn0.c2lnbmF0dXJl";
        assert!(has_token_argument(&args(&[
            "containers",
            "status",
            "--token",
            "x"
        ])));
        assert!(has_token_argument(&args(&[
            "--token=x",
            "containers",
            "status"
        ])));
        assert!(has_token_argument(&args(&["containers", "status", jwt])));
        assert!(has_token_argument(&args(&[
            "--api-url",
            &format!("x={jwt}")
        ])));
        assert!(has_token_argument(&args(&[
            "run",
            "--",
            "echo",
            &format!("Bearer {jwt}")
        ])));
    }

    #[test]
    fn ordinary_arguments_pass() {
        assert!(!has_token_argument(&args(&[
            "--token-file",
            "/t",
            "containers",
            "runs"
        ])));
        assert!(!has_token_argument(&args(&[
            "run",
            "--",
            "sh",
            "-c",
            "echo eyJ.a.b"
        ])));
        assert!(!has_token_argument(&args(&[
            "delete",
            "run_0123456789abcdef"
        ])));
    }
}

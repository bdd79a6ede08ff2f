//! Refuses a token or API key given on the command line, before anything else runs: process
//! arguments are readable by every user of the machine (`ps`, `/proc/*/cmdline`).

use std::ffi::OsString;

/// The message shown when a token is found among the arguments. It never repeats the token.
pub const TOKEN_ON_COMMAND_LINE: &str = "a token was given on the command line, where other \
     users can read it; save it to a file with mode 0600 and pass --token-file PATH, or set \
     BUS_AI_TOKEN in the environment";

/// The message shown when an API key flag is found among the arguments.
pub const API_KEY_ON_COMMAND_LINE: &str = "an API key was given on the command line, where \
     other users can read it; save it to a file with mode 0600 and pass --api-key-file PATH, \
     or set BUS_API_KEY in the environment";

/// The refusal for the first secret among `args`: a `--token` flag or a JWT-looking value,
/// or an `--api-key` flag. `None` when there is none.
pub fn secret_argument(args: &[OsString]) -> Option<&'static str> {
    args.iter().filter_map(|a| a.to_str()).find_map(|arg| {
        let flag = |name: &str| arg == name || arg.starts_with(&format!("{name}="));
        if flag("--api-key") {
            Some(API_KEY_ON_COMMAND_LINE)
        } else if flag("--token")
            || arg
                .split_once('=')
                .map_or(looks_like_jwt(arg), |(_, v)| looks_like_jwt(v))
        {
            Some(TOKEN_ON_COMMAND_LINE)
        } else {
            None
        }
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

    fn refusal(list: &[&str]) -> Option<&'static str> {
        secret_argument(&list.iter().map(OsString::from).collect::<Vec<_>>())
    }

    #[test]
    fn token_flags_and_jwts_are_caught() {
        let jwt = "eyJhbGciOiJFZERTQSJ9.eyJzdWIiOiJhIn0.c2lnbmF0dXJl";
        let cases: [&[&str]; 5] = [
            &["containers", "status", "--token", "x"],
            &["--token=x", "containers", "status"],
            &["containers", "status", jwt],
            &["--api-url", &format!("x={jwt}")],
            &["run", "--", "echo", &format!("Bearer {jwt}")],
        ];
        for case in cases {
            assert_eq!(refusal(case), Some(TOKEN_ON_COMMAND_LINE), "{case:?}");
        }
    }

    #[test]
    fn api_key_flags_are_caught() {
        assert_eq!(
            refusal(&["auth", "token", "--api-key", "k"]),
            Some(API_KEY_ON_COMMAND_LINE)
        );
        assert_eq!(
            refusal(&["auth", "token", "--api-key=k"]),
            Some(API_KEY_ON_COMMAND_LINE)
        );
    }

    #[test]
    fn ordinary_arguments_pass() {
        let cases: [&[&str]; 4] = [
            &["--token-file", "/t", "containers", "runs"],
            &["auth", "token", "--api-key-file", "/k"],
            &["run", "--", "sh", "-c", "echo eyJ.a.b"],
            &["delete", "run_0123456789abcdef"],
        ];
        for case in cases {
            assert_eq!(refusal(case), None, "{case:?}");
        }
    }
}

//! The environment a run or an exec gets, from `-e` and `--env-file` as docker takes them.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use crate::error::CliError;

/// `-e KEY[=VALUE]` and `--env-file FILE`, for `run` and `exec`.
#[derive(Debug, clap::Args)]
pub struct EnvArgs {
    /// Set an environment variable (repeatable); KEY alone passes on the value it has here,
    /// and nothing when it has none.
    #[arg(short, long = "env", value_name = "KEY[=VALUE]", value_parser = parse_env)]
    env: Vec<Option<(String, String)>>,
    /// Read environment variables from a file: a KEY=VALUE or KEY line each, `#` comments and
    /// blank lines skipped (repeatable; -e wins).
    #[arg(long, value_name = "FILE")]
    env_file: Vec<PathBuf>,
}

impl EnvArgs {
    /// The variables: the files' in order, then `-e`'s, a later one winning.
    pub fn resolve(self) -> Result<HashMap<String, String>, CliError> {
        let mut env = HashMap::new();
        for file in &self.env_file {
            env.extend(read_env_file(file)?);
        }
        env.extend(self.env.into_iter().flatten());
        Ok(env)
    }
}

/// A `-e` value: `KEY=VALUE`, or `KEY` alone for the value `KEY` has in this process's
/// environment, left out (`None`) when it has none. A value read from the environment never
/// passes through the command line.
pub fn parse_env(s: &str) -> Result<Option<(String, String)>, String> {
    match s.split_once('=') {
        Some((key, value)) if !key.is_empty() => Ok(Some((key.to_owned(), value.to_owned()))),
        None if !s.is_empty() => Ok(std::env::var(s).ok().map(|value| (s.to_owned(), value))),
        _ => Err(format!(
            "expected KEY=VALUE, or KEY to pass on the value it has here, got {s:?}"
        )),
    }
}

/// The variables of an `--env-file`: each line as `-e` takes it (the value as written, quotes
/// and all, as docker reads it), `#` comments and blank lines skipped.
fn read_env_file(path: &Path) -> Result<Vec<(String, String)>, CliError> {
    let text = std::fs::read_to_string(path).map_err(|e| {
        CliError::Usage(format!(
            "cannot read --env-file {}: {e}; give the path of a readable file",
            path.display()
        ))
    })?;
    let mut env = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let line = line.trim_start();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        // The line is not echoed: a file read by mistake may hold a secret.
        let parsed = parse_env(line).map_err(|_| {
            CliError::Usage(format!(
                "--env-file {} line {}: expected KEY=VALUE, or KEY to pass on the value it has \
                 here",
                path.display(),
                n + 1
            ))
        })?;
        env.extend(parsed);
    }
    Ok(env)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_env_file_reads_as_docker_reads_one_and_e_wins() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("env");
        std::fs::write(
            &file,
            "# settings\nA=1\n\n  B=\"two words\"\nC=x=y\nBUS_ENV_TEST_UNSET\nD=from-file\n",
        )
        .unwrap();
        let args = EnvArgs {
            env: vec![Some(("D".into(), "from-e".into()))],
            env_file: vec![file.clone()],
        };
        let env = args.resolve().unwrap();
        assert_eq!(env["A"], "1");
        assert_eq!(env["B"], "\"two words\"", "quotes are kept");
        assert_eq!(env["C"], "x=y");
        assert_eq!(env["D"], "from-e");
        assert!(!env.contains_key("BUS_ENV_TEST_UNSET"));

        std::fs::write(&file, "OK=1\n=s3cret\n").unwrap();
        let wrong = EnvArgs {
            env: vec![],
            env_file: vec![file],
        }
        .resolve()
        .unwrap_err()
        .to_string();
        assert!(
            wrong.contains("line 2")
                && wrong.contains("expected KEY=VALUE")
                && !wrong.contains("s3cret"),
            "{wrong}"
        );
        let missing = EnvArgs {
            env: vec![],
            env_file: vec![dir.path().join("nope")],
        }
        .resolve()
        .unwrap_err();
        assert!(
            matches!(&missing, CliError::Usage(line) if line.contains("give the path")),
            "{missing}"
        );
    }
}

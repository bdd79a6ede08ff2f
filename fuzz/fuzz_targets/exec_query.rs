//! The exec query (`bus_api::exec::ExecQuery`): busd writes it, the runner parses it from the
//! URL of `GET /api/v1/containers/runs/{id}/exec`.
//!
//! Properties: a query the runner accepts is one the engine can run (a command; no NUL byte,
//! which no argv, environment or path can carry; `NAME=value` environment entries; an absolute
//! working directory; a whole terminal size) and it survives busd's encoding unchanged; a
//! refusal is one line.

#![no_main]

use bus_api::exec::{ExecQuery, MAX_ARGS, MAX_QUERY};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|query: &str| {
    let exec = match ExecQuery::parse(query) {
        Ok(exec) => exec,
        Err(message) => {
            assert!(
                !message.is_empty() && !message.contains('\n'),
                "{message:?}"
            );
            return;
        }
    };
    assert!(!exec.argv.is_empty() && !exec.argv[0].is_empty());
    assert!(exec.argv.len() <= MAX_ARGS);
    for text in exec.argv.iter().chain(&exec.env).chain(&exec.workdir) {
        assert!(
            !text.contains('\0'),
            "a NUL byte cannot reach the engine: {exec:?}"
        );
    }
    for env in &exec.env {
        let (name, _) = env.split_once('=').expect("env entries read NAME=value");
        assert!(!name.is_empty(), "{env:?}");
    }
    if let Some(dir) = &exec.workdir {
        assert!(dir.starts_with('/'));
    }
    if let Some((cols, rows)) = exec.size {
        assert!(cols > 0 && rows > 0);
    }
    let encoded = exec.to_query();
    if encoded.len() <= MAX_QUERY {
        assert_eq!(ExecQuery::parse(&encoded).as_ref(), Ok(&exec), "{encoded}");
    }
});

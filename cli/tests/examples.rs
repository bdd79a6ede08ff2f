//! The Rust SDK's example, `examples/run.rs`, run against a real busd: it is docs/clients.md's
//! "Use from Rust" example, byte for byte, and prints `OK` and exits 0 (or the command's code).

mod common;

use std::path::PathBuf;
use std::process::Command;

use common::{Stack, bins};

fn example(name: &str) -> PathBuf {
    let path = common::bins().dir().join("examples").join(name);
    assert!(
        path.is_file(),
        "{} is missing: `cargo test --workspace` builds the examples (or `cargo build -p bus --examples`)",
        path.display()
    );
    path
}

/// The first fenced block under `### {language}` in the "Use from" section of docs/clients.md.
fn readme_block(language: &str) -> String {
    let readme =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/clients.md"))
            .unwrap();
    let section = readme
        .split_once("## Use from Python / TypeScript / Rust")
        .expect("docs/clients.md has a \"Use from\" section")
        .1;
    let part = section.split_once(&format!("### {language}")).unwrap().1;
    let start = part.find("```").unwrap();
    let body = &part[start..];
    let body = &body[body.find('\n').unwrap() + 1..];
    body[..body.find("```").unwrap()].to_owned()
}

#[test]
fn readme_rust_example_is_examples_run_rs_and_works() {
    let source =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../examples/run.rs"))
            .unwrap();
    assert_eq!(
        readme_block("Rust"),
        source,
        "the Rust example in docs/clients.md != examples/run.rs"
    );

    let stack = Stack::start(bins());
    let started = stack.run(&["daemon", "start"]);
    assert!(
        started.status.success(),
        "{}",
        String::from_utf8_lossy(&started.stderr)
    );
    let run = |args: &[&str]| {
        Command::new(example("run"))
            .args(args)
            .env_clear()
            .env("BUS_SOCKET", &stack.socket)
            .output()
            .unwrap()
    };
    let out = run(&[]);
    assert_eq!(
        (out.status.code(), out.stdout.as_slice()),
        (Some(0), &b"OK"[..]),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = run(&["sh", "-c", "echo hi; exit 3"]);
    assert_eq!(
        (out.status.code(), out.stdout.as_slice()),
        (Some(3), &b"hi\n"[..])
    );
}

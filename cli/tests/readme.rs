//! The documentation's shell examples, run: every ```sh block of README.md and of every page
//! under docs/ runs in a fresh `bash -e` (with a time limit) against a real runner on Podman
//! and the real `bus`, which starts the real busd (see `testkit`). A block that cannot
//! run here is marked in the page itself by a `<!-- not-run: REASON -->` line just before its
//! fence; nothing else skips one. A failure names the block by its page and line. Every
//! relative link between the pages must reach a file, and a `#heading` in it.

mod common;

use std::process::{Command, Stdio};

use common::{Podman, Runner, Stack, bins, hash_key};

/// The README's test account: every resource, and an API key in `BUS_API_KEY`.
const API_KEY: &str = "sk-readme-0123456789abcdef";
const SCOPES: &str = "container:read container:run container:delete billing:read \
                      image:read image:write image:build";
/// How long one block may take.
const BLOCK_SECONDS: &str = "300";

/// A ```sh block: the line of its opening fence, its text, and why it is not run (if marked).
struct Block {
    line: usize,
    script: String,
    not_run: Option<String>,
}

fn blocks(readme: &str) -> Vec<Block> {
    let lines: Vec<&str> = readme.lines().collect();
    let mut blocks = Vec::new();
    let mut i = 0;
    while i < lines.len() {
        if lines[i].trim_end() != "```sh" {
            i += 1;
            continue;
        }
        let not_run = i
            .checked_sub(1)
            .and_then(|before| lines[before].trim().strip_prefix("<!-- not-run:"))
            .map(|rest| rest.trim_end_matches("-->").trim().to_owned());
        if let Some(reason) = &not_run {
            assert!(
                !reason.is_empty(),
                "line {}: a not-run mark needs its reason",
                i
            );
        }
        let start = i + 1;
        let mut end = start;
        while end < lines.len() && !lines[end].starts_with("```") {
            end += 1;
        }
        blocks.push(Block {
            line: i + 1,
            script: lines[start..end].join("\n") + "\n",
            not_run,
        });
        i = end + 1;
    }
    blocks
}

#[test]
fn the_marks_are_read_from_the_readme() {
    let readme = "text\n<!-- not-run: needs X -->\n```sh\nfalse\n```\n\n```sh\ntrue\n```\n";
    let found = blocks(readme);
    assert_eq!(found.len(), 2);
    assert_eq!(found[0].not_run.as_deref(), Some("needs X"));
    assert_eq!((found[1].line, found[1].script.as_str()), (7, "true\n"));
    assert!(found[1].not_run.is_none());
}

/// README.md and every page under docs/, as (path from the repository root, text).
fn pages() -> Vec<(String, String)> {
    let root = std::path::Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/.."));
    let mut names = vec!["README.md".to_owned()];
    let mut docs: Vec<String> = std::fs::read_dir(root.join("docs"))
        .expect("docs/")
        .map(|entry| entry.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|name| name.ends_with(".md"))
        .map(|name| format!("docs/{name}"))
        .collect();
    docs.sort();
    names.extend(docs);
    names
        .into_iter()
        .map(|name| {
            let text = std::fs::read_to_string(root.join(&name)).expect(&name);
            (name, text)
        })
        .collect()
}

#[test]
fn every_shell_example_in_the_docs_works() {
    let pages = pages();
    assert!(pages.len() > 1, "no pages under docs/");
    let blocks: Vec<(String, Block)> = pages
        .iter()
        .flat_map(|(name, text)| blocks(text).into_iter().map(|b| (name.clone(), b)))
        .collect();
    let runnable: Vec<(&str, &Block)> = blocks
        .iter()
        .filter(|(_, b)| b.not_run.is_none())
        .map(|(name, b)| (name.as_str(), b))
        .collect();
    assert!(
        runnable.len() >= 5,
        "only {} runnable blocks",
        runnable.len()
    );

    let config = format!(
        "[[accounts]]\nid = \"dev\"\napi_key_sha256 = \"{}\"\nplan = \"local\"\n\
         resources = [{}]\n",
        hash_key(API_KEY),
        SCOPES
            .split_whitespace()
            .map(|s| format!("\"{s}\""))
            .collect::<Vec<_>>()
            .join(", ")
    );
    let stack = Stack::on(Runner::start_on(
        bins(),
        Podman::start(),
        Some(&config),
        false,
    ));
    let probe = stack.bus();
    let path = format!(
        "{}:{}",
        bins().dir().display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let mut failures = Vec::new();
    for (page, block) in runnable {
        // Each block starts from a full token and the default settings.
        stack.write_token(&stack.runner.token("dev", SCOPES));
        let _ = std::fs::remove_file(stack.config_dir().join("config.toml"));
        let workdir = tempfile::tempdir_in(stack.home.path()).unwrap();
        let mut cmd = Command::new("timeout");
        cmd.env_clear();
        for (key, value) in probe.get_envs() {
            if let Some(value) = value {
                cmd.env(key, value);
            }
        }
        let out = cmd
            .env("PATH", &path)
            .env("BUS_API_KEY", API_KEY)
            .args([BLOCK_SECONDS, "bash", "-e", "-c", &block.script])
            .current_dir(workdir.path())
            .stdin(Stdio::null())
            .output()
            .unwrap();
        if !out.status.success() {
            failures.push(format!(
                "{page}:{} failed ({}):\n{}--- stdout:\n{}--- stderr:\n{}",
                block.line,
                match out.status.code() {
                    Some(124) => format!("timed out after {BLOCK_SECONDS} s"),
                    code => format!("exit {code:?}"),
                },
                block.script,
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// The anchors of `page`'s headings, as GitHub makes them (lower case, punctuation dropped,
/// spaces as dashes), outside code blocks.
fn anchors(page: &str) -> Vec<String> {
    let mut in_code = false;
    let mut found = Vec::new();
    for line in page.lines() {
        if line.starts_with("```") {
            in_code = !in_code;
        } else if !in_code && line.starts_with('#') {
            let title = line.trim_start_matches('#').trim().to_lowercase();
            found.push(
                title
                    .chars()
                    .filter(|c| c.is_alphanumeric() || matches!(c, '-' | '_' | ' '))
                    .map(|c| if c == ' ' { '-' } else { c })
                    .collect(),
            );
        }
    }
    found
}

#[test]
fn every_link_between_the_pages_resolves() {
    let root = std::path::Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/.."));
    let mut broken = Vec::new();
    for (name, text) in pages() {
        let dir = root.join(&name).parent().unwrap().to_path_buf();
        // Links in prose only: drop code blocks.
        let prose: String = text.split("```").step_by(2).collect::<Vec<_>>().join("");
        for link in prose
            .split("](")
            .skip(1)
            .filter_map(|s| s.split(')').next())
        {
            if link.starts_with("http") || link.contains(' ') {
                continue;
            }
            let (path, anchor) = link.split_once('#').unwrap_or((link, ""));
            let target = if path.is_empty() {
                root.join(&name)
            } else {
                dir.join(path)
            };
            if !target.exists() {
                broken.push(format!("{name}: {link}: no such file"));
            } else if !anchor.is_empty() {
                let page = std::fs::read_to_string(&target).unwrap_or_default();
                if !anchors(&page).iter().any(|a| a == anchor) {
                    broken.push(format!("{name}: {link}: no such heading"));
                }
            }
        }
    }
    assert!(broken.is_empty(), "{}", broken.join("\n"));
}

//! `bus containers runs` answered by busd from a list its watch of the runner keeps current:
//! what the runner would answer, to no caller it would refuse, and never behind what busd
//! has already answered.

mod common;

use std::time::Duration;

use common::{Stack, bins, expect_success, one_line_error, stdout, wait_until};
use serde_json::Value;

/// `bus daemon info -o json`'s (lists watched, ListRuns answered from them).
fn lists(stack: &Stack) -> (u64, u64) {
    let info: Value = serde_json::from_str(&expect_success(
        &stack.run(&["daemon", "info", "-o", "json"]),
    ))
    .unwrap();
    (
        info["run_list_watches"].as_u64().unwrap(),
        info["run_lists_answered"].as_u64().unwrap(),
    )
}

/// The ids `bus containers runs` lists, newest first, with the environment `envs` adds.
fn listed(stack: &Stack, envs: &[(&str, &str)]) -> Vec<String> {
    let out = stack
        .bus()
        .envs(envs.iter().copied())
        .args(["containers", "runs", "-o", "json"])
        .output()
        .unwrap();
    let runs: Vec<Value> = serde_json::from_str(&expect_success(&out)).unwrap();
    runs.iter()
        .map(|r| r["id"].as_str().unwrap().to_owned())
        .collect()
}

fn state_of(stack: &Stack, id: &str) -> String {
    let runs = stack.runs();
    let run = runs
        .iter()
        .find(|r| r["id"] == id)
        .expect("the run is listed");
    run["state"].as_str().unwrap().to_owned()
}

fn detached(stack: &Stack, command: &[&str]) -> String {
    let mut args = vec!["containers", "run", "-d", "--"];
    args.extend_from_slice(command);
    stdout(&stack.run(&args)).trim().to_owned()
}

/// Lists until busd answers from its watched list: the first call starts the watch.
fn until_watched(stack: &Stack) {
    listed(stack, &[]);
    wait_until("busd watches the runs", Duration::from_secs(10), || {
        lists(stack).0 == 1
    });
}

#[test]
fn runs_come_from_the_watched_list_and_show_every_change_at_once() {
    let stack = Stack::start(bins());
    let first = detached(&stack, &["sleep", "60"]);
    until_watched(&stack);
    let (_, answered) = lists(&stack);

    // Made through busd: listed by the very next call, from the list.
    let second = detached(&stack, &["true"]);
    assert_eq!(listed(&stack, &[]), [second.clone(), first.clone()]);
    expect_success(&stack.run(&["containers", "rm", &second]));
    assert_eq!(listed(&stack, &[]), [first.as_str()]);
    let (watches, now) = lists(&stack);
    assert_eq!(watches, 1);
    assert!(
        now >= answered + 2,
        "the two lists after the writes came from the watched list ({answered} → {now})"
    );

    // Made by another client, straight to the runner: listed once its line has come.
    let token = std::fs::read_to_string(stack.config_dir().join("auth/api-token")).unwrap();
    let (status, body) = stack.runner.request(
        "POST",
        "/api/v1/containers/runs",
        token.trim(),
        Some(r#"{"argv":["sleep","60"]}"#),
    );
    assert_eq!(status, 201, "{body}");
    let third: Value = serde_json::from_str(&body).unwrap();
    let third = third["id"].as_str().unwrap().to_owned();
    wait_until(
        "the other client's run is listed",
        Duration::from_secs(5),
        || listed(&stack, &[]) == [third.clone(), first.clone()],
    );
    let (status, body) = stack.runner.request(
        "POST",
        &format!("/api/v1/containers/runs/{third}/stop"),
        token.trim(),
        Some(r#"{"force":true}"#),
    );
    assert_eq!(status, 200, "{body}");
    wait_until("the stop is listed", Duration::from_secs(10), || {
        state_of(&stack, &third) != "running"
    });
    assert!(
        lists(&stack).1 > now,
        "those lists came from the watched list"
    );
    expect_success(&stack.run(&["containers", "stop", "-t", "0", &first]));
}

#[test]
fn a_watched_list_answers_its_own_token_only() {
    let stack = Stack::start(bins());
    let alices = detached(&stack, &["true"]);
    until_watched(&stack);
    assert_eq!(listed(&stack, &[]), [alices.as_str()]);

    // Another account: its own (empty) list, from the runner and then from its own watch.
    let bob = stack.runner.token("bob", common::ALL_SCOPES);
    let bob = [("BUS_AI_TOKEN", bob.as_str())];
    assert!(listed(&stack, &bob).is_empty());
    wait_until("bob's runs are watched", Duration::from_secs(10), || {
        lists(&stack).0 == 2
    });
    let (_, answered) = lists(&stack);
    assert!(listed(&stack, &bob).is_empty());
    assert_eq!(lists(&stack).1, answered + 1, "bob's list answered bob");

    // Alice's own token without `container:read`: refused by the runner, every time.
    let unscoped = stack.runner.token("alice", "container:run");
    for _ in 0..3 {
        let out = stack
            .bus()
            .env("BUS_AI_TOKEN", &unscoped)
            .args(["containers", "runs"])
            .output()
            .unwrap();
        assert!(!out.status.success());
        let line = one_line_error(&out);
        assert!(line.contains("container:read"), "{line}");
    }
    assert_eq!(lists(&stack).0, 2, "no list for a token the runner refused");
}

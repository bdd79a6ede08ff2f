//! End to end: reading, resuming, filtering and following a run's output through busd, and
//! several followers of one live run sharing busd's single upstream stream.

mod common;

use bus::proto::containers::v1::{
    StreamLogsRequest, containers_client::ContainersClient, log_event::Event,
};
use bus::proto::daemon::v1::{GetInfoRequest, daemon_client::DaemonClient};
use common::{ALL_SCOPES, Podman, Runner, Stack, bins, stdout};

fn detached(stack: &Stack, script: &str) -> String {
    let out = stack.run(&["containers", "run", "-d", "--", "sh", "-c", script]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout(&out).trim().to_owned()
}

#[test]
fn logs_of_an_ended_run_can_be_resumed_tailed_and_filtered() {
    let stack = Stack::start(bins());
    // Pauses keep the three writes apart, so each is one chunk: a = 1, b = 2, c = 3.
    let id = detached(&stack, "echo a; sleep 0.2; echo b >&2; sleep 0.2; echo c");
    assert_eq!(
        stack.run(&["containers", "wait", &id]).status.code(),
        Some(0)
    );

    let all = stack.run(&["containers", "logs", &id]);
    assert_eq!(stdout(&all), "a\nc\n");
    assert_eq!(String::from_utf8_lossy(&all.stderr), "b\n");
    assert_eq!(
        stdout(&stack.run(&["containers", "logs", "--since-seq", "2", &id])),
        "c\n"
    );
    assert_eq!(
        stdout(&stack.run(&["containers", "logs", "--tail", "1", &id])),
        "c\n"
    );
    let errs = stack.run(&["containers", "logs", "--stderr", &id]);
    assert_eq!(
        (
            stdout(&errs).as_str(),
            String::from_utf8_lossy(&errs.stderr).as_ref()
        ),
        ("", "b\n")
    );
    // Following an ended run prints everything and ends.
    assert_eq!(
        stdout(&stack.run(&["containers", "logs", "-f", "--since-seq", "1", &id])),
        "c\n"
    );

    // --tail counts lines, as docker's does, however the writes made chunks: five lines in
    // one write, then a line in two.
    let lines = detached(
        &stack,
        "printf '1\\n2\\n3\\n4\\n5\\n'; sleep 0.2; printf 'six'; sleep 0.2; printf ' 6\\n'",
    );
    assert_eq!(
        stack.run(&["containers", "wait", &lines]).status.code(),
        Some(0)
    );
    for (tail, want) in [
        ("0", ""),
        ("1", "six 6\n"),
        ("3", "4\n5\nsix 6\n"),
        ("10", "1\n2\n3\n4\n5\nsix 6\n"),
        // docker's `--tail all`: every line.
        ("all", "1\n2\n3\n4\n5\nsix 6\n"),
    ] {
        let out = stack.run(&["containers", "logs", "-n", tail, &lines]);
        assert_eq!(stdout(&out), want, "--tail {tail}");
        let followed = stack.run(&["containers", "logs", "-f", "--tail", tail, &lines]);
        assert_eq!(stdout(&followed), want, "-f --tail {tail}");
    }

    // -t stamps each line with the time its first byte was read, as docker's does; --since
    // takes a duration or a time.
    let stamped = stdout(&stack.run(&["containers", "logs", "-t", "--tail", "2", &lines]));
    let stamped: Vec<(&str, &str)> = stamped
        .lines()
        .map(|line| line.split_once(' ').unwrap())
        .collect();
    assert_eq!(
        stamped.iter().map(|(_, text)| *text).collect::<Vec<_>>(),
        ["5", "six 6"]
    );
    for (time, _) in &stamped {
        assert!(
            time.len() > 20 && time.starts_with("20") && time.ends_with('Z'),
            "{time}"
        );
    }
    assert!(stamped[0].0 < stamped[1].0, "{stamped:?}");
    let since = |when: &str| stack.run(&["containers", "logs", "--since", when, &lines]);
    assert_eq!(stdout(&since("1h")), "1\n2\n3\n4\n5\nsix 6\n");
    assert_eq!(stdout(&since(stamped[1].0)), "six 6\n");
    assert_eq!(stdout(&since("2999-01-01T00:00:00Z")), "");
    let wrong = since("yesterday");
    assert_eq!(wrong.status.code(), Some(2));
    assert!(
        String::from_utf8_lossy(&wrong.stderr).contains("neither a duration"),
        "{wrong:?}"
    );
}

#[test]
fn wait_exits_with_the_runs_exit_code_and_get_shows_it() {
    let stack = Stack::start(bins());
    let id = detached(&stack, "exit 7");
    assert_eq!(
        stack.run(&["containers", "wait", &id]).status.code(),
        Some(7)
    );
    let details = stdout(&stack.run(&["containers", "get", &id]));
    assert!(details.contains("state:     exited"), "{details}");
    assert!(details.contains("exit:      7"), "{details}");
}

#[test]
fn followers_of_one_live_run_each_get_every_chunk_once() {
    let stack = Stack::start(bins());
    let id = detached(
        &stack,
        "i=0; while [ $i -lt 60 ]; do i=$((i+1)); echo line $i; sleep 0.01; done",
    );
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let (sequences, upstream_streams) = rt.block_on(async {
        let channel = bus::connect(&stack.socket).await.unwrap();
        let daemon = DaemonClient::new(channel.clone());
        let info = |mut d: DaemonClient<_>| async move {
            d.get_info(GetInfoRequest {})
                .await
                .unwrap()
                .into_inner()
                .upstream_log_streams
        };
        let before = info(daemon.clone()).await;
        let followers = (0..3).map(|_| {
            let mut client = ContainersClient::new(channel.clone());
            let id = id.clone();
            tokio::spawn(async move {
                let request = StreamLogsRequest {
                    run_id: id,
                    follow: true,
                    ..Default::default()
                };
                let mut stream = client.stream_logs(request).await.unwrap().into_inner();
                let mut seen = Vec::new();
                let mut text = Vec::new();
                while let Some(event) = stream.message().await.unwrap() {
                    match event.event.unwrap() {
                        Event::Output(chunk) => {
                            seen.push(chunk.seq);
                            text.extend(chunk.data);
                        }
                        Event::Exited(exit) => {
                            assert_eq!(exit.last_seq, *seen.last().unwrap());
                            break;
                        }
                        other => panic!("unexpected {other:?}"),
                    }
                }
                (seen, String::from_utf8(text).unwrap())
            })
        });
        let mut sequences = Vec::new();
        for follower in followers.collect::<Vec<_>>() {
            sequences.push(follower.await.unwrap());
        }
        let after = info(daemon).await;
        (sequences, after - before)
    });
    assert_eq!(
        upstream_streams, 1,
        "three followers share one upstream log stream"
    );
    let expected: String = (1..=60).map(|i| format!("line {i}\n")).collect();
    for (seqs, text) in &sequences {
        assert_eq!(text, &expected);
        let dense: Vec<u64> = (1..=seqs.len() as u64).collect();
        assert_eq!(seqs, &dense, "every seq exactly once, in order");
    }
    assert_eq!(sequences[0], sequences[1]);
    assert_eq!(sequences[1], sequences[2]);
}

#[test]
fn output_bytes_cross_the_runner_in_the_binary_framing_unchanged() {
    let stack = Stack::on(Runner::start_on(bins(), Podman::start(), None, true));
    stack.write_token(&stack.runner.token("alice", ALL_SCOPES));
    // Bytes that are not UTF-8, a NUL and a line of 64 KiB, on both streams.
    let script = "printf '\\377\\000\\n'; head -c 65536 /dev/zero | tr '\\0' x; printf '\\376' >&2";
    let out = stack.run(&["containers", "run", "--", "sh", "-c", script]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut expected = b"\xff\x00\n".to_vec();
    expected.extend(std::iter::repeat_n(b'x', 65536));
    assert_eq!(out.stdout.len(), expected.len());
    assert!(out.stdout == expected, "stdout changed on the way");
    assert_eq!(out.stderr, b"\xfe");

    let log = std::fs::read_to_string(stack.runner.state_dir.path().join("runner.log")).unwrap();
    let opened: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("log stream opened"))
        .collect();
    assert!(!opened.is_empty(), "{log}");
    assert!(
        opened.iter().all(|l| l.contains("framing=Binary")),
        "busd asks for the binary framing: {opened:?}"
    );
}

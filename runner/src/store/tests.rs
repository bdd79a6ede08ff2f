use std::collections::BTreeMap;

use bus_api::{RunState, Stream};
use bytes::Bytes;

use super::*;

fn record(id: &str) -> Run {
    Run {
        id: id.to_owned(),
        state: RunState::Queued,
        exit_code: None,
        profile: None,
        image: "img".to_owned(),
        argv: vec!["sh".into(), "-c".into(), "echo hi".into()],
        name: None,
        participant: None,
        role: None,
        labels: BTreeMap::from([("k".into(), "v".into())]),
        created_at: OffsetDateTime::now_utc(),
        started_at: None,
        finished_at: None,
        reason: None,
        wall_seconds: None,
        options: Default::default(),
    }
}

fn new_run(id: &str) -> NewRun {
    NewRun {
        record: record(id),
        timeout: Duration::from_secs(600),
        idempotency: None,
    }
}

async fn insert(s: &Store, owner: &str, id: &str) -> Arc<Entry> {
    match s.insert(owner, new_run(id)).await.unwrap() {
        Inserted::Created(entry) => entry,
        other => panic!("expected a new run, got {other:?}"),
    }
}

/// (seq, stream, bytes) of every output frame, and the exit frame's last_seq if any.
async fn read_all(
    s: &Store,
    e: &Arc<Entry>,
    after: u64,
    filter: StreamFilter,
) -> (Vec<(u64, Stream, Vec<u8>)>, Option<u64>) {
    let mut cursor = after;
    let mut out = Vec::new();
    loop {
        let read = s.read(e, cursor, filter, 10).await.unwrap();
        for f in &read.frames {
            out.push((f.seq, f.stream, f.data.to_vec()));
        }
        let progressed = read.last_seq > cursor;
        cursor = read.last_seq;
        if let Some(LogFrame::Exit { last_seq, .. }) = read.exit {
            return (out, Some(last_seq));
        }
        if !progressed {
            return (out, None);
        }
    }
}

#[test]
fn ids_are_unguessable_shape() {
    let a = new_run_id();
    assert!(a.starts_with("run_") && a.len() == 36, "{a}");
    assert_ne!(a, new_run_id());
}

#[test]
fn ages_parse() {
    assert_eq!(parse_age("7d").unwrap(), Duration::from_secs(7 * 86400));
    assert_eq!(parse_age("90m").unwrap(), Duration::from_secs(5400));
    for bad in ["", "0d", "7", "1w", "-1h", "d"] {
        assert!(parse_age(bad).is_err(), "{bad}");
    }
}

#[test]
fn wall_seconds_round_up() {
    let t = OffsetDateTime::from_unix_timestamp(1_700_000_000).unwrap();
    assert_eq!(wall_seconds(t, t), 0);
    assert_eq!(wall_seconds(t, t + time::Duration::milliseconds(1)), 1);
    assert_eq!(wall_seconds(t, t + time::Duration::seconds(3)), 3);
    assert_eq!(wall_seconds(t, t - time::Duration::seconds(3)), 0);
}

#[tokio::test]
async fn owners_see_only_their_runs() {
    let s = Store::temporary().unwrap();
    insert(&s, "a", "run_1").await;
    assert!(s.get("a", "run_1").is_some());
    assert!(s.get("b", "run_1").is_none());
    assert!(s.remove("b", "run_1").is_none());
    assert!(s.remove("a", "run_1").unwrap().is_deleted());
    assert!(s.get("a", "run_1").is_none());
}

#[tokio::test]
async fn list_pages_newest_first() {
    let s = Store::temporary().unwrap();
    for i in 0..5 {
        insert(&s, if i == 2 { "b" } else { "a" }, &format!("run_{i}")).await;
    }
    let (page, next) = s.list("a", &RunFilter::default(), None, 2);
    let ids: Vec<_> = page.iter().map(|r| r.id.as_str()).collect();
    assert_eq!(ids, ["run_4", "run_3"]);
    let (page, next) = s.list("a", &RunFilter::default(), next, 2);
    let ids: Vec<_> = page.iter().map(|r| r.id.as_str()).collect();
    assert_eq!(ids, ["run_1", "run_0"]);
    assert_eq!(next, None);
}

#[tokio::test]
async fn seq_is_dense_and_frames_split_merge_and_resume() {
    let s = Store::temporary().unwrap();
    let e = insert(&s, "a", "run_1").await;
    e.push_output(
        Stream::Stdout,
        Bytes::from(vec![b'x'; MAX_FRAME_BYTES + 10]),
    )
    .await;
    e.push_output(Stream::Stderr, Bytes::from_static(b"err\n"))
        .await;
    s.flush().await;
    for i in 0..100 {
        e.push_output(Stream::Stdout, Bytes::from(format!("line {i}\n")))
            .await;
    }
    s.flush().await;
    let (frames, exit) = read_all(&s, &e, 0, StreamFilter::ALL).await;
    assert_eq!(exit, None, "not ended yet");
    let seqs: Vec<u64> = frames.iter().map(|f| f.0).collect();
    assert_eq!(seqs, (1..=seqs.len() as u64).collect::<Vec<_>>(), "dense");
    assert_eq!(e.last_seq(), seqs.len() as u64);
    // The oversized chunk was split; its tail may have merged with nothing else (the stream
    // changed), and every byte is there in order.
    assert_eq!(frames[0].2.len(), MAX_FRAME_BYTES);
    assert!(frames.iter().all(|f| f.2.len() <= MAX_FRAME_BYTES));
    let stdout: Vec<u8> = frames
        .iter()
        .filter(|f| f.1 == Stream::Stdout)
        .flat_map(|f| f.2.clone())
        .collect();
    let mut want = vec![b'x'; MAX_FRAME_BYTES + 10];
    for i in 0..100 {
        want.extend_from_slice(format!("line {i}\n").as_bytes());
    }
    assert_eq!(stdout, want);
    let err_at = frames.iter().position(|f| f.1 == Stream::Stderr).unwrap();
    assert_eq!(frames[err_at].2, b"err\n");
    assert_eq!(
        err_at, 2,
        "stderr comes between the stdout chunks it was written between"
    );

    // Resume after any seq: exactly the rest.
    let (rest, _) = read_all(&s, &e, 2, StreamFilter::ALL).await;
    assert_eq!(rest, frames[2..]);

    e.finish(RunState::Exited, Some(3), None).await;
    let last = frames.len() as u64;
    let read = s.read(&e, 1, StreamFilter::ALL, 1).await.unwrap();
    assert_eq!(
        read.frames.len(),
        1,
        "the byte budget stops after one frame"
    );
    assert!(read.exit.is_none(), "exit only after the last output frame");
    let read = s.read(&e, last, StreamFilter::ALL, 1).await.unwrap();
    assert!(matches!(
        read.exit,
        Some(LogFrame::Exit { exit_code: Some(3), last_seq, .. }) if last_seq == last
    ));
    // Output after the end is dropped.
    e.push_output(Stream::Stdout, Bytes::from_static(b"late"))
        .await;
    s.flush().await;
    assert_eq!(e.last_seq(), last);
}

#[tokio::test]
async fn stream_filter_keeps_seq_and_exit_comes_last() {
    let s = Store::temporary().unwrap();
    let e = insert(&s, "a", "run_1").await;
    for i in 0..6 {
        let stream = if i % 2 == 0 {
            Stream::Stdout
        } else {
            Stream::Stderr
        };
        e.push_output(stream, Bytes::from(format!("{i}"))).await;
        s.flush().await; // one frame each (no merging across flushes)
    }
    e.finish(RunState::Exited, Some(0), None).await;
    let out = StreamFilter {
        stdout: true,
        stderr: false,
    };
    let err = StreamFilter {
        stdout: false,
        stderr: true,
    };
    let none = StreamFilter {
        stdout: false,
        stderr: false,
    };
    let (frames, exit) = read_all(&s, &e, 0, out).await;
    let seqs: Vec<u64> = frames.iter().map(|f| f.0).collect();
    assert_eq!(seqs, [1, 3, 5]);
    assert!(frames.iter().all(|f| f.1 == Stream::Stdout));
    assert_eq!(exit, Some(6), "the exit frame names the run's last seq");
    let (frames, exit) = read_all(&s, &e, 2, err).await;
    assert_eq!(frames.iter().map(|f| f.0).collect::<Vec<_>>(), [4, 6]);
    assert_eq!(exit, Some(6));
    let (frames, exit) = read_all(&s, &e, 0, none).await;
    assert!(frames.is_empty());
    assert_eq!(exit, Some(6));
}

#[tokio::test]
async fn tail_starts_at_the_last_n_frames() {
    let s = Store::temporary().unwrap();
    let e = insert(&s, "a", "run_1").await;
    assert_eq!(s.tail_cursor(&e, 3, StreamFilter::ALL).await.unwrap(), 0);
    for i in 0..10 {
        let stream = if i < 8 {
            Stream::Stdout
        } else {
            Stream::Stderr
        };
        e.push_output(stream, Bytes::from(format!("{i}"))).await;
        s.flush().await;
    }
    let tail = |n, filter| {
        let (s, e) = (s.clone(), e.clone());
        async move { s.tail_cursor(&e, n, filter).await.unwrap() }
    };
    assert_eq!(tail(3, StreamFilter::ALL).await, 7);
    assert_eq!(
        tail(0, StreamFilter::ALL).await,
        10,
        "tail=0: only new frames"
    );
    assert_eq!(tail(50, StreamFilter::ALL).await, 0, "fewer than n: all");
    let stdout = StreamFilter {
        stdout: true,
        stderr: false,
    };
    // The last 2 stdout frames are seq 7 and 8.
    assert_eq!(tail(2, stdout).await, 6);
    let (frames, _) = read_all(&s, &e, 6, stdout).await;
    assert_eq!(frames.iter().map(|f| f.0).collect::<Vec<_>>(), [7, 8]);
}

#[tokio::test]
async fn records_and_frames_survive_a_reopen_and_seq_continues() {
    let dir = TempDir::new().unwrap();
    let (id_live, id_done);
    {
        let s = Store::open(&dir.0).unwrap();
        let live = insert(&s, "a", "run_live").await;
        live.set_state(RunState::Starting);
        assert!(live.set_container("c123"));
        live.set_state(RunState::Running);
        live.push_output(Stream::Stdout, Bytes::from_static(b"one"))
            .await;
        s.flush().await;
        live.push_output(Stream::Stderr, Bytes::from_static(b"two"))
            .await;
        let done = insert(&s, "b", "run_done").await;
        done.set_state(RunState::Running);
        done.finish(RunState::Exited, Some(4), None).await;
        s.flush().await;
        id_live = live.id.clone();
        id_done = done.id.clone();
    }
    let s = Store::open(&dir.0).unwrap();
    let orphans = s.take_orphans();
    assert_eq!(
        orphans.iter().map(|e| e.id.as_str()).collect::<Vec<_>>(),
        [id_live.as_str()]
    );
    assert!(s.take_orphans().is_empty(), "handed out once");
    let live = s.get("a", &id_live).unwrap();
    let run = live.snapshot();
    assert_eq!(run.state, RunState::Running);
    assert!(run.started_at.is_some());
    assert_eq!(run.labels["k"], "v");
    assert_eq!(run.argv, ["sh", "-c", "echo hi"]);
    assert_eq!(live.container().as_deref(), Some("c123"));
    assert_eq!(live.timeout, Duration::from_secs(600));
    assert_eq!(live.last_seq(), 2);
    assert_eq!(
        s.stored_bytes(&live).await.unwrap(),
        [3, 3],
        "bytes stored per stream, where the container's log goes on"
    );
    live.push_output(Stream::Stdout, Bytes::from_static(b"three"))
        .await;
    live.finish(
        RunState::Stopped,
        Some(143),
        Some("stopped on request".into()),
    )
    .await;
    let (frames, exit) = read_all(&s, &live, 0, StreamFilter::ALL).await;
    assert_eq!(
        frames,
        [
            (1, Stream::Stdout, b"one".to_vec()),
            (2, Stream::Stderr, b"two".to_vec()),
            (3, Stream::Stdout, b"three".to_vec()),
        ]
    );
    assert_eq!(exit, Some(3));
    assert_eq!(s.stored_bytes(&live).await.unwrap(), [8, 3]);
    let fresh = insert(&s, "a", "run_fresh").await;
    assert_eq!(s.stored_bytes(&fresh).await.unwrap(), [0, 0]);
    let done = s.get("b", &id_done).unwrap().snapshot();
    assert_eq!((done.state, done.exit_code), (RunState::Exited, Some(4)));
    assert!(done.wall_seconds.is_some() && done.finished_at.is_some());
    // A new run after the reopen lists first.
    insert(&s, "b", "run_new").await;
    assert_eq!(
        s.list("b", &RunFilter::default(), None, 1).0[0].id,
        "run_new"
    );
    assert_eq!(s.runner_id().len(), 16);
    let runner_id = s.runner_id().to_owned();
    drop(s);
    assert_eq!(
        Store::open(&dir.0).unwrap().runner_id(),
        runner_id,
        "stable"
    );
    assert_eq!(
        std::fs::read_to_string(dir.0.join(RUNNER_ID_FILE)).unwrap(),
        format!("{runner_id}\n")
    );
}

#[tokio::test]
async fn run_options_survive_a_reopen_and_a_version_1_database_opens() {
    let dir = TempDir::new().unwrap();
    let options = bus_api::RunOptions {
        ports: vec![bus_api::Port {
            container_port: 8080,
            host_port: None,
            protocol: bus_api::Protocol::Udp,
            host_ip: "127.0.0.1".into(),
        }],
        tty: true,
        stdin: true,
        storage: Some(bus_api::StorageMount {
            mount_path: "/data".into(),
            subpath: Some("a/b".into()),
        }),
        memory_mb: Some(64),
        max_output_mb: Some(8),
        service: true,
        restarts: 2,
        auto_remove: true,
    };
    {
        let s = Store::open(&dir.0).unwrap();
        let mut new = named("run_opts", "opts", Some("ann"), Some("agent"));
        new.record.options = options.clone();
        let Inserted::Created(e) = s.insert("a", new).await.unwrap() else {
            panic!("a new run")
        };
        e.set_state(RunState::Starting);
        let mut bound = options.ports.clone();
        bound[0].host_port = Some(40000);
        e.set_ports(bound);
        insert(&s, "a", "run_plain").await;
        s.flush().await;
    }
    let s = Store::open(&dir.0).unwrap();
    let run = s.get("a", "run_opts").unwrap().snapshot();
    assert_eq!(run.options.ports[0].host_port, Some(40000));
    assert_eq!(
        (run.options.tty, &run.options.storage, run.options.memory_mb),
        (true, &options.storage, Some(64))
    );
    assert_eq!(run.options.max_output_mb, Some(8));
    assert!(run.options.auto_remove);
    assert_eq!((run.options.service, run.options.restarts), (true, 2));
    assert_eq!(
        (
            run.name.as_deref(),
            run.participant.as_deref(),
            run.role.as_deref()
        ),
        (Some("opts"), Some("ann"), Some("agent"))
    );
    let plain = s.get("a", "run_plain").unwrap().snapshot();
    assert_eq!(plain.options, bus_api::RunOptions::default());
    assert_eq!((plain.participant, plain.role), (None, None));
    drop(s);

    // A database from before the options column (version 1) gains it on open.
    {
        let conn = rusqlite::Connection::open(dir.0.join(DB_FILE)).unwrap();
        conn.execute_batch(
            "DROP TABLE usage; ALTER TABLE runs DROP COLUMN options;
             ALTER TABLE runs DROP COLUMN participant; ALTER TABLE runs DROP COLUMN role;
             PRAGMA user_version = 1;",
        )
        .unwrap();
    }
    let s = Store::open(&dir.0).unwrap();
    let run = s.get("a", "run_opts").unwrap().snapshot();
    assert_eq!(run.options, bus_api::RunOptions::default());
    assert_eq!(run.argv, ["sh", "-c", "echo hi"]);
}

#[tokio::test]
async fn readers_see_only_stored_frames_and_wake_on_change() {
    let s = Store::temporary().unwrap();
    let e = insert(&s, "a", "run_1").await;
    let mut rx = e.subscribe();
    rx.borrow_and_update();
    e.push_output(Stream::Stdout, Bytes::from_static(b"x"))
        .await;
    rx.changed().await.unwrap();
    // Woken only after the commit, so the frame is there.
    let read = s.read(&e, 0, StreamFilter::ALL, 1024).await.unwrap();
    assert_eq!(read.frames.len(), 1);
    assert_eq!(read.last_seq, 1);
}

#[tokio::test]
async fn deleting_removes_the_output_and_still_ends_followers() {
    let s = Store::temporary().unwrap();
    let e = insert(&s, "a", "run_1").await;
    e.push_output(Stream::Stdout, Bytes::from_static(b"x"))
        .await;
    s.flush().await;
    s.remove("a", "run_1").unwrap();
    e.push_output(Stream::Stdout, Bytes::from_static(b"y"))
        .await;
    e.finish(RunState::Failed, None, Some("deleted".into()))
        .await;
    let read = s.read(&e, 0, StreamFilter::ALL, 1024).await.unwrap();
    assert!(read.frames.is_empty(), "the output is gone");
    assert!(matches!(read.exit, Some(LogFrame::Exit { .. })));
}

#[tokio::test]
async fn retention_deletes_old_and_excess_ended_runs_only() {
    let s = Store::temporary().unwrap();
    let policy = Retention {
        max_age: Duration::from_secs(3600),
        per_account: 3,
    };
    // a: 5 runs; the oldest two ended, one of them is also live-excess.
    let mut a = Vec::new();
    for i in 0..5 {
        let e = insert(&s, "a", &format!("run_a{i}")).await;
        e.push_output(Stream::Stdout, Bytes::from_static(b"out"))
            .await;
        a.push(e);
    }
    a[0].finish(RunState::Exited, Some(0), None).await;
    // a[1] stays live: never deleted, even past the per-account limit.
    a[4].finish(RunState::Exited, Some(0), None).await;
    let b = insert(&s, "b", "run_b0").await;
    b.finish(RunState::Exited, Some(0), None).await;

    let now = OffsetDateTime::now_utc();
    assert_eq!(
        s.apply_retention(now, &policy),
        1,
        "a0 is beyond a's newest 3"
    );
    assert!(s.get("a", "run_a0").is_none());
    assert!(s.get("a", "run_a1").is_some(), "live runs stay");
    assert!(s.get("b", "run_b0").is_some());

    // Two hours later, every ended run is too old.
    let later = now + time::Duration::hours(2);
    assert_eq!(s.apply_retention(later, &policy), 2);
    assert!(s.get("a", "run_a4").is_none() && s.get("b", "run_b0").is_none());
    assert_eq!(
        s.list("a", &RunFilter::default(), None, 10).0.len(),
        3,
        "a1..a3 are live"
    );
    s.flush().await;

    // The database holds no frames of deleted runs.
    let shared = s.shared.clone();
    let left: i64 = shared
        .readers
        .with(|c| Ok(c.query_row("SELECT COUNT(*) FROM frames", [], |r| r.get(0))?))
        .unwrap();
    assert_eq!(left, 3);
    let runs: i64 = shared
        .readers
        .with(|c| Ok(c.query_row("SELECT COUNT(*) FROM runs", [], |r| r.get(0))?))
        .unwrap();
    assert_eq!(runs, 3);
}

#[tokio::test]
async fn idempotency_keys_replay_or_refuse() {
    let s = Store::temporary().unwrap();
    let key = |key: &str, request: &str| Idempotency {
        key: key.into(),
        request: request.into(),
    };
    let with = |id: &str, k: Idempotency| NewRun {
        idempotency: Some(k),
        ..new_run(id)
    };
    let Inserted::Created(first) = s
        .insert("a", with("run_1", key("k1", "{1}")))
        .await
        .unwrap()
    else {
        panic!("first use creates")
    };
    let original = serde_json::to_string(&first.snapshot()).unwrap();
    first.set_state(RunState::Running);

    // Same key, same body: the original response, no new run.
    match s
        .insert("a", with("run_2", key("k1", "{1}")))
        .await
        .unwrap()
    {
        Inserted::Replayed(r) => {
            assert_eq!(r.run_id, "run_1");
            assert_eq!(r.response, original, "the original body, not today's state");
        }
        other => panic!("{other:?}"),
    }
    assert!(s.get("a", "run_2").is_none());
    let found = s.find_replay("a", &key("k1", "{1}")).await.unwrap();
    assert_eq!(found.unwrap().run_id, "run_1");

    // Same key, other body: refused.
    assert!(matches!(
        s.insert("a", with("run_3", key("k1", "{2}"))).await,
        Err(StoreError::IdempotencyKeyReused)
    ));
    assert!(matches!(
        s.find_replay("a", &key("k1", "{2}")).await,
        Err(StoreError::IdempotencyKeyReused)
    ));
    // Keys are per account.
    assert!(matches!(
        s.insert("b", with("run_4", key("k1", "{2}")))
            .await
            .unwrap(),
        Inserted::Created(_)
    ));
    assert!(
        s.find_replay("a", &key("k2", "{1}"))
            .await
            .unwrap()
            .is_none()
    );

    // Concurrent first uses of one key: exactly one run.
    let (x, y) = tokio::join!(
        s.insert("c", with("run_5", key("k", "{}"))),
        s.insert("c", with("run_6", key("k", "{}")))
    );
    let created = [x.unwrap(), y.unwrap()]
        .iter()
        .filter(|i| matches!(i, Inserted::Created(_)))
        .count();
    assert_eq!(created, 1);

    // After 24 hours the key is forgotten.
    s.apply_retention(
        OffsetDateTime::now_utc() + time::Duration::hours(25),
        &Retention::default(),
    );
    s.flush().await;
    assert!(
        s.find_replay("a", &key("k1", "{2}"))
            .await
            .unwrap()
            .is_none()
    );
}

/// A new run whose record says it started `ago` seconds before `t0`.
fn started_before(id: &str, t0: OffsetDateTime, ago: i64) -> NewRun {
    let mut new = new_run(id);
    new.record.started_at = Some(t0 - time::Duration::seconds(ago));
    new
}

async fn insert_new(s: &Store, owner: &str, new: NewRun) -> Arc<Entry> {
    match s.insert(owner, new).await.unwrap() {
        Inserted::Created(entry) => entry,
        other => panic!("expected a new run, got {other:?}"),
    }
}

fn usage_rows(s: &Store) -> i64 {
    s.shared
        .readers
        .with(|c| Ok(c.query_row("SELECT COUNT(*) FROM usage", [], |r| r.get(0))?))
        .unwrap()
}

#[tokio::test]
async fn usage_ledger_keeps_deleted_and_retained_runs() {
    let s = Store::temporary().unwrap();
    let t0 = OffsetDateTime::now_utc();
    let (secs, hour) = (time::Duration::seconds, time::Duration::hours(1));
    let (start, end) = (t0 - hour, t0 + hour);

    // run_a ran about 100 s and ended.
    let a = insert_new(&s, "a", started_before("run_a", t0, 100)).await;
    a.set_state(RunState::Running);
    a.finish(RunState::Exited, Some(0), None).await;
    let run = a.snapshot();
    let finished = run.finished_at.unwrap();
    let a_secs = wall_seconds(run.started_at.unwrap(), finished);
    assert!((100..=101).contains(&a_secs), "{a_secs}");
    let now = finished + secs(1);
    assert_eq!(s.run_seconds("a", start, end, now).await.unwrap(), a_secs);

    // Deleting it gives nothing back.
    s.remove("a", "run_a").unwrap();
    s.flush().await;
    assert!(s.get("a", "run_a").is_none());
    assert_eq!(s.run_seconds("a", start, end, now).await.unwrap(), a_secs);

    // A run spanning the period's start counts only its part inside.
    let run_secs = |start, now| s.run_seconds("a", start, start + hour, now);
    assert_eq!(run_secs(finished - secs(40), now).await.unwrap(), 40);
    assert_eq!(run_secs(finished, now).await.unwrap(), 0);
    assert_eq!(run_secs(finished - 3 * hour, now).await.unwrap(), 0);

    // run_b starts the ordinary way (its `running` record opens its row), ends, and is then
    // removed by retention: it still counts.
    let b = insert(&s, "a", "run_b").await;
    b.set_state(RunState::Running);
    tokio::time::sleep(Duration::from_millis(20)).await;
    b.finish(RunState::Exited, Some(0), None).await;
    let policy = Retention {
        max_age: Duration::from_secs(3600),
        per_account: 1000,
    };
    let later = t0 + 2 * hour;
    assert_eq!(s.apply_retention(later, &policy), 1);
    s.flush().await;
    assert!(s.get("a", "run_b").is_none());
    let period = (t0 - hour, t0 + 3 * hour);
    assert_eq!(
        s.run_seconds("a", period.0, period.1, later).await.unwrap(),
        a_secs + 1
    );

    // A live run counts up to now.
    let c = insert_new(&s, "a", started_before("run_c", t0, 30)).await;
    c.set_state(RunState::Running);
    s.flush().await;
    assert_eq!(
        s.run_seconds("a", start, end, t0 + secs(60)).await.unwrap(),
        a_secs + 1 + 90
    );
    assert_eq!(s.live_count("a"), 1);
    // Deleted while live, it counts up to its deletion (then its own end), not for ever.
    s.remove("a", "run_c").unwrap();
    s.flush().await;
    let c_secs = s.run_seconds("a", period.0, period.1, later).await.unwrap() - a_secs - 1;
    assert!((30..=35).contains(&c_secs), "{c_secs}");
    c.finish(RunState::Failed, None, Some("deleted".into()))
        .await;
    let c_secs = s.run_seconds("a", period.0, period.1, later).await.unwrap() - a_secs - 1;
    assert!((30..=35).contains(&c_secs), "{c_secs}");
    assert_eq!(s.live_count("a"), 0);

    // Other accounts' runs are not counted.
    assert_eq!(s.run_seconds("b", start, end, now).await.unwrap(), 0);

    // Rows are pruned once they ended before the longest period; live runs' rows stay.
    let d = insert(&s, "a", "run_d").await;
    d.set_state(RunState::Running);
    s.flush().await;
    assert_eq!(usage_rows(&s), 4);
    s.apply_retention(t0 + USAGE_WINDOW - hour, &policy);
    s.flush().await;
    assert_eq!(usage_rows(&s), 4, "within the longest period");
    s.apply_retention(t0 + USAGE_WINDOW + hour, &policy);
    s.flush().await;
    assert_eq!(usage_rows(&s), 1, "only the live run's row is left");
}

#[tokio::test]
async fn a_version_2_database_gains_a_usage_ledger_of_its_runs() {
    let dir = TempDir::new().unwrap();
    let t0 = OffsetDateTime::now_utc();
    let hour = time::Duration::hours(1);
    let a_secs;
    {
        let s = Store::open(&dir.0).unwrap();
        let a = insert_new(&s, "a", started_before("run_a", t0, 100)).await;
        a.set_state(RunState::Running);
        a.finish(RunState::Exited, Some(0), None).await;
        let run = a.snapshot();
        a_secs = wall_seconds(run.started_at.unwrap(), run.finished_at.unwrap());
        let live = insert_new(&s, "a", started_before("run_live", t0, 50)).await;
        live.set_state(RunState::Running);
        insert(&s, "a", "run_queued").await;
        s.flush().await;
    }
    {
        let conn = rusqlite::Connection::open(dir.0.join(DB_FILE)).unwrap();
        conn.execute_batch(
            "DROP TABLE usage; ALTER TABLE runs DROP COLUMN participant;
             ALTER TABLE runs DROP COLUMN role; PRAGMA user_version = 2;",
        )
        .unwrap();
    }
    let s = Store::open(&dir.0).unwrap();
    assert_eq!(usage_rows(&s), 2, "the runs that started");
    let now = t0 + time::Duration::seconds(10);
    let expected = a_secs + 60;
    assert_eq!(
        s.run_seconds("a", t0 - hour, t0 + hour, now).await.unwrap(),
        expected
    );
    // From then on, deleting runs gives nothing back.
    s.remove("a", "run_a").unwrap();
    s.flush().await;
    assert_eq!(
        s.run_seconds("a", t0 - hour, t0 + hour, now).await.unwrap(),
        expected
    );
    drop(s);

    // A database from a newer runner is refused.
    {
        let conn = rusqlite::Connection::open(dir.0.join(DB_FILE)).unwrap();
        conn.execute_batch("PRAGMA user_version = 5;").unwrap();
    }
    assert!(matches!(Store::open(&dir.0), Err(StoreError::TooNew(5))));
}

/// The database, its WAL files and the runner id are private even in a state dir others may
/// enter, and a database an older runner left world-readable is made private on open.
#[tokio::test]
async fn the_store_files_are_private_whatever_the_dir_allows() {
    use std::os::unix::fs::PermissionsExt as _;
    let dir = TempDir::new().unwrap();
    let mode = |name: &str| {
        std::fs::metadata(dir.0.join(name))
            .unwrap()
            .permissions()
            .mode()
            & 0o777
    };
    std::fs::set_permissions(&dir.0, std::fs::Permissions::from_mode(0o755)).unwrap();
    {
        let s = Store::open(&dir.0).unwrap();
        let run = insert(&s, "a", "run_private").await;
        run.push_output(Stream::Stdout, Bytes::from_static(b"secret output"))
            .await;
        s.flush().await;
        for name in [DB_FILE, "runs.db-wal", "runs.db-shm", RUNNER_ID_FILE] {
            assert_eq!(mode(name), 0o600, "{name}");
        }
    }
    std::fs::set_permissions(dir.0.join(DB_FILE), std::fs::Permissions::from_mode(0o644)).unwrap();
    let _s = Store::open(&dir.0).unwrap();
    assert_eq!(mode(DB_FILE), 0o600);
}

fn named(id: &str, name: &str, participant: Option<&str>, role: Option<&str>) -> NewRun {
    let mut new = new_run(id);
    new.record.name = Some(name.to_owned());
    new.record.participant = participant.map(str::to_owned);
    new.record.role = role.map(str::to_owned);
    new
}

/// A name stands for the account's live run that has it, else for its one ended run with it;
/// a second live run cannot take it, and several ended runs make it ambiguous.
#[tokio::test]
async fn runs_are_found_by_name_and_a_live_name_is_taken_once() {
    let s = Store::temporary().unwrap();
    let first = insert_new(&s, "a", named("run_1", "web", None, None)).await;
    // Another account's run and name are its own.
    insert_new(&s, "b", named("run_b", "web", None, None)).await;
    assert_eq!(s.find("a", "web").unwrap().id, "run_1");
    assert_eq!(s.find("a", "run_1").unwrap().id, "run_1");
    assert_eq!(s.find("b", "web").unwrap().id, "run_b");
    assert!(matches!(s.find("a", "run_b"), Err(FindError::NotFound(_))));
    assert!(matches!(s.find("a", "db"), Err(FindError::NotFound(_))));

    match s.insert("a", named("run_2", "web", None, None)).await {
        Err(StoreError::NameTaken { name, id }) => {
            assert_eq!((name, id), ("web".into(), "run_1".into()))
        }
        other => panic!("expected the name to be taken, got {other:?}"),
    }
    assert!(s.get("a", "run_2").is_none(), "nothing was recorded");

    // Once it ended, the name is free; the live run wins the lookup.
    first.finish(RunState::Exited, Some(0), None).await;
    let second = insert_new(&s, "a", named("run_2", "web", None, None)).await;
    assert_eq!(s.find("a", "web").unwrap().id, "run_2");
    // With both ended, the name is ambiguous and the error lists both, newest first.
    second.finish(RunState::Exited, Some(0), None).await;
    match s.find("a", "web") {
        Err(FindError::Ambiguous { name, ids }) => {
            assert_eq!(name, "web");
            assert_eq!(ids, ["run_2", "run_1"]);
        }
        other => panic!("expected an ambiguous name, got {other:?}"),
    }
    // Deleting one leaves the other as the name's run.
    s.remove("a", "run_2").unwrap();
    assert_eq!(s.find("a", "web").unwrap().id, "run_1");
}

/// Two requests for one name at once: one run gets it.
#[tokio::test]
async fn concurrent_runs_with_one_name_get_it_once() {
    let s = Store::temporary().unwrap();
    let (x, y) = tokio::join!(
        s.insert("a", named("run_x", "job", None, None)),
        s.insert("a", named("run_y", "job", None, None))
    );
    let created = [x, y]
        .into_iter()
        .filter(|r| matches!(r, Ok(Inserted::Created(_))))
        .count();
    assert_eq!(created, 1);
}

#[tokio::test]
async fn lists_filter_by_state_name_participant_and_role() {
    let s = Store::temporary().unwrap();
    let done = insert_new(&s, "a", named("run_1", "one", Some("ann"), Some("agent"))).await;
    done.finish(RunState::Exited, Some(0), None).await;
    let live = insert_new(&s, "a", named("run_2", "two", Some("bob"), Some("agent"))).await;
    live.set_state(RunState::Running);
    insert_new(&s, "a", named("run_3", "three", Some("ann"), None)).await;
    let ids = |filter: RunFilter| -> Vec<String> {
        s.list("a", &filter, None, 10)
            .0
            .into_iter()
            .map(|r| r.id)
            .collect()
    };
    assert_eq!(ids(RunFilter::default()), ["run_3", "run_2", "run_1"]);
    let states = |states: &[RunState]| RunFilter {
        states: states.to_vec(),
        ..RunFilter::default()
    };
    assert_eq!(ids(states(&[RunState::Running])), ["run_2"]);
    assert_eq!(
        ids(states(&[RunState::Queued, RunState::Exited])),
        ["run_3", "run_1"]
    );
    let by = |participant: Option<&str>, role: Option<&str>, name: Option<&str>| RunFilter {
        participant: participant.map(str::to_owned),
        role: role.map(str::to_owned),
        name: name.map(str::to_owned),
        ..RunFilter::default()
    };
    assert_eq!(ids(by(Some("ann"), None, None)), ["run_3", "run_1"]);
    assert_eq!(ids(by(None, Some("agent"), None)), ["run_2", "run_1"]);
    assert_eq!(ids(by(Some("ann"), Some("agent"), None)), ["run_1"]);
    assert_eq!(ids(by(None, None, Some("two"))), ["run_2"]);
    // A page of a filtered list continues after the last run it held.
    let (page, next) = s.list("a", &by(Some("ann"), None, None), None, 1);
    assert_eq!(page[0].id, "run_3");
    let (page, next) = s.list("a", &by(Some("ann"), None, None), next, 1);
    assert_eq!((page[0].id.as_str(), next), ("run_1", None));
}

#[tokio::test]
async fn output_past_the_limit_is_dropped_and_what_is_stored_counts_after_a_reopen() {
    let dir = TempDir::new().unwrap();
    let mut new = new_run("run_chatty");
    new.record.options.max_output_mb = Some(1);
    let half = Bytes::from(vec![b'x'; 600 * 1024]);
    let id = {
        let s = Store::open(&dir.0).unwrap();
        let e = insert_new(&s, "a", new).await;
        e.set_state(RunState::Running);
        e.push_output(Stream::Stdout, half.clone()).await;
        s.flush().await;
        assert!(!e.output_limited(), "600 KiB is within 1 MiB");
        e.id.clone()
    };
    let s = Store::open(&dir.0).unwrap();
    let e = s.get("a", &id).unwrap();
    e.push_output(Stream::Stderr, half.clone()).await;
    assert!(e.output_limited(), "the count went on from what was stored");
    tokio::time::timeout(Duration::from_secs(5), e.until_output_limited())
        .await
        .expect("whoever waits for the limit is woken");
    e.push_output(Stream::Stdout, half).await;
    s.flush().await;
    assert_eq!(
        s.stored_bytes(&e).await.unwrap(),
        [600 * 1024, 1024 * 1024 - 600 * 1024],
        "exactly the limit is kept, what came after it dropped"
    );
}

/// Alice's changes received so far: (run id, revision, state of the run when received).
fn received(
    s: &Store,
    rx: &mut tokio::sync::broadcast::Receiver<Change>,
) -> Vec<(String, u64, Option<RunState>)> {
    std::iter::from_fn(|| rx.try_recv().ok())
        .filter(|c| c.owner == "alice")
        .map(|c| {
            let state = s.get(&c.owner, &c.id).map(|e| e.state());
            (c.id, c.revision, state)
        })
        .collect()
}

#[tokio::test]
async fn every_change_to_an_accounts_runs_takes_its_next_revision() {
    let s = Store::temporary().unwrap();
    let (mut rx, start) = s.changes().subscribe("alice");
    assert_eq!(s.changes().current("alice"), start);
    let one = |n: u64, state: Option<RunState>| vec![("run_1".to_owned(), start + n, state)];
    // Each change is announced once it is visible: the record read on receipt shows it.
    let e = insert(&s, "alice", "run_1").await;
    assert_eq!(received(&s, &mut rx), one(1, Some(RunState::Queued)));
    insert(&s, "bob", "run_2").await;
    assert_eq!(
        s.changes().current("bob"),
        start + 1,
        "bob's count is his own"
    );
    e.set_state(RunState::Starting);
    assert_eq!(received(&s, &mut rx), one(2, Some(RunState::Starting)));
    assert!(e.set_container("c1"));
    e.set_state(RunState::Running);
    assert_eq!(
        received(&s, &mut rx),
        one(3, Some(RunState::Running)),
        "the container id is not part of the record"
    );
    let ports = vec![bus_api::Port {
        container_port: 80,
        host_port: Some(8080),
        protocol: Default::default(),
        host_ip: "127.0.0.1".into(),
    }];
    e.set_ports(ports.clone());
    assert_eq!(received(&s, &mut rx), one(4, Some(RunState::Running)));
    e.set_ports(ports);
    e.restarting(1);
    assert_eq!(
        received(&s, &mut rx),
        one(5, Some(RunState::Starting)),
        "the same ports again are no change"
    );
    e.finish(RunState::Exited, Some(0), None).await;
    assert_eq!(received(&s, &mut rx), one(6, Some(RunState::Exited)));
    s.remove("alice", "run_1").unwrap();
    assert_eq!(received(&s, &mut rx), one(7, None));
    assert!(s.remove("alice", "run_1").is_none());
    assert_eq!(s.changes().current("alice"), start + 7);
    assert_eq!(s.changes().current("bob"), start + 1);
}

#[tokio::test]
async fn the_end_of_a_deleted_run_is_not_announced_again() {
    let s = Store::temporary().unwrap();
    let (mut rx, start) = s.changes().subscribe("alice");
    let e = insert(&s, "alice", "run_1").await;
    s.remove("alice", "run_1").unwrap();
    e.finish(RunState::Failed, None, Some("deleted".into()))
        .await;
    let got: Vec<u64> = received(&s, &mut rx).into_iter().map(|c| c.1).collect();
    assert_eq!(got, [start + 1, start + 2]);
}

#[tokio::test]
async fn revisions_after_a_reopen_are_larger_than_before_it() {
    let dir = TempDir::new().unwrap();
    let before = {
        let s = Store::open(&dir.0).unwrap();
        let e = insert(&s, "alice", "run_1").await;
        e.set_state(RunState::Running);
        s.flush().await;
        s.changes().current("alice")
    };
    let s = Store::open(&dir.0).unwrap();
    assert!(s.changes().current("alice") > before);
    let e = s.get("alice", "run_1").unwrap();
    e.finish(RunState::Exited, Some(0), None).await;
    assert!(s.changes().current("alice") > before + 1);
}

#[tokio::test]
async fn all_of_an_owners_runs_come_newest_first_with_their_serials() {
    let s = Store::temporary().unwrap();
    let a = insert(&s, "alice", "run_a").await;
    insert(&s, "bob", "run_b").await;
    let c = insert(&s, "alice", "run_c").await;
    let got: Vec<(u64, String)> = s
        .all_of("alice")
        .into_iter()
        .map(|(serial, run)| (serial, run.id))
        .collect();
    assert_eq!(
        got,
        [
            (c.serial, "run_c".to_owned()),
            (a.serial, "run_a".to_owned())
        ]
    );
    assert!(s.all_of("carol").is_empty());
}

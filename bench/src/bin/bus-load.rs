//! The load driver of `bench/load`: through busd's socket, it starts `--runs` live runs,
//! follows each with `--followers` log followers over `--connections` connections, and keeps
//! `--creators` concurrent `Run` calls (create, stream, exit) going for `--seconds`; then it
//! deletes every run it made and prints one JSON line of counts and errors.
//!
//! Every follower checks what it got: seqs 1..=N once each, in order, no gap, the exit once,
//! after the last chunk, with code 0. Every `Run` checks its output and exit code.
//!
//! `cargo build --release -p bus-bench --bin bus-load`; `bench/load` builds and runs it.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bus::proto::containers::v1::{
    CreateRunRequest, DeleteRunRequest, RunRequest, RunSpec, StreamLogsRequest,
    containers_client::ContainersClient, log_event, run_event,
};
use tokio::sync::Mutex;
use tonic::transport::Channel;

/// The load to put on busd.
#[derive(Debug, clap::Parser)]
#[command(
    name = "bus-load",
    about = "The load driver of bench/load (not a test)"
)]
struct Options {
    /// busd's socket.
    #[arg(long, default_value_os_t = bus::default_socket_path())]
    socket: std::path::PathBuf,
    /// Live runs, each followed by --followers.
    #[arg(long, default_value_t = 50)]
    runs: usize,
    /// Log followers per live run.
    #[arg(long, default_value_t = 10)]
    followers: usize,
    /// Concurrent `Run` calls (create, stream, exit), repeated for --seconds.
    #[arg(long, default_value_t = 50)]
    creators: usize,
    /// Connections to busd the tasks share.
    #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u64).range(1..))]
    connections: u64,
    /// How long the creates go on.
    #[arg(long, default_value_t = 60)]
    seconds: u64,
}

/// Counts shared by every task.
#[derive(Default)]
struct Tally {
    followers_ok: AtomicU64,
    follower_errors: AtomicU64,
    chunks: AtomicU64,
    creates_ok: AtomicU64,
    create_errors: AtomicU64,
    delete_errors: AtomicU64,
    /// The first few error messages.
    samples: Mutex<Vec<String>>,
}

impl Tally {
    async fn error(&self, counter: &AtomicU64, what: String) {
        counter.fetch_add(1, Ordering::SeqCst);
        let mut samples = self.samples.lock().await;
        if samples.len() < 10 {
            samples.push(what);
        }
    }
}

fn spec(script: &str) -> RunSpec {
    RunSpec {
        argv: vec!["sh".into(), "-c".into(), script.into()],
        ..Default::default()
    }
}

/// Follows `id` to its end and checks the stream.
async fn follow(channel: Channel, id: String, tally: Arc<Tally>) {
    let mut client = ContainersClient::new(channel);
    let request = StreamLogsRequest {
        run_id: id.clone(),
        follow: true,
        ..Default::default()
    };
    let mut stream = match client.stream_logs(request).await {
        Ok(response) => response.into_inner(),
        Err(status) => {
            return tally
                .error(&tally.follower_errors, format!("follow {id}: {status}"))
                .await;
        }
    };
    let mut last = 0;
    let mut exits = 0;
    let problem = loop {
        match stream.message().await {
            Ok(Some(event)) => match event.event {
                Some(log_event::Event::Output(chunk)) => {
                    if chunk.seq != last + 1 || exits > 0 {
                        break Some(format!("follow {id}: seq {} after {last}", chunk.seq));
                    }
                    last = chunk.seq;
                    tally.chunks.fetch_add(1, Ordering::Relaxed);
                }
                Some(log_event::Event::Exited(exit)) => {
                    exits += 1;
                    if exit.exit_code != Some(0) || exit.last_seq != last {
                        break Some(format!(
                            "follow {id}: exit {:?} after seq {} (last_seq {})",
                            exit.exit_code, last, exit.last_seq
                        ));
                    }
                }
                Some(log_event::Event::Gap(gap)) => {
                    break Some(format!("follow {id}: gap: {}", gap.reason));
                }
                Some(log_event::Event::Keepalive(_) | log_event::Event::Notice(_)) | None => {}
            },
            Ok(None) if exits == 1 => break None,
            Ok(None) => break Some(format!("follow {id}: ended with {exits} exits")),
            Err(status) => break Some(format!("follow {id}: {status}")),
        }
    };
    match problem {
        None => {
            tally.followers_ok.fetch_add(1, Ordering::SeqCst);
        }
        Some(what) => tally.error(&tally.follower_errors, what).await,
    }
}

/// `Run` calls one after another until `until`, each checked.
async fn create_loop(channel: Channel, until: Instant, worker: usize, tally: Arc<Tally>) {
    let mut client = ContainersClient::new(channel);
    let mut n = 0;
    while Instant::now() < until {
        n += 1;
        let text = format!("w{worker} n{n}");
        let request = RunRequest {
            spec: Some(spec(&format!("echo {text}"))),
        };
        let outcome = async {
            let mut events = client.run(request).await?.into_inner();
            let mut output = Vec::new();
            let mut id = String::new();
            while let Some(event) = events.message().await? {
                match event.event {
                    Some(run_event::Event::Accepted(run)) => id = run.id,
                    Some(run_event::Event::Output(chunk)) => output.extend_from_slice(&chunk.data),
                    Some(run_event::Event::Exited(exit)) => {
                        return Ok::<_, tonic::Status>((id, output, exit.exit_code));
                    }
                    Some(run_event::Event::Notice(_)) | None => {}
                }
            }
            Ok((id, output, None))
        }
        .await;
        match outcome {
            Ok((id, output, Some(0))) if output == format!("{text}\n").as_bytes() => {
                tally.creates_ok.fetch_add(1, Ordering::SeqCst);
                delete(&mut client, id, &tally).await;
            }
            Ok((id, output, code)) => {
                let what = format!(
                    "run {id}: exit {code:?}, output {:?}",
                    String::from_utf8_lossy(&output)
                );
                tally.error(&tally.create_errors, what).await;
            }
            Err(status) => {
                let what = format!("run: {:?}: {}", status.code(), status.message());
                tally.error(&tally.create_errors, what).await;
            }
        }
    }
}

async fn delete(client: &mut ContainersClient<Channel>, id: String, tally: &Tally) {
    if let Err(status) = client
        .delete_run(DeleteRunRequest { run_id: id.clone() })
        .await
    {
        tally
            .error(&tally.delete_errors, format!("delete {id}: {status}"))
            .await;
    }
}

#[tokio::main]
async fn main() {
    let o = <Options as clap::Parser>::parse();
    let mut channels = Vec::new();
    for _ in 0..o.connections {
        channels.push(bus::connect(&o.socket).await.expect("busd answers"));
    }
    let channel = |i: usize| channels[i % channels.len()].clone();
    let tally = Arc::new(Tally::default());
    let started = Instant::now();

    // Live runs: a line every half second for the whole load, then a little longer.
    let lines = o.seconds * 2 + 10;
    let script =
        format!("i=0; while [ $i -lt {lines} ]; do i=$((i+1)); echo line $i; sleep 0.5; done");
    let mut live = Vec::new();
    let mut client = ContainersClient::new(channel(0));
    for _ in 0..o.runs {
        let request = CreateRunRequest {
            spec: Some(spec(&script)),
            ..CreateRunRequest::default()
        };
        match client.create_run(request).await {
            Ok(run) => live.push(run.into_inner().id),
            Err(status) => {
                tally
                    .error(&tally.create_errors, format!("create: {status}"))
                    .await
            }
        }
    }
    eprintln!(
        "load: {} live runs created in {:?}",
        live.len(),
        started.elapsed()
    );

    let mut tasks = Vec::new();
    let mut next = 0;
    for id in &live {
        for _ in 0..o.followers {
            next += 1;
            tasks.push(tokio::spawn(follow(
                channel(next),
                id.clone(),
                tally.clone(),
            )));
        }
    }
    let until = Instant::now() + Duration::from_secs(o.seconds);
    for worker in 0..o.creators {
        next += 1;
        tasks.push(tokio::spawn(create_loop(
            channel(next),
            until,
            worker,
            tally.clone(),
        )));
    }
    for task in tasks {
        task.await.expect("a load task panicked");
    }
    let live_count = live.len();
    for id in live {
        delete(&mut client, id, &tally).await;
    }
    drop(channels);
    let samples = tally.samples.lock().await.clone();
    let result = serde_json::json!({
        "seconds": (started.elapsed().as_secs_f64() * 10.0).round() / 10.0,
        "live_runs": live_count,
        "followers_ok": tally.followers_ok.load(Ordering::SeqCst),
        "follower_errors": tally.follower_errors.load(Ordering::SeqCst),
        "chunks": tally.chunks.load(Ordering::SeqCst),
        "creates_ok": tally.creates_ok.load(Ordering::SeqCst),
        "create_errors": tally.create_errors.load(Ordering::SeqCst),
        "delete_errors": tally.delete_errors.load(Ordering::SeqCst),
        "error_samples": samples,
    });
    println!("{result}");
}

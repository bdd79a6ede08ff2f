//! Runs a command through busd and exits with its exit code: `cargo run --example run -- CMD...`.
use bus::proto::containers::v1::{
    RunRequest, RunSpec, containers_client::ContainersClient, run_event::Event,
};
use std::io::Write;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut argv: Vec<String> = std::env::args().skip(1).collect();
    if argv.is_empty() {
        argv = vec!["sh".into(), "-c".into(), "printf OK".into()];
    }
    let channel = bus::connect(&bus::default_socket_path()).await?;
    let request = RunRequest {
        spec: Some(RunSpec {
            argv,
            ..Default::default()
        }),
    };
    let mut events = ContainersClient::new(channel)
        .run(request)
        .await?
        .into_inner();
    while let Some(event) = events.message().await? {
        match event.event {
            Some(Event::Output(chunk)) => std::io::stdout().write_all(&chunk.data)?,
            Some(Event::Exited(exited)) => {
                std::io::stdout().flush()?;
                // No exit code: the run failed to start or was lost (`exited.reason` says).
                std::process::exit(exited.exit_code.unwrap_or(125));
            }
            _ => {}
        }
    }
    Err("the stream ended before the exit frame".into())
}

//! The input half of an exec or attach WebSocket session: stdin, close-stdin, resize and
//! signal frames applied to an exec or to a run's own container, the same way for both.

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicI32, Ordering};

use axum::extract::ws::{Message, WebSocket};
use bus_api::exec::{Frame, SignalFrame};
use futures::StreamExt as _;
use futures::stream::SplitStream;
use tokio::io::{AsyncWrite, AsyncWriteExt as _};

use crate::engine::Engine;
use crate::engine::engine_message;
use crate::runs::execs::{control_character, signal_exec};

/// The write half of an engine attach: the command's stdin.
pub type Input = Pin<Box<dyn AsyncWrite + Send>>;

/// How long after a session's first resize that size (or a later one) is applied again.
const RESIZE_SETTLE: std::time::Duration = std::time::Duration::from_millis(300);

/// What a session's frames act on.
#[derive(Debug, Clone)]
pub enum Target {
    /// An exec, by its engine id.
    Exec(String),
    /// A run's container, by its engine id.
    Container(String),
}

impl Target {
    /// Resizes the command's terminal; a failure is logged and the session goes on.
    pub async fn resize(&self, engine: &Engine, cols: u16, rows: u16) {
        let result = match self {
            Target::Exec(id) => engine.resize_exec(id, cols, rows).await,
            Target::Container(id) => engine.resize_container(id, cols, rows).await,
        };
        if let Err(e) = result {
            tracing::debug!(on = ?self, error = %engine_message(&e), "resize failed");
        }
    }

    /// Signals the command's process (an exec's by host PID, a container's main one).
    async fn signal(&self, engine: &Engine, signal: i32) -> Result<(), String> {
        match self {
            Target::Exec(id) => signal_exec(engine, id, signal)
                .await
                .map_err(|e| e.to_string()),
            Target::Container(id) => engine
                .signal(id, &signal.to_string())
                .await
                .map_err(|e| engine_message(&e)),
        }
    }
}

/// How a session's input is wired.
pub struct Wiring {
    /// The command has a terminal (resize frames apply; keyboard signals can be typed).
    pub tty: bool,
    /// The client may send stdin (stdin and close-stdin frames apply).
    pub stdin: bool,
    /// The last signal delivered (0: none), to tell a death by it from an ordinary exit.
    pub signalled: Arc<AtomicI32>,
}

/// Applies the client's frames to `target` until the client closes or goes away, then keeps
/// `input` (open, or shut by a close-stdin frame) until the task is dropped with the session.
pub async fn apply(
    mut rx: SplitStream<WebSocket>,
    engine: Arc<Engine>,
    target: Target,
    mut input: Option<Input>,
    wiring: Wiring,
) {
    let mut closed = None;
    // The engine applies a terminal's initial size when the command starts, after a resize
    // that came right behind the start (Podman's console is set up asynchronously), so the
    // first resize is applied again once, a moment later.
    let mut again: Option<(u16, u16)> = None;
    let mut resized = false;
    let settle = tokio::time::sleep(RESIZE_SETTLE);
    tokio::pin!(settle);
    loop {
        let message = tokio::select! {
            message = rx.next() => message,
            () = &mut settle, if again.is_some() => {
                if let Some((cols, rows)) = again.take() {
                    target.resize(&engine, cols, rows).await;
                }
                continue;
            }
        };
        let Some(Ok(message)) = message else { break };
        let bytes = match message {
            Message::Binary(bytes) => bytes,
            Message::Close(_) => break,
            _ => continue,
        };
        match Frame::decode(&bytes) {
            Ok(Frame::Stdin(data)) if wiring.stdin => {
                if let Some(w) = input.as_mut()
                    && (w.write_all(&data).await.is_err() || w.flush().await.is_err())
                {
                    input = None;
                }
            }
            Ok(Frame::CloseStdin) if wiring.stdin => {
                if let Some(mut w) = input.take() {
                    let _ = w.shutdown().await;
                    // Kept (shut) until the session ends: dropping an attach's writer ends
                    // the attach, and the engine may not have passed all the input on yet.
                    closed = Some(w);
                }
            }
            Ok(Frame::Resize(size)) if wiring.tty => {
                if !resized {
                    resized = true;
                    settle
                        .as_mut()
                        .reset(tokio::time::Instant::now() + RESIZE_SETTLE);
                }
                if again.is_some() || !settle.is_elapsed() {
                    again = Some((size.cols, size.rows));
                }
                target.resize(&engine, size.cols, size.rows).await
            }
            Ok(Frame::Signal(SignalFrame { signal })) => {
                // With a terminal, keyboard signals are typed, so they reach the foreground
                // process; others go to the command's process.
                let control = control_character(signal).filter(|_| wiring.tty && wiring.stdin);
                let typed = match (control, input.as_mut()) {
                    (Some(c), Some(w)) => {
                        w.write_all(&[c]).await.is_ok() && w.flush().await.is_ok()
                    }
                    _ => false,
                };
                let sent = typed
                    || match target.signal(&engine, signal).await {
                        Ok(()) => true,
                        Err(e) => {
                            tracing::info!(on = ?target, signal, error = %e, "signal not delivered");
                            false
                        }
                    };
                if sent {
                    wiring.signalled.store(signal, Ordering::Relaxed);
                }
            }
            Ok(frame) => {
                tracing::debug!(on = ?target, channel = frame.channel(), "frame ignored")
            }
            Err(e) => tracing::debug!(on = ?target, error = %e, "bad frame ignored"),
        }
    }
    // A client that sent its frames and closed still gets its size applied again.
    if let Some((cols, rows)) = again {
        settle.await;
        target.resize(&engine, cols, rows).await;
    }
    // The writers stay alive until the task is dropped with the session.
    let _writers = (input, closed);
    std::future::pending::<()>().await;
}

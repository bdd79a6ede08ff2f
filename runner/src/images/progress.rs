//! Progress of a pull or push: the engine's messages as frames, on a task of its own.

use std::pin::Pin;

use bus_api::images::{ImageSummary, ProgressFrame};
use futures::{Stream, StreamExt as _};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

use super::error::{ImageError, registry_error};
use crate::engine::{EngineStream, TransferProgress};

/// Progress frames queued per stream before the engine's stream waits.
const PROGRESS_BUFFER: usize = 64;

/// A stream of progress frames, ending with a `result` frame or the error that ended it.
pub type Progress = Pin<Box<dyn Stream<Item = Result<ProgressFrame, ImageError>> + Send>>;

/// A pull's or push's progress message as a frame; `None` for one without a status.
fn progress_frame(message: TransferProgress) -> Option<ProgressFrame> {
    let status = message.status.filter(|s| !s.trim().is_empty())?;
    Some(ProgressFrame::Progress {
        id: message.id.filter(|i| !i.is_empty()),
        status,
        current: message.current.and_then(|n| u64::try_from(n).ok()),
        total: message.total.and_then(|n| u64::try_from(n).ok()),
    })
}

/// Drives an engine progress stream on a task of its own: the first item decides between an
/// error (returned) and a stream of frames that ends with `finish()`'s result or an error.
pub(super) async fn progress<F, Fut>(
    mut stream: EngineStream<TransferProgress>,
    finish: F,
) -> Result<Progress, ImageError>
where
    F: FnOnce() -> Fut + Send + 'static,
    Fut: std::future::Future<Output = Result<ImageSummary, ImageError>> + Send,
{
    let first = match stream.next().await {
        Some(Err(e)) => return Err(registry_error(e)),
        Some(Ok(message)) => progress_frame(message),
        None => None,
    };
    let (tx, rx) = mpsc::channel(PROGRESS_BUFFER);
    tokio::spawn(async move {
        // A caller that left does not stop the operation.
        if let Some(frame) = first {
            let _ = tx.send(Ok(frame)).await;
        }
        let mut failed = None;
        while let Some(item) = stream.next().await {
            match item {
                Ok(message) => {
                    if let Some(frame) = progress_frame(message) {
                        let _ = tx.send(Ok(frame)).await;
                    }
                }
                Err(e) => {
                    failed = Some(registry_error(e));
                    break;
                }
            }
        }
        let last = match failed {
            Some(err) => Err(err),
            None => finish().await,
        };
        let frame = match last {
            Ok(image) => Ok(ProgressFrame::Result { image }),
            Err(err) => {
                tracing::info!(error = %err, "image operation failed");
                Err(err)
            }
        };
        let _ = tx.send(frame).await;
    });
    Ok(ReceiverStream::new(rx).boxed())
}

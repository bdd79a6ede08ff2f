//! Progress of a pull or push: the engine's messages as frames, on a task of its own.

use std::pin::Pin;

use bus_api::images::{ImageSummary, ProgressFrame};
use futures::{Stream, StreamExt as _};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

use super::error::{ImageError, registry_error};
use crate::engine::EngineError;

/// Progress frames queued per stream before the engine's stream waits.
const PROGRESS_BUFFER: usize = 64;

/// A stream of progress frames, ending with a `result` frame or the error that ended it.
pub type Progress = Pin<Box<dyn Stream<Item = Result<ProgressFrame, ImageError>> + Send>>;

pub(super) type RawProgress = Result<
    (
        Option<String>,
        Option<String>,
        Option<bollard::models::ProgressDetail>,
    ),
    EngineError,
>;

fn progress_frame(
    id: Option<String>,
    status: Option<String>,
    detail: Option<bollard::models::ProgressDetail>,
) -> Option<ProgressFrame> {
    let status = status.filter(|s| !s.trim().is_empty())?;
    let detail = detail.unwrap_or_default();
    Some(ProgressFrame::Progress {
        id: id.filter(|i| !i.is_empty()),
        status,
        current: detail.current.and_then(|n| u64::try_from(n).ok()),
        total: detail.total.and_then(|n| u64::try_from(n).ok()),
    })
}

/// Drives an engine progress stream on a task of its own: the first item decides between an
/// error (returned) and a stream of frames that ends with `finish()`'s result or an error.
pub(super) async fn progress<F, Fut>(
    mut stream: Pin<Box<dyn Stream<Item = RawProgress> + Send>>,
    finish: F,
) -> Result<Progress, ImageError>
where
    F: FnOnce() -> Fut + Send + 'static,
    Fut: std::future::Future<Output = Result<ImageSummary, ImageError>> + Send,
{
    let first = match stream.next().await {
        Some(Err(e)) => return Err(registry_error(e)),
        Some(Ok((id, status, detail))) => progress_frame(id, status, detail),
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
                Ok((id, status, detail)) => {
                    if let Some(frame) = progress_frame(id, status, detail) {
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

//! The runner's image and build endpoints (`/api/v1/containers/images...`,
//! `/api/v1/containers/builds...`). Uploads (archives, build contexts) stream through as they
//! arrive, with their size in `Content-Length` when the caller gave it, so the runner can
//! refuse too large an upload before it is sent.

use bus_api::builds::{Build, BuildList, BuildLogFrame, BuildLogsQuery, CreateBuildQuery};
use bus_api::images::{
    ArchiveFormat, ImageDetail, ImageList, ImageSummary, LoadFromStorage, LoadResult,
    ProgressFrame, RegistryRequest, SaveImageQuery, TagImage,
};
use bus_api::paths;
use bytes::Bytes;
use futures::{Stream, StreamExt, TryStreamExt};
use reqwest::Method;
use serde::de::DeserializeOwned;

use super::error::frame_error;
use super::ndjson::FrameDecoder;
use super::{Upstream, UpstreamError};

/// A byte stream to upload; an error aborts the upload.
pub type Upload = futures::stream::BoxStream<'static, Result<Bytes, std::io::Error>>;

impl Upstream {
    /// `GET /api/v1/containers/images`.
    pub async fn list_images(&self) -> Result<ImageList, UpstreamError> {
        self.json(self.request(Method::GET, paths::IMAGES)).await
    }

    /// `GET /api/v1/containers/images/{ref}`.
    pub async fn inspect_image(&self, reference: &str) -> Result<ImageDetail, UpstreamError> {
        self.json(self.request(Method::GET, &paths::image(reference.trim())))
            .await
    }

    /// `DELETE /api/v1/containers/images/{ref}`.
    pub async fn remove_image(&self, reference: &str) -> Result<(), UpstreamError> {
        self.json::<serde::de::IgnoredAny>(
            self.request(Method::DELETE, &paths::image(reference.trim())),
        )
        .await
        .map(drop)
    }

    /// `POST /api/v1/containers/images/{ref}/tag`.
    pub async fn tag_image(
        &self,
        source: &str,
        target: &str,
    ) -> Result<ImageSummary, UpstreamError> {
        let body = TagImage {
            target: target.to_owned(),
        };
        self.json(
            self.request(Method::POST, &paths::image_tag(source.trim()))
                .json(&body),
        )
        .await
    }

    /// `POST /api/v1/containers/images/pull` or `.../push`: the progress frames. A refusal
    /// before the stream is an error; a failure during it, the last frame (`error`).
    pub async fn registry_operation(
        &self,
        push: bool,
        request: &RegistryRequest,
    ) -> Result<impl Stream<Item = Result<ProgressFrame, UpstreamError>> + use<>, UpstreamError>
    {
        let path = if push {
            paths::IMAGES_PUSH
        } else {
            paths::IMAGES_PULL
        };
        let response = self
            .send(self.request(Method::POST, path).json(request))
            .await?;
        Ok(self.ndjson(response))
    }

    /// `POST /api/v1/containers/images/load` with the archive streamed through.
    pub async fn load_image(
        &self,
        archive: Upload,
        size: Option<u64>,
    ) -> Result<LoadResult, UpstreamError> {
        let request = self.upload(
            self.request(Method::POST, paths::IMAGES_LOAD),
            archive,
            size,
        );
        self.json(request).await
    }

    /// `POST /api/v1/containers/images/load-from-storage`: the archive at `path` in the
    /// account's storage.
    pub async fn load_image_from_storage(&self, path: &str) -> Result<LoadResult, UpstreamError> {
        let body = LoadFromStorage {
            path: path.to_owned(),
        };
        self.json(
            self.request(Method::POST, paths::IMAGES_LOAD_FROM_STORAGE)
                .json(&body),
        )
        .await
    }

    /// `GET /api/v1/containers/images/{ref}/archive?format`: the archive's bytes.
    pub async fn save_image(
        &self,
        reference: &str,
        format: ArchiveFormat,
    ) -> Result<impl Stream<Item = Result<Bytes, UpstreamError>> + use<>, UpstreamError> {
        // The default goes without a query, so a runner that knows no formats still answers.
        let query = SaveImageQuery {
            format: (format != ArchiveFormat::Docker).then_some(format),
        };
        let response = self
            .send(
                self.request(Method::GET, &paths::image_archive(reference.trim()))
                    .query(&query),
            )
            .await?;
        let upstream = self.clone();
        Ok(response
            .bytes_stream()
            .map_err(move |e| upstream.unreachable(&e)))
    }

    /// `POST /api/v1/containers/builds?tags&dockerfile` with the context streamed through.
    pub async fn create_build(
        &self,
        tags: &[String],
        dockerfile: &str,
        context: Upload,
        size: Option<u64>,
    ) -> Result<Build, UpstreamError> {
        let query = CreateBuildQuery {
            tags: (!tags.is_empty()).then(|| tags.join(",")),
            dockerfile: (!dockerfile.is_empty()).then(|| dockerfile.to_owned()),
        };
        let request = self.request(Method::POST, paths::BUILDS).query(&query);
        self.json(self.upload(request, context, size)).await
    }

    /// `GET /api/v1/containers/builds`.
    pub async fn list_builds(&self) -> Result<BuildList, UpstreamError> {
        self.json(self.request(Method::GET, paths::BUILDS)).await
    }

    /// `GET /api/v1/containers/builds/{id}`.
    pub async fn get_build(&self, id: &str) -> Result<Build, UpstreamError> {
        self.json(self.request(Method::GET, &paths::build(id)))
            .await
    }

    /// `POST /api/v1/containers/builds/{id}/cancel`.
    pub async fn cancel_build(&self, id: &str) -> Result<Build, UpstreamError> {
        self.json(self.request(Method::POST, &paths::build_cancel(id)))
            .await
    }

    /// `DELETE /api/v1/containers/builds/{id}`.
    pub async fn delete_build(&self, id: &str) -> Result<(), UpstreamError> {
        self.json::<serde::de::IgnoredAny>(self.request(Method::DELETE, &paths::build(id)))
            .await
            .map(drop)
    }

    /// `GET /api/v1/containers/builds/{id}/logs?follow&after_seq`.
    pub async fn build_logs(
        &self,
        id: &str,
        follow: bool,
        after_seq: u64,
    ) -> Result<impl Stream<Item = Result<BuildLogFrame, UpstreamError>> + use<>, UpstreamError>
    {
        let request = self
            .request(Method::GET, &paths::build_logs(id))
            .query(&BuildLogsQuery { follow, after_seq });
        let response = self.send(request).await?;
        Ok(self.ndjson(response))
    }

    fn upload(
        &self,
        request: reqwest::RequestBuilder,
        body: Upload,
        size: Option<u64>,
    ) -> reqwest::RequestBuilder {
        let request = request
            .header(reqwest::header::CONTENT_TYPE, bus_api::images::ARCHIVE)
            .body(reqwest::Body::wrap_stream(body));
        match size {
            Some(size) => request.header(reqwest::header::CONTENT_LENGTH, size),
            None => request,
        }
    }

    /// A response's NDJSON body, one `T` per line.
    fn ndjson<T: DeserializeOwned + Send + 'static>(
        &self,
        response: reqwest::Response,
    ) -> impl Stream<Item = Result<T, UpstreamError>> + use<T> {
        let upstream = self.clone();
        let origin = self.origin.to_string();
        let bytes = response
            .bytes_stream()
            .map_err(move |e| upstream.unreachable(&e));
        futures::stream::unfold(
            (Box::pin(bytes), FrameDecoder::<T>::new(), origin, false),
            |(mut bytes, mut decoder, origin, done)| async move {
                if done {
                    return None;
                }
                loop {
                    match decoder.next_frame() {
                        Some(Ok(item)) => return Some((Ok(item), (bytes, decoder, origin, false))),
                        Some(Err(e)) => {
                            let err = frame_error(&origin, e);
                            return Some((Err(err), (bytes, decoder, origin, true)));
                        }
                        None => {}
                    }
                    match bytes.next().await {
                        Some(Ok(chunk)) => decoder.push(&chunk),
                        Some(Err(e)) => return Some((Err(e), (bytes, decoder, origin, true))),
                        None => {
                            let end = decoder.finish().map_err(|e| frame_error(&origin, e));
                            return end
                                .err()
                                .map(|err| (Err(err), (bytes, decoder, origin, true)));
                        }
                    }
                }
            },
        )
    }
}

//! The image and build routes in the OpenAPI document (merged into [`crate::openapi`]'s).
//! The functions only carry the documentation; the handlers are in `routes::images` and
//! `routes::builds`.

use bus_api::Problem;
use bus_api::builds::{Build, BuildList, BuildLogFrame, BuildState};
use bus_api::images::{
    Descriptor, ImageConfig, ImageDetail, ImageList, ImageSummary, LoadResult, ManifestRef,
    ProgressFrame, RegistryCredentials, RegistryRequest, TagImage,
};
use utoipa::OpenApi;

/// The image and build part of the document.
#[derive(OpenApi)]
#[openapi(
    paths(
        list_images,
        inspect_image,
        remove_image,
        tag_image,
        pull_image,
        push_image,
        load_image,
        save_image,
        create_build,
        list_builds,
        get_build,
        build_logs,
        cancel_build,
        delete_build,
    ),
    components(schemas(
        ImageSummary, ImageList, ImageDetail, Descriptor, ManifestRef, ImageConfig,
        RegistryCredentials, RegistryRequest, TagImage, ProgressFrame, LoadResult, Build,
        BuildList, BuildLogFrame, BuildState,
    )),
    tags(
        (name = "images", description = "Images an account pulled, loaded, built or tagged, and the public ones."),
        (name = "builds", description = "Image builds from a context tar."),
    ),
)]
pub struct ImagesDoc;

/// Lists the caller's images.
///
/// The images the account holds a name of, and the public ones; only the caller's own
/// references are shown.
#[utoipa::path(
    get,
    path = "/api/v1/containers/images",
    tag = "images",
    operation_id = "listImages",
    security(("bearer" = ["image:read"])),
    responses(
        (status = 200, description = "The images.", body = ImageList),
        (status = 401, description = "No valid token.", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "The token lacks `image:read` (`scope_missing`).", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "The engine failed (`engine_unavailable`).", body = Problem, content_type = "application/problem+json"),
    )
)]
#[allow(dead_code)]
fn list_images() {}

/// Inspects one image.
///
/// Id, references, labels, times, the manifest it was stored from, registry manifests,
/// config, layers and size. Another account's image answers 404 like a missing one.
#[utoipa::path(
    get,
    path = "/api/v1/containers/images/{reference}",
    tag = "images",
    operation_id = "inspectImage",
    security(("bearer" = ["image:read"])),
    params(("reference" = String, Path, description = "A reference (percent-encoded) or an image id (prefix).")),
    responses(
        (status = 200, description = "The image.", body = ImageDetail),
        (status = 400, description = "Not a valid reference (`invalid_request`).", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "No valid token.", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "The token lacks `image:read` (`scope_missing`).", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such image for this account (`not_found`).", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "The engine failed (`engine_unavailable`).", body = Problem, content_type = "application/problem+json"),
    )
)]
#[allow(dead_code)]
fn inspect_image() {}

/// Removes the caller's name.
///
/// The engine forgets the name when no account holds it any more; an id removes every name
/// the caller holds of that image.
#[utoipa::path(
    delete,
    path = "/api/v1/containers/images/{reference}",
    tag = "images",
    operation_id = "removeImage",
    security(("bearer" = ["image:write"])),
    params(("reference" = String, Path, description = "A reference (percent-encoded) or an image id (prefix).")),
    responses(
        (status = 204, description = "Removed."),
        (status = 400, description = "Not a valid reference (`invalid_request`).", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "No valid token.", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "The token lacks `image:write` (`scope_missing`), or the image is public (`image_not_allowed`).", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such image for this account (`not_found`).", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "A run uses it (`image_in_use`).", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "The engine failed (`engine_unavailable`).", body = Problem, content_type = "application/problem+json"),
    )
)]
#[allow(dead_code)]
fn remove_image() {}

/// Names an image anew.
///
/// The caller then holds the new name (e.g. a registry name to push under).
#[utoipa::path(
    post,
    path = "/api/v1/containers/images/{reference}/tag",
    tag = "images",
    operation_id = "tagImage",
    security(("bearer" = ["image:write"])),
    params(("reference" = String, Path, description = "The image to name: a reference or an id.")),
    request_body(content = TagImage, content_type = "application/json"),
    responses(
        (status = 201, description = "The image.", body = ImageSummary),
        (status = 400, description = "Not a valid reference (`invalid_request`).", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "No valid token.", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "The token lacks `image:write`, or the new name is public.", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such image for this account (`not_found`).", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "Another account holds the new name (`image_name_taken`).", body = Problem, content_type = "application/problem+json"),
        (status = 413, description = "The body is too large (`payload_too_large`).", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "The engine failed (`engine_unavailable`).", body = Problem, content_type = "application/problem+json"),
    )
)]
#[allow(dead_code)]
fn tag_image() {}

/// Pulls an image from a registry.
///
/// NDJSON `ProgressFrame`s: `progress`, then `result` or `error` last. Refusals known at once
/// (a bad reference, a grant, another account's name, the registry's refusal) are problem
/// responses instead. Credentials are used for this call only, never logged or stored.
#[utoipa::path(
    post,
    path = "/api/v1/containers/images/pull",
    tag = "images",
    operation_id = "pullImage",
    security(("bearer" = ["image:write"])),
    request_body(content = RegistryRequest, content_type = "application/json"),
    responses(
        (status = 200, description = "NDJSON progress.", content_type = "application/x-ndjson", body = ProgressFrame),
        (status = 400, description = "Not a registry reference (`invalid_request`).", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "No valid token.", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "The token lacks `image:write`, its grant does not cover the image (`image_not_allowed`), or the registry refused (`registry_denied`).", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "The registry has no such image (`not_found`).", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "Another account holds the name (`image_name_taken`).", body = Problem, content_type = "application/problem+json"),
        (status = 413, description = "The body is too large (`payload_too_large`).", body = Problem, content_type = "application/problem+json"),
        (status = 502, description = "The registry failed (`registry_failed`).", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "The engine failed (`engine_unavailable`).", body = Problem, content_type = "application/problem+json"),
    )
)]
#[allow(dead_code)]
fn pull_image() {}

/// Pushes a name the caller holds to its registry.
///
/// NDJSON `ProgressFrame`s, like a pull.
#[utoipa::path(
    post,
    path = "/api/v1/containers/images/push",
    tag = "images",
    operation_id = "pushImage",
    security(("bearer" = ["image:write"])),
    request_body(content = RegistryRequest, content_type = "application/json"),
    responses(
        (status = 200, description = "NDJSON progress.", content_type = "application/x-ndjson", body = ProgressFrame),
        (status = 400, description = "Not a registry reference (`invalid_request`).", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "No valid token.", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "The token lacks `image:write`, or the registry refused (`registry_denied`).", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "The caller holds no such name (`not_found`).", body = Problem, content_type = "application/problem+json"),
        (status = 413, description = "The body is too large (`payload_too_large`).", body = Problem, content_type = "application/problem+json"),
        (status = 502, description = "The registry failed (`registry_failed`).", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "The engine failed (`engine_unavailable`).", body = Problem, content_type = "application/problem+json"),
    )
)]
#[allow(dead_code)]
fn push_image() {}

/// Loads an image archive.
///
/// The body is a docker-archive or an OCI archive (tar). It is refused as soon as it passes
/// the runner's limit (413 `upload_too_large`), and when a name it gives is another account's.
#[utoipa::path(
    post,
    path = "/api/v1/containers/images/load",
    tag = "images",
    operation_id = "loadImage",
    security(("bearer" = ["image:write"])),
    request_body(content = Vec<u8>, content_type = "application/x-tar"),
    responses(
        (status = 200, description = "The images loaded.", body = LoadResult),
        (status = 400, description = "Not an image archive (`invalid_request`).", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "No valid token.", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "The token lacks `image:write`, or a name is public.", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "Another account holds a name (`image_name_taken`).", body = Problem, content_type = "application/problem+json"),
        (status = 413, description = "Larger than the limit (`upload_too_large`).", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "The engine failed (`engine_unavailable`).", body = Problem, content_type = "application/problem+json"),
    )
)]
#[allow(dead_code)]
fn load_image() {}

/// Downloads an image as a docker-archive.
#[utoipa::path(
    get,
    path = "/api/v1/containers/images/{reference}/archive",
    tag = "images",
    operation_id = "saveImage",
    security(("bearer" = ["image:read"])),
    params(("reference" = String, Path, description = "A reference (percent-encoded) or an image id (prefix).")),
    responses(
        (status = 200, description = "The archive.", body = Vec<u8>, content_type = "application/x-tar"),
        (status = 400, description = "Not a valid reference (`invalid_request`).", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "No valid token.", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "The token lacks `image:read` (`scope_missing`).", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such image for this account (`not_found`).", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "The engine failed (`engine_unavailable`).", body = Problem, content_type = "application/problem+json"),
    )
)]
#[allow(dead_code)]
fn save_image() {}

/// Starts a build.
///
/// The body is the context as a tar. It is refused as soon as it passes the runner's limit
/// (413 `upload_too_large`). The Dockerfile's base images must be ones the caller may see.
/// Answers once the context is stored, with the build `queued`; the build goes on without
/// the caller.
#[utoipa::path(
    post,
    path = "/api/v1/containers/builds",
    tag = "builds",
    operation_id = "createBuild",
    security(("bearer" = ["image:build"])),
    params(
        ("tags" = Option<String>, Query, description = "Comma-separated references the image gets."),
        ("dockerfile" = Option<String>, Query, description = "The Dockerfile's path in the context (default `Dockerfile`)."),
    ),
    request_body(content = Vec<u8>, content_type = "application/x-tar"),
    responses(
        (status = 201, description = "The build, `queued`.", body = Build),
        (status = 400, description = "A bad tag, Dockerfile path or context (`invalid_request`).", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "No valid token.", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "The token lacks `image:build`, or a tag is public.", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "A base image the caller may not see (`not_found`).", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "Another account holds a tag (`image_name_taken`).", body = Problem, content_type = "application/problem+json"),
        (status = 413, description = "Larger than the limit (`upload_too_large`).", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "The engine failed (`engine_unavailable`).", body = Problem, content_type = "application/problem+json"),
    )
)]
#[allow(dead_code)]
fn create_build() {}

/// Lists the caller's builds, newest first.
#[utoipa::path(
    get,
    path = "/api/v1/containers/builds",
    tag = "builds",
    operation_id = "listBuilds",
    security(("bearer" = ["image:read"])),
    responses(
        (status = 200, description = "The builds.", body = BuildList),
        (status = 401, description = "No valid token.", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "The token lacks `image:read` (`scope_missing`).", body = Problem, content_type = "application/problem+json"),
    )
)]
#[allow(dead_code)]
fn list_builds() {}

/// Gets one build.
#[utoipa::path(
    get,
    path = "/api/v1/containers/builds/{id}",
    tag = "builds",
    operation_id = "getBuild",
    security(("bearer" = ["image:read"])),
    params(("id" = String, Path, description = "The build's id (`bld_...`).")),
    responses(
        (status = 200, description = "The build.", body = Build),
        (status = 401, description = "No valid token.", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "The token lacks `image:read` (`scope_missing`).", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such build for this account (`not_found`).", body = Problem, content_type = "application/problem+json"),
    )
)]
#[allow(dead_code)]
fn get_build() {}

/// Streams a build's output.
///
/// NDJSON `BuildLogFrame`s: `line` frames with a dense `seq` (resume with `after_seq`), then
/// one `end` frame once the build has ended; with `follow`, new lines as they come, and
/// `keepalive` frames while it is quiet.
#[utoipa::path(
    get,
    path = "/api/v1/containers/builds/{id}/logs",
    tag = "builds",
    operation_id = "buildLogs",
    security(("bearer" = ["image:read"])),
    params(
        ("id" = String, Path, description = "The build's id (`bld_...`)."),
        ("follow" = Option<bool>, Query, description = "Keep the stream open until the build ends."),
        ("after_seq" = Option<u64>, Query, description = "Only lines with a greater `seq`."),
    ),
    responses(
        (status = 200, description = "NDJSON: one `BuildLogFrame` per line.", content_type = "application/x-ndjson", body = BuildLogFrame),
        (status = 400, description = "A bad query (`invalid_request`).", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "No valid token.", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "The token lacks `image:read` (`scope_missing`).", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such build for this account (`not_found`).", body = Problem, content_type = "application/problem+json"),
    )
)]
#[allow(dead_code)]
fn build_logs() {}

/// Cancels a build.
///
/// Answers once it has stopped (`cancelled`); an ended build is returned unchanged.
#[utoipa::path(
    post,
    path = "/api/v1/containers/builds/{id}/cancel",
    tag = "builds",
    operation_id = "cancelBuild",
    security(("bearer" = ["image:build"])),
    params(("id" = String, Path, description = "The build's id (`bld_...`).")),
    responses(
        (status = 200, description = "The build.", body = Build),
        (status = 401, description = "No valid token.", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "The token lacks `image:build` (`scope_missing`).", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such build for this account (`not_found`).", body = Problem, content_type = "application/problem+json"),
    )
)]
#[allow(dead_code)]
fn cancel_build() {}

/// Deletes a build and its output, cancelling it first.
#[utoipa::path(
    delete,
    path = "/api/v1/containers/builds/{id}",
    tag = "builds",
    operation_id = "deleteBuild",
    security(("bearer" = ["image:build"])),
    params(("id" = String, Path, description = "The build's id (`bld_...`).")),
    responses(
        (status = 204, description = "Deleted."),
        (status = 401, description = "No valid token.", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "The token lacks `image:build` (`scope_missing`).", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such build for this account (`not_found`).", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "The build did not stop in time (`engine_unavailable`).", body = Problem, content_type = "application/problem+json"),
    )
)]
#[allow(dead_code)]
fn delete_build() {}

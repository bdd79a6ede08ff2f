//! What a run needs of its image: pulled first when its pull policy says so, then visible to
//! the account ([`Images::check_run`]).

use std::sync::Arc;

use bus_api::auth::Claims;
use bus_api::images::{RegistryCredentials, RegistryRequest};
use bus_api::runs::PullPolicy;
use futures::StreamExt as _;

use super::refs::{self, ImageRef};
use super::{ImageError, Images};

impl Images {
    /// Pulls `image` for a run of the caller's when its pull policy says so: with
    /// [`PullPolicy::Missing`] a registry image the runner lacks (or the account may not see
    /// yet), with [`PullPolicy::Always`] every registry image. The pull is the one `images
    /// pull` makes (the token's image grant applies, the name becomes the account's); a
    /// local name (`localhost/...`) or an id is never pulled. `credentials` serve that pull
    /// only. Whether the account may then run the image is [`Images::check_run`]'s to say
    /// (with [`Images::not_pulled`] for a refusal under `never`).
    pub async fn pull_for_run(
        self: &Arc<Self>,
        claims: &Claims,
        image: &str,
        policy: PullPolicy,
        credentials: Option<RegistryCredentials>,
    ) -> Result<(), ImageError> {
        let pull = from_registry(image)
            && match policy {
                PullPolicy::Never => false,
                PullPolicy::Always => true,
                PullPolicy::Missing => !self.is_ready(&claims.sub, image).await?,
            };
        if !pull {
            return Ok(());
        }
        let request = RegistryRequest {
            reference: image.to_owned(),
            credentials,
        };
        let mut frames = self.pull(claims, request).await?;
        while let Some(frame) = frames.next().await {
            frame?;
        }
        Ok(())
    }

    /// [`Images::check_run`]'s refusal as a run with `policy` should report it: a registry
    /// image that is not there under `never` says how to get it.
    pub fn not_pulled(image: &str, policy: PullPolicy, err: ImageError) -> ImageError {
        match err {
            ImageError::NotFound(_) if policy == PullPolicy::Never && from_registry(image) => {
                ImageError::NotPulled(image.to_owned())
            }
            other => other,
        }
    }

    /// Whether `owner` may run `image` and the engine has it.
    async fn is_ready(&self, owner: &str, image: &str) -> Result<bool, ImageError> {
        if self.check_run(owner, image).await.is_err() {
            return Ok(false);
        }
        Ok(self.engine()?.inspect_image(image).await?.is_some())
    }
}

/// Whether `image` names an image in a registry (not a local name, not an id).
fn from_registry(image: &str) -> bool {
    matches!(refs::parse(image), Ok(ImageRef::Name(name)) if !name.is_local())
}

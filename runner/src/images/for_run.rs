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
    /// Makes `image` ready for a run of the caller's: with [`PullPolicy::Missing`] a registry
    /// image the runner lacks (or the account may not see yet) is pulled first, with
    /// [`PullPolicy::Always`] every registry image is; the pull is the one `images pull`
    /// makes (the token's image grant applies, the name becomes the account's). A local name
    /// (`localhost/...`) or an id is never pulled. `credentials` are used for that pull only.
    pub async fn prepare_run(
        self: &Arc<Self>,
        claims: &Claims,
        image: &str,
        policy: PullPolicy,
        credentials: Option<RegistryCredentials>,
    ) -> Result<(), ImageError> {
        let from_registry =
            matches!(refs::parse(image), Ok(ImageRef::Name(name)) if !name.is_local());
        let pull = from_registry
            && match policy {
                PullPolicy::Never => false,
                PullPolicy::Always => true,
                PullPolicy::Missing => !self.is_ready(&claims.sub, image).await?,
            };
        if pull {
            let request = RegistryRequest {
                reference: image.to_owned(),
                credentials,
            };
            let mut frames = self.pull(claims, request).await?;
            while let Some(frame) = frames.next().await {
                frame?;
            }
        }
        match self.check_run(&claims.sub, image).await {
            Err(ImageError::NotFound(_)) if from_registry && policy == PullPolicy::Never => {
                Err(ImageError::NotPulled(image.to_owned()))
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

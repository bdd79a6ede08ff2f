//! The one resume policy of the CLI's streams (`logs -f`, `wait`, `run` after losing busd,
//! `builds logs -f`): a broken stream is opened again after a pause that grows with each
//! failure in a row, at most [`MAX_RESUMES`] times in a row without progress.

use std::time::Duration;

use crate::context::Ctx;
use crate::error::CliError;

/// How many times in a row a stream is resumed without getting anything.
pub const MAX_RESUMES: u32 = 5;

/// The pause step after losing busd: a busd that is dying may still accept a connection.
pub const BUSD_LOST_STEP: Duration = Duration::from_millis(50);

/// One stream's resume budget.
#[derive(Debug)]
pub struct Resumes {
    /// Failures since the last progress.
    failures: u32,
    /// The pause before the n-th resume in a row is n steps.
    step: Duration,
}

impl Resumes {
    /// A fresh budget whose pauses grow by `step`.
    pub fn new(step: Duration) -> Self {
        Resumes { failures: 0, step }
    }

    /// The stream got something: the next failure is the first in a row.
    pub fn progressed(&mut self) {
        self.failures = 0;
    }

    /// After a failure: `false` when the budget is spent; otherwise waits the pause and
    /// returns `true`, to resume.
    pub async fn next(&mut self) -> bool {
        self.failures += 1;
        if self.failures > MAX_RESUMES {
            return false;
        }
        tokio::time::sleep(self.step * self.failures).await;
        true
    }

    /// After losing busd: waits, then reaches busd again (starting it); `false` when the
    /// budget is spent or this context cannot reconnect.
    pub async fn reconnect(&mut self, ctx: &Ctx) -> Result<bool, CliError> {
        Ok(self.next().await && ctx.reconnect().await?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn the_budget_is_spent_after_max_resumes_in_a_row_and_renewed_by_progress() {
        let mut resumes = Resumes::new(Duration::from_millis(1));
        for _ in 0..MAX_RESUMES {
            assert!(resumes.next().await);
        }
        assert!(!resumes.next().await);
        resumes.progressed();
        assert!(resumes.next().await);
    }
}

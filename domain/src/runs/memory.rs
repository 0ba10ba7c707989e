//! Admission of post-process work by memory as well as by cores.
//!
//! The passes of one large candidate hold several whole frames at once (a
//! 1024x1536 candidate upscaled 4x is a 100 MB RGBA frame, then its colour
//! copy, then its encoded file), and every candidate of a run reaches its
//! passes at about the same time. Cores alone (`imaging::cpu`) bound how many
//! compute at once, not how many hold their frames while they wait. So a
//! candidate's passes first take their estimated peak from one process-wide
//! budget (`engine.pass_memory_mb`) and give it back when the candidate's
//! frames are dropped: peak memory follows the budget, not the run's size.

use std::sync::Arc;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use super::manifest::Postprocess;
use crate::ServiceError;

const MIB: u64 = 1 << 20;

/// The memory the passes of all candidates in this process may hold.
#[derive(Debug)]
pub struct PassBudget {
    permits: Arc<Semaphore>,
    total_mib: u32,
}

impl PassBudget {
    pub fn new(total_mib: u32) -> Self {
        let total_mib = total_mib.max(1);
        Self {
            permits: Arc::new(Semaphore::new(total_mib as usize)),
            total_mib,
        }
    }

    /// Waits until `bytes` fit (first come, first served). Work larger than
    /// the whole budget waits for all of it and then runs alone.
    pub async fn admit(&self, bytes: u64) -> Result<OwnedSemaphorePermit, ServiceError> {
        let mib = bytes.div_ceil(MIB).clamp(1, u64::from(self.total_mib)) as u32;
        self.permits
            .clone()
            .acquire_many_owned(mib)
            .await
            .map_err(|_| ServiceError::Internal("the pass memory budget is closed".into()))
    }
}

/// An estimate of the most one candidate's passes hold at once, in bytes:
/// its frame and a working copy (plus the cut-out when the background is
/// removed), then the enlarged frame, the colour pass's copy and output, and
/// the encoded file.
pub fn pass_peak_bytes(width: u32, height: u32, pp: &Postprocess) -> u64 {
    let frame = u64::from(width) * u64::from(height) * 4;
    let scaled = if pp.upscale {
        frame * u64::from(pp.upscale_factor.max(1)).pow(2)
    } else {
        frame
    };
    let before = frame * if pp.bg_remove { 3 } else { 2 };
    let after = if pp.upscale || pp.color {
        scaled * 3
    } else {
        0
    };
    before + after
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn the_estimate_follows_the_passes() {
        let all = Postprocess {
            bg_remove: true,
            upscale: true,
            upscale_factor: 4,
            color: true,
            ..Postprocess::default()
        };
        let frame = 1024 * 1536 * 4;
        assert_eq!(
            pass_peak_bytes(1024, 1536, &all),
            frame * 3 + frame * 16 * 3
        );
        let colour_only = Postprocess {
            color: true,
            ..Postprocess::default()
        };
        assert_eq!(pass_peak_bytes(1024, 1536, &colour_only), frame * 5);
    }

    #[tokio::test]
    async fn work_waits_until_its_memory_fits_and_oversized_work_runs_alone() {
        let budget = PassBudget::new(100);
        let a = budget.admit(60 * MIB).await.unwrap();
        // 50 MiB more does not fit while `a` holds 60.
        let waiting = tokio::time::timeout(Duration::from_millis(50), budget.admit(50 * MIB)).await;
        assert!(waiting.is_err());
        drop(a);
        let b = budget.admit(50 * MIB).await.unwrap();
        drop(b);
        // Larger than the whole budget: admitted once everything is free.
        let huge = budget.admit(10_000 * MIB).await.unwrap();
        assert_eq!(huge.num_permits(), 100);
    }
}

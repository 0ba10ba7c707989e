//! Graceful shutdown of the job pipeline: once draining begins, nothing new
//! is leased and no new provider call is sent; calls already in flight
//! finish and their results are stored. The shutdown path waits for those
//! calls ([`Drain::wait_idle`]) within its window.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use tokio::sync::Notify;

#[derive(Default)]
pub struct Drain {
    draining: AtomicBool,
    calls: AtomicUsize,
    idle: Notify,
}

/// Counts one provider call in flight for as long as it lives.
pub struct CallInFlight<'a>(&'a Drain);

impl Drop for CallInFlight<'_> {
    fn drop(&mut self) {
        if self.0.calls.fetch_sub(1, Ordering::SeqCst) == 1 {
            self.0.idle.notify_waiters();
        }
    }
}

impl Drain {
    /// From now on: no new leases, no new calls.
    pub fn begin(&self) {
        self.draining.store(true, Ordering::SeqCst);
        self.idle.notify_waiters();
    }

    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::SeqCst)
    }

    pub fn call_started(&self) -> CallInFlight<'_> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        CallInFlight(self)
    }

    pub fn calls_in_flight(&self) -> usize {
        self.calls.load(Ordering::SeqCst)
    }

    /// Waits until no call is in flight, or `deadline`; whether it got there.
    pub async fn wait_idle(&self, deadline: tokio::time::Instant) -> bool {
        loop {
            let notified = self.idle.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if self.calls_in_flight() == 0 {
                return true;
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                return self.calls_in_flight() == 0;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::Duration;

    use super::*;

    #[tokio::test]
    async fn waits_for_calls_in_flight_until_the_deadline() {
        let drain = Arc::new(Drain::default());
        assert!(drain.wait_idle(tokio::time::Instant::now()).await);
        let d = drain.clone();
        let call = tokio::spawn(async move {
            let _c = d.call_started();
            tokio::time::sleep(Duration::from_millis(50)).await;
        });
        tokio::time::sleep(Duration::from_millis(5)).await;
        drain.begin();
        assert!(drain.is_draining());
        let short = tokio::time::Instant::now() + Duration::from_millis(5);
        assert!(!drain.wait_idle(short).await, "still in flight");
        let long = tokio::time::Instant::now() + Duration::from_secs(5);
        assert!(drain.wait_idle(long).await);
        call.await.unwrap();
    }
}

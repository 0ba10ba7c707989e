//! Per-provider admission of calls that follows the provider's own signals:
//! at most `limit` calls in flight, where `limit` starts at the configured
//! maximum, halves when the provider says "too many" (429, or an overloaded
//! 503), pauses every caller for as long as `Retry-After` asks, holds while
//! the window's `remaining` is low, and grows back by one after `limit`
//! successes in a row. An overnight batch therefore settles just under the
//! provider's rate instead of bouncing off it with a storm of 429s.
//!
//! Waiters are served in arrival order (tokio's `Notify` wakes FIFO).

use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio::sync::Notify;
use tokio::time::Instant;

use crate::rate::RateSignal;

/// A pause without a provider hint (a 429 with no `Retry-After`).
const DEFAULT_PAUSE: Duration = Duration::from_secs(1);

pub struct Governor {
    max: usize,
    /// `false`: a fixed bound that ignores the provider's signals (for
    /// comparison in benchmarks, or when an operator switches it off).
    adaptive: bool,
    state: Mutex<State>,
    notify: Notify,
}

#[derive(Debug)]
struct State {
    limit: usize,
    in_flight: usize,
    paused_until: Option<Instant>,
    successes: usize,
    throttled: u64,
    calls: u64,
}

/// What an operator sees of a governor.
#[derive(Clone, Debug, serde::Serialize)]
pub struct GovernorSnapshot {
    pub limit: usize,
    pub max: usize,
    pub in_flight: usize,
    pub paused_ms: u64,
    /// 429s (and overloaded 503s) seen since start.
    pub throttled: u64,
    pub calls: u64,
}

/// One call's place; released on drop.
pub struct Permit {
    governor: Arc<Governor>,
}

impl Drop for Permit {
    fn drop(&mut self) {
        {
            let mut s = self.governor.lock();
            s.in_flight = s.in_flight.saturating_sub(1);
        }
        self.governor.notify.notify_one();
    }
}

impl Governor {
    pub fn new(max: usize) -> Arc<Self> {
        Self::with(max, true)
    }

    /// At most `max` calls in flight, whatever the provider says.
    pub fn fixed(max: usize) -> Arc<Self> {
        Self::with(max, false)
    }

    fn with(max: usize, adaptive: bool) -> Arc<Self> {
        let max = max.max(1);
        Arc::new(Self {
            max,
            adaptive,
            state: Mutex::new(State {
                limit: max,
                in_flight: 0,
                paused_until: None,
                successes: 0,
                throttled: 0,
                calls: 0,
            }),
            notify: Notify::new(),
        })
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // A poisoned lock only means a panic elsewhere while holding it; the
        // counters stay usable.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A place now, if there is one and no pause is in force.
    pub fn try_acquire(self: &Arc<Self>) -> Option<Permit> {
        let mut s = self.lock();
        if s.paused_until.is_some_and(|t| t > Instant::now()) || s.in_flight >= s.limit {
            return None;
        }
        s.paused_until = None;
        s.in_flight += 1;
        s.calls += 1;
        Some(Permit {
            governor: self.clone(),
        })
    }

    /// Waits for a place (first come, first served).
    pub async fn acquire(self: &Arc<Self>) -> Permit {
        loop {
            let notified = self.notify.notified();
            tokio::pin!(notified);
            // Registered before the check, so a release in between is not lost.
            notified.as_mut().enable();
            let pause = {
                let mut s = self.lock();
                let now = Instant::now();
                match s.paused_until {
                    Some(t) if t > now => Some(t),
                    _ => {
                        s.paused_until = None;
                        if s.in_flight < s.limit {
                            s.in_flight += 1;
                            s.calls += 1;
                            return Permit {
                                governor: self.clone(),
                            };
                        }
                        None
                    }
                }
            };
            match pause {
                Some(until) => {
                    tokio::select! {
                        _ = tokio::time::sleep_until(until) => {}
                        _ = &mut notified => {}
                    }
                }
                None => notified.await,
            }
        }
    }

    /// A call went through: grow back towards the maximum unless the
    /// provider's window is nearly used up (then hold, or pause until it
    /// resets when nothing is left).
    pub fn observe_success(&self, signal: &RateSignal) {
        if !self.adaptive {
            return;
        }
        let grew = {
            let mut s = self.lock();
            if signal.remaining == Some(0) {
                let pause = signal.reset_after.unwrap_or(DEFAULT_PAUSE);
                pause_for(&mut s, pause);
                s.successes = 0;
                false
            } else if let (Some(left), Some(limit)) = (signal.remaining, signal.limit)
                && left.saturating_mul(10) < limit
            {
                // Less than a tenth of the window left: hold.
                s.successes = 0;
                false
            } else {
                s.successes += 1;
                if s.successes >= s.limit && s.limit < self.max {
                    s.limit += 1;
                    s.successes = 0;
                    true
                } else {
                    false
                }
            }
        };
        if grew {
            self.notify.notify_one();
        }
    }

    /// The provider said "too many requests": halve the concurrency and
    /// pause everyone for `retry_after` (or a second).
    pub fn observe_throttled(&self, retry_after: Option<Duration>) {
        let mut s = self.lock();
        s.throttled += 1;
        if !self.adaptive {
            return;
        }
        s.successes = 0;
        s.limit = (s.limit / 2).max(1);
        pause_for(&mut s, retry_after.unwrap_or(DEFAULT_PAUSE));
    }

    /// The provider is overloaded (503): back off a little, no pause.
    pub fn observe_overloaded(&self) {
        let mut s = self.lock();
        s.throttled += 1;
        if !self.adaptive {
            return;
        }
        s.successes = 0;
        s.limit = (s.limit * 3 / 4).max(1);
    }

    pub fn snapshot(&self) -> GovernorSnapshot {
        let s = self.lock();
        GovernorSnapshot {
            limit: s.limit,
            max: self.max,
            in_flight: s.in_flight,
            paused_ms: s
                .paused_until
                .map(|t| t.saturating_duration_since(Instant::now()).as_millis() as u64)
                .unwrap_or(0),
            throttled: s.throttled,
            calls: s.calls,
        }
    }
}

fn pause_for(s: &mut State, pause: Duration) {
    let until = Instant::now() + pause;
    if s.paused_until.is_none_or(|t| t < until) {
        s.paused_until = Some(until);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn bounds_calls_in_flight_and_serves_waiters_in_order() {
        let g = Governor::new(2);
        let a = g.try_acquire().unwrap();
        let _b = g.try_acquire().unwrap();
        assert!(g.try_acquire().is_none());
        let order = Arc::new(Mutex::new(Vec::new()));
        let mut waiters = Vec::new();
        for i in 0..3 {
            let (g, order) = (g.clone(), order.clone());
            waiters.push(tokio::spawn(async move {
                let p = g.acquire().await;
                order.lock().unwrap().push(i);
                tokio::time::sleep(Duration::from_millis(5)).await;
                drop(p);
            }));
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        drop(a);
        for w in waiters {
            w.await.unwrap();
        }
        assert_eq!(*order.lock().unwrap(), vec![0, 1, 2]);
        assert_eq!(g.snapshot().in_flight, 1);
    }

    #[tokio::test(start_paused = true)]
    async fn a_429_halves_the_limit_and_pauses_everyone_then_it_grows_back() {
        let g = Governor::new(8);
        g.observe_throttled(Some(Duration::from_secs(3)));
        assert_eq!(g.snapshot().limit, 4);
        assert!(g.try_acquire().is_none(), "paused");
        let start = Instant::now();
        let p = g.acquire().await;
        assert!(start.elapsed() >= Duration::from_secs(3));
        drop(p);
        for _ in 0..4 {
            g.observe_success(&RateSignal::default());
        }
        assert_eq!(g.snapshot().limit, 5, "one more after `limit` successes");
        for _ in 0..100 {
            g.observe_success(&RateSignal::default());
        }
        assert_eq!(g.snapshot().limit, 8, "never above the maximum");
    }

    #[tokio::test(start_paused = true)]
    async fn a_nearly_used_window_holds_and_an_empty_one_pauses_until_reset() {
        let g = Governor::new(4);
        g.observe_overloaded();
        assert_eq!(g.snapshot().limit, 3);
        let low = RateSignal {
            limit: Some(100),
            remaining: Some(5),
            ..RateSignal::default()
        };
        for _ in 0..20 {
            g.observe_success(&low);
        }
        assert_eq!(g.snapshot().limit, 3, "held while the window is low");
        g.observe_success(&RateSignal {
            limit: Some(100),
            remaining: Some(0),
            reset_after: Some(Duration::from_secs(7)),
            ..RateSignal::default()
        });
        assert!(g.try_acquire().is_none());
        tokio::time::advance(Duration::from_secs(7)).await;
        assert!(g.try_acquire().is_some());
    }
}

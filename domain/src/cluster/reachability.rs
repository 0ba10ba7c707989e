//! Whether this node reaches the database, and what that lets it conclude
//! from the others' heartbeats.
//!
//! A heartbeat is stale either because its node is dead or because the
//! database could not be reached — by anyone. After an outage longer than
//! the node timeout every heartbeat is stale at once; the first node back
//! must not take that for the others' deaths (it would adopt their runs and
//! send again the paid calls they had in flight). So a node that was cut
//! off gives the nodes that were beating when its outage began one full
//! timeout after it is back before it judges them by their heartbeats, and
//! a node whose own heartbeat is stale judges nobody by theirs.

use std::sync::Mutex;
use std::time::Duration;

use chrono::{DateTime, Utc};

/// This node's view of its own connection to the database, kept by its
/// heartbeat loop.
#[derive(Debug, Default)]
pub struct Reachability {
    state: Mutex<State>,
}

#[derive(Debug, Default)]
struct State {
    /// The last heartbeat failed (or did not answer in time).
    cut_off: bool,
    /// When this node's last successful heartbeat was sent.
    last_ok: Option<DateTime<Utc>>,
    /// After its latest outage: nodes whose heartbeat is not older than
    /// `since` (when this node last reached the database before the
    /// outage, less a timeout) are not judged by it before `until`.
    doubt: Option<Doubt>,
}

#[derive(Clone, Copy, Debug)]
struct Doubt {
    since: DateTime<Utc>,
    until: DateTime<Utc>,
}

fn span(d: Duration) -> chrono::Duration {
    chrono::Duration::from_std(d).unwrap_or(chrono::Duration::MAX)
}

impl Reachability {
    /// Whether the last heartbeat reached the database: while it did not,
    /// the node leases nothing and `/health` answers 503.
    pub fn reachable(&self) -> bool {
        self.state.lock().map(|s| !s.cut_off).unwrap_or(true)
    }

    /// Records the outcome of a heartbeat sent at `sent` and answered at
    /// `answered`; returns whether the database was reachable before it.
    pub fn record(
        &self,
        sent: DateTime<Utc>,
        answered: DateTime<Utc>,
        ok: bool,
        timeout: Duration,
    ) -> bool {
        let Ok(mut state) = self.state.lock() else {
            return true;
        };
        let was = !state.cut_off;
        if !ok {
            state.cut_off = true;
            return was;
        }
        if state.cut_off {
            // Back: the others get a full timeout from now (not from when
            // this beat was sent: it may have waited for a connection) to
            // beat again. A node that never reached the database before (it
            // started cut off) doubts every heartbeat.
            let since = state
                .last_ok
                .and_then(|t| t.checked_sub_signed(span(timeout)))
                .unwrap_or(DateTime::<Utc>::MIN_UTC);
            state.doubt = Some(Doubt {
                since,
                until: answered
                    .checked_add_signed(span(timeout))
                    .unwrap_or(DateTime::<Utc>::MAX_UTC),
            });
        }
        state.cut_off = false;
        state.last_ok = Some(sent);
        was
    }

    /// Whether a node whose last heartbeat was at `beat` is dead by it, as
    /// seen from this node at `now`: the heartbeat is older than `timeout`,
    /// this node's own is not, and the staleness cannot be this node's own
    /// outage's doing.
    pub fn dead_by_heartbeat(
        &self,
        beat: DateTime<Utc>,
        now: DateTime<Utc>,
        timeout: Duration,
    ) -> bool {
        let timeout = span(timeout);
        if now.signed_duration_since(beat) <= timeout {
            return false;
        }
        let Ok(state) = self.state.lock() else {
            return false;
        };
        // Never beat (a view from outside the engine, e.g. at start): the
        // heartbeats are taken as they are.
        let Some(last_ok) = state.last_ok else {
            return !state.cut_off;
        };
        if state.cut_off || now.signed_duration_since(last_ok) > timeout {
            return false;
        }
        !state
            .doubt
            .is_some_and(|d| now < d.until && beat >= d.since)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TIMEOUT: Duration = Duration::from_secs(15);

    fn at(seconds: i64) -> DateTime<Utc> {
        DateTime::<Utc>::UNIX_EPOCH + chrono::Duration::seconds(1_000_000 + seconds)
    }

    /// A node that beat every 5 s up to `last` without a break.
    fn beating_until(last: i64) -> Reachability {
        let r = Reachability::default();
        for t in (0..=last).step_by(5) {
            r.record(at(t), at(t), true, TIMEOUT);
        }
        r
    }

    #[test]
    fn a_heartbeat_within_the_timeout_is_alive() {
        let r = beating_until(100);
        assert!(!r.dead_by_heartbeat(at(90), at(100), TIMEOUT));
        assert!(r.dead_by_heartbeat(at(80), at(100), TIMEOUT));
    }

    #[test]
    fn after_an_outage_longer_than_the_timeout_stale_peers_get_a_timeout() {
        let r = beating_until(100);
        // Out from 101 to 130: every beat fails.
        assert!(r.record(at(105), at(105), false, TIMEOUT));
        for t in [110, 115, 120, 125] {
            assert!(!r.record(at(t), at(t), false, TIMEOUT));
        }
        assert!(!r.reachable());
        // Cut off: nobody is judged, however stale.
        assert!(!r.dead_by_heartbeat(at(99), at(126), TIMEOUT));
        assert!(!r.record(at(130), at(130), true, TIMEOUT));
        assert!(r.reachable());
        // A peer last seen at 99 (beating when the outage began) is given
        // until 145 to beat again...
        assert!(!r.dead_by_heartbeat(at(99), at(131), TIMEOUT));
        assert!(!r.dead_by_heartbeat(at(99), at(144), TIMEOUT));
        r.record(at(135), at(135), true, TIMEOUT);
        r.record(at(140), at(140), true, TIMEOUT);
        r.record(at(145), at(145), true, TIMEOUT);
        // ...and is dead by its heartbeat after that.
        assert!(r.dead_by_heartbeat(at(99), at(146), TIMEOUT));
        // One silent since long before the outage is dead at once.
        assert!(r.dead_by_heartbeat(at(70), at(131), TIMEOUT));
    }

    #[test]
    fn the_doubt_runs_a_timeout_from_the_answer_not_from_the_send() {
        let r = beating_until(100);
        r.record(at(105), at(106), false, TIMEOUT);
        // Sent at 120, answered at 129 (it waited for a connection).
        r.record(at(120), at(129), true, TIMEOUT);
        r.record(at(125), at(130), true, TIMEOUT);
        r.record(at(130), at(131), true, TIMEOUT);
        r.record(at(135), at(136), true, TIMEOUT);
        r.record(at(140), at(141), true, TIMEOUT);
        assert!(!r.dead_by_heartbeat(at(99), at(143), TIMEOUT));
        r.record(at(143), at(144), true, TIMEOUT);
        assert!(r.dead_by_heartbeat(at(99), at(145), TIMEOUT));
    }

    #[test]
    fn a_node_whose_own_heartbeat_is_stale_judges_nobody() {
        let r = beating_until(100);
        // Its beat since 100 hangs: no outcome recorded yet.
        assert!(!r.dead_by_heartbeat(at(50), at(120), TIMEOUT));
    }

    #[test]
    fn a_node_that_started_cut_off_doubts_every_heartbeat_for_a_timeout() {
        let r = Reachability::default();
        r.record(at(0), at(0), false, TIMEOUT);
        r.record(at(5), at(5), true, TIMEOUT);
        assert!(!r.dead_by_heartbeat(at(-1000), at(10), TIMEOUT));
        r.record(at(10), at(10), true, TIMEOUT);
        r.record(at(15), at(15), true, TIMEOUT);
        r.record(at(20), at(20), true, TIMEOUT);
        assert!(r.dead_by_heartbeat(at(-1000), at(21), TIMEOUT));
    }

    #[test]
    fn a_timeout_beyond_any_date_does_not_panic() {
        let r = beating_until(10);
        let forever = Duration::from_millis(u64::MAX);
        r.record(at(15), at(15), false, forever);
        r.record(at(20), at(20), true, forever);
        assert!(!r.dead_by_heartbeat(at(0), at(25), forever));
    }

    #[test]
    fn before_any_heartbeat_staleness_is_taken_as_it_is() {
        let r = Reachability::default();
        assert!(r.dead_by_heartbeat(at(0), at(100), TIMEOUT));
        assert!(!r.dead_by_heartbeat(at(90), at(100), TIMEOUT));
    }
}

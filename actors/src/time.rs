//! Timestamps: stored as UTC with sub-second precision, shown at second precision.

use chrono::{DateTime, SubsecRound, Utc};

pub fn now() -> DateTime<Utc> {
    Utc::now().trunc_subsecs(6)
}

/// `YYYY-MM-DDTHH:MM:SSZ`, the contract's timestamp format.
pub fn format(ts: &DateTime<Utc>) -> String {
    ts.format("%Y-%m-%dT%H:%M:%SZ").to_string()
}

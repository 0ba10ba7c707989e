//! Timestamps: stored as UTC with sub-second precision, shown at second precision.

use chrono::{DateTime, SecondsFormat, SubsecRound, Utc};

pub fn now() -> DateTime<Utc> {
    Utc::now().trunc_subsecs(6)
}

/// `YYYY-MM-DDTHH:MM:SSZ`, the contract's timestamp format.
pub fn format(ts: &DateTime<Utc>) -> String {
    ts.to_rfc3339_opts(SecondsFormat::Secs, true)
}

#[cfg(test)]
mod tests {
    #[test]
    fn second_precision_with_z() {
        let ts = chrono::DateTime::parse_from_rfc3339("2026-11-26T14:04:41.123456+00:00")
            .unwrap()
            .with_timezone(&chrono::Utc);
        assert_eq!(super::format(&ts), "2026-11-26T14:04:41Z");
    }
}

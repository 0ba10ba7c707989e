//! Keyset pagination for the newest-first lists (`created_at` desc, `id`
//! desc): a cursor names the last row of a page, and the next page starts
//! strictly after it, so rows added meanwhile never shift or repeat a page.

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use chrono::{DateTime, Utc};
use sea_orm::{ColumnTrait, Condition};
use uuid::Uuid;

use crate::ServiceError;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Cursor {
    created_at: DateTime<Utc>,
    id: Uuid,
}

impl Cursor {
    /// The cursor that continues after this row.
    pub fn after(created_at: DateTime<Utc>, id: Uuid) -> Self {
        Self { created_at, id }
    }

    /// Opaque to clients: base64url of `{micros}:{id}`.
    pub fn encode(&self) -> String {
        URL_SAFE_NO_PAD.encode(format!(
            "{}:{}",
            self.created_at.timestamp_micros(),
            self.id
        ))
    }

    pub fn decode(raw: &str) -> Result<Self, ServiceError> {
        let bad = || {
            ServiceError::validation(
                "invalid_cursor",
                "Query 'cursor' is not a cursor this service issued",
            )
        };
        let text = URL_SAFE_NO_PAD
            .decode(raw.trim())
            .ok()
            .and_then(|b| String::from_utf8(b).ok())
            .ok_or_else(bad)?;
        let (micros, id) = text.split_once(':').ok_or_else(bad)?;
        let micros: i64 = micros.parse().map_err(|_| bad())?;
        Ok(Self {
            created_at: DateTime::from_timestamp_micros(micros).ok_or_else(bad)?,
            id: Uuid::parse_str(id).map_err(|_| bad())?,
        })
    }

    /// Rows strictly after the cursor in (`created_at` desc, `id` desc) order.
    pub fn condition<C: ColumnTrait>(&self, created_at: C, id: C) -> Condition {
        Condition::any().add(created_at.lt(self.created_at)).add(
            Condition::all()
                .add(created_at.eq(self.created_at))
                .add(id.lt(self.id)),
        )
    }
}

/// The cursor for the page after `rows` when the page is full.
pub fn next<T>(
    rows: &[T],
    limit: u64,
    key: impl Fn(&T) -> (DateTime<Utc>, Uuid),
) -> Option<String> {
    if (rows.len() as u64) < limit {
        return None;
    }
    rows.last().map(|r| {
        let (t, id) = key(r);
        Cursor::after(t, id).encode()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cursors_round_trip_and_refuse_garbage() {
        let c = Cursor::after(Utc::now(), Uuid::now_v7());
        let back = Cursor::decode(&c.encode()).unwrap();
        assert_eq!(back.id, c.id);
        assert_eq!(
            back.created_at.timestamp_micros(),
            c.created_at.timestamp_micros()
        );
        assert!(Cursor::decode("nope").is_err());
        assert!(Cursor::decode(&URL_SAFE_NO_PAD.encode("1:not-a-uuid")).is_err());
    }
}

//! Reading a database of the earlier system: opened read-only, every table
//! read by column name (any column may be missing in an older file), each
//! row as a JSON object built by SQLite itself (`json_object`), so values
//! keep the type they were stored with.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use chrono::{DateTime, NaiveDateTime, Utc};
use sea_orm::{ConnectionTrait, Database, DatabaseConnection, DbBackend, Statement};
use serde_json::{Map, Value};

use super::{unreadable, unrecognised};
use crate::ServiceError;

/// Tables whose absence means the file is not a database of the earlier
/// system (every file it created has them, whatever its age).
const REQUIRED: &[&str] = &["projects", "runs", "run_jobs", "assets"];

pub struct LegacySource {
    conn: DatabaseConnection,
    /// Table -> its columns, as found in the file.
    tables: BTreeMap<String, BTreeSet<String>>,
    pub path: PathBuf,
}

impl LegacySource {
    /// Opens `path` read-only and checks that it looks like the earlier
    /// system's database; the error names what is missing.
    pub async fn open(path: &Path) -> Result<Self, ServiceError> {
        let meta = std::fs::metadata(path)
            .map_err(|e| unreadable(format_args!("{}: {e}", path.display())))?;
        if !meta.is_file() {
            return Err(unreadable(format_args!("{} is not a file", path.display())));
        }
        let mut header = [0u8; 16];
        let n = std::io::Read::read(&mut std::fs::File::open(path)?, &mut header)?;
        if n < 16 || &header != b"SQLite format 3\0" {
            return Err(unrecognised(format!(
                "{} is not an SQLite database",
                path.display()
            )));
        }
        let url = format!("sqlite://{}?mode=ro", path.display());
        let conn = Database::connect(url.as_str())
            .await
            .map_err(|e| unreadable(format_args!("cannot open {}: {e}", path.display())))?;
        let mut source = Self {
            conn,
            tables: BTreeMap::new(),
            path: path.to_path_buf(),
        };
        let names = source
            .query_column(
                "SELECT name FROM sqlite_master WHERE type = 'table'",
                "name",
            )
            .await?;
        for name in names {
            let columns = source
                .query_column(&format!("PRAGMA table_info({})", quote(&name)), "name")
                .await?;
            source.tables.insert(name, columns.into_iter().collect());
        }
        let missing: Vec<&str> = REQUIRED
            .iter()
            .copied()
            .filter(|t| !source.tables.contains_key(*t))
            .collect();
        let has_users = source.has_table("users") || source.has_table("app_users");
        if !missing.is_empty() || !has_users {
            let mut what: Vec<String> = missing.iter().map(|t| format!("table '{t}'")).collect();
            if !has_users {
                what.push("table 'app_users' or 'users'".into());
            }
            return Err(unrecognised(format!(
                "{} is not a database of the earlier system: missing {}",
                path.display(),
                what.join(", ")
            )));
        }
        Ok(source)
    }

    pub fn has_table(&self, table: &str) -> bool {
        self.tables.contains_key(table)
    }

    async fn query_column(&self, sql: &str, column: &str) -> Result<Vec<String>, ServiceError> {
        let rows = self
            .conn
            .query_all_raw(Statement::from_string(DbBackend::Sqlite, sql.to_string()))
            .await
            .map_err(|e| unreadable(format_args!("{}: {e}", self.path.display())))?;
        rows.iter()
            .map(|r| {
                r.try_get::<String>("", column)
                    .map_err(|e| unreadable(e.to_string()))
            })
            .collect()
    }

    /// Every row of `table` (none when the file has no such table). BLOBs
    /// read as null: the earlier system stored none.
    pub async fn rows(&self, table: &str) -> Result<Vec<LegacyRow>, ServiceError> {
        let Some(columns) = self.tables.get(table) else {
            return Ok(Vec::new());
        };
        if columns.is_empty() {
            return Ok(Vec::new());
        }
        let pairs: Vec<String> = columns
            .iter()
            .map(|c| {
                let q = quote(c);
                format!(
                    "'{}', CASE WHEN typeof({q}) = 'blob' THEN NULL ELSE {q} END",
                    c.replace('\'', "''")
                )
            })
            .collect();
        let sql = format!(
            "SELECT json_object({}) AS row FROM {} ORDER BY rowid",
            pairs.join(", "),
            quote(table)
        );
        let texts = self.query_column(&sql, "row").await?;
        texts
            .into_iter()
            .map(|t| match serde_json::from_str(&t) {
                Ok(Value::Object(map)) => Ok(LegacyRow(map)),
                _ => Err(unreadable(format_args!("a row of {table} cannot be read"))),
            })
            .collect()
    }

    pub async fn close(self) {
        let _ = self.conn.close().await;
    }
}

fn quote(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// One row, read by column name; the getters take the newer column first
/// and fall back to the older one ("dual columns").
#[derive(Clone, Debug)]
pub struct LegacyRow(pub Map<String, Value>);

impl LegacyRow {
    fn first(&self, columns: &[&str]) -> Option<&Value> {
        columns
            .iter()
            .filter_map(|c| self.0.get(*c))
            .find(|v| match v {
                Value::Null => false,
                Value::String(s) => !s.trim().is_empty(),
                _ => true,
            })
    }

    pub fn text(&self, columns: &[&str]) -> Option<String> {
        match self.first(columns)? {
            Value::String(s) => Some(s.clone()),
            Value::Number(n) => Some(n.to_string()),
            Value::Bool(b) => Some(b.to_string()),
            _ => None,
        }
    }

    /// Text that may be empty (a column the earlier system declared NOT
    /// NULL and filled with "").
    pub fn text_or_empty(&self, column: &str) -> String {
        self.text(&[column]).unwrap_or_default()
    }

    pub fn int(&self, columns: &[&str]) -> Option<i64> {
        match self.first(columns)? {
            Value::Number(n) => n.as_i64().or_else(|| n.as_f64().map(|f| f as i64)),
            Value::String(s) => s.trim().parse().ok(),
            Value::Bool(b) => Some(*b as i64),
            _ => None,
        }
    }

    pub fn real(&self, columns: &[&str]) -> Option<f64> {
        let v = match self.first(columns)? {
            Value::Number(n) => n.as_f64(),
            Value::String(s) => s.trim().parse().ok(),
            _ => None,
        }?;
        v.is_finite().then_some(v)
    }

    pub fn flag(&self, column: &str) -> Option<bool> {
        self.int(&[column]).map(|v| v != 0)
    }

    pub fn time(&self, columns: &[&str]) -> Option<DateTime<Utc>> {
        parse_time(&self.text(columns)?)
    }

    /// A JSON column: its text parsed, or null when absent or not JSON.
    pub fn json(&self, columns: &[&str]) -> Value {
        match self.first(columns) {
            Some(Value::String(s)) => serde_json::from_str(s).unwrap_or(Value::Null),
            Some(other) => other.clone(),
            None => Value::Null,
        }
    }

    /// Like [`Self::json`], an object in place of anything else.
    pub fn object(&self, columns: &[&str]) -> Value {
        match self.json(columns) {
            v @ Value::Object(_) => v,
            _ => Value::Object(Map::new()),
        }
    }
}

/// RFC 3339, SQLite's `YYYY-MM-DD HH:MM:SS[.fff]`, or a bare date.
pub fn parse_time(raw: &str) -> Option<DateTime<Utc>> {
    let raw = raw.trim();
    if let Ok(t) = DateTime::parse_from_rfc3339(raw) {
        return Some(t.with_timezone(&Utc));
    }
    for format in ["%Y-%m-%d %H:%M:%S%.f", "%Y-%m-%dT%H:%M:%S%.f"] {
        if let Ok(t) = NaiveDateTime::parse_from_str(raw, format) {
            return Some(t.and_utc());
        }
    }
    chrono::NaiveDate::parse_from_str(raw, "%Y-%m-%d")
        .ok()
        .and_then(|d| d.and_hms_opt(0, 0, 0))
        .map(|t| t.and_utc())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(v: Value) -> LegacyRow {
        LegacyRow(v.as_object().unwrap().clone())
    }

    #[test]
    fn newer_columns_win_and_older_ones_fill_in() {
        let both = row(serde_json::json!({"run_mode": "run", "mode": "dry", "model": "m1"}));
        assert_eq!(both.text(&["run_mode", "mode"]).as_deref(), Some("run"));
        assert_eq!(both.text(&["model_name", "model"]).as_deref(), Some("m1"));
        let blank = row(serde_json::json!({"run_mode": " ", "mode": "dry"}));
        assert_eq!(blank.text(&["run_mode", "mode"]).as_deref(), Some("dry"));
        let numbers = row(serde_json::json!({"n": "3", "r": "0.5", "bad": "NaN"}));
        assert_eq!(numbers.int(&["n"]), Some(3));
        assert_eq!(numbers.real(&["r"]), Some(0.5));
        assert_eq!(numbers.real(&["bad"]), None);
    }

    #[test]
    fn timestamps_in_the_forms_the_earlier_system_wrote() {
        for raw in [
            "2026-03-01T10:00:00Z",
            "2026-03-01T10:00:00+00:00",
            "2026-03-01 10:00:00",
            "2026-03-01T10:00:00.000",
        ] {
            assert_eq!(
                parse_time(raw).map(|t| t.to_rfc3339()),
                Some("2026-03-01T10:00:00+00:00".into()),
                "{raw}"
            );
        }
        assert!(parse_time("yesterday").is_none());
    }
}

//! Users first (merged by username), in their own transaction.

use std::collections::HashMap;

use entities::*;
use sea_orm::EntityTrait;
use uuid::Uuid;

use super::read::*;
use super::source::LegacyRow;
use super::*;
use crate::time;

pub struct Users {
    pub counts: TableCounts,
    /// Legacy user id -> the user here (the same id, or the user who
    /// already has the username).
    pub map: HashMap<String, Uuid>,
    /// The users to create, for a dry run's later transactions to see
    /// (its own transaction for users was rolled back).
    pub(super) dry_run_rows: Vec<app_users::Model>,
}

impl Users {
    pub(super) async fn visible_in(&self, txn: &crate::db::WriteTxn) -> Result<(), ServiceError> {
        let rows = self
            .dry_run_rows
            .iter()
            .cloned()
            .map(app_users::ActiveModel::from);
        crate::db::insert_new(txn, rows.collect()).await?;
        Ok(())
    }
}

pub async fn import_users(
    target: &ImportTarget<'_>,
    legacy: &Legacy,
    dry_run: bool,
) -> Result<Users, ServiceError> {
    let existing: HashMap<String, Uuid> = app_users::Entity::find()
        .all(target.db)
        .await?
        .into_iter()
        .map(|u| (u.username, u.id))
        .collect();
    let mut map = HashMap::new();
    let mut rows = Vec::new();
    let mut counts = TableCounts::default();
    let now = time::now();
    for u in &legacy.users {
        counts.read += 1;
        let (Some(raw), Some(username)) = (u.text(&["id"]), u.text(&["username"])) else {
            counts.orphaned += 1;
            continue;
        };
        if let Some(id) = existing.get(&username) {
            map.insert(raw, *id);
            continue;
        }
        let id = legacy.id("app_users", &raw);
        map.insert(raw, id);
        rows.push(app_users::Model {
            id,
            display_name: u
                .text(&["display_name"])
                .unwrap_or_else(|| username.clone()),
            username,
            email: u.text(&["email"]),
            is_active: u.flag("is_active").unwrap_or(true),
            created_at: u.time(&["created_at"]).unwrap_or(now),
            updated_at: u.time(&["updated_at", "created_at"]).unwrap_or(now),
        });
    }
    let txn = crate::db::begin_write(target.db).await?;
    counts.imported = crate::db::insert_new(
        &txn,
        rows.iter()
            .cloned()
            .map(app_users::ActiveModel::from)
            .collect(),
    )
    .await?;
    counts.unchanged = counts.read - counts.imported - counts.orphaned;
    finish(txn, dry_run).await?;
    Ok(Users {
        counts,
        map,
        dry_run_rows: if dry_run { rows } else { Vec::new() },
    })
}

pub(super) async fn finish(txn: crate::db::WriteTxn, dry_run: bool) -> Result<(), ServiceError> {
    if dry_run {
        crate::db::rollback(txn).await?;
    } else {
        crate::db::commit(txn).await?;
    }
    Ok(())
}

/// The legacy owner of a project, or of a token.
pub(super) fn owner(
    users: &HashMap<String, Uuid>,
    row: &LegacyRow,
    columns: &[&str],
) -> Option<Uuid> {
    columns
        .iter()
        .filter_map(|c| row.text(&[c]))
        .find_map(|raw| users.get(&raw).copied())
}

//! `project_exports` rows.

use sea_orm::entity::prelude::*;
use serde::{Deserialize, Serialize};

#[derive(Clone, Debug, PartialEq, DeriveEntityModel, Serialize, Deserialize)]
#[sea_orm(table_name = "project_exports")]
pub struct Model {
    #[sea_orm(primary_key, auto_increment = false)]
    pub id: Uuid,
    pub project_id: Uuid,
    pub run_id: Option<Uuid>,
    pub status: String,
    pub export_format: String,
    pub storage_uri: Option<String>,
    pub rel_path: Option<String>,
    pub file_size_bytes: Option<i64>,
    pub checksum_sha256: Option<String>,
    pub export_asset_id: Option<Uuid>,
    #[sea_orm(column_type = "JsonBinary")]
    pub manifest_json: Json,
    pub created_at: DateTimeUtc,
    pub completed_at: Option<DateTimeUtc>,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}

//! `quality_reports` rows.

use sea_orm::entity::prelude::*;
use serde::{Deserialize, Serialize};

#[derive(Clone, Debug, PartialEq, DeriveEntityModel, Serialize, Deserialize)]
#[sea_orm(table_name = "quality_reports")]
pub struct Model {
    #[sea_orm(primary_key, auto_increment = false)]
    pub id: Uuid,
    pub project_id: Uuid,
    pub run_id: Option<Uuid>,
    pub job_id: Option<Uuid>,
    pub candidate_id: Option<Uuid>,
    pub asset_id: Option<Uuid>,
    pub report_type: String,
    pub grade: Option<String>,
    pub hard_failures: i32,
    pub soft_warnings: i32,
    pub avg_chroma_exceed: f64,
    #[sea_orm(column_type = "JsonBinary")]
    pub summary_json: Json,
    pub created_at: DateTimeUtc,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}

//! `run_candidates` rows.

use sea_orm::entity::prelude::*;
use serde::{Deserialize, Serialize};

#[derive(Clone, Debug, PartialEq, DeriveEntityModel, Serialize, Deserialize)]
#[sea_orm(table_name = "run_candidates")]
pub struct Model {
    #[sea_orm(primary_key, auto_increment = false)]
    pub id: Uuid,
    pub project_id: Uuid,
    pub run_id: Uuid,
    pub job_id: Uuid,
    pub candidate_index: i32,
    pub status: String,
    pub output_asset_id: Option<Uuid>,
    pub final_asset_id: Option<Uuid>,
    pub rank_hard_failures: i32,
    pub rank_soft_warnings: i32,
    pub rank_avg_chroma_exceed: f64,
    #[sea_orm(column_type = "JsonBinary")]
    pub meta_json: Json,
    pub created_at: DateTimeUtc,
    pub updated_at: DateTimeUtc,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}

//! `run_jobs` rows.

use sea_orm::entity::prelude::*;
use serde::{Deserialize, Serialize};

#[derive(Clone, Debug, PartialEq, DeriveEntityModel, Serialize, Deserialize)]
#[sea_orm(table_name = "run_jobs")]
pub struct Model {
    #[sea_orm(primary_key, auto_increment = false)]
    pub id: Uuid,
    pub project_id: Uuid,
    pub run_id: Uuid,
    pub job_key: String,
    pub scene_ref: Option<String>,
    pub stage: String,
    pub stage_index: i32,
    pub parent_job_id: Option<Uuid>,
    pub retry_of_job_id: Option<Uuid>,
    pub status: String,
    #[sea_orm(column_type = "Text")]
    pub prompt_text: Option<String>,
    pub input_asset_id: Option<Uuid>,
    pub selected_candidate_index: Option<i32>,
    pub final_asset_id: Option<Uuid>,
    pub attempt: i32,
    pub max_attempts: i32,
    pub lease_owner: Option<String>,
    pub lease_expires_at: Option<DateTimeUtc>,
    pub heartbeat_at: Option<DateTimeUtc>,
    /// Raised at every claim and every reclaim: a lease holder's writes are
    /// conditional on the epoch it claimed (fencing).
    pub lease_epoch: i64,
    pub next_attempt_at: Option<DateTimeUtc>,
    #[sea_orm(column_type = "Text")]
    pub last_error: Option<String>,
    #[sea_orm(column_type = "JsonBinary")]
    pub meta_json: Json,
    pub started_at: Option<DateTimeUtc>,
    pub finished_at: Option<DateTimeUtc>,
    pub created_at: DateTimeUtc,
    pub updated_at: DateTimeUtc,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}

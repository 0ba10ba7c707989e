//! `runs` rows.

use sea_orm::entity::prelude::*;
use serde::{Deserialize, Serialize};

#[derive(Clone, Debug, PartialEq, DeriveEntityModel, Serialize, Deserialize)]
#[sea_orm(table_name = "runs")]
pub struct Model {
    #[sea_orm(primary_key, auto_increment = false)]
    pub id: Uuid,
    pub project_id: Uuid,
    pub run_mode: String,
    pub status: String,
    pub stage: Option<String>,
    pub time_of_day: Option<String>,
    pub weather: Option<String>,
    pub model_name: Option<String>,
    pub provider_code: Option<String>,
    pub image_size: Option<String>,
    pub image_quality: Option<String>,
    #[sea_orm(column_type = "JsonBinary")]
    pub settings_snapshot_json: Json,
    #[sea_orm(column_type = "JsonBinary")]
    pub plan_json: Json,
    pub budget_usd: Option<f64>,
    pub estimated_cost_usd: f64,
    pub last_event_seq: i64,
    pub run_log_key: Option<String>,
    #[sea_orm(column_type = "Text")]
    pub last_error: Option<String>,
    pub started_at: Option<DateTimeUtc>,
    pub finished_at: Option<DateTimeUtc>,
    pub created_at: DateTimeUtc,
    pub updated_at: DateTimeUtc,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}

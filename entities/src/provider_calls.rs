//! `provider_calls` rows.

use sea_orm::entity::prelude::*;
use serde::{Deserialize, Serialize};

#[derive(Clone, Debug, PartialEq, DeriveEntityModel, Serialize, Deserialize)]
#[sea_orm(table_name = "provider_calls")]
pub struct Model {
    #[sea_orm(primary_key, auto_increment = false)]
    pub id: Uuid,
    pub project_id: Uuid,
    pub idempotency_key: String,
    pub run_id: Option<Uuid>,
    pub job_id: Option<Uuid>,
    pub candidate_id: Option<Uuid>,
    pub provider_code: String,
    pub operation: String,
    pub model_name: Option<String>,
    pub status: String,
    pub attempt: i32,
    pub reserved_cost_usd: f64,
    pub actual_cost_usd: Option<f64>,
    #[sea_orm(column_type = "JsonBinary")]
    pub request_json: Json,
    #[sea_orm(column_type = "JsonBinary")]
    pub response_json: Json,
    pub result_asset_id: Option<Uuid>,
    pub provider_request_id: Option<String>,
    pub error_code: Option<String>,
    #[sea_orm(column_type = "Text")]
    pub error_message: Option<String>,
    pub started_at: Option<DateTimeUtc>,
    /// When the current attempt was handed to the provider; `None` while it
    /// has not been sent. A pending call with `sent_at` whose worker is gone
    /// has an unknown outcome.
    pub sent_at: Option<DateTimeUtc>,
    /// Attempts that really reached the wire (reserved-but-unsent ones do
    /// not count against the attempt limit).
    pub sent_attempts: i32,
    /// Reservations kept for attempts whose answer was lost: what they may
    /// have cost.
    pub possibly_billed_usd: f64,
    pub finished_at: Option<DateTimeUtc>,
    pub created_at: DateTimeUtc,
    pub updated_at: DateTimeUtc,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}

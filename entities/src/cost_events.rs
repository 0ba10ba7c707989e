//! `cost_events` rows.

use sea_orm::entity::prelude::*;
use serde::{Deserialize, Serialize};

#[derive(Clone, Debug, PartialEq, DeriveEntityModel, Serialize, Deserialize)]
#[sea_orm(table_name = "cost_events")]
pub struct Model {
    #[sea_orm(primary_key, auto_increment = false)]
    pub id: Uuid,
    pub project_id: Uuid,
    pub run_id: Option<Uuid>,
    pub job_id: Option<Uuid>,
    pub provider_call_id: Option<Uuid>,
    pub provider_code: String,
    pub model_name: Option<String>,
    pub event_type: String,
    pub units: f64,
    pub unit_cost_usd: f64,
    pub total_cost_usd: f64,
    pub currency: String,
    #[sea_orm(column_type = "JsonBinary")]
    pub meta_json: Json,
    /// `billed` (the provider said so, or charged a fixed price) or
    /// `possibly_billed` (sent, answer lost: the reservation is kept).
    pub billing: String,
    pub created_at: DateTimeUtc,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}

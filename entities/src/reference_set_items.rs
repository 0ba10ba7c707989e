//! `reference_set_items` rows.

use sea_orm::entity::prelude::*;
use serde::{Deserialize, Serialize};

#[derive(Clone, Debug, PartialEq, DeriveEntityModel, Serialize, Deserialize)]
#[sea_orm(table_name = "reference_set_items")]
pub struct Model {
    #[sea_orm(primary_key, auto_increment = false)]
    pub id: Uuid,
    pub project_id: Uuid,
    pub reference_set_id: Uuid,
    pub label: String,
    #[sea_orm(column_type = "Text")]
    pub content_uri: Option<String>,
    #[sea_orm(column_type = "Text")]
    pub content_text: Option<String>,
    pub asset_id: Option<Uuid>,
    pub sort_order: i32,
    pub weight: Option<f64>,
    #[sea_orm(column_type = "Text")]
    pub notes: Option<String>,
    #[sea_orm(column_type = "JsonBinary")]
    pub metadata_json: Json,
    pub created_at: DateTimeUtc,
    pub updated_at: DateTimeUtc,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}

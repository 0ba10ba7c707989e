//! Webhooks: per-project endpoints told when a run finishes or fails, and the
//! record of every delivery (created with the event, retried with backoff).

use crate::columns::*;
use sea_orm_migration::prelude::*;
use sea_orm_migration::schema::*;

#[derive(DeriveMigrationName)]
pub struct Migration;

const TABLES: &[&str] = &["webhooks", "webhook_deliveries"];

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        let mut hooks = table("webhooks");
        project_owned(&mut hooks, "webhooks");
        hooks
            .col(text("url"))
            .col(string_null("description"))
            // The HMAC key; returned once, at creation.
            .col(string("signing_secret"))
            .col(json_obj("events_json"))
            .col(boolean("active").default(true))
            .col(created_at())
            .col(updated_at());

        let mut deliveries = table("webhook_deliveries");
        project_owned(&mut deliveries, "webhook_deliveries");
        deliveries
            .col(uuid("webhook_id"))
            .col(uuid_null("run_id"))
            .col(string("event_type"))
            .col(json_obj("payload_json"))
            .col(string("status").default("pending"))
            .col(integer("attempts").default(0))
            .col(timestamp_with_time_zone("next_attempt_at"))
            .col(integer_null("last_status_code"))
            .col(text_null("last_error"))
            .col(timestamp_with_time_zone_null("delivered_at"))
            .col(created_at())
            .col(updated_at());
        fk(
            &mut deliveries,
            "webhook_deliveries",
            "webhook_id",
            "webhooks",
            ForeignKeyAction::Cascade,
        );

        create_all(
            manager,
            vec![hooks, deliveries],
            vec![
                index("webhooks", "project", &["project_id", "created_at"]),
                index("webhook_deliveries", "due", &["status", "next_attempt_at"]),
                index(
                    "webhook_deliveries",
                    "webhook_created",
                    &["webhook_id", "created_at"],
                ),
            ],
        )
        .await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        drop_all(manager, TABLES).await
    }
}

//! What became of every provider call: when its current attempt was sent
//! (so a crash can tell "never sent" from "sent, answer lost"), how many
//! attempts were really sent, and what calls whose answer was lost may have
//! cost; cost events say whether they were billed for certain or possibly.

use sea_orm_migration::prelude::*;
use sea_orm_migration::schema::*;

#[derive(DeriveMigrationName)]
pub struct Migration;

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        // One column per statement: SQLite adds one at a time.
        for column in [
            timestamp_with_time_zone_null("sent_at"),
            integer("sent_attempts").default(0).to_owned(),
            double("possibly_billed_usd").default(0.0).to_owned(),
        ] {
            manager
                .alter_table(
                    Table::alter()
                        .table("provider_calls")
                        .add_column(column)
                        .to_owned(),
                )
                .await?;
        }
        manager
            .alter_table(
                Table::alter()
                    .table("cost_events")
                    .add_column(string("billing").default("billed"))
                    .to_owned(),
            )
            .await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        for column in ["sent_at", "sent_attempts", "possibly_billed_usd"] {
            manager
                .alter_table(
                    Table::alter()
                        .table("provider_calls")
                        .drop_column(column)
                        .to_owned(),
                )
                .await?;
        }
        manager
            .alter_table(
                Table::alter()
                    .table("cost_events")
                    .drop_column("billing")
                    .to_owned(),
            )
            .await
    }
}

//! The asset registry (every file the studio knows), lineage links, and the
//! reference-set items that may point at assets.
//!
//! Provenance columns (`run_id`, `job_id`, `candidate_id`) are plain indexed ids:
//! the run tables are created later and reference assets with real foreign keys,
//! and PostgreSQL cannot add the reverse constraint portably on SQLite.

use crate::columns::*;
use sea_orm_migration::prelude::*;
use sea_orm_migration::schema::*;

#[derive(DeriveMigrationName)]
pub struct Migration;

const TABLES: &[&str] = &["assets", "asset_links", "reference_set_items"];

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        let mut assets = table("assets");
        project_owned(&mut assets, "assets");
        assets
            .col(string("kind"))
            .col(string("storage_backend").default("local"))
            .col(string("storage_key"))
            .col(string("storage_uri"))
            .col(string_null("mime_type"))
            .col(integer_null("width"))
            .col(integer_null("height"))
            .col(big_integer_null("byte_size"))
            .col(string_null("sha256"))
            .col(uuid_null("run_id"))
            .col(uuid_null("job_id"))
            .col(uuid_null("candidate_id"))
            .col(json_obj("metadata_json"))
            .col(created_at());

        let mut links = table("asset_links");
        project_owned(&mut links, "asset_links");
        links
            .col(uuid("parent_asset_id"))
            .col(uuid("child_asset_id"))
            .col(string("link_type").default("derived_from"))
            .col(created_at())
            .col(updated_at());
        fk(
            &mut links,
            "asset_links",
            "parent_asset_id",
            "assets",
            ForeignKeyAction::Cascade,
        );
        fk(
            &mut links,
            "asset_links",
            "child_asset_id",
            "assets",
            ForeignKeyAction::Cascade,
        );

        let mut items = table("reference_set_items");
        project_owned(&mut items, "reference_set_items");
        items
            .col(uuid("reference_set_id"))
            .col(string("label"))
            .col(text_null("content_uri"))
            .col(text_null("content_text"))
            .col(uuid_null("asset_id"))
            .col(integer("sort_order").default(0))
            .col(double_null("weight"))
            .col(text_null("notes"))
            .col(json_obj("metadata_json"))
            .col(created_at())
            .col(updated_at());
        fk(
            &mut items,
            "reference_set_items",
            "reference_set_id",
            "reference_sets",
            ForeignKeyAction::Cascade,
        );
        fk(
            &mut items,
            "reference_set_items",
            "asset_id",
            "assets",
            ForeignKeyAction::SetNull,
        );

        create_all(
            manager,
            vec![assets, links, items],
            vec![
                index("assets", "project_created", &["project_id", "created_at"]),
                index(
                    "assets",
                    "project_kind_created",
                    &["project_id", "kind", "created_at"],
                ),
                index("assets", "project_sha256", &["project_id", "sha256"]),
                index("assets", "run", &["run_id"]),
                unique(
                    "asset_links",
                    "edge",
                    &[
                        "project_id",
                        "parent_asset_id",
                        "child_asset_id",
                        "link_type",
                    ],
                ),
                index("asset_links", "child", &["child_asset_id"]),
                index(
                    "reference_set_items",
                    "set_order",
                    &["reference_set_id", "sort_order"],
                ),
            ],
        )
        .await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        drop_all(manager, TABLES).await
    }
}

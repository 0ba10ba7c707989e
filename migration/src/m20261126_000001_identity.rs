//! Users, projects, their storage policy, API tokens and the audit log.

use crate::columns::*;
use sea_orm_migration::prelude::*;
use sea_orm_migration::schema::*;

#[derive(DeriveMigrationName)]
pub struct Migration;

const TABLES: &[&str] = &[
    "app_users",
    "projects",
    "project_storage",
    "api_tokens",
    "audit_events",
];

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        let mut users = table("app_users");
        users
            .col(string_uniq("username"))
            .col(string("display_name"))
            .col(string_null("email"))
            .col(boolean("is_active").default(true))
            .col(created_at())
            .col(updated_at());

        let mut projects = table("projects");
        projects
            .col(uuid("owner_user_id"))
            .col(string_uniq("slug"))
            .col(string("name"))
            .col(text("description").default(""))
            .col(string("status").default("active"))
            .col(json_obj("settings_json"))
            .col(created_at())
            .col(updated_at());
        fk(
            &mut projects,
            "projects",
            "owner_user_id",
            "app_users",
            ForeignKeyAction::Restrict,
        );

        let mut storage = table("project_storage");
        storage
            .col(uuid_uniq("project_id"))
            .col(string("local_base_dir"))
            .col(string_null("local_project_root"))
            .col(boolean("s3_enabled").default(false))
            .col(string_null("s3_bucket"))
            .col(string_null("s3_prefix"))
            .col(string_null("s3_region"))
            .col(string_null("s3_profile"))
            .col(string_null("s3_endpoint_url"))
            .col(big_integer("total_bytes").default(0))
            .col(big_integer("used_bytes").default(0))
            .col(created_at())
            .col(updated_at());
        fk(
            &mut storage,
            "project_storage",
            "project_id",
            "projects",
            ForeignKeyAction::Cascade,
        );

        let mut tokens = table("api_tokens");
        tokens
            .col(uuid("user_id"))
            .col(uuid_null("project_id"))
            .col(string_uniq("token_hash"))
            .col(string("token_prefix"))
            .col(string("label").default(""))
            .col(timestamp_with_time_zone_null("expires_at"))
            .col(timestamp_with_time_zone_null("revoked_at"))
            .col(timestamp_with_time_zone_null("last_used_at"))
            .col(created_at());
        fk(
            &mut tokens,
            "api_tokens",
            "user_id",
            "app_users",
            ForeignKeyAction::Cascade,
        );
        fk(
            &mut tokens,
            "api_tokens",
            "project_id",
            "projects",
            ForeignKeyAction::Cascade,
        );

        let mut audit = table("audit_events");
        audit
            .col(uuid_null("project_id"))
            .col(uuid_null("actor_user_id"))
            .col(uuid_null("actor_token_id"))
            .col(string("event_code"))
            .col(json_obj("payload_json"))
            .col(string_null("request_id"))
            .col(created_at());
        fk(
            &mut audit,
            "audit_events",
            "project_id",
            "projects",
            ForeignKeyAction::SetNull,
        );
        fk(
            &mut audit,
            "audit_events",
            "actor_user_id",
            "app_users",
            ForeignKeyAction::SetNull,
        );
        fk(
            &mut audit,
            "audit_events",
            "actor_token_id",
            "api_tokens",
            ForeignKeyAction::SetNull,
        );

        create_all(
            manager,
            vec![users, projects, storage, tokens, audit],
            vec![
                index("projects", "updated", &["updated_at"]),
                index("projects", "owner", &["owner_user_id"]),
                index("api_tokens", "user_created", &["user_id", "created_at"]),
                index(
                    "api_tokens",
                    "project_created",
                    &["project_id", "created_at"],
                ),
                index(
                    "audit_events",
                    "project_created",
                    &["project_id", "created_at"],
                ),
            ],
        )
        .await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        drop_all(manager, TABLES).await
    }
}

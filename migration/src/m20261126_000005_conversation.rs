//! Chat sessions and messages, agent instructions with their event trail, and
//! voice requests.

use crate::columns::*;
use sea_orm_migration::prelude::*;
use sea_orm_migration::schema::*;

#[derive(DeriveMigrationName)]
pub struct Migration;

const TABLES: &[&str] = &[
    "chat_sessions",
    "chat_messages",
    "agent_instructions",
    "agent_instruction_events",
    "voice_requests",
];

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        let mut sessions = table("chat_sessions");
        project_owned(&mut sessions, "chat_sessions");
        sessions
            .col(string("title"))
            .col(string("status").default("active"))
            .col(created_at())
            .col(updated_at());

        let mut messages = table("chat_messages");
        project_owned(&mut messages, "chat_messages");
        messages
            .col(uuid("session_id"))
            .col(string("role"))
            .col(text("content"))
            .col(created_at());
        fk(
            &mut messages,
            "chat_messages",
            "session_id",
            "chat_sessions",
            ForeignKeyAction::Cascade,
        );

        let mut instructions = table("agent_instructions");
        project_owned(&mut instructions, "agent_instructions");
        instructions
            .col(text("instruction_text"))
            .col(string("status"))
            .col(integer("attempts").default(0))
            .col(integer("max_attempts").default(3))
            .col(timestamp_with_time_zone_null("next_attempt_at"))
            .col(text_null("last_error"))
            .col(string_null("locked_by"))
            .col(timestamp_with_time_zone_null("locked_at"))
            .col(json_null("agent_response_json"))
            .col(created_at())
            .col(updated_at())
            .col(timestamp_with_time_zone_null("confirmed_at"))
            .col(timestamp_with_time_zone_null("canceled_at"));

        let mut instruction_events = table("agent_instruction_events");
        project_owned(&mut instruction_events, "agent_instruction_events");
        instruction_events
            .col(uuid("instruction_id"))
            .col(string("event_type"))
            .col(text_null("message"))
            .col(created_at());
        fk(
            &mut instruction_events,
            "agent_instruction_events",
            "instruction_id",
            "agent_instructions",
            ForeignKeyAction::Cascade,
        );

        let mut voice = table("voice_requests");
        project_owned(&mut voice, "voice_requests");
        voice
            .col(uuid_null("session_id"))
            .col(string("request_type"))
            .col(string("status"))
            .col(string_null("provider_code"))
            .col(text_null("input_text"))
            .col(uuid_null("output_asset_id"))
            .col(json_obj("meta_json"))
            .col(created_at())
            .col(updated_at());
        fk(
            &mut voice,
            "voice_requests",
            "session_id",
            "chat_sessions",
            ForeignKeyAction::SetNull,
        );
        fk(
            &mut voice,
            "voice_requests",
            "output_asset_id",
            "assets",
            ForeignKeyAction::SetNull,
        );

        create_all(
            manager,
            vec![sessions, messages, instructions, instruction_events, voice],
            vec![
                index(
                    "chat_sessions",
                    "project_updated",
                    &["project_id", "updated_at"],
                ),
                index(
                    "chat_messages",
                    "session_created",
                    &["session_id", "created_at"],
                ),
                index(
                    "agent_instructions",
                    "project_updated",
                    &["project_id", "updated_at"],
                ),
                index(
                    "agent_instructions",
                    "status_next",
                    &["status", "next_attempt_at"],
                ),
                index(
                    "agent_instruction_events",
                    "instruction",
                    &["instruction_id", "created_at"],
                ),
                index(
                    "voice_requests",
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

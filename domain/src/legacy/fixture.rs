//! The earlier system's tables, as its server created them (from the
//! description in ../shared/reference/legacy-schema.md): for the tests'
//! and the import benchmark's fixture databases, never for real imports.

/// The earlier system's tables, as its server created them (the columns a
/// file of its newest version has; `older` leaves out the newer ones).
pub fn schema(older: bool) -> Vec<String> {
    let newer = |cols: &str| {
        if older {
            String::new()
        } else {
            cols.to_string()
        }
    };
    vec![
        "CREATE TABLE app_users (id TEXT PRIMARY KEY, username TEXT NOT NULL UNIQUE, display_name TEXT NOT NULL, email TEXT, is_active INTEGER NOT NULL, created_at TEXT NOT NULL, updated_at TEXT NOT NULL)".into(),
        "CREATE TABLE users (id TEXT PRIMARY KEY, username TEXT NOT NULL UNIQUE, display_name TEXT NOT NULL, email TEXT, is_active INTEGER NOT NULL, created_at TEXT NOT NULL, updated_at TEXT NOT NULL)".into(),
        format!("CREATE TABLE projects (id TEXT PRIMARY KEY, user_id TEXT NOT NULL, slug TEXT NOT NULL, name TEXT NOT NULL, description TEXT NOT NULL, status TEXT NOT NULL, settings_json TEXT NOT NULL, created_at TEXT NOT NULL, updated_at TEXT NOT NULL{}, UNIQUE(user_id, slug))", newer(", owner_user_id TEXT")),
        "CREATE TABLE project_storage (id TEXT PRIMARY KEY, project_id TEXT NOT NULL UNIQUE, total_bytes INTEGER NOT NULL, used_bytes INTEGER NOT NULL, created_at TEXT NOT NULL, updated_at TEXT NOT NULL, local_base_dir TEXT NOT NULL, local_project_root TEXT, s3_enabled INTEGER NOT NULL, s3_bucket TEXT, s3_prefix TEXT, s3_region TEXT, s3_profile TEXT, s3_endpoint_url TEXT)".into(),
        "CREATE TABLE provider_accounts (project_id TEXT NOT NULL, provider_code TEXT NOT NULL, display_name TEXT NOT NULL, account_ref TEXT, base_url TEXT, enabled INTEGER NOT NULL, config_json TEXT NOT NULL, created_at TEXT NOT NULL, updated_at TEXT NOT NULL, PRIMARY KEY (project_id, provider_code))".into(),
        "CREATE TABLE project_secrets (project_id TEXT NOT NULL, provider_code TEXT NOT NULL, secret_name TEXT NOT NULL, secret_value TEXT NOT NULL, key_ref TEXT NOT NULL, created_at TEXT NOT NULL, updated_at TEXT NOT NULL, PRIMARY KEY (project_id, provider_code, secret_name))".into(),
        "CREATE TABLE style_guides (id TEXT PRIMARY KEY, project_id TEXT NOT NULL, name TEXT NOT NULL, instructions TEXT NOT NULL, notes TEXT, created_at TEXT NOT NULL, updated_at TEXT NOT NULL)".into(),
        "CREATE TABLE characters (id TEXT PRIMARY KEY, project_id TEXT NOT NULL, name TEXT NOT NULL, description TEXT, prompt_text TEXT, created_at TEXT NOT NULL, updated_at TEXT NOT NULL)".into(),
        "CREATE TABLE prompt_templates (id TEXT PRIMARY KEY, project_id TEXT NOT NULL, name TEXT NOT NULL, template_text TEXT NOT NULL, created_at TEXT NOT NULL, updated_at TEXT NOT NULL)".into(),
        "CREATE TABLE reference_sets (id TEXT PRIMARY KEY, project_id TEXT NOT NULL, name TEXT NOT NULL, description TEXT, created_at TEXT NOT NULL, updated_at TEXT NOT NULL)".into(),
        "CREATE TABLE reference_set_items (id TEXT PRIMARY KEY, project_id TEXT NOT NULL, reference_set_id TEXT NOT NULL, label TEXT NOT NULL, content_uri TEXT, content_text TEXT, sort_order INTEGER NOT NULL, metadata_json TEXT NOT NULL, created_at TEXT NOT NULL, updated_at TEXT NOT NULL)".into(),
        format!("CREATE TABLE assets (id TEXT PRIMARY KEY, project_id TEXT NOT NULL, kind TEXT, storage_uri TEXT, created_at TEXT{})", newer(", asset_kind TEXT, rel_path TEXT, storage_backend TEXT, mime_type TEXT, width INTEGER, height INTEGER, sha256 TEXT, run_id TEXT, job_id TEXT, candidate_id TEXT, metadata_json TEXT, meta_json TEXT")),
        "CREATE TABLE asset_links (id TEXT PRIMARY KEY, project_id TEXT NOT NULL, parent_asset_id TEXT NOT NULL, child_asset_id TEXT NOT NULL, link_type TEXT NOT NULL, created_at TEXT NOT NULL, updated_at TEXT NOT NULL)".into(),
        format!("CREATE TABLE runs (id TEXT PRIMARY KEY, project_id TEXT NOT NULL, status TEXT, stage TEXT, created_at TEXT, run_log_path TEXT, mode TEXT, time_of_day TEXT, weather TEXT, model TEXT, meta_json TEXT{})", newer(", run_mode TEXT, model_name TEXT, provider_code TEXT, settings_snapshot_json TEXT, started_at TEXT, finished_at TEXT, image_size TEXT, image_quality TEXT")),
        format!("CREATE TABLE run_jobs (id TEXT PRIMARY KEY, run_id TEXT NOT NULL, job_key TEXT, status TEXT, created_at TEXT, prompt_text TEXT, selected_candidate INTEGER, final_output TEXT, meta_json TEXT{})", newer(", selected_candidate_index INTEGER, final_asset_id TEXT")),
        "CREATE TABLE run_job_candidates (id TEXT PRIMARY KEY, job_id TEXT NOT NULL, candidate_index INTEGER, status TEXT, output_path TEXT, final_output_path TEXT, created_at TEXT, rank_hard_failures INTEGER, rank_soft_warnings INTEGER, rank_avg_chroma_exceed REAL, meta_json TEXT)".into(),
        "CREATE TABLE run_candidates (id TEXT PRIMARY KEY, job_id TEXT NOT NULL, candidate_index INTEGER, status TEXT, output_asset_id TEXT, final_asset_id TEXT, output_path TEXT, final_output_path TEXT, rank_hard_failures INTEGER, rank_soft_warnings INTEGER, rank_avg_chroma_exceed REAL, meta_json TEXT, created_at TEXT)".into(),
        "CREATE TABLE quality_reports (id TEXT PRIMARY KEY, project_id TEXT NOT NULL, run_id TEXT, asset_id TEXT, report_type TEXT, grade TEXT, hard_failures INTEGER, soft_warnings INTEGER, avg_chroma_exceed REAL, summary_json TEXT, created_at TEXT, meta_json TEXT)".into(),
        "CREATE TABLE cost_events (id TEXT PRIMARY KEY, project_id TEXT NOT NULL, run_id TEXT, job_id TEXT, provider_code TEXT, model_name TEXT, event_type TEXT, units REAL, unit_cost_usd REAL, total_cost_usd REAL, currency TEXT, meta_json TEXT, created_at TEXT)".into(),
        "CREATE TABLE project_exports (id TEXT PRIMARY KEY, project_id TEXT NOT NULL, run_id TEXT, status TEXT, export_format TEXT, storage_uri TEXT, rel_path TEXT, file_size_bytes INTEGER, checksum_sha256 TEXT, manifest_json TEXT, created_at TEXT, completed_at TEXT, meta_json TEXT)".into(),
        "CREATE TABLE audit_events (id TEXT PRIMARY KEY, project_id TEXT, actor_user_id TEXT, event_code TEXT NOT NULL, payload_json TEXT NOT NULL, created_at TEXT NOT NULL)".into(),
        "CREATE TABLE chat_sessions (id TEXT PRIMARY KEY, project_id TEXT NOT NULL, title TEXT NOT NULL, status TEXT NOT NULL, created_at TEXT NOT NULL, updated_at TEXT NOT NULL)".into(),
        "CREATE TABLE chat_messages (id TEXT PRIMARY KEY, project_id TEXT NOT NULL, session_id TEXT NOT NULL, role TEXT NOT NULL, content TEXT NOT NULL, created_at TEXT NOT NULL)".into(),
        "CREATE TABLE agent_instructions (id TEXT PRIMARY KEY, project_id TEXT NOT NULL, instruction_text TEXT NOT NULL, status TEXT NOT NULL, created_at TEXT NOT NULL, updated_at TEXT NOT NULL, confirmed_at TEXT, canceled_at TEXT, attempts INTEGER NOT NULL, max_attempts INTEGER NOT NULL, next_attempt_at TEXT, last_error TEXT, locked_by TEXT, locked_at TEXT, agent_response_json TEXT)".into(),
        "CREATE TABLE agent_instruction_events (id TEXT PRIMARY KEY, project_id TEXT NOT NULL, instruction_id TEXT NOT NULL, event_type TEXT NOT NULL, message TEXT, created_at TEXT NOT NULL)".into(),
        "CREATE TABLE api_tokens (id TEXT PRIMARY KEY, user_id TEXT NOT NULL, project_id TEXT, token_hash TEXT NOT NULL UNIQUE, token_prefix TEXT NOT NULL, label TEXT NOT NULL, expires_at TEXT, revoked_at TEXT, last_used_at TEXT, created_at TEXT NOT NULL)".into(),
    ]
}

/// The tables of [`schema`], by name.
pub const TABLES: &[&str] = &[
    "app_users",
    "users",
    "projects",
    "project_storage",
    "provider_accounts",
    "project_secrets",
    "style_guides",
    "characters",
    "prompt_templates",
    "reference_sets",
    "reference_set_items",
    "assets",
    "asset_links",
    "runs",
    "run_jobs",
    "run_job_candidates",
    "run_candidates",
    "quality_reports",
    "cost_events",
    "project_exports",
    "audit_events",
    "chat_sessions",
    "chat_messages",
    "agent_instructions",
    "agent_instruction_events",
    "api_tokens",
];

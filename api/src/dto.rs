//! Response shapes of the v1 contract. Timestamps are `YYYY-MM-DDTHH:MM:SSZ`;
//! optional text columns come out as `""`, as the contract specifies.

use domain::projects::StorageView;
use domain::time::format;
use entities::{api_tokens, projects};
use serde::Serialize;
use utoipa::ToSchema;
use uuid::Uuid;

#[derive(Serialize, ToSchema)]
pub struct ProjectRef {
    pub id: Uuid,
    pub slug: String,
    pub name: String,
}

impl From<&projects::Model> for ProjectRef {
    fn from(p: &projects::Model) -> Self {
        Self {
            id: p.id,
            slug: p.slug.clone(),
            name: p.name.clone(),
        }
    }
}

#[derive(Serialize, ToSchema)]
pub struct ProjectSummary {
    pub id: Uuid,
    pub slug: String,
    pub name: String,
    pub description: String,
    pub status: String,
    /// Owner's username.
    pub username: String,
    pub created_at: String,
    pub updated_at: String,
}

impl ProjectSummary {
    pub fn new(p: &projects::Model, username: String) -> Self {
        Self {
            id: p.id,
            slug: p.slug.clone(),
            name: p.name.clone(),
            description: p.description.clone(),
            status: p.status.clone(),
            username,
            created_at: format(&p.created_at),
            updated_at: format(&p.updated_at),
        }
    }
}

#[derive(Serialize, ToSchema)]
pub struct ProjectInfo {
    pub id: Uuid,
    pub slug: String,
    pub name: String,
    pub description: String,
    pub status: String,
    pub created_at: String,
    pub updated_at: String,
}

impl From<&projects::Model> for ProjectInfo {
    fn from(p: &projects::Model) -> Self {
        Self {
            id: p.id,
            slug: p.slug.clone(),
            name: p.name.clone(),
            description: p.description.clone(),
            status: p.status.clone(),
            created_at: format(&p.created_at),
            updated_at: format(&p.updated_at),
        }
    }
}

#[derive(Serialize, ToSchema)]
pub struct ProjectCounts {
    pub runs: u64,
    pub jobs: u64,
    pub assets: u64,
}

#[derive(Serialize, ToSchema)]
pub struct LocalStorage {
    /// As configured: relative to the data directory, or absolute.
    pub base_dir: String,
    /// Absolute path of the project's files on this server.
    pub project_root: String,
}

#[derive(Serialize, ToSchema)]
pub struct S3Storage {
    pub enabled: bool,
    pub bucket: String,
    pub prefix: String,
    pub region: String,
    pub profile: String,
    pub endpoint_url: String,
}

#[derive(Serialize, ToSchema)]
pub struct Storage {
    pub local: LocalStorage,
    pub s3: S3Storage,
}

impl From<StorageView> for Storage {
    fn from(v: StorageView) -> Self {
        Self {
            local: LocalStorage {
                base_dir: v.base_dir,
                project_root: v.project_root,
            },
            s3: S3Storage {
                enabled: v.s3_enabled,
                bucket: v.s3_bucket.unwrap_or_default(),
                prefix: v.s3_prefix,
                region: v.s3_region.unwrap_or_default(),
                profile: v.s3_profile.unwrap_or_default(),
                endpoint_url: v.s3_endpoint_url.unwrap_or_default(),
            },
        }
    }
}

/// A token as listed: never the token itself, never its hash.
#[derive(Serialize, ToSchema)]
pub struct TokenSummary {
    pub id: Uuid,
    pub user_id: Uuid,
    pub project_id: Option<Uuid>,
    pub token_prefix: String,
    pub label: String,
    pub expires_at: Option<String>,
    pub revoked_at: Option<String>,
    pub last_used_at: Option<String>,
    pub created_at: String,
    pub active: bool,
}

impl From<&api_tokens::Model> for TokenSummary {
    fn from(t: &api_tokens::Model) -> Self {
        Self {
            id: t.id,
            user_id: t.user_id,
            project_id: t.project_id,
            token_prefix: t.token_prefix.clone(),
            label: t.label.clone(),
            expires_at: t.expires_at.as_ref().map(format),
            revoked_at: t.revoked_at.as_ref().map(format),
            last_used_at: t.last_used_at.as_ref().map(format),
            created_at: format(&t.created_at),
            active: domain::auth::is_active(t, chrono::Utc::now()),
        }
    }
}

/// The one-time view of a freshly minted token.
#[derive(Serialize, ToSchema)]
pub struct NewToken {
    pub id: Uuid,
    /// The bearer token. Shown only in this response; store it now.
    pub token: String,
    pub token_prefix: String,
    pub label: String,
    pub project_id: Option<Uuid>,
    pub created_at: String,
    pub expires_at: Option<String>,
}

fn opt_ts(ts: &Option<chrono::DateTime<chrono::Utc>>) -> String {
    ts.as_ref().map(format).unwrap_or_default()
}

/// A run (v1 field names; `estimated_cost_usd`, `budget_usd`, `last_event_seq`
/// and `last_error` are additions).
#[derive(Serialize, ToSchema)]
pub struct Run {
    pub id: Uuid,
    pub project_id: Uuid,
    pub run_mode: String,
    pub status: String,
    pub stage: String,
    pub time_of_day: String,
    pub weather: String,
    pub model_name: String,
    pub provider_code: String,
    #[schema(value_type = Object)]
    pub settings_snapshot_json: serde_json::Value,
    pub started_at: String,
    pub finished_at: String,
    pub created_at: String,
    pub run_log_path: String,
    pub image_size: String,
    pub image_quality: String,
    pub estimated_cost_usd: f64,
    pub budget_usd: Option<f64>,
    pub last_event_seq: i64,
    pub last_error: String,
}

impl From<&entities::runs::Model> for Run {
    fn from(r: &entities::runs::Model) -> Self {
        Self {
            id: r.id,
            project_id: r.project_id,
            run_mode: r.run_mode.clone(),
            status: r.status.clone(),
            stage: r.stage.clone().unwrap_or_default(),
            time_of_day: r.time_of_day.clone().unwrap_or_default(),
            weather: r.weather.clone().unwrap_or_default(),
            model_name: r.model_name.clone().unwrap_or_default(),
            provider_code: r.provider_code.clone().unwrap_or_default(),
            settings_snapshot_json: r.settings_snapshot_json.clone(),
            started_at: opt_ts(&r.started_at),
            finished_at: opt_ts(&r.finished_at),
            created_at: format(&r.created_at),
            run_log_path: r.run_log_key.clone().unwrap_or_default(),
            image_size: r.image_size.clone().unwrap_or_default(),
            image_quality: r.image_quality.clone().unwrap_or_default(),
            estimated_cost_usd: r.estimated_cost_usd,
            budget_usd: r.budget_usd,
            last_event_seq: r.last_event_seq,
            last_error: r.last_error.clone().unwrap_or_default(),
        }
    }
}

#[derive(Serialize, ToSchema)]
pub struct Candidate {
    pub id: Uuid,
    pub job_id: Uuid,
    pub candidate_index: i32,
    pub status: String,
    pub output_asset_id: Option<Uuid>,
    pub final_asset_id: Option<Uuid>,
    /// The output file's path in the project's storage (`""`: none), as v1.
    pub output_path: String,
    /// The final file's path (after passes; `""`: none), as v1.
    pub final_output_path: String,
    pub rank_hard_failures: i32,
    pub rank_soft_warnings: i32,
    pub rank_avg_chroma_exceed: f64,
    #[schema(value_type = Object)]
    pub meta_json: serde_json::Value,
    pub created_at: String,
}

/// Storage paths of assets by id (v1's path keys name files, not assets).
pub type AssetPaths = std::collections::HashMap<Uuid, String>;

fn path_of(paths: &AssetPaths, id: Option<Uuid>) -> String {
    id.and_then(|id| paths.get(&id).cloned())
        .unwrap_or_default()
}

impl Candidate {
    pub fn new(c: &entities::run_candidates::Model, paths: &AssetPaths) -> Self {
        Self {
            id: c.id,
            job_id: c.job_id,
            candidate_index: c.candidate_index,
            status: c.status.clone(),
            output_asset_id: c.output_asset_id,
            final_asset_id: c.final_asset_id,
            output_path: path_of(paths, c.output_asset_id),
            final_output_path: path_of(paths, c.final_asset_id),
            rank_hard_failures: c.rank_hard_failures,
            rank_soft_warnings: c.rank_soft_warnings,
            rank_avg_chroma_exceed: c.rank_avg_chroma_exceed,
            meta_json: c.meta_json.clone(),
            created_at: format(&c.created_at),
        }
    }
}

/// A job: one scene at one stage of the chain.
#[derive(Serialize, ToSchema)]
pub struct Job {
    pub id: Uuid,
    pub run_id: Uuid,
    pub job_key: String,
    pub status: String,
    pub stage: String,
    pub stage_index: i32,
    pub parent_job_id: Option<Uuid>,
    /// The failed job this one retries.
    pub retry_of_job_id: Option<Uuid>,
    pub scene_ref: String,
    pub prompt_text: String,
    pub input_asset_id: Option<Uuid>,
    pub selected_candidate_index: Option<i32>,
    pub final_asset_id: Option<Uuid>,
    /// The final file's path in the project's storage (`""`: none), as v1.
    pub final_output: String,
    pub attempt: i32,
    pub last_error: String,
    #[schema(value_type = Object)]
    pub meta_json: serde_json::Value,
    pub created_at: String,
    pub candidates: Vec<Candidate>,
}

impl Job {
    pub fn new(
        j: &entities::run_jobs::Model,
        candidates: Vec<Candidate>,
        paths: &AssetPaths,
    ) -> Self {
        Self {
            id: j.id,
            run_id: j.run_id,
            job_key: j.job_key.clone(),
            status: j.status.clone(),
            stage: j.stage.clone(),
            stage_index: j.stage_index,
            parent_job_id: j.parent_job_id,
            retry_of_job_id: j.retry_of_job_id,
            scene_ref: j.scene_ref.clone().unwrap_or_default(),
            prompt_text: j.prompt_text.clone().unwrap_or_default(),
            input_asset_id: j.input_asset_id,
            selected_candidate_index: j.selected_candidate_index,
            final_asset_id: j.final_asset_id,
            final_output: path_of(paths, j.final_asset_id),
            attempt: j.attempt,
            last_error: j.last_error.clone().unwrap_or_default(),
            meta_json: j.meta_json.clone(),
            created_at: format(&j.created_at),
            candidates,
        }
    }
}

#[derive(Serialize, ToSchema)]
pub struct Event {
    pub run_id: Uuid,
    pub seq: i64,
    pub event_type: String,
    pub job_id: Option<Uuid>,
    #[schema(value_type = Object)]
    pub payload: serde_json::Value,
    pub created_at: String,
}

impl From<&domain::runs::events::RunEvent> for Event {
    fn from(e: &domain::runs::events::RunEvent) -> Self {
        Self {
            run_id: e.run_id,
            seq: e.seq,
            event_type: e.event_type.clone(),
            job_id: e.job_id,
            payload: e.payload.clone(),
            created_at: format(&e.created_at),
        }
    }
}

/// A file of the project.
#[derive(Serialize, ToSchema)]
pub struct Asset {
    pub id: Uuid,
    pub project_id: Uuid,
    pub kind: String,
    /// Same as `kind` (older clients read this name).
    pub asset_kind: String,
    pub storage_uri: String,
    /// Same as `storage_uri` (older clients read this name).
    pub rel_path: String,
    pub storage_backend: String,
    pub mime_type: Option<String>,
    pub width: Option<i32>,
    pub height: Option<i32>,
    pub byte_size: Option<i64>,
    pub sha256: Option<String>,
    pub run_id: Option<Uuid>,
    pub job_id: Option<Uuid>,
    pub candidate_id: Option<Uuid>,
    #[schema(value_type = Object)]
    pub metadata_json: serde_json::Value,
    pub created_at: String,
}

impl From<&entities::assets::Model> for Asset {
    fn from(a: &entities::assets::Model) -> Self {
        Self {
            id: a.id,
            project_id: a.project_id,
            kind: a.kind.clone(),
            asset_kind: a.kind.clone(),
            storage_uri: a.storage_uri.clone(),
            rel_path: a.storage_uri.clone(),
            storage_backend: a.storage_backend.clone(),
            mime_type: a.mime_type.clone(),
            width: a.width,
            height: a.height,
            byte_size: a.byte_size,
            sha256: a.sha256.clone(),
            run_id: a.run_id,
            job_id: a.job_id,
            candidate_id: a.candidate_id,
            metadata_json: a.metadata_json.clone(),
            created_at: format(&a.created_at),
        }
    }
}

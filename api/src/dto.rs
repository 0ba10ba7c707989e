//! Response shapes of the v1 contract. Timestamps are `YYYY-MM-DDTHH:MM:SSZ`;
//! optional text columns come out as `""`, as the contract specifies.

use actors::projects::StorageView;
use actors::time::format;
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
            active: actors::auth::is_active(t, chrono::Utc::now()),
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

use actix_web::{HttpResponse, get, post, web};
use domain::projects::{self, UpsertProject};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};
use uuid::Uuid;

use crate::AppState;
use crate::dto::{ProjectCounts, ProjectInfo, ProjectRef, ProjectSummary, Storage};
use crate::error::{ApiResult, ErrorBody};
use crate::extract::{Auth, JsonBody, ProjectAccess};

#[derive(Deserialize, IntoParams)]
pub struct ListQuery {
    /// Only projects owned by this user (normalised like a slug).
    username: Option<String>,
}

#[derive(Serialize, ToSchema)]
pub struct ProjectList {
    ok: bool,
    count: usize,
    projects: Vec<ProjectSummary>,
}

/// List projects, most recently updated first. A project-scoped token sees only its project.
#[utoipa::path(tag = "projects", params(ListQuery), responses((status = 200, body = ProjectList), (status = 401, body = ErrorBody)))]
#[get("/api/projects")]
pub async fn list_projects(
    state: web::Data<AppState>,
    Auth(principal): Auth,
    query: web::Query<ListQuery>,
) -> ApiResult<HttpResponse> {
    let username = query.username.as_deref();
    let key = format!(
        "projects|{:?}|{}",
        principal.scope(),
        username.unwrap_or("")
    );
    let db = &state.db;
    let principal = &principal;
    state
        .renders
        .respond(
            key,
            projects::list_fingerprint(db, principal, username),
            || async move {
                let rows = projects::list(db, principal, username).await?;
                let projects: Vec<ProjectSummary> = rows
                    .into_iter()
                    .map(|r| ProjectSummary::new(&r.project, r.username))
                    .collect();
                Ok(ProjectList {
                    ok: true,
                    count: projects.len(),
                    projects,
                })
            },
        )
        .await
}

#[derive(Deserialize, ToSchema, Default)]
#[serde(default)]
pub struct UpsertProjectBody {
    /// Required; at most 200 characters.
    name: Option<String>,
    /// Normalised (lowercase, `[a-z0-9_-]`); defaults to the slugified name.
    slug: Option<String>,
    /// Omitted keeps the stored description.
    description: Option<String>,
    /// Owner; defaults to `local`.
    username: Option<String>,
    user_display_name: Option<String>,
}

#[derive(Serialize, ToSchema)]
pub struct ProjectUpserted {
    ok: bool,
    project: ProjectRef,
    storage: Storage,
    /// True when this call created the project.
    created: bool,
    audit_id: Uuid,
}

/// Create a project, or update the one with this slug (upsert).
#[utoipa::path(
    tag = "projects",
    request_body(content = UpsertProjectBody, content_type = "application/json"),
    responses(
        (status = 200, body = ProjectUpserted),
        (status = 400, body = ErrorBody, description = "field_required, field_too_long, invalid_project_slug, invalid_username, slug_taken"),
        (status = 401, body = ErrorBody),
        (status = 403, body = ErrorBody, description = "a project-scoped token naming another project"),
        (status = 409, body = ErrorBody, description = "slug_conflict (a name deriving another project's slug), storage_root_overlap (its default root inside another project's)"),
    )
)]
#[post("/api/projects")]
pub async fn upsert_project(
    state: web::Data<AppState>,
    Auth(principal): Auth,
    JsonBody(body): JsonBody<UpsertProjectBody>,
) -> ApiResult<web::Json<ProjectUpserted>> {
    let result = projects::upsert(
        &state.db,
        &state.roots,
        &principal,
        UpsertProject {
            name: body.name,
            slug: body.slug,
            description: body.description,
            username: body.username,
            user_display_name: body.user_display_name,
        },
    )
    .await?;
    Ok(web::Json(ProjectUpserted {
        ok: true,
        project: ProjectRef::from(&result.project),
        storage: result.storage.into(),
        created: result.created,
        audit_id: result.audit_id,
    }))
}

#[derive(Serialize, ToSchema)]
pub struct ProjectDetail {
    ok: bool,
    project: ProjectInfo,
    counts: ProjectCounts,
    storage: Storage,
}

/// Project detail with run, job and asset counts and its storage.
#[utoipa::path(
    tag = "projects",
    params(("slug" = String, Path)),
    responses((status = 200, body = ProjectDetail), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody))
)]
#[get("/api/projects/{slug}")]
pub async fn get_project(
    state: web::Data<AppState>,
    ProjectAccess { project, .. }: ProjectAccess,
) -> ApiResult<HttpResponse> {
    let key = format!("project|{}", project.id);
    let (state, project) = (&state, &project);
    state
        .renders
        .respond_fresh(key, || async move {
            let counts = projects::counts(&state.db, project.id).await?;
            let storage_row = projects::storage_row(&state.db, project.id).await?;
            let storage = projects::storage_view(&state.roots, project, &storage_row)?;
            Ok(ProjectDetail {
                ok: true,
                project: ProjectInfo::from(project),
                counts: ProjectCounts {
                    runs: counts.runs,
                    jobs: counts.jobs,
                    assets: counts.assets,
                },
                storage: storage.into(),
            })
        })
        .await
}

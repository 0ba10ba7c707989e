//! The creative catalogue's routes: style guides, characters, reference sets
//! and prompt templates share one shape (list, create, detail, partial
//! update, delete), generated per kind by `catalog_routes!` over the generic
//! service in `domain::catalog`. Not audited (as in v1).

use actix_web::{delete, get, post, put, web};
use domain::catalog::{self, CatalogKind, Input};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use utoipa::ToSchema;
use uuid::Uuid;

use crate::AppState;
use crate::error::{ApiResult, ErrorBody};
use crate::extract::{JsonBody, ProjectAccess, ProjectSlug};

/// Every catalogue field; each kind reads its own (others are ignored, as
/// unknown fields are everywhere).
#[derive(Deserialize, ToSchema, Default)]
#[serde(default)]
pub struct CatalogBody {
    name: Option<String>,
    /// Style guides (required on create).
    instructions: Option<String>,
    /// Style guides; blank clears.
    notes: Option<String>,
    /// Characters and reference sets; blank clears.
    description: Option<String>,
    /// Characters; blank clears.
    prompt_text: Option<String>,
    /// Prompt templates (required on create).
    template_text: Option<String>,
}

impl CatalogBody {
    fn input<K: CatalogKind>(&self) -> Input<'_> {
        let field = |name: &str| match name {
            "instructions" => self.instructions.as_deref(),
            "notes" => self.notes.as_deref(),
            "description" => self.description.as_deref(),
            "prompt_text" => self.prompt_text.as_deref(),
            "template_text" => self.template_text.as_deref(),
            _ => None,
        };
        Input {
            name: self.name.as_deref(),
            fields: K::FIELDS.iter().map(|f| (f.name, field(f.name))).collect(),
        }
    }
}

/// `{ok: true, <key>: <value>, ...}`.
fn envelope(entries: Vec<(&str, Value)>) -> web::Json<Value> {
    let mut map = Map::new();
    map.insert("ok".into(), Value::Bool(true));
    for (k, v) in entries {
        map.insert(k.into(), v);
    }
    web::Json(Value::Object(map))
}

async fn list<K: CatalogKind>(
    state: &AppState,
    project_id: Uuid,
    key: &str,
) -> ApiResult<web::Json<Value>> {
    let rows: Vec<Value> = catalog::list::<K, _>(&state.db, project_id)
        .await?
        .iter()
        .map(K::view)
        .collect();
    Ok(envelope(vec![
        ("count", Value::from(rows.len())),
        (key, Value::Array(rows)),
    ]))
}

/// A catalogue response, for the OpenAPI document (each kind's fields are
/// listed in docs/api.md).
#[derive(Serialize, ToSchema)]
pub struct CatalogResponse {
    ok: bool,
}

macro_rules! catalog_routes {
    ($kind:ty, $tag:literal, $list_path:literal, $item_path:literal, $id_param:literal,
     $plural:literal, $singular:literal,
     $list:ident, $create:ident, $get:ident, $update:ident, $delete:ident) => {
        /// List, most recently updated first.
        #[utoipa::path(tag = $tag, params(("slug" = String, Path)),
            responses((status = 200, body = CatalogResponse), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)))]
        #[get($list_path)]
        pub async fn $list(
            state: web::Data<AppState>,
            ProjectAccess { project, .. }: ProjectAccess,
        ) -> ApiResult<web::Json<Value>> {

            list::<$kind>(&state, project.id, $plural).await
        }

        /// Create (names are unique per project). The body is checked first.
        #[utoipa::path(tag = $tag, params(("slug" = String, Path)),
            request_body(content = CatalogBody, content_type = "application/json"),
            responses((status = 200, body = CatalogResponse),
                (status = 400, body = ErrorBody, description = "field_required, field_too_long, duplicate_name"),
                (status = 401, body = ErrorBody), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)))]
        #[post($list_path)]
        pub async fn $create(
            state: web::Data<AppState>,
            access: ProjectSlug,
            JsonBody(body): JsonBody<CatalogBody>,
        ) -> ApiResult<web::Json<Value>> {
            let valid = catalog::validate_create::<$kind>(&body.input::<$kind>())?;
            let ProjectAccess { project, .. } = access.authorize(&state).await?;
            let row = catalog::create::<$kind>(&state.db, project.id, valid).await?;
            Ok(envelope(vec![($singular, <$kind>::view(&row))]))
        }

        /// Detail.
        #[utoipa::path(tag = $tag, params(("slug" = String, Path), ($id_param = String, Path)),
            responses((status = 200, body = CatalogResponse), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)))]
        #[get($item_path)]
        pub async fn $get(
            state: web::Data<AppState>,
            ProjectAccess { project, .. }: ProjectAccess,
            path: web::Path<(String, String)>,
        ) -> ApiResult<web::Json<Value>> {
            let (_, id) = path.into_inner();

            let row = catalog::get::<$kind, _>(&state.db, project.id, &id).await?;
            Ok(envelope(vec![($singular, <$kind>::view(&row))]))
        }

        /// Partial update: at least one field, checked before any lookup.
        #[utoipa::path(tag = $tag, params(("slug" = String, Path), ($id_param = String, Path)),
            request_body(content = CatalogBody, content_type = "application/json"),
            responses((status = 200, body = CatalogResponse),
                (status = 400, body = ErrorBody, description = "field_required, field_too_long, duplicate_name"),
                (status = 401, body = ErrorBody), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)))]
        #[put($item_path)]
        pub async fn $update(
            state: web::Data<AppState>,
            access: ProjectSlug,
            path: web::Path<(String, String)>,
            JsonBody(body): JsonBody<CatalogBody>,
        ) -> ApiResult<web::Json<Value>> {
            let (_, id) = path.into_inner();
            let valid = catalog::validate_update::<$kind>(&body.input::<$kind>())?;
            let ProjectAccess { project, .. } = access.authorize(&state).await?;
            let row = catalog::update::<$kind>(&state.db, project.id, &id, valid).await?;
            Ok(envelope(vec![($singular, <$kind>::view(&row))]))
        }

        /// Delete.
        #[utoipa::path(tag = $tag, params(("slug" = String, Path), ($id_param = String, Path)),
            responses((status = 200, body = CatalogResponse), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)))]
        #[delete($item_path)]
        pub async fn $delete(
            state: web::Data<AppState>,
            ProjectAccess { project, .. }: ProjectAccess,
            path: web::Path<(String, String)>,
        ) -> ApiResult<web::Json<Value>> {
            let (_, id) = path.into_inner();

            let id = catalog::delete::<$kind>(&state.db, project.id, &id).await?;
            Ok(envelope(vec![("deleted", Value::Bool(true)), ("id", Value::from(id.to_string()))]))
        }
    };
}

catalog_routes!(
    catalog::StyleGuide,
    "style-guides",
    "/api/projects/{slug}/style-guides",
    "/api/projects/{slug}/style-guides/{styleGuideId}",
    "styleGuideId",
    "style_guides",
    "style_guide",
    list_style_guides,
    create_style_guide,
    get_style_guide,
    update_style_guide,
    delete_style_guide
);

catalog_routes!(
    catalog::Character,
    "characters",
    "/api/projects/{slug}/characters",
    "/api/projects/{slug}/characters/{characterId}",
    "characterId",
    "characters",
    "character",
    list_characters,
    create_character,
    get_character,
    update_character,
    delete_character
);

catalog_routes!(
    catalog::ReferenceSet,
    "reference-sets",
    "/api/projects/{slug}/reference-sets",
    "/api/projects/{slug}/reference-sets/{referenceSetId}",
    "referenceSetId",
    "reference_sets",
    "reference_set",
    list_reference_sets,
    create_reference_set,
    get_reference_set,
    update_reference_set,
    delete_reference_set
);

catalog_routes!(
    catalog::PromptTemplate,
    "prompt-templates",
    "/api/projects/{slug}/prompt-templates",
    "/api/projects/{slug}/prompt-templates/{templateId}",
    "templateId",
    "prompt_templates",
    "prompt_template",
    list_prompt_templates,
    create_prompt_template,
    get_prompt_template,
    update_prompt_template,
    delete_prompt_template
);

/// **New**: every version of a template, oldest first (each create and
/// update is one).
#[utoipa::path(tag = "prompt-templates", params(("slug" = String, Path), ("templateId" = String, Path)),
    responses((status = 200, body = CatalogResponse), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)))]
#[get("/api/projects/{slug}/prompt-templates/{templateId}/versions")]
pub async fn list_template_versions(
    state: web::Data<AppState>,
    ProjectAccess { project, .. }: ProjectAccess,
    path: web::Path<(String, String)>,
) -> ApiResult<web::Json<Value>> {
    let (_, id) = path.into_inner();

    let template = catalog::get::<catalog::PromptTemplate, _>(&state.db, project.id, &id).await?;
    let versions: Vec<Value> = catalog::template_versions(&state.db, template.id)
        .await?
        .iter()
        .map(|v| {
            serde_json::json!({
                "id": v.id, "template_id": v.template_id, "version": v.version, "name": v.name,
                "template_text": v.template_text, "created_at": domain::time::format(&v.created_at),
            })
        })
        .collect();
    Ok(envelope(vec![
        ("template_id", Value::from(template.id.to_string())),
        ("count", Value::from(versions.len())),
        ("versions", Value::Array(versions)),
    ]))
}

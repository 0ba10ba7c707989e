//! The asset registry: every file a project holds (inputs, references,
//! generated candidates, pass outputs, thumbnails, archived files, run logs),
//! with its hash, type and dimensions, and the file itself.

use actix_web::http::header;
use actix_web::{HttpRequest, HttpResponse, get, post, web};
use domain::cursor::{self, Cursor};
use domain::projects;
use futures_util::StreamExt;
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};
use uuid::Uuid;

use crate::AppState;
use crate::dto::Asset;
use crate::error::{ApiResult, ErrorBody};
use crate::extract::{ProjectAccess, principal_from_header_or, too_large};

#[derive(Deserialize, IntoParams)]
pub struct AssetListQuery {
    /// Default 500, clamped to 1..2000.
    limit: Option<i64>,
    /// Only this kind (`input`, `reference`, `generated`, `bg_removed`,
    /// `upscaled`, `color`, `thumbnail`, `archived`, `run_log`, ...).
    kind: Option<String>,
    /// Only the files of this run.
    run_id: Option<Uuid>,
    /// **New**: continue after a previous page (its `next_cursor`).
    cursor: Option<String>,
}

#[derive(Serialize, ToSchema)]
pub struct AssetList {
    ok: bool,
    count: usize,
    assets: Vec<Asset>,
    /// **New**: set when the page is full; pass it as `cursor` for the next one.
    next_cursor: Option<String>,
}

/// Assets of a project, newest first.
#[utoipa::path(tag = "assets", params(("slug" = String, Path), AssetListQuery),
    responses((status = 200, body = AssetList), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)))]
#[get("/api/projects/{slug}/assets")]
pub async fn list_assets(
    state: web::Data<AppState>,
    ProjectAccess { project, .. }: ProjectAccess,
    query: web::Query<AssetListQuery>,
) -> ApiResult<HttpResponse> {
    let limit = query.limit.unwrap_or(500).clamp(1, 2000) as u64;
    let kind = query
        .kind
        .as_deref()
        .map(str::trim)
        .filter(|k| !k.is_empty());
    let after = query.cursor.as_deref().map(Cursor::decode).transpose()?;
    let run_id = query.run_id;
    let key = format!(
        "assets|{}|{limit}|{kind:?}|{run_id:?}|{:?}",
        project.id, query.cursor
    );
    let db = &state.db;
    state
        .renders
        .respond_fresh(key, || async move {
            let rows = domain::assets::list(db, project.id, limit, kind, run_id, after).await?;
            let next_cursor = cursor::next(&rows, limit, |a| (a.created_at, a.id));
            let assets: Vec<Asset> = rows.iter().map(Asset::from).collect();
            Ok(AssetList {
                ok: true,
                count: assets.len(),
                assets,
                next_cursor,
            })
        })
        .await
}

#[derive(Serialize, ToSchema)]
pub struct AssetDetail {
    ok: bool,
    asset: Asset,
}

/// One asset's record.
#[utoipa::path(tag = "assets", params(("slug" = String, Path), ("assetId" = String, Path)),
    responses((status = 200, body = AssetDetail), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)))]
#[get("/api/projects/{slug}/assets/{assetId}")]
pub async fn get_asset(
    state: web::Data<AppState>,
    ProjectAccess { project, .. }: ProjectAccess,
    path: web::Path<(String, String)>,
) -> ApiResult<web::Json<AssetDetail>> {
    let (_, asset_id) = path.into_inner();

    let asset = domain::assets::get(&state.db, project.id, &asset_id).await?;
    Ok(web::Json(AssetDetail {
        ok: true,
        asset: Asset::from(&asset),
    }))
}

#[derive(Deserialize, IntoParams)]
pub struct ContentQuery {
    /// The bearer token, for `<img src>` in browsers (never logged).
    token: Option<String>,
}

/// The asset's file, with its stored MIME type. Content never changes for
/// an id, so it is cacheable; the ETag is the content hash.
#[utoipa::path(tag = "assets", params(("slug" = String, Path), ("assetId" = String, Path), ContentQuery),
    responses((status = 200, description = "the file, with the media type it was stored with",
            content(("image/png"), ("image/jpeg"), ("image/webp"), ("application/json"), ("application/octet-stream"))),
        (status = 304, description = "If-None-Match matched"),
        (status = 401, body = ErrorBody), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody),
        (status = 409, body = ErrorBody, description = "storage_unavailable: the file is in S3 storage the project cannot use now"),
        (status = 503, body = ErrorBody, description = "storage_unreachable: the project's S3 storage did not answer")))]
#[get("/api/projects/{slug}/assets/{assetId}/content")]
pub async fn asset_content(
    req: HttpRequest,
    state: web::Data<AppState>,
    path: web::Path<(String, String)>,
    query: web::Query<ContentQuery>,
) -> ApiResult<HttpResponse> {
    let principal = principal_from_header_or(&req, query.token.as_deref()).await?;
    let (slug, asset_id) = path.into_inner();
    let project = projects::authorize(&state.db, &principal, &slug).await?;
    let asset = domain::assets::get(&state.db, project.id, &asset_id).await?;
    let etag = asset
        .sha256
        .as_deref()
        .map(|sha| header::EntityTag::new_strong(sha.to_string()));
    if let (Some(tag), Some(header::IfNoneMatch::Items(wanted))) = (
        &etag,
        req.headers()
            .get(header::IF_NONE_MATCH)
            .and_then(|v| v.to_str().ok())
            .map(|v| {
                header::IfNoneMatch::Items(
                    v.split(',')
                        .filter_map(|t| t.trim().parse::<header::EntityTag>().ok())
                        .collect(),
                )
            }),
    ) && wanted.iter().any(|w| w.strong_eq(tag))
    {
        return Ok(HttpResponse::NotModified().finish());
    }
    let store = projects::project_files(&state.db, state.file_access(), &project).await?;
    let bytes = domain::assets::read(&store, &asset).await?;
    let mut response = HttpResponse::Ok();
    response
        .content_type(
            asset
                .mime_type
                .clone()
                .unwrap_or_else(|| "application/octet-stream".into()),
        )
        .insert_header((
            header::CACHE_CONTROL,
            "private, max-age=31536000, immutable",
        ))
        .insert_header(("X-Content-Type-Options", "nosniff"));
    if let Some(tag) = etag {
        response.insert_header(header::ETag(tag));
    }
    Ok(response.body(bytes))
}

#[derive(Deserialize, IntoParams)]
pub struct UploadQuery {
    /// `input` (default: a scene to run) or `reference` (a style reference).
    kind: Option<String>,
    /// The original file name, kept in the asset's metadata.
    name: Option<String>,
}

#[derive(Serialize, ToSchema)]
pub struct Uploaded {
    ok: bool,
    asset: Asset,
    /// `false` when the project already held these bytes in this role (the
    /// existing asset is returned; nothing was stored twice).
    created: bool,
}

/// **New**: upload an image (PNG, JPEG or WebP, sniffed from the bytes; the
/// body is the file). Stored unchanged, deduplicated by content; usable as a
/// scene (`scene_refs: ["<asset id>"]`) or style reference.
#[utoipa::path(tag = "assets", params(("slug" = String, Path), UploadQuery),
    request_body(content = Vec<u8>, content_type = "application/octet-stream", description = "the image file"),
    responses((status = 200, body = Uploaded),
        (status = 400, body = ErrorBody, description = "invalid_kind, unsupported_image_format, invalid_image, image_too_large (pixels), field_too_long"),
        (status = 401, body = ErrorBody), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody),
        (status = 409, body = ErrorBody, description = "storage_unavailable: the project's files go to S3 and it has no credentials"),
        (status = 413, body = ErrorBody, description = "payload_too_large (http.upload_limit_bytes)")))]
#[post("/api/projects/{slug}/assets")]
pub async fn upload_asset(
    state: web::Data<AppState>,
    ProjectAccess { project, .. }: ProjectAccess,
    query: web::Query<UploadQuery>,
    mut body: web::Payload,
) -> ApiResult<web::Json<Uploaded>> {
    // Read up to the limit, never more: an oversized upload costs at most
    // the limit in memory.
    let limit = state.config.upload_limit_bytes;
    let mut bytes = Vec::new();
    while let Some(chunk) = body.next().await {
        let chunk = chunk.map_err(|_| {
            crate::error::ApiError::validation("invalid_body", "Could not read the request body")
        })?;
        if bytes.len() + chunk.len() > limit {
            return Err(too_large());
        }
        bytes.extend_from_slice(&chunk);
    }
    let store = projects::project_files(&state.db, state.file_access(), &project).await?;
    let uploaded = domain::assets::upload(
        &state.db,
        &store,
        project.id,
        query.kind.as_deref().map(str::trim).unwrap_or("input"),
        query.name.as_deref(),
        bytes,
        state.config.image_limits,
    )
    .await?;
    Ok(web::Json(Uploaded {
        ok: true,
        asset: Asset::from(&uploaded.asset),
        created: uploaded.created,
    }))
}

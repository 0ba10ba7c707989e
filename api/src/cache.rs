//! Rendered-response cache for hot list endpoints.
//!
//! A list's rendered JSON body is kept with a fingerprint of its data (count
//! and newest `updated_at`, one single-row query). A request reuses the body:
//! - without any query while this process has committed no write since the
//!   last check and that check is younger than `revalidate_after` (other nodes'
//!   writes show up within that window; this node's writes show up at once);
//! - after a fingerprint query that finds the data unchanged;
//! - otherwise the list is queried and rendered again.
//!
//! The fingerprint is taken *before* the full query, so a write landing in
//! between only makes the next request re-render.

use std::collections::HashMap;
use std::future::Future;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use actix_web::HttpResponse;
use actix_web::http::header::ContentType;
use actix_web::web::Bytes;
use domain::ServiceError;
use serde::Serialize;

use crate::error::ApiError;

const MAX_ENTRIES: usize = 4096;

/// A rendered body and the fingerprint of the data it shows (empty: none,
/// reused only while fresh).
#[derive(Clone)]
struct Rendered {
    fingerprint: std::sync::Arc<str>,
    body: Bytes,
}

pub struct RenderCache {
    entries: RowCache<Rendered>,
}

impl RenderCache {
    pub fn new(revalidate_after: Duration) -> Self {
        Self {
            entries: RowCache::new(revalidate_after),
        }
    }

    /// Serves `key` from the cache when still valid, else renders `load()`.
    pub async fn respond<T, F, L, LF>(
        &self,
        key: String,
        fingerprint: F,
        load: L,
    ) -> Result<HttpResponse, ApiError>
    where
        T: Serialize,
        F: Future<Output = Result<String, ServiceError>>,
        L: FnOnce() -> LF,
        LF: Future<Output = Result<T, ServiceError>>,
    {
        let generation = domain::db::write_generation();
        if let Some(body) = self.fresh(&key, generation) {
            return Ok(json_response(body));
        }
        let fingerprint = fingerprint.await?;
        if let Some(body) = self.revalidate(&key, &fingerprint, generation) {
            return Ok(json_response(body));
        }
        self.render_and_keep(key, fingerprint, generation, load)
            .await
    }

    /// Like [`Self::respond`], for reads with no cheap fingerprint: a body
    /// is reused while this process has committed no write since it was
    /// rendered and it is younger than `revalidate_after` (other nodes'
    /// writes show up within that window); otherwise it is rendered again.
    pub async fn respond_fresh<T, L, LF>(
        &self,
        key: String,
        load: L,
    ) -> Result<HttpResponse, ApiError>
    where
        T: Serialize,
        L: FnOnce() -> LF,
        LF: Future<Output = Result<T, ServiceError>>,
    {
        let generation = domain::db::write_generation();
        if let Some(body) = self.fresh(&key, generation) {
            return Ok(json_response(body));
        }
        // No fingerprint: an entry is only ever reused while fresh.
        self.render_and_keep(key, String::new(), generation, load)
            .await
    }

    async fn render_and_keep<T, L, LF>(
        &self,
        key: String,
        fingerprint: String,
        generation: u64,
        load: L,
    ) -> Result<HttpResponse, ApiError>
    where
        T: Serialize,
        L: FnOnce() -> LF,
        LF: Future<Output = Result<T, ServiceError>>,
    {
        let value = load().await?;
        let body = Bytes::from(serde_json::to_vec(&value).map_err(|e| {
            tracing::error!(error = %e, "cannot render response");
            ApiError::internal()
        })?);
        self.entries.put(
            key,
            Rendered {
                fingerprint: fingerprint.into(),
                body: body.clone(),
            },
            generation,
        );
        Ok(json_response(body))
    }

    fn fresh(&self, key: &str, generation: u64) -> Option<Bytes> {
        self.entries.get(key, generation).map(|r| r.body)
    }

    /// The kept body when its fingerprint still matches; it counts as
    /// checked now.
    fn revalidate(&self, key: &str, fingerprint: &str, generation: u64) -> Option<Bytes> {
        let kept = self
            .entries
            .any(key)
            .filter(|r| !r.fingerprint.is_empty() && &*r.fingerprint == fingerprint)?;
        let body = kept.body.clone();
        self.entries.put(key.to_string(), kept, generation);
        Some(body)
    }
}

pub fn json_response(body: Bytes) -> HttpResponse {
    HttpResponse::Ok()
        .content_type(ContentType::json())
        .body(body)
}

/// Rows looked up by key (project rows by slug, for read requests), reused on
/// the same terms as [`RenderCache::respond_fresh`]: while this process has
/// committed no write since the lookup and for at most `revalidate_after`.
pub struct RowCache<V: Clone> {
    revalidate_after: Duration,
    entries: Mutex<HashMap<String, (V, Instant, u64)>>,
}

impl<V: Clone> RowCache<V> {
    pub fn new(revalidate_after: Duration) -> Self {
        Self {
            revalidate_after,
            entries: Mutex::new(HashMap::new()),
        }
    }

    pub fn get(&self, key: &str, generation: u64) -> Option<V> {
        let map = self.entries.lock().ok()?;
        let (v, at, g) = map.get(key)?;
        (*g == generation && at.elapsed() < self.revalidate_after).then(|| v.clone())
    }

    /// The kept value however old.
    fn any(&self, key: &str) -> Option<V> {
        self.entries
            .lock()
            .ok()?
            .get(key)
            .map(|(v, _, _)| v.clone())
    }

    pub fn put(&self, key: String, value: V, generation: u64) {
        if let Ok(mut map) = self.entries.lock() {
            if map.len() >= MAX_ENTRIES {
                map.clear();
            }
            map.insert(key, (value, Instant::now(), generation));
        }
    }
}

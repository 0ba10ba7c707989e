//! Token verification with a short-lived in-memory cache.
//!
//! The hot path (every authenticated request) hashes the presented token and
//! looks it up here; the database is consulted only on a miss or once the entry
//! is older than the TTL. Revocation through this process evicts at once; a
//! revocation on another node (announced by `cluster::feed`) makes every entry
//! loaded before it stale.
//! `last_used_at` is written at most once per TTL per token, off the request path.

use std::collections::HashMap;
use std::sync::RwLock;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use entities::api_tokens;
use sea_orm::sea_query::Expr;
use sea_orm::{ColumnTrait, DatabaseConnection, EntityTrait, QueryFilter};
use tokio::sync::{Mutex, MutexGuard};
use uuid::Uuid;

use super::{hash_token, is_active, looks_like_token};
use crate::{ServiceError, TokenPrincipal, time};

#[derive(Clone)]
struct Entry {
    principal: TokenPrincipal,
    expires_at: Option<DateTime<Utc>>,
    loaded: Instant,
    /// [`revocations`] when it was loaded.
    revocations: u64,
}

/// Tokens revoked on other nodes of the database, as announced.
static REVOKED_ELSEWHERE: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
/// Tokens revoked by this process (what it announces to the other nodes).
static REVOKED_HERE: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

fn revocations() -> u64 {
    REVOKED_ELSEWHERE.load(std::sync::atomic::Ordering::Acquire)
}

/// Another node revoked tokens: every cached entry must be read again.
pub fn note_revoked_elsewhere() {
    REVOKED_ELSEWHERE.fetch_add(1, std::sync::atomic::Ordering::AcqRel);
}

/// How many revocations this process made.
pub fn local_revocations() -> u64 {
    REVOKED_HERE.load(std::sync::atomic::Ordering::Acquire)
}

pub struct TokenVerifier {
    ttl: Duration,
    entries: RwLock<HashMap<String, Entry>>,
    bootstrap: Mutex<()>,
}

/// Bounds memory if a client floods us with distinct valid-looking tokens.
const MAX_ENTRIES: usize = 10_000;

impl TokenVerifier {
    pub fn new(ttl: Duration) -> Self {
        Self {
            ttl,
            entries: RwLock::new(HashMap::new()),
            bootstrap: Mutex::new(()),
        }
    }

    pub(crate) async fn bootstrap_lock(&self) -> MutexGuard<'_, ()> {
        self.bootstrap.lock().await
    }

    /// `Ok(None)` when the token is unknown, revoked or expired.
    pub async fn verify(
        &self,
        db: &DatabaseConnection,
        token: &str,
    ) -> Result<Option<TokenPrincipal>, ServiceError> {
        if !looks_like_token(token) {
            return Ok(None);
        }
        let hash = hash_token(token);
        let now = Utc::now();
        if let Some(entry) = self.cached(&hash)
            && entry.loaded.elapsed() < self.ttl
            && entry.revocations == revocations()
        {
            return Ok(entry
                .expires_at
                .is_none_or(|e| e > now)
                .then_some(entry.principal));
        }
        // Read before the row: a revocation announced meanwhile makes this
        // entry stale at once.
        let revocations = revocations();
        let Some(row) = api_tokens::Entity::find()
            .filter(api_tokens::Column::TokenHash.eq(hash.as_str()))
            .one(db)
            .await?
        else {
            return Ok(None);
        };
        if !is_active(&row, now) {
            self.remove(&hash);
            return Ok(None);
        }
        let principal = TokenPrincipal {
            token_id: row.id,
            user_id: row.user_id,
            project_id: row.project_id,
        };
        self.insert(
            hash,
            Entry {
                principal: principal.clone(),
                expires_at: row.expires_at,
                loaded: Instant::now(),
                revocations,
            },
        );
        touch_last_used(db.clone(), row.id);
        Ok(Some(principal))
    }

    /// Forgets a token (after its revocation here).
    pub fn evict(&self, token_id: Uuid) {
        REVOKED_HERE.fetch_add(1, std::sync::atomic::Ordering::AcqRel);
        if let Ok(mut map) = self.entries.write() {
            map.retain(|_, e| e.principal.token_id != token_id);
        }
    }

    fn cached(&self, hash: &str) -> Option<Entry> {
        self.entries.read().ok()?.get(hash).cloned()
    }

    fn remove(&self, hash: &str) {
        if let Ok(mut map) = self.entries.write() {
            map.remove(hash);
        }
    }

    fn insert(&self, hash: String, entry: Entry) {
        if let Ok(mut map) = self.entries.write() {
            if map.len() >= MAX_ENTRIES {
                let ttl = self.ttl;
                map.retain(|_, e| e.loaded.elapsed() < ttl);
                if map.len() >= MAX_ENTRIES {
                    map.clear();
                }
            }
            map.insert(hash, entry);
        }
    }
}

fn touch_last_used(db: DatabaseConnection, token_id: Uuid) {
    tokio::spawn(async move {
        let result = async {
            let txn = crate::db::begin_write(&db).await?;
            api_tokens::Entity::update_many()
                .col_expr(api_tokens::Column::LastUsedAt, Expr::value(time::now()))
                .filter(api_tokens::Column::Id.eq(token_id))
                .exec(&txn)
                .await?;
            crate::db::commit(txn).await
        }
        .await;
        if let Err(err) = result {
            tracing::debug!(%err, "could not record token last_used_at");
        }
    });
}

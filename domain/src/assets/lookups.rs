//! The engine's content lookups, coalesced.
//!
//! Every candidate a job stores asks whether its project already holds the
//! same bytes in the same role (see [`super::existing`]). Asked one by one,
//! that is a statement per candidate, each crossing to a database connection
//! and back. Here the candidates hand their question to one task, which
//! answers everything waiting at that moment with one statement per project,
//! role and backend (`sha256 IN (...)`). Under light load a batch is one
//! lookup, as before; under heavy load the cost per lookup falls.

use std::collections::HashMap;

use entities::assets;
use sea_orm::{ColumnTrait, DatabaseConnection, EntityTrait, QueryFilter, QueryOrder};
use tokio::sync::{mpsc, oneshot};
use uuid::Uuid;

use crate::ServiceError;

/// Lookups answered together at most.
const MAX_BATCH: usize = 256;

/// Handle to the lookup task; cheap to clone.
#[derive(Clone)]
pub struct ContentLookups {
    tx: mpsc::Sender<Lookup>,
}

/// Where a lookup searches: one project's assets in one role on one backend.
#[derive(Clone, PartialEq, Eq, Hash)]
struct Scope {
    project_id: Uuid,
    kind: &'static str,
    backend: String,
}

struct Lookup {
    scope: Scope,
    sha256: String,
    reply: oneshot::Sender<Result<Option<assets::Model>, ServiceError>>,
}

impl ContentLookups {
    /// Spawns the lookup task on the current runtime.
    pub fn start(db: DatabaseConnection) -> Self {
        let (tx, rx) = mpsc::channel(4 * MAX_BATCH);
        tokio::spawn(lookup_loop(db, rx));
        Self { tx }
    }

    /// The project's asset with this content in this role on this backend,
    /// if it holds one (answered together with whatever else is waiting).
    pub async fn existing(
        &self,
        project_id: Uuid,
        kind: &'static str,
        sha256: &str,
        backend: &str,
    ) -> Result<Option<assets::Model>, ServiceError> {
        let (reply, answer) = oneshot::channel();
        let lookup = Lookup {
            scope: Scope {
                project_id,
                kind,
                backend: backend.to_string(),
            },
            sha256: sha256.to_string(),
            reply,
        };
        let gone = || ServiceError::Internal("the content lookup task is not running".into());
        self.tx.send(lookup).await.map_err(|_| gone())?;
        answer.await.map_err(|_| gone())?
    }
}

async fn lookup_loop(db: DatabaseConnection, mut rx: mpsc::Receiver<Lookup>) {
    let mut batch = Vec::with_capacity(MAX_BATCH);
    while rx.recv_many(&mut batch, MAX_BATCH).await > 0 {
        let mut by_scope: HashMap<Scope, Vec<Lookup>> = HashMap::new();
        for lookup in batch.drain(..) {
            by_scope
                .entry(lookup.scope.clone())
                .or_default()
                .push(lookup);
        }
        for (scope, lookups) in by_scope {
            answer(&db, &scope, lookups).await;
        }
    }
}

/// One statement for every lookup of `scope`; each waiting candidate gets
/// its row (the oldest, when the project holds the content more than once).
async fn answer(db: &DatabaseConnection, scope: &Scope, lookups: Vec<Lookup>) {
    let mut hashes: Vec<&str> = lookups.iter().map(|l| l.sha256.as_str()).collect();
    hashes.sort_unstable();
    hashes.dedup();
    let found = assets::Entity::find()
        .filter(assets::Column::ProjectId.eq(scope.project_id))
        .filter(assets::Column::Kind.eq(scope.kind))
        .filter(assets::Column::StorageBackend.eq(scope.backend.as_str()))
        .filter(assets::Column::Sha256.is_in(hashes))
        .order_by_desc(assets::Column::CreatedAt)
        .all(db)
        .await;
    match found {
        Ok(rows) => {
            // Oldest last, so it is the one kept.
            let by_hash: HashMap<String, assets::Model> = rows
                .into_iter()
                .filter_map(|row| Some((row.sha256.clone()?, row)))
                .collect();
            for lookup in lookups {
                let _ = lookup.reply.send(Ok(by_hash.get(&lookup.sha256).cloned()));
            }
        }
        Err(e) => {
            let message = e.to_string();
            for lookup in lookups {
                let error = sea_orm::DbErr::Custom(message.clone());
                let _ = lookup.reply.send(Err(ServiceError::Db(error)));
            }
        }
    }
}

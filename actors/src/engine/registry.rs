//! What the supervision tree looks like right now: per actor its status,
//! restarts, last error and start time, plus live worker and lease counts.
//! Shared by the actors (who write) and the admin endpoint (which reads).

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};

use chrono::{DateTime, Utc};
use serde::Serialize;

#[derive(Clone, Debug, Serialize)]
pub struct ActorInfo {
    pub name: String,
    pub status: &'static str,
    pub restarts: u32,
    pub last_error: Option<String>,
    pub last_restart_at: Option<DateTime<Utc>>,
    pub started_at: DateTime<Utc>,
}

#[derive(Default)]
pub struct SupervisionRegistry {
    actors: Mutex<BTreeMap<String, ActorInfo>>,
    live_workers: AtomicUsize,
}

impl SupervisionRegistry {
    pub fn started(&self, name: &str) {
        if let Ok(mut map) = self.actors.lock() {
            let entry = map.entry(name.to_string()).or_insert_with(|| ActorInfo {
                name: name.to_string(),
                status: "running",
                restarts: 0,
                last_error: None,
                last_restart_at: None,
                started_at: Utc::now(),
            });
            entry.status = "running";
            entry.started_at = Utc::now();
        }
    }

    pub fn restarting(&self, name: &str, error: Option<String>) {
        if let Ok(mut map) = self.actors.lock()
            && let Some(entry) = map.get_mut(name)
        {
            entry.status = "restarting";
            entry.restarts += 1;
            entry.last_restart_at = Some(Utc::now());
            if error.is_some() {
                entry.last_error = error;
            }
        }
    }

    pub fn record_error(&self, name: &str, error: String) {
        if let Ok(mut map) = self.actors.lock()
            && let Some(entry) = map.get_mut(name)
        {
            entry.last_error = Some(error);
        }
    }

    pub fn worker_started(&self) {
        self.live_workers.fetch_add(1, Ordering::Relaxed);
    }

    pub fn worker_stopped(&self) {
        self.live_workers.fetch_sub(1, Ordering::Relaxed);
    }

    pub fn live_workers(&self) -> usize {
        self.live_workers.load(Ordering::Relaxed)
    }

    pub fn snapshot(&self) -> Vec<ActorInfo> {
        self.actors
            .lock()
            .map(|m| m.values().cloned().collect())
            .unwrap_or_default()
    }
}

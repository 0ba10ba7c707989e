//! The earlier system's rows, read once and grouped by project (a job by
//! its run, a candidate by its job); rows of no known project are counted.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Mutex;

use uuid::Uuid;

use super::source::{LegacyRow, LegacySource};
use super::*;

/// Tables read per project, in the order they are written (parents first).
pub(super) const PROJECT_TABLES: &[&str] = &[
    "project_storage",
    "provider_accounts",
    "project_secrets",
    "style_guides",
    "characters",
    "prompt_templates",
    "reference_sets",
    "reference_set_items",
    "assets",
    "runs",
    "run_jobs",
    "run_candidates",
    "asset_links",
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

pub struct LegacyProject {
    pub id: Uuid,
    pub slug: String,
    pub(super) row: LegacyRow,
}

/// Everything read from the legacy database, grouped.
pub struct Legacy {
    pub(super) users: Vec<LegacyRow>,
    pub projects: Vec<LegacyProject>,
    pub(super) rows: HashMap<(Uuid, &'static str), Vec<LegacyRow>>,
    pub(super) global_tokens: Vec<LegacyRow>,
    pub(super) global_audit: Vec<LegacyRow>,
    /// Rows of no known project (their project, run or job is gone).
    pub unassigned: BTreeMap<&'static str, u64>,
    pub(super) ids: Mutex<IdMap>,
}

impl Legacy {
    pub async fn read(source: &LegacySource, ids: &mut IdMap) -> Result<Self, ServiceError> {
        let mut users = source.rows("app_users").await?;
        let seen: HashSet<String> = users.iter().filter_map(|u| u.text(&["id"])).collect();
        users.extend(
            source
                .rows("users")
                .await?
                .into_iter()
                .filter(|u| u.text(&["id"]).is_some_and(|id| !seen.contains(&id))),
        );
        let mut projects = Vec::new();
        for row in source.rows("projects").await? {
            let (Some(id), Some(slug)) = (row.text(&["id"]), row.text(&["slug"])) else {
                continue;
            };
            projects.push(LegacyProject {
                id: ids.id("projects", &id),
                slug: slug.trim().to_string(),
                row,
            });
        }
        let mut legacy = Self {
            users,
            projects,
            rows: HashMap::new(),
            global_tokens: Vec::new(),
            global_audit: Vec::new(),
            unassigned: BTreeMap::new(),
            ids: Mutex::new(std::mem::take(ids)),
        };
        let mut run_project: HashMap<String, Uuid> = HashMap::new();
        let mut job_project: HashMap<String, Uuid> = HashMap::new();
        for table in PROJECT_TABLES {
            let mut rows = source.rows(table).await?;
            if *table == "run_candidates" {
                // Older runs have their candidates only in the older table;
                // newer ones in both, under the same id (the newer row wins,
                // the older fills its gaps).
                let mut by_id: BTreeMap<String, LegacyRow> = BTreeMap::new();
                let mut order = Vec::new();
                for row in source.rows("run_job_candidates").await? {
                    if let Some(id) = row.text(&["id"]) {
                        order.push(id.clone());
                        by_id.insert(id, row);
                    }
                }
                for row in rows {
                    let Some(id) = row.text(&["id"]) else {
                        continue;
                    };
                    match by_id.get_mut(&id) {
                        Some(older) => {
                            for (k, v) in row.0 {
                                if !v.is_null() {
                                    older.0.insert(k, v);
                                }
                            }
                        }
                        None => {
                            order.push(id.clone());
                            by_id.insert(id, row);
                        }
                    }
                }
                rows = order.iter().filter_map(|id| by_id.remove(id)).collect();
            }
            for row in rows {
                let project = match *table {
                    "run_jobs" => row
                        .text(&["run_id"])
                        .and_then(|r| run_project.get(&r).copied()),
                    "run_candidates" => row
                        .text(&["job_id"])
                        .and_then(|j| job_project.get(&j).copied()),
                    _ => row.text(&["project_id"]).map(|p| legacy.id("projects", &p)),
                };
                match (*table, project) {
                    ("api_tokens", None) => legacy.global_tokens.push(row),
                    ("audit_events", None) => legacy.global_audit.push(row),
                    (_, None) => *legacy.unassigned.entry(table).or_default() += 1,
                    (_, Some(p)) => {
                        if *table == "runs"
                            && let Some(id) = row.text(&["id"])
                        {
                            run_project.insert(id, p);
                        }
                        if *table == "run_jobs"
                            && let Some(id) = row.text(&["id"])
                        {
                            job_project.insert(id, p);
                        }
                        legacy.rows.entry((p, table)).or_default().push(row);
                    }
                }
            }
        }
        Ok(legacy)
    }

    pub(super) fn id(&self, table: &str, raw: &str) -> Uuid {
        self.ids
            .lock()
            .map(|mut m| m.id(table, raw))
            .unwrap_or_else(|p| p.into_inner().id(table, raw))
    }

    pub(super) fn reference(&self, table: &str, raw: Option<String>) -> Option<Uuid> {
        raw.filter(|r| !r.trim().is_empty())
            .map(|r| self.id(table, &r))
    }

    pub(super) fn of(&self, project: Uuid, table: &'static str) -> &[LegacyRow] {
        self.rows
            .get(&(project, table))
            .map(Vec::as_slice)
            .unwrap_or(&[])
    }

    pub fn row_count(&self, projects: &[&LegacyProject]) -> u64 {
        projects
            .iter()
            .map(|p| {
                1 + PROJECT_TABLES
                    .iter()
                    .map(|t| self.of(p.id, t).len() as u64)
                    .sum::<u64>()
            })
            .sum()
    }

    pub fn take_id_map(&self) -> BTreeMap<String, Uuid> {
        self.ids
            .lock()
            .map(|m| m.remapped.clone())
            .unwrap_or_default()
    }
}

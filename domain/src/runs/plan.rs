//! Planning before any spend: validate a trigger request, resolve the layered
//! manifest, compose prompts per stage, and lay out jobs (each scene taken
//! through the stage chain `style -> time -> weather`) with a cost estimate.

use serde::Serialize;
use serde_json::Value;

/// The provider a run uses when its request names none (the offline one).
pub const DEFAULT_PROVIDER: &str = "local";

use super::manifest::{self, Manifest};
use crate::ServiceError;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    Dry,
    Run,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum StageName {
    Style,
    Time,
    Weather,
}

impl StageName {
    pub fn as_str(self) -> &'static str {
        match self {
            StageName::Style => "style",
            StageName::Time => "time",
            StageName::Weather => "weather",
        }
    }

    pub fn parse(raw: &str) -> Option<Self> {
        match raw.trim().to_ascii_lowercase().as_str() {
            "style" => Some(StageName::Style),
            "time" => Some(StageName::Time),
            "weather" => Some(StageName::Weather),
            _ => None,
        }
    }
}

pub const TIMES: &[&str] = &["day", "dusk", "night"];
pub const WEATHERS: &[&str] = &["clear", "rain", "snow", "fog"];

/// The trigger body as received (all optional; validated by [`validate`]).
#[derive(Debug, Default, Clone, serde::Deserialize)]
#[serde(default)]
pub struct TriggerInput {
    pub mode: Option<String>,
    pub confirm_spend: Option<bool>,
    pub scene_refs: Option<Vec<String>>,
    pub input: Option<String>,
    pub style_refs: Option<Vec<String>>,
    pub stage: Option<String>,
    pub time: Option<String>,
    pub weather: Option<String>,
    pub candidates: Option<i64>,
    pub provider: Option<String>,
    pub budget_usd: Option<f64>,
    pub project_root: Option<String>,
    pub manifest: Option<Value>,
    /// Pass switches and settings, over the manifest's `postprocess`.
    pub postprocess: Option<Value>,
}

/// The request's manifest layer: `manifest`, with `postprocess` on top.
fn request_overlay(input: &TriggerInput) -> Result<Option<Value>, ServiceError> {
    let Some(pp) = &input.postprocess else {
        return Ok(input.manifest.clone());
    };
    if !pp.is_object() {
        return Err(ServiceError::validation(
            "config_validation_failed",
            "postprocess must be a JSON object",
        ));
    }
    let mut overlay = input
        .manifest
        .clone()
        .unwrap_or_else(|| Value::Object(Default::default()));
    match overlay.as_object_mut() {
        Some(o) => {
            let merged = match o.remove("postprocess") {
                Some(Value::Object(mut base)) => {
                    for (k, v) in pp.as_object().into_iter().flatten() {
                        base.insert(k.clone(), v.clone());
                    }
                    Value::Object(base)
                }
                _ => pp.clone(),
            };
            o.insert("postprocess".into(), merged);
            Ok(Some(overlay))
        }
        // A non-object manifest is refused with its own message later.
        None => Ok(Some(overlay)),
    }
}

/// A request that passed the checks that need no lookup (contract: 400 before 404).
#[derive(Debug, Clone)]
pub struct ValidTrigger {
    pub mode: Mode,
    pub confirm_spend: bool,
    pub scene_refs: Vec<String>,
    pub style_refs: Vec<String>,
    pub final_stage: StageName,
    pub time: String,
    pub weather: String,
    pub candidates: Option<u32>,
    pub provider: String,
    pub budget_usd: Option<f64>,
    pub manifest_overlay: Option<Value>,
}

fn invalid(message: impl Into<String>) -> ServiceError {
    ServiceError::validation("invalid_request", message)
}

fn clean_list(field: &str, list: &[String]) -> Result<Vec<String>, ServiceError> {
    if list.is_empty() {
        return Err(invalid(format!("Field '{field}' must be a non-empty list")));
    }
    if list.len() > 1000 {
        return Err(invalid(format!(
            "Field '{field}' has more than 1000 entries"
        )));
    }
    list.iter()
        .map(|s| {
            let t = s.trim();
            if t.is_empty() {
                Err(invalid(format!(
                    "Field '{field}' must not contain blank entries"
                )))
            } else if t.len() > 512 {
                Err(invalid(format!(
                    "Entries of '{field}' must be at most 512 characters"
                )))
            } else {
                Ok(t.to_string())
            }
        })
        .collect()
}

pub fn validate(input: &TriggerInput) -> Result<ValidTrigger, ServiceError> {
    let mode = match input.mode.as_deref().map(|m| m.trim().to_ascii_lowercase()) {
        None => Mode::Dry,
        Some(m) if m == "dry" => Mode::Dry,
        Some(m) if m == "run" => Mode::Run,
        Some(_) => {
            return Err(ServiceError::validation(
                "invalid_mode",
                "Field 'mode' must be one of: dry, run",
            ));
        }
    };
    if input
        .project_root
        .as_deref()
        .is_some_and(|p| !p.trim().is_empty())
    {
        return Err(invalid(
            "Field 'project_root' is managed by project storage and cannot be overridden",
        ));
    }
    let scene_refs = match (&input.scene_refs, &input.input) {
        (Some(_), Some(_)) => return Err(invalid("Provide only one of: input, scene_refs")),
        (Some(list), None) => clean_list("scene_refs", list)?,
        (None, Some(path)) if !path.trim().is_empty() => vec![format!("dir:{}", path.trim())],
        _ => return Err(invalid("Provide one of: input, scene_refs")),
    };
    let style_refs = match &input.style_refs {
        Some(list) => clean_list("style_refs", list)?,
        None => Vec::new(),
    };
    let final_stage = match &input.stage {
        Some(s) => StageName::parse(s)
            .ok_or_else(|| invalid("Field 'stage' must be one of: style, time, weather"))?,
        None => StageName::Style,
    };
    let time = match &input.time {
        Some(t) => {
            if final_stage < StageName::Time {
                return Err(invalid(
                    "Field 'time' is only allowed with stage time or weather",
                ));
            }
            let t = t.trim().to_ascii_lowercase();
            if !TIMES.contains(&t.as_str()) {
                return Err(invalid(format!(
                    "Field 'time' must be one of: {}",
                    TIMES.join(", ")
                )));
            }
            t
        }
        None => "day".to_string(),
    };
    let weather = match &input.weather {
        Some(w) => {
            if final_stage < StageName::Weather {
                return Err(invalid(
                    "Field 'weather' is only allowed with stage weather",
                ));
            }
            let w = w.trim().to_ascii_lowercase();
            if !WEATHERS.contains(&w.as_str()) {
                return Err(invalid(format!(
                    "Field 'weather' must be one of: {}",
                    WEATHERS.join(", ")
                )));
            }
            w
        }
        None => "clear".to_string(),
    };
    let candidates = match input.candidates {
        Some(c) if !(1..=16).contains(&c) => {
            return Err(invalid("Field 'candidates' must be between 1 and 16"));
        }
        Some(c) => Some(c as u32),
        None => None,
    };
    if let Some(b) = input.budget_usd
        && (!b.is_finite() || b < 0.0)
    {
        return Err(invalid("Field 'budget_usd' must be a number >= 0"));
    }
    let provider = input
        .provider
        .as_deref()
        .map(|p| p.trim().to_ascii_lowercase())
        .filter(|p| !p.is_empty())
        .unwrap_or_else(|| DEFAULT_PROVIDER.to_string());
    Ok(ValidTrigger {
        mode,
        confirm_spend: input.confirm_spend.unwrap_or(false),
        scene_refs,
        style_refs,
        final_stage,
        time,
        weather,
        candidates,
        provider,
        budget_usd: input.budget_usd,
        manifest_overlay: request_overlay(input)?,
    })
}

/// One stage of the chain with its composed prompt.
#[derive(Clone, Debug, Serialize)]
pub struct StagePlan {
    pub stage: StageName,
    /// `day|dusk|night` for time, `clear|rain|snow|fog` for weather.
    pub variant: Option<String>,
    pub prompt: String,
}

#[derive(Clone, Debug, Serialize)]
pub struct Plan {
    pub mode: Mode,
    pub provider: String,
    pub candidates: u32,
    pub stages: Vec<StagePlan>,
    pub scenes: Vec<String>,
    pub style_refs: Vec<String>,
    pub jobs: u32,
    pub provider_calls: u32,
    /// Paid post-process calls at most (remote background removal).
    pub pass_calls: u32,
    /// The most one generation call can cost (the catalogue's bound).
    pub unit_price_usd: f64,
    pub estimated_cost_usd: f64,
    pub budget_usd: Option<f64>,
    pub manifest: Manifest,
}

/// Stage chain and prompts for `trigger` under `manifest`; `scenes` are the
/// resolved scene references (one job chain each).
/// Price of one call of a background-removal backend (`local` is free);
/// A post-process step that may be paid.
#[derive(Clone, Copy, Debug)]
pub enum PaidPass<'a> {
    /// A background-removal backend (`local`, `photoroom`, `removebg`).
    Remover(&'a str),
    /// The image provider that refines cut-outs.
    Refiner(&'a str),
}

/// The price of one call of a pass; `None`: it is not configured.
pub type PassPrice<'a> = &'a dyn Fn(PaidPass<'_>) -> Option<f64>;

/// The most one call of the run's provider can cost with these image
/// options and this shape, or why the provider cannot serve it.
pub type CallBound<'a> =
    &'a dyn Fn(&providers::ImageOptions, providers::CallShape) -> Result<f64, ServiceError>;

pub fn build(
    trigger: &ValidTrigger,
    project_manifest: Option<&Value>,
    scenes: Vec<String>,
    call_bound: CallBound<'_>,
    pass_price: PassPrice<'_>,
) -> Result<Plan, ServiceError> {
    let manifest = manifest::resolve(project_manifest, trigger.manifest_overlay.as_ref())?;
    let candidates = trigger.candidates.unwrap_or(manifest.generation.candidates);
    if candidates > manifest.generation.max_candidates {
        return Err(ServiceError::validation(
            "candidates_over_limit",
            format!(
                "Candidate count {candidates} exceeds limit {}",
                manifest.generation.max_candidates
            ),
        ));
    }
    let mut stages = Vec::new();
    let no_invention = if manifest.policy.default_no_invention {
        " Do not invent new object categories."
    } else {
        ""
    };
    let mut prompt = manifest.prompt("style_base")?.to_string();
    stages.push(StagePlan {
        stage: StageName::Style,
        variant: None,
        prompt: format!("{prompt}{no_invention}"),
    });
    if trigger.final_stage >= StageName::Time {
        prompt = format!(
            "{prompt} {}",
            manifest.prompt(&format!("time_{}", trigger.time))?
        );
        stages.push(StagePlan {
            stage: StageName::Time,
            variant: Some(trigger.time.clone()),
            prompt: format!("{prompt}{no_invention}"),
        });
    }
    if trigger.final_stage >= StageName::Weather {
        prompt = format!(
            "{prompt} {}",
            manifest.prompt(&format!("weather_{}", trigger.weather))?
        );
        stages.push(StagePlan {
            stage: StageName::Weather,
            variant: Some(trigger.weather.clone()),
            prompt: format!("{prompt}{no_invention}"),
        });
    }
    let jobs = (scenes.len() * stages.len()) as u32;
    let provider_calls = jobs * candidates;
    // Every call's shape (images sent, prompt length) is checked against the
    // provider and bounds what it can cost.
    let style_count = if trigger.style_refs.is_empty() {
        manifest.style_refs.len()
    } else {
        trigger.style_refs.len()
    } as u32;
    let mut generation_bound = 0.0;
    let mut unit_price_usd = 0.0f64;
    for scene in &scenes {
        let description = scene.strip_prefix("prompt:");
        for (i, stage) in stages.iter().enumerate() {
            let shape = providers::CallShape {
                input_images: style_count + u32::from(!(i == 0 && description.is_some())),
                prompt_chars: stage.prompt.chars().count()
                    + description.map_or(0, |d| d.chars().count() + 9),
            };
            let bound = call_bound(&manifest.generation.image, shape)?;
            unit_price_usd = unit_price_usd.max(bound);
            generation_bound += bound * f64::from(candidates);
        }
    }
    // Remote background removal is paid per candidate of the last stage;
    // the worst case (every earlier backend finds nothing) counts them all.
    let mut pass_unit_cost = 0.0;
    let mut paid_passes = 0u32;
    if manifest.postprocess.bg_remove {
        for backend in &manifest.postprocess.bg_remove_backends {
            let price = pass_price(PaidPass::Remover(backend)).ok_or_else(|| {
                ServiceError::validation(
                    "bg_remove_backend_not_configured",
                    format!("Background-removal backend '{backend}' is not configured"),
                )
            })?;
            if price > 0.0 {
                pass_unit_cost += price;
                paid_passes += 1;
            }
        }
        if let Some(code) = manifest.postprocess.bg_remove_refine.as_deref() {
            let price = pass_price(PaidPass::Refiner(code)).ok_or_else(|| {
                ServiceError::validation(
                    "bg_remove_refine_not_configured",
                    format!("Refine provider '{code}' is not configured"),
                )
            })?;
            if price > 0.0 {
                pass_unit_cost += price;
                paid_passes += 1;
            }
        }
    }
    let pass_calls = scenes.len() as u32 * candidates * paid_passes;
    if provider_calls + pass_calls > manifest.safe_batch_limit {
        return Err(ServiceError::validation(
            "batch_over_limit",
            format!(
                "Batch of {} provider calls ({jobs} jobs x {candidates} candidates, plus {pass_calls} paid post-process calls) exceeds the safety limit of {}",
                provider_calls + pass_calls,
                manifest.safe_batch_limit
            ),
        ));
    }
    let estimated_cost_usd =
        generation_bound + f64::from(scenes.len() as u32 * candidates) * pass_unit_cost;
    let budget_usd = match (trigger.budget_usd, manifest.policy.run_budget_usd) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    };
    Ok(Plan {
        mode: trigger.mode,
        provider: trigger.provider.clone(),
        candidates,
        stages,
        scenes,
        style_refs: trigger.style_refs.clone(),
        jobs,
        provider_calls,
        pass_calls,
        unit_price_usd,
        estimated_cost_usd,
        budget_usd,
        manifest,
    })
}

/// Lowercase `[a-z0-9_-]`, other runs of characters become one `_`.
pub fn sanitize(raw: &str) -> String {
    crate::projects::normalize_slug(raw).unwrap_or_default()
}

/// `{stage}_{i}_{scene suffix}`, e.g. `time_1_street_01`.
pub fn job_key(stage: StageName, scene_index: usize, scene_ref: &str) -> String {
    // A prompt scene's description is no file name.
    let scene_ref = if scene_ref.starts_with("prompt:") {
        "prompt"
    } else {
        scene_ref
    };
    let stem = scene_ref.rsplit('/').next().unwrap_or(scene_ref);
    let stem = stem.rsplit_once('.').map_or(stem, |(s, _)| s);
    let suffix = sanitize(stem);
    let suffix = if suffix.is_empty() {
        (scene_index + 1).to_string()
    } else {
        suffix
    };
    format!("{}_{}_{}", stage.as_str(), scene_index + 1, suffix)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn input(v: serde_json::Value) -> TriggerInput {
        serde_json::from_value(v).unwrap()
    }

    #[test]
    fn validation_rules() {
        use serde_json::json;
        let ok = validate(&input(json!({"scene_refs": ["sample:1"], "stage": "weather", "time": "night", "weather": "rain"}))).unwrap();
        assert_eq!(ok.final_stage, StageName::Weather);
        assert_eq!(ok.mode, Mode::Dry);
        let cases = [
            (json!({"mode": "fast", "scene_refs": ["a"]}), "invalid_mode"),
            (
                json!({"scene_refs": ["a"], "input": "b"}),
                "invalid_request",
            ),
            (json!({}), "invalid_request"),
            (json!({"scene_refs": []}), "invalid_request"),
            (json!({"scene_refs": [" "]}), "invalid_request"),
            (
                json!({"scene_refs": ["a"], "time": "night"}),
                "invalid_request",
            ),
            (
                json!({"scene_refs": ["a"], "stage": "time", "weather": "rain"}),
                "invalid_request",
            ),
            (
                json!({"scene_refs": ["a"], "stage": "noon"}),
                "invalid_request",
            ),
            (
                json!({"scene_refs": ["a"], "stage": "time", "time": "noon"}),
                "invalid_request",
            ),
            (
                json!({"scene_refs": ["a"], "candidates": 0}),
                "invalid_request",
            ),
            (
                json!({"scene_refs": ["a"], "project_root": "/etc"}),
                "invalid_request",
            ),
        ];
        for (body, code) in cases {
            match validate(&input(body.clone())) {
                Err(ServiceError::Validation { code: c, .. }) => assert_eq!(c, code, "{body}"),
                other => panic!("{body}: {other:?}"),
            }
        }
    }

    #[test]
    fn chain_prompts_accumulate_and_limits_apply() {
        use serde_json::json;
        let t = validate(&input(json!({"scene_refs": ["a", "b"], "stage": "weather", "weather": "rain", "candidates": 3}))).unwrap();
        let plan = build(
            &t,
            None,
            vec!["a".into(), "b".into()],
            &|_, _| Ok(0.04),
            &|_| Some(0.0),
        )
        .unwrap();
        assert_eq!(plan.stages.len(), 3);
        assert_eq!(plan.jobs, 6);
        assert_eq!(plan.provider_calls, 18);
        assert!((plan.estimated_cost_usd - 0.72).abs() < 1e-9);
        assert!(plan.stages[2].prompt.contains("Rain"));
        assert!(plan.stages[2].prompt.contains("Daylight"));
        let over = validate(&input(json!({"scene_refs": ["a"], "candidates": 7}))).unwrap();
        assert!(matches!(
            build(&over, None, vec!["a".into()], &|_, _| Ok(0.0), &|_| Some(
                0.0
            )),
            Err(ServiceError::Validation {
                code: "candidates_over_limit",
                ..
            })
        ));
        let limit = json!({"safe_batch_limit": 4});
        assert!(matches!(
            build(
                &t,
                Some(&limit),
                vec!["a".into(), "b".into()],
                &|_, _| Ok(0.0),
                &|_| { Some(0.0) }
            ),
            Err(ServiceError::Validation {
                code: "batch_over_limit",
                ..
            })
        ));
        assert_eq!(
            job_key(StageName::Time, 0, "scenes/Street 01.png"),
            "time_1_street_01"
        );
    }
}

//! The run manifest: scenes, candidates, limits, output-guard thresholds and
//! prompts, with layered settings (request > project > built-in defaults).
//! Project settings live in the database (`projects.settings_json.manifest`),
//! never in files inside the project folder.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::ServiceError;

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct Manifest {
    pub style_refs: Vec<String>,
    pub scene_refs: Vec<String>,
    /// Most jobs × candidates one run may plan.
    pub safe_batch_limit: u32,
    pub generation: Generation,
    pub output_guard: OutputGuard,
    pub policy: Policy,
    pub prompts: BTreeMap<String, String>,
    pub postprocess: Postprocess,
}

/// Passes applied to every candidate of the chain's last stage, in this
/// order: background removal -> upscale -> colour. Each is optional; a
/// request can switch any of them on or off.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct Postprocess {
    pub bg_remove: bool,
    /// Tried in order until one removes a background: `local` (built in,
    /// free), `photoroom`, `removebg` (paid, need their provider settings).
    pub bg_remove_backends: Vec<String>,
    pub bg_remove_settings: imaging::passes::bg_remove::BgRemoveSettings,
    /// After a background is removed, the cut-out goes to this image
    /// provider (e.g. `openai`) to be refined; paid per candidate at that
    /// provider's price. `None`: no refine step.
    pub bg_remove_refine: Option<String>,
    pub upscale: bool,
    /// 2 or 4.
    pub upscale_factor: u32,
    pub color: bool,
    /// A built-in profile (`neutral`, `cinematic_warm`, `cold_rain`) or one
    /// of `color_profiles`.
    pub color_profile: String,
    pub color_profiles: Vec<imaging::passes::color::ColorProfile>,
}

impl Default for Postprocess {
    fn default() -> Self {
        Self {
            bg_remove: false,
            bg_remove_backends: vec!["local".into()],
            bg_remove_settings: Default::default(),
            bg_remove_refine: None,
            upscale: false,
            upscale_factor: 2,
            color: false,
            color_profile: "neutral".into(),
            color_profiles: Vec::new(),
        }
    }
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct Generation {
    pub candidates: u32,
    pub max_candidates: u32,
    /// Image parameters for the run's provider (model, size, quality,
    /// background, output format, input fidelity), each over the provider's
    /// configured value; checked against the model catalogue at trigger.
    pub image: providers::ImageOptions,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct OutputGuard {
    pub enforce_grayscale: bool,
    pub max_chroma_delta: f64,
    pub fail_on_chroma_exceed: bool,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct Policy {
    pub default_no_invention: bool,
    /// Cap on the estimated and actual spend of one run (USD).
    pub run_budget_usd: Option<f64>,
    /// Cap on the total spend of the project (USD).
    pub project_budget_usd: Option<f64>,
}

impl Default for Manifest {
    fn default() -> Self {
        let prompts = [
            ("style_base", "Preserve geometry and perspective. Render in one coherent ink hand with posterised tones. No text, no logos."),
            ("time_day", "Daylight with clear readability and stable contrast."),
            ("time_dusk", "Dusk light: warm low sun, long soft shadows."),
            ("time_night", "Night: deep controlled shadows, cool light, no topology changes."),
            ("weather_clear", "Dry, clear air; no precipitation."),
            ("weather_rain", "Rain: streaks, wet surfaces and reflections; no style drift."),
            ("weather_snow", "Snow: falling flakes and soft accumulation; no style drift."),
            ("weather_fog", "Fog: depth haze that thickens with distance; no style drift."),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        Self {
            style_refs: Vec::new(),
            scene_refs: Vec::new(),
            safe_batch_limit: 200,
            generation: Generation::default(),
            output_guard: OutputGuard::default(),
            policy: Policy::default(),
            prompts,
            postprocess: Postprocess::default(),
        }
    }
}

impl Default for Generation {
    fn default() -> Self {
        Self {
            candidates: 2,
            max_candidates: 6,
            image: providers::ImageOptions::default(),
        }
    }
}

impl Default for OutputGuard {
    fn default() -> Self {
        Self {
            enforce_grayscale: false,
            max_chroma_delta: 2.0,
            fail_on_chroma_exceed: false,
        }
    }
}

impl Default for Policy {
    fn default() -> Self {
        Self {
            default_no_invention: true,
            run_budget_usd: None,
            project_budget_usd: None,
        }
    }
}

/// Deep-merges `overlay` onto `base` (objects key by key; anything else replaces).
fn merge(base: &mut Value, overlay: &Value) {
    match (base, overlay) {
        (Value::Object(b), Value::Object(o)) => {
            for (k, v) in o {
                merge(b.entry(k.clone()).or_insert(Value::Null), v);
            }
        }
        (b, o) => *b = o.clone(),
    }
}

/// Defaults, then the project's stored overlay, then the request's overlay.
pub fn resolve(
    project_overlay: Option<&Value>,
    request_overlay: Option<&Value>,
) -> Result<Manifest, ServiceError> {
    let mut value = serde_json::to_value(Manifest::default())?;
    for (layer, overlay) in [("project", project_overlay), ("request", request_overlay)] {
        if let Some(o) = overlay {
            if !o.is_object() {
                return Err(ServiceError::validation(
                    "config_validation_failed",
                    format!("The {layer} manifest must be a JSON object"),
                ));
            }
            merge(&mut value, o);
        }
    }
    let manifest: Manifest = serde_json::from_value(value).map_err(|e| {
        ServiceError::validation(
            "config_validation_failed",
            format!("Manifest is invalid: {e}"),
        )
    })?;
    manifest.validate()?;
    Ok(manifest)
}

impl Manifest {
    pub fn validate(&self) -> Result<(), ServiceError> {
        let bad = |m: &str| {
            Err(ServiceError::validation(
                "config_validation_failed",
                m.to_string(),
            ))
        };
        if self.generation.candidates == 0 || self.generation.max_candidates == 0 {
            return bad("generation.candidates and generation.max_candidates must be at least 1");
        }
        if self.generation.max_candidates > 16 {
            return bad("generation.max_candidates must be at most 16");
        }
        if self.safe_batch_limit == 0 {
            return bad("safe_batch_limit must be at least 1");
        }
        let g = &self.output_guard;
        if !g.max_chroma_delta.is_finite() || g.max_chroma_delta < 0.0 {
            return bad("output_guard.max_chroma_delta must be a finite number >= 0");
        }
        for cap in [self.policy.run_budget_usd, self.policy.project_budget_usd]
            .into_iter()
            .flatten()
        {
            if !cap.is_finite() || cap < 0.0 {
                return bad("policy budgets must be finite numbers >= 0");
            }
        }
        if self
            .style_refs
            .iter()
            .chain(&self.scene_refs)
            .any(|r| r.trim().is_empty())
        {
            return bad("style_refs and scene_refs must not contain blank entries");
        }
        let pp = &self.postprocess;
        if !imaging::passes::upscale::FACTORS.contains(&pp.upscale_factor) {
            return bad("postprocess.upscale_factor must be 2 or 4");
        }
        let known = ["local", "photoroom", "removebg"];
        let backends = &pp.bg_remove_backends;
        if backends.is_empty()
            || backends.iter().any(|b| !known.contains(&b.as_str()))
            || (1..backends.len()).any(|i| backends[..i].contains(&backends[i]))
        {
            return bad(
                "postprocess.bg_remove_backends: one or more of local, photoroom, removebg, each once",
            );
        }
        if pp
            .bg_remove_refine
            .as_deref()
            .is_some_and(|c| c.trim().is_empty())
        {
            return bad("postprocess.bg_remove_refine: a provider code (e.g. openai)");
        }
        let bg = &pp.bg_remove_settings;
        if !(0.0..=442.0).contains(&bg.tolerance)
            || bg.feather_px > 64
            || !(0.0..=1.0).contains(&bg.min_removed_fraction)
        {
            return bad(
                "postprocess.bg_remove_settings: tolerance 0..442, feather_px 0..64, min_removed_fraction 0..1",
            );
        }
        for p in &pp.color_profiles {
            p.validate()
                .map_err(|m| ServiceError::validation("config_validation_failed", m))?;
        }
        if imaging::passes::color::ColorProfile::find(&pp.color_profile, &pp.color_profiles)
            .is_none()
        {
            return Err(ServiceError::validation(
                "config_validation_failed",
                format!(
                    "postprocess.color_profile '{}' is not a known profile",
                    pp.color_profile
                ),
            ));
        }
        Ok(())
    }

    pub fn prompt(&self, key: &str) -> Result<&str, ServiceError> {
        self.prompts
            .get(key)
            .map(String::as_str)
            .filter(|p| !p.trim().is_empty())
            .ok_or_else(|| {
                ServiceError::validation(
                    "planning_preflight_failed",
                    format!("Manifest is missing prompts.{key}"),
                )
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn layers_merge_request_over_project_over_defaults() {
        let project =
            json!({"generation": {"candidates": 3}, "output_guard": {"max_chroma_delta": 5.0}});
        let request = json!({"generation": {"candidates": 4}});
        let m = resolve(Some(&project), Some(&request)).unwrap();
        assert_eq!(m.generation.candidates, 4);
        assert_eq!(m.generation.max_candidates, 6);
        assert_eq!(m.output_guard.max_chroma_delta, 5.0);
        assert!(m.prompt("style_base").is_ok());
    }

    #[test]
    fn invalid_layers_are_typed_errors() {
        for bad in [
            json!({"generation": {"candidates": 0}}),
            json!({"unknown": 1}),
            json!({"output_guard": {"max_chroma_delta": -1}}),
            json!([1]),
        ] {
            assert!(resolve(None, Some(&bad)).is_err(), "{bad}");
        }
    }
}

//! The model catalogue: per model, which parameters and values it accepts
//! and what it costs, as data (`providers/catalog/*.toml`, overridable in
//! configuration). Everything a model cannot serve is refused here, before
//! any call, with the parameter named; the price bound reserved before a
//! call and the cost recorded after it (from the usage the provider reports)
//! both come from here.

use std::collections::BTreeMap;

use chrono::NaiveDate;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

/// Prices in USD per million tokens.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TokenPrices {
    pub text_input: f64,
    pub image_input: f64,
    pub image_output: f64,
    #[serde(default)]
    pub text_output: f64,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelSpec {
    pub model: String,
    /// `YYYY-MM-DD`: from this day on the provider refuses the model.
    #[serde(default)]
    pub retires_on: Option<NaiveDate>,
    #[serde(default)]
    pub replaced_by: Option<String>,
    /// `generations` (prompt only) and/or `edits` (with images).
    pub endpoints: Vec<String>,
    pub sizes: Vec<String>,
    pub qualities: Vec<String>,
    pub backgrounds: Vec<String>,
    pub output_formats: Vec<String>,
    /// Values of `input_fidelity` the model takes; empty: it must be omitted.
    pub input_fidelity: Vec<String>,
    pub max_input_images: u32,
    pub max_prompt_chars: usize,
    pub prices: TokenPrices,
    /// Upper bound of input tokens per image, by fidelity (`low`, `high`),
    /// or `default` for models without the parameter.
    pub input_image_tokens: BTreeMap<String, u64>,
    /// Upper bound of output image tokens by quality, then size.
    pub output_tokens: BTreeMap<String, BTreeMap<String, u64>>,
    /// Upper bound of text output tokens (models that reason before drawing).
    #[serde(default)]
    pub max_output_text_tokens: u64,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Catalog {
    pub provider: String,
    /// Named in every cost record priced from it.
    pub version: String,
    /// Whether the provider deduplicates calls by `Idempotency-Key`.
    pub honours_idempotency_key: bool,
    pub models: Vec<ModelSpec>,
}

/// The shipped OpenAI catalogue.
pub fn openai() -> Catalog {
    // The file is part of the crate and checked by a unit test.
    toml::from_str(include_str!("../catalog/openai.toml")).unwrap_or_else(|e| Catalog {
        provider: "openai".into(),
        version: format!("invalid: {e}"),
        honours_idempotency_key: false,
        models: Vec::new(),
    })
}

impl Catalog {
    /// `overrides` replace the shipped entries of the same name; new names
    /// are added.
    pub fn with_overrides(mut self, overrides: &[ModelSpec]) -> Self {
        for spec in overrides {
            match self.models.iter_mut().find(|m| m.model == spec.model) {
                Some(slot) => *slot = spec.clone(),
                None => self.models.push(spec.clone()),
            }
        }
        self
    }

    pub fn model(&self, name: &str) -> Option<&ModelSpec> {
        self.models.iter().find(|m| m.model == name)
    }

    /// Models usable on `today`, for error messages.
    pub fn current(&self, today: NaiveDate) -> Vec<&str> {
        self.models
            .iter()
            .filter(|m| m.retires_on.is_none_or(|d| today < d))
            .map(|m| m.model.as_str())
            .collect()
    }

    /// The model's spec if it can be used on `today`.
    pub fn usable(&self, name: &str, today: NaiveDate) -> Result<&ModelSpec, Unsupported> {
        let spec = self.model(name).ok_or_else(|| Unsupported {
            param: "model",
            message: format!(
                "unknown model '{name}' (current models: {})",
                self.current(today).join(", ")
            ),
        })?;
        if let Some(day) = spec.retires_on
            && today >= day
        {
            return Err(Unsupported {
                param: "model",
                message: format!(
                    "{name} was retired by the provider on {day}{}",
                    spec.replaced_by
                        .as_deref()
                        .map(|r| format!("; use {r}"))
                        .unwrap_or_default()
                ),
            });
        }
        Ok(spec)
    }
}

/// A parameter the model cannot take (nothing was sent).
#[derive(Clone, Debug, PartialEq, thiserror::Error)]
#[error("{param}: {message}")]
pub struct Unsupported {
    pub param: &'static str,
    pub message: String,
}

/// The parameters of one image call.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ImageParams {
    pub model: String,
    pub size: String,
    pub quality: String,
    pub output_format: String,
    pub background: Option<String>,
    /// Sent with edits only.
    pub input_fidelity: Option<String>,
}

/// What a call carries, for checks and its price bound.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CallShape {
    /// Images sent (the stage input and style references); 0: generation
    /// from the prompt alone.
    pub input_images: u32,
    pub prompt_chars: usize,
}

fn one_of(
    param: &'static str,
    value: &str,
    allowed: &[String],
    model: &str,
) -> Result<(), Unsupported> {
    if allowed.iter().any(|a| a == value) {
        Ok(())
    } else {
        Err(Unsupported {
            param,
            message: format!(
                "{model} does not accept {param} '{value}' (one of: {})",
                allowed.join(", ")
            ),
        })
    }
}

impl ModelSpec {
    /// Whether the call can be served; the first parameter that cannot is named.
    pub fn check(&self, p: &ImageParams, shape: CallShape) -> Result<(), Unsupported> {
        let m = &self.model;
        let endpoint = if shape.input_images == 0 {
            "generations"
        } else {
            "edits"
        };
        if !self.endpoints.iter().any(|e| e == endpoint) {
            return Err(Unsupported {
                param: "model",
                message: if endpoint == "generations" {
                    format!("{m} cannot generate from a prompt alone (it only edits images)")
                } else {
                    format!("{m} cannot edit images")
                },
            });
        }
        one_of("size", &p.size, &self.sizes, m)?;
        one_of("quality", &p.quality, &self.qualities, m)?;
        one_of("output_format", &p.output_format, &self.output_formats, m)?;
        if let Some(b) = &p.background {
            one_of("background", b, &self.backgrounds, m)?;
            if b == "transparent" && p.output_format == "jpeg" {
                return Err(Unsupported {
                    param: "background",
                    message: "a transparent background needs output_format png or webp".into(),
                });
            }
        }
        if let Some(f) = p
            .input_fidelity
            .as_deref()
            .filter(|_| shape.input_images > 0)
        {
            if self.input_fidelity.is_empty() {
                return Err(Unsupported {
                    param: "input_fidelity",
                    message: format!("{m} takes no input_fidelity (it must be omitted)"),
                });
            }
            one_of("input_fidelity", f, &self.input_fidelity, m)?;
        }
        if shape.input_images > self.max_input_images {
            return Err(Unsupported {
                param: "image",
                message: format!(
                    "{m} takes at most {} input images ({} given)",
                    self.max_input_images, shape.input_images
                ),
            });
        }
        if shape.prompt_chars > self.max_prompt_chars {
            return Err(Unsupported {
                param: "prompt",
                message: format!(
                    "{m} takes prompts of at most {} characters ({} given)",
                    self.max_prompt_chars, shape.prompt_chars
                ),
            });
        }
        Ok(())
    }

    /// The fidelity to send when none is configured: the highest the model
    /// takes, or none.
    pub fn best_input_fidelity(&self) -> Option<String> {
        ["high", "low"]
            .into_iter()
            .find(|f| self.input_fidelity.iter().any(|a| a == f))
            .map(str::to_string)
    }

    /// An upper bound of what the call can cost: what is reserved against
    /// budgets before it is made. `auto` size or quality takes the dearest.
    pub fn max_cost_usd(&self, p: &ImageParams, shape: CallShape) -> f64 {
        let per_image = self
            .input_image_tokens
            .get(p.input_fidelity.as_deref().unwrap_or("default"))
            .or_else(|| self.input_image_tokens.values().max())
            .copied()
            .unwrap_or(0);
        let output = self
            .output_tokens
            .iter()
            .filter(|(q, _)| p.quality == "auto" || **q == p.quality)
            .flat_map(|(_, by_size)| by_size.iter())
            .filter(|(s, _)| p.size == "auto" || **s == p.size)
            .map(|(_, n)| *n)
            .max()
            .unwrap_or(0);
        // A token is at least one character of the prompt; the margin covers
        // what the provider adds around it.
        let text_tokens = shape.prompt_chars as u64 + 64;
        let usd = |tokens: u64, per_million: f64| tokens as f64 * per_million / 1e6;
        usd(text_tokens, self.prices.text_input)
            + usd(
                u64::from(shape.input_images) * per_image,
                self.prices.image_input,
            )
            + usd(output, self.prices.image_output)
            + usd(self.max_output_text_tokens, self.prices.text_output)
    }

    /// What the reported usage costs, with the breakdown for the ledger.
    pub fn cost_of(&self, usage: &Usage, version: &str) -> (f64, Value) {
        let image_in = usage
            .input_tokens_details
            .as_ref()
            .map_or(0, |d| d.image_tokens);
        let text_in = usage
            .input_tokens_details
            .as_ref()
            .map_or(usage.input_tokens, |d| d.text_tokens);
        let (image_out, text_out) = match &usage.output_tokens_details {
            Some(d) => (d.image_tokens, d.text_tokens),
            None => (usage.output_tokens, 0),
        };
        let usd = |tokens: u64, per_million: f64| tokens as f64 * per_million / 1e6;
        let parts = [
            ("text_input", usd(text_in, self.prices.text_input)),
            ("image_input", usd(image_in, self.prices.image_input)),
            ("image_output", usd(image_out, self.prices.image_output)),
            ("text_output", usd(text_out, self.prices.text_output)),
        ];
        let total: f64 = parts.iter().map(|(_, v)| v).sum();
        let detail = json!({
            "basis": "reported_usage",
            "price_table": version,
            "model": self.model,
            "tokens": {
                "text_input": text_in, "image_input": image_in,
                "image_output": image_out, "text_output": text_out,
            },
            "usd": parts.iter().map(|(k, v)| ((*k).to_string(), json!(v))).collect::<serde_json::Map<_, _>>(),
        });
        (total, detail)
    }
}

/// `usage` of an image response (OpenAI's ImageGenUsage).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Usage {
    pub input_tokens: u64,
    pub output_tokens: u64,
    #[serde(default)]
    pub total_tokens: Option<u64>,
    #[serde(default)]
    pub input_tokens_details: Option<TokenDetails>,
    #[serde(default)]
    pub output_tokens_details: Option<TokenDetails>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct TokenDetails {
    #[serde(default)]
    pub text_tokens: u64,
    #[serde(default)]
    pub image_tokens: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn day(s: &str) -> NaiveDate {
        s.parse().unwrap()
    }

    fn params(model: &str) -> ImageParams {
        ImageParams {
            model: model.into(),
            size: "1024x1536".into(),
            quality: "high".into(),
            output_format: "png".into(),
            background: None,
            input_fidelity: None,
        }
    }

    const EDIT: CallShape = CallShape {
        input_images: 2,
        prompt_chars: 100,
    };

    #[test]
    fn the_shipped_catalogue_parses_and_knows_the_current_models() {
        let c = openai();
        assert!(!c.version.starts_with("invalid"), "{}", c.version);
        assert!(!c.honours_idempotency_key);
        let today = day("2026-11-30");
        for m in ["gpt-image-2", "gpt-image-1.5", "chatgpt-image-latest"] {
            assert!(c.usable(m, today).is_ok(), "{m}");
        }
        let retired = c.usable("gpt-image-1", today).unwrap_err();
        assert_eq!(retired.param, "model");
        assert!(
            retired.message.contains("2026-10-23") && retired.message.contains("gpt-image-1.5")
        );
        assert!(c.usable("gpt-image-1-mini", today).is_ok());
        assert!(
            c.usable("gpt-image-1-mini", day("2026-12-01")).is_err(),
            "gone on its day"
        );
        let unknown = c.usable("gpt-image-9", today).unwrap_err();
        assert!(unknown.message.contains("gpt-image-2"), "{unknown}");
    }

    #[test]
    fn each_parameter_is_checked_against_the_model() {
        let c = openai();
        let two = c.model("gpt-image-2").unwrap();
        let fidelity = ImageParams {
            input_fidelity: Some("high".into()),
            ..params("gpt-image-2")
        };
        assert_eq!(
            two.check(&fidelity, EDIT).unwrap_err().param,
            "input_fidelity"
        );
        // Generations never send it, so it is not refused there.
        assert!(two.check(&fidelity, CallShape::default()).is_ok());
        assert_eq!(two.best_input_fidelity(), None);
        let mini = c.model("gpt-image-1-mini").unwrap();
        assert_eq!(mini.best_input_fidelity().as_deref(), Some("low"));
        let high = ImageParams {
            input_fidelity: Some("high".into()),
            ..params("gpt-image-1-mini")
        };
        assert_eq!(mini.check(&high, EDIT).unwrap_err().param, "input_fidelity");
        let one_five = c.model("gpt-image-1.5").unwrap();
        assert_eq!(one_five.best_input_fidelity().as_deref(), Some("high"));
        for (bad, param) in [
            (
                ImageParams {
                    size: "640x480".into(),
                    ..params("gpt-image-1.5")
                },
                "size",
            ),
            (
                ImageParams {
                    quality: "ultra".into(),
                    ..params("gpt-image-1.5")
                },
                "quality",
            ),
            (
                ImageParams {
                    output_format: "gif".into(),
                    ..params("gpt-image-1.5")
                },
                "output_format",
            ),
            (
                ImageParams {
                    background: Some("transparent".into()),
                    output_format: "jpeg".into(),
                    ..params("gpt-image-1.5")
                },
                "background",
            ),
        ] {
            assert_eq!(one_five.check(&bad, EDIT).unwrap_err().param, param);
        }
        let many = CallShape {
            input_images: 17,
            prompt_chars: 10,
        };
        assert_eq!(
            one_five
                .check(&params("gpt-image-1.5"), many)
                .unwrap_err()
                .param,
            "image"
        );
        let chat = c.model("chatgpt-image-latest").unwrap();
        assert_eq!(
            chat.check(&params("chatgpt-image-latest"), CallShape::default())
                .unwrap_err()
                .param,
            "model",
            "edits only"
        );
    }

    #[test]
    fn the_bound_covers_the_reported_cost_and_auto_takes_the_dearest() {
        let c = openai();
        let m = c.model("gpt-image-1.5").unwrap();
        let p = ImageParams {
            input_fidelity: Some("high".into()),
            ..params("gpt-image-1.5")
        };
        let bound = m.max_cost_usd(&p, EDIT);
        // A real edit: 2 images at high fidelity, 6240 output tokens.
        let usage = Usage {
            input_tokens: 30 + 2 * 6000,
            output_tokens: 6240,
            total_tokens: None,
            input_tokens_details: Some(TokenDetails {
                text_tokens: 30,
                image_tokens: 12000,
            }),
            output_tokens_details: None,
        };
        let (actual, detail) = m.cost_of(&usage, &c.version);
        assert!(actual <= bound, "{actual} > {bound}");
        let expected = 30.0 * 5.0 / 1e6 + 12000.0 * 8.0 / 1e6 + 6240.0 * 32.0 / 1e6;
        assert!((actual - expected).abs() < 1e-12, "{actual} vs {expected}");
        assert_eq!(detail["tokens"]["image_output"], 6240);
        assert_eq!(detail["price_table"], c.version);
        let auto = ImageParams {
            size: "auto".into(),
            quality: "auto".into(),
            ..p.clone()
        };
        assert!(m.max_cost_usd(&auto, EDIT) >= bound);
        let low = ImageParams {
            quality: "low".into(),
            ..p
        };
        assert!(m.max_cost_usd(&low, EDIT) < bound);
        // More images, more input tokens reserved.
        assert!(
            m.max_cost_usd(
                &params("gpt-image-1.5"),
                CallShape {
                    input_images: 9,
                    prompt_chars: 100
                }
            ) > m.max_cost_usd(
                &params("gpt-image-1.5"),
                CallShape {
                    input_images: 1,
                    prompt_chars: 100
                }
            )
        );
    }

    #[test]
    fn overrides_replace_or_add_models() {
        let mut renamed = openai().model("gpt-image-2").unwrap().clone();
        renamed.model = "gpt-image-2-turbo".into();
        let mut cheaper = openai().model("gpt-image-1.5").unwrap().clone();
        cheaper.prices.image_output = 1.0;
        let c = openai().with_overrides(&[renamed, cheaper]);
        let today = day("2026-11-30");
        assert!(c.usable("gpt-image-2-turbo", today).is_ok());
        assert_eq!(c.model("gpt-image-1.5").unwrap().prices.image_output, 1.0);
        assert_eq!(
            c.models
                .iter()
                .filter(|m| m.model == "gpt-image-1.5")
                .count(),
            1
        );
    }
}

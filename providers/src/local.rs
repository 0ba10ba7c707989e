//! The built-in `local` provider: offline and deterministic, doing real image
//! work per stage (ink style, time-of-day grading, weather overlays).
//! Latency, failure rate and price are configurable for tests and benchmarks.

use std::time::Duration;

use imaging::effects::{self, Rng};

use crate::{GenerateRequest, GeneratedImage, ImageProvider, ProviderError, Stage};

/// Size of an image generated from a prompt alone.
const PROMPT_ONLY_SIZE: (u32, u32) = (512, 384);

#[derive(Clone, Debug, Default, serde::Deserialize, serde::Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct LocalProviderSettings {
    /// Simulated provider latency per call.
    pub latency_ms: u64,
    /// Fraction (0..1) of calls that fail with a retryable server error,
    /// chosen deterministically from the idempotency key and attempt.
    pub failure_rate: f64,
    /// Simulated price per image (0 = free, so no spend confirmation needed).
    pub price_usd: f64,
    /// Fault injection for tests: panic on the first attempt of every call.
    pub fault_panic_first_attempt: bool,
}

pub struct LocalProvider {
    settings: LocalProviderSettings,
}

impl LocalProvider {
    pub fn new(settings: LocalProviderSettings) -> Self {
        Self { settings }
    }
}

fn hash(s: &str) -> u64 {
    // FNV-1a: stable across runs and platforms.
    s.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3)
    })
}

#[async_trait::async_trait]
impl ImageProvider for LocalProvider {
    fn code(&self) -> &'static str {
        "local"
    }

    fn unit_price_usd(&self) -> f64 {
        self.settings.price_usd
    }

    async fn generate(&self, request: GenerateRequest) -> Result<GeneratedImage, ProviderError> {
        if self.settings.latency_ms > 0 {
            tokio::time::sleep(Duration::from_millis(self.settings.latency_ms)).await;
        }
        if self.settings.fault_panic_first_attempt && request.attempt == 1 {
            panic!("injected fault: local provider panics on the first attempt");
        }
        let seed = hash(&request.idempotency_key);
        if self.settings.failure_rate > 0.0 {
            let roll = Rng::new(seed ^ u64::from(request.attempt).wrapping_mul(0xfa11)).next_u64()
                as f64
                / u64::MAX as f64;
            if roll < self.settings.failure_rate {
                return Err(ProviderError::Server { status: 503 });
            }
        }
        let variant = request.candidate_index;
        // Image work is CPU-bound: keep it off the async threads.
        let (stage, input, prompt) = (request.stage, request.input, request.prompt);
        let image = imaging::cpu::run(move || {
            // From the prompt alone: a procedural scene seeded by it.
            let input = input.unwrap_or_else(|| {
                imaging::scene::sample_scene(hash(&prompt), PROMPT_ONLY_SIZE.0, PROMPT_ONLY_SIZE.1)
            });
            match stage {
                Stage::Style => effects::ink(&input, variant),
                Stage::Time(t) => effects::grade_time(&input, t),
                Stage::Weather(w) => effects::weather(&input, w, seed),
                Stage::Refine => imaging::passes::bg_remove::refine_matte(&input),
            }
        })
        .await
        .map_err(|e| ProviderError::Malformed(format!("local image task failed: {e}")))?;
        Ok(GeneratedImage {
            image,
            cost_usd: self.settings.price_usd,
            model: "local-v1".into(),
            provider_request_id: Some(format!("local-{seed:016x}")),
        })
    }
}

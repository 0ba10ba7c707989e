//! The built-in `local` provider: offline and deterministic, doing real image
//! work per stage (ink style, time-of-day grading, weather overlays).
//! Latency, failure rate and price are configurable for tests and benchmarks.

use std::time::Duration;

use imaging::effects::{self, Rng};

use crate::{
    CallShape, Cost, GenerateRequest, GeneratedImage, ImageOptions, ImageProvider, ProviderError,
    RateSignal, Stage,
};

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

    /// Deterministic per key: repeating a call yields the same image.
    fn honours_idempotency_key(&self) -> bool {
        true
    }

    fn max_cost_usd(&self, _: &ImageOptions, _: CallShape) -> f64 {
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
        let (image, bytes) = imaging::cpu::run(move || {
            // From the prompt alone: a procedural scene seeded by it.
            let input = input.unwrap_or_else(|| {
                imaging::scene::sample_scene(hash(&prompt), PROMPT_ONLY_SIZE.0, PROMPT_ONLY_SIZE.1)
            });
            let image = match stage {
                Stage::Style => effects::ink(&input, variant),
                Stage::Time(t) => effects::grade_time(&input, t),
                Stage::Weather(w) => effects::weather(&input, w, seed),
                Stage::Refine => imaging::passes::bg_remove::refine_matte(&input),
            };
            // Delivered as a file, like a remote provider's answer.
            let bytes = imaging::encode_png(&image);
            (image, bytes)
        })
        .await
        .map_err(|e| ProviderError::Input(format!("local image task failed: {e}")))?;
        let bytes = bytes.map_err(|e| ProviderError::Input(e.to_string()))?;
        Ok(GeneratedImage {
            bytes,
            mime: "image/png",
            decoded: Some(image),
            cost: Cost::fixed(self.settings.price_usd),
            model: "local-v1".into(),
            provider_request_id: Some(format!("local-{seed:016x}")),
            rate: RateSignal::default(),
        })
    }
}

//! The built-in local provider's stage effects: real, visibly different image
//! work per stage, deterministic for a given seed. Every effect keeps alpha.

use image::{Rgba, RgbaImage};

/// Small deterministic PRNG (xorshift64*), so outputs depend only on the seed.
#[derive(Clone, Debug)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Self(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }

    pub fn next_u64(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    pub fn below(&mut self, n: u32) -> u32 {
        (self.next_u64() % u64::from(n.max(1))) as u32
    }
}

fn luma(p: &Rgba<u8>) -> f32 {
    0.299 * f32::from(p[0]) + 0.587 * f32::from(p[1]) + 0.114 * f32::from(p[2])
}

fn clamp(v: f32) -> u8 {
    v.round().clamp(0.0, 255.0) as u8
}

/// Ink style: grayscale, posterised into a few tones, with dark outlines where
/// luminance changes sharply. `variant` shifts the tone count and threshold so
/// candidates of one job differ.
pub fn ink(img: &RgbaImage, variant: u32) -> RgbaImage {
    let (w, h) = img.dimensions();
    let levels = 3.0 + (variant % 3) as f32;
    let edge_threshold = 28.0 + (variant % 4) as f32 * 6.0;
    let lum: Vec<f32> = img.pixels().map(luma).collect();
    let at = |x: u32, y: u32| lum[(y * w + x) as usize];
    RgbaImage::from_fn(w, h, |x, y| {
        let l = at(x, y);
        let gx = at((x + 1).min(w - 1), y) - at(x.saturating_sub(1), y);
        let gy = at(x, (y + 1).min(h - 1)) - at(x, y.saturating_sub(1));
        let step = 255.0 / (levels - 1.0);
        let toned = ((l / step).round() * step).clamp(0.0, 255.0);
        let v = if (gx * gx + gy * gy).sqrt() > edge_threshold {
            12.0
        } else {
            toned
        };
        let v = clamp(v);
        Rgba([v, v, v, img.get_pixel(x, y)[3]])
    })
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TimeOfDay {
    Day,
    Dusk,
    Night,
}

/// Time-of-day grading: day brightens, dusk warms and dims, night darkens
/// toward blue.
pub fn grade_time(img: &RgbaImage, time: TimeOfDay) -> RgbaImage {
    let (gain, tint) = match time {
        TimeOfDay::Day => (1.08, [1.0, 1.0, 1.0]),
        TimeOfDay::Dusk => (0.82, [1.12, 0.86, 0.66]),
        TimeOfDay::Night => (0.42, [0.7, 0.82, 1.25]),
    };
    let mut out = img.clone();
    for p in out.pixels_mut() {
        for c in 0..3 {
            p[c] = clamp(f32::from(p[c]) * gain * tint[c]);
        }
    }
    out
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Weather {
    Clear,
    Rain,
    Snow,
    Fog,
}

/// Weather overlays: rain streaks, snow flakes or fog thickening toward the
/// top; clear leaves the image as it is.
pub fn weather(img: &RgbaImage, weather: Weather, seed: u64) -> RgbaImage {
    let mut out = img.clone();
    let (w, h) = out.dimensions();
    let mut rng = Rng::new(seed);
    let area = u64::from(w) * u64::from(h);
    match weather {
        Weather::Clear => {}
        Weather::Rain => {
            let streaks = (area / 180).max(1);
            for _ in 0..streaks {
                let (x0, y0) = (rng.below(w), rng.below(h));
                let len = 6 + rng.below(10);
                for i in 0..len {
                    let (x, y) = (x0 + i / 3, y0 + i);
                    if x < w && y < h {
                        let p = out.get_pixel_mut(x, y);
                        for c in 0..3 {
                            p[c] = clamp(f32::from(p[c]) * 0.4 + 200.0 * 0.6);
                        }
                    }
                }
            }
        }
        Weather::Snow => {
            let flakes = (area / 120).max(1);
            for _ in 0..flakes {
                let (x, y) = (rng.below(w), rng.below(h));
                let p = out.get_pixel_mut(x, y);
                p[0] = 250;
                p[1] = 250;
                p[2] = 252;
            }
        }
        Weather::Fog => {
            for (_, y, p) in out.enumerate_pixels_mut() {
                let t = 0.65 * (1.0 - y as f32 / h.max(1) as f32) + 0.15;
                for c in 0..3 {
                    p[c] = clamp(f32::from(p[c]) * (1.0 - t) + 205.0 * t);
                }
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::guard::chroma_delta;
    use crate::scene::sample_scene;

    fn mean_luma(img: &RgbaImage) -> f32 {
        img.pixels().map(luma).sum::<f32>() / (img.width() * img.height()) as f32
    }

    #[test]
    fn ink_is_grayscale_deterministic_and_varies_by_variant() {
        let scene = sample_scene(1, 96, 64);
        let a = ink(&scene, 0);
        assert_eq!(chroma_delta(&a), 0.0);
        assert_eq!(a, ink(&scene, 0));
        assert_ne!(a, ink(&scene, 1));
        assert_eq!(a.dimensions(), scene.dimensions());
    }

    #[test]
    fn night_is_darker_and_bluer_than_day() {
        let scene = ink(&sample_scene(2, 64, 64), 0);
        let day = grade_time(&scene, TimeOfDay::Day);
        let night = grade_time(&scene, TimeOfDay::Night);
        assert!(mean_luma(&night) < mean_luma(&day) * 0.6);
        let blue: u32 = night.pixels().map(|p| u32::from(p[2])).sum();
        let red: u32 = night.pixels().map(|p| u32::from(p[0])).sum();
        assert!(blue > red);
    }

    #[test]
    fn weather_changes_pixels_and_keeps_alpha() {
        let mut scene = sample_scene(3, 64, 64);
        scene.get_pixel_mut(0, 0)[3] = 7;
        for kind in [Weather::Rain, Weather::Snow, Weather::Fog] {
            let out = weather(&scene, kind, 9);
            assert_ne!(out, scene, "{kind:?} changed nothing");
            assert_eq!(out.get_pixel(0, 0)[3], 7);
            assert_eq!(out, weather(&scene, kind, 9));
        }
        assert_eq!(weather(&scene, Weather::Clear, 9), scene);
    }
}

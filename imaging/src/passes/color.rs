//! Colour profiles: per-channel gain, lift and gamma through lookup tables,
//! then a saturation mix around luma. Alpha is never touched.

use image::RgbaImage;
use serde::{Deserialize, Serialize};

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ColorProfile {
    pub name: String,
    /// Multipliers per channel (R, G, B).
    #[serde(default = "unit3")]
    pub gain: [f32; 3],
    /// Added to every channel after gain, in 0..1 units (shadows lift).
    #[serde(default)]
    pub lift: [f32; 3],
    /// Applied last per channel (1 = unchanged; above 1 brightens mids).
    #[serde(default = "one")]
    pub gamma: f32,
    /// 1 = unchanged, 0 = grayscale.
    #[serde(default = "one")]
    pub saturation: f32,
}

fn unit3() -> [f32; 3] {
    [1.0; 3]
}

fn one() -> f32 {
    1.0
}

impl ColorProfile {
    fn builtin(name: &str, gain: [f32; 3], lift: [f32; 3], gamma: f32, saturation: f32) -> Self {
        Self {
            name: name.into(),
            gain,
            lift,
            gamma,
            saturation,
        }
    }

    /// `neutral`, `cinematic_warm`, `cold_rain`.
    pub fn builtins() -> Vec<Self> {
        vec![
            Self::builtin("neutral", [1.0; 3], [0.0; 3], 1.0, 1.0),
            Self::builtin(
                "cinematic_warm",
                [1.08, 1.0, 0.86],
                [0.02, 0.01, 0.0],
                1.05,
                1.1,
            ),
            Self::builtin("cold_rain", [0.9, 0.98, 1.1], [0.0, 0.01, 0.03], 0.95, 0.75),
        ]
    }

    /// A profile by name: `custom` first (from config), then the built-ins.
    pub fn find(name: &str, custom: &[ColorProfile]) -> Option<ColorProfile> {
        custom
            .iter()
            .find(|p| p.name == name)
            .cloned()
            .or_else(|| Self::builtins().into_iter().find(|p| p.name == name))
    }

    /// Values that make sense (finite, gains and gamma positive).
    pub fn validate(&self) -> Result<(), String> {
        let finite = self
            .gain
            .iter()
            .chain(&self.lift)
            .chain([&self.gamma, &self.saturation])
            .all(|v| v.is_finite());
        if !finite || self.gamma <= 0.0 || self.gain.iter().any(|g| *g < 0.0) {
            return Err(format!("colour profile '{}' has invalid values", self.name));
        }
        if !(0.0..=4.0).contains(&self.saturation) {
            return Err(format!(
                "colour profile '{}': saturation must be within 0..4",
                self.name
            ));
        }
        Ok(())
    }
}

/// Applies `profile` to `img`, keeping alpha.
pub fn apply(img: &RgbaImage, profile: &ColorProfile) -> RgbaImage {
    let luts: Vec<[f32; 256]> = (0..3)
        .map(|c| {
            let mut lut = [0f32; 256];
            for (v, out) in lut.iter_mut().enumerate() {
                let x = (v as f32 / 255.0) * profile.gain[c] + profile.lift[c];
                *out = x.clamp(0.0, 1.0).powf(1.0 / profile.gamma) * 255.0;
            }
            lut
        })
        .collect();
    let s = profile.saturation;
    let mut out = img.clone();
    for px in out.pixels_mut() {
        let [r, g, b, _] = px.0;
        let (r, g, b) = (
            luts[0][r as usize],
            luts[1][g as usize],
            luts[2][b as usize],
        );
        let luma = 0.2126 * r + 0.7152 * g + 0.0722 * b;
        let mix = |c: f32| (luma + (c - luma) * s).round().clamp(0.0, 255.0) as u8;
        px.0[0] = mix(r);
        px.0[1] = mix(g);
        px.0[2] = mix(b);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn profiles_shift_colour_and_keep_alpha() {
        let mut img = crate::scene::sample_scene(2, 32, 24);
        img.get_pixel_mut(0, 0).0[3] = 7;
        let neutral = ColorProfile::find("neutral", &[]).unwrap();
        assert_eq!(apply(&img, &neutral), img, "neutral is the identity");
        let warm = apply(&img, &ColorProfile::find("cinematic_warm", &[]).unwrap());
        let cold = apply(&img, &ColorProfile::find("cold_rain", &[]).unwrap());
        let mean = |im: &RgbaImage, c: usize| {
            im.pixels().map(|p| f64::from(p.0[c])).sum::<f64>()
                / f64::from(im.width() * im.height())
        };
        assert!(mean(&warm, 0) - mean(&warm, 2) > mean(&img, 0) - mean(&img, 2));
        assert!(mean(&cold, 2) - mean(&cold, 0) > mean(&img, 2) - mean(&img, 0));
        for out in [&warm, &cold] {
            assert_eq!(out.dimensions(), img.dimensions());
            assert!(
                out.pixels()
                    .zip(img.pixels())
                    .all(|(a, b)| a.0[3] == b.0[3])
            );
        }
        assert_eq!(
            apply(&img, &ColorProfile::find("cold_rain", &[]).unwrap()),
            cold
        );
        let custom = ColorProfile {
            name: "mono".into(),
            gain: [1.0; 3],
            lift: [0.0; 3],
            gamma: 1.0,
            saturation: 0.0,
        };
        let mono = apply(&img, &ColorProfile::find("mono", &[custom]).unwrap());
        assert!(
            mono.pixels()
                .all(|p| p.0[0].abs_diff(p.0[1]) <= 1 && p.0[1].abs_diff(p.0[2]) <= 1)
        );
        assert!(ColorProfile::find("nope", &[]).is_none());
        assert!(
            ColorProfile {
                gamma: 0.0,
                ..neutral
            }
            .validate()
            .is_err()
        );
    }
}

//! The output guard's chroma metric and its verdict.
//!
//! `chroma_delta` is the mean over pixels of (|R−G| + |R−B| + |G−B|) / 3,
//! weighted by alpha so fully transparent pixels (e.g. after background
//! removal) do not count with their hidden RGB.

use image::RgbaImage;

#[derive(Clone, Copy, Debug, PartialEq)]
pub struct GuardSettings {
    pub max_chroma_delta: f64,
    /// The image must look grayscale (chroma within the limit): hard failure.
    pub enforce_grayscale: bool,
    /// Chroma over the limit is a hard failure rather than a soft warning.
    pub fail_on_chroma_exceed: bool,
}

impl Default for GuardSettings {
    fn default() -> Self {
        Self {
            max_chroma_delta: 2.0,
            enforce_grayscale: false,
            fail_on_chroma_exceed: false,
        }
    }
}

#[derive(Clone, Debug, PartialEq)]
pub struct GuardReport {
    pub chroma_delta: f64,
    pub hard_failures: u32,
    pub soft_warnings: u32,
    /// max(0, chroma_delta − max_chroma_delta)
    pub chroma_exceed: f64,
    pub reasons: Vec<&'static str>,
}

/// Alpha-weighted mean chroma of `img` (0 for an empty or fully transparent image).
pub fn chroma_delta(img: &RgbaImage) -> f64 {
    let mut weighted = 0u64;
    let mut weight = 0u64;
    for px in img.as_raw().chunks_exact(4) {
        let (r, g, b, a) = (
            i32::from(px[0]),
            i32::from(px[1]),
            i32::from(px[2]),
            u64::from(px[3]),
        );
        let c = ((r - g).unsigned_abs() + (r - b).unsigned_abs() + (g - b).unsigned_abs()) as u64;
        weighted += c * a;
        weight += a;
    }
    if weight == 0 {
        0.0
    } else {
        weighted as f64 / weight as f64 / 3.0
    }
}

pub fn check(img: &RgbaImage, settings: &GuardSettings) -> GuardReport {
    let delta = chroma_delta(img);
    let exceeds = delta > settings.max_chroma_delta;
    let mut reasons = Vec::new();
    let mut hard = false;
    let mut soft = false;
    if settings.enforce_grayscale && exceeds {
        hard = true;
        reasons.push("not_grayscale_like");
    }
    if exceeds {
        if settings.fail_on_chroma_exceed {
            hard = true;
        } else if !settings.enforce_grayscale {
            soft = true;
        }
        reasons.push("chroma_exceeds_threshold");
    }
    GuardReport {
        chroma_delta: (delta * 10_000.0).round() / 10_000.0,
        hard_failures: u32::from(hard),
        soft_warnings: u32::from(soft),
        chroma_exceed: (delta - settings.max_chroma_delta).max(0.0),
        reasons,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use image::Rgba;

    #[test]
    fn gray_is_zero_and_colour_counts() {
        let gray = RgbaImage::from_pixel(8, 8, Rgba([120, 120, 120, 255]));
        assert_eq!(chroma_delta(&gray), 0.0);
        let red = RgbaImage::from_pixel(8, 8, Rgba([200, 0, 0, 255]));
        assert!((chroma_delta(&red) - 400.0 / 3.0).abs() < 1e-9);
    }

    #[test]
    fn transparent_pixels_do_not_count() {
        let mut img = RgbaImage::from_pixel(4, 1, Rgba([100, 100, 100, 255]));
        img.put_pixel(0, 0, Rgba([255, 0, 0, 0]));
        assert_eq!(chroma_delta(&img), 0.0);
    }

    #[test]
    fn hard_and_soft_verdicts() {
        let red = RgbaImage::from_pixel(2, 2, Rgba([200, 0, 0, 255]));
        let soft = check(&red, &GuardSettings::default());
        assert_eq!((soft.hard_failures, soft.soft_warnings), (0, 1));
        let hard = check(
            &red,
            &GuardSettings {
                enforce_grayscale: true,
                ..Default::default()
            },
        );
        assert_eq!((hard.hard_failures, hard.soft_warnings), (1, 0));
        let gray = RgbaImage::from_pixel(2, 2, Rgba([9, 9, 9, 255]));
        let ok = check(
            &gray,
            &GuardSettings {
                enforce_grayscale: true,
                ..Default::default()
            },
        );
        assert_eq!((ok.hard_failures, ok.soft_warnings), (0, 0));
    }
}

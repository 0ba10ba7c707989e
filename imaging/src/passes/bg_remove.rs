//! Background removal for comic art: the background is what is connected to
//! the border and close in colour to the border's dominant colour. It gets
//! alpha 0; the edge is feathered so cut-outs composite cleanly.

use std::collections::VecDeque;

use image::RgbaImage;
use serde::{Deserialize, Serialize};

#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct BgRemoveSettings {
    /// Largest RGB distance (0..441) from the background colour still counted
    /// as background.
    pub tolerance: f32,
    /// Width of the soft edge, in pixels.
    pub feather_px: u32,
    /// Below this fraction of removed pixels the pass reports "no background"
    /// (so a remote provider can be tried instead).
    pub min_removed_fraction: f32,
}

impl Default for BgRemoveSettings {
    fn default() -> Self {
        Self {
            tolerance: 40.0,
            feather_px: 2,
            min_removed_fraction: 0.005,
        }
    }
}

#[derive(Clone, Debug, PartialEq)]
pub struct BgRemoved {
    pub image: RgbaImage,
    pub background: [u8; 3],
    pub removed_fraction: f32,
}

/// The border's dominant colour: per-channel median of opaque border pixels.
fn border_colour(img: &RgbaImage) -> Option<[u8; 3]> {
    let (w, h) = img.dimensions();
    let mut chans: [Vec<u8>; 3] = Default::default();
    let mut push = |x, y| {
        let p = img.get_pixel(x, y).0;
        if p[3] > 127 {
            for c in 0..3 {
                chans[c].push(p[c]);
            }
        }
    };
    for x in 0..w {
        push(x, 0);
        push(x, h - 1);
    }
    for y in 0..h {
        push(0, y);
        push(w - 1, y);
    }
    if chans[0].is_empty() {
        return None;
    }
    let mut out = [0u8; 3];
    for c in 0..3 {
        chans[c].sort_unstable();
        out[c] = chans[c][chans[c].len() / 2];
    }
    Some(out)
}

/// Removes the border-connected background; `None` when there is none to
/// remove (already transparent, or the border is not a uniform colour).
pub fn remove_background(img: &RgbaImage, s: &BgRemoveSettings) -> Option<BgRemoved> {
    let (w, h) = img.dimensions();
    if w == 0 || h == 0 {
        return None;
    }
    let bg = border_colour(img)?;
    let tol2 = s.tolerance * s.tolerance;
    let close = |x: u32, y: u32| {
        let p = img.get_pixel(x, y).0;
        let d2: f32 = (0..3)
            .map(|c| (f32::from(p[c]) - f32::from(bg[c])).powi(2))
            .sum();
        d2 <= tol2
    };
    let idx = |x: u32, y: u32| (y * w + x) as usize;
    let mut is_bg = vec![false; (w * h) as usize];
    let mut queue = VecDeque::new();
    let seed = |x: u32, y: u32, is_bg: &mut Vec<bool>, q: &mut VecDeque<(u32, u32)>| {
        if !is_bg[idx(x, y)] && close(x, y) {
            is_bg[idx(x, y)] = true;
            q.push_back((x, y));
        }
    };
    for x in 0..w {
        seed(x, 0, &mut is_bg, &mut queue);
        seed(x, h - 1, &mut is_bg, &mut queue);
    }
    for y in 0..h {
        seed(0, y, &mut is_bg, &mut queue);
        seed(w - 1, y, &mut is_bg, &mut queue);
    }
    while let Some((x, y)) = queue.pop_front() {
        if x > 0 {
            seed(x - 1, y, &mut is_bg, &mut queue);
        }
        if x + 1 < w {
            seed(x + 1, y, &mut is_bg, &mut queue);
        }
        if y > 0 {
            seed(x, y - 1, &mut is_bg, &mut queue);
        }
        if y + 1 < h {
            seed(x, y + 1, &mut is_bg, &mut queue);
        }
    }
    let removed = is_bg.iter().filter(|b| **b).count();
    let removed_fraction = removed as f32 / (w * h) as f32;
    if removed_fraction < s.min_removed_fraction {
        return None;
    }
    // Foreground coverage 0..255, softened by a box blur of `feather_px`.
    let mut cover: Vec<u16> = is_bg.iter().map(|b| if *b { 0 } else { 255 }).collect();
    if s.feather_px > 0 {
        cover = box_blur(&cover, w as usize, h as usize, s.feather_px as usize);
    }
    let mut out = img.clone();
    for (i, px) in out.pixels_mut().enumerate() {
        // Inside the subject the matte never cuts into it: only pixels at or
        // next to the background get partial alpha.
        let c = if is_bg[i] {
            cover[i].min(255) / 2
        } else {
            cover[i].max(128)
        };
        px.0[3] = ((u32::from(px.0[3]) * u32::from(c.min(255))) / 255) as u8;
    }
    Some(BgRemoved {
        image: out,
        background: bg,
        removed_fraction,
    })
}

/// Separable box blur with clamped edges.
fn box_blur(v: &[u16], w: usize, h: usize, r: usize) -> Vec<u16> {
    let pass = |src: &[u16], len: usize, count: usize, at: &dyn Fn(usize, usize) -> usize| {
        let mut dst = vec![0u16; src.len()];
        for line in 0..count {
            for i in 0..len {
                let lo = i.saturating_sub(r);
                let hi = (i + r).min(len - 1);
                let sum: u32 = (lo..=hi).map(|j| u32::from(src[at(line, j)])).sum();
                dst[at(line, i)] = (sum / (hi - lo + 1) as u32) as u16;
            }
        }
        dst
    };
    let horizontal = pass(v, w, h, &|y, x| y * w + x);
    pass(&horizontal, h, w, &|x, y| y * w + x)
}

/// Cleans a cut-out's matte: alpha close to transparent or opaque is
/// snapped (no faint halo, no speckled interior), and fully transparent
/// pixels lose their colour (no fringe when the image is scaled or
/// composited). What the built-in provider does for a refine step.
pub fn refine_matte(img: &RgbaImage) -> RgbaImage {
    const LOW: u8 = 24;
    const HIGH: u8 = 231;
    let mut out = img.clone();
    for p in out.pixels_mut() {
        let a = p.0[3];
        if a <= LOW {
            p.0 = [0, 0, 0, 0];
        } else if a >= HIGH {
            p.0[3] = 255;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refining_snaps_the_matte_and_clears_transparent_colour() {
        let mut img = RgbaImage::from_pixel(4, 1, image::Rgba([200, 100, 50, 128]));
        img.put_pixel(0, 0, image::Rgba([9, 9, 9, 10]));
        img.put_pixel(1, 0, image::Rgba([9, 9, 9, 240]));
        let r = refine_matte(&img);
        assert_eq!(r.get_pixel(0, 0).0, [0, 0, 0, 0], "faint halo removed");
        assert_eq!(
            r.get_pixel(1, 0).0,
            [9, 9, 9, 255],
            "near-opaque made opaque"
        );
        assert_eq!(r.get_pixel(2, 0).0, [200, 100, 50, 128], "soft edges kept");
        assert_eq!(r.dimensions(), img.dimensions());
    }

    fn subject_on_paper() -> RgbaImage {
        // A dark figure on off-white paper, plus a white hole inside it that
        // is not connected to the border (must stay opaque).
        RgbaImage::from_fn(60, 40, |x, y| {
            let inside = (15..45).contains(&x) && (8..32).contains(&y);
            let hole = (28..32).contains(&x) && (18..22).contains(&y);
            if inside && !hole {
                image::Rgba([30, 30, 35, 255])
            } else {
                image::Rgba([245, 242, 236, 255])
            }
        })
    }

    #[test]
    fn border_connected_background_becomes_transparent_with_a_soft_edge() {
        let img = subject_on_paper();
        let out = remove_background(&img, &BgRemoveSettings::default()).unwrap();
        assert_eq!(out.image.dimensions(), img.dimensions());
        assert_eq!(out.background, [245, 242, 236]);
        assert_eq!(out.image.get_pixel(2, 2).0[3], 0, "corner is background");
        assert_eq!(
            out.image.get_pixel(22, 20).0[3],
            255,
            "subject stays opaque"
        );
        assert_eq!(
            out.image.get_pixel(30, 20).0[3],
            255,
            "enclosed hole is kept"
        );
        let edge = out.image.get_pixel(14, 20).0[3];
        assert!(edge > 0 && edge < 255, "feathered edge: {edge}");
        assert!(
            out.image
                .pixels()
                .zip(img.pixels())
                .all(|(a, b)| a.0[..3] == b.0[..3])
        );
        assert_eq!(
            remove_background(&img, &BgRemoveSettings::default()).unwrap(),
            out
        );
    }

    #[test]
    fn nothing_to_remove_is_reported() {
        let noisy = crate::scene::sample_scene(4, 48, 32);
        let strict = BgRemoveSettings {
            tolerance: 1.0,
            min_removed_fraction: 0.5,
            ..BgRemoveSettings::default()
        };
        assert!(remove_background(&noisy, &strict).is_none());
        let clear = RgbaImage::from_pixel(8, 8, image::Rgba([0, 0, 0, 0]));
        assert!(remove_background(&clear, &BgRemoveSettings::default()).is_none());
    }
}

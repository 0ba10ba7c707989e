//! Procedural sample scenes (sky, skyline, street, a figure), so the demo and
//! the tests need no image files from outside the project.

use image::{Rgba, RgbaImage};

use crate::effects::Rng;

pub fn sample_scene(seed: u64, width: u32, height: u32) -> RgbaImage {
    let mut rng = Rng::new(seed);
    let horizon = height * (55 + rng.below(15)) / 100;
    let mut img = RgbaImage::from_fn(width, height, |_, y| {
        if y < horizon {
            let t = y as f32 / horizon.max(1) as f32;
            Rgba([
                (90.0 + 100.0 * t) as u8,
                (140.0 + 70.0 * t) as u8,
                (210.0 + 30.0 * t) as u8,
                255,
            ])
        } else {
            let t = (y - horizon) as f32 / (height - horizon).max(1) as f32;
            Rgba([
                (110.0 - 50.0 * t) as u8,
                (100.0 - 40.0 * t) as u8,
                (90.0 - 30.0 * t) as u8,
                255,
            ])
        }
    });
    // Skyline: buildings with lit windows.
    let mut x = 0;
    while x < width {
        let bw = (width / 12).max(3) + rng.below((width / 8).max(1));
        let bh = (horizon / 3).max(2) + rng.below((horizon / 2).max(1));
        let shade = 40 + rng.below(60) as u8;
        for bx in x..(x + bw).min(width) {
            for by in horizon.saturating_sub(bh)..horizon {
                let window = (bx - x) % 5 == 2 && (horizon - by) % 6 == 3;
                let c = if window {
                    Rgba([230, 210, 120, 255])
                } else {
                    Rgba([shade, shade, shade + 10, 255])
                };
                img.put_pixel(bx, by, c);
            }
        }
        x += bw + 1 + rng.below(3);
    }
    // Sun or moon.
    let (cx, cy, r) = (
        rng.below(width) as i64,
        (horizon / 4) as i64,
        (height / 12).max(2) as i64,
    );
    for y in (cy - r).max(0)..(cy + r).min(i64::from(height)) {
        for x in (cx - r).max(0)..(cx + r).min(i64::from(width)) {
            if (x - cx).pow(2) + (y - cy).pow(2) <= r * r {
                img.put_pixel(x as u32, y as u32, Rgba([250, 235, 170, 255]));
            }
        }
    }
    // A figure on the street.
    let fx = width / 3 + rng.below((width / 3).max(1));
    let fh = (height / 4).max(4);
    let top = (horizon + (height - horizon) / 3).min(height - 1);
    for y in top.saturating_sub(fh)..top {
        for x in fx.saturating_sub(fh / 8)..(fx + fh / 8).min(width) {
            img.put_pixel(x, y, Rgba([25, 20, 30, 255]));
        }
    }
    img
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deterministic_and_seed_dependent() {
        assert_eq!(sample_scene(5, 80, 60), sample_scene(5, 80, 60));
        assert_ne!(sample_scene(5, 80, 60), sample_scene(6, 80, 60));
        assert_eq!(sample_scene(1, 3, 3).dimensions(), (3, 3));
    }
}

//! Upscale by an integer factor (2 or 4) with Catmull-Rom (bicubic, a = -0.5)
//! in fixed point. For an integer factor the filter weights repeat every
//! `factor` output pixels, so they are computed once per phase instead of per
//! pixel; the work is separable (horizontal once per source row, vertical per
//! output row) and produced row by row, so a huge result can stream into a
//! PNG writer while memory stays at the source plus a few rows.
//!
//! Images with transparency are filtered in premultiplied alpha, so colour
//! from fully transparent pixels never bleeds into the edges.

use std::io::Write;

use image::RgbaImage;

use crate::ImagingError;

/// Factors this pass accepts.
pub const FACTORS: [u32; 2] = [2, 4];

/// Horizontal weights sum to 1 << H_BITS; vertical ones to 1 << V_BITS.
const H_BITS: u32 = 12;
const V_BITS: u32 = 8;

fn catmull_rom(x: f64) -> f64 {
    let x = x.abs();
    if x < 1.0 {
        1.5 * x * x * x - 2.5 * x * x + 1.0
    } else if x < 2.0 {
        -0.5 * x * x * x + 2.5 * x * x - 4.0 * x + 2.0
    } else {
        0.0
    }
}

/// Per output phase: the first of four source taps (relative to the output's
/// source cell) and the four weights in fixed point summing to `1 << bits`.
fn phases(factor: u32, bits: u32) -> Vec<(i64, [i32; 4])> {
    (0..factor)
        .map(|p| {
            let d = (f64::from(p) + 0.5) / f64::from(factor) - 0.5;
            let base = d.floor();
            let t = d - base;
            let w = [
                catmull_rom(t + 1.0),
                catmull_rom(t),
                catmull_rom(1.0 - t),
                catmull_rom(2.0 - t),
            ];
            let scale = f64::from(1u32 << bits);
            let mut fixed = w.map(|v| (v * scale).round() as i32);
            // Exact sum, so flat areas stay exactly flat.
            let err = (1i32 << bits) - fixed.iter().sum::<i32>();
            fixed[1] += err;
            (base as i64 - 1, fixed)
        })
        .collect()
}

fn is_opaque(img: &RgbaImage) -> bool {
    img.as_raw().chunks_exact(4).all(|p| p[3] == 255)
}

fn premultiplied(img: &RgbaImage) -> Vec<u8> {
    let mut v = img.as_raw().clone();
    for p in v.chunks_exact_mut(4) {
        let a = u32::from(p[3]);
        for c in &mut p[..3] {
            *c = ((u32::from(*c) * a + 127) / 255) as u8;
        }
    }
    v
}

/// Produces the upscaled image row by row (`width * factor * 4` RGBA bytes
/// each), top to bottom, into `sink`.
pub fn upscale_rows<E>(
    img: &RgbaImage,
    factor: u32,
    mut sink: impl FnMut(&[u8]) -> Result<(), E>,
) -> Result<(), E> {
    let (w, h) = (img.width() as usize, img.height() as usize);
    let k = factor.max(1) as usize;
    let (ow, oh) = (w * k, h * k);
    let opaque = is_opaque(img);
    let src: std::borrow::Cow<'_, [u8]> = if opaque {
        std::borrow::Cow::Borrowed(img.as_raw())
    } else {
        std::borrow::Cow::Owned(premultiplied(img))
    };
    let hp = phases(factor, H_BITS);
    let vp = phases(factor, V_BITS);
    // Source column of each tap, per output column (clamped at the edges).
    let taps: Vec<[usize; 4]> = (0..ow)
        .map(|ox| {
            let (base, _) = hp[ox % k];
            let first = (ox / k) as i64 + base;
            [0, 1, 2, 3].map(|j| (first + j).clamp(0, w as i64 - 1) as usize * 4)
        })
        .collect();
    let horizontal = |y: usize, out: &mut Vec<i32>| {
        let row = &src[y * w * 4..(y + 1) * w * 4];
        out.clear();
        for (ox, t) in taps.iter().enumerate() {
            let wt = hp[ox % k].1;
            for c in 0..4 {
                out.push(
                    wt[0] * i32::from(row[t[0] + c])
                        + wt[1] * i32::from(row[t[1] + c])
                        + wt[2] * i32::from(row[t[2] + c])
                        + wt[3] * i32::from(row[t[3] + c]),
                );
            }
        }
    };
    // A ring of horizontally scaled source rows, keyed by source row.
    let mut ring: [(usize, Vec<i32>); 4] = std::array::from_fn(|_| (usize::MAX, Vec::new()));
    let mut out = vec![0u8; ow * 4];
    let shift = H_BITS + V_BITS;
    let round = 1i32 << (shift - 1);
    for oy in 0..oh {
        let (base, wt) = vp[oy % k];
        let first = (oy / k) as i64 + base;
        let rows = [0, 1, 2, 3].map(|j| (first + j).clamp(0, h as i64 - 1) as usize);
        for &r in &rows {
            if !ring.iter().any(|(y, _)| *y == r) {
                // Evict the row furthest above: rows are needed in order.
                let slot = ring
                    .iter()
                    .enumerate()
                    .min_by_key(|(_, (y, _))| if *y == usize::MAX { 0 } else { *y + 1 })
                    .map_or(0, |(i, _)| i);
                ring[slot].0 = r;
                horizontal(r, &mut ring[slot].1);
            }
        }
        let row_of = |r: usize| -> &[i32] {
            ring.iter()
                .find(|(y, _)| *y == r)
                .map_or(&[][..], |(_, v)| v.as_slice())
        };
        let (r0, r1, r2, r3) = (
            row_of(rows[0]),
            row_of(rows[1]),
            row_of(rows[2]),
            row_of(rows[3]),
        );
        for (i, o) in out.iter_mut().enumerate() {
            // Intermediates carry H_BITS; scale them down first so the sum
            // of four products stays inside i32.
            let v = (r0[i] >> 4) * wt[0]
                + (r1[i] >> 4) * wt[1]
                + (r2[i] >> 4) * wt[2]
                + (r3[i] >> 4) * wt[3];
            *o = ((v + (round >> 4)) >> (shift - 4)).clamp(0, 255) as u8;
        }
        if !opaque {
            for p in out.chunks_exact_mut(4) {
                let a = u32::from(p[3]);
                for c in &mut p[..3] {
                    *c = (u32::from(*c) * 255 + a / 2)
                        .checked_div(a)
                        .map_or(0, |v| v.min(255) as u8);
                }
            }
        }
        sink(&out)?;
    }
    Ok(())
}

/// The upscaled image in memory.
pub fn upscale(img: &RgbaImage, factor: u32) -> RgbaImage {
    let (ow, oh) = (img.width() * factor, img.height() * factor);
    let mut buf = Vec::with_capacity(ow as usize * oh as usize * 4);
    let _ = upscale_rows(img, factor, |row| {
        buf.extend_from_slice(row);
        Ok::<(), ()>(())
    });
    RgbaImage::from_raw(ow, oh, buf).unwrap_or_else(|| RgbaImage::new(ow, oh))
}

/// Streams the upscaled image as PNG into `out`; memory stays bounded by the
/// source and a few rows however large the result.
pub fn upscale_png(img: &RgbaImage, factor: u32, out: impl Write) -> Result<(), ImagingError> {
    let encode = |e: png::EncodingError| ImagingError::Encode(e.to_string());
    let mut encoder = png::Encoder::new(out, img.width() * factor, img.height() * factor);
    encoder.set_color(png::ColorType::Rgba);
    encoder.set_depth(png::BitDepth::Eight);
    encoder.set_compression(png::Compression::Fast);
    let mut writer = encoder.write_header().map_err(encode)?;
    let mut stream = writer.stream_writer().map_err(encode)?;
    upscale_rows(img, factor, |row| stream.write_all(row))
        .map_err(|e| ImagingError::Encode(e.to_string()))?;
    stream.finish().map_err(encode)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dimensions_flat_areas_alpha_and_determinism() {
        let img = crate::scene::sample_scene(5, 40, 30);
        for k in FACTORS {
            let up = upscale(&img, k);
            assert_eq!(up.dimensions(), (40 * k, 30 * k));
            assert_eq!(up, upscale(&img, k));
        }
        let flat = RgbaImage::from_pixel(9, 7, image::Rgba([10, 200, 90, 255]));
        assert!(
            upscale(&flat, 4)
                .pixels()
                .all(|p| p.0 == [10, 200, 90, 255])
        );
        // A transparent half stays transparent, and its colour does not bleed.
        let half = RgbaImage::from_fn(16, 8, |x, _| {
            if x < 8 {
                image::Rgba([255, 0, 0, 0])
            } else {
                image::Rgba([0, 0, 255, 255])
            }
        });
        let up = upscale(&half, 2);
        assert_eq!(up.get_pixel(2, 4).0[3], 0);
        assert_eq!(up.get_pixel(30, 4).0, [0, 0, 255, 255]);
        assert!(
            up.pixels().filter(|p| p.0[3] > 0).all(|p| p.0[0] < 8),
            "red bled into the edge"
        );
    }

    #[test]
    fn quality_matches_the_reference_filter() {
        // Against image's own Catmull-Rom resize: same filter, so nearly the
        // same pixels (fixed-point rounding only).
        let img = crate::scene::sample_scene(6, 48, 36);
        let ours = upscale(&img, 2);
        let reference =
            image::imageops::resize(&img, 96, 72, image::imageops::FilterType::CatmullRom);
        let diff: f64 = ours
            .as_raw()
            .iter()
            .zip(reference.as_raw())
            .map(|(a, b)| f64::from(a.abs_diff(*b)))
            .sum::<f64>()
            / ours.as_raw().len() as f64;
        assert!(diff < 2.0, "mean abs difference {diff}");
    }

    #[test]
    fn streams_a_valid_png() {
        let img = crate::scene::sample_scene(7, 20, 10);
        let mut out = Vec::new();
        upscale_png(&img, 4, &mut out).unwrap();
        let back = crate::decode(&out, crate::DecodeLimits::default()).unwrap();
        assert_eq!(back, upscale(&img, 4));
    }
}

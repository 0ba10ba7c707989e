//! `atelier bench passes`: the post-process passes in megapixels per second,
//! each against a straightforward baseline measured in the same run, plus the
//! upscale's quality against that baseline and its peak memory on a huge
//! image (`atelier bench upscale-memory`, a separate process so the high-water
//! mark is its own).

use std::time::{Duration, Instant};

use image::RgbaImage;
use imaging::passes::{bg_remove, color, upscale};

use crate::cli::CliError;

/// Runs `f` until at least `min` has passed; returns the time per call.
fn per_call(min: Duration, mut f: impl FnMut()) -> Duration {
    f();
    let (start, mut n) = (Instant::now(), 0u32);
    while start.elapsed() < min || n < 3 {
        f();
        n += 1;
    }
    start.elapsed() / n
}

fn mp(pixels: u64, t: Duration) -> f64 {
    pixels as f64 / 1e6 / t.as_secs_f64()
}

/// Peak signal-to-noise ratio of `b` against `a`, in dB.
fn psnr(a: &RgbaImage, b: &RgbaImage) -> f64 {
    let mse = a
        .as_raw()
        .iter()
        .zip(b.as_raw())
        .map(|(x, y)| (f64::from(*x) - f64::from(*y)).powi(2))
        .sum::<f64>()
        / a.as_raw().len() as f64;
    10.0 * (255.0f64 * 255.0 / mse.max(1e-9)).log10()
}

pub fn run(side: u32) -> Result<(), CliError> {
    let (w, h) = (side, side * 3 / 4);
    let img = imaging::scene::sample_scene(1, w, h);
    let px = u64::from(w) * u64::from(h);
    let min = Duration::from_millis(700);
    println!("Pass benchmark (single thread, {w}x{h} sample scene)\n");
    println!("| pass | ours MP/s | baseline | baseline MP/s | ratio |\n|---|---:|---|---:|---:|");
    for k in upscale::FACTORS {
        let ours = per_call(min, || drop(upscale::upscale(&img, k)));
        let base = per_call(min, || {
            drop(image::imageops::resize(
                &img,
                w * k,
                h * k,
                image::imageops::FilterType::CatmullRom,
            ))
        });
        let out_px = px * u64::from(k * k);
        println!(
            "| upscale {k}x (output MP/s) | {:.1} | `imageops::resize` Catmull-Rom | {:.1} | {:.2} |",
            mp(out_px, ours),
            mp(out_px, base),
            base.as_secs_f64() / ours.as_secs_f64()
        );
    }
    // Quality: shrink by 2 (area average), enlarge back, compare with the original.
    let small = image::imageops::resize(&img, w / 2, h / 2, image::imageops::FilterType::Triangle);
    let ours = upscale::upscale(&small, 2);
    let base = image::imageops::resize(&small, w, h, image::imageops::FilterType::CatmullRom);
    let lanczos = image::imageops::resize(&small, w, h, image::imageops::FilterType::Lanczos3);
    println!(
        "\nUpscale quality (shrink 2x, enlarge 2x, PSNR against the original): ours {:.2} dB, Catmull-Rom baseline {:.2} dB, Lanczos3 {:.2} dB\n",
        psnr(&img, &ours),
        psnr(&img, &base),
        psnr(&img, &lanczos)
    );
    let settings = imaging::guard::GuardSettings {
        max_chroma_delta: 2.0,
        enforce_grayscale: true,
        fail_on_chroma_exceed: true,
    };
    let guard = per_call(min, || drop(imaging::guard::check(&img, &settings)));
    println!("| pass | MP/s (one core) |\n|---|---:|");
    println!("| output-guard metric | {:.1} |", mp(px, guard));
    let bg = bg_remove::BgRemoveSettings::default();
    let paper = RgbaImage::from_fn(w, h, |x, y| {
        if (w / 4..3 * w / 4).contains(&x) && (h / 4..3 * h / 4).contains(&y) {
            *img.get_pixel(x, y)
        } else {
            image::Rgba([245, 242, 236, 255])
        }
    });
    let removal = per_call(min, || drop(bg_remove::remove_background(&paper, &bg)));
    println!(
        "| background removal (border flood fill + feather) | {:.1} |",
        mp(px, removal)
    );
    let warm = color::ColorProfile::find("cinematic_warm", &[])
        .ok_or_else(|| CliError::Service("missing built-in profile".into()))?;
    let graded = per_call(min, || drop(color::apply(&img, &warm)));
    println!("| colour profile | {:.1} |", mp(px, graded));
    Ok(())
}

/// Peak resident memory of this process so far, from /proc (Linux).
pub(crate) fn peak_rss_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

pub fn upscale_memory(side: u32, factor: u32, out: &std::path::Path) -> Result<(), CliError> {
    let img = imaging::scene::sample_scene(2, side, side);
    let start = Instant::now();
    let file = std::io::BufWriter::new(std::fs::File::create(out)?);
    upscale::upscale_png(&img, factor, file).map_err(|e| CliError::Service(e.to_string()))?;
    let took = start.elapsed();
    let bytes = std::fs::metadata(out)?.len();
    std::fs::remove_file(out)?;
    println!(
        "| {factor}x upscale of {side}x{side} to {}x{} PNG (streamed to a file) | {:.1} s | peak RSS {:.0} MiB | output {:.0} MiB |",
        side * factor,
        side * factor,
        took.as_secs_f64(),
        peak_rss_bytes().unwrap_or(0) as f64 / 1048576.0,
        bytes as f64 / 1048576.0
    );
    Ok(())
}

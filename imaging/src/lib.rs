//! Pure image functions over the `image` crate: decoding with limits, PNG
//! encoding, the output-guard metric, the built-in local provider's stage
//! effects and the sample scenes. No I/O here; memory is bounded by the pixel
//! limit checked before any decode. [`cpu::run`] is where callers run this
//! work from async code.

pub mod cpu;
pub mod effects;
pub mod guard;
pub mod passes;
pub mod scene;

use std::io::Cursor;

use image::{ImageFormat, ImageReader, RgbaImage};

/// Failures of image work; all of them are input problems or limits.
#[derive(Debug, thiserror::Error)]
pub enum ImagingError {
    #[error("cannot decode the image: {0}")]
    Decode(String),
    #[error("unsupported image format: {0}")]
    Unsupported(String),
    #[error("image too large: {width}x{height} exceeds the {max_pixels}-pixel limit")]
    TooLarge {
        width: u32,
        height: u32,
        max_pixels: u64,
    },
    #[error("image file too large: {bytes} bytes exceeds the {max_bytes}-byte limit")]
    TooManyBytes { bytes: usize, max_bytes: usize },
    #[error("cannot encode the image: {0}")]
    Encode(String),
}

/// Limits applied before decoding.
#[derive(Clone, Copy, Debug)]
pub struct DecodeLimits {
    pub max_bytes: usize,
    pub max_pixels: u64,
}

impl Default for DecodeLimits {
    fn default() -> Self {
        Self {
            max_bytes: 64 * 1024 * 1024,
            max_pixels: 64 * 1024 * 1024,
        }
    }
}

/// Rejects images over `max_pixels` from their header dimensions alone, before
/// any pixel buffer is allocated (decompression bombs).
pub fn check_dimensions(width: u32, height: u32, max_pixels: u64) -> Result<(), ImagingError> {
    if u64::from(width) * u64::from(height) > max_pixels || width == 0 || height == 0 {
        return Err(ImagingError::TooLarge {
            width,
            height,
            max_pixels,
        });
    }
    Ok(())
}

/// Decodes PNG, JPEG or WebP into RGBA after checking byte size, format and
/// header dimensions.
pub fn decode(bytes: &[u8], limits: DecodeLimits) -> Result<RgbaImage, ImagingError> {
    if bytes.len() > limits.max_bytes {
        return Err(ImagingError::TooManyBytes {
            bytes: bytes.len(),
            max_bytes: limits.max_bytes,
        });
    }
    let reader = ImageReader::new(Cursor::new(bytes))
        .with_guessed_format()
        .map_err(|e| ImagingError::Decode(e.to_string()))?;
    match reader.format() {
        Some(ImageFormat::Png | ImageFormat::Jpeg | ImageFormat::WebP) => {}
        Some(other) => return Err(ImagingError::Unsupported(format!("{other:?}"))),
        None => return Err(ImagingError::Unsupported("unknown".into())),
    }
    let (w, h) = reader
        .into_dimensions()
        .map_err(|e| ImagingError::Decode(e.to_string()))?;
    check_dimensions(w, h, limits.max_pixels)?;
    let mut reader = ImageReader::new(Cursor::new(bytes))
        .with_guessed_format()
        .map_err(|e| ImagingError::Decode(e.to_string()))?;
    let mut image_limits = image::Limits::default();
    image_limits.max_alloc = Some(limits.max_pixels.saturating_mul(4).saturating_add(1 << 20));
    reader.limits(image_limits);
    Ok(reader
        .decode()
        .map_err(|e| ImagingError::Decode(e.to_string()))?
        .to_rgba8())
}

/// PNG bytes of `img` (fast compression: throughput over size).
pub fn encode_png(img: &RgbaImage) -> Result<Vec<u8>, ImagingError> {
    let mut out = Vec::with_capacity(img.as_raw().len() / 2 + 1024);
    let encoder = image::codecs::png::PngEncoder::new_with_quality(
        &mut out,
        image::codecs::png::CompressionType::Fast,
        image::codecs::png::FilterType::Sub,
    );
    img.write_with_encoder(encoder)
        .map_err(|e| ImagingError::Encode(e.to_string()))?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pixel_limit() {
        assert!(check_dimensions(1024, 1024, 4_194_304).is_ok());
        assert!(check_dimensions(65_535, 65_535, 4_194_304).is_err());
        assert!(check_dimensions(0, 10, 100).is_err());
    }

    #[test]
    fn decode_round_trip_and_rejections() {
        let img = scene::sample_scene(3, 64, 48);
        let png = encode_png(&img).unwrap();
        let back = decode(&png, DecodeLimits::default()).unwrap();
        assert_eq!(back, img);
        assert!(matches!(
            decode(b"not an image", DecodeLimits::default()),
            Err(ImagingError::Unsupported(_))
        ));
        let tight = DecodeLimits {
            max_bytes: 1 << 20,
            max_pixels: 1000,
        };
        assert!(matches!(
            decode(&png, tight),
            Err(ImagingError::TooLarge { .. })
        ));
        let tiny = DecodeLimits {
            max_bytes: 10,
            max_pixels: 1 << 20,
        };
        assert!(matches!(
            decode(&png, tiny),
            Err(ImagingError::TooManyBytes { .. })
        ));
        assert!(decode(&png[..png.len() / 2], DecodeLimits::default()).is_err());
    }
}

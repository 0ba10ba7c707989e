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

/// What reading an image's header may allocate: PNG inflates its colour
/// profile (iCCP) while reading the header, and a 1 MB file can hold a
/// profile that inflates to a gigabyte. Real profiles are well below this.
const HEADER_ALLOC: u64 = 8 << 20;

fn reader(bytes: &[u8], max_alloc: u64) -> Result<ImageReader<Cursor<&[u8]>>, ImagingError> {
    let mut reader = ImageReader::new(Cursor::new(bytes))
        .with_guessed_format()
        .map_err(|e| ImagingError::Decode(e.to_string()))?;
    match reader.format() {
        Some(ImageFormat::Png | ImageFormat::Jpeg | ImageFormat::WebP) => {}
        Some(other) => return Err(ImagingError::Unsupported(format!("{other:?}"))),
        None => return Err(ImagingError::Unsupported("unknown".into())),
    }
    let mut limits = image::Limits::default();
    limits.max_alloc = Some(max_alloc);
    reader.limits(limits);
    Ok(reader)
}

fn decode_error(e: image::ImageError) -> ImagingError {
    match e {
        image::ImageError::Limits(_) => ImagingError::Decode(
            "the image's metadata or pixels exceed the memory limit (e.g. an oversized compressed colour profile)".into(),
        ),
        other => ImagingError::Decode(other.to_string()),
    }
}

/// An image's dimensions from its header, after checking byte size and
/// format; nothing the header holds may inflate beyond a small bound.
pub fn dimensions(bytes: &[u8], limits: DecodeLimits) -> Result<(u32, u32), ImagingError> {
    if bytes.len() > limits.max_bytes {
        return Err(ImagingError::TooManyBytes {
            bytes: bytes.len(),
            max_bytes: limits.max_bytes,
        });
    }
    reader(bytes, HEADER_ALLOC)?
        .into_dimensions()
        .map_err(decode_error)
}

/// Decodes PNG, JPEG or WebP into RGBA after checking byte size, format and
/// header dimensions; every allocation of the decoder is bounded.
pub fn decode(bytes: &[u8], limits: DecodeLimits) -> Result<RgbaImage, ImagingError> {
    let (w, h) = dimensions(bytes, limits)?;
    check_dimensions(w, h, limits.max_pixels)?;
    let budget = (u64::from(w) * u64::from(h))
        .saturating_mul(8)
        .saturating_add(HEADER_ALLOC);
    Ok(reader(bytes, budget)?
        .decode()
        .map_err(decode_error)?
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

    /// A PNG whose colour profile inflates to far more than its file size.
    fn png_with_iccp(profile_len: usize) -> Vec<u8> {
        use std::io::Write;
        let png = encode_png(&scene::sample_scene(1, 8, 8)).unwrap();
        let mut z = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::best());
        let block = vec![0u8; 1 << 20];
        let mut left = profile_len;
        while left > 0 {
            let n = left.min(block.len());
            z.write_all(&block[..n]).unwrap();
            left -= n;
        }
        let mut data = b"bomb\0\0".to_vec();
        data.extend(z.finish().unwrap());
        let mut chunk = (data.len() as u32).to_be_bytes().to_vec();
        let mut typed = b"iCCP".to_vec();
        typed.extend(&data);
        chunk.extend(&typed);
        chunk.extend(crc32fast::hash(&typed).to_be_bytes());
        // After the signature (8) and IHDR (8 + 13 + 4).
        let mut out = png[..33].to_vec();
        out.extend(chunk);
        out.extend(&png[33..]);
        out
    }

    /// The profile inflates only up to the header bound (then the decoder
    /// drops it); the image itself decodes. The server's memory under such
    /// uploads is measured by the integration tests (tests/it/hostile.rs).
    #[test]
    fn a_colour_profile_bomb_does_not_inflate_beyond_the_bound() {
        let bomb = png_with_iccp(256 << 20);
        assert!(bomb.len() < 1 << 20, "{} bytes", bomb.len());
        assert_eq!(dimensions(&bomb, DecodeLimits::default()).unwrap(), (8, 8));
        assert_eq!(
            decode(&bomb, DecodeLimits::default()).unwrap().dimensions(),
            (8, 8)
        );
        assert!(decode(&png_with_iccp(4096), DecodeLimits::default()).is_ok());
    }
}

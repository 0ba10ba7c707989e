//! Pure image functions over the `image` crate (output guard metrics, passes,
//! thumbnails), added with the execution-engine and provider issues. No I/O here.

/// Failures of image work; all of them are the caller's input problems or limits.
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pixel_limit() {
        assert!(check_dimensions(1024, 1024, 4_194_304).is_ok());
        assert!(check_dimensions(65_535, 65_535, 4_194_304).is_err());
        assert!(check_dimensions(0, 10, 100).is_err());
    }
}

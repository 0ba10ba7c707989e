//! Thumbnails for the feed and the console: at most `max_side` pixels on the
//! longer side, WebP (lossless: the only WebP encoder in `image`).

use image::RgbaImage;

use crate::ImagingError;

/// The WebP bytes and the thumbnail's dimensions.
pub fn thumbnail_webp(
    img: &RgbaImage,
    max_side: u32,
) -> Result<(Vec<u8>, (u32, u32)), ImagingError> {
    let (w, h) = img.dimensions();
    let scale = f64::from(max_side.max(1)) / f64::from(w.max(h).max(1));
    let small = if scale < 1.0 {
        let tw = ((f64::from(w) * scale).round() as u32).max(1);
        let th = ((f64::from(h) * scale).round() as u32).max(1);
        image::imageops::thumbnail(img, tw, th)
    } else {
        img.clone()
    };
    let mut out = Vec::new();
    small
        .write_with_encoder(image::codecs::webp::WebPEncoder::new_lossless(&mut out))
        .map_err(|e| ImagingError::Encode(e.to_string()))?;
    Ok((out, small.dimensions()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn thumbnails_are_small_webp_with_the_aspect_ratio() {
        let img = crate::scene::sample_scene(8, 300, 150);
        let (webp, dims) = thumbnail_webp(&img, 64).unwrap();
        assert_eq!(&webp[8..12], b"WEBP");
        assert_eq!(dims, (64, 32));
        let back = crate::decode(&webp, crate::DecodeLimits::default()).unwrap();
        assert_eq!(back.dimensions(), (64, 32));
        let tiny = RgbaImage::from_pixel(10, 5, image::Rgba([1, 2, 3, 4]));
        let back = crate::decode(
            &thumbnail_webp(&tiny, 64).unwrap().0,
            crate::DecodeLimits::default(),
        )
        .unwrap();
        assert_eq!(back, tiny, "never enlarged, alpha kept");
    }
}

//! Decoding with caps on decoded size, resizing, PNG encoding.

use super::Image;
use crate::error::{Error, Result};
use image::{DynamicImage, ImageReader};
use std::io::Cursor;

/// Caps applied when decoding an untrusted image.
#[derive(Debug, Clone, Copy)]
pub struct DecodeLimits {
    /// Largest `width * height` accepted (default 64 Mpixel).
    pub max_pixels: u64,
}

impl Default for DecodeLimits {
    fn default() -> Self {
        DecodeLimits { max_pixels: 64 * 1024 * 1024 }
    }
}

/// Decodes an encoded image (any format this build of `image` reads) to
/// 8-bit grayscale or RGB. `name` is used in error messages.
pub fn decode_image(bytes: &[u8], name: &str, limits: &DecodeLimits) -> Result<Image> {
    let decode_err = |source| Error::Decode { path: name.to_string(), source };
    let reader = ImageReader::new(Cursor::new(bytes))
        .with_guessed_format()
        .map_err(|e| decode_err(image::ImageError::IoError(e)))?;
    let (width, height) = reader.clone_dims().map_err(decode_err)?;
    if width as u64 * height as u64 > limits.max_pixels {
        return Err(Error::TooManyPixels { path: name.to_string(), width, height, limit: limits.max_pixels });
    }
    let mut reader = ImageReader::new(Cursor::new(bytes))
        .with_guessed_format()
        .map_err(|e| decode_err(image::ImageError::IoError(e)))?;
    let mut l = image::Limits::default();
    l.max_alloc = Some(limits.max_pixels.saturating_mul(16));
    reader.limits(l);
    let img = reader.decode().map_err(decode_err)?;
    Ok(from_dynamic(img))
}

trait CloneDims {
    fn clone_dims(self) -> image::ImageResult<(u32, u32)>;
}

impl CloneDims for ImageReader<Cursor<&[u8]>> {
    fn clone_dims(self) -> image::ImageResult<(u32, u32)> {
        self.into_dimensions()
    }
}

fn from_dynamic(img: DynamicImage) -> Image {
    let gray = !img.color().has_color();
    let (width, height) = (img.width(), img.height());
    if gray {
        Image { width, height, channels: 1, pixels: img.into_luma8().into_raw() }
    } else {
        Image { width, height, channels: 3, pixels: img.into_rgb8().into_raw() }
    }
}

/// Converts to `channels` (1 or 3) and resizes to `width x height` with a
/// bilinear (triangle) filter. Returns the input unchanged when it already fits.
pub fn resize(img: &Image, channels: u8, width: u32, height: u32) -> Image {
    let converted = convert_channels(img, channels);
    if converted.width == width && converted.height == height {
        return converted;
    }
    let filter = image::imageops::FilterType::Triangle;
    let pixels = if channels == 1 {
        let buf = image::GrayImage::from_raw(converted.width, converted.height, converted.pixels)
            .expect("buffer length matches dimensions");
        image::imageops::resize(&buf, width, height, filter).into_raw()
    } else {
        let buf = image::RgbImage::from_raw(converted.width, converted.height, converted.pixels)
            .expect("buffer length matches dimensions");
        image::imageops::resize(&buf, width, height, filter).into_raw()
    };
    Image { width, height, channels, pixels }
}

fn convert_channels(img: &Image, channels: u8) -> Image {
    match (img.channels, channels) {
        (a, b) if a == b => img.clone(),
        (1, 3) => Image {
            width: img.width,
            height: img.height,
            channels: 3,
            pixels: img.pixels.iter().flat_map(|&p| [p, p, p]).collect(),
        },
        (3, 1) => Image {
            width: img.width,
            height: img.height,
            channels: 1,
            pixels: img
                .pixels
                .chunks_exact(3)
                .map(|p| ((p[0] as u32 * 299 + p[1] as u32 * 587 + p[2] as u32 * 114 + 500) / 1000) as u8)
                .collect(),
        },
        (a, b) => panic!("unsupported channel conversion {a} -> {b}"),
    }
}

/// Encodes an image as PNG (deterministic for a given build).
pub fn encode_png(img: &Image) -> Vec<u8> {
    let mut out = Vec::new();
    let color = if img.channels == 1 { image::ExtendedColorType::L8 } else { image::ExtendedColorType::Rgb8 };
    let enc = image::codecs::png::PngEncoder::new(&mut out);
    image::ImageEncoder::write_image(enc, &img.pixels, img.width, img.height, color)
        .expect("encoding to memory cannot fail for a consistent buffer");
    out
}

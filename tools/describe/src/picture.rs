//! An image file checked and made ready to send: decoded whole (so a corrupt or truncated file is
//! caught here, not by the endpoint), its dimensions bounded before any pixel is decoded (a
//! decompression bomb never allocates), downsized to fit `max_side`, re-encoded as JPEG.

use base64::Engine as _;
use image::{DynamicImage, ImageFormat, ImageReader, Limits};
use std::io::{Cursor, Read};
use std::path::Path;

/// Limits on what is accepted.
#[derive(Clone, Copy, Debug)]
pub struct Bounds {
    /// Largest file read, in bytes.
    pub max_bytes: u64,
    /// Largest width × height decoded.
    pub max_pixels: u64,
    /// Longest side of the image sent.
    pub max_side: u32,
    /// JPEG quality of the image sent (1-100).
    pub quality: u8,
}

/// An image ready to send.
#[derive(Debug)]
pub struct Prepared {
    /// `data:image/jpeg;base64,...`
    pub data_url: String,
    /// SHA-256 of the file as read (the image record's `sha256`).
    pub sha256: String,
    /// The file's format and size, and the size sent.
    pub format: &'static str,
    pub width: u32,
    pub height: u32,
    pub sent_width: u32,
    pub sent_height: u32,
}

/// Reads, validates and re-encodes the image at `path`; the error is the reason it is rejected.
pub fn prepare(path: &Path, b: Bounds) -> Result<Prepared, String> {
    let file = std::fs::File::open(path).map_err(|e| format!("cannot open: {e}"))?;
    let mut bytes = Vec::new();
    file.take(b.max_bytes + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| format!("cannot read: {e}"))?;
    if bytes.is_empty() {
        return Err("empty file".into());
    }
    if bytes.len() as u64 > b.max_bytes {
        return Err(format!("over --max-image-bytes ({} bytes)", b.max_bytes));
    }
    let sha256 = hex::encode(<sha2::Sha256 as sha2::Digest>::digest(&bytes));
    let format = image::guess_format(&bytes).map_err(|_| "not a JPEG, PNG, GIF or WebP image")?;
    let name = match format {
        ImageFormat::Jpeg => "jpeg",
        ImageFormat::Png => "png",
        ImageFormat::Gif => "gif",
        ImageFormat::WebP => "webp",
        _ => return Err("not a JPEG, PNG, GIF or WebP image".into()),
    };
    let reader = || ImageReader::with_format(Cursor::new(&bytes), format);
    let (width, height) = reader()
        .into_dimensions()
        .map_err(|e| format!("unreadable {name} header: {e}"))?;
    if width == 0 || height == 0 {
        return Err(format!("zero-size image ({width}x{height})"));
    }
    let pixels = u64::from(width) * u64::from(height);
    if pixels > b.max_pixels {
        return Err(format!(
            "{width}x{height} is over --max-pixels ({}): a decompression bomb?",
            b.max_pixels
        ));
    }
    let mut decoder = reader();
    let mut limits = Limits::default();
    limits.max_image_width = Some(width);
    limits.max_image_height = Some(height);
    // RGBA at 16 bits a channel, the most a decoder holds per pixel, and some room.
    limits.max_alloc = Some(pixels.saturating_mul(8).saturating_add(64 << 20));
    decoder.limits(limits);
    let decoded = decoder
        .decode()
        .map_err(|e| format!("corrupt or truncated {name}: {e}"))?;
    let fitted = if width.max(height) > b.max_side {
        decoded.resize(
            b.max_side,
            b.max_side,
            image::imageops::FilterType::Triangle,
        )
    } else {
        decoded
    };
    // JPEG has no alpha: flattened onto white, as a viewer shows a transparent picture.
    let rgb = flatten(fitted);
    let mut jpeg = Vec::new();
    image::codecs::jpeg::JpegEncoder::new_with_quality(&mut jpeg, b.quality)
        .encode_image(&rgb)
        .map_err(|e| format!("cannot encode as JPEG: {e}"))?;
    let data_url = format!(
        "data:image/jpeg;base64,{}",
        base64::engine::general_purpose::STANDARD.encode(&jpeg)
    );
    Ok(Prepared {
        data_url,
        sha256,
        format: name,
        width,
        height,
        sent_width: rgb.width(),
        sent_height: rgb.height(),
    })
}

fn flatten(img: DynamicImage) -> image::RgbImage {
    if !img.color().has_alpha() {
        return img.to_rgb8();
    }
    let rgba = img.to_rgba8();
    image::RgbImage::from_fn(rgba.width(), rgba.height(), |x, y| {
        let [r, g, b, a] = rgba.get_pixel(x, y).0;
        let over = |c: u8| ((u16::from(c) * u16::from(a) + 255 * (255 - u16::from(a))) / 255) as u8;
        image::Rgb([over(r), over(g), over(b)])
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    const BOUNDS: Bounds = Bounds {
        max_bytes: 1 << 20,
        max_pixels: 10_000_000,
        max_side: 64,
        quality: 85,
    };

    fn png(w: u32, h: u32) -> Vec<u8> {
        let img = image::RgbaImage::from_fn(w, h, |x, y| image::Rgba([x as u8, y as u8, 7, 128]));
        let mut out = Vec::new();
        img.write_to(&mut Cursor::new(&mut out), ImageFormat::Png)
            .unwrap();
        out
    }

    fn at(dir: &Path, name: &str, bytes: &[u8]) -> std::path::PathBuf {
        let p = dir.join(name);
        std::fs::write(&p, bytes).unwrap();
        p
    }

    #[test]
    fn a_big_image_is_downsized_and_sent_as_jpeg() {
        let dir = tempfile::tempdir().unwrap();
        let p = prepare(&at(dir.path(), "a.png", &png(200, 100)), BOUNDS).unwrap();
        assert_eq!((p.width, p.height, p.format), (200, 100, "png"));
        assert_eq!((p.sent_width, p.sent_height), (64, 32));
        let b64 = p.data_url.strip_prefix("data:image/jpeg;base64,").unwrap();
        let jpeg = base64::engine::general_purpose::STANDARD
            .decode(b64)
            .unwrap();
        assert_eq!(image::guess_format(&jpeg).unwrap(), ImageFormat::Jpeg);
        assert_eq!(image::load_from_memory(&jpeg).unwrap().width(), 64);
    }

    #[test]
    fn bad_images_are_refused_with_a_reason() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let err = |name: &str, bytes: &[u8]| prepare(&at(d, name, bytes), BOUNDS).unwrap_err();
        assert_eq!(err("empty.png", b""), "empty file");
        assert!(err("text.png", b"hello").contains("not a JPEG"));
        let whole = png(50, 50);
        assert!(err("cut.png", &whole[..whole.len() / 2]).contains("corrupt or truncated"));
        // More pixels than allowed: refused from the header, before decoding.
        let few = Bounds {
            max_pixels: 2499,
            ..BOUNDS
        };
        let bomb = prepare(&at(d, "bomb.png", &whole), few).unwrap_err();
        assert!(bomb.contains("decompression bomb"), "{bomb}");
        let small = Bounds {
            max_bytes: 10,
            ..BOUNDS
        };
        assert!(
            prepare(&at(d, "big.png", &whole), small)
                .unwrap_err()
                .contains("--max-image-bytes")
        );
        assert!(
            prepare(&d.join("missing.png"), BOUNDS)
                .unwrap_err()
                .contains("cannot open")
        );
    }
}

//! Images in and out of the models: decoding user uploads (PNG/JPEG/GIF of any size) to the
//! model's resolution, and encoding results as PNG grids or animated GIFs.
//!
//! Pixels travel as `f32` in [0, 1], row-major, channels interleaved (grey: one channel).

use std::io::Cursor;

use image::codecs::gif::{GifEncoder, Repeat};
use image::imageops::FilterType;
use image::{DynamicImage, Frame, GrayImage, ImageFormat, RgbImage, RgbaImage};

use crate::{Error, Result};

/// Upper bound on decoded pixels, so a small "decompression bomb" cannot exhaust memory.
const MAX_PIXELS: u64 = 64 * 1024 * 1024;

/// Decodes an encoded image (format sniffed from its bytes). Only a whole file is a
/// picture: a decoder error, a short read or a missing end marker is an error naming
/// `what`, never the partial picture a lenient decoder would return.
pub fn decode(bytes: &[u8], what: &str) -> Result<DynamicImage> {
    let reader = image::ImageReader::new(Cursor::new(bytes))
        .with_guessed_format()
        .map_err(|e| Error::invalid(format!("{what}: cannot read the image: {e}")))?;
    let Some(format) = reader.format() else {
        return Err(Error::invalid(format!(
            "{what}: not an image (PNG, JPEG or GIF expected; {} bytes of unknown format)",
            bytes.len()
        )));
    };
    let (w, h) = reader
        .into_dimensions()
        .map_err(|e| Error::invalid(format!("{what}: corrupt image: {e}")))?;
    if w == 0 || h == 0 || w as u64 * h as u64 > MAX_PIXELS {
        return Err(Error::invalid(format!(
            "{what}: a {w}×{h} image is outside the accepted sizes (1 to {MAX_PIXELS} pixels)"
        )));
    }
    let truncated = |end: &str| {
        Error::invalid(format!(
            "{what}: truncated {format:?} file ({} bytes, {end} missing)",
            bytes.len()
        ))
    };
    match format {
        // `image` decodes JPEG leniently (grey fill past the end of the data, as browsers
        // do), so JPEG goes to its decoder directly, in strict mode.
        ImageFormat::Jpeg if !ends_jpeg(bytes) => return Err(truncated("the end of image marker")),
        ImageFormat::Jpeg => return decode_jpeg_strict(bytes, what),
        // PNG and GIF decoders stop once they have the first picture; the end marker
        // tells a whole file from one cut short after it.
        ImageFormat::Png if !ends_png(bytes) => return Err(truncated("the IEND chunk")),
        ImageFormat::Gif if bytes.last() != Some(&0x3B) => return Err(truncated("the trailer")),
        _ => {}
    }
    image::load_from_memory_with_format(bytes, format)
        .map_err(|e| Error::invalid(format!("{what}: corrupt image: {e}")))
}

/// Whether a PNG file holds its closing IEND chunk (length 0, type, fixed CRC).
fn ends_png(bytes: &[u8]) -> bool {
    const IEND: &[u8] = b"\0\0\0\0IEND\xAE\x42\x60\x82";
    bytes.windows(IEND.len()).rev().any(|w| w == IEND)
}

/// Whether a JPEG file reaches its end-of-image marker, walking its segments (their
/// lengths skip embedded thumbnails, which hold markers of their own) and scans (where
/// 0xFF is always followed by a stuffed zero or a restart marker). Hand-written: the
/// decoders pad a short scan with zeros and return the picture.
fn ends_jpeg(b: &[u8]) -> bool {
    let mut i = 2;
    while i + 1 < b.len() {
        if b[i] != 0xFF {
            return false;
        }
        match b[i + 1] {
            0xFF => {
                i += 1;
                continue;
            }
            0xD9 => return true,
            0x01 | 0xD0..=0xD7 => {
                i += 2;
                continue;
            }
            _ => {}
        }
        let Some(len) = b.get(i + 2..i + 4) else {
            return false;
        };
        let marker = b[i + 1];
        i += 2 + u16::from_be_bytes([len[0], len[1]]) as usize;
        if marker == 0xDA {
            while i + 1 < b.len()
                && !(b[i] == 0xFF && b[i + 1] != 0 && !(0xD0..=0xD7).contains(&b[i + 1]))
            {
                i += 1;
            }
        }
    }
    false
}

fn decode_jpeg_strict(bytes: &[u8], what: &str) -> Result<DynamicImage> {
    use zune_core::{bytestream::ZCursor, colorspace::ColorSpace, options::DecoderOptions};
    let options = DecoderOptions::default()
        .set_strict_mode(true)
        .set_max_width(usize::MAX)
        .set_max_height(usize::MAX)
        .jpeg_set_out_colorspace(ColorSpace::RGB);
    let mut decoder = zune_jpeg::JpegDecoder::new_with_options(ZCursor::new(bytes), options);
    let corrupt = |e: &dyn std::fmt::Display| {
        Error::invalid(format!("{what}: corrupt or truncated JPEG: {e}"))
    };
    let pixels = decoder.decode().map_err(|e| corrupt(&e))?;
    let (w, h) = decoder
        .dimensions()
        .ok_or_else(|| corrupt(&"no frame header"))?;
    RgbImage::from_raw(w as u32, h as u32, pixels)
        .map(DynamicImage::ImageRgb8)
        .ok_or_else(|| corrupt(&"the decoder returned fewer pixels than the frame holds"))
}

/// An image of any size and colour type as `side`×`side` grey levels in [0, 1]
/// (luma, then a Lanczos resize of the whole frame, as MNIST's digits fill theirs).
pub fn to_grey_square(img: &DynamicImage, side: u32) -> Vec<f32> {
    let grey = img.to_luma8();
    let grey = if grey.dimensions() == (side, side) {
        grey
    } else {
        image::imageops::resize(&grey, side, side, FilterType::Lanczos3)
    };
    grey.into_raw()
        .into_iter()
        .map(|p| p as f32 / 255.0)
        .collect()
}

/// An image resized to `width`×`height` RGB in [0, 1].
pub fn to_rgb(img: &DynamicImage, width: u32, height: u32) -> Vec<f32> {
    let rgb = img.to_rgb8();
    let rgb = if rgb.dimensions() == (width, height) {
        rgb
    } else {
        image::imageops::resize(&rgb, width, height, FilterType::Lanczos3)
    };
    rgb.into_raw()
        .into_iter()
        .map(|p| p as f32 / 255.0)
        .collect()
}

fn quantize(v: f32) -> u8 {
    (v.clamp(0.0, 1.0) * 255.0).round() as u8
}

/// `channels` 1 (grey) or 3 (RGB) pixels in [0, 1] as an image.
fn to_image(pixels: &[f32], width: u32, height: u32, channels: usize) -> Result<DynamicImage> {
    let bytes: Vec<u8> = pixels.iter().map(|&v| quantize(v)).collect();
    let bad = || {
        Error::invalid(format!(
            "{} values do not make a {width}×{height}×{channels} image",
            pixels.len()
        ))
    };
    Ok(match channels {
        1 => DynamicImage::ImageLuma8(GrayImage::from_raw(width, height, bytes).ok_or_else(bad)?),
        3 => DynamicImage::ImageRgb8(RgbImage::from_raw(width, height, bytes).ok_or_else(bad)?),
        _ => return Err(bad()),
    })
}

/// PNG bytes of an image given as pixels in [0, 1].
pub fn encode_png(pixels: &[f32], width: u32, height: u32, channels: usize) -> Result<Vec<u8>> {
    let mut out = Cursor::new(Vec::new());
    to_image(pixels, width, height, channels)?
        .write_to(&mut out, ImageFormat::Png)
        .map_err(|e| Error::invalid(format!("cannot encode PNG: {e}")))?;
    Ok(out.into_inner())
}

/// Tiles `tiles` (each `side`×`side`×`channels`, in [0, 1]) row by row into a
/// `rows`×`cols` mosaic; returns its pixels.
pub fn tile(
    tiles: &[Vec<f32>],
    rows: usize,
    cols: usize,
    side: usize,
    channels: usize,
) -> Vec<f32> {
    let width = cols * side;
    let mut out = vec![0f32; rows * side * width * channels];
    for (i, t) in tiles.iter().enumerate().take(rows * cols) {
        let (r, c) = (i / cols, i % cols);
        for y in 0..side {
            let src = &t[y * side * channels..(y + 1) * side * channels];
            let dst = ((r * side + y) * width + c * side) * channels;
            out[dst..dst + side * channels].copy_from_slice(src);
        }
    }
    out
}

/// An animated GIF (looping forever) of grey or RGB frames, `delay_ms` each.
pub fn encode_gif(
    frames: &[Vec<f32>],
    width: u32,
    height: u32,
    channels: usize,
    delay_ms: u32,
) -> Result<Vec<u8>> {
    let mut out = Vec::new();
    {
        let mut enc = GifEncoder::new_with_speed(&mut out, 10);
        enc.set_repeat(Repeat::Infinite)
            .map_err(|e| Error::invalid(format!("cannot encode GIF: {e}")))?;
        for f in frames {
            let rgba: RgbaImage = to_image(f, width, height, channels)?.to_rgba8();
            let delay = image::Delay::from_numer_denom_ms(delay_ms, 1);
            enc.encode_frame(Frame::from_parts(rgba, 0, 0, delay))
                .map_err(|e| Error::invalid(format!("cannot encode GIF: {e}")))?;
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn png_round_trips_and_resizes_to_grey() {
        let px: Vec<f32> = (0..6 * 4 * 3).map(|i| (i % 7) as f32 / 6.0).collect();
        let png = encode_png(&px, 6, 4, 3).unwrap();
        let back = decode(&png, "test").unwrap();
        assert_eq!((back.width(), back.height()), (6, 4));
        let rgb = to_rgb(&back, 6, 4);
        for (a, b) in rgb.iter().zip(&px) {
            assert!((a - b).abs() <= 0.5 / 255.0 + 1e-6);
        }
        // A uniform image stays uniform whatever the resize.
        let flat = encode_png(&vec![0.6; 50 * 30], 50, 30, 1).unwrap();
        let g = to_grey_square(&decode(&flat, "flat").unwrap(), 28);
        assert_eq!(g.len(), 784);
        assert!(g.iter().all(|&v| (v - 153.0 / 255.0).abs() < 2.0 / 255.0));
    }

    #[test]
    fn non_images_are_refused_with_a_reason() {
        let e = decode(b"hello, not an image", "digit.png")
            .unwrap_err()
            .to_string();
        assert!(e.contains("digit.png") && e.contains("not an image"), "{e}");
        let png = encode_png(&[0.5; 64], 8, 8, 1).unwrap();
        let e = decode(&png[..png.len() / 2], "half.png")
            .unwrap_err()
            .to_string();
        assert!(e.contains("half.png") && e.contains("truncated"), "{e}");
    }

    #[test]
    fn tiles_land_in_their_cells_and_gifs_encode() {
        let tiles: Vec<Vec<f32>> = (0..6).map(|i| vec![i as f32 / 10.0; 4]).collect();
        let m = tile(&tiles, 2, 3, 2, 1);
        assert_eq!(m.len(), 4 * 6);
        // Row 1 (second tile row), column 2: tile 5.
        assert_eq!(m[(2 * 6) + 4], 0.5);
        assert_eq!(m[0], 0.0);
        let gif = encode_gif(&tiles, 2, 2, 1, 80).unwrap();
        assert!(gif.starts_with(b"GIF89a"));
        let frames = image::codecs::gif::GifDecoder::new(Cursor::new(&gif)).unwrap();
        use image::AnimationDecoder;
        assert_eq!(frames.into_frames().count(), 6);
    }

    /// Encoded test pictures of every format the daemon accepts, grey and colour.
    fn samples() -> Vec<(ImageFormat, Vec<u8>)> {
        let (w, h) = (37u32, 23u32);
        let px: Vec<f32> = (0..(w * h * 3) as usize)
            .map(|i| ((i * 7919) % 256) as f32 / 255.0)
            .collect();
        let rgb = to_image(&px, w, h, 3).unwrap();
        let grey = to_image(&px[..(w * h) as usize], w, h, 1).unwrap();
        let mut out = Vec::new();
        for img in [&rgb, &grey] {
            for format in [ImageFormat::Png, ImageFormat::Jpeg, ImageFormat::Gif] {
                let mut bytes = Cursor::new(Vec::new());
                // GIF has no grey type: its grey picture is a grey palette.
                let img = match format {
                    ImageFormat::Gif => DynamicImage::ImageRgba8(img.to_rgba8()),
                    _ => img.clone(),
                };
                img.write_to(&mut bytes, format).unwrap();
                out.push((format, bytes.into_inner()));
            }
        }
        out
    }

    /// Every cut of every format (header-only files included) is refused with the file's
    /// name; bit flips never panic and either decode or are refused as invalid.
    #[test]
    fn truncated_and_bit_flipped_files_are_refused_not_half_decoded() {
        use rand::{Rng, SeedableRng};
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(19);
        for (format, bytes) in samples() {
            let whole = decode(&bytes, "whole.img").unwrap();
            assert_eq!((whole.width(), whole.height()), (37, 23), "{format:?}");
            for cut in 0..bytes.len() {
                match decode(&bytes[..cut], "cut.img") {
                    Ok(_) => panic!("{format:?} cut to {cut} of {} bytes decoded", bytes.len()),
                    Err(Error::InvalidArgument(m)) => assert!(m.starts_with("cut.img: "), "{m}"),
                    Err(e) => panic!("{format:?} cut to {cut}: {e:?} is not InvalidArgument"),
                }
            }
            for _ in 0..300 {
                let mut flipped = bytes.clone();
                for _ in 0..rng.random_range(1..=8) {
                    let at = rng.random_range(0..flipped.len());
                    flipped[at] ^= 1 << rng.random_range(0..8);
                }
                match decode(&flipped, "flipped.img") {
                    Ok(img) => assert!(img.width() > 0 && img.height() > 0),
                    Err(Error::InvalidArgument(m)) => {
                        assert!(m.starts_with("flipped.img: "), "{m}")
                    }
                    Err(e) => panic!("{format:?} flipped: {e:?} is not InvalidArgument"),
                }
            }
        }
    }
}

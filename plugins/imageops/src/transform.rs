//! The work, as plain functions: [`decode`] a file, [`apply`] the operations, [`encode`] the
//! result.
//!
//! They know nothing about the host (no context, no task, no async), so the unit tests below
//! call them directly and the `Plugin` impl in `lib.rs` only runs them on a blocking thread.
//! Every failure is a `PluginError`: `invalid_input` when the image or an operation does not
//! fit, `internal` when a file cannot be read or written.

use std::{fs::File, io::BufWriter, path::Path};

use aihost_plugin_api::{PluginError, codes};
use image::{
    DynamicImage, ImageReader, Limits,
    codecs::{jpeg::JpegEncoder, png::PngEncoder, webp::WebPEncoder},
    imageops::FilterType,
};

use crate::input::{Direction, Fit, Format, MAX_SIDE, MAX_SIGMA, Operation};

/// Decodes the image at `path`, refusing images larger than `max_pixels` before decoding them.
pub fn decode(path: &Path, max_pixels: u64) -> Result<DynamicImage, PluginError> {
    let not_an_image = |e: image::ImageError| {
        PluginError::invalid_input(format!(
            "the source is not a readable png, jpeg, webp or gif image: {e}"
        ))
    };
    let open = || {
        ImageReader::open(path)
            .map_err(|e| {
                PluginError::fatal(
                    codes::INTERNAL,
                    format!("cannot open the fetched file: {e}"),
                )
            })?
            .with_guessed_format()
            .map_err(|e| {
                PluginError::fatal(
                    codes::INTERNAL,
                    format!("cannot read the fetched file: {e}"),
                )
            })
    };
    // Read only the header first, so a huge image is refused without allocating it.
    let (w, h) = open()?.into_dimensions().map_err(not_an_image)?;
    if u64::from(w) * u64::from(h) > max_pixels {
        return Err(PluginError::invalid_input(format!(
            "the source is {w}x{h}, more than the {max_pixels} pixels this plugin accepts"
        )));
    }
    let mut reader = open()?;
    let mut limits = Limits::default();
    // Up to 16 bytes a pixel (16-bit RGBA plus decoder scratch space).
    limits.max_alloc = Some(max_pixels.saturating_mul(16));
    reader.limits(limits);
    reader.decode().map_err(not_an_image)
}

/// Applies `ops` in order. See [`apply_op`].
pub fn apply(
    img: DynamicImage,
    ops: &[Operation],
    max_pixels: u64,
) -> Result<DynamicImage, PluginError> {
    ops.iter()
        .try_fold(img, |img, op| apply_op(img, op, max_pixels))
}

/// Applies one operation. Fails with `invalid_input` when the operation does not fit the image
/// (crop outside it) or would produce an image over the limits.
pub fn apply_op(
    img: DynamicImage,
    op: &Operation,
    max_pixels: u64,
) -> Result<DynamicImage, PluginError> {
    let (w, h) = (img.width(), img.height());
    Ok(match *op {
        Operation::Resize { width, height, fit } => {
            let (tw, th) = resize_target(w, h, width, height, fit)?;
            check_size(tw, th, max_pixels)?;
            match (width, height, fit) {
                (Some(_), Some(_), Fit::Cover) => {
                    img.resize_to_fill(tw, th, FilterType::CatmullRom)
                }
                // `contain` and one-sided resizes were turned into exact sizes above.
                _ => img.resize_exact(tw, th, FilterType::CatmullRom),
            }
        }
        Operation::Crop {
            x,
            y,
            width,
            height,
        } => {
            let fits = width > 0
                && height > 0
                && u64::from(x) + u64::from(width) <= u64::from(w)
                && u64::from(y) + u64::from(height) <= u64::from(h);
            if !fits {
                return Err(PluginError::invalid_input(format!(
                    "crop {width}x{height} at ({x},{y}) is not inside the {w}x{h} image"
                )));
            }
            img.crop_imm(x, y, width, height)
        }
        Operation::Rotate { degrees: 90 } => img.rotate90(),
        Operation::Rotate { degrees: 180 } => img.rotate180(),
        Operation::Rotate { degrees: 270 } => img.rotate270(),
        Operation::Rotate { degrees } => {
            return Err(PluginError::invalid_input(format!(
                "rotate by {degrees} degrees: only 90, 180 and 270 are supported"
            )));
        }
        Operation::Flip {
            direction: Direction::Horizontal,
        } => img.fliph(),
        Operation::Flip {
            direction: Direction::Vertical,
        } => img.flipv(),
        Operation::Grayscale {} => {
            if img.color().has_alpha() {
                DynamicImage::ImageLumaA8(img.to_luma_alpha8())
            } else {
                DynamicImage::ImageLuma8(img.to_luma8())
            }
        }
        Operation::Blur { sigma } => {
            if !(sigma > 0.0 && sigma <= MAX_SIGMA) {
                return Err(PluginError::invalid_input(format!(
                    "blur sigma must be > 0 and <= {MAX_SIGMA}, not {sigma}"
                )));
            }
            // fast_blur costs the same whatever the sigma; a true Gaussian grows with it.
            img.fast_blur(sigma)
        }
    })
}

/// The size a `resize` produces from a `w`×`h` image.
fn resize_target(
    w: u32,
    h: u32,
    width: Option<u32>,
    height: Option<u32>,
    fit: Fit,
) -> Result<(u32, u32), PluginError> {
    #[expect(
        clippy::cast_possible_truncation,
        clippy::cast_sign_loss,
        reason = "rounded and clamped to 1..=u32::MAX first"
    )]
    let scaled = |side: u32, num: u32, den: u32| -> u32 {
        let v = (f64::from(side) * f64::from(num) / f64::from(den)).round();
        v.clamp(1.0, f64::from(u32::MAX)) as u32
    };
    match (width, height) {
        (Some(0), _) | (_, Some(0)) => Err(PluginError::invalid_input("resize to a zero size")),
        (None, None) => Err(PluginError::invalid_input(
            "resize needs width, height or both",
        )),
        (Some(tw), None) => Ok((tw, scaled(h, tw, w))),
        (None, Some(th)) => Ok((scaled(w, th, h), th)),
        (Some(tw), Some(th)) => match fit {
            Fit::Fill | Fit::Cover => Ok((tw, th)),
            Fit::Contain => {
                // The largest size with the source's aspect ratio inside tw×th.
                if u64::from(tw) * u64::from(h) <= u64::from(th) * u64::from(w) {
                    Ok((tw, scaled(h, tw, w).min(th)))
                } else {
                    Ok((scaled(w, th, h).min(tw), th))
                }
            }
        },
    }
}

fn check_size(w: u32, h: u32, max_pixels: u64) -> Result<(), PluginError> {
    if w > MAX_SIDE || h > MAX_SIDE || u64::from(w) * u64::from(h) > max_pixels {
        return Err(PluginError::invalid_input(format!(
            "the result would be {w}x{h}; the limits are {MAX_SIDE} a side and {max_pixels} pixels"
        )));
    }
    Ok(())
}

/// Encodes `img` into the file at `path`.
pub fn encode(
    img: &DynamicImage,
    format: Format,
    quality: u8,
    path: &Path,
) -> Result<(), PluginError> {
    let io_err = |e: std::io::Error| {
        PluginError::fatal(codes::INTERNAL, format!("cannot write the output: {e}"))
    };
    let mut out = BufWriter::new(File::create(path).map_err(io_err)?);
    let result = match format {
        // PNG stores 8- and 16-bit images as they are.
        Format::Png => match img {
            DynamicImage::ImageRgb32F(_) | DynamicImage::ImageRgba32F(_) => {
                DynamicImage::ImageRgba16(img.to_rgba16())
                    .write_with_encoder(PngEncoder::new(&mut out))
            }
            _ => img.write_with_encoder(PngEncoder::new(&mut out)),
        },
        // JPEG has no alpha and only 8 bits: flatten to RGB8 (or L8 for gray images).
        Format::Jpeg => {
            let enc = JpegEncoder::new_with_quality(&mut out, quality);
            if matches!(
                img,
                DynamicImage::ImageLuma8(_) | DynamicImage::ImageLumaA8(_)
            ) {
                DynamicImage::ImageLuma8(img.to_luma8()).write_with_encoder(enc)
            } else {
                DynamicImage::ImageRgb8(img.to_rgb8()).write_with_encoder(enc)
            }
        }
        // The WebP encoder takes RGB8 or RGBA8 and writes lossless WebP.
        Format::Webp => {
            let enc = WebPEncoder::new_lossless(&mut out);
            if img.color().has_alpha() {
                DynamicImage::ImageRgba8(img.to_rgba8()).write_with_encoder(enc)
            } else {
                DynamicImage::ImageRgb8(img.to_rgb8()).write_with_encoder(enc)
            }
        }
    };
    result.map_err(|e| {
        PluginError::fatal(
            codes::INTERNAL,
            format!("cannot encode {}: {e}", format.name()),
        )
    })?;
    std::io::Write::flush(&mut out).map_err(io_err)
}

#[cfg(test)]
mod tests {
    use super::*;
    use aihost_plugin_api::sdk::json;
    use image::{Rgba, RgbaImage};

    const MAX: u64 = 100_000_000;

    /// A 40×20 image with a gradient, so flips and rotations change pixels.
    fn sample() -> DynamicImage {
        DynamicImage::ImageRgba8(RgbaImage::from_fn(40, 20, |x, y| {
            Rgba([
                u8::try_from(x * 6).unwrap(),
                u8::try_from(y * 12).unwrap(),
                0,
                255,
            ])
        }))
    }

    fn dims(op: Operation) -> (u32, u32) {
        let img = apply(sample(), &[op], MAX).expect("operation succeeds");
        (img.width(), img.height())
    }

    #[test]
    fn resize_gives_the_expected_dimensions() {
        let r = |w, h, fit| Operation::Resize {
            width: w,
            height: h,
            fit,
        };
        assert_eq!(dims(r(Some(20), None, Fit::Contain)), (20, 10));
        assert_eq!(dims(r(None, Some(40), Fit::Contain)), (80, 40));
        assert_eq!(dims(r(Some(10), Some(10), Fit::Contain)), (10, 5));
        assert_eq!(dims(r(Some(10), Some(10), Fit::Cover)), (10, 10));
        assert_eq!(dims(r(Some(7), Some(30), Fit::Fill)), (7, 30));
    }

    #[test]
    fn other_ops_give_the_expected_dimensions() {
        assert_eq!(
            dims(Operation::Crop {
                x: 5,
                y: 5,
                width: 10,
                height: 15
            }),
            (10, 15)
        );
        assert_eq!(dims(Operation::Rotate { degrees: 90 }), (20, 40));
        assert_eq!(dims(Operation::Rotate { degrees: 180 }), (40, 20));
        assert_eq!(dims(Operation::Rotate { degrees: 270 }), (20, 40));
        assert_eq!(
            dims(Operation::Flip {
                direction: Direction::Horizontal
            }),
            (40, 20)
        );
        assert_eq!(
            dims(Operation::Flip {
                direction: Direction::Vertical
            }),
            (40, 20)
        );
        assert_eq!(dims(Operation::Grayscale {}), (40, 20));
        assert_eq!(dims(Operation::Blur { sigma: 2.0 }), (40, 20));
    }

    #[test]
    fn flip_and_grayscale_change_pixels() {
        let img = sample();
        let flipped = apply_op(
            img.clone(),
            &Operation::Flip {
                direction: Direction::Horizontal,
            },
            MAX,
        )
        .unwrap();
        assert_eq!(
            flipped.to_rgba8().get_pixel(0, 0),
            img.to_rgba8().get_pixel(39, 0)
        );
        let gray = apply_op(img, &Operation::Grayscale {}, MAX).unwrap();
        assert_eq!(gray.color(), image::ColorType::La8);
    }

    #[test]
    fn a_chain_of_ops_composes() {
        let ops: Vec<Operation> = serde_json::from_value(json!([
            {"op": "rotate", "degrees": 90},
            {"op": "crop", "x": 0, "y": 0, "width": 20, "height": 20},
            {"op": "resize", "width": 8},
            {"op": "grayscale"},
        ]))
        .unwrap();
        let img = apply(sample(), &ops, MAX).unwrap();
        assert_eq!((img.width(), img.height()), (8, 8));
    }

    #[test]
    fn bad_operations_are_invalid_input() {
        for bad in [
            Operation::Crop {
                x: 35,
                y: 0,
                width: 10,
                height: 10,
            },
            Operation::Crop {
                x: 0,
                y: 0,
                width: 0,
                height: 10,
            },
            Operation::Rotate { degrees: 45 },
            Operation::Blur { sigma: 0.0 },
            Operation::Blur { sigma: 101.0 },
            Operation::Resize {
                width: None,
                height: None,
                fit: Fit::Fill,
            },
            Operation::Resize {
                width: Some(16385),
                height: Some(1),
                fit: Fit::Fill,
            },
            // 40x20 scaled to height 16384 would be 32768 wide.
            Operation::Resize {
                width: None,
                height: Some(16384),
                fit: Fit::Contain,
            },
        ] {
            let err = apply_op(sample(), &bad, MAX).expect_err(&format!("{bad:?} must fail"));
            assert_eq!(err.code.as_str(), codes::INVALID_INPUT, "{bad:?}");
        }
        // The pixel budget applies too.
        let err = apply_op(
            sample(),
            &Operation::Resize {
                width: Some(100),
                height: Some(100),
                fit: Fit::Fill,
            },
            5_000,
        )
        .unwrap_err();
        assert_eq!(err.code.as_str(), codes::INVALID_INPUT);
    }

    #[test]
    fn encode_then_decode_every_format() {
        let dir = std::env::temp_dir().join(format!("imageops-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        for format in [Format::Png, Format::Jpeg, Format::Webp] {
            let path = dir.join(format!("out.{}", format.extension()));
            encode(&sample(), format, 80, &path).unwrap();
            let img = decode(&path, MAX).unwrap();
            assert_eq!((img.width(), img.height()), (40, 20), "{format:?}");
            // The pixel limit is checked before decoding.
            let err = decode(&path, 100).unwrap_err();
            assert_eq!(err.code.as_str(), codes::INVALID_INPUT);
        }
        let junk = dir.join("junk.png");
        std::fs::write(&junk, b"not an image").unwrap();
        let err = decode(&junk, MAX).unwrap_err();
        assert_eq!(err.code.as_str(), codes::INVALID_INPUT);
        let _ = std::fs::remove_dir_all(&dir);
    }
}

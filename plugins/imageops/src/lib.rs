//! # imageops: the example aihost plugin
//!
//! One task type, `imageops.transform`: fetch an image, apply a list of operations (resize,
//! crop, rotate, flip, grayscale, blur), encode it as PNG, JPEG or WebP and hand the file back
//! to the host.
//!
//! The file is laid out the way we suggest every plugin is:
//!
//! 1. **Input types** (serde) and the **JSON Schema** the host validates submissions against.
//! 2. **Plain functions** that do the work (`decode`, `apply`, `encode`). They know nothing about
//!    the host, so unit tests call them directly.
//! 3. A **thin [`Plugin`] impl** that parses the input, fetches, runs the plain functions on a
//!    blocking thread, reports progress and returns the output.
//! 4. `export_plugin!` once, at the end.
//!
//! Output formats: PNG and JPEG as usual; WebP is encoded **lossless** (the `image` crate 0.25
//! has no lossy WebP encoder), so `quality` only affects JPEG.

use std::{
    fs::File,
    io::BufWriter,
    path::{Path, PathBuf},
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
};

use aihost_plugin_api::{
    codes,
    sdk::{Context, Description, Output, Plugin, PluginError, Task, TaskType, Value, json},
};
use image::{
    DynamicImage, ImageReader, Limits,
    codecs::{jpeg::JpegEncoder, png::PngEncoder, webp::WebPEncoder},
    imageops::FilterType,
};
use serde::{Deserialize, Serialize};

/// The task type this plugin runs.
pub const TASK_TYPE: &str = "imageops.transform";
/// At most this many operations per task.
pub const MAX_OPERATIONS: usize = 32;
/// No side of an image produced by an operation may exceed this.
pub const MAX_SIDE: u32 = 16384;
/// The largest accepted blur sigma.
pub const MAX_SIGMA: f32 = 100.0;

// ---------------------------------------------------------------------------------------------
// 1. Configuration, input and schema
// ---------------------------------------------------------------------------------------------

/// The plugin's configuration: the `[plugin.config]` table of `plugins.toml`.
///
/// `#[serde(default)]` lets an operator set only the fields they care about.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Largest image (width × height) the plugin decodes or produces.
    pub max_pixels: u64,
    /// How many transforms may run at once in one host.
    pub concurrency: u32,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            max_pixels: 100_000_000,
            concurrency: 2,
        }
    }
}

/// The input of an `imageops.transform` task.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Input {
    /// URL or storage key of the source image, fetched through the host.
    pub source: String,
    /// Operations, applied in order. Empty means "just convert the format".
    #[serde(default)]
    pub operations: Vec<Operation>,
    /// Output format.
    #[serde(default)]
    pub format: Format,
    /// JPEG quality, 1 to 100 (ignored for PNG and WebP).
    #[serde(default = "default_quality")]
    pub quality: u8,
}

fn default_quality() -> u8 {
    90
}

/// One image operation; in JSON an object tagged by `"op"`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case", deny_unknown_fields)]
pub enum Operation {
    /// Scale the image. Give `width`, `height` or both; with only one, the aspect ratio is kept.
    Resize {
        width: Option<u32>,
        height: Option<u32>,
        #[serde(default)]
        fit: Fit,
    },
    /// Cut out a rectangle, which must lie inside the image.
    Crop {
        x: u32,
        y: u32,
        width: u32,
        height: u32,
    },
    /// Rotate clockwise by 90, 180 or 270 degrees.
    Rotate { degrees: u32 },
    /// Mirror the image.
    Flip { direction: Direction },
    /// Convert to grayscale (an alpha channel is kept).
    Grayscale {},
    /// Blur with the given sigma (a fast box-blur approximation of a Gaussian blur).
    Blur { sigma: f32 },
}

/// How `resize` treats the aspect ratio when both `width` and `height` are given.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Fit {
    /// Scale to fit inside the box, keeping the aspect ratio (no padding: one side may be
    /// smaller than asked).
    #[default]
    Contain,
    /// Scale to cover the box, keeping the aspect ratio, then crop the overflow (centred).
    Cover,
    /// Stretch to exactly the box.
    Fill,
}

/// Direction of a `flip`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Direction {
    /// Mirror left to right.
    Horizontal,
    /// Mirror top to bottom.
    Vertical,
}

/// Output format.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Format {
    #[default]
    Png,
    Jpeg,
    /// Lossless WebP.
    Webp,
}

impl Format {
    /// The name used in JSON (`png`, `jpeg`, `webp`).
    pub fn name(self) -> &'static str {
        match self {
            Format::Png => "png",
            Format::Jpeg => "jpeg",
            Format::Webp => "webp",
        }
    }

    /// File extension of the output file.
    pub fn extension(self) -> &'static str {
        match self {
            Format::Png => "png",
            Format::Jpeg => "jpg",
            Format::Webp => "webp",
        }
    }

    /// MIME type of the output file.
    pub fn content_type(self) -> &'static str {
        match self {
            Format::Png => "image/png",
            Format::Jpeg => "image/jpeg",
            Format::Webp => "image/webp",
        }
    }
}

/// The JSON Schema (draft 2020-12) of the task input. The host rejects submissions that do not
/// match it, so it is strict: no unknown fields, enums for every closed set, limits everywhere.
pub fn input_schema() -> Value {
    let side = json!({"type": "integer", "minimum": 1, "maximum": MAX_SIDE});
    let offset = json!({"type": "integer", "minimum": 0, "maximum": MAX_SIDE});
    // One schema per operation: `op` is a constant, listed fields are required, no others.
    let op = |name: &str, mut properties: Value, required: &[&str]| {
        properties["op"] = json!({"const": name});
        let required: Vec<&str> = ["op"].iter().chain(required).copied().collect();
        json!({
            "type": "object",
            "additionalProperties": false,
            "required": required,
            "properties": properties,
        })
    };
    let fit = json!({"enum": ["contain", "cover", "fill"], "default": "contain"});
    let mut resize = op(
        "resize",
        json!({"width": side, "height": side, "fit": fit}),
        &[],
    );
    // At least one of width and height.
    resize["anyOf"] = json!([{"required": ["width"]}, {"required": ["height"]}]);
    let crop = op(
        "crop",
        json!({"x": offset, "y": offset, "width": side, "height": side}),
        &["x", "y", "width", "height"],
    );
    let rotate = op(
        "rotate",
        json!({"degrees": {"enum": [90, 180, 270]}}),
        &["degrees"],
    );
    let direction = json!({"enum": ["horizontal", "vertical"]});
    let flip = op("flip", json!({"direction": direction}), &["direction"]);
    let grayscale = op("grayscale", json!({}), &[]);
    let sigma = json!({"type": "number", "exclusiveMinimum": 0, "maximum": MAX_SIGMA});
    let blur = op("blur", json!({"sigma": sigma}), &["sigma"]);

    json!({
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "title": "imageops.transform input",
        "type": "object",
        "additionalProperties": false,
        "required": ["source"],
        "properties": {
            "source": {
                "type": "string",
                "minLength": 1,
                "description": "URL or storage key of the image",
            },
            "operations": {
                "type": "array",
                "maxItems": MAX_OPERATIONS,
                "default": [],
                "items": {"oneOf": [resize, crop, rotate, flip, grayscale, blur]},
            },
            "format": {"enum": ["png", "jpeg", "webp"], "default": "png"},
            "quality": {
                "type": "integer",
                "minimum": 1,
                "maximum": 100,
                "default": 90,
                "description": "JPEG quality; ignored for png and webp (webp is lossless)",
            },
        },
    })
}

/// Parses and checks a task input. The host already validated it against the schema; the
/// checks are repeated here so the plain functions are safe on their own.
pub fn parse_input(input: Value) -> Result<Input, PluginError> {
    let input: Input = serde_json::from_value(input)
        .map_err(|e| PluginError::invalid_input(format!("invalid input: {e}")))?;
    if input.source.trim().is_empty() {
        return Err(PluginError::invalid_input("source is empty"));
    }
    if input.operations.len() > MAX_OPERATIONS {
        return Err(PluginError::invalid_input(format!(
            "{} operations given; at most {MAX_OPERATIONS} are allowed",
            input.operations.len()
        )));
    }
    if !(1..=100).contains(&input.quality) {
        return Err(PluginError::invalid_input(
            "quality must be between 1 and 100",
        ));
    }
    Ok(input)
}

// ---------------------------------------------------------------------------------------------
// 2. The work, as plain functions
// ---------------------------------------------------------------------------------------------

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

// ---------------------------------------------------------------------------------------------
// 3. The plugin
// ---------------------------------------------------------------------------------------------

/// The plugin. It holds only its configuration; all state of a task lives in `run_task`.
pub struct ImageOps {
    config: Config,
}

/// Sets a flag when dropped. The host drops a task's future to cancel it; the blocking thread
/// cannot be interrupted, but it checks the flag between operations and stops early.
struct CancelOnDrop(Arc<AtomicBool>);

impl Drop for CancelOnDrop {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Relaxed);
    }
}

impl Plugin for ImageOps {
    type Config = Config;

    fn describe() -> Description {
        Description {
            name: "imageops".into(),
            version: env!("CARGO_PKG_VERSION").into(),
            description: concat!(
                "Resizes, crops, rotates, flips, grayscales and blurs images, ",
                "and converts them to PNG, JPEG or lossless WebP."
            )
            .into(),
            task_types: vec![TaskType {
                name: TASK_TYPE.into(),
                description: "Applies a list of operations to an image and encodes the result."
                    .into(),
                input_schema: input_schema(),
                max_concurrency: Config::default().concurrency,
            }],
            ops: vec![],
        }
    }

    async fn init(config: Config) -> Result<Self, PluginError> {
        if config.max_pixels == 0 || config.concurrency == 0 {
            return Err(PluginError::fatal(
                codes::INVALID_CONFIG,
                "max_pixels and concurrency must be greater than 0",
            ));
        }
        tracing::info!(
            max_pixels = config.max_pixels,
            concurrency = config.concurrency,
            "imageops ready"
        );
        Ok(Self { config })
    }

    async fn run_task(self: Arc<Self>, task: Task, ctx: Context) -> Result<Output, PluginError> {
        let input = parse_input(task.input)?;
        let source = ctx.fetch(&input.source).await?;
        ctx.progress(5.0, "fetched");

        let output: PathBuf = task
            .work_dir
            .join(format!("output.{}", input.format.extension()));
        let max_pixels = self.config.max_pixels;
        let cancelled = Arc::new(AtomicBool::new(false));
        let _cancel_on_drop = CancelOnDrop(cancelled.clone());

        // Decoding, the operations and encoding are CPU-bound: run them on a blocking thread so
        // the plugin's async workers stay free.
        let (ctx2, path2) = (ctx.clone(), output.clone());
        let (width, height) = tokio::task::spawn_blocking(move || {
            let mut img = decode(&source, max_pixels)?;
            ctx2.progress(10.0, &format!("decoded {}x{}", img.width(), img.height()));
            let n = input.operations.len();
            for (i, op) in input.operations.iter().enumerate() {
                if cancelled.load(Ordering::Relaxed) {
                    return Err(PluginError::fatal(codes::CANCELLED, "cancelled"));
                }
                img = apply_op(img, op, max_pixels)?;
                let percent = 10.0 + 80.0 * (i + 1) as f32 / n as f32;
                ctx2.progress(percent, &format!("operation {} of {n} done", i + 1));
            }
            encode(&img, input.format, input.quality, &path2)?;
            ctx2.progress(100.0, "encoded");
            Ok((img.width(), img.height()))
        })
        .await
        .map_err(|e| PluginError::fatal(codes::INTERNAL, format!("image worker failed: {e}")))??;

        let format = input.format;
        let name = format!("output.{}", format.extension());
        Ok(
            Output::result(json!({"width": width, "height": height, "format": format.name()}))
                .with_file(output, format.content_type(), name),
        )
    }

    fn max_concurrency(&self, task_type: &str) -> u32 {
        if task_type == TASK_TYPE {
            self.config.concurrency
        } else {
            0
        }
    }
}

// ---------------------------------------------------------------------------------------------
// 4. Export
// ---------------------------------------------------------------------------------------------

aihost_plugin_api::export_plugin!(ImageOps);

#[cfg(test)]
mod tests {
    use super::*;
    use image::{Rgba, RgbaImage};

    const MAX: u64 = 100_000_000;

    /// A 40×20 image with a gradient, so flips and rotations change pixels.
    fn sample() -> DynamicImage {
        DynamicImage::ImageRgba8(RgbaImage::from_fn(40, 20, |x, y| {
            Rgba([x as u8 * 6, y as u8 * 12, 0, 255])
        }))
    }

    fn dims(op: Operation) -> (u32, u32) {
        let img = apply(sample(), &[op], MAX).expect("operation succeeds");
        (img.width(), img.height())
    }

    fn op(v: Value) -> Result<Operation, serde_json::Error> {
        serde_json::from_value(v)
    }

    #[test]
    fn schema_is_strict_json_with_the_expected_enums() {
        let schema = input_schema();
        let text = serde_json::to_string(&schema).unwrap();
        let back: Value = serde_json::from_str(&text).unwrap();
        assert_eq!(
            back["$schema"],
            "https://json-schema.org/draft/2020-12/schema"
        );
        assert_eq!(back["additionalProperties"], false);
        assert_eq!(
            back["properties"]["format"]["enum"],
            json!(["png", "jpeg", "webp"])
        );
        assert_eq!(back["properties"]["operations"]["maxItems"], MAX_OPERATIONS);
        let ops = back["properties"]["operations"]["items"]["oneOf"]
            .as_array()
            .unwrap();
        let names: Vec<_> = ops
            .iter()
            .map(|o| o["properties"]["op"]["const"].as_str().unwrap())
            .collect();
        assert_eq!(
            names,
            ["resize", "crop", "rotate", "flip", "grayscale", "blur"]
        );
        for o in ops {
            assert_eq!(o["additionalProperties"], false, "{o}");
            assert!(o["required"].as_array().unwrap().contains(&json!("op")));
        }
        assert_eq!(
            ops[0]["properties"]["fit"]["enum"],
            json!(["contain", "cover", "fill"])
        );
        assert_eq!(
            ops[2]["properties"]["degrees"]["enum"],
            json!([90, 180, 270])
        );
        assert_eq!(
            ops[3]["properties"]["direction"]["enum"],
            json!(["horizontal", "vertical"])
        );
        assert_eq!(ops[5]["properties"]["sigma"]["maximum"], json!(100.0));
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
    fn unknown_ops_and_fields_are_rejected_by_serde() {
        assert!(op(json!({"op": "sharpen"})).is_err());
        assert!(op(json!({"op": "rotate"})).is_err());
        assert!(op(json!({"op": "flip", "direction": "diagonal"})).is_err());
        assert!(
            op(json!({"op": "crop", "x": 0, "y": 0, "width": 1, "height": 1, "extra": 1})).is_err()
        );
        assert_eq!(
            op(json!({"op": "grayscale"})).unwrap(),
            Operation::Grayscale {}
        );
        let err =
            parse_input(json!({"source": "s", "operations": [{"op": "sharpen"}]})).unwrap_err();
        assert_eq!(err.code.as_str(), codes::INVALID_INPUT);
        assert!(parse_input(json!({"source": "s", "nope": 1})).is_err());
        assert!(parse_input(json!({"source": "s", "quality": 0})).is_err());
        let too_many = vec![json!({"op": "grayscale"}); MAX_OPERATIONS + 1];
        assert!(parse_input(json!({"source": "s", "operations": too_many})).is_err());
    }

    #[test]
    fn input_defaults() {
        let input = parse_input(json!({"source": "https://example.com/a.png"})).unwrap();
        assert_eq!(input.format, Format::Png);
        assert_eq!(input.quality, 90);
        assert!(input.operations.is_empty());
    }

    #[test]
    fn default_config_round_trips() {
        let config = Config::default();
        let text = serde_json::to_string(&config).unwrap();
        let back: Config = serde_json::from_str(&text).unwrap();
        assert_eq!(back, config);
        // A partial table keeps the other defaults.
        let partial: Config = serde_json::from_str(r#"{"concurrency": 4}"#).unwrap();
        assert_eq!(
            partial,
            Config {
                concurrency: 4,
                ..Config::default()
            }
        );
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

//! The input of an `imageops.transform` task: its serde types, the limits, the JSON Schema the
//! host validates submissions against, and [`parse_input`], which repeats the checks.
//!
//! Separate from the work (`transform.rs`) because this is the plugin's contract with its
//! clients: change a type here and the schema next to it must change too. Nothing here
//! decodes or touches an image.

use aihost_plugin_api::sdk::{PluginError, Value, json};
use serde::{Deserialize, Serialize};

/// At most this many operations per task.
pub const MAX_OPERATIONS: usize = 32;
/// No side of an image produced by an operation may exceed this.
pub const MAX_SIDE: u32 = 16384;
/// The largest accepted blur sigma.
pub const MAX_SIGMA: f32 = 100.0;

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
        /// Target width in pixels.
        width: Option<u32>,
        /// Target height in pixels.
        height: Option<u32>,
        /// How the aspect ratio is treated when both sides are given.
        #[serde(default)]
        fit: Fit,
    },
    /// Cut out a rectangle, which must lie inside the image.
    Crop {
        /// Left edge, in pixels from the left.
        x: u32,
        /// Top edge, in pixels from the top.
        y: u32,
        /// Width of the rectangle.
        width: u32,
        /// Height of the rectangle.
        height: u32,
    },
    /// Rotate clockwise by 90, 180 or 270 degrees.
    Rotate {
        /// 90, 180 or 270.
        degrees: u32,
    },
    /// Mirror the image.
    Flip {
        /// Which way to mirror.
        direction: Direction,
    },
    /// Convert to grayscale (an alpha channel is kept).
    Grayscale {},
    /// Blur with the given sigma (a fast box-blur approximation of a Gaussian blur).
    Blur {
        /// Standard deviation of the blur, in pixels.
        sigma: f32,
    },
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
    /// PNG (the default).
    #[default]
    Png,
    /// JPEG at the input's `quality`.
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

#[cfg(test)]
mod tests {
    use super::*;
    use aihost_plugin_api::codes;

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
}

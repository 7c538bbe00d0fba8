//! The task input, its JSON Schema (the real choices of FaceFusion 3.8), media detection and
//! the mapping of `resolution` to FaceFusion's output scale.

use std::path::Path;

use aihost_plugin_api::sdk::{Value, json};
use serde::Deserialize;

use crate::error::Error;

/// `--face-swapper-model` choices (FaceFusion 3.8.1).
pub const SWAPPER_MODELS: &[&str] = &[
    "blendswap_256",
    "ghost_1_256",
    "ghost_2_256",
    "ghost_3_256",
    "hififace_unofficial_256",
    "hyperswap_1a_256",
    "hyperswap_1b_256",
    "hyperswap_1c_256",
    "inswapper_128",
    "inswapper_128_fp16",
    "simswap_256",
    "simswap_unofficial_512",
    "uniface_256",
];
/// FaceFusion's default swapper model.
pub const DEFAULT_SWAPPER_MODEL: &str = "hyperswap_1a_256";
/// `--face-enhancer-model` choices.
pub const ENHANCER_MODELS: &[&str] = &[
    "codeformer",
    "gfpgan_1.2",
    "gfpgan_1.3",
    "gfpgan_1.4",
    "gpen_bfr_256",
    "gpen_bfr_512",
    "gpen_bfr_1024",
    "gpen_bfr_2048",
    "restoreformer_plus_plus",
];
/// `--face-selector-mode` choices.
pub const SELECTOR_MODES: &[&str] = &["many", "one", "reference"];
/// `--face-selector-order` choices.
pub const SELECTOR_ORDERS: &[&str] = &[
    "left-right",
    "right-left",
    "top-bottom",
    "bottom-top",
    "small-large",
    "large-small",
    "best-worst",
    "worst-best",
];
/// `--output-video-encoder` choices (those of a typical ffmpeg build).
pub const VIDEO_ENCODERS: &[&str] = &[
    "libx264",
    "libx264rgb",
    "libx265",
    "libvpx-vp9",
    "h264_nvenc",
    "h264_qsv",
    "hevc_nvenc",
    "hevc_qsv",
    "rawvideo",
];
/// `--output-video-preset` choices.
pub const VIDEO_PRESETS: &[&str] = &[
    "ultrafast",
    "superfast",
    "veryfast",
    "faster",
    "fast",
    "medium",
    "slow",
    "slower",
    "veryslow",
];
/// Image extensions FaceFusion accepts as target (decided by extension only).
pub const IMAGE_EXTENSIONS: &[&str] = &["bmp", "jpeg", "jpg", "png", "tif", "tiff", "webp"];
/// Video extensions FaceFusion accepts as target.
pub const VIDEO_EXTENSIONS: &[&str] = &[
    "avi", "m4v", "mkv", "mov", "mp4", "mpeg", "mpg", "mxf", "webm", "wmv",
];

/// Pixel boost choices per swapper model (research §2).
pub fn pixel_boosts(model: &str) -> &'static [&'static str] {
    if model.starts_with("inswapper_") {
        &[
            "128x128",
            "256x256",
            "384x384",
            "512x512",
            "768x768",
            "1024x1024",
        ]
    } else if model == "blendswap_256" {
        &["256x256", "384x384", "512x512", "768x768", "1024x1024"]
    } else if model == "simswap_unofficial_512" {
        &["512x512", "768x768", "1024x1024"]
    } else {
        &["256x256", "512x512", "768x768", "1024x1024"]
    }
}

/// `image` or `video`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MediaType {
    /// A still image.
    Image,
    /// A video.
    Video,
}

impl MediaType {
    /// The JSON name.
    pub fn name(self) -> &'static str {
        match self {
            MediaType::Image => "image",
            MediaType::Video => "video",
        }
    }
}

/// The input of a `facefusion.faceswap` task.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Input {
    /// URL or storage key of the face to put in (one image).
    pub source_url: Option<String>,
    /// Several source images of the same person (FaceFusion averages them).
    pub source_urls: Option<Vec<String>>,
    /// URL or storage key of the image or video to change.
    pub target_url: String,
    /// `image` or `video`; detected from the target when absent.
    pub media_type: Option<MediaType>,
    /// The seed's `WxH` box; mapped to an output scale from the target's size.
    pub resolution: Option<String>,
    /// Output scale, 0.25 to 8 in steps of 0.25 (instead of `resolution`).
    pub scale: Option<f64>,
    /// `--face-swapper-model`.
    pub face_swapper_model: Option<String>,
    /// `--face-swapper-pixel-boost`.
    pub face_swapper_pixel_boost: Option<String>,
    /// Adds the `face_enhancer` processor with this model.
    pub face_enhancer_model: Option<String>,
    /// `--face-enhancer-blend`, 0 to 100.
    pub face_enhancer_blend: Option<u32>,
    /// `--face-selector-mode`.
    pub face_selector_mode: Option<String>,
    /// `--face-selector-order`.
    pub face_selector_order: Option<String>,
    /// `--reference-face-position`.
    pub reference_face_position: Option<u32>,
    /// `--reference-face-distance`, 0 to 1 in steps of 0.05.
    pub reference_face_distance: Option<f64>,
    /// `--reference-frame-number`.
    pub reference_frame_number: Option<u32>,
    /// `--output-image-quality` or `--output-video-quality`, 0 to 100.
    pub output_quality: Option<u32>,
    /// `--output-video-encoder`.
    pub output_video_encoder: Option<String>,
    /// `--output-video-preset`.
    pub output_video_preset: Option<String>,
    /// `--trim-frame-start`.
    pub trim_frame_start: Option<u32>,
    /// `--trim-frame-end` (exclusive).
    pub trim_frame_end: Option<u32>,
}

impl Input {
    /// The source URLs, one or more.
    pub fn sources(&self) -> Vec<String> {
        match (&self.source_url, &self.source_urls) {
            (Some(s), None) => vec![s.clone()],
            (None, Some(v)) => v.clone(),
            (Some(s), Some(v)) => std::iter::once(s.clone()).chain(v.clone()).collect(),
            (None, None) => Vec::new(),
        }
    }
}

/// Parses `WxH`.
pub fn parse_resolution(s: &str) -> Option<(u32, u32)> {
    let (w, h) = s.split_once(['x', 'X'])?;
    let (w, h): (u32, u32) = (w.trim().parse().ok()?, h.trim().parse().ok()?);
    (w > 0 && h > 0).then_some((w, h))
}

/// Parses and checks an input beyond what the schema says.
pub fn parse(input: Value) -> Result<Input, Error> {
    let input: Input = serde_json::from_value(input)
        .map_err(|e| Error::InvalidInput(format!("invalid input: {e}")))?;
    let sources = input.sources();
    if sources.is_empty() || sources.iter().any(|s| s.trim().is_empty()) {
        return Err(Error::InvalidInput(
            "give source_url (or source_urls): the image with the face to put in".into(),
        ));
    }
    if input.target_url.trim().is_empty() {
        return Err(Error::InvalidInput("target_url is empty".into()));
    }
    if let Some(r) = &input.resolution
        && parse_resolution(r).is_none()
    {
        return Err(Error::InvalidInput(format!(
            "resolution {r:?} is not WIDTHxHEIGHT, e.g. \"1024x1024\""
        )));
    }
    if input.resolution.is_some() && input.scale.is_some() {
        return Err(Error::InvalidInput(
            "give resolution or scale, not both".into(),
        ));
    }
    if let Some(s) = input.scale
        && (!(0.25..=8.0).contains(&s) || (s * 4.0).fract() != 0.0)
    {
        return Err(Error::InvalidInput(format!(
            "scale {s} is not one of 0.25, 0.5, ... 8.0"
        )));
    }
    let model = input
        .face_swapper_model
        .as_deref()
        .unwrap_or(DEFAULT_SWAPPER_MODEL);
    if !SWAPPER_MODELS.contains(&model) {
        return Err(Error::InvalidInput(format!(
            "unknown face_swapper_model {model:?}"
        )));
    }
    if let Some(pb) = &input.face_swapper_pixel_boost
        && !pixel_boosts(model).contains(&pb.as_str())
    {
        return Err(Error::InvalidInput(format!(
            "face_swapper_pixel_boost {pb:?} is not available for {model}; choose one of {}",
            pixel_boosts(model).join(", ")
        )));
    }
    if let (Some(a), Some(b)) = (input.trim_frame_start, input.trim_frame_end)
        && b <= a
    {
        return Err(Error::InvalidInput(
            "trim_frame_end must be greater than trim_frame_start".into(),
        ));
    }
    Ok(input)
}

/// The JSON Schema (draft 2020-12) of the input.
pub fn schema() -> Value {
    // A URL, an upload key or a `data:` URL (base64 media inline): the host's request body
    // limit (`server.max_body_bytes`) bounds the latter, so the schema allows 64 MiB.
    let url = json!({"type": "string", "minLength": 1, "maxLength": 64 * 1024 * 1024});
    let all_boosts = pixel_boosts("inswapper_128");
    // Pixel boost choices depend on the model: one if/then per model family.
    let families: Vec<Value> = [
        vec!["inswapper_128", "inswapper_128_fp16"],
        vec!["blendswap_256"],
        vec!["simswap_unofficial_512"],
        SWAPPER_MODELS
            .iter()
            .copied()
            .filter(|m| {
                !m.starts_with("inswapper_")
                    && *m != "blendswap_256"
                    && *m != "simswap_unofficial_512"
            })
            .collect(),
    ]
    .into_iter()
    .map(|models| {
        let boosts = pixel_boosts(models[0]);
        let mut cond = json!({
            "properties": {"face_swapper_model": {"enum": models}},
            "required": ["face_swapper_model"],
        });
        if models.contains(&DEFAULT_SWAPPER_MODEL) {
            // No model given means FaceFusion's default, which is in this family.
            cond = json!({"anyOf": [cond, {"not": {"required": ["face_swapper_model"]}}]});
        }
        json!({
            "if": cond,
            "then": {"properties": {"face_swapper_pixel_boost": {"enum": boosts}}},
        })
    })
    .collect();
    let scales: Vec<f64> = (1..=32).map(|i| f64::from(i) * 0.25).collect();
    let distances: Vec<f64> = (0..=20).map(|i| f64::from(i) / 20.0).collect();
    json!({
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "title": "facefusion.faceswap input",
        "type": "object",
        "additionalProperties": false,
        "required": ["target_url"],
        "oneOf": [{"required": ["source_url"]}, {"required": ["source_urls"]}],
        "allOf": families,
        "properties": {
            "source_url": {
                "allOf": [url],
                "description": "URL or storage key (e.g. an upload's key) of the image with the face to put in",
            },
            "source_urls": {
                "type": "array", "minItems": 1, "maxItems": 8, "items": url,
                "description": "several images of the same face (averaged); instead of source_url",
            },
            "target_url": {
                "allOf": [url],
                "description": "URL or storage key of the image or video whose faces are replaced",
            },
            "media_type": {
                "enum": ["image", "video"],
                "description": "detected from the target when absent",
            },
            "resolution": {
                "type": "string",
                "pattern": "^[1-9][0-9]{0,4}[xX][1-9][0-9]{0,4}$",
                "description": "output box WIDTHxHEIGHT, e.g. \"1024x1024\": the output is the target scaled by the largest step of 0.25 (0.25 to 8) that fits in the box",
            },
            "scale": {
                "enum": scales,
                "description": "output scale (FaceFusion's --output-image-scale / --output-video-scale); instead of resolution",
            },
            "face_swapper_model": {"enum": SWAPPER_MODELS, "default": DEFAULT_SWAPPER_MODEL},
            "face_swapper_pixel_boost": {
                "enum": all_boosts,
                "description": "choices depend on the model: inswapper 128..1024, blendswap 256..1024, simswap_unofficial_512 512..1024, others 256, 512, 768, 1024 (default: the model's first)",
            },
            "face_enhancer_model": {
                "enum": ENHANCER_MODELS,
                "description": "adds FaceFusion's face_enhancer processor with this model",
            },
            "face_enhancer_blend": {"type": "integer", "minimum": 0, "maximum": 100, "default": 80},
            "face_selector_mode": {"enum": SELECTOR_MODES, "default": "reference"},
            "face_selector_order": {"enum": SELECTOR_ORDERS, "default": "large-small"},
            "reference_face_position": {"type": "integer", "minimum": 0, "maximum": 1000, "default": 0},
            "reference_face_distance": {"enum": distances, "default": 0.3},
            "reference_frame_number": {"type": "integer", "minimum": 0, "default": 0},
            "output_quality": {"type": "integer", "minimum": 0, "maximum": 100, "default": 80},
            "output_video_encoder": {"enum": VIDEO_ENCODERS},
            "output_video_preset": {"enum": VIDEO_PRESETS, "default": "veryfast"},
            "trim_frame_start": {"type": "integer", "minimum": 0},
            "trim_frame_end": {"type": "integer", "minimum": 1},
        },
    })
}

/// What a file is, from its first bytes: `(media type, canonical extension)`.
pub fn sniff(head: &[u8]) -> Option<(MediaType, &'static str)> {
    let at = |i: usize, m: &[u8]| head.len() >= i + m.len() && &head[i..i + m.len()] == m;
    Some(if at(0, b"\x89PNG\r\n\x1a\n") {
        (MediaType::Image, "png")
    } else if at(0, b"\xff\xd8\xff") {
        (MediaType::Image, "jpg")
    } else if at(0, b"RIFF") && at(8, b"WEBP") {
        (MediaType::Image, "webp")
    } else if at(0, b"BM") {
        (MediaType::Image, "bmp")
    } else if at(0, b"II*\0") || at(0, b"MM\0*") {
        (MediaType::Image, "tiff")
    } else if at(4, b"ftyp") {
        if at(8, b"qt  ") {
            (MediaType::Video, "mov")
        } else if at(8, b"M4V ") {
            (MediaType::Video, "m4v")
        } else {
            (MediaType::Video, "mp4")
        }
    } else if at(0, b"\x1a\x45\xdf\xa3") {
        let webm = head.windows(4).take(64).any(|w| w == b"webm");
        (MediaType::Video, if webm { "webm" } else { "mkv" })
    } else if at(0, b"RIFF") && at(8, b"AVI ") {
        (MediaType::Video, "avi")
    } else if at(0, b"\0\0\x01\xba") || at(0, b"\0\0\x01\xb3") {
        (MediaType::Video, "mpeg")
    } else if at(0, b"\x30\x26\xb2\x75") {
        (MediaType::Video, "wmv")
    } else if at(0, b"\x06\x0e\x2b\x34") {
        (MediaType::Video, "mxf")
    } else {
        return None;
    })
}

/// The media type of an extension FaceFusion accepts.
pub fn kind_of_extension(ext: &str) -> Option<MediaType> {
    let ext = ext.to_ascii_lowercase();
    if IMAGE_EXTENSIONS.contains(&ext.as_str()) {
        Some(MediaType::Image)
    } else if VIDEO_EXTENSIONS.contains(&ext.as_str()) {
        Some(MediaType::Video)
    } else {
        None
    }
}

/// Decides the extension the file at `path` is handed to FaceFusion with (FaceFusion decides
/// by extension only): the file's own extension when FaceFusion knows it and the content
/// agrees, else the one its first bytes show.
pub fn detect(path: &Path) -> Result<(MediaType, String), Error> {
    let mut head = [0u8; 64];
    let n = {
        use std::io::Read;
        let mut f = std::fs::File::open(path).map_err(|e| Error::Io(format!("open input: {e}")))?;
        let mut n = 0;
        while n < head.len() {
            match f.read(&mut head[n..]) {
                Ok(0) => break,
                Ok(k) => n += k,
                Err(e) => return Err(Error::Io(format!("read input: {e}"))),
            }
        }
        n
    };
    let own = path
        .extension()
        .and_then(|e| e.to_str())
        .map(str::to_ascii_lowercase);
    let own_kind = own.as_deref().and_then(kind_of_extension);
    match (sniff(&head[..n]), own_kind) {
        (Some((k, _)), Some(ok)) if k == ok => Ok((k, own.expect("has extension"))),
        (Some((k, ext)), _) => Ok((k, ext.to_owned())),
        (None, Some(k)) => Ok((k, own.expect("has extension"))),
        (None, None) => Err(Error::InvalidTarget(format!(
            "{} is not an image ({}) or video ({}) that FaceFusion accepts",
            path.file_name().unwrap_or_default().to_string_lossy(),
            IMAGE_EXTENSIONS.join(", "),
            VIDEO_EXTENSIONS.join(", ")
        ))),
    }
}

/// The output scale for a target of `w`×`h` in the box `bw`×`bh`: the largest multiple of 0.25
/// (0.25 to 8) whose result fits in the box.
pub fn scale_for_box(w: u32, h: u32, bw: u32, bh: u32) -> f64 {
    let fit = (f64::from(bw) / f64::from(w.max(1))).min(f64::from(bh) / f64::from(h.max(1)));
    ((fit * 4.0).floor() / 4.0).clamp(0.25, 8.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seed_body_parses_and_bad_values_are_refused() {
        let ok = parse(json!({"source_url": "s", "target_url": "t", "resolution": "1024x1024", "media_type": "image"}))
            .unwrap();
        assert_eq!(ok.sources(), ["s"]);
        assert_eq!(ok.media_type, Some(MediaType::Image));
        for bad in [
            json!({"target_url": "t"}),
            json!({"source_url": "s", "target_url": "t", "resolution": "big"}),
            json!({"source_url": "s", "target_url": "t", "scale": 0.3}),
            json!({"source_url": "s", "target_url": "t", "face_swapper_model": "simswap_unofficial_512", "face_swapper_pixel_boost": "256x256"}),
            json!({"source_url": "s", "target_url": "t", "trim_frame_start": 5, "trim_frame_end": 5}),
            json!({"source_url": "s", "target_url": "t", "nope": 1}),
        ] {
            let e = parse(bad.clone()).expect_err(&bad.to_string());
            assert_eq!(e.code(), "invalid_input", "{bad}");
        }
    }

    #[test]
    fn schema_lists_the_real_choices() {
        let s = schema();
        assert_eq!(
            s["properties"]["face_swapper_model"]["enum"]
                .as_array()
                .unwrap()
                .len(),
            13
        );
        assert_eq!(
            s["properties"]["face_enhancer_model"]["enum"]
                .as_array()
                .unwrap()
                .len(),
            9
        );
        assert_eq!(
            s["properties"]["scale"]["enum"].as_array().unwrap().len(),
            32
        );
        assert_eq!(s["allOf"].as_array().unwrap().len(), 4);
        assert_eq!(s["additionalProperties"], false);
    }

    #[test]
    fn sniffing_and_extensions() {
        assert_eq!(
            sniff(b"\x89PNG\r\n\x1a\n...."),
            Some((MediaType::Image, "png"))
        );
        assert_eq!(
            sniff(b"\0\0\0\x20ftypisom"),
            Some((MediaType::Video, "mp4"))
        );
        assert_eq!(
            sniff(b"\0\0\0\x14ftypqt  "),
            Some((MediaType::Video, "mov"))
        );
        assert_eq!(
            sniff(b"RIFF\0\0\0\0WEBPVP8 "),
            Some((MediaType::Image, "webp"))
        );
        assert_eq!(sniff(b"hello"), None);
        assert_eq!(kind_of_extension("MP4"), Some(MediaType::Video));
        assert_eq!(kind_of_extension("gif"), None);
    }

    #[test]
    fn resolution_maps_to_a_grid_scale() {
        assert_eq!(scale_for_box(256, 256, 1024, 1024), 4.0);
        assert_eq!(scale_for_box(1000, 500, 1024, 1024), 1.0);
        assert_eq!(scale_for_box(300, 300, 1024, 1024), 3.25);
        assert_eq!(scale_for_box(64, 48, 1024, 1024), 8.0);
        assert_eq!(scale_for_box(4000, 3000, 1024, 1024), 0.25);
        assert_eq!(parse_resolution("1920x1080"), Some((1920, 1080)));
        assert_eq!(parse_resolution("0x10"), None);
    }
}

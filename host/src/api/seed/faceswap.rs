//! The seed-compatible face-swap route: `POST /api/faceswap/create` turns the seed's body into a
//! `facefusion.faceswap` task (the FaceFusion plugin validates and runs it).

use std::sync::Arc;

use poem_openapi::{
    Enum, Object, OpenApi,
    param::{Header, Query},
    payload::Json,
};
use serde_json::{Map, Value};

use crate::api::{
    ApiTags, AppState,
    error::ApiError,
    tasks::{CreateResponse, CreateTaskRequest, create_task},
};

/// The task type the route creates.
pub(crate) const FACESWAP_TASK_TYPE: &str = "facefusion.faceswap";

/// Kind of the target.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Enum)]
#[oai(rename_all = "lowercase")]
pub(crate) enum FaceswapMediaType {
    /// A still image.
    Image,
    /// A video.
    Video,
}

/// The seed's face-swap body.
#[derive(Debug, Clone, Object)]
pub(crate) struct FaceswapRequest {
    /// URL (or upload key) of the image with the face to put in.
    pub source_url: String,
    /// URL (or upload key) of the image or video whose faces are replaced.
    pub target_url: String,
    /// Output box `WIDTHxHEIGHT`, e.g. `1024x1024` (mapped to FaceFusion's output scale).
    pub resolution: Option<String>,
    /// `image` or `video`; detected from the target when absent.
    pub media_type: Option<FaceswapMediaType>,
    /// More images of the same face (FaceFusion averages them), besides `source_url`.
    pub source_urls: Option<Vec<String>>,
    /// Output scale factor (FaceFusion `--output-image-scale` / `--output-video-scale`);
    /// `resolution` wins when both are given.
    pub scale: Option<f64>,
    /// FaceFusion `--face-swapper-model` (e.g. `inswapper_128`, `hyperswap_1a_256`).
    pub face_swapper_model: Option<String>,
    /// FaceFusion `--face-swapper-pixel-boost` (e.g. `512x512`; the choices depend on the
    /// model).
    pub face_swapper_pixel_boost: Option<String>,
    /// The seed's name for `face_swapper_pixel_boost` (the latter wins when both are given).
    pub pixel_boost: Option<String>,
    /// FaceFusion `--face-enhancer-model` (e.g. `gfpgan_1.4`, `codeformer`); adds the
    /// `face_enhancer` processor.
    pub face_enhancer_model: Option<String>,
    /// FaceFusion `--face-enhancer-blend`, 0 to 100.
    #[oai(validator(minimum(value = "0"), maximum(value = "100")))]
    pub face_enhancer_blend: Option<u32>,
    /// FaceFusion `--face-selector-mode`: `many`, `one` or `reference`.
    pub face_selector_mode: Option<String>,
    /// FaceFusion `--face-selector-order` (e.g. `large-small`, `left-right`).
    pub face_selector_order: Option<String>,
    /// FaceFusion `--reference-face-position`.
    #[oai(validator(minimum(value = "0"), maximum(value = "4294967295")))]
    pub reference_face_position: Option<u32>,
    /// FaceFusion `--reference-face-distance`.
    pub reference_face_distance: Option<f64>,
    /// FaceFusion `--reference-frame-number`.
    #[oai(validator(minimum(value = "0"), maximum(value = "4294967295")))]
    pub reference_frame_number: Option<u32>,
    /// FaceFusion `--output-image-quality` / `--output-video-quality`, 0 to 100.
    #[oai(validator(minimum(value = "0"), maximum(value = "100")))]
    pub output_quality: Option<u32>,
    /// FaceFusion `--output-video-encoder` (e.g. `libx264`).
    pub output_video_encoder: Option<String>,
    /// FaceFusion `--output-video-preset` (e.g. `veryfast`).
    pub output_video_preset: Option<String>,
    /// FaceFusion `--trim-frame-start`.
    #[oai(validator(minimum(value = "0"), maximum(value = "4294967295")))]
    pub trim_frame_start: Option<u32>,
    /// FaceFusion `--trim-frame-end`.
    #[oai(validator(minimum(value = "0"), maximum(value = "4294967295")))]
    pub trim_frame_end: Option<u32>,
    /// Higher runs first (default 0).
    #[oai(default)]
    pub priority: i32,
    /// URL to POST the finished task to.
    pub webhook_url: Option<String>,
    /// Deduplication key (also accepted as the `Idempotency-Key` header, which wins), at most
    /// 255 bytes, bound to this request like `POST /api/tasks`'s.
    pub idempotency_key: Option<String>,
}

impl FaceswapRequest {
    /// The task input this body stands for.
    pub(crate) fn to_input(&self) -> Value {
        let mut input = Map::new();
        input.insert("source_url".into(), self.source_url.clone().into());
        input.insert("target_url".into(), self.target_url.clone().into());
        if let Some(r) = &self.resolution {
            input.insert("resolution".into(), r.clone().into());
        }
        if let Some(m) = self.media_type {
            let name = match m {
                FaceswapMediaType::Image => "image",
                FaceswapMediaType::Video => "video",
            };
            input.insert("media_type".into(), name.into());
        }
        // The seed's face-swap options, forwarded under the plugin's names (the plugin's
        // schema validates them; see plugins/facefusion for the flag each one sets).
        let mut put = |name: &str, v: Option<Value>| {
            if let Some(v) = v {
                input.insert(name.to_owned(), v);
            }
        };
        put("source_urls", self.source_urls.clone().map(Value::from));
        put("scale", self.scale.map(Value::from));
        put(
            "face_swapper_model",
            self.face_swapper_model.clone().map(Value::from),
        );
        put(
            "face_swapper_pixel_boost",
            self.face_swapper_pixel_boost
                .clone()
                .or_else(|| self.pixel_boost.clone())
                .map(Value::from),
        );
        put(
            "face_enhancer_model",
            self.face_enhancer_model.clone().map(Value::from),
        );
        put(
            "face_enhancer_blend",
            self.face_enhancer_blend.map(Value::from),
        );
        put(
            "face_selector_mode",
            self.face_selector_mode.clone().map(Value::from),
        );
        put(
            "face_selector_order",
            self.face_selector_order.clone().map(Value::from),
        );
        put(
            "reference_face_position",
            self.reference_face_position.map(Value::from),
        );
        put(
            "reference_face_distance",
            self.reference_face_distance.map(Value::from),
        );
        put(
            "reference_frame_number",
            self.reference_frame_number.map(Value::from),
        );
        put("output_quality", self.output_quality.map(Value::from));
        put(
            "output_video_encoder",
            self.output_video_encoder.clone().map(Value::from),
        );
        put(
            "output_video_preset",
            self.output_video_preset.clone().map(Value::from),
        );
        put("trim_frame_start", self.trim_frame_start.map(Value::from));
        put("trim_frame_end", self.trim_frame_end.map(Value::from));
        Value::Object(input)
    }
}

/// The seed-compatible face-swap endpoint.
pub(crate) struct FaceswapApi {
    /// Shared state.
    pub state: Arc<AppState>,
}

#[OpenApi(tag = "ApiTags::Tasks")]
impl FaceswapApi {
    /// Swap faces (seed-compatible).
    ///
    /// Creates a `facefusion.faceswap` task from `{"source_url", "target_url", "resolution",
    /// "media_type"}`. Answers 202 with the task (200 when `wait` saw it finish), 422 when the
    /// body fails the task type's schema, 503 when the FaceFusion plugin is not loaded.
    #[oai(
        path = "/api/faceswap/create",
        method = "post",
        operation_id = "faceswap_create"
    )]
    async fn create(
        &self,
        body: Json<FaceswapRequest>,
        /// Seconds to wait for the task to finish (at most 600).
        #[oai(validator(minimum(value = "0"), maximum(value = "600")))]
        wait: Query<Option<u64>>,
        /// Deduplication key.
        #[oai(name = "Idempotency-Key")]
        idempotency_key: Header<Option<String>>,
    ) -> Result<CreateResponse, ApiError> {
        if self.state.registry.task_type(FACESWAP_TASK_TYPE).is_none() {
            return Err(ApiError::new(
                poem::http::StatusCode::SERVICE_UNAVAILABLE,
                crate::error_codes::ENGINE_UNAVAILABLE,
                "face swapping needs the facefusion plugin, which is not loaded \
                 (see GET /api/plugins and plugins.toml)",
            ));
        }
        let req = CreateTaskRequest {
            webhook_events: None,
            task_type: FACESWAP_TASK_TYPE.into(),
            input: body.0.to_input(),
            priority: body.0.priority,
            max_attempts: None,
            webhook_url: body.0.webhook_url,
            idempotency_key: body.0.idempotency_key,
            timeout_secs: None,
        };
        create_task(&self.state, req, idempotency_key.0, wait.0).await
    }
}

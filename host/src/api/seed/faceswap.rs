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

//! ComfyUI's read-only routes through the `comfyui` plugin's ops (the host reaches plugins
//! only through ops): `info` (`object_info`, `embeddings`, `models`, `features`,
//! `extensions`) answered by the first reachable instance, and `system_stats`.

use std::sync::Arc;

use poem::{
    Response, handler,
    http::StatusCode,
    web::{Data, Path},
};
use serde_json::{Value, json};

use super::{AppState, PLUGIN, json_response, not_loaded};
use crate::api::error::error_response;
use crate::error_codes;

/// Calls an op of the plugin: its answer, or the API's error (503 `comfyui_not_loaded`, 503
/// `engine_unavailable` when no instance answers).
async fn op(state: &AppState, name: &str, args: Value) -> Response {
    let Some(plugin) = state.registry.plugin(PLUGIN) else {
        return not_loaded();
    };
    match plugin.call_op(name, &args).await {
        Ok(v) => json_response(StatusCode::OK, &v),
        Err(e) => {
            let status = match e.code.as_str() {
                error_codes::INVALID_INPUT => StatusCode::BAD_REQUEST,
                error_codes::UNKNOWN_OP | error_codes::INTERNAL | error_codes::PLUGIN_PANIC => {
                    StatusCode::INTERNAL_SERVER_ERROR
                }
                _ => StatusCode::SERVICE_UNAVAILABLE,
            };
            error_response(status, e.code.as_str(), e.message.as_str())
        }
    }
}

async fn info(state: &AppState, route: String) -> Response {
    op(state, "info", json!({ "route": route })).await
}

/// `GET /object_info`.
#[handler]
pub(crate) async fn object_info(Data(state): Data<&Arc<AppState>>) -> Response {
    info(state, "object_info".into()).await
}

/// `GET /object_info/{class}`.
#[handler]
pub(crate) async fn object_info_class(
    Path(class): Path<String>,
    Data(state): Data<&Arc<AppState>>,
) -> Response {
    info(state, format!("object_info/{class}")).await
}

/// `GET /embeddings`.
#[handler]
pub(crate) async fn embeddings(Data(state): Data<&Arc<AppState>>) -> Response {
    info(state, "embeddings".into()).await
}

/// `GET /models`.
#[handler]
pub(crate) async fn models(Data(state): Data<&Arc<AppState>>) -> Response {
    info(state, "models".into()).await
}

/// `GET /models/{folder}`.
#[handler]
pub(crate) async fn models_folder(
    Path(folder): Path<String>,
    Data(state): Data<&Arc<AppState>>,
) -> Response {
    info(state, format!("models/{folder}")).await
}

/// `GET /features`: the gateway's own (it sends no preview frames, and its upload limit is
/// `server.max_upload_bytes`).
#[handler]
pub(crate) async fn features(Data(state): Data<&Arc<AppState>>) -> Response {
    json_response(
        StatusCode::OK,
        &json!({"supports_preview_metadata": false, "max_upload_size": state.max_upload_bytes}),
    )
}

/// `GET /extensions`: none (the gateway serves no front-end).
#[handler]
pub(crate) async fn extensions() -> Response {
    json_response(StatusCode::OK, &json!([]))
}

/// `GET /system_stats`: the first reachable instance's, with every instance's under
/// `instances`.
#[handler]
pub(crate) async fn system_stats(Data(state): Data<&Arc<AppState>>) -> Response {
    op(state, "system_stats", json!({})).await
}

#[cfg(test)]
mod tests {
    #[test]
    fn unreachable_is_a_documented_status() {
        let e = crate::error_codes::find(crate::error_codes::ENGINE_UNAVAILABLE).unwrap();
        assert_eq!(e.status, Some(503));
    }
}

//! The seed's ComfyUI routes and the workflow-template routes.
//!
//! The host knows nothing of ComfyUI here beyond the task type `comfyui.workflow` and the ops
//! the `comfyui` plugin registers (`queue_status`, `system_stats`, `interrupt`,
//! `list_workflows`): every route maps to a task or an op call.
//!
//! - `POST /api/tasks/create`: both seed bodies,
//!   `{"workflow_name", "params": {"input_data": {"wf_json": {...}}}}` and
//!   `{"workflow", "inputs"}`, become a `comfyui.workflow` task `{"workflow", "params"}`.
//! - `GET /api/comfyui-queue-status`, `GET /api/comfyui-system-stats`,
//!   `POST /api/comfyui-interrupt`: the plugin's ops (503 `comfyui_not_loaded` without the
//!   plugin, 503 `engine_unavailable` when no ComfyUI answers).
//! - `GET /api/workflows` and `POST /api/workflows/{name}` (body: the template's parameters).
//!
//! These are plain poem handlers; [`spec_paths`] documents them in `/openapi.json`, with one
//! operation per installed template.

use std::sync::Arc;

use poem::{
    Body, IntoResponse, Request, Response, handler,
    http::StatusCode,
    web::{Data, Path},
};
use serde_json::{Map, Value, json};

use crate::api::{
    AppState,
    error::error_response,
    tasks::{CreateTaskRequest, create_task},
};
use crate::{error_codes, plugins::Registry};

/// The plugin behind these routes.
pub(crate) const PLUGIN: &str = "comfyui";
/// Its task type.
pub(crate) const TASK_TYPE: &str = "comfyui.workflow";

/// Why a ComfyUI route failed (before reaching a task or an op).
#[derive(Debug)]
pub(crate) enum ComfyRouteError {
    /// The `comfyui` plugin is not loaded.
    NotLoaded,
    /// The body is not one of the accepted shapes.
    BadBody(String),
    /// No template of that name.
    UnknownWorkflow(String),
    /// The op failed: (plugin error code, message).
    Op(String, String),
}

impl ComfyRouteError {
    /// Stable code.
    pub(crate) fn code(&self) -> &str {
        match self {
            ComfyRouteError::NotLoaded => error_codes::COMFYUI_NOT_LOADED,
            ComfyRouteError::BadBody(_) => error_codes::INVALID_BODY,
            ComfyRouteError::UnknownWorkflow(_) => error_codes::COMFYUI_WORKFLOW_NOT_FOUND,
            ComfyRouteError::Op(code, _) => code,
        }
    }

    fn into_response(self) -> Response {
        let (status, message) = match &self {
            ComfyRouteError::NotLoaded => (
                StatusCode::SERVICE_UNAVAILABLE,
                "the comfyui plugin is not loaded (see GET /api/plugins and plugins.toml)"
                    .to_owned(),
            ),
            ComfyRouteError::BadBody(m) => (StatusCode::BAD_REQUEST, m.clone()),
            ComfyRouteError::UnknownWorkflow(n) => (
                StatusCode::NOT_FOUND,
                format!("no workflow template named {n:?} (see GET /api/workflows)"),
            ),
            ComfyRouteError::Op(code, m) => {
                let status = match code.as_str() {
                    error_codes::INVALID_INPUT => StatusCode::UNPROCESSABLE_ENTITY,
                    error_codes::UNKNOWN_OP | error_codes::INTERNAL | error_codes::PLUGIN_PANIC => {
                        StatusCode::INTERNAL_SERVER_ERROR
                    }
                    _ => StatusCode::SERVICE_UNAVAILABLE,
                };
                (status, m.clone())
            }
        };
        error_response(status, self.code(), &message)
    }
}

async fn op(state: &AppState, name: &str, args: Value) -> Result<Value, ComfyRouteError> {
    let plugin = state
        .registry
        .plugin(PLUGIN)
        .ok_or(ComfyRouteError::NotLoaded)?;
    plugin
        .call_op(name, &args)
        .await
        .map_err(|e| ComfyRouteError::Op(e.code.to_string(), e.message.to_string()))
}

fn json_response(v: &Value) -> Response {
    Response::builder()
        .content_type("application/json")
        .body(v.to_string())
}

fn answer(r: Result<Value, ComfyRouteError>) -> Response {
    match r {
        Ok(v) => json_response(&v),
        Err(e) => e.into_response(),
    }
}

fn query_wait(req: &Request) -> Result<Option<u64>, ComfyRouteError> {
    for pair in req.uri().query().unwrap_or("").split('&') {
        if let Some(v) = pair.strip_prefix("wait=") {
            return match v.parse::<u64>() {
                Ok(secs) if secs <= crate::api::tasks::MAX_WAIT_SECS => Ok(Some(secs)),
                _ => Err(ComfyRouteError::BadBody(format!(
                    "wait must be a number of seconds from 0 to {}, not {v:?}",
                    crate::api::tasks::MAX_WAIT_SECS
                ))),
            };
        }
    }
    Ok(None)
}

async fn read_json(body: Body) -> Result<Value, ComfyRouteError> {
    let bytes = body
        .into_vec()
        .await
        .map_err(|e| ComfyRouteError::BadBody(format!("cannot read the body: {e}")))?;
    // JSON's whitespace only: a form feed is not an empty body.
    if bytes
        .iter()
        .all(|b| matches!(b, b' ' | b'\t' | b'\n' | b'\r'))
    {
        return Ok(json!({}));
    }
    serde_json::from_slice(&bytes)
        .map_err(|e| ComfyRouteError::BadBody(format!("the body is not valid JSON: {e}")))
}

/// Maps a seed body to `(workflow, params)`: the workflow is a template's name, or (under
/// `workflow`) any other JSON object, passed on as a graph for the task type's schema to judge
/// (422 `invalid_workflow` when it is not an API-format graph, as on `POST /api/tasks`).
pub(crate) fn seed_to_input(body: &Value) -> Result<(Value, Value), String> {
    let obj = body.as_object().ok_or("the body must be a JSON object")?;
    let workflow = obj
        .get("workflow_name")
        .or_else(|| obj.get("workflow"))
        .ok_or(
            "give `workflow_name` (with `params.input_data.wf_json`) or `workflow` (with `inputs`)",
        )?;
    let workflow = match workflow {
        Value::Object(_) if !obj.contains_key("workflow_name") => workflow.clone(),
        _ => Value::String(
            workflow
                .as_str()
                .filter(|s| !s.is_empty())
                .ok_or("the workflow name must be a non-empty string (or, under `workflow`, an API-format graph)")?
                .to_owned(),
        ),
    };
    let params = if obj.contains_key("workflow_name") {
        match obj.get("params") {
            None | Some(Value::Null) => json!({}),
            Some(p) => match p.pointer("/input_data/wf_json") {
                Some(w) => w.clone(),
                None if p.get("input_data").is_none() && p.is_object() => p.clone(),
                None => return Err("`params.input_data.wf_json` must hold the parameters".into()),
            },
        }
    } else {
        obj.get("inputs")
            .or_else(|| obj.get("params"))
            .cloned()
            .unwrap_or_else(|| json!({}))
    };
    if !params.is_object() {
        return Err("the workflow parameters must be a JSON object".into());
    }
    Ok((workflow, params))
}

async fn create(
    state: &AppState,
    req: &Request,
    workflow: Value,
    params: Value,
    envelope: &Map<String, Value>,
) -> Response {
    if state.registry.task_type(TASK_TYPE).is_none() {
        return ComfyRouteError::NotLoaded.into_response();
    }
    let wait = match query_wait(req) {
        Ok(w) => w,
        Err(e) => return e.into_response(),
    };
    let header_key = req
        .headers()
        .get("idempotency-key")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let request = CreateTaskRequest {
        webhook_events: None,
        task_type: TASK_TYPE.into(),
        input: json!({"workflow": workflow, "params": params}),
        priority: envelope
            .get("priority")
            .and_then(Value::as_i64)
            .and_then(|p| i32::try_from(p).ok())
            .unwrap_or(0),
        max_attempts: envelope
            .get("max_attempts")
            .and_then(Value::as_u64)
            .map(|n| n.clamp(1, 100) as u32),
        webhook_url: envelope
            .get("webhook_url")
            .and_then(Value::as_str)
            .map(str::to_owned),
        idempotency_key: envelope
            .get("idempotency_key")
            .and_then(Value::as_str)
            .map(str::to_owned),
        timeout_secs: envelope
            .get("timeout_secs")
            .and_then(Value::as_u64)
            .and_then(|n| u32::try_from(n.clamp(1, 604_800)).ok()),
    };
    match create_task(state, request, header_key, wait).await {
        Ok(r) => r.into_response(),
        Err(e) => e.into_response(),
    }
}

/// `POST /api/tasks/create`: the seed's two bodies.
#[handler]
pub(crate) async fn seed_create(
    req: &Request,
    body: Body,
    Data(state): Data<&Arc<AppState>>,
) -> Response {
    let body = match read_json(body).await {
        Ok(b) => b,
        Err(e) => return e.into_response(),
    };
    let (workflow, params) = match seed_to_input(&body) {
        Ok(x) => x,
        Err(m) => return ComfyRouteError::BadBody(m).into_response(),
    };
    let envelope = body.as_object().cloned().unwrap_or_default();
    create(state, req, workflow, params, &envelope).await
}

/// `GET /api/comfyui-queue-status`.
#[handler]
pub(crate) async fn queue_status(Data(state): Data<&Arc<AppState>>) -> Response {
    answer(op(state, "queue_status", json!({})).await)
}

/// `GET /api/comfyui-system-stats`.
#[handler]
pub(crate) async fn system_stats(Data(state): Data<&Arc<AppState>>) -> Response {
    answer(op(state, "system_stats", json!({})).await)
}

/// `POST /api/comfyui-interrupt` (optional body `{"prompt_id"}`).
#[handler]
pub(crate) async fn interrupt(body: Body, Data(state): Data<&Arc<AppState>>) -> Response {
    let args = match read_json(body).await {
        Ok(v) if v.is_object() => v,
        Ok(_) => {
            return ComfyRouteError::BadBody("the body must be a JSON object".into())
                .into_response();
        }
        Err(e) => return e.into_response(),
    };
    answer(op(state, "interrupt", args).await)
}

/// `GET /api/workflows`.
#[handler]
pub(crate) async fn list_workflows(Data(state): Data<&Arc<AppState>>) -> Response {
    answer(op(state, "list_workflows", json!({})).await)
}

/// `POST /api/workflows/{name}`: the body is the template's parameters.
#[handler]
pub(crate) async fn run_workflow(
    req: &Request,
    Path(name): Path<String>,
    body: Body,
    Data(state): Data<&Arc<AppState>>,
) -> Response {
    let list = match op(state, "list_workflows", json!({})).await {
        Ok(l) => l,
        Err(e) => return e.into_response(),
    };
    let known = list["workflows"]
        .as_array()
        .is_some_and(|w| w.iter().any(|w| w["name"] == name.as_str()));
    if !known {
        return ComfyRouteError::UnknownWorkflow(name).into_response();
    }
    let params = match read_json(body).await {
        Ok(v) if v.is_object() => v,
        Ok(_) => {
            return ComfyRouteError::BadBody("the body must be a JSON object of parameters".into())
                .into_response();
        }
        Err(e) => return e.into_response(),
    };
    create(state, req, Value::String(name), params, &Map::new()).await
}

/// Mounts the routes on `route`.
pub(crate) fn mount(route: poem::Route) -> poem::Route {
    use poem::{get, post};
    route
        .at("/api/tasks/create", post(seed_create))
        .at("/api/comfyui-queue-status", get(queue_status))
        .at("/api/comfyui-system-stats", get(system_stats))
        .at("/api/comfyui-interrupt", post(interrupt))
        .at("/api/workflows", get(list_workflows))
        .at("/api/workflows/:name", post(run_workflow))
}

fn err(desc: &str) -> Value {
    json!({"description": desc, "content": {"application/json; charset=utf-8": {"schema": {"$ref": "#/components/schemas/ErrorBody"}}}})
}

fn task_answers() -> Value {
    let task = json!({"application/json; charset=utf-8": {"schema": {"$ref": "#/components/schemas/TaskView"}}});
    json!({
        "202": {"description": "Accepted: the task is queued", "content": task},
        "200": {"description": "Finished within `wait`, or the idempotency key named a finished task", "content": task},
        "400": err("Malformed body"),
        "401": err("Missing or wrong API key"),
        "404": err("Unknown workflow template"),
        "409": err("The idempotency key is held by a task created by another request (`idempotency_conflict`)"),
        "422": err("Unknown or out-of-range parameters"),
        "429": err("Queue full"),
        "503": err("The comfyui plugin is not loaded, or the store is unavailable")
    })
}

fn op_answers(what: &str) -> Value {
    json!({
        "200": {"description": what, "content": {"application/json": {"schema": {"type": "object"}}}},
        "401": err("Missing or wrong API key"),
        "503": err("`comfyui_not_loaded`, or `engine_unavailable` when no ComfyUI answers")
    })
}

/// The documented paths of this module, with one `POST /api/workflows/{name}` operation per
/// template the `comfyui.workflow` task type declares (its schema's `x-workflows`).
pub(crate) fn spec_paths(registry: &Registry) -> Map<String, Value> {
    let wait = json!({"name": "wait", "in": "query", "required": false, "schema": {"type": "integer", "minimum": 0, "maximum": 600}, "description": "Seconds to wait for the task to finish"});
    let key = json!({"name": "Idempotency-Key", "in": "header", "required": false, "schema": {"type": "string"}, "description": "Deduplication key, at most 255 bytes, bound to this request"});
    let templates = registry
        .task_type(TASK_TYPE)
        .and_then(|t| t.desc.input_schema.get("x-workflows").cloned())
        .and_then(|w| w.as_array().cloned())
        .unwrap_or_default();
    // One variant per template and body shape, so a body valid here names a template and
    // parameters it accepts.
    let mut shapes = Vec::new();
    for t in &templates {
        let (Some(name), params) = (t["name"].as_str(), &t["params_schema"]) else {
            continue;
        };
        // The parameters may be left out only when the template requires none.
        let needs = params["required"].as_array().is_some_and(|r| !r.is_empty());
        let (by_name, by_workflow) = if needs {
            (
                json!(["workflow_name", "params"]),
                json!(["workflow", "inputs"]),
            )
        } else {
            (json!(["workflow_name"]), json!(["workflow"]))
        };
        shapes.push(json!({"type": "object", "required": by_name, "properties": {
            "workflow_name": {"type": "string", "enum": [name]},
            // `params` is `{"input_data": {"wf_json": PARAMS}}`, or PARAMS themselves.
            "params": {"nullable": !needs, "anyOf": [
                {"type": "object", "required": ["input_data"], "properties": {"input_data": {"type": "object", "required": ["wf_json"], "properties": {"wf_json": params}}}},
                params
            ]}}}));
        shapes.push(
            json!({"type": "object", "required": by_workflow, "properties": {
            "workflow": {"type": "string", "enum": [name]}, "inputs": params}}),
        );
    }
    if shapes.is_empty() {
        shapes.push(json!({"type": "object", "required": ["workflow"], "properties": {"workflow": {"type": "string", "minLength": 1}, "inputs": {"type": "object"}}}));
    }
    let mut paths = Map::new();
    paths.insert("/api/tasks/create".into(), json!({"post": {
        "tags": ["ComfyUI"],
        "summary": "Create a ComfyUI task from a template (seed-compatible)",
        "description": "Accepts `{\"workflow_name\": NAME, \"params\": {\"input_data\": {\"wf_json\": {...}}}}` or `{\"workflow\": NAME, \"inputs\": {...}}`; both become a `comfyui.workflow` task `{\"workflow\": NAME, \"params\": {...}}`. `workflow` may also be an API-format graph (422 `invalid_workflow` when it is not one). Optional `priority`, `max_attempts`, `webhook_url`, `idempotency_key`.",
        "operationId": "seed_create_task",
        "parameters": [wait, key],
        "requestBody": {"required": true, "content": {"application/json": {"schema": {"oneOf": shapes}}}},
        "responses": task_answers()
    }}));
    paths.insert("/api/comfyui-queue-status".into(), json!({"get": {
        "tags": ["ComfyUI"], "summary": "ComfyUI's queue (every instance; pending sorted by number)",
        "operationId": "comfyui_queue_status", "responses": op_answers("`queue_running`, `queue_pending`, `instances`")}}));
    paths.insert("/api/comfyui-system-stats".into(), json!({"get": {
        "tags": ["ComfyUI"], "summary": "ComfyUI's system_stats (first reachable instance, plus `instances`)",
        "operationId": "comfyui_system_stats", "responses": op_answers("system_stats")}}));
    paths.insert("/api/comfyui-interrupt".into(), json!({"post": {
        "tags": ["ComfyUI"], "summary": "Interrupt the running ComfyUI prompt",
        "operationId": "comfyui_interrupt",
        "requestBody": {"required": false, "content": {"application/json": {"schema": {"type": "object", "properties": {"prompt_id": {"type": "string"}}}}}},
        "responses": {
            "400": err("The body is not a JSON object (`invalid_body`)"),
            "200": op_answers("`{interrupted: [urls]}`")["200"],
            "401": err("Missing or wrong API key"),
            "503": err("`comfyui_not_loaded`, or `engine_unavailable` when no ComfyUI answers")}}}));
    paths.insert("/api/workflows".into(), json!({"get": {
        "tags": ["ComfyUI"], "summary": "Installed workflow templates with their parameter schemas",
        "operationId": "list_workflows", "responses": op_answers("`{workflows: [{name, description, params_schema, media_params}]}`")}}));
    for t in templates {
        let Some(name) = t["name"].as_str() else {
            continue;
        };
        paths.insert(format!("/api/workflows/{name}"), json!({"post": {
            "tags": ["ComfyUI"],
            "summary": format!("Run the `{name}` workflow"),
            "description": t["description"],
            "operationId": format!("workflow_{name}"),
            "parameters": [wait, key],
            // Required when the template has required parameters (an absent body is `{}`).
            "requestBody": {"required": t["params_schema"]["required"].as_array().is_some_and(|r| !r.is_empty()), "content": {"application/json": {"schema": t["params_schema"]}}},
            "responses": task_answers()
        }}));
    }
    paths
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn both_seed_bodies_map_to_a_template_and_its_params() {
        let (n, p) = seed_to_input(&json!({"workflow_name": "basic_generation",
            "params": {"input_data": {"wf_json": {"prompt": "a fox", "steps": 4}}}}))
        .unwrap();
        assert_eq!(n, json!("basic_generation"));
        assert_eq!(p, json!({"prompt": "a fox", "steps": 4}));
        let (n, p) =
            seed_to_input(&json!({"workflow": "solid_color", "inputs": {"color": 5}})).unwrap();
        assert_eq!((n, p), (json!("solid_color"), json!({"color": 5})));
        let graph = json!({"1": {"class_type": "EmptyImage", "inputs": {}}});
        let (n, _) = seed_to_input(&json!({"workflow": graph})).unwrap();
        assert_eq!(n, graph);
        let (_, p) = seed_to_input(&json!({"workflow_name": "x"})).unwrap();
        assert_eq!(p, json!({}));
        for bad in [
            json!({}),
            json!([]),
            json!({"workflow": ""}),
            json!({"workflow": 3}),
            json!({"workflow_name": {"1": {}}}),
            json!({"workflow": "x", "inputs": [1]}),
            json!({"workflow_name": "x", "params": {"input_data": {}}}),
        ] {
            assert!(seed_to_input(&bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn route_errors_have_stable_codes() {
        assert_eq!(
            ComfyRouteError::NotLoaded.code(),
            error_codes::COMFYUI_NOT_LOADED
        );
        assert_eq!(
            ComfyRouteError::UnknownWorkflow("x".into()).code(),
            error_codes::COMFYUI_WORKFLOW_NOT_FOUND
        );
        assert_eq!(
            ComfyRouteError::BadBody("x".into()).code(),
            error_codes::INVALID_BODY
        );
        let r = ComfyRouteError::Op(error_codes::ENGINE_UNAVAILABLE.into(), "down".into())
            .into_response();
        assert_eq!(r.status(), StatusCode::SERVICE_UNAVAILABLE);
        let r = ComfyRouteError::NotLoaded.into_response();
        assert_eq!(r.status(), StatusCode::SERVICE_UNAVAILABLE);
    }

    #[test]
    fn route_and_op_statuses_are_the_documented_ones() {
        let errors = [
            ComfyRouteError::NotLoaded,
            ComfyRouteError::BadBody("x".into()),
            ComfyRouteError::UnknownWorkflow("x".into()),
        ];
        // The shared plugin codes an op can answer that are documented as HTTP answers.
        let ops = [
            error_codes::INVALID_INPUT,
            error_codes::ENGINE_UNAVAILABLE,
            error_codes::ENGINE_ERROR,
            error_codes::PLUGIN_PANIC,
            error_codes::NOT_INITIALIZED,
            error_codes::UNKNOWN_OP,
            error_codes::INTERNAL,
        ]
        .map(|code| ComfyRouteError::Op(code.into(), "m".into()));
        for e in errors.into_iter().chain(ops) {
            let code = e.code().to_owned();
            let status = e.into_response().status().as_u16();
            let entry = error_codes::find(&code).unwrap();
            assert_eq!(entry.status, Some(status), "{code}");
        }
    }
}

//! The served OpenAPI document: poem-openapi's spec plus what only exists at run time.
//!
//! Added here: each registered task type's input schema (under `components/schemas` as
//! `TaskInput.{type}`, and as a `oneOf` of the `POST /api/tasks` body so `/docs` shows one
//! form per type), the routes served by plain poem handlers (uploads, files, WebSocket), and
//! the error codes of [`crate::error_codes`] (the `ErrorCode` schema: every code of an HTTP
//! error body; the `x-error-codes` extension: every code, wherever it appears).
//! The document is rebuilt when plugins change (the registry's generation).

use std::sync::{Arc, Mutex};

use serde_json::{Value, json};

use crate::{error_codes, plugins::Registry};

/// (registry generation, spec JSON, Swagger UI page).
type Cached = (u64, Arc<String>, Arc<String>);

/// The merged spec and the Swagger UI page, cached per registry generation.
#[derive(Clone)]
pub(crate) struct Docs {
    base_spec: Arc<String>,
    base_html: Arc<String>,
    registry: Arc<Registry>,
    cache: Arc<Mutex<Option<Cached>>>,
}

fn error_ref() -> Value {
    json!({"application/json; charset=utf-8": {"schema": {"$ref": "#/components/schemas/ErrorBody"}}})
}

/// The storage keys `/files/{key}` accepts (the rules of `storage::validate_key`): segments
/// separated by `/`, none empty, `.` or `..`; no backslash, no control character.
fn key_pattern() -> String {
    let any = r"[^/\\\u0000-\u001f\u007f-\u009f]";
    let not_dot = r"[^./\\\u0000-\u001f\u007f-\u009f]";
    let segment = format!("(?:{any}*{not_dot}{any}*|\\.\\.\\.+)");
    format!("^{segment}(?:/{segment})*$")
}

fn extra_paths() -> Value {
    json!({
        "/api/uploads": {"post": {
            "tags": ["Tasks"],
            "summary": "Upload a file to use as a task input",
            "description": "Streams the first file field of a multipart body into storage under `uploads/{uuid}/{name}`. Use the answered `key` or `url` as a task input: the service reads its own stored objects directly, never over the network.",
            "operationId": "upload",
            "requestBody": {"required": true, "content": {"multipart/form-data": {"schema": {
                "type": "object", "required": ["file"],
                "properties": {"file": {"type": "string", "format": "binary"}}}}}},
            "responses": {
                "201": {"description": "Stored", "content": {"application/json": {"schema": {
                    "type": "object", "required": ["key", "url", "size", "content_type"],
                    "properties": {"key": {"type": "string"}, "url": {"type": "string"},
                                   "size": {"type": "integer"}, "content_type": {"type": "string"}}}}}},
                "400": {"description": "No file field, a malformed body, or a body that ends before its multipart end (`upload_incomplete`: nothing is stored)", "content": error_ref()},
                "401": {"description": "Missing or wrong API key", "content": error_ref()},
                "413": {"description": "Over `server.max_upload_bytes`", "content": error_ref()},
                "503": {"description": "Storage unavailable, or `server.max_concurrent_uploads` uploads running (`too_many_uploads`, with `Retry-After`)", "content": error_ref()}
            }
        }},
        "/api/tasks/{task_id}/ws": {"get": {
            "tags": ["Tasks"],
            "summary": "Follow a task's events (WebSocket)",
            "description": "Upgrade to a WebSocket; each text message is the same JSON as the SSE events (`event`, `task_id`, `status`, `progress`, `task`). The server closes the socket after the terminal state.",
            "operationId": "task_ws",
            "parameters": [
                {"name": "task_id", "in": "path", "required": true, "schema": {"type": "string"}},
                {"name": "Connection", "in": "header", "required": true, "schema": {"type": "string", "enum": ["Upgrade"]}},
                {"name": "Upgrade", "in": "header", "required": true, "schema": {"type": "string", "enum": ["websocket"]}},
                {"name": "Sec-WebSocket-Version", "in": "header", "required": true, "schema": {"type": "string", "enum": ["13"]}},
                {"name": "Sec-WebSocket-Key", "in": "header", "required": true, "schema": {"type": "string", "enum": ["dGhlIHNhbXBsZSBub25jZQ=="]}, "description": "Any base64 of 16 bytes"}
            ],
            "responses": {
                "101": {"description": "Switching protocols"},
                "400": {"description": "Not a WebSocket upgrade request (`bad_request`)", "content": error_ref()},
                "401": {"description": "Missing or wrong API key", "content": error_ref()},
                "404": {"description": "Unknown task", "content": error_ref()},
                "503": {"description": "The task store is unavailable, or `server.max_streams` subscribers are open (`too_many_streams`)", "content": error_ref()}
            }
        }},
        "/metrics": {"get": {
            "tags": ["System"],
            "summary": "Metrics in the Prometheus text format",
            "description": "Every metric with its labels is listed in the README (\"Metrics\"). Needs an API key when keys are configured; `server.metrics_bind` serves the same without a key on a separate address.",
            "operationId": "metrics",
            "responses": {
                "200": {"description": "The exposition", "content": {"text/plain": {"schema": {"type": "string"}}}},
                "401": {"description": "Missing or wrong API key", "content": error_ref()}
            }
        }},
        "/files/{key}": {"get": {
            "tags": ["Tasks"],
            "summary": "Download a stored output or upload (fs and memory storage)",
            "description": "Images, audio, video and PDF are answered inline; anything else (HTML, SVG, XML, JavaScript, unknown types) as `Content-Disposition: attachment` with `Content-Security-Policy: sandbox`. Every answer has `X-Content-Type-Options: nosniff`.",
            "operationId": "get_file",
            "parameters": [
                {"name": "key", "in": "path", "required": true, "schema": {"type": "string", "maxLength": 1024, "pattern": key_pattern()}, "description": "The storage key: `/`-separated segments, none empty, `.` or `..`, no backslash or control character"},
                {"name": "Range", "in": "header", "required": false, "schema": {"type": "string"}, "description": "`bytes=START-END`, `bytes=START-` or `bytes=-SUFFIX`"}
            ],
            "responses": {
                "200": {"description": "The file", "content": {"application/octet-stream": {"schema": {"type": "string", "format": "binary"}}}},
                "206": {"description": "The requested range", "content": {"application/octet-stream": {"schema": {"type": "string", "format": "binary"}}}},
                "400": {"description": "Invalid key", "content": error_ref()},
                "404": {"description": "No such file", "content": error_ref()},
                "416": {"description": "Range starts past the end", "content": error_ref()}
            }
        }}
    })
}

/// `components.schemas.ErrorCode`: the codes an HTTP error body can carry, and a table of their
/// statuses and meanings.
fn error_code_schema() -> Value {
    let http: Vec<&error_codes::ErrorCode> =
        error_codes::ALL.iter().filter(|e| e.is_http()).collect();
    let mut description = String::from(
        "The `code` of an HTTP error body (`ErrorBody.error.code`). The ComfyUI routes also \
         pass on the code of a plugin's engine operation, and plugins may add codes of their \
         own; `x-error-codes` at the top of this document lists every code aihost produces, \
         task codes included.\n\n| code | status | meaning |\n|---|---|---|\n",
    );
    for e in &http {
        let status = e.status.map(|s| s.to_string()).unwrap_or_default();
        description.push_str(&format!("| `{}` | {status} | {} |\n", e.code, e.meaning));
    }
    json!({
        "type": "string",
        "enum": http.iter().map(|e| e.code).collect::<Vec<_>>(),
        "description": description,
    })
}

/// The `x-error-codes` extension: every code with where it appears (`http`, `task`,
/// `plugin_report`, `cli`, `library`), its HTTP status when it is an HTTP answer, and its
/// meaning.
fn error_code_list() -> Value {
    error_codes::ALL
        .iter()
        .map(|e| {
            let mut entry = json!({
                "code": e.code,
                "surfaces": e.surfaces.iter().map(|s| s.as_str()).collect::<Vec<_>>(),
                "meaning": e.meaning,
            });
            if let Some(status) = e.status {
                entry["status"] = json!(status);
            }
            entry
        })
        .collect()
}

/// Merges the run-time parts into poem-openapi's document.
pub(crate) fn merge(base: &str, registry: &Registry) -> Value {
    let mut spec: Value = serde_json::from_str(base).unwrap_or_else(|_| json!({}));
    if let (Some(paths), Value::Object(extra)) = (
        spec.get_mut("paths").and_then(Value::as_object_mut),
        extra_paths(),
    ) {
        for (k, v) in extra {
            paths.insert(k, v);
        }
        paths.extend(super::seed::comfyui::spec_paths(registry));
    }
    declare_nullable(&mut spec);
    let types = registry.task_types();
    let mut variants = Vec::new();
    let mut names = Vec::new();
    if let Some(schemas) = spec
        .pointer_mut("/components/schemas")
        .and_then(Value::as_object_mut)
    {
        schemas.insert("ErrorCode".into(), error_code_schema());
        for t in &types {
            let mut schema = t.desc.input_schema.clone();
            to_openapi_30(&mut schema);
            if let Some(obj) = schema.as_object_mut() {
                obj.remove("$schema");
                obj.remove("$id");
                obj.entry("description")
                    .or_insert_with(|| Value::String(t.desc.description.clone()));
            }
            let name = format!("TaskInput.{}", t.desc.name);
            schemas.insert(name.clone(), schema);
            names.push(t.desc.name.clone());
            // The envelope with this type and its input: one whole object per type (generators
            // and validators handle it better than an `allOf` that redefines two properties).
            let mut variant = schemas
                .get("CreateTaskRequest")
                .cloned()
                .unwrap_or_else(|| json!({"type": "object", "properties": {}}));
            variant["title"] = json!(t.desc.name);
            variant["properties"]["type"] = json!({"type": "string", "enum": [t.desc.name]});
            variant["properties"]["input"] =
                json!({"$ref": format!("#/components/schemas/{name}")});
            variants.push(variant);
        }
    }
    if !variants.is_empty()
        && let Some(content) = spec
            .pointer_mut("/paths/~1api~1tasks/post/requestBody/content")
            .and_then(Value::as_object_mut)
    {
        for (_, media) in content.iter_mut() {
            media["schema"] = json!({"oneOf": variants});
        }
    }
    spec["x-task-types"] = json!(names);
    spec["x-error-codes"] = error_code_list();
    describe_event_stream(&mut spec);
    spec
}

/// The `event` names of the task streams, as the events serialise them.
fn event_names() -> Vec<Value> {
    use crate::store::EventKind;
    EventKind::ALL
        .iter()
        .filter_map(|k| serde_json::to_value(k).ok())
        .collect()
}

/// poem-openapi declares an event stream as `type: array`; OpenAPI 3.0 has the schema of a
/// `text/event-stream` answer describe one event: its `event` name and its `data` (the JSON
/// text of `{event, task_id, status, progress, task}`).
fn describe_event_stream(spec: &mut Value) {
    let Some(content) = spec
        .pointer_mut("/paths/~1api~1tasks~1{task_id}~1events/get/responses/200/content")
        .and_then(Value::as_object_mut)
    else {
        return;
    };
    for (media, body) in content.iter_mut() {
        if media.starts_with("text/event-stream") {
            body["schema"] = json!({
                "type": "object",
                "description": "One Server-Sent Event. `data` is JSON text: `{\"event\", \"task_id\", \"status\", \"progress\", \"task\"}` (the task as `GET /api/tasks/{task_id}` answers it). The stream ends after the terminal state; comment lines keep it alive.",
                "required": ["data"],
                "properties": {
                    "event": {"type": "string", "enum": event_names()},
                    "data": {"type": "string"},
                    "id": {"type": "string"},
                    "retry": {"type": "integer"}
                }
            });
        }
    }
}

/// A plugin's JSON Schema (draft 2020-12) in the dialect of this OpenAPI 3.0 document: numeric
/// `exclusiveMinimum`/`exclusiveMaximum` become `minimum`/`maximum` with the boolean form, and
/// `const` becomes a one-value `enum`. Validation keeps using the plugin's own schema.
fn to_openapi_30(schema: &mut Value) {
    match schema {
        Value::Object(map) => {
            for (exclusive, bound) in [
                ("exclusiveMinimum", "minimum"),
                ("exclusiveMaximum", "maximum"),
            ] {
                if let Some(n) = map.get(exclusive).filter(|v| v.is_number()).cloned() {
                    map.insert(bound.into(), n);
                    map.insert(exclusive.into(), Value::Bool(true));
                }
            }
            if let Some(c) = map.remove("const") {
                map.insert("enum".into(), json!([c]));
            }
            map.values_mut().for_each(to_openapi_30);
        }
        Value::Array(items) => items.iter_mut().for_each(to_openapi_30),
        _ => {}
    }
}

/// poem-openapi writes an absent optional field as `null` and reads `null` as absent (a default
/// applies), but does not declare it nullable: every property of its schemas that is not
/// required is made `nullable` (a `$ref` is wrapped in `allOf`, as OpenAPI 3.0 ignores
/// siblings of `$ref`).
fn declare_nullable(spec: &mut Value) {
    let Some(schemas) = spec
        .pointer_mut("/components/schemas")
        .and_then(Value::as_object_mut)
    else {
        return;
    };
    // The plugins' input schemas (`TaskInput.*`) say what they accept themselves.
    for (_, schema) in schemas
        .iter_mut()
        .filter(|(name, _)| !name.starts_with("TaskInput."))
    {
        let required: Vec<String> = schema["required"]
            .as_array()
            .map(|r| {
                r.iter()
                    .filter_map(|v| v.as_str().map(str::to_owned))
                    .collect()
            })
            .unwrap_or_default();
        let Some(props) = schema.get_mut("properties").and_then(Value::as_object_mut) else {
            continue;
        };
        for (name, prop) in props.iter_mut() {
            if required.contains(name) || !prop.is_object() {
                continue;
            }
            if let Some(target) = prop.get("$ref").cloned() {
                let mut wrapped = json!({"allOf": [{"$ref": target}], "nullable": true});
                if let Some(d) = prop.get("description") {
                    wrapped["description"] = d.clone();
                }
                *prop = wrapped;
            } else {
                prop["nullable"] = json!(true);
            }
        }
    }
}

/// Whether a request path matches a documented path template.
fn path_matches(template: &str, path: &str) -> bool {
    if let Some(prefix) = template.strip_suffix("{key}") {
        return path.len() > prefix.len() && path.starts_with(prefix);
    }
    let (t, p): (Vec<&str>, Vec<&str>) = (template.split('/').collect(), path.split('/').collect());
    t.len() == p.len()
        && t.iter().zip(&p).all(|(t, p)| {
            if t.starts_with('{') && t.ends_with('}') {
                !p.is_empty()
            } else {
                t == p
            }
        })
}

impl Docs {
    /// Docs over poem-openapi's spec and Swagger UI page.
    pub(crate) fn new(base_spec: String, base_html: String, registry: Arc<Registry>) -> Docs {
        Docs {
            base_spec: Arc::new(base_spec),
            base_html: Arc::new(base_html),
            registry,
            cache: Arc::new(Mutex::new(None)),
        }
    }

    fn current(&self) -> (Arc<String>, Arc<String>) {
        let generation = self.registry.generation();
        let mut cache = self.cache.lock().expect("docs cache");
        if let Some((g, spec, html)) = cache.as_ref()
            && *g == generation
        {
            return (spec.clone(), html.clone());
        }
        let spec = merge(&self.base_spec, &self.registry);
        let spec_text = Arc::new(serde_json::to_string_pretty(&spec).unwrap_or_default());
        // poem-openapi's page embeds the spec as a JS literal: swap in the merged one.
        let html = Arc::new(
            self.base_html
                .replacen(self.base_spec.as_str(), &spec_text, 1),
        );
        *cache = Some((generation, spec_text.clone(), html.clone()));
        (spec_text, html)
    }

    /// The merged spec as JSON text.
    pub(crate) fn spec_json(&self) -> String {
        self.current().0.as_ref().clone()
    }

    /// The methods a path answers, for the `Allow` header of a 405: those the document lists
    /// for the path (a `{param}` segment matches any one segment, `/files/{key}` any rest),
    /// plus the routes it does not list. `None` when no route has this path.
    pub(crate) fn allowed_methods(&self, path: &str) -> Option<String> {
        let spec: Value = serde_json::from_str(&self.current().0).ok()?;
        let mut found: Vec<String> = Vec::new();
        let paths = spec["paths"].as_object()?;
        // A literal route wins over a `{param}` one (`/api/tasks/create` is not a task id).
        let exact = paths.get(path).into_iter();
        let matching = paths
            .iter()
            .filter(|(template, _)| path_matches(template, path))
            .map(|(_, ops)| ops);
        let ops: Vec<&Value> = if paths.contains_key(path) {
            exact.collect()
        } else {
            matching.collect()
        };
        for o in ops {
            found.extend(o.as_object().into_iter().flat_map(|o| o.keys().cloned()));
        }
        // Routes without a document entry of their own.
        match path {
            "/openapi.json" | "/docs" => found.push("get".into()),
            _ if path.starts_with("/api/workflows/") && path[15..].split('/').count() == 1 => {
                found.push("post".into())
            }
            _ => {}
        }
        if found.iter().any(|m| m == "get") {
            found.push("head".into());
        }
        let mut methods: Vec<String> = Vec::new();
        for m in found {
            let m = m.to_ascii_uppercase();
            if !methods.contains(&m) {
                methods.push(m);
            }
        }
        if methods.is_empty() {
            return None;
        }
        Some(methods.join(", "))
    }

    /// The Swagger UI page with the merged spec.
    pub(crate) fn html(&self) -> String {
        self.current().1.as_ref().clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::manifest::PluginManifest;

    #[test]
    fn the_document_lists_the_error_codes() {
        let registry = Registry::load(PluginManifest::default()).unwrap();
        let base = json!({"paths": {}, "components": {"schemas": {}}}).to_string();
        let spec = merge(&base, &registry);
        let schema = &spec["components"]["schemas"]["ErrorCode"];
        assert_eq!(schema["type"], "string");
        let codes: Vec<&str> = schema["enum"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c.as_str().unwrap())
            .collect();
        let http: Vec<&str> = error_codes::ALL
            .iter()
            .filter(|e| e.is_http())
            .map(|e| e.code)
            .collect();
        assert_eq!(codes, http);
        assert!(
            !codes.contains(&error_codes::LEASE_EXPIRED),
            "a task code only"
        );
        let description = schema["description"].as_str().unwrap();
        assert!(
            description.contains(&format!("| `{}` | 404 |", error_codes::TASK_NOT_FOUND)),
            "{description}"
        );
        let all = spec["x-error-codes"].as_array().unwrap();
        assert_eq!(all.len(), error_codes::ALL.len());
        let lease = all
            .iter()
            .find(|e| e["code"] == error_codes::LEASE_EXPIRED)
            .unwrap();
        assert_eq!(lease["surfaces"], json!(["task"]));
        assert!(lease.get("status").is_none(), "{lease}");
        registry.shutdown();
    }
}

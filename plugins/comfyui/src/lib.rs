//! # comfyui: drives ComfyUI over HTTP and one WebSocket per instance
//!
//! One task type, `comfyui.workflow`: a workflow template with parameters
//! (`{"workflow": NAME, "params": {...}}`) or any API-format graph
//! (`{"workflow_json": {...}}`). Media parameters given as URLs are fetched through the host
//! and uploaded to ComfyUI's input folder under a per-task subfolder.
//!
//! How a task runs:
//! 1. take a slot on a reachable instance of the pool (`queue_depth` prompts per instance,
//!    so the next prompt already waits in ComfyUI when one finishes); the host runs twice as
//!    many tasks as there are slots, so finished tasks download their outputs while the next
//!    ones already hold the slots;
//! 2. upload media, then `POST /prompt` with our `client_id` and a prompt id we choose, so the
//!    socket's messages can be routed before the answer arrives;
//! 3. follow the instance's one shared WebSocket (every message filtered by `prompt_id`) until
//!    `executing` with `node: null`; while the socket is down, and every
//!    `history_check_secs` while it is up, poll `/history/{prompt_id}` so no task waits
//!    forever; a prompt that is neither in the history nor in the queue was lost by a restart
//!    and the attempt fails retryably;
//! 4. stream every output file `/history` lists from `/view` into the work folder.
//!
//! Ops: `queue_status`, `system_stats`, `interrupt`, `list_workflows`.

use std::{
    collections::{HashMap, HashSet},
    path::PathBuf,
    sync::{Arc, Mutex, OnceLock},
    time::Duration,
};

use aihost_plugin_api::{
    codes,
    sdk::{Context, Description, Op, Output, Plugin, PluginError, Task, TaskType, Value, json},
};
use serde::{Deserialize, Serialize};
use serde_json::Map;

pub mod engine;
pub mod templates;

use engine::{Event, Instance};
use templates::Template;

/// The task type this plugin runs.
pub const TASK_TYPE: &str = "comfyui.workflow";
/// Error code of a graph ComfyUI refused (non-retryable).
pub const INVALID_WORKFLOW: &str = "invalid_workflow";

/// The plugin's configuration: the `[plugin.config]` table of `plugins.toml`.
///
/// The seed's environment variables override it: `COMFYUI_URL` (one URL, or several
/// separated by commas) replaces `urls`, `COMFYUI_CLIENT_ID` replaces `client_id`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// ComfyUI servers forming the pool.
    pub urls: Vec<String>,
    /// Client id for the WebSocket and every prompt; empty picks a random one at start.
    pub client_id: String,
    /// Folder of workflow templates (relative to the working directory).
    pub workflows_dir: String,
    /// Prompts of ours per instance at once: 2 keeps the next one queued in ComfyUI.
    pub queue_depth: u32,
    /// A task running longer is interrupted and fails with `timeout`.
    pub task_timeout_secs: u64,
    /// Timeout of one HTTP request to ComfyUI.
    pub request_timeout_secs: u64,
    /// How long a task waits for an unreachable instance to come back before failing with a
    /// retryable `engine_unavailable`.
    pub unavailable_wait_secs: u64,
    /// `/history` poll interval while the socket is down, milliseconds.
    pub history_poll_ms: u64,
    /// `/history` check interval while the socket is up (a safety net), seconds.
    pub history_check_secs: u64,
    /// A socket silent this long is pinged, and dropped if still silent after as long again.
    pub ws_idle_secs: u64,
    /// Longest pause between reconnect attempts, milliseconds.
    pub reconnect_max_ms: u64,
    /// Uploads go to `{upload_subfolder}/{task_id}` in ComfyUI's input folder.
    pub upload_subfolder: String,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            urls: vec!["http://127.0.0.1:8188".into()],
            client_id: String::new(),
            workflows_dir: "workflows".into(),
            queue_depth: 2,
            task_timeout_secs: 3600,
            request_timeout_secs: 60,
            unavailable_wait_secs: 30,
            history_poll_ms: 1000,
            history_check_secs: 15,
            ws_idle_secs: 30,
            reconnect_max_ms: 5000,
            upload_subfolder: "aihost".into(),
        }
    }
}

impl Config {
    /// Applies `COMFYUI_URL` and `COMFYUI_CLIENT_ID`.
    pub fn with_env(mut self, get: impl Fn(&str) -> Option<String>) -> Self {
        if let Some(u) = get("COMFYUI_URL").filter(|u| !u.trim().is_empty()) {
            self.urls = u
                .split(',')
                .map(|s| s.trim().to_owned())
                .filter(|s| !s.is_empty())
                .collect();
        }
        if let Some(c) = get("COMFYUI_CLIENT_ID").filter(|c| !c.trim().is_empty()) {
            self.client_id = c.trim().to_owned();
        }
        self
    }
}

/// A media input of a raw graph: the file at `url` is uploaded and its name set at
/// `node`/`input`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct MediaInput {
    node: String,
    input: String,
    url: String,
}

/// The input of a `comfyui.workflow` task.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct Input {
    workflow: Option<String>,
    #[serde(default)]
    params: Map<String, Value>,
    workflow_json: Option<Value>,
    #[serde(default)]
    media: Vec<MediaInput>,
    #[serde(default)]
    include_previews: bool,
    timeout_secs: Option<u64>,
}

/// Templates known to `describe` once `init` has loaded them.
static TEMPLATES: OnceLock<Vec<Template>> = OnceLock::new();

/// The JSON Schema of the task input; with templates loaded, each template's parameters are
/// checked at submit (unknown or out-of-range parameters are refused with 422).
pub fn input_schema(templates: &[Template]) -> Value {
    let mut workflow = json!({"type": "string", "minLength": 1, "description": "Name of a workflow template (see GET /api/workflows)."});
    if !templates.is_empty() {
        workflow["enum"] = json!(templates.iter().map(|t| &t.name).collect::<Vec<_>>());
    }
    let rules: Vec<Value> = templates
        .iter()
        .map(|t| {
            json!({
                "if": {"required": ["workflow"], "properties": {"workflow": {"const": t.name}}},
                "then": {"properties": {"params": t.params_schema()}}
            })
        })
        .collect();
    let mut schema = json!({
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "type": "object",
        "additionalProperties": false,
        "description": "A ComfyUI workflow: a template with parameters, or an API-format graph.",
        "properties": {
            "workflow": workflow,
            "params": {"type": "object", "description": "Template parameters (see the template's schema)."},
            "workflow_json": {"type": "object", "minProperties": 1, "description": "An API-format ComfyUI graph (node id -> {class_type, inputs})."},
            "media": {"type": "array", "maxItems": 64, "description": "Files to upload before queuing: each URL's file is uploaded and its name set at node/input.",
                "items": {"type": "object", "additionalProperties": false, "required": ["node", "input", "url"],
                    "properties": {"node": {"type": "string"}, "input": {"type": "string"}, "url": {"type": "string", "minLength": 1}}}},
            "include_previews": {"type": "boolean", "default": false, "description": "Also return `temp` files (PreviewImage)."},
            "timeout_secs": {"type": "integer", "minimum": 1, "maximum": 86400, "description": "Interrupt and fail with `timeout` after this long."}
        },
        "oneOf": [
            {"required": ["workflow"], "not": {"required": ["workflow_json"]}},
            {"required": ["workflow_json"], "not": {"required": ["workflow"]}}
        ]
    });
    if !rules.is_empty() {
        schema["allOf"] = json!(rules);
    }
    // An annotation (ignored by validators) from which the host documents one operation per
    // template.
    schema["x-workflows"] = json!(
        templates
            .iter()
            .map(|t| json!({"name": t.name, "description": t.description, "params_schema": t.params_schema()}))
            .collect::<Vec<_>>()
    );
    schema
}

/// The plugin.
pub struct ComfyUi {
    config: Config,
    instances: Vec<Arc<Instance>>,
    templates: Vec<Template>,
    /// task id -> (instance, prompt id) while a prompt of the task is in ComfyUI.
    running: Mutex<HashMap<String, (Arc<Instance>, String)>>,
    cancelled: Mutex<HashSet<String>>,
    pick: Mutex<()>,
    slot_freed: tokio::sync::Notify,
}

/// A place on an instance; freed on drop.
struct Slot {
    plugin: Arc<ComfyUi>,
    inst: Arc<Instance>,
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.inst
            .inflight
            .fetch_sub(1, std::sync::atomic::Ordering::AcqRel);
        self.plugin.slot_freed.notify_waiters();
    }
}

/// Stops the prompt in ComfyUI when the task's future is dropped before it finished
/// (cancel, shutdown, lost lease), and stops routing its messages.
struct PromptGuard {
    plugin: Arc<ComfyUi>,
    task_id: String,
    inst: Arc<Instance>,
    prompt_id: String,
}

impl Drop for PromptGuard {
    fn drop(&mut self) {
        self.inst.unlisten(&self.prompt_id);
        let entry = self.plugin.running.lock().unwrap().remove(&self.task_id);
        if let Some((inst, pid)) = entry
            && let Ok(rt) = tokio::runtime::Handle::try_current()
        {
            rt.spawn(async move {
                if let Err(e) = inst.cancel(&pid).await {
                    tracing::warn!(prompt_id = %pid, error = %e, "could not stop an abandoned prompt");
                }
            });
        }
    }
}

fn fatal(code: &str, msg: impl Into<String>) -> PluginError {
    PluginError::fatal(code, msg)
}

/// One line per ComfyUI validation error, naming node, class and input.
pub fn describe_validation(body: &Value) -> String {
    let mut lines = Vec::new();
    if let Some(nodes) = body["node_errors"].as_object() {
        for (id, n) in nodes {
            let class = n["class_type"].as_str().unwrap_or("?");
            for e in n["errors"].as_array().into_iter().flatten() {
                let input = e["extra_info"]["input_name"].as_str();
                let at = match input {
                    Some(i) => format!("node {id} ({class}) input {i:?}"),
                    None => format!("node {id} ({class})"),
                };
                let details = e["details"].as_str().unwrap_or_default();
                let kind = e["type"].as_str().unwrap_or("error");
                let mut line = format!("{at}: {}", e["message"].as_str().unwrap_or_default());
                if !details.is_empty() {
                    line.push_str(&format!(" ({details})"));
                }
                if let Some(t) = e["extra_info"]["exception_type"].as_str() {
                    line.push_str(&format!(" [{t}]"));
                }
                line.push_str(&format!(" [{kind}]"));
                lines.push(line);
            }
        }
    }
    if lines.is_empty() {
        let e = &body["error"];
        let mut line = format!(
            "{}: {}",
            e["type"].as_str().unwrap_or("invalid_prompt"),
            e["message"]
                .as_str()
                .unwrap_or("ComfyUI refused the prompt")
        );
        if let Some(d) = e["details"].as_str().filter(|d| !d.is_empty()) {
            line.push_str(&format!(" ({d})"));
        }
        lines.push(line);
    }
    format!("ComfyUI refused the workflow: {}", lines.join("; "))
}

fn execution_error(data: &Value) -> PluginError {
    fatal(
        codes::ENGINE_ERROR,
        format!(
            "ComfyUI failed at node {} ({}): {}: {}",
            data["node_id"].as_str().unwrap_or("?"),
            data["node_type"].as_str().unwrap_or("?"),
            data["exception_type"].as_str().unwrap_or("Exception"),
            data["exception_message"]
                .as_str()
                .unwrap_or_default()
                .trim()
        ),
    )
}

impl ComfyUi {
    fn depth(&self) -> usize {
        self.config.queue_depth.max(1) as usize
    }

    /// Takes a slot on the least busy connected instance; waits for a free one, and fails
    /// with `engine_unavailable` when no instance is reachable for `unavailable_wait_secs`.
    async fn acquire(self: &Arc<Self>) -> Result<Slot, PluginError> {
        let wait = Duration::from_secs(self.config.unavailable_wait_secs);
        let mut deadline = tokio::time::Instant::now() + wait;
        loop {
            let notified = self.slot_freed.notified();
            {
                let _g = self.pick.lock().unwrap();
                let best = self
                    .instances
                    .iter()
                    .filter(|i| i.is_connected())
                    .map(|i| (i.inflight.load(std::sync::atomic::Ordering::Acquire), i))
                    .filter(|(n, _)| *n < self.depth())
                    .min_by_key(|(n, _)| *n)
                    .map(|(_, i)| i.clone());
                if let Some(inst) = best {
                    inst.inflight
                        .fetch_add(1, std::sync::atomic::Ordering::AcqRel);
                    return Ok(Slot {
                        plugin: self.clone(),
                        inst,
                    });
                }
            }
            let any_up = self.instances.iter().any(|i| i.is_connected());
            if any_up {
                deadline = tokio::time::Instant::now() + wait;
                let _ = tokio::time::timeout(Duration::from_millis(500), notified).await;
            } else {
                if tokio::time::Instant::now() >= deadline {
                    let why: Vec<String> = self
                        .instances
                        .iter()
                        .map(|i| {
                            format!(
                                "{} ({})",
                                i.url,
                                i.last_error().unwrap_or_else(|| "not connected".into())
                            )
                        })
                        .collect();
                    return Err(PluginError::retryable(
                        codes::ENGINE_UNAVAILABLE,
                        format!("no ComfyUI instance is reachable: {}", why.join(", ")),
                    ));
                }
                let waits = self
                    .instances
                    .iter()
                    .map(|i| Box::pin(i.wait_connected(Duration::from_millis(500))));
                futures_util::future::select_all(waits).await;
            }
        }
    }

    fn build_graph(&self, input: &Input) -> Result<(Value, Vec<MediaInput>, String), PluginError> {
        let mut media: Vec<MediaInput> = input.media.clone();
        let (graph, label) = match (&input.workflow, &input.workflow_json) {
            (Some(name), None) => {
                let t = self
                    .templates
                    .iter()
                    .find(|t| &t.name == name)
                    .ok_or_else(|| {
                        PluginError::invalid_input(format!(
                            "no workflow template named {name:?}; installed: {}",
                            self.templates
                                .iter()
                                .map(|t| t.name.as_str())
                                .collect::<Vec<_>>()
                                .join(", ")
                        ))
                    })?;
                let (graph, m) = t
                    .apply(&input.params)
                    .map_err(|e| PluginError::invalid_input(e.to_string()))?;
                media.extend(m.into_iter().map(|(_, node, input, url)| MediaInput {
                    node,
                    input,
                    url,
                }));
                (graph, name.clone())
            }
            (None, Some(g)) if g.as_object().is_some_and(|o| !o.is_empty()) => {
                if !input.params.is_empty() {
                    return Err(PluginError::invalid_input(
                        "`params` applies to templates; set values in `workflow_json` directly",
                    ));
                }
                (g.clone(), "workflow_json".to_owned())
            }
            _ => {
                return Err(PluginError::invalid_input(
                    "give exactly one of `workflow` (a template name) or `workflow_json` (an API-format graph)",
                ));
            }
        };
        for m in &media {
            if graph.get(&m.node).and_then(|n| n.get("inputs")).is_none() {
                return Err(PluginError::invalid_input(format!(
                    "media input names node {:?}, which the graph lacks",
                    m.node
                )));
            }
        }
        Ok((graph, media, label))
    }

    /// Looks at `/history` (and the queue): `Some` when the prompt is finished.
    async fn check(
        &self,
        inst: &Instance,
        task_id: &str,
        pid: &str,
    ) -> Result<Option<Result<Value, PluginError>>, PluginError> {
        if let Some(entry) = inst.history(pid).await? {
            return Ok(self.interpret(task_id, entry));
        }
        if inst.in_queue(pid).await? {
            return Ok(None);
        }
        // It may have finished between the two calls.
        if let Some(entry) = inst.history(pid).await? {
            return Ok(self.interpret(task_id, entry));
        }
        Ok(Some(Err(PluginError::retryable(
            codes::ENGINE_UNAVAILABLE,
            format!(
                "ComfyUI at {} lost prompt {pid}: it is neither queued nor in the history (the server restarted)",
                inst.url
            ),
        ))))
    }

    /// A history entry: the outputs on success, the error otherwise, `None` if unfinished.
    fn interpret(&self, task_id: &str, entry: Value) -> Option<Result<Value, PluginError>> {
        let status = &entry["status"];
        if status.is_null() {
            return None;
        }
        if status["status_str"] == "success" {
            return Some(Ok(entry));
        }
        let messages = status["messages"].as_array().cloned().unwrap_or_default();
        for m in &messages {
            match m.get(0).and_then(Value::as_str) {
                Some("execution_error") => return Some(Err(execution_error(&m[1]))),
                Some("execution_interrupted") => {
                    return Some(Err(self.interrupted(task_id, &m[1])));
                }
                _ => {}
            }
        }
        if status["completed"] == false && status["status_str"].is_null() {
            return None;
        }
        Some(Err(fatal(
            codes::ENGINE_ERROR,
            format!("ComfyUI reports the prompt failed: {status}"),
        )))
    }

    fn interrupted(&self, task_id: &str, data: &Value) -> PluginError {
        if self.cancelled.lock().unwrap().contains(task_id) {
            fatal(codes::CANCELLED, "cancelled")
        } else {
            fatal(
                codes::ENGINE_ERROR,
                format!(
                    "ComfyUI interrupted the prompt at node {} ({})",
                    data["node_id"].as_str().unwrap_or("?"),
                    data["node_type"].as_str().unwrap_or("?")
                ),
            )
        }
    }

    /// Follows the prompt to its end: the history entry on success.
    #[allow(clippy::too_many_arguments)]
    async fn follow(
        &self,
        inst: &Instance,
        task_id: &str,
        pid: &str,
        rx: &mut tokio::sync::mpsc::UnboundedReceiver<Event>,
        slot: &mut Option<Slot>,
        ctx: &Context,
        graph: &Value,
        timeout: Duration,
    ) -> Result<Value, PluginError> {
        let total = graph.as_object().map_or(1, |o| o.len().max(1)) as f32;
        let class_of = |node: &str| graph[node]["class_type"].as_str().unwrap_or("?").to_owned();
        let deadline = tokio::time::Instant::now() + timeout;
        let mut poll =
            tokio::time::interval(Duration::from_millis(self.config.history_poll_ms.max(50)));
        poll.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let check_every = Duration::from_secs(self.config.history_check_secs.max(1));
        let unavailable_wait = Duration::from_secs(self.config.unavailable_wait_secs);
        let mut last_check = tokio::time::Instant::now();
        let mut down_since = (!inst.is_connected()).then(tokio::time::Instant::now);
        let mut done: HashSet<String> = HashSet::new();
        let mut current = String::new();
        let mut partial = 0f32;
        let report = |done: usize, partial: f32, msg: &str| {
            let p = 5.0 + 90.0 * ((done as f32 + partial) / total).min(1.0);
            ctx.progress(p.min(95.0), msg);
        };
        loop {
            let mut check_now = false;
            tokio::select! {
                ev = rx.recv() => match ev {
                    Some(Event::Message(kind, data)) => match kind.as_str() {
                        "execution_start" => ctx.progress(5.0, "started in ComfyUI"),
                        "execution_cached" => {
                            for n in data["nodes"].as_array().into_iter().flatten() {
                                if let Some(n) = n.as_str() { done.insert(n.to_owned()); }
                            }
                            if !done.is_empty() {
                                report(done.len(), 0.0, &format!("{} nodes cached", done.len()));
                            }
                        }
                        "progress_state" => {
                            for (id, n) in data["nodes"].as_object().into_iter().flatten() {
                                if n["state"] == "finished" { done.insert(id.clone()); }
                            }
                            report(done.len(), 0.0, &format!("{} of {} nodes done", done.len(), total as usize));
                        }
                        "executing" => match data["node"].as_str() {
                            None => {
                                // Out of ComfyUI's queue: the next prompt may take the slot
                                // while this one's history is read.
                                drop(slot.take());
                                if let Some(entry) = inst.history(pid).await.ok().flatten()
                                    && let Some(r) = self.interpret(task_id, entry)
                                {
                                    return r;
                                }
                                check_now = true;
                            }
                            Some(node) => {
                                current = node.to_owned();
                                partial = 0.0;
                                report(done.len(), 0.0, &format!("running node {node} ({})", class_of(node)));
                            }
                        },
                        "progress" => {
                            let (v, m) = (data["value"].as_f64().unwrap_or(0.0), data["max"].as_f64().unwrap_or(1.0));
                            if m > 0.0 { partial = (v / m) as f32; }
                            let node = data["node"].as_str().unwrap_or(&current).to_owned();
                            report(done.len(), partial, &format!("node {node} ({}) {v}/{m}", class_of(&node)));
                        }
                        "execution_error" => return Err(execution_error(&data)),
                        "execution_interrupted" => return Err(self.interrupted(task_id, &data)),
                        _ => {}
                    },
                    Some(Event::Disconnected) => {
                        down_since.get_or_insert_with(tokio::time::Instant::now);
                    }
                    Some(Event::Connected) => {
                        down_since = None;
                        check_now = true;
                    }
                    None => check_now = true,
                },
                _ = poll.tick() => {
                    check_now = down_since.is_some() || last_check.elapsed() >= check_every;
                }
                _ = tokio::time::sleep_until(deadline) => {
                    let _ = inst.cancel(pid).await;
                    return Err(fatal(codes::TIMEOUT, format!("the prompt ran over {} s and was interrupted", timeout.as_secs())));
                }
            }
            if check_now {
                last_check = tokio::time::Instant::now();
                match self.check(inst, task_id, pid).await {
                    Ok(Some(r)) => return r,
                    Ok(None) => {}
                    Err(e) => {
                        let since = *down_since.get_or_insert_with(tokio::time::Instant::now);
                        if since.elapsed() >= unavailable_wait {
                            return Err(e);
                        }
                    }
                }
            }
        }
    }

    async fn collect_outputs(
        &self,
        inst: &Instance,
        entry: &Value,
        work_dir: &std::path::Path,
        include_previews: bool,
    ) -> Result<(Vec<(PathBuf, String, String)>, Value, Value), PluginError> {
        let mut files = Vec::new();
        let mut listed = Vec::new();
        let mut texts = Map::new();
        let mut names: HashSet<String> = HashSet::new();
        let outputs = entry["outputs"].as_object().cloned().unwrap_or_default();
        let mut nodes: Vec<(&String, &Value)> = outputs.iter().collect();
        nodes.sort_by_key(|(k, _)| (k.parse::<u64>().unwrap_or(u64::MAX), (*k).clone()));
        let dir = work_dir.join("comfyui-outputs");
        tokio::fs::create_dir_all(&dir).await.map_err(|e| {
            fatal(
                codes::INTERNAL,
                format!("cannot create {}: {e}", dir.display()),
            )
        })?;
        for (node, out) in nodes {
            for (kind, items) in out.as_object().into_iter().flatten() {
                let Some(items) = items.as_array() else {
                    continue;
                };
                if kind == "text" {
                    texts.insert(node.clone(), json!(items));
                    continue;
                }
                for f in items {
                    let Some(filename) = f["filename"].as_str() else {
                        continue;
                    };
                    let ftype = f["type"].as_str().unwrap_or("output");
                    if ftype == "temp" && !include_previews {
                        continue;
                    }
                    if ftype != "output" && ftype != "temp" {
                        continue;
                    }
                    let base: String = filename
                        .chars()
                        .map(|c| if c == '/' || c == '\\' { '_' } else { c })
                        .collect();
                    let mut name = base.clone();
                    let mut n = 1;
                    while !names.insert(name.clone()) {
                        n += 1;
                        name = format!("{n}_{base}");
                    }
                    let dest = dir.join(&name);
                    let size = inst.download(f, &dest).await?;
                    let ct = mime_guess::from_path(filename)
                        .first_or_octet_stream()
                        .to_string();
                    listed.push(
                        json!({"name": name, "node": node, "kind": kind, "type": ftype,
                        "filename": filename, "subfolder": f["subfolder"], "size": size}),
                    );
                    files.push((dest, ct, name));
                }
            }
        }
        Ok((files, json!(listed), Value::Object(texts)))
    }

    async fn instance_report(&self) -> Vec<Value> {
        let mut out = Vec::new();
        for i in &self.instances {
            let mut reachable = i.is_connected();
            let mut error = i.last_error();
            if !reachable {
                match tokio::time::timeout(Duration::from_secs(3), i.get_json("/prompt")).await {
                    Ok(Ok(_)) => {
                        reachable = true;
                        error = None;
                    }
                    Ok(Err(e)) => error = Some(e.message.to_string()),
                    Err(_) => error = Some("no answer in 3 s".into()),
                }
            }
            out.push(json!({
                "url": i.url,
                "reachable": reachable,
                "socket_connected": i.is_connected(),
                "socket_connections": i.connections.load(std::sync::atomic::Ordering::Relaxed),
                "inflight": i.inflight.load(std::sync::atomic::Ordering::Relaxed),
                "error": error,
            }));
        }
        out
    }

    fn no_instance(&self, errors: &[String]) -> PluginError {
        PluginError::retryable(
            codes::ENGINE_UNAVAILABLE,
            format!("no ComfyUI instance is reachable: {}", errors.join(", ")),
        )
    }

    async fn queue_status(&self) -> Result<Value, PluginError> {
        let mut running = Vec::new();
        let mut pending = Vec::new();
        let mut per = Vec::new();
        let mut errors = Vec::new();
        for i in &self.instances {
            match i.get_json("/queue").await {
                Ok(q) => {
                    let r = q["queue_running"].as_array().cloned().unwrap_or_default();
                    let mut p = q["queue_pending"].as_array().cloned().unwrap_or_default();
                    // ComfyUI answers pending items in heap order: sort by number.
                    p.sort_by(|a, b| {
                        a[0].as_f64()
                            .unwrap_or(0.0)
                            .total_cmp(&b[0].as_f64().unwrap_or(0.0))
                    });
                    per.push(json!({"url": i.url, "reachable": true, "running": r.len(), "pending": p.len()}));
                    running.extend(r);
                    pending.extend(p);
                }
                Err(e) => {
                    errors.push(format!("{} ({})", i.url, e.message));
                    per.push(
                        json!({"url": i.url, "reachable": false, "error": e.message.as_str()}),
                    );
                }
            }
        }
        if errors.len() == self.instances.len() {
            return Err(self.no_instance(&errors));
        }
        Ok(json!({"queue_running": running, "queue_pending": pending, "instances": per}))
    }

    async fn system_stats(&self) -> Result<Value, PluginError> {
        let mut first: Option<Value> = None;
        let mut per = Vec::new();
        let mut errors = Vec::new();
        for i in &self.instances {
            match i.get_json("/system_stats").await {
                Ok(s) => {
                    per.push(json!({"url": i.url, "reachable": true, "system_stats": s}));
                    first.get_or_insert(s);
                }
                Err(e) => {
                    errors.push(format!("{} ({})", i.url, e.message));
                    per.push(
                        json!({"url": i.url, "reachable": false, "error": e.message.as_str()}),
                    );
                }
            }
        }
        let Some(mut out) = first else {
            return Err(self.no_instance(&errors));
        };
        if let Some(o) = out.as_object_mut() {
            o.insert("instances".into(), json!(per));
        }
        Ok(out)
    }

    async fn interrupt(&self, args: &Value) -> Result<Value, PluginError> {
        let body = match args.get("prompt_id").and_then(Value::as_str) {
            Some(p) => json!({"prompt_id": p}),
            None => json!({}),
        };
        let mut done = Vec::new();
        let mut errors = Vec::new();
        for i in &self.instances {
            match i.post_json("/interrupt", &body).await {
                Ok(_) => done.push(i.url.clone()),
                Err(e) => errors.push(format!("{} ({})", i.url, e.message)),
            }
        }
        if done.is_empty() {
            return Err(self.no_instance(&errors));
        }
        Ok(json!({"interrupted": done, "unreachable": errors}))
    }

    fn list_workflows(&self) -> Value {
        json!({"workflows": self.templates.iter().map(|t| json!({
            "name": t.name,
            "description": t.description,
            "params_schema": t.params_schema(),
            "media_params": t.media_params(),
        })).collect::<Vec<_>>()})
    }
}

impl Plugin for ComfyUi {
    type Config = Config;

    fn describe() -> Description {
        let templates = TEMPLATES.get().map(Vec::as_slice).unwrap_or(&[]);
        Description {
            name: "comfyui".into(),
            version: env!("CARGO_PKG_VERSION").into(),
            description: "Runs ComfyUI workflows (templates or API-format graphs) on a pool of ComfyUI servers.".into(),
            task_types: vec![TaskType {
                name: TASK_TYPE.into(),
                description: "Runs a ComfyUI workflow and returns every output file.".into(),
                input_schema: input_schema(templates),
                max_concurrency: Config::default().queue_depth,
            }],
            ops: vec![
                Op { name: "queue_status".into(), description: "ComfyUI's queue (running and pending, sorted), per instance.".into() },
                Op { name: "system_stats".into(), description: "ComfyUI's system_stats, per instance.".into() },
                Op { name: "interrupt".into(), description: "Interrupts the running prompt (args: optional prompt_id).".into() },
                Op { name: "list_workflows".into(), description: "Installed workflow templates with their parameter schemas.".into() },
            ],
        }
    }

    async fn init(config: Config) -> Result<Self, PluginError> {
        let mut config = config.with_env(|k| std::env::var(k).ok());
        if config.urls.is_empty() {
            return Err(fatal(
                codes::INVALID_CONFIG,
                "urls must list at least one ComfyUI server",
            ));
        }
        for u in &config.urls {
            if !(u.starts_with("http://") || u.starts_with("https://")) {
                return Err(fatal(
                    codes::INVALID_CONFIG,
                    format!("ComfyUI URL {u:?} must start with http:// or https://"),
                ));
            }
        }
        if config.client_id.is_empty() {
            config.client_id = uuid::Uuid::new_v4().to_string();
        }
        let templates = templates::load_dir(std::path::Path::new(&config.workflows_dir))
            .map_err(|e| fatal(codes::INVALID_CONFIG, e.to_string()))?;
        if templates.is_empty() {
            tracing::warn!(dir = %config.workflows_dir, "no workflow templates found");
        }
        let _ = TEMPLATES.set(templates.clone());
        let timeout = Duration::from_secs(config.request_timeout_secs.max(1));
        let instances: Vec<Arc<Instance>> = config
            .urls
            .iter()
            .map(|u| Instance::new(u, &config.client_id, timeout))
            .collect();
        for i in &instances {
            i.spawn_socket(
                Duration::from_millis(config.reconnect_max_ms.max(100)),
                Duration::from_secs(config.ws_idle_secs.max(1)),
            );
        }
        tracing::info!(urls = ?config.urls, templates = templates.len(), "comfyui ready");
        Ok(ComfyUi {
            config,
            instances,
            templates,
            running: Mutex::default(),
            cancelled: Mutex::default(),
            pick: Mutex::new(()),
            slot_freed: tokio::sync::Notify::new(),
        })
    }

    async fn run_task(self: Arc<Self>, task: Task, ctx: Context) -> Result<Output, PluginError> {
        let input: Input = serde_json::from_value(task.input.clone()).map_err(|e| {
            PluginError::invalid_input(format!("invalid comfyui.workflow input: {e}"))
        })?;
        let (mut graph, media, label) = self.build_graph(&input)?;
        ctx.progress(1.0, "waiting for a ComfyUI instance");
        let slot = self.acquire().await?;
        let inst = slot.inst.clone();
        // Freed as soon as ComfyUI reports the prompt finished (see `follow`).
        let mut slot = Some(slot);
        let subfolder = format!("{}/{}", self.config.upload_subfolder, task.id);
        for (n, m) in media.iter().enumerate() {
            let local = ctx.fetch(&m.url).await?;
            let name = inst.upload(&local, &subfolder).await?;
            ctx.progress(2.0, &format!("uploaded input {} of {}", n + 1, media.len()));
            graph[&m.node]["inputs"][&m.input] = json!(name);
        }
        let pid = uuid::Uuid::new_v4().to_string();
        let mut rx = inst.listen(&pid);
        self.running
            .lock()
            .unwrap()
            .insert(task.id.clone(), (inst.clone(), pid.clone()));
        let guard = PromptGuard {
            plugin: self.clone(),
            task_id: task.id.clone(),
            inst: inst.clone(),
            prompt_id: pid.clone(),
        };
        let (status, body) = inst.queue_prompt(&graph, &pid).await?;
        let refused = match status {
            200 => {
                if body["node_errors"]
                    .as_object()
                    .is_some_and(|o| !o.is_empty())
                {
                    // Queued with only the valid outputs: we refuse half a workflow.
                    let _ = inst.cancel(&pid).await;
                    Some(fatal(INVALID_WORKFLOW, describe_validation(&body)))
                } else {
                    None
                }
            }
            400 => Some(fatal(INVALID_WORKFLOW, describe_validation(&body))),
            s if s >= 500 => Some(fatal(
                codes::ENGINE_ERROR,
                format!(
                    "ComfyUI could not take the prompt ({s}): {}",
                    body.as_str()
                        .map_or(body.to_string(), |t| t.trim().to_owned())
                ),
            )),
            s => Some(fatal(
                codes::ENGINE_ERROR,
                format!("ComfyUI answered {s} to the prompt: {body}"),
            )),
        };
        if let Some(e) = refused {
            // ComfyUI answered: nothing of ours is left queued there.
            self.running.lock().unwrap().remove(&task.id);
            return Err(e);
        }
        ctx.progress(3.0, "queued in ComfyUI");
        let timeout = Duration::from_secs(
            input
                .timeout_secs
                .unwrap_or(self.config.task_timeout_secs)
                .max(1),
        );
        let result = self
            .follow(
                &inst, &task.id, &pid, &mut rx, &mut slot, &ctx, &graph, timeout,
            )
            .await;
        // Finished in ComfyUI (either way): nothing to stop any more.
        self.running.lock().unwrap().remove(&task.id);
        self.cancelled.lock().unwrap().remove(&task.id);
        drop(guard);
        let entry = result?;
        drop(slot);
        ctx.progress(96.0, "downloading outputs");
        let (files, listed, texts) = self
            .collect_outputs(&inst, &entry, &task.work_dir, input.include_previews)
            .await?;
        ctx.progress(100.0, &format!("{} files", files.len()));
        let mut out = Output::result(json!({
            "prompt_id": pid,
            "instance": inst.url,
            "workflow": label,
            "files": listed,
            "text": texts,
        }));
        for (path, ct, name) in files {
            out = out.with_file(path, &ct, name);
        }
        Ok(out)
    }

    async fn cancel_task(self: Arc<Self>, task_id: String) {
        self.cancelled.lock().unwrap().insert(task_id.clone());
        let entry = self.running.lock().unwrap().remove(&task_id);
        match entry {
            // run_task clears the mark when it ends (with `cancelled` on the interrupt).
            Some((inst, pid)) => {
                if let Err(e) = inst.cancel(&pid).await {
                    tracing::warn!(prompt_id = %pid, error = %e, "cancel in ComfyUI failed");
                }
            }
            None => {
                self.cancelled.lock().unwrap().remove(&task_id);
            }
        }
    }

    async fn call_op(self: Arc<Self>, name: String, args: Value) -> Result<Value, PluginError> {
        match name.as_str() {
            "queue_status" => self.queue_status().await,
            "system_stats" => self.system_stats().await,
            "interrupt" => self.interrupt(&args).await,
            "list_workflows" => Ok(self.list_workflows()),
            other => Err(fatal(
                codes::UNKNOWN_OP,
                format!("the comfyui plugin has no op {other:?}"),
            )),
        }
    }

    async fn health(self: Arc<Self>) -> Result<Value, PluginError> {
        let report = self.instance_report().await;
        let up = report.iter().filter(|r| r["reachable"] == true).count();
        if up == 0 {
            let why: Vec<String> = report
                .iter()
                .map(|r| {
                    format!(
                        "{} ({})",
                        r["url"].as_str().unwrap_or("?"),
                        r["error"].as_str().unwrap_or("unreachable")
                    )
                })
                .collect();
            return Err(self.no_instance(&why));
        }
        Ok(json!({
            "status": if up == report.len() { "ok" } else { "degraded" },
            "instances": report,
            "templates": self.templates.len(),
        }))
    }

    fn max_concurrency(&self, task_type: &str) -> u32 {
        if task_type == TASK_TYPE {
            // Twice the slots: while `queue_depth` prompts per instance are in ComfyUI, as many
            // tasks can download their outputs or wait ready for the next free slot (the
            // slots alone bound what is queued in ComfyUI).
            (self.instances.len() * self.depth() * 2) as u32
        } else {
            0
        }
    }
}

aihost_plugin_api::export_plugin!(ComfyUi);

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    #[test]
    fn default_config_round_trips_and_env_overrides() {
        let c = Config::default();
        let back: Config = serde_json::from_str(&serde_json::to_string(&c).unwrap()).unwrap();
        assert_eq!(back, c);
        let partial: Config = serde_json::from_str(r#"{"queue_depth": 3}"#).unwrap();
        assert_eq!(partial.queue_depth, 3);
        assert_eq!(partial.urls, c.urls);
        let env: BTreeMap<&str, &str> = [
            ("COMFYUI_URL", "http://a:1, http://b:2"),
            ("COMFYUI_CLIENT_ID", "seed"),
        ]
        .into();
        let c = c.with_env(|k| env.get(k).map(|v| v.to_string()));
        assert_eq!(c.urls, vec!["http://a:1", "http://b:2"]);
        assert_eq!(c.client_id, "seed");
        assert!(serde_json::from_str::<Config>(r#"{"nope": 1}"#).is_err());
    }

    #[test]
    fn validation_errors_name_node_class_and_input() {
        let body = json!({"error": {"type": "prompt_outputs_failed_validation", "message": "Prompt outputs failed validation", "details": "", "extra_info": {}},
            "node_errors": {"1": {"errors": [{"type": "value_smaller_than_min", "message": "Value 0 smaller than min of 1", "details": "width",
                "extra_info": {"input_name": "width", "received_value": 0}}], "dependent_outputs": ["2"], "class_type": "EmptyImage"}}});
        let m = describe_validation(&body);
        assert!(m.contains("node 1 (EmptyImage) input \"width\""), "{m}");
        assert!(m.contains("smaller than min"), "{m}");
        let top = json!({"error": {"type": "invalid_prompt", "message": "Cannot execute because node NoSuchNode does not exist.", "details": "Node ID '#1'", "extra_info": {}}, "node_errors": {}});
        let m = describe_validation(&top);
        assert!(
            m.contains("invalid_prompt") && m.contains("NoSuchNode"),
            "{m}"
        );
    }

    #[test]
    fn schema_checks_template_params() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../workflows");
        let t = templates::load_dir(&dir).unwrap();
        let s = input_schema(&t);
        assert_eq!(s["additionalProperties"], false);
        let rules = s["allOf"].as_array().unwrap();
        assert_eq!(rules.len(), t.len());
        assert!(
            s["properties"]["workflow"]["enum"]
                .as_array()
                .unwrap()
                .contains(&json!("basic_generation"))
        );
    }
}

//! Running one `comfyui.workflow` task: upload its media, queue the prompt, follow it over the
//! instance's socket (and `/history` as a safety net) to its end, and download its outputs.
//!
//! Separate from `lib.rs` so the `Plugin` impl stays a table of entry points; this is the
//! longest path through the plugin and the one that talks to ComfyUI the most.

use std::{
    collections::HashSet,
    path::{Path, PathBuf},
    sync::Arc,
    time::Duration,
};

use aihost_plugin_api::{
    codes,
    sdk::{Context, Output, PluginError, Task, Value, json},
};
use serde_json::Map;

use crate::{
    ComfyUi,
    attach::{self, Found},
    engine::{Event, Instance},
    error::{INVALID_WORKFLOW, describe_validation, execution_error, fatal},
    input::{Input, build_graph},
    outputs,
    pool::Slot,
};

/// What a followed prompt's end must also take care of: the instance's extras, the preview
/// forwarder, the uploaded inputs' subfolder.
struct Tail {
    managed: Arc<crate::managed::Managed>,
    previews: Option<tokio::task::JoinHandle<()>>,
    uploads: Option<String>,
}

/// Stops the prompt in ComfyUI when the task's future is dropped before it finished
/// (cancel, shutdown, lost lease), stops routing its messages, and keeps the prompt's slot
/// taken until ComfyUI reports the prompt gone.
struct PromptGuard {
    plugin: Arc<ComfyUi>,
    task_id: String,
    inst: Arc<Instance>,
    prompt_id: String,
    /// The slot the prompt holds; `None` once ComfyUI reported it out of its queue.
    slot: Option<Slot>,
}

impl Drop for PromptGuard {
    fn drop(&mut self) {
        self.inst.unlisten(&self.prompt_id);
        self.plugin.cancelled.lock().unwrap().remove(&self.task_id);
        let entry = self.plugin.running.lock().unwrap().remove(&self.task_id);
        let stop = entry.is_some();
        if stop || self.slot.is_some() {
            attach::release_when_gone(
                self.inst.clone(),
                self.prompt_id.clone(),
                self.slot.take(),
                stop,
            );
        }
    }
}

impl ComfyUi {
    /// Runs one task (the body of `Plugin::run_task`).
    pub(crate) async fn run(
        self: Arc<Self>,
        task: Task,
        ctx: Context,
    ) -> Result<Output, PluginError> {
        let _active = attach::Active::new(&task.id);
        if attach::take_early_cancel(&task.id) {
            return Err(fatal(codes::CANCELLED, "cancelled before it started"));
        }
        let result = self.clone().run_inner(&task, &ctx).await;
        self.cancelled.lock().unwrap().remove(&task.id);
        result
    }

    async fn run_inner(self: Arc<Self>, task: &Task, ctx: &Context) -> Result<Output, PluginError> {
        let input: Input = serde_json::from_value(task.input.clone()).map_err(|e| {
            PluginError::invalid_input(format!("invalid comfyui.workflow input: {e}"))
        })?;
        let (mut graph, media, label) = build_graph(&self.templates, &input)?;
        let timeout = Duration::from_secs(
            input
                .timeout_secs
                .unwrap_or(self.config.task_timeout_secs)
                .max(1),
        );
        // Where this task's uploads go in ComfyUI's input folder.
        let subfolder = format!("{}/{}", self.config.upload_subfolder, task.id);
        // A prompt of an earlier attempt (or of this one, released and reused) may still be in
        // ComfyUI: follow or collect it instead of running the work twice. The host says when
        // there can be none (the task's first run), which saves two requests per task.
        let found = if task.first_run {
            Found::Nothing { own_taken: false }
        } else {
            self.find_attempts(&task.id, task.attempt).await
        };
        let own_taken = match found {
            Found::Done(inst, pid, entry) => {
                let msg = format!(
                    "re-attached to prompt {pid} on instance {}: it had finished, collecting its outputs",
                    inst.url
                );
                tracing::info!(task_id = %task.id, prompt_id = %pid, url = %inst.url, "re-attached to a finished prompt");
                ctx.log(aihost_plugin_api::level::INFO, &msg);
                ctx.progress(96.0, &msg);
                return self
                    .outputs(
                        &inst,
                        &pid,
                        &entry,
                        task,
                        ctx,
                        &label,
                        input.include_previews,
                    )
                    .await;
            }
            Found::Live(inst, pid) => {
                let slot = self.slot_on(&inst);
                let rx = inst.listen(&pid);
                let guard = self.hold(&task.id, &inst, &pid, slot);
                let msg = format!("re-attached to prompt {pid} on instance {}", inst.url);
                tracing::info!(task_id = %task.id, prompt_id = %pid, url = %inst.url, "re-attached to a prompt still in ComfyUI");
                ctx.log(aihost_plugin_api::level::INFO, &msg);
                ctx.progress(3.0, &msg);
                return self
                    .finish(
                        guard,
                        rx,
                        task,
                        ctx,
                        &graph,
                        &label,
                        timeout,
                        input.include_previews,
                        true,
                        Tail {
                            managed: self.managed_of(&inst),
                            previews: None,
                            uploads: (!media.is_empty()).then_some(subfolder),
                        },
                    )
                    .await;
            }
            Found::Nothing { own_taken } => own_taken,
        };
        let want = self.want(&graph, &input.models)?;
        ctx.progress(1.0, "waiting for a ComfyUI instance");
        let pre = async {
            let slot = self.acquire(&want).await?;
            let inst = slot.inst.clone();
            let managed = self.managed_of(&inst);
            managed.touch();
            self.fetch_models(ctx, &managed, &input.models, &mut graph)
                .await?;
            for (n, m) in media.iter().enumerate() {
                let local = ctx.fetch(&m.url).await?;
                let name = inst.upload(&local, &subfolder).await?;
                ctx.progress(2.0, &format!("uploaded input {} of {}", n + 1, media.len()));
                graph[&m.node]["inputs"][&m.input] = json!(name);
            }
            Ok::<_, PluginError>(slot)
        };
        let slot = tokio::select! {
            r = pre => r?,
            () = self.cancel_requested(&task.id) => {
                return Err(fatal(codes::CANCELLED, "cancelled before the prompt reached ComfyUI"));
            }
        };
        let inst = slot.inst.clone();
        let managed = self.managed_of(&inst);
        let pid = if own_taken {
            uuid::Uuid::new_v4().to_string()
        } else {
            attach::prompt_id(&task.id, task.attempt)
        };
        let rx = inst.listen(&pid);
        let previews = input.previews.then(|| {
            crate::previews::forward(
                ctx.clone(),
                task.work_dir.clone(),
                inst.listen_previews(&pid),
            )
        });
        let mut guard = self.hold(&task.id, &inst, &pid, slot);
        let (status, body) = inst.queue_prompt(&graph, &pid).await?;
        let refused = match status {
            200 => {
                if body["node_errors"]
                    .as_object()
                    .is_some_and(|o| !o.is_empty())
                {
                    // Queued with only the valid outputs: we refuse half a workflow (the
                    // guard holds the slot until the stopped prompt has left the queue).
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
            if status != 200 {
                // ComfyUI answered: nothing of ours is left queued there.
                self.running.lock().unwrap().remove(&task.id);
                drop(guard.slot.take());
            }
            return Err(e);
        }
        ctx.progress(3.0, "queued in ComfyUI");
        let tail = Tail {
            managed,
            previews,
            uploads: (!media.is_empty()).then_some(subfolder),
        };
        self.finish(
            guard,
            rx,
            task,
            ctx,
            &graph,
            &label,
            timeout,
            input.include_previews,
            false,
            tail,
        )
        .await
    }

    /// Records `pid` on `inst` as the task's prompt in ComfyUI (what a cancel stops) and
    /// answers the guard that ends it, holding `slot` until the prompt is gone.
    fn hold(
        self: &Arc<Self>,
        task_id: &str,
        inst: &Arc<Instance>,
        pid: &str,
        slot: Slot,
    ) -> PromptGuard {
        self.running
            .lock()
            .unwrap()
            .insert(task_id.to_owned(), (inst.clone(), pid.to_owned()));
        PromptGuard {
            plugin: self.clone(),
            task_id: task_id.to_owned(),
            inst: inst.clone(),
            prompt_id: pid.to_owned(),
            slot: Some(slot),
        }
    }

    /// Follows a queued prompt to its end and collects its outputs.
    #[allow(clippy::too_many_arguments)]
    async fn finish(
        &self,
        mut guard: PromptGuard,
        mut rx: tokio::sync::mpsc::UnboundedReceiver<Event>,
        task: &Task,
        ctx: &Context,
        graph: &Value,
        label: &str,
        timeout: Duration,
        include_previews: bool,
        reattached: bool,
        mut tail: Tail,
    ) -> Result<Output, PluginError> {
        let inst = guard.inst.clone();
        let pid = guard.prompt_id.clone();
        let result = self
            .follow(
                &inst,
                &task.id,
                &pid,
                &mut rx,
                &mut guard.slot,
                ctx,
                graph,
                timeout,
                reattached,
            )
            .await;
        // Every preview frame came before the end: offer the last ones before returning.
        inst.unlisten_previews(&pid);
        if let Some(h) = tail.previews.take() {
            let _ = tokio::time::timeout(Duration::from_secs(2), h).await;
        }
        // Finished in ComfyUI (either way): nothing to stop any more.
        self.running.lock().unwrap().remove(&task.id);
        if result.is_err() && guard.slot.is_some() {
            // Stopped or failed: the slot is free once ComfyUI has taken the prompt out of
            // its queue (an interrupt is reported before the prompt leaves it).
            attach::wait_gone(&inst, &pid, attach::GONE_WAIT).await;
            if self.is_cancelling(&task.id) {
                ctx.progress(100.0, "the engine stopped the prompt");
            }
        }
        drop(guard.slot.take());
        drop(guard);
        if let Some(subfolder) = &tail.uploads {
            tail.managed.remove_uploads(subfolder).await;
        }
        let entry = result?;
        tail.managed.known.ran(&crate::routing::needs(graph));
        tail.managed.touch();
        self.outputs(&inst, &pid, &entry, task, ctx, label, include_previews)
            .await
    }

    /// Downloads the outputs of a finished prompt and builds the task's output.
    #[allow(clippy::too_many_arguments)]
    async fn outputs(
        &self,
        inst: &Instance,
        pid: &str,
        entry: &Value,
        task: &Task,
        ctx: &Context,
        label: &str,
        include_previews: bool,
    ) -> Result<Output, PluginError> {
        ctx.progress(96.0, "downloading outputs");
        let (files, listed, texts) = self
            .collect_outputs(inst, entry, &task.work_dir, include_previews)
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

    /// Cancels a task (the body of `Plugin::cancel_task`): marks it, so the interrupt it
    /// causes reads as `cancelled` and a task still waiting for a slot or uploading stops,
    /// and stops its prompt in ComfyUI if one is there. The task's `run` then ends by itself
    /// once ComfyUI reports the prompt interrupted or gone.
    pub(crate) async fn cancel(&self, task_id: String) {
        if !attach::is_active(&task_id) {
            attach::note_early_cancel(&task_id);
            if !attach::is_active(&task_id) {
                return;
            }
        }
        self.cancelled.lock().unwrap().insert(task_id.clone());
        let entry = self.running.lock().unwrap().remove(&task_id);
        if let Some((inst, pid)) = entry
            && let Err(e) = inst.cancel(&pid).await
        {
            tracing::warn!(prompt_id = %pid, error = %e, "cancel in ComfyUI failed");
        }
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
        if self.is_cancelling(task_id) {
            // Deleted from the queue before it ran.
            return Ok(Some(Err(fatal(codes::CANCELLED, "cancelled"))));
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
        reattached: bool,
    ) -> Result<Value, PluginError> {
        let node_count = graph.as_object().map_or(1, |o| o.len().max(1));
        let total = node_count as f32;
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
                            report(done.len(), 0.0, &format!("{} of {} nodes done", done.len(), node_count));
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
                            if m > 0.0 { partial = ratio(v, m); }
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
                    // A re-attached prompt was queued under another client id: its messages go
                    // to a socket that is gone, so its history is polled.
                    check_now = down_since.is_some()
                        || reattached
                        || self.is_cancelling(task_id)
                        || last_check.elapsed() >= check_every;
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

    /// Downloads every output file the history entry lists into the task's work folder
    /// (`temp` files only with `include_previews`): the files to return, their listing for
    /// the result, and the text outputs by node.
    async fn collect_outputs(
        &self,
        inst: &Instance,
        entry: &Value,
        work_dir: &Path,
        include_previews: bool,
    ) -> Result<(Vec<(PathBuf, String, String)>, Value, Value), PluginError> {
        let mut files = Vec::new();
        let mut listed = Vec::new();
        let mut texts = Map::new();
        let mut names: HashSet<String> = HashSet::new();
        let outputs = entry["outputs"].as_object().cloned().unwrap_or_default();
        let mut nodes: Vec<(&String, &Value)> = outputs.iter().collect();
        nodes.sort_by_key(|(k, _)| (k.parse::<u64>().unwrap_or(u64::MAX), (*k).clone()));
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
                    let subfolder = f["subfolder"].as_str().unwrap_or_default();
                    let name = outputs::unique(&outputs::name(subfolder, filename), &mut names);
                    // Flat, unique by position; the name keeps the subfolder.
                    let base = name.rsplit('/').next().unwrap_or_default();
                    // In the work folder itself (no folder of their own: each new folder is an
                    // inode allocation, costly under a steady stream of tasks).
                    let dest = work_dir.join(format!("comfyui-output-{}-{base}", listed.len()));
                    let size = inst.download(f, &dest).await?;
                    let ct = mime_guess::from_path(filename)
                        .first_or_octet_stream()
                        .to_string();
                    listed.push(
                        json!({"name": name, "node": node, "kind": outputs::kind(&ct),
                        "output": kind, "type": ftype,
                        "filename": filename, "subfolder": f["subfolder"], "size": size}),
                    );
                    files.push((dest, ct, name));
                }
            }
        }
        Ok((files, json!(listed), Value::Object(texts)))
    }
}

/// `value / max` of a ComfyUI `progress` message as the fraction of the current node done.
#[expect(
    clippy::cast_possible_truncation,
    reason = "a fraction in 0..=1 fits an f32"
)]
fn ratio(value: f64, max: f64) -> f32 {
    (value / max).clamp(0.0, 1.0) as f32
}

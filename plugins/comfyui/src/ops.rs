//! The plugin's ops (`queue_status`, `system_stats`, `interrupt`, `list_workflows`, `info`) and its
//! health report: what the host can ask of the pool outside of tasks.
//!
//! Separate from running tasks (`run.rs`): every op asks each instance of the pool in turn and
//! merges the answers, and none of them touches a task's state.

use std::{sync::atomic::Ordering, time::Duration};

use aihost_plugin_api::{
    codes,
    sdk::{Op, PluginError, Value, json},
};

use crate::{
    ComfyUi,
    error::{fatal, no_instance},
};

/// The ops `describe` lists; [`ComfyUi::call`] runs them.
pub(crate) fn describe() -> Vec<Op> {
    vec![
        Op {
            name: "queue_status".into(),
            description: "ComfyUI's queue (running and pending, sorted), per instance.".into(),
        },
        Op {
            name: "system_stats".into(),
            description: "ComfyUI's system_stats, per instance.".into(),
        },
        Op {
            name: "interrupt".into(),
            description: "Interrupts the running prompt (args: optional prompt_id).".into(),
        },
        Op {
            name: "info".into(),
            description: "A read-only ComfyUI route of the first reachable instance (args: `route`, one of object_info, object_info/{class}, embeddings, models, models/{folder}), for the ComfyUI-compatible gateway.".into(),
        },
        Op {
            name: "list_workflows".into(),
            description: "Installed workflow templates with their parameter schemas.".into(),
        },
        Op {
            name: "availability".into(),
            description: "Whether the pool can take a task now, per task type (from memory; the host skips claiming while not ready).".into(),
        },
    ]
}

impl ComfyUi {
    /// Runs the op `name` (the body of `Plugin::call_op`); an unknown name is `unknown_op`.
    pub(crate) async fn call(&self, name: &str, args: &Value) -> Result<Value, PluginError> {
        match name {
            "queue_status" => self.queue_status().await,
            "system_stats" => self.system_stats().await,
            "interrupt" => self.interrupt(args).await,
            "list_workflows" => Ok(self.list_workflows()),
            "info" => self.info(args).await,
            "availability" => Ok(self.availability()),
            other => Err(fatal(
                codes::UNKNOWN_OP,
                format!("the comfyui plugin has no op {other:?}"),
            )),
        }
    }

    /// The health report (the body of `Plugin::health`): `ok` when every instance is
    /// reachable, `degraded` when some are, `engine_unavailable` when none is.
    pub(crate) async fn health_report(&self) -> Result<Value, PluginError> {
        let report = self.instance_report().await;
        let up = report.iter().filter(|r| r["reachable"] == true).count();
        if up == 0 {
            let why: Vec<String> = report
                .iter()
                .map(|r| {
                    format!(
                        "{} ({}{})",
                        r["url"].as_str().unwrap_or("?"),
                        r["error"].as_str().unwrap_or("unreachable"),
                        crate::managed::summary(r)
                    )
                })
                .collect();
            return Err(no_instance(&why));
        }
        Ok(json!({
            "status": if up == report.len() { "ok" } else { "degraded" },
            "instances": report,
            "templates": self.templates.len(),
        }))
    }

    /// One entry per instance: reachable (by socket, else by a quick `/prompt`), socket state,
    /// prompts of ours in flight and the last error.
    async fn instance_report(&self) -> Vec<Value> {
        let mut out = Vec::new();
        for (i, m) in self.instances.iter().zip(&self.managed) {
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
            let mut entry = json!({
                "url": i.url,
                "reachable": reachable,
                "socket_connected": i.is_connected(),
                "socket_connections": i.connections.load(Ordering::Relaxed),
                "inflight": i.inflight.load(Ordering::Relaxed),
                "error": error,
            });
            // Supervision, manifest, models (`managed.rs`).
            if let (Some(e), Value::Object(extra)) = (entry.as_object_mut(), m.report()) {
                e.extend(extra);
            }
            out.push(entry);
        }
        out
    }

    /// `queue_status`: the queues of every instance merged, pending items sorted by number.
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
            return Err(no_instance(&errors));
        }
        Ok(json!({"queue_running": running, "queue_pending": pending, "instances": per}))
    }

    /// `system_stats`: the first reachable instance's stats, with every instance's under
    /// `instances`.
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
            return Err(no_instance(&errors));
        };
        if let Some(o) = out.as_object_mut() {
            o.insert("instances".into(), json!(per));
        }
        Ok(out)
    }

    /// `interrupt`: interrupts the running prompt (or only `prompt_id`) on every instance.
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
            return Err(no_instance(&errors));
        }
        Ok(json!({"interrupted": done, "unreachable": errors}))
    }

    /// `info`: one read-only route of ComfyUI (`args.route`, from a fixed list; a class or
    /// folder segment is %-encoded), answered by the first reachable instance.
    async fn info(&self, args: &Value) -> Result<Value, PluginError> {
        let route = args.get("route").and_then(Value::as_str).unwrap_or("");
        let path = info_path(route).ok_or_else(|| {
            PluginError::invalid_input(format!(
                "info: {route:?} is not one of object_info, object_info/{{class}}, embeddings, models, models/{{folder}}"
            ))
        })?;
        let mut errors = Vec::new();
        for i in &self.instances {
            match i.get_json(&path).await {
                Ok(v) => return Ok(v),
                Err(e) => errors.push(format!("{} ({})", i.url, e.message)),
            }
        }
        Err(no_instance(&errors))
    }

    /// `list_workflows`: the installed templates with their parameter schemas.
    fn list_workflows(&self) -> Value {
        json!({"workflows": self.templates.iter().map(|t| json!({
            "name": t.name,
            "description": t.description,
            "params_schema": t.params_schema(),
            "media_params": t.media_params(),
        })).collect::<Vec<_>>()})
    }
}

/// The ComfyUI path of an `info` route, or `None` for a route not on the list.
fn info_path(route: &str) -> Option<String> {
    let (head, tail) = match route.split_once('/') {
        Some((h, t)) => (h, Some(t)),
        None => (route, None),
    };
    match (head, tail) {
        ("object_info" | "embeddings" | "models", None) => Some(format!("/{head}")),
        // `.` and `..` would name another route once the instance's server resolves them.
        ("object_info" | "models", Some(seg)) if !matches!(seg, "" | "." | "..") => {
            let enc: String = seg
                .bytes()
                .map(|b| {
                    if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
                        char::from(b).to_string()
                    } else {
                        format!("%{b:02X}")
                    }
                })
                .collect();
            Some(format!("/{head}/{enc}"))
        }
        _ => None,
    }
}

#[cfg(test)]
mod info_tests {
    use super::info_path;

    #[test]
    fn info_routes_are_a_fixed_list_and_segments_are_encoded() {
        assert_eq!(info_path("models/.."), None);
        assert_eq!(info_path("object_info/."), None);
        assert_eq!(info_path("object_info").as_deref(), Some("/object_info"));
        assert_eq!(
            info_path("object_info/Load Image/x").as_deref(),
            Some("/object_info/Load%20Image%2Fx")
        );
        assert_eq!(info_path("models/loras").as_deref(), Some("/models/loras"));
        for bad in [
            "",
            "prompt",
            "queue",
            "object_info/",
            "history/x",
            "interrupt",
        ] {
            assert_eq!(info_path(bad), None, "{bad}");
        }
    }
}

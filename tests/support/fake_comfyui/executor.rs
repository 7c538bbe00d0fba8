//! The fake ComfyUI's executor: takes prompts off the queue in ComfyUI's order, runs their
//! nodes with the messages of a real run (`execution_start`, `execution_cached`, per node
//! `progress_state` / `executing` / [`progress`] / `executed`, then `execution_success`,
//! `execution_error` or `execution_interrupted`), writes the history entry, and ends with
//! `status` and `executing` null. Separate from the routes because it is the other half of
//! the server: the only writer of outputs and history.
//!
//! Deliberate differences from ComfyUI: nodes run in depth-first order of the outputs (ComfyUI
//! picks among ready nodes, output nodes first), the cache serves only a whole identical prompt
//! (ComfyUI caches per node), and the nodes compute stand-ins (a blur passes its image on, a
//! sampler draws a flat colour, a video is a WebM header and raw frames).

use std::{
    cell::RefCell,
    collections::{BTreeMap, HashMap},
    path::Path,
    sync::{Arc, Mutex},
    time::Duration,
};

use poem::web::websocket::Message;
use serde_json::{Map, Value, json};

use super::{
    state::{Inner, QItem, now_ms},
    validate::{py_str, sorted_ids},
};

/// The executor task of one server run.
pub(crate) async fn executor(inner: Arc<Inner>) {
    loop {
        let item = loop {
            let notified = inner.wake.notified();
            {
                let mut st = inner.st();
                if !st.pending.is_empty() {
                    // ComfyUI's heap pops the smallest (number, prompt_id).
                    st.pending.sort_by(|a, b| {
                        a.order()
                            .total_cmp(&b.order())
                            .then_with(|| a.id.cmp(&b.id))
                    });
                    let item = st.pending.remove(0);
                    st.running = Some((item.clone(), String::new()));
                    // An interrupt sent while idle is cleared when the next execution starts.
                    st.interrupt = false;
                    st.broadcast_status();
                    break item;
                }
            }
            let _ = tokio::time::timeout(Duration::from_millis(200), notified).await;
        };
        run_prompt(&inner, item).await;
    }
}

/// Values flowing between nodes.
#[derive(Clone)]
enum Val {
    Images(Vec<image::RgbImage>),
    Int(i64),
    Latent(u32, u32, u32),
    Other,
}

/// A node's failure: Python's exception type and message.
struct Failure {
    kind: &'static str,
    message: String,
}

/// One prompt's run: where its messages go, and the `progress_state` of its nodes.
struct Run<'a> {
    inner: &'a Inner,
    pid: String,
    client: Option<String>,
    states: RefCell<BTreeMap<String, Value>>,
}

impl Run<'_> {
    /// To the prompt's client; without one, only `progress_state`, `progress` and
    /// `execution_interrupted` are sent, to everyone (as ComfyUI does).
    fn send(&self, msg: Value) {
        let st = self.inner.st();
        match &self.client {
            Some(c) => st.send_to(c, &msg),
            None => {
                if matches!(
                    msg["type"].as_str(),
                    Some("progress_state" | "execution_interrupted" | "progress")
                ) {
                    st.broadcast(&msg);
                }
            }
        }
    }

    /// A latent preview after a sampler step, when previews are on: a JPEG of the latent's
    /// size / 8 (ComfyUI's latent2rgb previews), its shade following the step, sent only to
    /// the prompt's client as ComfyUI's `send_sync(..., sid=client_id)` does. Type 4
    /// (`u32 4, u32 json_len, json, image`) to a socket that announced
    /// `supports_preview_metadata`, else type 1 (`u32 1, u32 1 = JPEG, image`).
    fn preview(&self, node: &str, w: u32, h: u32, step: i64) {
        use std::sync::atomic::Ordering;
        let Some(client) = &self.client else { return };
        if !self.inner.previews.load(Ordering::SeqCst) {
            return;
        }
        let shade = (step * 40).clamp(0, 255) as u8;
        let img = image::RgbImage::from_pixel(
            (w / 8).max(1),
            (h / 8).max(1),
            image::Rgb([shade, 64, 128]),
        );
        let mut jpeg = Vec::new();
        img.write_to(
            &mut std::io::Cursor::new(&mut jpeg),
            image::ImageFormat::Jpeg,
        )
        .expect("encode a preview");
        let st = self.inner.st();
        let frame = if st.preview_metadata.contains(client) {
            let meta = json!({"node_id": node, "prompt_id": self.pid, "display_node_id": node,
                "parent_node_id": null, "real_node_id": node, "image_type": "image/jpeg"})
            .to_string();
            let mut f = 4u32.to_be_bytes().to_vec();
            f.extend((meta.len() as u32).to_be_bytes());
            f.extend(meta.as_bytes());
            f.extend(jpeg);
            f
        } else {
            let mut f = 1u32.to_be_bytes().to_vec();
            f.extend(1u32.to_be_bytes());
            f.extend(jpeg);
            f
        };
        st.send_raw_to(client, Message::Binary(frame));
    }

    fn node_state(&self, node: &str, value: Value, max: Value, state: &str) {
        let pid = &self.pid;
        let mut states = self.states.borrow_mut();
        states.insert(
            node.to_owned(),
            json!({"value": value, "max": max, "state": state, "node_id": node, "prompt_id": pid,
                   "display_node_id": node, "parent_node_id": null, "real_node_id": node}),
        );
        let msg = json!({"type": "progress_state", "data": {"prompt_id": pid, "nodes": *states}});
        drop(states);
        self.send(msg);
    }

    /// Finished: `1.0/1.0`, or the last progress (ints) of a node that reported some.
    fn finish(&self, node: &str) {
        let last = self.states.borrow().get(node).cloned();
        match last {
            Some(s) if s["value"].is_u64() => {
                self.node_state(node, s["value"].clone(), s["max"].clone(), "finished")
            }
            _ => self.node_state(node, json!(1.0), json!(1.0), "finished"),
        }
    }
}

/// Node ids an output depends on (itself last), depth first.
pub(crate) fn deps(prompt: &Map<String, Value>, id: &str, out: &mut Vec<String>) {
    if out.iter().any(|x| x == id) {
        return;
    }
    if let Some(inputs) = prompt.get(id).and_then(|n| n["inputs"].as_object()) {
        for v in inputs.values() {
            if let Some(l) = v.as_array()
                && l.len() == 2
                && let Some(src) = l[0].as_str()
                && prompt.contains_key(src)
            {
                deps(prompt, src, out);
            }
        }
    }
    out.push(id.to_owned());
}

async fn run_prompt(inner: &Arc<Inner>, item: QItem) {
    let run = Run {
        inner,
        pid: item.id.clone(),
        client: item.client_id().map(str::to_owned),
        states: RefCell::default(),
    };
    let pid = item.id.clone();
    let prompt = item.prompt.as_object().cloned().unwrap_or_default();
    let mut messages: Vec<Value> = Vec::new();
    let mut event = |run: &Run<'_>, kind: &str, data: Value| {
        run.send(json!({"type": kind, "data": data}));
        messages.push(json!([kind, data]));
    };
    event(
        &run,
        "execution_start",
        json!({"prompt_id": pid, "timestamp": now_ms()}),
    );
    let mut order = Vec::new();
    for o in &item.outputs {
        deps(&prompt, o, &mut order);
    }
    let cache_key = format!("{}|{:?}", item.prompt, item.outputs);
    let cached = inner.st().cache.get(&cache_key).cloned();
    let mut outputs = Map::new();
    let mut ok = true;
    if let Some(cached) = cached {
        event(
            &run,
            "execution_cached",
            json!({"nodes": sorted_ids(order.iter()), "prompt_id": pid, "timestamp": now_ms()}),
        );
        // No `executing`; `executed` again with the same files, `progress_state` as ints.
        for (node, out) in &cached {
            run.send(json!({"type": "executed", "data": {"node": node, "display_node": node, "output": out, "prompt_id": pid}}));
            run.states.borrow_mut().clear();
            run.node_state(node, json!(1), json!(1), "finished");
        }
        outputs = cached;
    } else {
        event(
            &run,
            "execution_cached",
            json!({"nodes": [], "prompt_id": pid, "timestamp": now_ms()}),
        );
        let mut values: HashMap<String, Vec<Val>> = HashMap::new();
        let mut executed: Vec<String> = Vec::new();
        for node in &order {
            run.node_state(node, json!(0.0), json!(1.0), "running");
            run.send(json!({"type": "executing", "data": {"node": node, "display_node": node, "prompt_id": pid}}));
            if let Some((_, cur)) = inner.st().running.as_mut() {
                *cur = node.clone();
            }
            wait_at_boundary(inner).await;
            let class_type = prompt[node]["class_type"]
                .as_str()
                .unwrap_or_default()
                .to_owned();
            if std::mem::take(&mut inner.st().interrupt) {
                event(
                    &run,
                    "execution_interrupted",
                    json!({"prompt_id": pid, "node_id": node, "node_type": class_type,
                           "executed": executed, "timestamp": now_ms()}),
                );
                ok = false;
                break;
            }
            let inputs = &prompt[node]["inputs"];
            match exec_node(&run, node, &class_type, inputs, &values) {
                Ok((vals, ui)) => {
                    values.insert(node.clone(), vals);
                    if let Some(ui) = ui {
                        run.send(json!({"type": "executed", "data": {"node": node, "display_node": node, "output": ui, "prompt_id": pid}}));
                        outputs.insert(node.clone(), ui);
                    }
                    executed.push(node.clone());
                    run.finish(node);
                }
                Err(f) => {
                    // Literal inputs as one-element lists, as ComfyUI reports them.
                    let current_inputs: Map<String, Value> = inputs
                        .as_object()
                        .into_iter()
                        .flatten()
                        .filter(|(_, v)| !v.is_array())
                        .map(|(k, v)| (k.clone(), json!([v])))
                        .collect();
                    event(
                        &run,
                        "execution_error",
                        json!({"prompt_id": pid, "node_id": node, "node_type": class_type, "executed": executed,
                               "exception_message": f.message, "exception_type": f.kind,
                               "traceback": ["  File \"execution.py\", line 496, in execute\n"],
                               "current_inputs": current_inputs, "current_outputs": order,
                               "timestamp": now_ms()}),
                    );
                    ok = false;
                    break;
                }
            }
        }
    }
    if ok {
        event(
            &run,
            "execution_success",
            json!({"prompt_id": pid, "timestamp": now_ms()}),
        );
    } else {
        outputs.clear();
    }
    // `meta` covers the nodes with outputs.
    let meta: Map<String, Value> = outputs
        .keys()
        .map(|n| {
            (
                n.clone(),
                json!({"node_id": n, "display_node": n, "parent_node": null, "real_node_id": n}),
            )
        })
        .collect();
    let status_str = if ok { "success" } else { "error" };
    {
        let mut st = inner.st();
        if ok {
            st.cache.insert(cache_key, outputs.clone());
        }
        let entry = json!({
            "prompt": item.json(),
            "outputs": outputs,
            "status": {"status_str": status_str, "completed": ok, "messages": messages},
            "meta": meta,
        });
        st.put_history(pid.clone(), entry);
        st.running = None;
        st.broadcast_status();
    }
    run.send(json!({"type": "executing", "data": {"node": null, "prompt_id": pid}}));
}

/// The test hook `hold` pauses here; an interrupt ends the wait.
async fn wait_at_boundary(inner: &Inner) {
    let mut hold = inner.hold.subscribe();
    loop {
        if inner.st().interrupt || !*hold.borrow() {
            return;
        }
        let notified = inner.wake.notified();
        tokio::select! {
            _ = hold.changed() => {}
            _ = notified => {}
            _ = tokio::time::sleep(Duration::from_millis(100)) => {}
        }
    }
}

/// Writes a new file `{prefix}_{n:05}_.{ext}` in `dir` with `write` and answers its name: `n`
/// is one past the highest number there, as ComfyUI's `get_save_image_path` finds it by
/// listing the folder. The listing grows with every save, so the number is remembered with the
/// folder's modification time after the write, and the folder is listed again only when
/// something else changed it since.
fn save_next(
    numbers: &Numbers,
    dir: &Path,
    prefix: &str,
    ext: &str,
    write: impl FnOnce(&Path),
) -> String {
    let mtime = || std::fs::metadata(dir).and_then(|m| m.modified()).ok();
    let key = (dir.to_path_buf(), prefix.to_owned());
    let mut numbers = numbers.lock().unwrap();
    let remembered = numbers
        .get(&key)
        .filter(|(at, _)| Some(*at) == mtime())
        .map(|(_, n)| *n);
    let n = remembered.unwrap_or_else(|| {
        let mut n = 1;
        if let Ok(rd) = std::fs::read_dir(dir) {
            for e in rd.flatten() {
                let name = e.file_name().to_string_lossy().into_owned();
                if let Some(rest) = name.strip_prefix(&format!("{prefix}_"))
                    && let Some(num) = rest.split('_').next().and_then(|s| s.parse::<u32>().ok())
                {
                    n = n.max(num + 1);
                }
            }
        }
        n
    });
    let name = format!("{prefix}_{n:05}_.{ext}");
    write(&dir.join(&name));
    match mtime() {
        Some(at) => numbers.insert(key, (at, n + 1)),
        None => numbers.remove(&key),
    };
    name
}

/// The next file number by folder and prefix, with the folder's modification time after the
/// save that took the last one.
pub(crate) type Numbers =
    Mutex<HashMap<(std::path::PathBuf, String), (std::time::SystemTime, u32)>>;

/// ComfyUI's PreviewImage prefix: `ComfyUI_temp_` and five random letters.
fn temp_prefix() -> String {
    let mut x = now_ms() ^ (u64::from(std::process::id()) << 20);
    let letters: String = (0..5)
        .map(|_| {
            x = x
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            char::from(b'a' + ((x >> 33) % 26) as u8)
        })
        .collect();
    format!("ComfyUI_temp_{letters}")
}

/// Splits `sub/dir/prefix` and refuses one that leaves the folder (ComfyUI raises too).
fn split_prefix(prefix: &str) -> Result<(String, String), Failure> {
    let (sub, base) = prefix.rsplit_once('/').unwrap_or(("", prefix));
    if prefix.split('/').any(|p| p == "..") || prefix.starts_with('/') {
        return Err(Failure {
            kind: "Exception",
            message: "Saving image outside the output folder is not allowed.".into(),
        });
    }
    Ok((sub.to_owned(), base.to_owned()))
}

#[allow(clippy::type_complexity)]
fn exec_node(
    run: &Run<'_>,
    node: &str,
    class_type: &str,
    inputs: &Value,
    values: &HashMap<String, Vec<Val>>,
) -> Result<(Vec<Val>, Option<Value>), Failure> {
    let dir = &run.inner.dir;
    let get = |name: &str| -> Val {
        let v = &inputs[name];
        if let Some(l) = v.as_array() {
            let src = l[0].as_str().unwrap_or_default();
            let slot = l[1].as_u64().unwrap_or(0) as usize;
            return values
                .get(src)
                .and_then(|o| o.get(slot))
                .cloned()
                .unwrap_or(Val::Other);
        }
        match v {
            Value::Number(n) => Val::Int(n.as_f64().unwrap_or(0.0) as i64),
            Value::String(s) => s.trim().parse::<i64>().map(Val::Int).unwrap_or(Val::Other),
            _ => Val::Other,
        }
    };
    let int = |name: &str| match get(name) {
        Val::Int(i) => i,
        _ => 0,
    };
    let images = |name: &str| match get(name) {
        Val::Images(v) => Ok(v),
        _ => Err(Failure {
            kind: "AttributeError",
            message: format!(
                "'{}' object has no attribute 'shape'",
                if inputs[name].is_string() {
                    "str"
                } else {
                    "NoneType"
                }
            ),
        }),
    };
    let string = |name: &str| py_str(&inputs[name]);
    let save = |kind: &str, imgs: &[image::RgbImage], prefix: &str| -> Result<Value, Failure> {
        let (sub, base) = split_prefix(prefix)?;
        let folder = dir.join(kind).join(&sub);
        std::fs::create_dir_all(&folder).unwrap();
        let files: Vec<Value> = imgs
            .iter()
            .map(|img| {
                let name = save_next(&run.inner.numbers, &folder, &base, "png", |path| {
                    img.save(path).unwrap();
                });
                json!({"filename": name, "subfolder": sub, "type": kind})
            })
            .collect();
        Ok(json!({"images": files}))
    };
    let out = match class_type {
        "EmptyImage" => {
            let c = int("color") as u32;
            let px = image::Rgb([(c >> 16) as u8, (c >> 8) as u8, c as u8]);
            let img = image::RgbImage::from_pixel(int("width") as u32, int("height") as u32, px);
            (
                vec![Val::Images(vec![img; int("batch_size").max(1) as usize])],
                None,
            )
        }
        "LoadImage" => {
            let path = dir.join("input").join(string("image"));
            let img = image::open(&path).map_err(|_| Failure {
                kind: "PIL.UnidentifiedImageError",
                message: format!("cannot identify image file '{}'\n", path.display()),
            })?;
            (vec![Val::Images(vec![img.to_rgb8()]), Val::Other], None)
        }
        "ImageInvert" => {
            let mut v = images("image")?;
            for img in &mut v {
                image::imageops::invert(img);
            }
            (vec![Val::Images(v)], None)
        }
        "ImageBlur" | "ImageSharpen" => (vec![Val::Images(images("image")?)], None),
        "ImageScale" => {
            let (w, h) = (int("width") as u32, int("height") as u32);
            let v = images("image")?
                .iter()
                .map(|i| {
                    image::imageops::resize(
                        i,
                        w.max(1),
                        h.max(1),
                        image::imageops::FilterType::Nearest,
                    )
                })
                .collect();
            (vec![Val::Images(v)], None)
        }
        "GetImageSize" => {
            let v = images("image")?;
            let (w, h) = v.first().map_or((0, 0), |i| i.dimensions());
            let text = format!("width: {w}, height: {h}\n batch size: {}", v.len());
            // Binary frame type 3 (TEXT): u32 len, node id, text; sent to every socket.
            let mut frame = 3u32.to_be_bytes().to_vec();
            frame.extend((node.len() as u32).to_be_bytes());
            frame.extend(node.as_bytes());
            frame.extend(text.as_bytes());
            run.inner.st().broadcast_raw(&Message::Binary(frame));
            (
                vec![
                    Val::Int(w as i64),
                    Val::Int(h as i64),
                    Val::Int(v.len() as i64),
                ],
                None,
            )
        }
        "CheckpointLoaderSimple" => (vec![Val::Other, Val::Other, Val::Other], None),
        "CLIPTextEncode" => (vec![Val::Other], None),
        "EmptyLatentImage" => (
            vec![Val::Latent(
                int("width") as u32,
                int("height") as u32,
                int("batch_size") as u32,
            )],
            None,
        ),
        "KSampler" => {
            let steps = int("steps");
            let (w, h) = match get("latent_image") {
                Val::Latent(w, h, _) => (w, h),
                _ => (64, 64),
            };
            for i in 1..=steps {
                run.node_state(node, json!(i), json!(steps), "running");
                run.send(json!({"type": "progress", "data": {"value": i, "max": steps, "prompt_id": run.pid, "node": node}}));
                run.preview(node, w, h, i);
            }
            (vec![get("latent_image")], None)
        }
        "VAEDecode" => {
            let (w, h, b) = match get("samples") {
                Val::Latent(w, h, b) => (w, h, b),
                _ => (64, 64, 1),
            };
            let img = image::RgbImage::from_pixel(w, h, image::Rgb([90, 120, 200]));
            (vec![Val::Images(vec![img; b.max(1) as usize])], None)
        }
        "VAEEncode" => {
            let v = images("pixels")?;
            let (w, h) = v.first().map_or((64, 64), |i| i.dimensions());
            (vec![Val::Latent(w, h, v.len().max(1) as u32)], None)
        }
        "SaveImage" => (
            vec![],
            Some(save(
                "output",
                &images("images")?,
                &string("filename_prefix"),
            )?),
        ),
        "PreviewImage" => (
            vec![],
            Some(save("temp", &images("images")?, &temp_prefix())?),
        ),
        "SaveWEBM" => {
            let (sub, base) = split_prefix(&string("filename_prefix"))?;
            let folder = dir.join("output").join(&sub);
            std::fs::create_dir_all(&folder).unwrap();
            let mut bytes = vec![0x1a, 0x45, 0xdf, 0xa3];
            for f in &images("images")? {
                bytes.extend_from_slice(&f.as_raw()[..f.as_raw().len().min(1024)]);
            }
            let name = save_next(&run.inner.numbers, &folder, &base, "webm", |path| {
                std::fs::write(path, bytes).unwrap();
            });
            (
                vec![],
                Some(
                    json!({"images": [{"filename": name, "subfolder": sub, "type": "output"}], "animated": [true]}),
                ),
            )
        }
        "PreviewAny" => {
            let text = match get("source") {
                Val::Int(i) => i.to_string(),
                _ => inputs["source"]
                    .as_str()
                    .map_or_else(|| inputs["source"].to_string(), str::to_owned),
            };
            (vec![], Some(json!({"text": [text]})))
        }
        other => {
            return Err(Failure {
                kind: "NotImplementedError",
                message: format!("the fake has no executor for {other}"),
            });
        }
    };
    Ok(out)
}

//! The fake ComfyUI's own ceiling: one instance driven directly, with no aihost between, the
//! way a minimal client would (one WebSocket, keep-alive HTTP, `depth` prompts in flight; per
//! prompt `POST /prompt`, the socket's `executing` null, `GET /history/{id}`, `GET /view`).
//! The ComfyUI figures of aihost are read against it: aihost cannot keep an instance faster
//! than the instance runs alone on the same cores.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use futures_util::StreamExt as _;
use serde_json::{Value, json};
use tokio::sync::oneshot;

/// What the socket reader knows of a prompt: finished before anyone waited, or who waits.
enum Seen {
    Finished,
    Waiting(oneshot::Sender<()>),
}

type Prompts = Arc<Mutex<HashMap<String, Seen>>>;

/// Runs `n` prompts of the `solid_color` graph (width × height, a new colour each, so the
/// fake's cache never answers) through the fake at `url`, `depth` at a time; answers
/// prompts per second and each prompt's milliseconds from its `POST` to its output read, or
/// what went wrong.
pub async fn run_prompts(
    url: &str,
    n: u64,
    depth: u64,
    size: u32,
    first_colour: u64,
) -> Result<(f64, Vec<f64>), String> {
    let client_id = format!("bench-{}", std::process::id());
    let ws_url = format!(
        "{}/ws?clientId={client_id}",
        url.replace("http://", "ws://")
    );
    let (socket, _) = tokio_tungstenite::connect_async(&ws_url)
        .await
        .map_err(|e| format!("websocket: {e}"))?;
    let prompts: Prompts = Arc::default();
    let (_, mut read) = socket.split();
    // ComfyUI greets a socket with a `status` message once it is registered; messages of a
    // prompt sent before that would go nowhere.
    tokio::time::timeout(Duration::from_secs(10), read.next())
        .await
        .map_err(|_| "no status message on the socket".to_owned())?;
    let reader = {
        let prompts = prompts.clone();
        tokio::spawn(async move {
            while let Some(Ok(msg)) = read.next().await {
                let Ok(text) = msg.to_text() else { continue };
                let Ok(v) = serde_json::from_str::<Value>(text) else {
                    continue;
                };
                if v["type"] == "executing" && v["data"]["node"].is_null() {
                    let Some(id) = v["data"]["prompt_id"].as_str() else {
                        continue;
                    };
                    let mut p = prompts.lock().unwrap();
                    match p.remove(id) {
                        Some(Seen::Waiting(tx)) => {
                            let _ = tx.send(());
                        }
                        _ => {
                            p.insert(id.to_owned(), Seen::Finished);
                        }
                    }
                }
            }
        })
    };
    let http = reqwest::Client::new();
    let next = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let latencies: Arc<Mutex<Vec<f64>>> = Arc::default();
    let t0 = Instant::now();
    let mut workers = Vec::new();
    for w in 0..depth {
        let (http, prompts, next, url, client_id, latencies) = (
            http.clone(),
            prompts.clone(),
            next.clone(),
            url.to_owned(),
            client_id.clone(),
            latencies.clone(),
        );
        workers.push(tokio::spawn(async move {
            loop {
                let i = next.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                if i >= n {
                    return Ok::<(), String>(());
                }
                let id = format!("00000000-0000-4000-8000-{:06x}{w:06x}", first_colour + i);
                let graph = json!({
                    "1": {"class_type": "EmptyImage", "inputs": {"width": size, "height": size, "batch_size": 1, "color": (first_colour + i) % 16_777_215}},
                    "2": {"class_type": "SaveImage", "inputs": {"images": ["1", 0], "filename_prefix": "alone"}}
                });
                let began = Instant::now();
                let (tx, rx) = oneshot::channel();
                let finished = {
                    let mut p = prompts.lock().unwrap();
                    match p.remove(&id) {
                        Some(Seen::Finished) => true,
                        _ => {
                            p.insert(id.clone(), Seen::Waiting(tx));
                            false
                        }
                    }
                };
                let r = http
                    .post(format!("{url}/prompt"))
                    .json(&json!({"prompt": graph, "client_id": client_id, "prompt_id": id}))
                    .send()
                    .await
                    .map_err(|e| e.to_string())?;
                if !r.status().is_success() {
                    return Err(format!("POST /prompt: {}", r.status()));
                }
                if !finished {
                    tokio::time::timeout(Duration::from_secs(30), rx)
                        .await
                        .map_err(|_| format!("prompt {id}: no end on the socket in 30 s"))?
                        .map_err(|_| "the socket closed".to_owned())?;
                }
                let h: Value = http
                    .get(format!("{url}/history/{id}"))
                    .send()
                    .await
                    .map_err(|e| e.to_string())?
                    .json()
                    .await
                    .map_err(|e| e.to_string())?;
                let image = &h[&id]["outputs"]["2"]["images"][0];
                let file = image["filename"].as_str().ok_or("no output in the history")?;
                let bytes = http
                    .get(format!("{url}/view?filename={file}&subfolder=&type=output"))
                    .send()
                    .await
                    .map_err(|e| e.to_string())?
                    .bytes()
                    .await
                    .map_err(|e| e.to_string())?;
                if bytes.len() < 8 {
                    return Err("an empty output".into());
                }
                latencies
                    .lock()
                    .unwrap()
                    .push(began.elapsed().as_secs_f64() * 1000.0);
            }
        }));
    }
    for w in workers {
        w.await.map_err(|e| e.to_string())??;
    }
    let rate = n as f64 / t0.elapsed().as_secs_f64();
    reader.abort();
    let latencies = std::mem::take(&mut *latencies.lock().unwrap());
    Ok((rate, latencies))
}

//! The comfyui scenarios against a REAL ComfyUI (ignored by default): set
//! `AIHOST_TEST_COMFYUI_URL` (e.g. `http://127.0.0.1:8188`, a bare CPU ComfyUI from
//! Comfy-Org/ComfyUI started with `main.py --cpu`) and run with `--run-ignored all`.
//! Model-free workflows only; run them one at a time (`-j 1`): they share the one ComfyUI.
//! Cancel while running and re-attach after `kill -9` of the host use the same URL.
//! `real_comfyui_supervised_launch` instead needs
//! `AIHOST_TEST_COMFYUI_DIR` (a ComfyUI checkout) and `AIHOST_TEST_COMFYUI_PYTHON` (its Python):
//! the plugin launches it, it is killed and restarted, and it stops with the host.

use std::{path::PathBuf, time::Duration};

use aihost_tests::{Options, Server, plugin_lib, solid_png, wait_for};
use serde_json::{Value, json};

const T: Duration = Duration::from_secs(300);

/// Runs a `comfyui.workflow` task to its end.
async fn run(s: &Server, input: Value) -> Value {
    s.run("comfyui.workflow", input, T).await
}

/// A graph that takes a few seconds on CPU (blur and sharpen of a 1024² image).
fn slow(color: u32) -> Value {
    let mut g = json!({
        "1": {"class_type": "EmptyImage", "inputs": {"width": 1024, "height": 1024, "batch_size": 1, "color": color}},
        "9": {"class_type": "SaveImage", "inputs": {"images": ["104", 0], "filename_prefix": "aihost_slow"}}
    });
    for (i, prev) in [
        (100, "1"),
        (101, "100"),
        (102, "101"),
        (103, "102"),
        (104, "103"),
    ] {
        let class = if i % 2 == 0 {
            "ImageBlur"
        } else {
            "ImageSharpen"
        };
        let inputs = if class == "ImageBlur" {
            json!({"image": [prev, 0], "blur_radius": 31, "sigma": 10.0})
        } else {
            json!({"image": [prev, 0], "sharpen_radius": 31, "sigma": 10.0, "alpha": 1.0})
        };
        g[i.to_string()] = json!({"class_type": class, "inputs": inputs});
    }
    g
}

#[tokio::test]
#[ignore = "needs a real ComfyUI: AIHOST_TEST_COMFYUI_URL=URL, run with --run-ignored all"]
async fn real_comfyui_model_free_scenarios() {
    let url = std::env::var("AIHOST_TEST_COMFYUI_URL")
        .expect("set AIHOST_TEST_COMFYUI_URL to the real ComfyUI to test against");
    let workflows = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../workflows");
    let cfg = format!(
        "urls = [{url:?}]\nworkflows_dir = {:?}\nhistory_poll_ms = 300\n",
        workflows.canonicalize().unwrap().display().to_string()
    );
    let s = Server::start_with(Options {
        plugins: vec![("comfyui".into(), plugin_lib("aihost_comfyui"), cfg)],
        ..Options::default()
    })
    .await;
    let nonce = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
        % 16_000_000;

    // Fresh run, then the identical prompt served from ComfyUI's cache.
    let input =
        json!({"workflow": "solid_color", "params": {"width": 32, "height": 24, "color": nonce}});
    let a = run(&s, input.clone()).await;
    assert_eq!(a["status"], "COMPLETED", "{a}");
    let b = run(&s, input).await;
    assert_eq!(b["status"], "COMPLETED", "{b}");
    assert_eq!(
        b["result"]["files"][0]["filename"],
        a["result"]["files"][0]["filename"]
    );
    let img = image::load_from_memory(
        &s.download(a["result"]["outputs"][0]["url"].as_str().unwrap())
            .await,
    )
    .unwrap()
    .to_rgb8();
    assert_eq!(img.dimensions(), (32, 24));
    eprintln!(
        "real: fresh + cached run ok ({})",
        a["result"]["files"][0]["filename"]
    );

    // Upload + LoadImage.
    let up = s
        .upload("real.png", solid_png(40, 30, [10, 20, 30]), None)
        .await;
    let t = run(&s, json!({"workflow": "invert_scale", "params": {"image": up["url"], "width": 20, "height": 15}})).await;
    assert_eq!(t["status"], "COMPLETED", "{t}");
    let img = image::load_from_memory(
        &s.download(t["result"]["outputs"][0]["url"].as_str().unwrap())
            .await,
    )
    .unwrap()
    .to_rgb8();
    assert_eq!(img.dimensions(), (20, 15));
    assert_eq!(img.get_pixel(1, 1).0, [245, 235, 225]);
    eprintln!("real: upload + invert + scale ok");

    // Validation errors.
    for (graph, expect) in [
        (
            json!({"1": {"class_type": "NoSuchNode", "inputs": {}}, "2": {"class_type": "SaveImage", "inputs": {"images": ["1", 0], "filename_prefix": "e"}}}),
            "invalid_prompt",
        ),
        (
            json!({"1": {"class_type": "EmptyImage", "inputs": {"width": 0, "height": 8, "batch_size": 1, "color": 0}}, "2": {"class_type": "SaveImage", "inputs": {"images": ["1", 0], "filename_prefix": "e"}}}),
            "node 1 (EmptyImage) input \"width\"",
        ),
        (
            json!({"1": {"class_type": "EmptyImage", "inputs": {"width": 8, "height": 8, "batch_size": 1, "color": 0}}, "2": {"class_type": "SaveImage", "inputs": {"images": ["99", 0], "filename_prefix": "e"}}}),
            "[KeyError]",
        ),
    ] {
        let t = run(&s, json!({"workflow_json": graph})).await;
        assert_eq!(t["error"]["code"], "invalid_workflow", "{t}");
        let m = t["error"]["message"].as_str().unwrap();
        assert!(m.contains(expect), "{m}");
        eprintln!("real: {m}");
    }

    // Execution error.
    let bad = s.upload("broken.png", b"not an image".to_vec(), None).await;
    let t = run(
        &s,
        json!({"workflow": "invert_scale", "params": {"image": bad["key"]}}),
    )
    .await;
    assert_eq!(t["error"]["code"], "engine_error", "{t}");
    eprintln!("real: {}", t["error"]["message"]);

    // Video and text outputs.
    let graph = json!({
        "1": {"class_type": "EmptyImage", "inputs": {"width": 64, "height": 48, "batch_size": 3, "color": nonce}},
        "2": {"class_type": "GetImageSize", "inputs": {"image": ["1", 0]}},
        "3": {"class_type": "SaveWEBM", "inputs": {"images": ["1", 0], "filename_prefix": "aihost_clip", "codec": "vp9", "fps": 6.0, "crf": 32.0}},
        "4": {"class_type": "PreviewAny", "inputs": {"source": ["2", 0]}}
    });
    let t = run(&s, json!({"workflow_json": graph})).await;
    assert_eq!(t["status"], "COMPLETED", "{t}");
    assert_eq!(
        t["result"]["outputs"][0]["content_type"], "video/webm",
        "{t}"
    );
    assert_eq!(t["result"]["text"]["4"], json!(["64"]), "{t}");
    eprintln!("real: video + text ok: {}", t["result"]);

    // Cancel while running and while queued in ComfyUI.
    let running = s
        .create(
            "comfyui.workflow",
            json!({"workflow_json": slow(nonce as u32 + 1)}),
        )
        .await;
    let queued = s
        .create(
            "comfyui.workflow",
            json!({"workflow_json": slow(nonce as u32 + 2)}),
        )
        .await;
    let (r, q) = (
        running["task_id"].as_str().unwrap(),
        queued["task_id"].as_str().unwrap(),
    );
    s.wait_status(r, "PROCESSING", T).await;
    s.wait_status(q, "PROCESSING", T).await;
    wait_for("ComfyUI runs one prompt and holds another", T, async || {
        let (_, q) = s.get("/api/comfyui-queue-status").await;
        let len = |k: &str| q[k].as_array().map_or(0, Vec::len);
        if len("queue_running") >= 1 && len("queue_pending") >= 1 {
            Ok(())
        } else {
            Err(q)
        }
    })
    .await;
    for id in [q, r] {
        let (st, _) = s.post(&format!("/api/tasks/{id}/cancel"), &json!({})).await;
        assert!(st == 200 || st == 202);
        let t = s.wait_done(id, T).await;
        assert_eq!(t["status"], "CANCELLED", "{t}");
    }
    let (_, q) = s.get("/api/comfyui-queue-status").await;
    eprintln!(
        "real: cancel ok; queue now {}",
        json!({"running": q["queue_running"].as_array().map(Vec::len), "pending": q["queue_pending"].as_array().map(Vec::len)})
    );
    let (st, stats) = s.get("/api/comfyui-system-stats").await;
    assert_eq!(st, 200);
    eprintln!(
        "real: system_stats comfyui_version {}",
        stats["system"]["comfyui_version"]
    );
}

/// Whether a process runs (a zombie or a missing pid does not).
fn alive(pid: u64) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|s| {
        s.rsplit_once(')')
            .and_then(|(_, r)| r.split_whitespace().next())
            .is_some_and(|st| st != "Z" && st != "X")
    })
}

#[tokio::test]
#[ignore = "needs a real ComfyUI folder: AIHOST_TEST_COMFYUI_DIR=DIR and AIHOST_TEST_COMFYUI_PYTHON=PYTHON, run with --run-ignored all"]
async fn real_comfyui_supervised_launch() {
    let dir = std::env::var("AIHOST_TEST_COMFYUI_DIR")
        .expect("set AIHOST_TEST_COMFYUI_DIR to a ComfyUI checkout");
    let python = std::env::var("AIHOST_TEST_COMFYUI_PYTHON").unwrap_or_else(|_| "python3".into());
    // Models, inputs and outputs in a folder of the test's own.
    let base = tempfile::tempdir().unwrap();
    // ComfyUI 0.3.64 exits at start when the base folder has no custom_nodes/.
    std::fs::create_dir_all(base.path().join("custom_nodes")).unwrap();
    let port = aihost_tests::free_port();
    let workflows = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../workflows");
    let cfg = format!(
        "workflows_dir = {:?}\nhistory_poll_ms = 300\ninstances = [{{ url = \"http://127.0.0.1:{port}\", launch = {{ command = [{python:?}, \"main.py\", \"--cpu\", \"--listen\", \"127.0.0.1\", \"--port\", \"{{port}}\", \"--base-directory\", {base:?}], cwd = {dir:?}, comfyui_dir = {base:?}, max_backoff_secs = 2 }} }}]\n",
        workflows.canonicalize().unwrap().display().to_string(),
        base = base.path().display().to_string(),
    );
    let mut s = Server::start_with(Options {
        plugins: vec![("comfyui".into(), plugin_lib("aihost_comfyui"), cfg)],
        ..Options::default()
    })
    .await;
    let running = async |s: &Server, not: Option<u64>| {
        wait_for("the supervised ComfyUI answers", T, async || {
            let (_, st) = s.get("/api/status").await;
            let i = &st["plugins"]["comfyui"]["instances"][0];
            match i["supervised"]["pid"].as_u64() {
                Some(pid)
                    if i["supervised"]["phase"] == "running"
                        && i["models"]["known"] == true
                        && Some(pid) != not =>
                {
                    Ok(pid)
                }
                _ => Err(st.to_string()),
            }
        })
        .await
    };
    let pid = running(&s, None).await;
    let solid =
        json!({"workflow": "solid_color", "params": {"width": 16, "height": 16, "color": 255}});
    let t = run(&s, solid.clone()).await;
    assert_eq!(t["status"], "COMPLETED", "{t}");
    // Its real object_info lists no checkpoint in the test's folder.
    let t = run(
        &s,
        json!({"workflow": "basic_generation", "params": {"checkpoint": "none.safetensors", "steps": 1, "width": 64, "height": 64}}),
    )
    .await;
    assert_eq!(t["error"]["code"], "model_unavailable", "{t}");
    std::process::Command::new("kill")
        .args(["-9", &pid.to_string()])
        .status()
        .unwrap();
    let pid2 = running(&s, Some(pid)).await;
    let t = run(&s, solid).await;
    assert_eq!(t["status"], "COMPLETED", "{t}");
    assert!(s.terminate(Duration::from_secs(60)));
    wait_for("ComfyUI stopped with the host", T, async || {
        if alive(pid2) {
            Err(format!("{pid2} runs"))
        } else {
            Ok(())
        }
    })
    .await;
}

/// A model-free graph that keeps a CPU busy for a while: `stages` blur/sharpen passes over a
/// 1024² image, saved under `prefix` (unique per run, to find the prompt in ComfyUI's history).
fn slower(color: u32, stages: u32, prefix: &str) -> Value {
    let mut g = slow(color);
    let mut prev = "104".to_owned();
    for i in 0..stages {
        let id = (200 + i).to_string();
        let node = if i % 2 == 0 {
            json!({"class_type": "ImageBlur", "inputs": {"image": [prev, 0], "blur_radius": 31, "sigma": 10.0}})
        } else {
            json!({"class_type": "ImageSharpen", "inputs": {"image": [prev, 0], "sharpen_radius": 31, "sigma": 10.0, "alpha": 1.0}})
        };
        g[&id] = node;
        prev = id;
    }
    g["9"]["inputs"]["images"] = json!([prev, 0]);
    g["9"]["inputs"]["filename_prefix"] = json!(prefix);
    g
}

/// A real ComfyUI's `/queue`: (running prompt ids, pending prompt ids).
async fn real_queue(url: &str) -> (Vec<String>, Vec<String>) {
    let q: Value = reqwest::get(format!("{url}/queue"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let ids = |k: &str| {
        q[k].as_array()
            .into_iter()
            .flatten()
            .filter_map(|e| e[1].as_str().map(str::to_owned))
            .collect::<Vec<_>>()
    };
    (ids("queue_running"), ids("queue_pending"))
}

/// How many prompts in a real ComfyUI's history save under `prefix`.
async fn real_history_count(url: &str, prefix: &str) -> usize {
    let h: Value = reqwest::get(format!("{url}/history?max_items=10000"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    h.as_object()
        .into_iter()
        .flatten()
        .filter(|(_, e)| e["prompt"][2].to_string().contains(prefix))
        .count()
}

/// A number unique to this run, for file name prefixes.
fn nonce() -> u128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos()
}

fn real_url() -> String {
    std::env::var("AIHOST_TEST_COMFYUI_URL")
        .expect("set AIHOST_TEST_COMFYUI_URL to the real ComfyUI to test against")
}

async fn real_server(url: &str, extra: &str) -> Server {
    let workflows = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../workflows");
    let cfg = format!(
        "urls = [{url:?}]\nworkflows_dir = {:?}\nhistory_poll_ms = 300\n{extra}",
        workflows.canonicalize().unwrap().display().to_string()
    );
    Server::start_with(Options {
        plugins: vec![("comfyui".into(), plugin_lib("aihost_comfyui"), cfg)],
        ..Options::default()
    })
    .await
}

/// `kill -9` of the host while the real ComfyUI runs the task's prompt: the restarted host
/// follows that prompt instead of queueing it again, so the work runs once.
#[tokio::test]
#[ignore = "needs a real ComfyUI: AIHOST_TEST_COMFYUI_URL=URL, run with --run-ignored all"]
async fn real_comfyui_re_attach_after_kill_9() {
    let url = real_url();
    let mut s = real_server(&url, "").await;
    let prefix = format!("aihost_reattach_{}", nonce());
    let t = s
        .create(
            "comfyui.workflow",
            json!({"workflow": slower(77, 12, &prefix)}),
        )
        .await;
    let id = t["task_id"].as_str().unwrap().to_owned();
    let running = wait_for(
        "the real ComfyUI runs the prompt",
        T,
        async || match real_queue(&url).await.0.first() {
            Some(p) => Ok(p.clone()),
            None => Err("nothing running"),
        },
    )
    .await;
    s.kill9();
    s.restart().await;
    let done = s.wait_done(&id, T).await;
    assert_eq!(done["status"], "COMPLETED", "{done}");
    assert_eq!(done["result"]["prompt_id"], running.as_str(), "{done}");
    assert_eq!(done["attempts"], 2, "{done}");
    assert_eq!(
        real_history_count(&url, &prefix).await,
        1,
        "ComfyUI ran the graph more than once"
    );
    assert!(s.log().contains("re-attached"), "{}", s.log());
    eprintln!("real: re-attached to {running} after kill -9");
}

/// Cancel of a running task against the real ComfyUI: the task's events show the wait for
/// ComfyUI to stop before CANCELLED, ComfyUI never holds more than `queue_depth` of the
/// host's prompts, and the other tasks complete.
#[tokio::test]
#[ignore = "needs a real ComfyUI: AIHOST_TEST_COMFYUI_URL=URL, run with --run-ignored all"]
async fn real_comfyui_cancel_while_running() {
    let url = real_url();
    let s = real_server(&url, "queue_depth = 2\n").await;
    let prefix = format!("aihost_cancel_{}", nonce());
    let a = s
        .create(
            "comfyui.workflow",
            json!({"workflow": slower(1, 12, &prefix)}),
        )
        .await;
    let a = a["task_id"].as_str().unwrap().to_owned();
    wait_for("the real ComfyUI runs the prompt", T, async || {
        if real_queue(&url).await.0.is_empty() {
            Err("nothing running")
        } else {
            Ok(())
        }
    })
    .await;
    // Sample ComfyUI's queue for the rest of the test.
    let sampling = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(true));
    let sampler = {
        let (url, sampling) = (url.clone(), sampling.clone());
        tokio::spawn(async move {
            let mut max = 0;
            while sampling.load(std::sync::atomic::Ordering::Relaxed) {
                let (r, p) = real_queue(&url).await;
                max = max.max(r.len() + p.len());
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            max
        })
    };
    let mut others = Vec::new();
    for c in 2..5 {
        let t = s
            .create(
                "comfyui.workflow",
                json!({"workflow": slower(c, 2, &format!("{prefix}_{c}"))}),
            )
            .await;
        others.push(t["task_id"].as_str().unwrap().to_owned());
    }
    let stream = {
        let resp = s
            .http
            .get(s.url(&format!("/api/tasks/{a}/events")))
            .send()
            .await
            .unwrap();
        tokio::spawn(resp.text())
    };
    tokio::time::sleep(Duration::from_secs(1)).await;
    let (st, _) = s.post(&format!("/api/tasks/{a}/cancel"), &json!({})).await;
    assert_eq!(st, 202);
    let ta = s.wait_done(&a, T).await;
    assert_eq!(ta["status"], "CANCELLED", "{ta}");
    let events = aihost_tests::sse_events(&stream.await.unwrap().unwrap());
    let waiting = events.iter().position(|e| {
        e["progress"]["message"] == "cancel requested, waiting for the engine to stop"
    });
    let cancelled = events.iter().position(|e| e["status"] == "CANCELLED");
    assert!(
        matches!((waiting, cancelled), (Some(w), Some(c)) if w < c),
        "{events:#?}"
    );
    for id in &others {
        let t = s.wait_done(id, T).await;
        assert_eq!(t["status"], "COMPLETED", "{t}");
    }
    sampling.store(false, std::sync::atomic::Ordering::Relaxed);
    let max = sampler.await.unwrap();
    assert!(max <= 2, "ComfyUI held {max} of our prompts at once");
    eprintln!("real: cancel while running ok, at most {max} prompts queued in ComfyUI");
}

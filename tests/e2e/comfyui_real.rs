//! The comfyui scenarios against a REAL ComfyUI (ignored by default): set
//! `AIHOST_TEST_COMFYUI_URL` (e.g. `http://127.0.0.1:8188`, a bare CPU ComfyUI from
//! Comfy-Org/ComfyUI started with `main.py --cpu`) and run with `--run-ignored all`.
//! Model-free workflows only. `real_comfyui_supervised_launch` instead needs
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

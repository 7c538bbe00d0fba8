//! The comfyui plugin through the real binary, against the fake ComfyUI of the support crate
//! (which follows the protocol captured from ComfyUI 0.3.64 in `tests/fixtures/comfyui/`,
//! checked by `comfyui_fixtures.rs`): templates and raw graphs,
//! uploads, every class of validation error, execution errors, cancel, a killed and restarted
//! ComfyUI, one shared WebSocket for 100 tasks, a pool with an instance down, video and text
//! outputs, the seed's routes.

use std::time::Duration;

use aihost_tests::{
    Options, Server, fake_comfyui::FakeComfy, free_port, plugin_lib, solid_png, wait_for,
    workflows_dir,
};
use serde_json::{Value, json};

const T: Duration = Duration::from_secs(60);

async fn start(urls: &[String], extra: &str) -> Server {
    start_env(urls, extra, Vec::new()).await
}

async fn start_env(urls: &[String], extra: &str, env: Vec<(String, String)>) -> Server {
    let urls: Vec<String> = urls.iter().map(|u| format!("{u:?}")).collect();
    let cfg = format!(
        "urls = [{}]\nworkflows_dir = {:?}\nunavailable_wait_secs = 20\nhistory_poll_ms = 200\nreconnect_max_ms = 300\n{extra}",
        urls.join(", "),
        workflows_dir()
    );
    Server::start_with(Options {
        plugins: vec![("comfyui".into(), plugin_lib("aihost_comfyui"), cfg)],
        env,
        ..Options::default()
    })
    .await
}

/// Runs a `comfyui.workflow` task to its end.
async fn run(s: &Server, input: Value) -> Value {
    s.run("comfyui.workflow", input, T).await
}

fn decode(bytes: &[u8]) -> image::RgbImage {
    image::load_from_memory(bytes).unwrap().to_rgb8()
}

/// The graph of the prompt the fake received for a task (matched by prompt id).
fn prompt_of(fake: &FakeComfy, task: &Value) -> Value {
    let pid = task["result"]["prompt_id"].as_str().unwrap();
    fake.prompts()
        .into_iter()
        .find(|p| p["prompt_id"] == pid)
        .unwrap_or_else(|| panic!("no prompt {pid}"))
}

async fn fake_get(fake: &FakeComfy, path: &str) -> Value {
    reqwest::get(format!("{}{path}", fake.url))
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

#[tokio::test]
async fn fresh_run_then_cached_rerun_of_a_model_free_template() {
    let fake = FakeComfy::start().await;
    let s = start(std::slice::from_ref(&fake.url), "").await;
    let input = json!({"workflow": "solid_color", "params": {"width": 32, "height": 24, "color": 0xff0000}});
    let t = run(&s, input.clone()).await;
    assert_eq!(t["status"], "COMPLETED", "{t}");
    let outputs = t["result"]["outputs"].as_array().unwrap();
    assert_eq!(outputs.len(), 1, "{t}");
    assert_eq!(outputs[0]["content_type"], "image/png");
    let img = decode(&s.download(outputs[0]["url"].as_str().unwrap()).await);
    assert_eq!(img.dimensions(), (32, 24));
    assert_eq!(img.get_pixel(3, 3).0, [255, 0, 0]);
    assert_eq!(t["progress"]["percent"], 100.0, "{t}");
    // The prompt went out with our client id and the prompt id we chose.
    let p = prompt_of(&fake, &t);
    assert_eq!(p["prompt"]["1"]["inputs"]["width"], 32);
    assert!(p["client_id"].as_str().is_some_and(|c| !c.is_empty()));
    assert_eq!(t["result"]["instance"], fake.url.as_str());

    // The identical prompt again: ComfyUI serves it from its cache (no per-node `executing`),
    // re-sending the same file names.
    let t2 = run(&s, input).await;
    assert_eq!(t2["status"], "COMPLETED", "{t2}");
    assert_eq!(
        t2["result"]["files"][0]["filename"],
        t["result"]["files"][0]["filename"]
    );
    let pid2 = t2["result"]["prompt_id"].as_str().unwrap();
    let h = fake_get(&fake, &format!("/history/{pid2}")).await;
    let msgs = h[pid2]["status"]["messages"].as_array().unwrap();
    assert_eq!(msgs[1][0], "execution_cached");
    assert_eq!(msgs[1][1]["nodes"], json!(["1", "2"]));
    let img2 = decode(
        &s.download(t2["result"]["outputs"][0]["url"].as_str().unwrap())
            .await,
    );
    assert_eq!(img2, img);
    assert_eq!(fake.ws_connections(), 1);
}

#[tokio::test]
async fn upload_then_load_image_invert_and_scale() {
    let fake = FakeComfy::start().await;
    // The seed's variables override the plugin's config.
    let dead = format!("http://127.0.0.1:{}", free_port());
    let env = vec![
        ("COMFYUI_URL".to_owned(), fake.url.clone()),
        ("COMFYUI_CLIENT_ID".to_owned(), "seed-client".to_owned()),
    ];
    let s = start_env(&[dead], "", env).await;
    let up = s
        .upload(
            "cat.png",
            solid_png(40, 30, [10, 20, 30]),
            Some("image/png"),
        )
        .await;
    let t = run(
        &s,
        json!({"workflow": "invert_scale", "params": {"image": up["url"], "width": 20, "height": 15}}),
    )
    .await;
    assert_eq!(t["status"], "COMPLETED", "{t}");
    let img = decode(
        &s.download(t["result"]["outputs"][0]["url"].as_str().unwrap())
            .await,
    );
    assert_eq!(img.dimensions(), (20, 15));
    assert_eq!(img.get_pixel(0, 0).0, [245, 235, 225]);
    // Uploaded into a per-task subfolder, and the graph points at it.
    let task_id = t["task_id"].as_str().unwrap();
    let p = prompt_of(&fake, &t);
    let name = p["prompt"]["1"]["inputs"]["image"].as_str().unwrap();
    assert_eq!(name, format!("aihost/{task_id}/cat.png"));
    assert_eq!(p["client_id"], "seed-client");
    assert!(fake.file("input", name).is_file());
}

#[tokio::test]
async fn every_class_of_validation_error_fails_once_with_invalid_workflow() {
    let fake = FakeComfy::start().await;
    let s = start(std::slice::from_ref(&fake.url), "").await;
    let empty = |w: Value, h: Value| json!({"class_type": "EmptyImage", "inputs": {"width": w, "height": h, "batch_size": 1, "color": 0}});
    let save = |src: Value| json!({"class_type": "SaveImage", "inputs": {"images": src, "filename_prefix": "err"}});
    let cases: Vec<(&str, Value, &str)> = vec![
        (
            "unknown class",
            json!({"1": {"class_type": "NoSuchNode", "inputs": {}}, "2": save(json!(["1", 0]))}),
            "invalid_prompt: Cannot execute because node NoSuchNode does not exist",
        ),
        (
            "no output",
            json!({"1": empty(json!(8), json!(8))}),
            "prompt_no_outputs",
        ),
        (
            "missing input",
            json!({"1": empty(json!(8), json!(8)), "2": {"class_type": "SaveImage", "inputs": {"filename_prefix": "e"}}}),
            "node 2 (SaveImage) input \"images\": Required input is missing",
        ),
        (
            "type mismatch",
            json!({"1": empty(json!(8), json!(8)), "3": {"class_type": "GetImageSize", "inputs": {"image": ["1", 0]}}, "2": save(json!(["3", 0]))}),
            "received_type(INT) mismatch input_type(IMAGE)",
        ),
        (
            "wrong value type",
            json!({"1": empty(json!("abc"), json!(8)), "2": save(json!(["1", 0]))}),
            "node 1 (EmptyImage) input \"width\": Failed to convert an input value to a INT value",
        ),
        (
            "below min",
            json!({"1": empty(json!(0), json!(8)), "2": save(json!(["1", 0]))}),
            "Value 0 smaller than min of 1",
        ),
        (
            "above max",
            json!({"1": empty(json!(8), json!(99999)), "2": save(json!(["1", 0]))}),
            "Value 99999 bigger than max of 16384",
        ),
        (
            "not in list",
            json!({"1": empty(json!(8), json!(8)), "3": {"class_type": "ImageScale", "inputs": {"image": ["1", 0], "upscale_method": "foo", "width": 4, "height": 4, "crop": "disabled"}}, "2": save(json!(["3", 0]))}),
            "node 3 (ImageScale) input \"upscale_method\": Value not in list",
        ),
        (
            "missing file",
            json!({"1": {"class_type": "LoadImage", "inputs": {"image": "does_not_exist.png"}}, "2": save(json!(["1", 0]))}),
            "Invalid image file: does_not_exist.png",
        ),
        (
            "bad link",
            json!({"1": empty(json!(8), json!(8)), "2": save(json!(["1"]))}),
            "Bad linked input",
        ),
        (
            "link to a missing node",
            json!({"1": empty(json!(8), json!(8)), "2": save(json!(["99", 0]))}),
            "[KeyError]",
        ),
        (
            "slot out of range",
            json!({"1": empty(json!(8), json!(8)), "2": save(json!(["1", 5]))}),
            "[IndexError]",
        ),
        (
            "one output valid, one not (ComfyUI queues half)",
            json!({"1": empty(json!(8), json!(8)), "2": save(json!(["1", 0])), "3": {"class_type": "SaveImage", "inputs": {"filename_prefix": "e"}}}),
            "node 3 (SaveImage)",
        ),
    ];
    let mut ids = Vec::new();
    for (what, graph, _) in &cases {
        let t = s
            .create("comfyui.workflow", json!({"workflow_json": graph}))
            .await;
        ids.push((what, t["task_id"].as_str().unwrap().to_owned()));
    }
    for ((what, id), (_, _, expect)) in ids.iter().zip(&cases) {
        let t = s.wait_done(id, T).await;
        assert_eq!(t["status"], "FAILED", "{what}: {t}");
        assert_eq!(t["error"]["code"], "invalid_workflow", "{what}: {t}");
        assert_eq!(t["attempts"], 1, "{what}: not retried: {t}");
        let msg = t["error"]["message"].as_str().unwrap();
        assert!(msg.contains(expect), "{what}: {msg:?} lacks {expect:?}");
    }
    // Only the half-queued prompt was taken back out of ComfyUI's queue.
    let deletes = fake
        .requests()
        .iter()
        .filter(|r| r.path == "/queue" && r.method == "POST")
        .count();
    assert_eq!(deletes, 1);
    // Template parameters are checked at submit: unknown or out of range is 422.
    for (params, field) in [
        (json!({"nope": 1}), "nope"),
        (json!({"width": 0}), "width"),
        (json!({"color": "red"}), "color"),
    ] {
        let (st, body) = s
            .post(
                "/api/tasks",
                &json!({"type": "comfyui.workflow", "input": {"workflow": "solid_color", "params": params}}),
            )
            .await;
        assert_eq!(st, 422, "{body}");
        assert_eq!(body["error"]["code"], "invalid_input");
        let (st, body) = s.post("/api/workflows/solid_color", &params).await;
        assert_eq!(st, 422, "{body}");
        assert!(
            body["error"]["message"].as_str().unwrap().contains(field),
            "{body}"
        );
    }
    let (st, body) = s
        .post(
            "/api/tasks",
            &json!({"type": "comfyui.workflow", "input": {"workflow": "nope"}}),
        )
        .await;
    assert_eq!(st, 422, "{body}");
    let (st, body) = s.post("/api/workflows/nope", &json!({})).await;
    assert_eq!(
        (st, body["error"]["code"].clone()),
        (404, json!("workflow_not_found"))
    );
}

#[tokio::test]
async fn an_execution_error_is_an_engine_error_with_the_exception() {
    let fake = FakeComfy::start().await;
    let s = start(std::slice::from_ref(&fake.url), "").await;
    let up = s
        .upload(
            "broken.png",
            b"this is not an image".to_vec(),
            Some("image/png"),
        )
        .await;
    let t = run(
        &s,
        json!({"workflow": "invert_scale", "params": {"image": up["key"]}}),
    )
    .await;
    assert_eq!(t["status"], "FAILED", "{t}");
    assert_eq!(t["error"]["code"], "engine_error");
    let msg = t["error"]["message"].as_str().unwrap();
    assert!(msg.contains("node 1 (LoadImage)"), "{msg}");
    assert!(msg.contains("PIL.UnidentifiedImageError"), "{msg}");
    assert_eq!(t["attempts"], 1);
}

#[tokio::test]
async fn cancel_while_queued_in_comfyui_and_while_running() {
    let fake = FakeComfy::start().await;
    let s = start(std::slice::from_ref(&fake.url), "").await;
    fake.hold(true);
    let a = s
        .create(
            "comfyui.workflow",
            json!({"workflow": "solid_color", "params": {"color": 1}}),
        )
        .await;
    fake.wait_until("runs a prompt", T, |f| f.running().is_some())
        .await;
    let b = s
        .create(
            "comfyui.workflow",
            json!({"workflow": "solid_color", "params": {"color": 2}}),
        )
        .await;
    // Queue depth 2: the second prompt waits inside ComfyUI.
    fake.wait_until("has a pending prompt", T, |f| f.pending().len() == 1)
        .await;
    let (pa, pb) = (fake.running().unwrap(), fake.pending()[0].clone());
    let (a, b) = (
        a["task_id"].as_str().unwrap(),
        b["task_id"].as_str().unwrap(),
    );
    // Progress names the node ComfyUI is running.
    wait_for("the progress names the running node", T, async || {
        let (_, t) = s.get(&format!("/api/tasks/{a}")).await;
        if t["progress"]["message"] == "running node 1 (EmptyImage)" {
            Ok(())
        } else {
            Err(t)
        }
    })
    .await;

    let (st, _) = s.post(&format!("/api/tasks/{b}/cancel"), &json!({})).await;
    assert_eq!(st, 202);
    let tb = s.wait_done(b, T).await;
    assert_eq!(tb["status"], "CANCELLED", "{tb}");
    fake.wait_until("deletes the pending prompt", T, |f| f.pending().is_empty())
        .await;
    assert!(
        fake.requests()
            .iter()
            .any(|r| r.path == "/queue" && r.body["delete"] == json!([pb]))
    );
    assert_eq!(fake.running().as_deref(), Some(pa.as_str()));

    let (st, _) = s.post(&format!("/api/tasks/{a}/cancel"), &json!({})).await;
    assert_eq!(st, 202);
    let ta = s.wait_done(a, T).await;
    assert_eq!(ta["status"], "CANCELLED", "{ta}");
    fake.wait_until("stops the running prompt", T, |f| f.running().is_none())
        .await;
    assert!(
        fake.requests()
            .iter()
            .any(|r| r.path == "/interrupt" && r.body["prompt_id"] == pa.as_str())
    );
    let h = fake_get(&fake, &format!("/history/{pa}")).await;
    assert_eq!(h[&pa]["status"]["status_str"], "error");
    let last = h[&pa]["status"]["messages"]
        .as_array()
        .unwrap()
        .last()
        .unwrap()
        .clone();
    assert_eq!(last[0], "execution_interrupted");
}

#[tokio::test]
async fn comfyui_killed_mid_task_then_restarted_the_task_is_retried_and_completes() {
    let mut fake = FakeComfy::start().await;
    let s = start(std::slice::from_ref(&fake.url), "").await;
    fake.hold(true);
    let t = s
        .create(
            "comfyui.workflow",
            json!({"workflow": "solid_color", "params": {"color": 77}}),
        )
        .await;
    let id = t["task_id"].as_str().unwrap();
    fake.wait_until("runs the prompt", T, |f| f.running().is_some())
        .await;
    fake.kill(); // no close frame; queue and history are lost
    // Lets time pass on purpose: the task must NOT fail while ComfyUI is away.
    tokio::time::sleep(Duration::from_millis(700)).await;
    let (_, mid) = s.get(&format!("/api/tasks/{id}")).await;
    assert_eq!(
        mid["status"], "PROCESSING",
        "waits for ComfyUI to come back: {mid}"
    );
    fake.restart().await;
    let t = s.wait_done(id, T).await;
    assert_eq!(t["status"], "COMPLETED", "{t}");
    assert_eq!(t["attempts"], 2, "{t}");
    // The plugin reconnected exactly once, and sent the prompt once to the new server.
    assert_eq!(fake.ws_connections(), 1);
    assert_eq!(fake.prompts().len(), 1);
    assert!(s.log().contains("ComfyUI socket lost"), "{}", s.log());
}

#[tokio::test]
async fn a_hundred_tasks_share_one_websocket() {
    let fake = FakeComfy::start().await;
    let s = start(std::slice::from_ref(&fake.url), "").await;
    let mut ids = Vec::new();
    for i in 0..100 {
        let t = s
            .create(
                "comfyui.workflow",
                json!({"workflow": "solid_color", "params": {"color": i, "width": 8, "height": 8}}),
            )
            .await;
        ids.push(t["task_id"].as_str().unwrap().to_owned());
    }
    let mut pids = std::collections::HashSet::new();
    for id in &ids {
        let t = s.wait_done(id, Duration::from_secs(120)).await;
        assert_eq!(t["status"], "COMPLETED", "{t}");
        assert_eq!(t["attempts"], 1, "{t}");
        pids.insert(t["result"]["prompt_id"].as_str().unwrap().to_owned());
    }
    assert_eq!(pids.len(), 100);
    assert_eq!(fake.ws_connections(), 1);
    assert_eq!(fake.prompts().len(), 100);
}

#[tokio::test]
async fn a_pool_of_two_with_one_down_runs_everything_on_the_live_one() {
    let fake = FakeComfy::start().await;
    let down = format!("http://127.0.0.1:{}", free_port());
    let s = start(&[down.clone(), fake.url.clone()], "").await;
    let mut ids = Vec::new();
    for i in 0..6 {
        let t = s
            .create(
                "comfyui.workflow",
                json!({"workflow": "solid_color", "params": {"color": 1000 + i}}),
            )
            .await;
        ids.push(t["task_id"].as_str().unwrap().to_owned());
    }
    for id in &ids {
        let t = s.wait_done(id, T).await;
        assert_eq!(t["status"], "COMPLETED", "{t}");
        assert_eq!(t["result"]["instance"], fake.url.as_str());
    }
    let (_, status) = s.get("/api/status").await;
    let h = &status["plugins"]["comfyui"];
    assert_eq!(h["status"], "degraded", "{status}");
    let inst = h["instances"].as_array().unwrap();
    let dead = inst.iter().find(|i| i["url"] == down.as_str()).unwrap();
    assert_eq!(dead["reachable"], false, "{h}");
    let live = inst.iter().find(|i| i["url"] == fake.url.as_str()).unwrap();
    assert_eq!(live["reachable"], true, "{h}");
}

#[tokio::test]
async fn video_text_and_preview_outputs_through_the_api_prefix() {
    let fake = FakeComfy::start().await;
    // ComfyUI serves everything under /api/ too, the WebSocket included.
    let s = start(&[format!("{}/api", fake.url)], "").await;
    let graph = json!({
        "1": {"class_type": "EmptyImage", "inputs": {"width": 40, "height": 30, "batch_size": 2, "color": 65280}},
        "2": {"class_type": "GetImageSize", "inputs": {"image": ["1", 0]}},
        "3": {"class_type": "SaveWEBM", "inputs": {"images": ["1", 0], "filename_prefix": "clips/clip", "codec": "vp9", "fps": 6.0, "crf": 32.0}},
        "4": {"class_type": "PreviewAny", "inputs": {"source": ["2", 0]}},
        "5": {"class_type": "PreviewImage", "inputs": {"images": ["1", 0]}}
    });
    let t = run(
        &s,
        json!({"workflow_json": graph, "include_previews": true}),
    )
    .await;
    assert_eq!(t["status"], "COMPLETED", "{t}");
    let outputs = t["result"]["outputs"].as_array().unwrap();
    let types: Vec<&str> = outputs
        .iter()
        .map(|o| o["content_type"].as_str().unwrap())
        .collect();
    assert_eq!(types, ["video/webm", "image/png", "image/png"], "{t}");
    let video = s.download(outputs[0]["url"].as_str().unwrap()).await;
    assert_eq!(&video[..4], &[0x1a, 0x45, 0xdf, 0xa3]);
    assert_eq!(t["result"]["text"]["4"], json!(["40"]));
    assert_eq!(t["result"]["files"][0]["subfolder"], "clips");
    assert!(fake.requests().iter().any(|r| r.path == "/ws"));
    // Without include_previews, temp files are left out.
    let t = run(
        &s,
        json!({"workflow_json": {"1": graph["1"], "5": graph["5"], "3": graph["3"]}}),
    )
    .await;
    assert_eq!(t["status"], "COMPLETED", "{t}");
    assert_eq!(t["result"]["outputs"].as_array().unwrap().len(), 1, "{t}");
}

#[tokio::test]
async fn seed_routes_basic_generation_ops_workflows_and_docs() {
    let fake = FakeComfy::start().await;
    let s = start(std::slice::from_ref(&fake.url), "").await;
    // The seed's exact body.
    let (st, t) = s
        .post(
            "/api/tasks/create",
            &json!({"workflow_name": "basic_generation", "params": {"input_data": {"wf_json": {"prompt": "a red fox", "steps": 4, "seed": 42, "width": 64, "height": 64}}}}),
        )
        .await;
    assert_eq!(st, 202, "{t}");
    assert_eq!(t["type"], "comfyui.workflow");
    let t = s.wait_done(t["task_id"].as_str().unwrap(), T).await;
    assert_eq!(t["status"], "COMPLETED", "{t}");
    let p = prompt_of(&fake, &t);
    assert_eq!(p["prompt"]["6"]["inputs"]["text"], "a red fox");
    assert_eq!(p["prompt"]["3"]["inputs"]["steps"], 4);
    assert_eq!(p["prompt"]["3"]["inputs"]["seed"], 42);
    let img = decode(
        &s.download(t["result"]["outputs"][0]["url"].as_str().unwrap())
            .await,
    );
    assert_eq!(img.dimensions(), (64, 64));
    // The other seed body.
    let (st, t) = s
        .post(
            "/api/tasks/create",
            &json!({"workflow": "solid_color", "inputs": {"color": 5}}),
        )
        .await;
    assert_eq!(st, 202, "{t}");
    let t = s.wait_done(t["task_id"].as_str().unwrap(), T).await;
    assert_eq!(t["status"], "COMPLETED", "{t}");
    let (st, body) = s.post("/api/tasks/create", &json!({"nothing": 1})).await;
    assert_eq!(
        (st, body["error"]["code"].clone()),
        (400, json!("invalid_body"))
    );
    // A workflow as its own operation.
    let (st, t) = s
        .post(
            "/api/workflows/solid_color?wait=30",
            &json!({"width": 4, "height": 4}),
        )
        .await;
    assert_eq!(st, 200, "{t}");
    assert_eq!(t["status"], "COMPLETED");

    let (st, q) = s.get("/api/comfyui-queue-status").await;
    assert_eq!(st, 200, "{q}");
    assert!(
        q["queue_running"].is_array() && q["queue_pending"].is_array(),
        "{q}"
    );
    let (st, stats) = s.get("/api/comfyui-system-stats").await;
    assert_eq!(st, 200);
    assert_eq!(stats["system"]["comfyui_version"], "0.3.64");
    let (st, r) = s.post("/api/comfyui-interrupt", &json!({})).await;
    assert_eq!(st, 200, "{r}");
    assert!(fake.requests().iter().any(|r| r.path == "/interrupt"));
    let (st, w) = s.get("/api/workflows").await;
    assert_eq!(st, 200);
    let names: Vec<&str> = w["workflows"]
        .as_array()
        .unwrap()
        .iter()
        .map(|w| w["name"].as_str().unwrap())
        .collect();
    assert_eq!(
        names,
        [
            "basic_generation",
            "img2img",
            "invert_scale",
            "solid_color",
            "text-to-image"
        ]
    );
    let (_, spec) = s.get("/openapi.json").await;
    let op = &spec["paths"]["/api/workflows/basic_generation"]["post"];
    assert_eq!(
        op["requestBody"]["content"]["application/json"]["schema"]["properties"]["steps"]["maximum"],
        150,
        "{op}"
    );
    assert!(spec["paths"]["/api/tasks/create"]["post"].is_object());
    assert!(spec["paths"]["/api/comfyui-queue-status"]["get"]["responses"]["503"].is_object());
}

#[tokio::test]
async fn without_comfyui_the_plugin_loads_and_routes_answer_503() {
    // Plugin loaded, ComfyUI not running.
    let s = start(&[format!("http://127.0.0.1:{}", free_port())], "").await;
    let (_, plugins) = s.get("/api/plugins").await;
    assert!(
        plugins["plugins"]
            .as_array()
            .unwrap()
            .iter()
            .any(|p| p["name"] == "comfyui"),
        "{plugins}"
    );
    let (_, status) = s.get("/api/status").await;
    assert_eq!(
        status["plugins"]["comfyui"]["code"], "engine_unavailable",
        "{status}"
    );
    assert!(
        status["plugins"]["comfyui"]["message"]
            .as_str()
            .unwrap()
            .contains("unreachable")
            || status["plugins"]["comfyui"]["message"]
                .as_str()
                .unwrap()
                .contains("reachable")
    );
    let (st, body) = s.get("/api/comfyui-queue-status").await;
    assert_eq!(
        (st, body["error"]["code"].clone()),
        (503, json!("engine_unavailable")),
        "{body}"
    );
    drop(s);
    // No comfyui plugin at all.
    let s = Server::start().await;
    for path in [
        "/api/comfyui-queue-status",
        "/api/comfyui-system-stats",
        "/api/workflows",
    ] {
        let (st, body) = s.get(path).await;
        assert_eq!(
            (st, body["error"]["code"].clone()),
            (503, json!("comfyui_not_loaded")),
            "{path}"
        );
    }
    let (st, body) = s
        .post(
            "/api/tasks/create",
            &json!({"workflow": "solid_color", "inputs": {}}),
        )
        .await;
    assert_eq!(
        (st, body["error"]["code"].clone()),
        (503, json!("comfyui_not_loaded"))
    );
}

#[tokio::test]
async fn a_task_over_its_timeout_is_interrupted_and_fails_with_timeout() {
    let fake = FakeComfy::start().await;
    let s = start(std::slice::from_ref(&fake.url), "").await;
    fake.hold(true);
    let t = run(
        &s,
        json!({"workflow": "solid_color", "params": {"color": 9}, "timeout_secs": 1}),
    )
    .await;
    assert_eq!(t["status"], "FAILED", "{t}");
    assert_eq!(t["error"]["code"], "timeout", "{t}");
    assert_eq!(t["attempts"], 1, "{t}");
    let pid = fake.prompts()[0]["prompt_id"].as_str().unwrap().to_owned();
    assert!(
        fake.requests()
            .iter()
            .any(|r| r.path == "/interrupt" && r.body["prompt_id"] == pid.as_str())
    );
    fake.wait_until("stops the prompt", T, |f| f.running().is_none())
        .await;
}

/// The fake keeps ComfyUI's shared-client-id bug
/// (`tests/fixtures/comfyui/10_ws_reconnect_same_client_id.json`): when the older of two
/// sockets with one client id closes, the newer one receives nothing more. The plugin never
/// opens a second socket (see `a_hundred_tasks_share_one_websocket`).
#[tokio::test]
async fn the_fake_drops_a_client_id_shared_by_two_sockets_like_comfyui() {
    use futures_util::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::Message;
    let fake = FakeComfy::start().await;
    // Like ComfyUI, it refuses an Origin whose host differs from a loopback Host.
    let r = reqwest::Client::new()
        .get(format!("{}/system_stats", fake.url))
        .header("origin", format!("http://localhost:{}", fake.port))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);
    let ws = |path: &str| format!("ws://127.0.0.1:{}{path}?clientId=shared", fake.port);
    let (mut a, _) = tokio_tungstenite::connect_async(ws("/ws")).await.unwrap();
    let (mut b, _) = tokio_tungstenite::connect_async(ws("/api/ws"))
        .await
        .unwrap();
    fn text(m: Option<Result<Message, tokio_tungstenite::tungstenite::Error>>) -> Value {
        match m {
            Some(Ok(Message::Text(t))) => serde_json::from_str(t.as_str()).unwrap(),
            other => panic!("{other:?}"),
        }
    }
    assert_eq!(text(a.next().await)["data"]["sid"], "shared");
    assert_eq!(text(b.next().await)["data"]["sid"], "shared");
    a.close(None).await.unwrap();
    // The fake ends a's connection only after it has forgotten the client id (the bug).
    tokio::time::timeout(T, async { while let Some(Ok(_)) = a.next().await {} })
        .await
        .expect("the fake never closed the first socket");
    drop(a);
    let r: Value = reqwest::Client::new()
        .post(format!("{}/prompt", fake.url))
        .json(&json!({"client_id": "shared", "prompt": {
            "1": {"class_type": "EmptyImage", "inputs": {"width": 8, "height": 8, "batch_size": 1, "color": 0}},
            "2": {"class_type": "SaveImage", "inputs": {"images": ["1", 0], "filename_prefix": "x"}}}}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let pid = r["prompt_id"].as_str().unwrap().to_owned();
    fake.wait_until("finishes the prompt", T, |f| {
        f.running().is_none() && f.pending().is_empty()
    })
    .await;
    let h = fake_get(&fake, &format!("/history/{pid}")).await;
    assert_eq!(h[&pid]["status"]["status_str"], "success");
    // Nothing reached b: not the execution messages, not even the broadcast `status`.
    let got = tokio::time::timeout(Duration::from_millis(500), b.next()).await;
    assert!(got.is_err(), "b received {got:?}");
    let _ = b.send(Message::Close(None)).await;
}

#[tokio::test]
async fn a_stalled_socket_is_detected_and_replaced_and_the_task_completes() {
    let fake = FakeComfy::start().await;
    let s = start(
        std::slice::from_ref(&fake.url),
        "ws_idle_secs = 1\nhistory_check_secs = 600\n",
    )
    .await;
    fake.wait_until("has a socket", T, |f| f.ws_connections() == 1)
        .await;
    fake.hold(true);
    let t = s
        .create(
            "comfyui.workflow",
            json!({"workflow": "solid_color", "params": {"color": 4}}),
        )
        .await;
    fake.wait_until("runs the prompt", T, |f| f.running().is_some())
        .await;
    fake.stall_sockets();
    // Silent through a ping: the plugin drops the socket and connects a new one.
    fake.wait_until("sees a second socket", T, |f| f.ws_connections() == 2)
        .await;
    fake.hold(false);
    let t = s.wait_done(t["task_id"].as_str().unwrap(), T).await;
    assert_eq!(t["status"], "COMPLETED", "{t}");
    assert_eq!(t["attempts"], 1, "{t}");
    assert!(s.log().contains("stalled"), "{}", s.log());
}

/// The seed's Python and JavaScript examples: `{"workflow": "text-to-image", "inputs": {...}}`
/// to `POST /api/tasks/create`, answered 202 and run over the fake ComfyUI with every input in
/// its node.
#[tokio::test]
async fn the_seeds_text_to_image_example_runs() {
    let fake = FakeComfy::start().await;
    let s = start(std::slice::from_ref(&fake.url), "").await;
    let (st, t) = s
        .post(
            "/api/tasks/create",
            &json!({"workflow": "text-to-image", "inputs": {
                "prompt": "a lighthouse at dusk", "negative_prompt": "text, watermark",
                "width": 96, "height": 64, "steps": 3, "cfg": 6.5, "seed": 7,
                "checkpoint": "v1-5-pruned-emaonly.safetensors", "sampler_name": "dpmpp_2m", "scheduler": "karras"}}),
        )
        .await;
    assert_eq!(st, 202, "{t}");
    let t = s.wait_done(t["task_id"].as_str().unwrap(), T).await;
    assert_eq!(t["status"], "COMPLETED", "{t}");
    let p = prompt_of(&fake, &t);
    let g = &p["prompt"];
    assert_eq!(g["6"]["inputs"]["text"], "a lighthouse at dusk");
    assert_eq!(g["7"]["inputs"]["text"], "text, watermark");
    assert_eq!(
        g["4"]["inputs"]["ckpt_name"],
        "v1-5-pruned-emaonly.safetensors"
    );
    assert_eq!(
        (
            &g["3"]["inputs"]["steps"],
            &g["3"]["inputs"]["seed"],
            &g["3"]["inputs"]["cfg"]
        ),
        (&json!(3), &json!(7), &json!(6.5))
    );
    assert_eq!(g["3"]["inputs"]["sampler_name"], "dpmpp_2m");
    assert_eq!(g["3"]["inputs"]["scheduler"], "karras");
    let img = decode(
        &s.download(t["result"]["outputs"][0]["url"].as_str().unwrap())
            .await,
    );
    assert_eq!(img.dimensions(), (96, 64));
    // The seed README's own examples, byte for byte (its Python client: prompt and seed; its
    // JavaScript client: prompt alone), read `task_id` from the answer and run.
    for (body, prompt) in [
        (
            r#"{"workflow": "text-to-image", "inputs": {"prompt": "夜晚的赛博朋克城市", "seed": 42}}"#,
            "夜晚的赛博朋克城市",
        ),
        (
            r#"{"workflow":"text-to-image","inputs":{"prompt":"未来主义风景"}}"#,
            "未来主义风景",
        ),
    ] {
        let r = s
            .http
            .post(s.url("/api/tasks/create"))
            .header("content-type", "application/json")
            .body(body)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 202);
        let t: Value = r.json().await.unwrap();
        let t = s.wait_done(t["task_id"].as_str().unwrap(), T).await;
        assert_eq!(t["status"], "COMPLETED", "{t}");
        assert_eq!(
            prompt_of(&fake, &t)["prompt"]["6"]["inputs"]["text"],
            prompt
        );
    }
}

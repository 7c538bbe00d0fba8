//! The comfyui plugin's graph input and output listing through the real binary, against the
//! fake ComfyUI: a graph under `input.workflow`, graphs refused at submit with 422
//! `invalid_workflow` (a non-graph, a UI-format export; on `POST /api/tasks` and the seed's
//! `POST /api/tasks/create`) with nothing stored, outputs that keep their subfolder and say
//! what they are, and progress and errors that belong to one attempt.

use std::{path::PathBuf, time::Duration};

use aihost_tests::{Options, Server, fake_comfyui::FakeComfy, free_port, plugin_lib};
use futures_util::StreamExt;
use serde_json::{Value, json};

const T: Duration = Duration::from_secs(60);

async fn start(urls: &[String], unavailable_wait_secs: u64) -> Server {
    start_env(urls, unavailable_wait_secs, Vec::new()).await
}

async fn start_env(
    urls: &[String],
    unavailable_wait_secs: u64,
    env: Vec<(String, String)>,
) -> Server {
    let workflows = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../workflows")
        .canonicalize()
        .unwrap();
    let urls: Vec<String> = urls.iter().map(|u| format!("{u:?}")).collect();
    let cfg = format!(
        "urls = [{}]\nworkflows_dir = {:?}\nunavailable_wait_secs = {unavailable_wait_secs}\nhistory_poll_ms = 200\nreconnect_max_ms = 300\n",
        urls.join(", "),
        workflows.display().to_string()
    );
    Server::start_with(Options {
        plugins: vec![("comfyui".into(), plugin_lib("aihost_comfyui"), cfg)],
        env,
        ..Options::default()
    })
    .await
}

fn graph() -> Value {
    json!({
        "1": {"class_type": "EmptyImage", "inputs": {"width": 16, "height": 8, "batch_size": 1, "color": 255}},
        "2": {"class_type": "SaveImage", "inputs": {"images": ["1", 0], "filename_prefix": "mine"}}
    })
}

/// What ComfyUI's Workflow > Save writes (the UI format), cut down.
fn ui_export() -> Value {
    json!({
        "last_node_id": 2, "last_link_id": 1,
        "nodes": [
            {"id": 1, "type": "EmptyImage", "pos": [0, 0], "size": [315, 130], "flags": {}, "order": 0, "mode": 0,
             "outputs": [{"name": "IMAGE", "type": "IMAGE", "links": [1]}], "widgets_values": [512, 512, 1, 0]},
            {"id": 2, "type": "SaveImage", "pos": [400, 0], "size": [315, 270], "flags": {}, "order": 1, "mode": 0,
             "inputs": [{"name": "images", "type": "IMAGE", "link": 1}], "widgets_values": ["ComfyUI"]}
        ],
        "links": [[1, 1, 0, 2, 0, "IMAGE"]],
        "groups": [], "config": {}, "extra": {"ds": {"scale": 1, "offset": [0, 0]}}, "version": 0.4
    })
}

#[tokio::test]
async fn a_graph_under_workflow_runs_like_workflow_json() {
    let fake = FakeComfy::start().await;
    let s = start(std::slice::from_ref(&fake.url), 20).await;
    for input in [
        json!({"workflow": graph()}),
        json!({"workflow_json": graph()}),
    ] {
        let t = s.run("comfyui.workflow", input, T).await;
        assert_eq!(t["status"], "COMPLETED", "{t}");
        assert_eq!(t["result"]["outputs"].as_array().unwrap().len(), 1, "{t}");
        let pid = t["result"]["prompt_id"].as_str().unwrap();
        let p = fake
            .prompts()
            .into_iter()
            .find(|p| p["prompt_id"] == pid)
            .unwrap();
        assert_eq!(p["prompt"]["1"]["inputs"]["width"], 16);
    }
    // The seed's route takes a graph under `workflow` too.
    let (st, t) = s
        .post("/api/tasks/create?wait=30", &json!({"workflow": graph()}))
        .await;
    assert_eq!(st, 200, "{t}");
    assert_eq!(t["status"], "COMPLETED", "{t}");
}

#[tokio::test]
async fn graphs_that_are_not_api_graphs_are_refused_at_submit_and_nothing_is_stored() {
    let fake = FakeComfy::start().await;
    let s = start(std::slice::from_ref(&fake.url), 20).await;
    let secret = "a very particular prompt text";
    let cases: Vec<(Value, &str)> = vec![
        // Not a graph at all: the node it names is the first key.
        (
            json!({"workflow": {"prompt": secret, "steps": 20}}),
            "input/workflow/prompt: this node must be an object with \"class_type\"",
        ),
        (
            json!({"workflow_json": {"prompt": secret}}),
            "input/workflow_json/prompt: this node must be an object",
        ),
        // A node without inputs, a class that is not a string.
        (
            json!({"workflow": {"1": graph()["1"], "2": {"class_type": "SaveImage", "note": secret}}}),
            "input/workflow/2: this node must be an object with \"class_type\"",
        ),
        (
            json!({"workflow": {"7": {"class_type": 5, "inputs": {"text": secret}}}}),
            "input/workflow/7/class_type: \"class_type\" must be a non-empty string",
        ),
        (
            json!({"workflow": {}}),
            "input/workflow: must be an API-format ComfyUI graph",
        ),
        (
            json!({"workflow_json": [1, 2]}),
            "input/workflow_json: must be an API-format ComfyUI graph",
        ),
        // A workflow saved in the UI format: how to export the API format instead.
        (
            json!({"workflow": ui_export()}),
            "input/workflow: this is a workflow saved in ComfyUI's UI format",
        ),
        (
            json!({"workflow_json": ui_export()}),
            "Workflow > Export (API)",
        ),
    ];
    for (input, expected) in cases {
        let (st, body) = s
            .post(
                "/api/tasks",
                &json!({"type": "comfyui.workflow", "input": input}),
            )
            .await;
        assert_eq!(st, 422, "{input}: {body}");
        assert_eq!(body["error"]["code"], "invalid_workflow", "{input}: {body}");
        let message = body["error"]["message"].as_str().unwrap();
        assert!(message.contains(expected), "{input}: {message}");
        // Only a UI export is told about the UI format.
        let ui = input.to_string().contains("last_node_id");
        assert_eq!(message.contains("UI format"), ui, "{input}: {message}");
        // The graph is not echoed back.
        let text = body.to_string();
        assert!(!text.contains(secret), "{text}");
        assert!(!text.contains("widgets_values"), "{text}");
    }
    // The UI export's message says how to get the API format.
    let (_, body) = s
        .post(
            "/api/tasks",
            &json!({"type": "comfyui.workflow", "input": {"workflow": ui_export()}}),
        )
        .await;
    let message = body["error"]["message"].as_str().unwrap();
    assert!(
        message.contains("Export (API)") && message.contains("Save (API Format)"),
        "{message}"
    );
    // The seed's route answers the same.
    for graph in [ui_export(), json!({"prompt": secret})] {
        let (st, body) = s
            .post("/api/tasks/create", &json!({"workflow": graph}))
            .await;
        assert_eq!(st, 422, "{body}");
        assert_eq!(body["error"]["code"], "invalid_workflow", "{body}");
        assert!(!body.to_string().contains(secret), "{body}");
    }
    // A template name that does not exist stays `invalid_input`; both forms at once too.
    let (st, body) = s
        .post(
            "/api/tasks",
            &json!({"type": "comfyui.workflow", "input": {"workflow": "no_such_template"}}),
        )
        .await;
    assert_eq!(
        (st, body["error"]["code"].clone()),
        (422, json!("invalid_input")),
        "{body}"
    );
    let (st, body) = s
        .post(
            "/api/tasks",
            &json!({"type": "comfyui.workflow", "input": {"workflow": graph(), "workflow_json": graph()}}),
        )
        .await;
    assert_eq!(
        (st, body["error"]["code"].clone()),
        (422, json!("invalid_input")),
        "{body}"
    );
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("give exactly one of `workflow`"),
        "{body}"
    );
    assert!(!body.to_string().contains("EmptyImage"), "{body}");
    // Nothing was stored, nothing reached ComfyUI.
    let (st, list) = s.get("/api/tasks").await;
    assert_eq!(st, 200);
    assert_eq!(list["tasks"], json!([]), "{list}");
    assert!(fake.prompts().is_empty());
}

#[tokio::test]
async fn outputs_keep_their_subfolder_and_say_what_they_are() {
    let fake = FakeComfy::start().await;
    let s = start(std::slice::from_ref(&fake.url), 20).await;
    let graph = json!({
        "1": {"class_type": "EmptyImage", "inputs": {"width": 8, "height": 8, "batch_size": 1, "color": 255}},
        "2": {"class_type": "EmptyImage", "inputs": {"width": 8, "height": 8, "batch_size": 1, "color": 65280}},
        // Two nodes saving the same name in two subfolders.
        "3": {"class_type": "SaveImage", "inputs": {"images": ["1", 0], "filename_prefix": "a/x"}},
        "4": {"class_type": "SaveImage", "inputs": {"images": ["2", 0], "filename_prefix": "b/x"}},
        "5": {"class_type": "SaveWEBM", "inputs": {"images": ["1", 0], "filename_prefix": "clips/clip", "codec": "vp9", "fps": 6.0, "crf": 32.0}}
    });
    let t = s
        .run("comfyui.workflow", json!({"workflow": graph}), T)
        .await;
    assert_eq!(t["status"], "COMPLETED", "{t}");
    let files = t["result"]["files"].as_array().unwrap();
    let listed: Vec<(&str, &str)> = files
        .iter()
        .map(|f| (f["name"].as_str().unwrap(), f["kind"].as_str().unwrap()))
        .collect();
    assert_eq!(
        listed,
        [
            ("a/x_00001_.png", "image"),
            ("b/x_00001_.png", "image"),
            ("clips/clip_00001_.webm", "video")
        ],
        "{t}"
    );
    assert_eq!(files[2]["output"], "images", "{t}");
    let outputs = t["result"]["outputs"].as_array().unwrap();
    assert_eq!(outputs.len(), 3, "{t}");
    let id = t["task_id"].as_str().unwrap();
    for (o, name) in
        outputs
            .iter()
            .zip(["a/x_00001_.png", "b/x_00001_.png", "clips/clip_00001_.webm"])
    {
        assert_eq!(o["key"], format!("outputs/{id}/1/{name}"), "{t}");
    }
    // Two different files, both served.
    let red = s.download(outputs[0]["url"].as_str().unwrap()).await;
    let green = s.download(outputs[1]["url"].as_str().unwrap()).await;
    let px = |b: &[u8]| {
        image::load_from_memory(b)
            .unwrap()
            .to_rgb8()
            .get_pixel(0, 0)
            .0
    };
    assert_eq!((px(&red), px(&green)), ([0, 0, 255], [0, 255, 0]));
}

#[tokio::test]
async fn a_failed_task_keeps_its_error_but_not_the_progress_of_its_last_attempt() {
    // Nothing answers at this address: the task waits in the queue for an instance, then
    // fails once it waited `dispatcher.max_unavailable_wait_secs`.
    let dead = format!("http://127.0.0.1:{}", free_port());
    let s = start_env(
        &[dead],
        1,
        vec![(
            "AIHOST_DISPATCHER__MAX_UNAVAILABLE_WAIT_SECS".into(),
            "1".into(),
        )],
    )
    .await;
    let (st, t) = s
        .post(
            "/api/tasks",
            &json!({"type": "comfyui.workflow", "input": {"workflow": graph()}, "max_attempts": 1}),
        )
        .await;
    assert_eq!(st, 202, "{t}");
    let t = s.wait_done(t["task_id"].as_str().unwrap(), T).await;
    assert_eq!(t["status"], "FAILED", "{t}");
    assert_eq!(t["error"]["code"], "engine_unavailable", "{t}");
    assert_eq!(t["progress"], Value::Null, "{t}");
}

#[tokio::test]
async fn live_previews_arrive_as_preview_events_whose_url_serves_the_image() {
    let fake = FakeComfy::start().await;
    fake.previews(true);
    let s = start(std::slice::from_ref(&fake.url), 20).await;
    let params = json!({"prompt": "a fox", "steps": 3, "width": 64, "height": 64, "seed": 1});
    // Held at the first node, so the event stream is open before anything runs.
    fake.hold(true);
    let t = s
        .create(
            "comfyui.workflow",
            json!({"workflow": "basic_generation", "params": params, "previews": true}),
        )
        .await;
    let id = t["task_id"].as_str().unwrap().to_owned();
    let http = reqwest::Client::new();
    let r = http
        .get(s.url(&format!("/api/tasks/{id}/events")))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    // The WebSocket carries the same events.
    let ws_url = s
        .url(&format!("/api/tasks/{id}/ws"))
        .replacen("http", "ws", 1);
    let (mut ws, _) = tokio_tungstenite::connect_async(ws_url).await.unwrap();
    fake.hold(false);
    let text = tokio::time::timeout(T, r.text()).await.unwrap().unwrap();
    let mut ws_previews = 0;
    while let Some(Ok(m)) = tokio::time::timeout(T, ws.next()).await.unwrap() {
        if let tokio_tungstenite::tungstenite::Message::Text(t) = m {
            let v: Value = serde_json::from_str(t.as_str()).unwrap();
            if v["event"] == "preview" {
                assert!(v["preview"]["url"].is_string(), "{v}");
                ws_previews += 1;
            }
        }
    }
    assert!(ws_previews > 0, "no preview event on the WebSocket");
    let events = aihost_tests::sse_events(&text);
    let previews: Vec<&Value> = events.iter().filter(|e| e["event"] == "preview").collect();
    assert!(!previews.is_empty(), "no preview event: {text}");
    let last = events.last().unwrap();
    assert_eq!(last["status"], "COMPLETED", "{text}");
    let p = &previews[previews.len() - 1]["preview"];
    assert_eq!(p["content_type"], "image/jpeg", "{p}");
    let key = p["key"].as_str().unwrap();
    assert!(
        key.starts_with(&format!("previews/{id}/1/preview-")),
        "{key}"
    );
    assert!(previews[0]["task"]["progress"]["preview"]["key"].is_string());
    // The URL serves the image: the sampler's latent at 1/8 of the size.
    let bytes = s.download(p["url"].as_str().unwrap()).await;
    let img = image::load_from_memory(&bytes).unwrap();
    assert_eq!((img.width(), img.height()), (8, 8));
    // The finished task keeps no preview; a task without `previews` gets no preview event.
    assert_eq!(last["task"]["progress"]["preview"], Value::Null, "{last}");
    let t = s
        .create(
            "comfyui.workflow",
            json!({"workflow": "basic_generation", "params": {"prompt": "a cat", "steps": 2, "seed": 2}}),
        )
        .await;
    let events = s.events(t["task_id"].as_str().unwrap(), T).await;
    assert!(events.iter().all(|e| e["event"] != "preview"), "{events:?}");
}

//! The ComfyUI-compatible gateway (`/comfy`) through the real binary over the fake ComfyUI: a
//! client written to ComfyUI's documented protocol (post a prompt with a client id, follow
//! `/ws?clientId=` until `executing` with `node: null` for its prompt, read `/history/{id}`,
//! fetch `/view`) runs unchanged against the fake ComfyUI itself and against the gateway;
//! uploads feeding LoadImage, interrupt, the queue, API keys (`?token=`), bad bodies.

use std::time::Duration;

use aihost_tests::{
    Options, Server, fake_comfyui::FakeComfy, plugin_lib, solid_png, workflows_dir,
};
use futures_util::StreamExt;
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;

const T: Duration = Duration::from_secs(60);

async fn start(fake: &FakeComfy, env: Vec<(String, String)>) -> Server {
    let cfg = format!(
        "urls = [{:?}]\nworkflows_dir = {:?}\nunavailable_wait_secs = 20\nhistory_poll_ms = 200\nreconnect_max_ms = 300\n",
        fake.url,
        workflows_dir()
    );
    Server::start_with(Options {
        plugins: vec![("comfyui".into(), plugin_lib("aihost_comfyui"), cfg)],
        env,
        ..Options::default()
    })
    .await
}

type Socket =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// A ComfyUI client as ComfyUI's own examples write one: nothing in it knows aihost. `token`
/// is appended as `?token=` when given (for servers behind a key).
struct Client {
    base: String,
    token: Option<String>,
    client_id: String,
    http: reqwest::Client,
}

impl Client {
    fn new(base: &str, token: Option<&str>, client_id: &str) -> Client {
        Client {
            base: base.trim_end_matches('/').to_owned(),
            token: token.map(str::to_owned),
            client_id: client_id.to_owned(),
            http: reqwest::Client::new(),
        }
    }

    fn url(&self, path: &str, query: &[(&str, &str)]) -> String {
        let mut u = reqwest::Url::parse(&format!("{}{path}", self.base)).unwrap();
        {
            let mut q = u.query_pairs_mut();
            for (k, v) in query {
                q.append_pair(k, v);
            }
            if let Some(t) = &self.token {
                q.append_pair("token", t);
            }
        }
        u.to_string()
    }

    async fn connect(&self) -> (Socket, Value) {
        let url = self
            .url("/ws", &[("clientId", &self.client_id)])
            .replacen("http", "ws", 1);
        let (mut ws, _) = tokio_tungstenite::connect_async(url).await.unwrap();
        let first = next_json(&mut ws).await;
        (ws, first)
    }

    async fn queue_prompt(&self, prompt: &Value) -> (u16, Value) {
        let r = self
            .http
            .post(self.url("/prompt", &[]))
            .json(&json!({"prompt": prompt, "client_id": self.client_id}))
            .send()
            .await
            .unwrap();
        (r.status().as_u16(), r.json().await.unwrap_or(Value::Null))
    }

    async fn get_json(&self, path: &str, query: &[(&str, &str)]) -> Value {
        let r = self.http.get(self.url(path, query)).send().await.unwrap();
        assert!(r.status().is_success(), "{path}: {}", r.status());
        r.json().await.unwrap()
    }

    async fn history(&self, prompt_id: &str) -> Value {
        self.get_json(&format!("/history/{prompt_id}"), &[]).await[prompt_id].clone()
    }

    async fn view(&self, image: &Value) -> (u16, String, Vec<u8>) {
        let r = self
            .http
            .get(self.url(
                "/view",
                &[
                    ("filename", image["filename"].as_str().unwrap()),
                    ("subfolder", image["subfolder"].as_str().unwrap()),
                    ("type", image["type"].as_str().unwrap()),
                ],
            ))
            .send()
            .await
            .unwrap();
        let ct = r
            .headers()
            .get("content-type")
            .map(|v| v.to_str().unwrap().to_owned())
            .unwrap_or_default();
        (r.status().as_u16(), ct, r.bytes().await.unwrap().to_vec())
    }

    async fn upload_image(&self, name: &str, bytes: Vec<u8>, subfolder: &str) -> Value {
        let part = reqwest::multipart::Part::bytes(bytes)
            .file_name(name.to_owned())
            .mime_str("image/png")
            .unwrap();
        let form = reqwest::multipart::Form::new()
            .part("image", part)
            .text("subfolder", subfolder.to_owned());
        let r = self
            .http
            .post(self.url("/upload/image", &[]))
            .multipart(form)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        r.json().await.unwrap()
    }
}

async fn next_json(ws: &mut Socket) -> Value {
    loop {
        let m = tokio::time::timeout(T, ws.next())
            .await
            .expect("a message in time")
            .expect("the socket stays open")
            .unwrap();
        match m {
            Message::Text(t) => return serde_json::from_str(&t).unwrap(),
            Message::Binary(_) | Message::Ping(_) | Message::Pong(_) | Message::Frame(_) => {}
            Message::Close(c) => panic!("closed: {c:?}"),
        }
    }
}

/// The messages of `prompt_id` until `executing` with `node: null` (the documented end).
async fn follow(ws: &mut Socket, prompt_id: &str) -> Vec<Value> {
    let mut seen = Vec::new();
    loop {
        let m = next_json(ws).await;
        if m["data"]["prompt_id"] != prompt_id {
            continue;
        }
        let end = m["type"] == "executing" && m["data"]["node"].is_null();
        seen.push(m);
        if end {
            return seen;
        }
    }
}

fn kinds(msgs: &[Value]) -> Vec<&str> {
    msgs.iter().map(|m| m["type"].as_str().unwrap()).collect()
}

fn solid_graph(w: u32, h: u32, color: u32, prefix: &str) -> Value {
    json!({
        "1": {"class_type": "EmptyImage", "inputs": {"width": w, "height": h, "batch_size": 1, "color": color}},
        "2": {"class_type": "SaveImage", "inputs": {"images": ["1", 0], "filename_prefix": prefix}}
    })
}

/// Runs one prompt the documented way; answers (prompt_id, messages, history entry, image).
async fn run_prompt(c: &Client, prompt: &Value) -> (String, Vec<Value>, Value, image::RgbImage) {
    let (mut ws, first) = c.connect().await;
    assert_eq!(first["type"], "status", "{first}");
    assert_eq!(first["data"]["sid"], c.client_id.as_str());
    let (st, queued) = c.queue_prompt(prompt).await;
    assert_eq!(st, 200, "{queued}");
    assert_eq!(queued["node_errors"], json!({}));
    assert!(queued["number"].is_number(), "{queued}");
    let pid = queued["prompt_id"].as_str().unwrap().to_owned();
    let msgs = follow(&mut ws, &pid).await;
    let h = c.history(&pid).await;
    assert_eq!(h["status"]["status_str"], "success", "{h}");
    assert_eq!(h["status"]["completed"], true);
    assert_eq!(h["prompt"][1], pid.as_str());
    assert_eq!(&h["prompt"][2], prompt);
    let (_, out) = h["outputs"].as_object().unwrap().iter().next().unwrap();
    let img = &out["images"][0];
    let (st, ct, bytes) = c.view(img).await;
    assert_eq!((st, ct.as_str()), (200, "image/png"));
    (
        pid,
        msgs,
        h,
        image::load_from_memory(&bytes).unwrap().to_rgb8(),
    )
}

#[tokio::test]
async fn a_comfyui_client_runs_unchanged_against_the_gateway_behind_a_key() {
    let fake = FakeComfy::start().await;
    let s = start(
        &fake,
        vec![("AIHOST_SERVER__API_KEYS".into(), "gw-key-1".into())],
    )
    .await;
    let prompt = solid_graph(32, 24, 0xff0000, "gw");

    // The client against ComfyUI itself (the fake), then, unchanged, against the gateway.
    let direct = Client::new(&fake.url, None, "client-direct");
    let (_, direct_msgs, _, direct_img) = run_prompt(&direct, &prompt).await;
    let gw = Client::new(&s.url("/comfy"), Some("gw-key-1"), "client-gw");
    let (pid, msgs, h, img) = run_prompt(&gw, &prompt).await;
    assert_eq!(img, direct_img);
    assert_eq!(img.dimensions(), (32, 24));
    assert_eq!(img.get_pixel(5, 5).0, [255, 0, 0]);
    // The same landmarks in the same order as ComfyUI's own stream.
    for k in [&kinds(&direct_msgs), &kinds(&msgs)] {
        let pos = |t: &str| {
            k.iter()
                .position(|x| *x == t)
                .unwrap_or_else(|| panic!("{t} in {k:?}"))
        };
        assert!(pos("execution_start") < pos("executed"), "{k:?}");
        assert!(pos("executed") < pos("execution_success"), "{k:?}");
        assert_eq!(k.last(), Some(&"executing"));
    }
    let executed = msgs.iter().find(|m| m["type"] == "executed").unwrap();
    assert_eq!(executed["data"]["node"], "2");
    assert_eq!(executed["data"]["output"], h["outputs"]["2"]);
    // The task behind it is an ordinary aihost task, found by its key.
    let (st, tasks) = s
        .http
        .get(s.url("/api/tasks?type=comfyui.workflow"))
        .bearer_auth("gw-key-1")
        .send()
        .await
        .map(|r| (r.status().as_u16(), r))
        .unwrap();
    assert_eq!(st, 200);
    let tasks: Value = tasks.json().await.unwrap();
    assert_eq!(tasks["tasks"][0]["idempotency_key"], format!("comfy:{pid}"));

    // The `/api/` alias, history listing, queue, info routes.
    let all = gw.get_json("/api/history", &[("max_items", "5")]).await;
    assert!(all[&pid].is_object(), "{all}");
    let q = gw.get_json("/queue", &[]).await;
    assert_eq!(q, json!({"queue_running": [], "queue_pending": []}));
    let info = gw.get_json("/object_info/EmptyImage", &[]).await;
    assert!(
        info["EmptyImage"]["input"]["required"]["width"].is_array(),
        "{info}"
    );
    let stats = gw.get_json("/system_stats", &[]).await;
    assert!(stats["system"].is_object(), "{stats}");
    assert_eq!(
        gw.get_json("/prompt", &[]).await,
        json!({"exec_info": {"queue_remaining": 0}})
    );

    // The same prompt id again: the same graph answers the first prompt, another is refused.
    let post = |body: Value| {
        let http = s.http.clone();
        let url = gw.url("/prompt", &[]);
        async move {
            let r = http.post(url).json(&body).send().await.unwrap();
            (r.status().as_u16(), r.json::<Value>().await.unwrap())
        }
    };
    let (st, b) = post(json!({"prompt": prompt, "prompt_id": pid})).await;
    assert_eq!(
        (st, b["prompt_id"].as_str()),
        (200, Some(pid.as_str())),
        "{b}"
    );
    let (st, b) = post(json!({"prompt": solid_graph(8, 8, 0, "x"), "prompt_id": pid})).await;
    assert_eq!(st, 400, "{b}");
    assert_eq!(b["error"]["type"], "prompt_id_in_use");
    assert_eq!(b["node_errors"], json!({}));

    // Bad bodies answer ComfyUI's error shape.
    let (st, b) = post(json!({"prompt": [1, 2]})).await;
    assert_eq!(
        (st, b["error"]["type"].as_str()),
        (400, Some("invalid_prompt")),
        "{b}"
    );
    let (st, b) = post(json!({"prompt": {"1": {"inputs": {}}}})).await;
    assert_eq!(st, 400, "{b}");
    assert_eq!(b["error"]["code"], "invalid_workflow", "{b}");
    assert!(
        b["error"]["message"]
            .as_str()
            .unwrap()
            .contains("class_type"),
        "{b}"
    );
    let r = s
        .http
        .post(gw.url("/prompt", &[]))
        .header("content-type", "application/json")
        .body("{\"prompt\": ")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    let b: Value = r.json().await.unwrap();
    assert_eq!(b["error"]["code"], "invalid_prompt", "{b}");
    // A cross-site request (a web page posting to the gateway) is refused, as ComfyUI does;
    // the same site is not.
    let cross = |origin: &'static str| {
        s.http
            .post(gw.url("/prompt", &[]))
            .header("origin", origin)
            .header("content-type", "text/plain")
            .body(json!({"prompt": solid_graph(8, 8, 0, "x")}).to_string())
            .send()
    };
    let r = cross("https://evil.example").await.unwrap();
    assert_eq!(r.status(), 403);
    let b: Value = r.json().await.unwrap();
    assert_eq!(b["error"]["code"], "cross_origin_refused", "{b}");
    let own: &'static str = Box::leak(
        reqwest::Url::parse(&s.base)
            .unwrap()
            .origin()
            .ascii_serialization()
            .into_boxed_str(),
    );
    let r = cross(own).await.unwrap();
    assert_eq!(r.status(), 200, "{:?}", r.text().await);
    // An unknown output is 404.
    let (st, _, _) = gw
        .view(&json!({"filename": "nope.png", "subfolder": "outputs/x/1", "type": "output"}))
        .await;
    assert_eq!(st, 404);
    assert_eq!(gw.history("unknown").await, Value::Null);

    // Without the key: 401 on HTTP and on the WebSocket handshake; a wrong key too.
    let anon = Client::new(&s.url("/comfy"), None, "anon");
    let (st, _) = anon.queue_prompt(&prompt).await;
    assert_eq!(st, 401);
    let r = s.http.get(anon.url("/history", &[])).send().await.unwrap();
    assert_eq!(r.status(), 401);
    let wrong = Client::new(&s.url("/comfy"), Some("nope"), "anon");
    let r = s
        .http
        .get(wrong.url("/api/queue", &[]))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    let ws_url = anon
        .url("/ws", &[("clientId", "anon")])
        .replacen("http", "ws", 1);
    assert!(tokio_tungstenite::connect_async(ws_url).await.is_err());
    // The key never reaches the log.
    assert!(!s.log().contains("gw-key-1"));
}

#[tokio::test]
async fn uploads_feed_load_image_and_interrupt_cancels_the_running_prompt() {
    let fake = FakeComfy::start().await;
    let s = start(&fake, Vec::new()).await;
    let c = Client::new(&s.url("/comfy"), None, "uploader");
    let png = solid_png(40, 30, [10, 20, 30]);
    let up = c.upload_image("up.png", png.clone(), "caps").await;
    assert_eq!(
        up,
        json!({"name": "up.png", "subfolder": "caps", "type": "input"})
    );
    // Without overwrite a taken name gets a new one, as ComfyUI does.
    let again = c
        .upload_image("up.png", solid_png(4, 4, [0, 0, 0]), "caps")
        .await;
    assert_eq!(again["name"], "up (1).png");
    // The same bytes again keep their name (ComfyUI compares the content), whichever copy.
    let same = c.upload_image("up.png", png.clone(), "caps").await;
    assert_eq!(same["name"], "up.png");
    let (st, _, bytes) = c
        .view(&json!({"filename": "up.png", "subfolder": "caps", "type": "input"}))
        .await;
    assert_eq!((st, bytes == png), (200, true));

    let prompt = json!({
        "1": {"class_type": "LoadImage", "inputs": {"image": "caps/up.png"}},
        "2": {"class_type": "ImageInvert", "inputs": {"image": ["1", 0]}},
        "3": {"class_type": "SaveImage", "inputs": {"images": ["2", 0], "filename_prefix": "caps/inverted"}}
    });
    let (_, _, h, img) = run_prompt(&c, &prompt).await;
    assert_eq!(img.dimensions(), (40, 30));
    assert_eq!(img.get_pixel(0, 0).0, [245, 235, 225]);
    assert!(
        h["outputs"]["3"]["images"][0]["subfolder"]
            .as_str()
            .unwrap()
            .ends_with("/caps"),
        "{h}"
    );
    // The file reached ComfyUI through the plugin's media upload.
    let sent = fake.prompts().last().unwrap().clone();
    let name = sent["prompt"]["1"]["inputs"]["image"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(
        name.starts_with("aihost/") && name.ends_with("/up.png"),
        "{name}"
    );

    // What ComfyUI itself refuses (an unknown node class) fails the task: the client sees
    // `execution_error` and an error in the history, not a 400.
    let (mut ws, _) = c.connect().await;
    let (st, q) = c
        .queue_prompt(&json!({"1": {"class_type": "NoSuchNode", "inputs": {}}}))
        .await;
    assert_eq!(st, 200, "{q}");
    let pid = q["prompt_id"].as_str().unwrap().to_owned();
    let msgs = follow(&mut ws, &pid).await;
    let err = msgs
        .iter()
        .find(|m| m["type"] == "execution_error")
        .unwrap_or_else(|| panic!("{msgs:?}"));
    assert_eq!(err["data"]["exception_type"], "invalid_workflow", "{err}");
    assert!(
        err["data"]["exception_message"]
            .as_str()
            .unwrap()
            .contains("NoSuchNode"),
        "{err}"
    );
    let h = c.history(&pid).await;
    assert_eq!(h["status"]["status_str"], "error", "{h}");
    drop(ws);

    // Interrupt: the running prompt's task is cancelled; the client sees it end.
    fake.hold(true);
    let (mut ws, _) = c.connect().await;
    let (st, q) = c.queue_prompt(&solid_graph(16, 16, 7, "held")).await;
    assert_eq!(st, 200, "{q}");
    let pid = q["prompt_id"].as_str().unwrap().to_owned();
    fake.wait_until("runs the prompt", T, |f| f.running().is_some())
        .await;
    let queue = c.get_json("/queue", &[]).await;
    assert_eq!(queue["queue_running"][0][1], pid.as_str(), "{queue}");
    let r = s
        .http
        .post(c.url("/interrupt", &[]))
        .json(&json!({"prompt_id": pid}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let msgs = follow(&mut ws, &pid).await;
    assert!(kinds(&msgs).contains(&"execution_interrupted"), "{msgs:?}");
    let h = c.history(&pid).await;
    assert_eq!(h["status"]["status_str"], "error", "{h}");
    assert_eq!(h["status"]["completed"], false);
    fake.hold(false);
    // A body that is not an object is refused.
    let r = s
        .http
        .post(c.url("/queue", &[]))
        .body("[1]")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
}

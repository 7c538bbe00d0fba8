//! The comfyui plugin's production features through the real binary: a supervised instance
//! (the plugin launches the `fake-comfyui` binary as a child, restarts it when it is killed or
//! its prompt stalls, stops it at shutdown, and it dies with a kill -9'd host; uploads removed
//! from its input folder), `/free` after idle time, the model manifest (downloaded from a
//! local HTTP server with a resumed part, a bad checksum refused and reported in
//! `/api/status`), per-task model URLs (fetched into the cache; refused outside the
//! allow-list), and model-aware routing (two fakes with different checkpoints; a checkpoint
//! neither has fails with `model_unavailable`).

use std::{
    io::{BufRead, BufReader, Write},
    net::TcpListener,
    path::{Path, PathBuf},
    time::Duration,
};

use aihost_tests::{
    Options, Server, fake_comfyui::FakeComfy, free_port, plugin_lib, wait_for, workflows_dir,
};
use serde_json::{Value, json};

const T: Duration = Duration::from_secs(60);

async fn start(cfg: &str) -> Server {
    start_toml(cfg, "").await
}

/// With extra sections for aihost.toml.
async fn start_toml(cfg: &str, extra_toml: &str) -> Server {
    let cfg = format!(
        "workflows_dir = {:?}\nunavailable_wait_secs = 20\nhistory_poll_ms = 200\nreconnect_max_ms = 300\n{cfg}",
        workflows_dir()
    );
    Server::start_with(Options {
        plugins: vec![("comfyui".into(), plugin_lib("aihost_comfyui"), cfg)],
        extra_toml: extra_toml.to_owned(),
        ..Options::default()
    })
    .await
}

/// The config line of one supervised fake in `dir` on `port`.
fn supervised(port: u16, dir: &Path) -> String {
    supervised_env(port, dir, "")
}

/// The same with `env` entries (`K = "V", ...`) for the child.
fn supervised_env(port: u16, dir: &Path, env: &str) -> String {
    format!(
        "instances = [{{ url = \"http://127.0.0.1:{port}\", launch = {{ command = [{:?}, \"--port\", \"{{port}}\", \"--dir\", \".\"], cwd = {:?}, env = {{ {env} }}, max_backoff_secs = 1, stop_grace_secs = 3 }} }}]\n",
        env!("CARGO_BIN_EXE_fake-comfyui"),
        dir.display().to_string()
    )
}

/// Runs a generation naming `ckpt`, which no instance has: it fails with `model_unavailable`
/// naming the model. Answers the task.
async fn model_unavailable(s: &Server, ckpt: &str) -> Value {
    let t = s.run("comfyui.workflow", generation(ckpt), T).await;
    assert_eq!(t["status"], "FAILED", "{t}");
    assert_eq!(t["error"]["code"], "model_unavailable", "{t}");
    assert!(
        t["error"]["message"].as_str().unwrap().contains(ckpt),
        "{t}"
    );
    t
}

/// The plugin's health entry of its first instance.
async fn instance(s: &Server) -> Value {
    let (_, st) = s.get("/api/status").await;
    st["plugins"]["comfyui"]["instances"][0].clone()
}

/// Whether a process runs (a zombie or a missing pid does not).
fn alive(pid: u64) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|s| {
        s.rsplit_once(')')
            .and_then(|(_, r)| r.split_whitespace().next())
            .is_some_and(|st| st != "Z" && st != "X")
    })
}

/// Waits until the supervised instance runs, answering its pid.
async fn running_pid(s: &Server, not: Option<u64>) -> u64 {
    wait_for("the supervised ComfyUI runs", T, async || {
        let i = instance(s).await;
        match i["supervised"]["pid"].as_u64() {
            Some(pid)
                if i["supervised"]["phase"] == "running"
                    && i["ready"] == true
                    && Some(pid) != not =>
            {
                Ok(pid)
            }
            _ => Err(i.to_string()),
        }
    })
    .await
}

fn solid() -> Value {
    json!({"workflow": "solid_color", "params": {"width": 8, "height": 8, "color": 0x00ff00}})
}

fn generation(ckpt: &str) -> Value {
    json!({"workflow": "basic_generation", "params": {"checkpoint": ckpt, "steps": 1, "width": 64, "height": 64}})
}

#[tokio::test]
async fn supervised_fake_is_launched_restarted_after_a_kill_and_stopped_at_shutdown() {
    let comfy = tempfile::tempdir().unwrap();
    let port = free_port();
    let mut s = start(&supervised(port, comfy.path())).await;
    let pid = running_pid(&s, None).await;
    assert!(alive(pid));
    let t = s.run("comfyui.workflow", solid(), T).await;
    assert_eq!(t["status"], "COMPLETED", "{t}");
    assert_eq!(
        t["result"]["instance"],
        format!("http://127.0.0.1:{port}").as_str()
    );
    // Its output lines reach the host log, naming the instance.
    wait_for("the child's output is in the host log", T, async || {
        let log = s.log();
        if log.contains("To see the GUI go to") {
            Ok(())
        } else {
            Err("no forwarded line".to_owned())
        }
    })
    .await;

    // Killed from outside: the plugin starts it again and tasks complete again.
    std::process::Command::new("kill")
        .args(["-9", &pid.to_string()])
        .status()
        .unwrap();
    let pid2 = running_pid(&s, Some(pid)).await;
    let i = instance(&s).await;
    assert!(i["supervised"]["restarts"].as_u64().unwrap() >= 1, "{i}");
    assert!(i["supervised"]["last_exit"].as_str().is_some(), "{i}");
    let t = s.run("comfyui.workflow", solid(), T).await;
    assert_eq!(t["status"], "COMPLETED", "{t}");

    // The inputs aihost uploaded into the supervised instance's input folder are removed
    // after the task.
    let up = s
        .upload("in.png", aihost_tests::solid_png(4, 4, [9, 9, 9]), None)
        .await;
    let t = s
        .run(
            "comfyui.workflow",
            json!({"workflow": "invert_scale", "params": {"image": up["key"], "width": 4, "height": 4}}),
            T,
        )
        .await;
    assert_eq!(t["status"], "COMPLETED", "{t}");
    let uploads = comfy.path().join("input/aihost");
    assert!(uploads.is_dir(), "the upload went elsewhere");
    assert!(
        !uploads.join(t["task_id"].as_str().unwrap()).exists(),
        "the task's uploads are still in ComfyUI's input folder"
    );

    // A host shutdown stops the child.
    assert!(s.terminate(T));
    wait_for("the child is gone", T, async || {
        if alive(pid2) {
            Err(format!("{pid2} still runs"))
        } else {
            Ok(())
        }
    })
    .await;
}

/// Serves `files` (path -> bytes) over HTTP/1.1 on a free port, honouring `Range: bytes=N-`.
fn serve_files(files: Vec<(&'static str, Vec<u8>)>) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(mut conn) = conn else { continue };
            let mut reader = BufReader::new(conn.try_clone().unwrap());
            let mut line = String::new();
            if reader.read_line(&mut line).is_err() {
                continue;
            }
            let path = line.split_whitespace().nth(1).unwrap_or("/").to_owned();
            let mut from = 0usize;
            loop {
                let mut h = String::new();
                if reader.read_line(&mut h).is_err() || h.trim().is_empty() {
                    break;
                }
                if let Some(v) = h.to_ascii_lowercase().strip_prefix("range: bytes=") {
                    from = v.trim().trim_end_matches('-').parse().unwrap_or(0);
                }
            }
            let reply = match files.iter().find(|(p, _)| *p == path) {
                Some((_, body)) if from > 0 && from < body.len() => {
                    let rest = &body[from..];
                    let mut r = format!(
                        "HTTP/1.1 206 Partial Content\r\nContent-Length: {}\r\nContent-Range: bytes {from}-{}/{}\r\nConnection: close\r\n\r\n",
                        rest.len(),
                        body.len() - 1,
                        body.len()
                    )
                    .into_bytes();
                    r.extend_from_slice(rest);
                    r
                }
                Some((_, body)) => {
                    let mut r = format!(
                        "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                        body.len()
                    )
                    .into_bytes();
                    r.extend_from_slice(body);
                    r
                }
                None => b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
                    .to_vec(),
            };
            let _ = conn.write_all(&reply);
        }
    });
    base
}

fn sha256_hex(bytes: &[u8]) -> String {
    // sha256sum is on every machine the tests run on; the test crate has no hash crate.
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("f");
    std::fs::write(&p, bytes).unwrap();
    let out = std::process::Command::new("sha256sum")
        .arg(&p)
        .output()
        .unwrap();
    String::from_utf8(out.stdout).unwrap()[..64].to_owned()
}

#[tokio::test]
async fn manifest_downloads_before_tasks_refuses_a_bad_checksum_and_routes_by_the_files() {
    let good: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
    let bad = b"not the file the manifest means".to_vec();
    let base = serve_files(vec![
        ("/good.safetensors", good.clone()),
        ("/bad.safetensors", bad),
    ]);
    let comfy = tempfile::tempdir().unwrap();
    // A part left by an interrupted download is resumed.
    let ckpts = comfy.path().join("models/checkpoints");
    std::fs::create_dir_all(&ckpts).unwrap();
    std::fs::write(ckpts.join("good.safetensors.part"), &good[..1000]).unwrap();
    let port = free_port();
    let cfg = format!(
        "{}models = [{{ url = \"{base}/good.safetensors\", sha256 = \"{}\", folder = \"checkpoints\" }}, {{ url = \"{base}/bad.safetensors\", sha256 = \"{}\", folder = \"loras\", name = \"style.safetensors\" }}]\n",
        supervised(port, comfy.path()),
        sha256_hex(&good),
        "ab".repeat(32)
    );
    let s = start(&cfg).await;
    running_pid(&s, None).await;
    assert_eq!(std::fs::read(ckpts.join("good.safetensors")).unwrap(), good);
    assert!(!ckpts.join("good.safetensors.part").exists());
    let loras = comfy.path().join("models/loras");
    assert!(!loras.join("style.safetensors").exists());
    assert!(!loras.join("style.safetensors.part").exists());
    let i = instance(&s).await;
    let files = i["manifest"]["files"].as_array().unwrap();
    assert_eq!(files[0]["status"], "ready", "{i}");
    assert_eq!(files[0]["bytes"], good.len() as u64, "{i}");
    assert_eq!(files[1]["status"], "failed", "{i}");
    assert!(
        files[1]["error"]
            .as_str()
            .unwrap()
            .contains("sha256 mismatch"),
        "{i}"
    );
    assert_eq!(i["manifest"]["failed"], 1, "{i}");

    // The downloaded checkpoint is what the instance has: a task naming it runs there; one
    // naming another checkpoint fails at once.
    wait_for("the instance's checkpoints are known", T, async || {
        let i = instance(&s).await;
        if i["models"]["checkpoints"] == json!(["good.safetensors"]) {
            Ok(())
        } else {
            Err(i.to_string())
        }
    })
    .await;
    let t = s
        .run("comfyui.workflow", generation("good.safetensors"), T)
        .await;
    assert_eq!(t["status"], "COMPLETED", "{t}");
    model_unavailable(&s, "missing.safetensors").await;
}

#[tokio::test]
async fn tasks_go_to_the_instance_that_has_their_checkpoint() {
    let a = FakeComfy::start().await;
    let b = FakeComfy::start().await;
    a.set_models("checkpoints", &["a.safetensors", "shared.safetensors"]);
    b.set_models("checkpoints", &["b.safetensors", "shared.safetensors"]);
    // The fake validates like ComfyUI: a checkpoint outside the instance's list is refused.
    let mut graph: Value = serde_json::from_str(
        &std::fs::read_to_string(PathBuf::from(workflows_dir()).join("basic_generation.json"))
            .unwrap(),
    )
    .unwrap();
    graph["4"]["inputs"]["ckpt_name"] = json!("b.safetensors");
    let r: Value = reqwest::Client::new()
        .post(format!("{}/prompt", a.url))
        .json(&json!({ "prompt": graph }))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(
        r["node_errors"]["4"]["errors"][0]["type"], "value_not_in_list",
        "{r}"
    );
    let models: Value = reqwest::get(format!("{}/models/checkpoints", b.url))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(models, json!(["b.safetensors", "shared.safetensors"]));

    let s = start(&format!("urls = [{:?}, {:?}]\n", a.url, b.url)).await;
    wait_for("both instances' checkpoints are known", T, async || {
        let (_, st) = s.get("/api/status").await;
        let inst = &st["plugins"]["comfyui"]["instances"];
        if inst[0]["models"]["known"] == true && inst[1]["models"]["known"] == true {
            Ok(())
        } else {
            Err(st.to_string())
        }
    })
    .await;
    for _ in 0..3 {
        for (ckpt, fake) in [("a.safetensors", &a), ("b.safetensors", &b)] {
            let t = s.run("comfyui.workflow", generation(ckpt), T).await;
            assert_eq!(t["status"], "COMPLETED", "{t}");
            assert_eq!(t["result"]["instance"], fake.url.as_str(), "{ckpt}: {t}");
        }
    }
    let t = s
        .run("comfyui.workflow", generation("shared.safetensors"), T)
        .await;
    assert_eq!(t["status"], "COMPLETED", "{t}");
    let t = model_unavailable(&s, "c.safetensors").await;
    assert_eq!(t["attempts"], 1, "{t}");

    // A per-task model URL outside `model_url_hosts` (empty: off) fails at once.
    let mut input = generation("a.safetensors");
    input["models"] = json!([{"url": "https://models.example/lora.safetensors", "folder": "loras", "node": "4", "input": "ckpt_name"}]);
    let t = s.run("comfyui.workflow", input, T).await;
    assert_eq!(t["status"], "FAILED", "{t}");
    assert_eq!(t["error"]["code"], "model_url_refused", "{t}");
    assert_eq!(t["attempts"], 1, "{t}");
}

#[tokio::test]
async fn the_watchdog_restarts_an_instance_whose_prompt_makes_no_progress() {
    let comfy = tempfile::tempdir().unwrap();
    let port = free_port();
    let cfg = format!(
        "stall_secs = 1\n{}",
        supervised_env(port, comfy.path(), "FAKE_COMFYUI_HOLD = \"1\"")
    );
    let s = start(&cfg).await;
    let pid = running_pid(&s, None).await;
    let id = s.create("comfyui.workflow", solid()).await["task_id"]
        .as_str()
        .unwrap()
        .to_owned();
    let i = wait_for(
        "the watchdog restarted the stalled instance",
        T,
        async || {
            let i = instance(&s).await;
            let restarted = i["supervised"]["restarts"].as_u64().unwrap_or(0) >= 1
                && i["supervised"]["pid"].as_u64().is_some_and(|p| p != pid);
            if restarted { Ok(i) } else { Err(i.to_string()) }
        },
    )
    .await;
    assert!(
        i["supervised"]["last_restart_reason"]
            .as_str()
            .unwrap()
            .contains("no progress"),
        "{i}"
    );
    assert_eq!(
        i["supervised"]["last_exit"], "stopped by the watchdog",
        "{i}"
    );
    assert!(!alive(pid));
    let _ = s.post(&format!("/api/tasks/{id}/cancel"), &json!({})).await;
}

#[tokio::test]
async fn an_idle_instance_is_told_to_free_its_memory() {
    let fake = FakeComfy::start().await;
    let s = start(&format!("urls = [{:?}]\nidle_free_secs = 1\n", fake.url)).await;
    let t = s.run("comfyui.workflow", solid(), T).await;
    assert_eq!(t["status"], "COMPLETED", "{t}");
    fake.wait_until("POST /free arrived", T, |f| {
        f.requests().iter().any(|r| {
            r.method == "POST"
                && r.path == "/free"
                && r.body == json!({"unload_models": true, "free_memory": true})
        })
    })
    .await;
}

#[tokio::test]
async fn a_supervised_child_dies_with_a_killed_host() {
    let comfy = tempfile::tempdir().unwrap();
    let mut s = start(&supervised(free_port(), comfy.path())).await;
    let pid = running_pid(&s, None).await;
    s.kill9();
    wait_for("the child died with the host", T, async || {
        if alive(pid) {
            Err(format!("{pid} still runs"))
        } else {
            Ok(())
        }
    })
    .await;
}

#[tokio::test]
async fn a_per_task_model_url_is_fetched_into_the_cache_and_used() {
    let lora: Vec<u8> = (0..5000u32).map(|i| (i % 7) as u8).collect();
    let base = serve_files(vec![("/files/my-model.safetensors", lora.clone())]);
    let host_port = base.trim_start_matches("http://").to_owned();
    let comfy = tempfile::tempdir().unwrap();
    let cfg = format!(
        "model_url_hosts = [\"127.0.0.1\"]\n{}",
        supervised(free_port(), comfy.path())
    );
    let s = start_toml(&cfg, &format!("[fetch]\nallow_hosts = [{host_port:?}]\n")).await;
    running_pid(&s, None).await;
    let url = format!("{base}/files/my-model.safetensors");
    let mut input = generation("placeholder.safetensors");
    input["models"] =
        json!([{"url": url, "folder": "checkpoints", "node": "4", "input": "ckpt_name"}]);
    for _ in 0..2 {
        let t = s.run("comfyui.workflow", input.clone(), T).await;
        assert_eq!(t["status"], "COMPLETED", "{t}");
    }
    let cache = comfy.path().join("models/checkpoints/aihost-cache");
    let files: Vec<PathBuf> = std::fs::read_dir(&cache)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert_eq!(files.len(), 1, "{files:?}");
    assert_eq!(std::fs::read(&files[0]).unwrap(), lora);
    assert!(
        files[0]
            .file_name()
            .unwrap()
            .to_str()
            .unwrap()
            .ends_with(".safetensors")
    );
}

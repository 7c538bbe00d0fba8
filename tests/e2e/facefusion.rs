//! The FaceFusion plugin through the real binary and the real plugin library, against the
//! stand-in `tests/standins/facefusion.py` (the CLI contract of research/facefusion.md).
//!
//! Needs `python3`, `ffmpeg` and `ffprobe` on PATH (the stand-in, like FaceFusion, refuses to
//! run without ffmpeg/ffprobe; the tests make their videos with ffmpeg).

use std::{
    path::{Path, PathBuf},
    process::Command,
    time::Duration,
};

use aihost_tests::{Options, Server, plugin_lib, poll, wait_for, wait_until};
use serde_json::{Value, json};

/// A folder that looks like a FaceFusion checkout: the stand-in as `facefusion.py` plus the
/// processors folder FaceFusion reads relative to its working directory.
fn checkout() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let standin = Path::new(env!("CARGO_MANIFEST_DIR")).join("standins/facefusion.py");
    std::fs::copy(&standin, dir.path().join("facefusion.py")).unwrap();
    std::fs::create_dir_all(
        dir.path()
            .join("facefusion/processors/modules/face_swapper"),
    )
    .unwrap();
    dir
}

/// A server with only the facefusion plugin, configured with `config` lines and the stand-in
/// found through `FACEFUSION_DIR` / `FACEFUSION_PYTHON`; `env` adds stand-in switches.
async fn server(checkout: &Path, config: &str, env: &[(&str, &str)]) -> Server {
    let mut e = vec![
        ("FACEFUSION_DIR".to_owned(), checkout.display().to_string()),
        ("FACEFUSION_PYTHON".to_owned(), "python3".to_owned()),
    ];
    e.extend(env.iter().map(|(k, v)| (k.to_string(), v.to_string())));
    Server::start_with(Options {
        plugins: vec![(
            "facefusion".into(),
            plugin_lib("aihost_facefusion"),
            config.to_owned(),
        )],
        extra_toml: String::new(),
        env: e,
    })
    .await
}

async fn upload_png(s: &Server, w: u32, h: u32, name: &str) -> (Value, PathBuf) {
    let path = s.dir.path().join(format!("{w}x{h}-{name}"));
    aihost_tests::write_png(&path, w, h);
    let up = s.upload(name, std::fs::read(&path).unwrap(), Some("image/png"));
    (up.await, path)
}

/// A real video made with ffmpeg: `seconds` at 10 fps, `w`×`h`, test pattern `pattern`.
fn make_video(dir: &Path, file: &str, seconds: u32, pattern: &str) -> PathBuf {
    let path = dir.join(file);
    let st = Command::new("ffmpeg")
        .args(["-v", "error", "-y", "-f", "lavfi", "-i"])
        .arg(format!("{pattern}=size=64x48:rate=10"))
        .args(["-t", &seconds.to_string(), "-pix_fmt", "yuv420p"])
        .arg(&path)
        .status()
        .expect("ffmpeg is needed by these tests");
    assert!(st.success());
    path
}

async fn upload_video(s: &Server, seconds: u32, pattern: &str, name: &str) -> (Value, PathBuf) {
    let sub = s.dir.path().join(format!("v-{pattern}-{seconds}"));
    std::fs::create_dir_all(&sub).unwrap();
    let path = make_video(&sub, name, seconds, pattern);
    let up = s.upload(name, std::fs::read(&path).unwrap(), Some("video/mp4"));
    (up.await, path)
}

fn faceswap(source: &Value, target: &Value) -> Value {
    json!({"source_url": source["key"], "target_url": target["url"]})
}

/// Processes whose command line mentions `needle` (zombies have none, so they never match).
fn processes_mentioning(needle: &str) -> Vec<(u32, String)> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        if pid == std::process::id() {
            continue;
        }
        if let Ok(raw) = std::fs::read(entry.path().join("cmdline")) {
            let cmd = String::from_utf8_lossy(&raw).replace('\0', " ");
            if cmd.contains(needle) {
                found.push((pid, cmd));
            }
        }
    }
    found
}

/// Waits (bounded) until no process mentions `needle`; answers the ones left.
async fn wait_no_processes(needle: &str) -> Vec<(u32, String)> {
    none_left(Duration::from_secs(20), || processes_mentioning(needle)).await
}

/// Polls `left` until it answers nothing or `timeout` has passed; answers the last answer.
async fn none_left<T>(timeout: Duration, left: impl Fn() -> Vec<T>) -> Vec<T> {
    poll(timeout, async || {
        let left = left();
        if left.is_empty() { Ok(()) } else { Err(left) }
    })
    .await
    .err()
    .unwrap_or_default()
}

/// The engine's processes of this server: they all name files under the server's folder.
fn engine_needle(s: &Server) -> String {
    s.dir.path().join("data/work").display().to_string()
}

/// Seconds since the start of the month of an RFC 3339 UTC timestamp (enough to order times
/// within one test).
fn secs(v: &Value) -> f64 {
    let s = v.as_str().expect("a timestamp");
    let (date, time) = s.split_once('T').expect("RFC 3339");
    let day: f64 = date[8..10].parse().unwrap();
    let time = time.trim_end_matches('Z');
    let time = time.split(['+']).next().unwrap();
    let mut parts = time.split(':').map(|p| p.parse::<f64>().unwrap());
    let (h, m, sec) = (
        parts.next().unwrap(),
        parts.next().unwrap(),
        parts.next().unwrap(),
    );
    day * 86400.0 + h * 3600.0 + m * 60.0 + sec
}

/// Waits (bounded) until the host removed the attempts' work folders (it does so right after
/// recording the outcome); answers what is left.
async fn work_dir_left(s: &Server) -> Vec<String> {
    none_left(Duration::from_secs(10), || work_dir_entries(s)).await
}

/// What the attempts left in the work folder. The host keeps emptied folders for reuse
/// (`.spare-…`): those count only if something is left inside them.
fn work_dir_entries(s: &Server) -> Vec<String> {
    std::fs::read_dir(s.dir.path().join("data/work"))
        .map(|rd| {
            rd.flatten()
                .filter(|e| {
                    !e.file_name().to_string_lossy().starts_with(".spare-")
                        || std::fs::read_dir(e.path()).map_or(true, |mut d| d.next().is_some())
                })
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default()
}

#[tokio::test]
async fn image_swap_in_the_seed_form_lands_in_storage() {
    let ck = checkout();
    let s = server(ck.path(), "", &[]).await;
    let (source, _) = upload_png(&s, 32, 32, "face.png").await;
    let (target, target_path) = upload_png(&s, 40, 30, "photo.png").await;
    // The seed's exact body; the URL form of the target and the key form of the source.
    let (status, t) = s
        .post(
            "/api/faceswap/create?wait=60",
            &json!({
                "source_url": source["key"],
                "target_url": target["url"],
                "resolution": "1024x1024",
                "media_type": "image",
            }),
        )
        .await;
    assert_eq!(status, 200, "{t}\n{}", s.log());
    assert_eq!(t["status"], "COMPLETED", "{t}");
    assert_eq!(t["type"], "facefusion.faceswap");
    let result = &t["result"];
    // 40x30 into 1024x1024: the largest grid scale that fits is above 8, so 8.
    assert_eq!(result["scale"], 8.0);
    assert_eq!(result["media_type"], "image");
    let out = &result["outputs"][0];
    assert_eq!(out["content_type"], "image/png");
    assert!(
        out["key"].as_str().unwrap().ends_with("/result.png"),
        "{out}"
    );
    // The stand-in's output is a copy of the target.
    let bytes = s.download(out["url"].as_str().unwrap()).await;
    assert_eq!(bytes, std::fs::read(&target_path).unwrap());
    // Nothing of the run is left behind.
    let left = work_dir_left(&s).await;
    assert!(left.is_empty(), "{left:?}");

    // The source as a `data:` URL (base64 inline, far longer than a URL) works the same.
    let face = {
        use base64::Engine as _;
        let mut noisy = image::RgbImage::new(64, 64);
        for (x, y, p) in noisy.enumerate_pixels_mut() {
            *p = image::Rgb([(x * 7 + y * 13) as u8, (x * y) as u8, (x ^ y) as u8]);
        }
        let mut png = Vec::new();
        noisy
            .write_to(&mut std::io::Cursor::new(&mut png), image::ImageFormat::Png)
            .unwrap();
        format!(
            "data:image/png;base64,{}",
            base64::engine::general_purpose::STANDARD.encode(&png)
        )
    };
    assert!(face.len() > 4096, "{}", face.len());
    let (status, t) = s
        .post(
            "/api/faceswap/create?wait=60",
            &json!({"source_url": face, "target_url": target["key"],
                    "resolution": "1024x1024", "media_type": "image"}),
        )
        .await;
    assert_eq!(
        (status, t["status"].as_str()),
        (200, Some("COMPLETED")),
        "{t}"
    );

    // The route's own errors: the schema (422) and a bad media type (400 from the body).
    let (status, e) = s
        .post(
            "/api/faceswap/create",
            &json!({"source_url": "a", "target_url": "b", "resolution": "huge"}),
        )
        .await;
    assert_eq!(status, 422, "{e}");
    assert_eq!(e["error"]["code"], "invalid_input");
    assert!(
        e["error"]["message"]
            .as_str()
            .unwrap()
            .contains("resolution")
    );
    let (status, e) = s
        .post(
            "/api/faceswap/create",
            &json!({"source_url": "a", "target_url": "b", "media_type": "audio"}),
        )
        .await;
    assert_eq!(status, 400, "{e}");
    // Pixel boost choices depend on the model, checked at submit.
    let (status, e) = s
        .post(
            "/api/tasks",
            &json!({"type": "facefusion.faceswap", "input": {
                "source_url": "a", "target_url": "b",
                "face_swapper_model": "simswap_unofficial_512", "face_swapper_pixel_boost": "256x256"}}),
        )
        .await;
    assert_eq!(status, 422, "{e}");
}

#[tokio::test]
async fn video_swap_reports_progress_in_order() {
    let ck = checkout();
    let s = server(ck.path(), "", &[("FACEFUSION_STANDIN_FRAME_DELAY", "0.1")]).await;
    let (source, _) = upload_png(&s, 32, 32, "face.png").await;
    let (target, target_path) = upload_video(&s, 3, "testsrc", "clip.mp4").await;
    let t = s
        .create(
            "facefusion.faceswap",
            json!({"source_url": source["url"], "target_url": target["key"], "resolution": "128x96"}),
        )
        .await;
    let id = t["task_id"].as_str().unwrap();
    let events = s.events(id, Duration::from_secs(60)).await;
    let last = events.last().expect("events");
    assert_eq!(last["status"], "COMPLETED", "{last}\n{}", s.log());
    let progress: Vec<(f64, String)> = events
        .iter()
        .filter(|e| e["event"] == "progress")
        .map(|e| {
            (
                e["progress"]["percent"].as_f64().unwrap(),
                e["progress"]["message"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    assert!(
        progress.windows(2).all(|w| w[0].0 <= w[1].0),
        "{progress:?}"
    );
    assert!(
        progress
            .iter()
            .any(|(p, m)| m.starts_with("processing ") && m.ends_with("/30 frames") && *p > 30.0),
        "{progress:?}"
    );
    let result = &last["task"]["result"];
    assert_eq!(result["scale"], 2.0, "{result}");
    assert_eq!(result["media_type"], "video");
    let out = &result["outputs"][0];
    assert_eq!(out["content_type"], "video/mp4");
    let bytes = s.download(out["url"].as_str().unwrap()).await;
    assert_eq!(bytes, std::fs::read(&target_path).unwrap());
}

#[tokio::test]
async fn each_failure_class_has_its_code() {
    let ck = checkout();
    // (scenario, video target?, expected code)
    let cases = [
        ("models_missing", false, "model_unavailable"),
        ("model_corrupt", false, "model_unavailable"),
        ("model_load_failed", true, "model_unavailable"),
        ("no_source_face", false, "no_source_face"),
        ("content_declined", false, "content_rejected"),
        ("content_declined", true, "content_rejected"),
        ("interrupted", true, "content_rejected"),
        ("ffmpeg_missing", false, "engine_misconfigured"),
        ("traceback", false, "engine_error"),
    ];
    for (scenario, video, code) in cases {
        let s = server(ck.path(), "", &[("FACEFUSION_STANDIN_SCENARIO", scenario)]).await;
        let (source, _) = upload_png(&s, 32, 32, "face.png").await;
        let (target, _) = if video {
            upload_video(&s, 1, "testsrc", "clip.mp4").await
        } else {
            upload_png(&s, 40, 30, "photo.png").await
        };
        let (status, t) = s
            .post(
                "/api/tasks?wait=60",
                &json!({"type": "facefusion.faceswap", "input": faceswap(&source, &target), "max_attempts": 1}),
            )
            .await;
        assert_eq!(status, 200, "{scenario}: {t}");
        assert_eq!(t["status"], "FAILED", "{scenario}: {t}");
        assert_eq!(t["error"]["code"], code, "{scenario}: {t}");
        assert!(!t["error"]["message"].as_str().unwrap().is_empty());
        let left = work_dir_left(&s).await;
        assert!(left.is_empty(), "{scenario}: {left:?}");
    }

    // A flag FaceFusion 3.8 no longer knows (removed in 3.1): argparse error, exit 2.
    let s = server(ck.path(), r#"extra_args = ["--skip-download"]"#, &[]).await;
    let (source, _) = upload_png(&s, 32, 32, "face.png").await;
    let (target, _) = upload_png(&s, 40, 30, "photo.png").await;
    let (_, t) = s
        .post(
            "/api/tasks?wait=60",
            &json!({"type": "facefusion.faceswap", "input": faceswap(&source, &target)}),
        )
        .await;
    assert_eq!(t["error"]["code"], "engine_misconfigured", "{t}");
    assert_eq!(
        t["attempts"], 1,
        "a configuration error is not retried: {t}"
    );
    assert!(
        t["error"]["message"]
            .as_str()
            .unwrap()
            .contains("unrecognized arguments: --skip-download"),
        "{t}"
    );

    // Failures found before FaceFusion runs: a target that is neither image nor video, and a
    // media_type that disagrees with the target.
    let s = server(ck.path(), "", &[]).await;
    let (source, _) = upload_png(&s, 32, 32, "face.png").await;
    let junk = s.dir.path().join("notes.txt");
    std::fs::write(&junk, "not a picture").unwrap();
    let junk = s
        .upload(
            "notes.txt",
            std::fs::read(&junk).unwrap(),
            Some("text/plain"),
        )
        .await;
    let (_, t) = s
        .post(
            "/api/tasks?wait=60",
            &json!({"type": "facefusion.faceswap", "input": faceswap(&source, &junk)}),
        )
        .await;
    assert_eq!(t["error"]["code"], "invalid_target", "{t}");
    let (target, _) = upload_png(&s, 40, 30, "photo.png").await;
    let (_, t) = s
        .post(
            "/api/faceswap/create?wait=60",
            &json!({"source_url": source["key"], "target_url": target["key"], "media_type": "video"}),
        )
        .await;
    assert_eq!(t["error"]["code"], "invalid_input", "{t}");
    assert!(
        t["error"]["message"]
            .as_str()
            .unwrap()
            .contains("media_type")
    );
}

#[tokio::test]
async fn loads_without_facefusion_and_health_says_what_is_missing() {
    let empty = tempfile::tempdir().unwrap();
    let s = server(empty.path(), "", &[]).await;
    let (status, plugins) = s.get("/api/plugins").await;
    assert_eq!(status, 200);
    assert!(
        plugins.to_string().contains("facefusion.faceswap"),
        "{plugins}"
    );
    let (_, st) = s.get("/api/status").await;
    let text = st.to_string();
    assert!(text.contains("FaceFusion is not installed"), "{st}");
    assert!(text.contains("FACEFUSION_DIR"), "{st}");
    let (source, _) = upload_png(&s, 32, 32, "face.png").await;
    let (target, _) = upload_png(&s, 40, 30, "photo.png").await;
    let (_, t) = s
        .post(
            "/api/faceswap/create?wait=30",
            &json!({"source_url": source["key"], "target_url": target["key"]}),
        )
        .await;
    assert_eq!(t["status"], "FAILED", "{t}");
    assert_eq!(t["error"]["code"], "engine_unavailable", "{t}");
}

#[tokio::test]
async fn cancel_mid_run_stops_the_whole_process_group() {
    let ck = checkout();
    let s = server(ck.path(), "", &[("FACEFUSION_STANDIN_FRAME_DELAY", "0.5")]).await;
    let (source, _) = upload_png(&s, 32, 32, "face.png").await;
    let (target, _) = upload_video(&s, 6, "testsrc", "clip.mp4").await;
    let t = s
        .create("facefusion.faceswap", faceswap(&source, &target))
        .await;
    let id = t["task_id"].as_str().unwrap().to_owned();
    wait_for(
        "FaceFusion processes frames",
        Duration::from_secs(30),
        async || {
            let (_, t) = s.get(&format!("/api/tasks/{id}")).await;
            let message = t["progress"]["message"].as_str();
            if message.is_some_and(|m| m.starts_with("processing ")) {
                Ok(())
            } else {
                Err(t)
            }
        },
    )
    .await;
    let needle = engine_needle(&s);
    let running = processes_mentioning(&needle);
    // The stand-in and its helper child (standing for ffmpeg) are both there.
    assert!(running.len() >= 2, "{running:?}");
    assert!(
        running
            .iter()
            .any(|(_, c)| c.contains("facefusion-standin-helper")),
        "{running:?}"
    );
    let (status, _) = s.post(&format!("/api/tasks/{id}/cancel"), &json!({})).await;
    assert_eq!(status, 202);
    let t = s.wait_done(&id, Duration::from_secs(30)).await;
    assert_eq!(t["status"], "CANCELLED", "{t}");
    let left = wait_no_processes(&needle).await;
    assert!(left.is_empty(), "processes left: {left:?}");
    let left = work_dir_left(&s).await;
    assert!(left.is_empty(), "{left:?}");
}

#[tokio::test]
async fn timeout_stops_the_run_and_fails_with_timeout() {
    let ck = checkout();
    let s = server(
        ck.path(),
        "timeout_secs = 2\nkill_grace_secs = 1",
        &[("FACEFUSION_STANDIN_FRAME_DELAY", "0.5")],
    )
    .await;
    let (source, _) = upload_png(&s, 32, 32, "face.png").await;
    let (target, _) = upload_video(&s, 6, "testsrc", "clip.mp4").await;
    let t = s
        .create("facefusion.faceswap", faceswap(&source, &target))
        .await;
    let id = t["task_id"].as_str().unwrap();
    let t = s.wait_done(id, Duration::from_secs(60)).await;
    assert_eq!(t["status"], "FAILED", "{t}");
    assert_eq!(t["error"]["code"], "timeout", "{t}");
    assert_eq!(t["attempts"], 1, "a timeout is not retried: {t}");
    let left = wait_no_processes(&engine_needle(&s)).await;
    assert!(left.is_empty(), "processes left: {left:?}");
}

#[tokio::test]
async fn concurrent_jobs_with_the_same_target_name_do_not_collide() {
    let ck = checkout();
    let s = server(
        ck.path(),
        "concurrency = 2",
        &[("FACEFUSION_STANDIN_FRAME_DELAY", "0.05")],
    )
    .await;
    let (source, _) = upload_png(&s, 32, 32, "face.png").await;
    // Two different videos, both called clip.mp4.
    let (a, a_path) = upload_video(&s, 3, "testsrc", "clip.mp4").await;
    let (b, b_path) = upload_video(&s, 3, "smptebars", "clip.mp4").await;
    assert_ne!(
        std::fs::read(&a_path).unwrap(),
        std::fs::read(&b_path).unwrap()
    );
    let ta = s.create("facefusion.faceswap", faceswap(&source, &a)).await;
    let tb = s.create("facefusion.faceswap", faceswap(&source, &b)).await;
    let ta = s
        .wait_done(ta["task_id"].as_str().unwrap(), Duration::from_secs(60))
        .await;
    let tb = s
        .wait_done(tb["task_id"].as_str().unwrap(), Duration::from_secs(60))
        .await;
    assert_eq!(ta["status"], "COMPLETED", "{ta}\n{}", s.log());
    assert_eq!(tb["status"], "COMPLETED", "{tb}");
    // They ran at the same time (each started before the other finished).
    assert!(
        secs(&ta["started_at"]) < secs(&tb["finished_at"]),
        "{ta}\n{tb}"
    );
    assert!(
        secs(&tb["started_at"]) < secs(&ta["finished_at"]),
        "{ta}\n{tb}"
    );
    for (t, path) in [(&ta, &a_path), (&tb, &b_path)] {
        let url = t["result"]["outputs"][0]["url"].as_str().unwrap();
        assert_eq!(s.download(url).await, std::fs::read(path).unwrap());
    }
}

#[tokio::test]
async fn a_killed_host_takes_the_engine_with_it() {
    let ck = checkout();
    // Quiet (`--log-level warn` hides the bars): an engine that writes nothing would not
    // notice its closed stderr pipe, so only the parent-death signal can stop it.
    let mut s = server(
        ck.path(),
        r#"extra_args = ["--log-level", "warn"]"#,
        &[("FACEFUSION_STANDIN_FRAME_DELAY", "0.5")],
    )
    .await;
    let (source, _) = upload_png(&s, 32, 32, "face.png").await;
    let (target, _) = upload_video(&s, 6, "testsrc", "clip.mp4").await;
    let t = s
        .create("facefusion.faceswap", faceswap(&source, &target))
        .await;
    let id = t["task_id"].as_str().unwrap().to_owned();
    s.wait_status(&id, "PROCESSING", Duration::from_secs(30))
        .await;
    let needle = engine_needle(&s);
    wait_until("FaceFusion runs", Duration::from_secs(30), async || {
        processes_mentioning(&needle)
            .iter()
            .any(|(_, c)| c.contains("facefusion.py"))
    })
    .await;
    s.kill9();
    // The engine itself goes with the host (parent-death signal). A grandchild that ignores
    // its closed pipes (the stand-in's helper sleeps on purpose) is out of reach once the host
    // is gone; real ffmpeg exits when its input pipe closes. Remove the helper here.
    let engine_left = none_left(Duration::from_secs(20), || {
        processes_mentioning(&needle)
            .into_iter()
            .filter(|(_, c)| c.contains("facefusion.py"))
            .collect()
    })
    .await;
    for (pid, cmd) in processes_mentioning(&needle) {
        if cmd.contains("facefusion-standin-helper") {
            let _ = Command::new("kill")
                .arg("-KILL")
                .arg(pid.to_string())
                .status();
        }
    }
    assert!(engine_left.is_empty(), "left: {engine_left:?}");
}

/// The seed's face-swap options sent to `POST /api/faceswap/create` reach FaceFusion as its
/// flags (read from the running engine's command line), and a bad combination is refused at
/// submit.
#[tokio::test]
async fn seed_options_become_facefusion_flags() {
    let ck = checkout();
    std::fs::create_dir_all(
        ck.path()
            .join("facefusion/processors/modules/face_enhancer"),
    )
    .unwrap();
    let s = server(ck.path(), "", &[("FACEFUSION_STANDIN_FRAME_DELAY", "0.1")]).await;
    let (source, _) = upload_png(&s, 32, 32, "face.png").await;
    let (target, _) = upload_video(&s, 3, "testsrc", "clip.mp4").await;
    let (status, t) = s
        .post(
            "/api/faceswap/create",
            &json!({
                "source_url": source["key"],
                "target_url": target["key"],
                "media_type": "video",
                "face_swapper_model": "inswapper_128",
                "pixel_boost": "512x512",
                "face_enhancer_model": "codeformer",
                "face_enhancer_blend": 55,
                "face_selector_mode": "one",
                "output_video_preset": "ultrafast",
            }),
        )
        .await;
    assert_eq!(status, 202, "{t}");
    let id = t["task_id"].as_str().unwrap().to_owned();
    let needle = engine_needle(&s);
    let cmd =
        wait_for(
            "the engine runs",
            Duration::from_secs(30),
            async || match processes_mentioning(&needle)
                .into_iter()
                .find(|(_, c)| c.contains("facefusion.py"))
            {
                Some((_, c)) => Ok(c),
                None => Err("no engine process yet".to_owned()),
            },
        )
        .await;
    for flag in [
        "--face-swapper-model inswapper_128",
        "--face-swapper-pixel-boost 512x512",
        "--face-enhancer-model codeformer",
        "--face-enhancer-blend 55",
        "--face-selector-mode one",
        "--output-video-preset ultrafast",
        "face_enhancer",
    ] {
        assert!(cmd.contains(flag), "{flag} not in {cmd}");
    }
    let done = s.wait_done(&id, Duration::from_secs(60)).await;
    assert_eq!(done["status"], "COMPLETED", "{done}\n{}", s.log());
    assert_eq!(
        done["input"]["face_swapper_pixel_boost"], "512x512",
        "{done}"
    );

    // A pixel boost the model does not offer is refused at submit (the option was forwarded).
    let (status, e) = s
        .post(
            "/api/faceswap/create",
            &json!({"source_url": "a", "target_url": "b",
                    "face_swapper_model": "simswap_unofficial_512", "pixel_boost": "256x256"}),
        )
        .await;
    assert_eq!(
        (status, e["error"]["code"].as_str()),
        (422, Some("invalid_input")),
        "{e}"
    );
}

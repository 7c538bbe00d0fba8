//! What a deployment relies on, through the real binary: `.env` in the working directory
//! (loaded, never overriding the real environment, refused when malformed) and a machine or
//! image without CA certificates (named in one line at start, with the fix); the ComfyUI
//! worker image's plugin configuration, run against the fake ComfyUI.

use std::{path::Path, process::Command, time::Duration};

use aihost_tests::{Options, Server, aihost_bin, free_port, plugin_lib, wait_for, workflows_dir};
use serde_json::json;

/// Runs `aihost ARGS` in `dir` with extra environment; answers (exit code, stdout, stderr).
fn aihost(dir: &Path, args: &[&str], env: &[(&str, &str)]) -> (i32, String, String) {
    let mut cmd = Command::new(aihost_bin());
    cmd.args(args).current_dir(dir);
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = cmd.output().expect("run aihost");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn dotenv_is_loaded_and_the_real_environment_wins() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join(".env"),
        "# comments and blank lines are fine\n\n\
         AIHOST_QUEUE__LEASE_SECS=77\n\
         AIHOST_DISPATCHER__DEFAULT_CONCURRENCY=5\n\
         export AIHOST_SERVER__MAX_QUEUE_DEPTH=\"123\"\n",
    )
    .unwrap();
    let (code, out, err) = aihost(
        dir.path(),
        &["config", "check"],
        &[("AIHOST_QUEUE__LEASE_SECS", "88")],
    );
    assert_eq!(code, 0, "{err}");
    assert!(
        out.contains("lease_secs = 88"),
        "the real variable wins:\n{out}"
    );
    assert!(out.contains("default_concurrency = 5"), "{out}");
    assert!(out.contains("max_queue_depth = 123"), "{out}");
}

#[test]
fn a_malformed_dotenv_is_refused_with_its_line() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join(".env"),
        "AIHOST_QUEUE__LEASE_SECS=5\nthis line is not an assignment\n",
    )
    .unwrap();
    let (code, _, err) = aihost(dir.path(), &["config", "check"], &[]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("dotenv_invalid"), "{err}");
    assert!(err.contains(".env"), "{err}");
    assert_eq!(err.trim().lines().count(), 1, "one line: {err}");
}

#[test]
fn no_ca_certificates_is_named_at_start() {
    let dir = tempfile::tempdir().unwrap();
    let (code, _, err) = aihost(
        dir.path(),
        &["serve"],
        &[
            ("SSL_CERT_FILE", "/nonexistent/ca.pem"),
            ("SSL_CERT_DIR", "/nonexistent/certs"),
            ("AIHOST_SERVER__BIND", "127.0.0.1:0"),
        ],
    );
    assert_ne!(code, 0, "{err}");
    let last = err.trim().lines().last().unwrap_or_default();
    assert!(last.contains("tls_roots_missing"), "{err}");
    assert!(last.contains("ca-certificates"), "{err}");
}

/// `aihost health` (the image's HEALTHCHECK): 0 against a running service, found from its
/// config or given as a URL; 1 with its code when nothing answers.
#[tokio::test]
async fn health_command_probes_a_running_service() {
    let s = aihost_tests::Server::start().await;
    let config = s.dir.path().join("aihost.toml");
    let (code, out, err) = aihost(
        s.dir.path(),
        &["--config", config.to_str().unwrap(), "health"],
        &[],
    );
    assert_eq!(code, 0, "{err}");
    assert!(out.starts_with("ok: http://127.0.0.1:"), "{out}");
    let (code, _, err) = aihost(s.dir.path(), &["health", "--url", &s.base], &[]);
    assert_eq!(code, 0, "{err}");

    let closed = format!("http://127.0.0.1:{}", aihost_tests::free_port());
    let (code, _, err) = aihost(s.dir.path(), &["health", "--url", &closed], &[]);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("health_check_failed"), "{err}");
}

/// Replaces `from` (which must be there) by `to` in `text`.
fn swap(text: &str, from: &str, to: &str) -> String {
    assert!(text.contains(from), "{from:?} is not in the file any more");
    text.replace(from, to)
}

/// The ComfyUI worker image's plugin configuration (`docker/plugins-comfyui.toml`, with
/// `docker/models.toml`) is accepted by the comfyui plugin as it is, and supervises an
/// instance: the image's paths and its ComfyUI command are swapped for a temporary folder and
/// the fake ComfyUI, everything else (keys, idle and stall settings, the manifest file) is the
/// file's. The image's `--cpu` step edits the command where the file has it.
#[tokio::test]
async fn the_comfyui_image_configuration_supervises_an_instance() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let file = std::fs::read_to_string(root.join("docker/plugins-comfyui.toml")).unwrap();
    let dockerfile = std::fs::read_to_string(root.join("docker/Dockerfile.comfyui")).unwrap();
    assert!(
        dockerfile
            .contains(r#"sed -i 's/"--listen"/"--cpu", "--listen"/' /etc/aihost/plugins.toml"#)
            && file.contains(r#""main.py", "--listen""#),
        "the image's --cpu edit no longer matches docker/plugins-comfyui.toml"
    );
    let (_, cfg) = file
        .split_once("[plugin.config]\n")
        .expect("the comfyui plugin's [plugin.config]");
    let dir = tempfile::tempdir().unwrap();
    let models = dir.path().join("models.toml");
    std::fs::copy(root.join("docker/models.toml"), &models).unwrap();
    let data = dir.path().join("comfyui");
    std::fs::create_dir_all(&data).unwrap();
    let port = free_port();
    let mut cfg = swap(
        cfg,
        "\"/opt/aihost/workflows\"",
        &format!("{:?}", workflows_dir()),
    );
    cfg = swap(
        &cfg,
        "\"/etc/aihost/models.toml\"",
        &format!("{:?}", models.display().to_string()),
    );
    cfg = swap(
        &cfg,
        "http://127.0.0.1:8188",
        &format!("http://127.0.0.1:{port}"),
    );
    cfg = swap(
        &cfg,
        r#"["/opt/comfyui/venv/bin/python", "main.py", "--listen", "127.0.0.1", "--port", "{port}", "--base-directory", "/var/lib/aihost/comfyui"]"#,
        &format!(
            r#"[{:?}, "--port", "{{port}}", "--dir", "."]"#,
            env!("CARGO_BIN_EXE_fake-comfyui")
        ),
    );
    cfg = swap(
        &cfg,
        "\"/opt/comfyui\"",
        &format!("{:?}", data.display().to_string()),
    );
    cfg = swap(
        &cfg,
        "\"/var/lib/aihost/comfyui",
        &format!("\"{}", data.display()),
    );
    let s = Server::start_with(Options {
        plugins: vec![("comfyui".into(), plugin_lib("aihost_comfyui"), cfg)],
        ..Options::default()
    })
    .await;
    let pid = wait_for(
        "the image's configuration starts ComfyUI",
        Duration::from_secs(60),
        async || {
            let (_, st) = s.get("/api/status").await;
            let i = &st["plugins"]["comfyui"]["instances"][0];
            match i["supervised"]["pid"].as_u64() {
                Some(pid) if i["supervised"]["phase"] == "running" => Ok(pid),
                _ => Err(st.to_string()),
            }
        },
    )
    .await;
    let t = s
        .run(
            "comfyui.workflow",
            json!({"workflow": "solid_color", "params": {"width": 8, "height": 8, "color": 1}}),
            Duration::from_secs(60),
        )
        .await;
    assert_eq!(t["status"], "COMPLETED", "{t}");
    assert!(pid > 0);
    // The image's data volume starts empty: the plugin made what ComfyUI needs to start.
    for sub in ["custom_nodes", "models", "input", "output"] {
        assert!(data.join(sub).is_dir(), "{sub}/ was not made");
    }
}

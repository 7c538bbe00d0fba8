//! The command-line client (`aihost submit`, `aihost run`, `aihost tasks ...`) against a real
//! `aihost serve` with the imageops and testkit plugins: uploads, waiting, downloads, the exit
//! codes of each final status and of each kind of error, retry, and API keys.

use std::{
    path::Path,
    process::{Command, Stdio},
    time::Duration,
};

use aihost_tests::{Options, Server, aihost_bin, write_png};
use serde_json::{Value, json};

const LONG: Duration = Duration::from_secs(60);

/// Runs `aihost ARGS` in `cwd` with `env` (and no inherited `AIHOST_API_KEY`); answers (exit
/// code, stdout, stderr).
fn client(args: &[&str], cwd: &Path, env: &[(&str, &str)]) -> (i32, String, String) {
    let mut cmd = Command::new(aihost_bin());
    cmd.args(args).current_dir(cwd).env_remove("AIHOST_API_KEY");
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

fn task_of(stdout: &str) -> Value {
    serde_json::from_str(stdout).unwrap_or_else(|e| panic!("stdout is not a task: {e}\n{stdout}"))
}

/// `submit --upload --wait --out` uploads the file, follows the task, leaves the output in the
/// folder, prints the COMPLETED task and exits 0; without `--url` it finds the service from
/// the local config.
#[tokio::test]
async fn submit_uploads_waits_and_downloads() {
    let server = Server::start().await;
    let work = tempfile::tempdir().unwrap();
    let png = work.path().join("in.png");
    write_png(&png, 40, 30);
    let out_dir = work.path().join("out");
    let input = r#"{"operations": [{"op": "resize", "width": 20}], "format": "png"}"#;
    let (code, stdout, stderr) = client(
        &[
            "submit",
            "imageops.transform",
            "--input",
            input,
            "--upload",
            &format!("source={}", png.display()),
            "--wait",
            "--out",
            out_dir.to_str().unwrap(),
            "--url",
            &server.base,
        ],
        work.path(),
        &[],
    );
    assert_eq!(code, 0, "stdout:\n{stdout}\nstderr:\n{stderr}");
    let task = task_of(&stdout);
    assert_eq!(task["status"], "COMPLETED");
    assert!(
        task["input"]["source"]
            .as_str()
            .unwrap()
            .starts_with("uploads/"),
        "{task}"
    );
    assert!(stderr.contains("uploaded"), "{stderr}");
    let img = image::open(out_dir.join("output.png")).expect("the output is a PNG");
    assert_eq!((img.width(), img.height()), (20, 15));
    // Not a terminal: plain progress lines, one per event, the last one the final state.
    assert!(stderr.contains("completed COMPLETED"), "{stderr}");

    // The same from the server's folder, without --url: the config's bind is used; --input
    // from a file.
    let file = server.dir.path().join("input.json");
    let key = task["input"]["source"].as_str().unwrap();
    std::fs::write(
        &file,
        json!({"source": key, "operations": [{"op": "grayscale"}]}).to_string(),
    )
    .unwrap();
    let (code, stdout, stderr) = client(
        &[
            "submit",
            "imageops.transform",
            "--input",
            "@input.json",
            "--wait",
        ],
        server.dir.path(),
        &[],
    );
    assert_eq!(code, 0, "{stdout}\n{stderr}");
    assert_eq!(task_of(&stdout)["status"], "COMPLETED");
}

/// A FAILED task exits 1 with its error code on stderr; `tasks retry --wait` runs it again as
/// the next attempt and exits 0 once it completes.
#[tokio::test]
async fn failed_exits_1_and_retry_completes() {
    let server = Server::start().await;
    let dir = server.dir.path();
    let (code, stdout, stderr) = client(
        &[
            "submit",
            "testkit.run",
            "--input",
            r#"{"mode": "fail", "fail_times": 1, "code": "engine_error"}"#,
            "--max-attempts",
            "1",
            "--wait",
            "--url",
            &server.base,
        ],
        dir,
        &[],
    );
    assert_eq!(code, 1, "{stdout}\n{stderr}");
    let task = task_of(&stdout);
    assert_eq!(task["status"], "FAILED");
    assert!(stderr.contains("[engine_error]"), "{stderr}");
    let id = task["task_id"].as_str().unwrap();

    let (code, stdout, stderr) = client(
        &["tasks", "retry", id, "--wait", "--url", &server.base],
        dir,
        &[],
    );
    assert_eq!(code, 0, "{stdout}\n{stderr}");
    let task = task_of(&stdout);
    assert_eq!(task["status"], "COMPLETED");
    assert_eq!(task["attempts"], 2);
    assert_eq!(task["result"]["attempt"], 2);

    // Retrying a COMPLETED task is refused by the service: exit 6 with its code.
    let (code, _, stderr) = client(&["tasks", "retry", id, "--url", &server.base], dir, &[]);
    assert_eq!(code, 6, "{stderr}");
    assert!(stderr.contains("task_not_retryable"), "{stderr}");

    // `tasks list` and `tasks show` see it.
    let (code, stdout, _) = client(
        &[
            "tasks",
            "list",
            "--type",
            "testkit.run",
            "--url",
            &server.base,
        ],
        dir,
        &[],
    );
    assert_eq!(code, 0);
    assert!(
        stdout.contains(id) && stdout.contains("COMPLETED"),
        "{stdout}"
    );
    let (code, stdout, _) = client(&["tasks", "show", id, "--url", &server.base], dir, &[]);
    assert_eq!(code, 0);
    assert_eq!(task_of(&stdout)["task_id"], id);
    let (code, _, stderr) = client(&["tasks", "delete", id, "--url", &server.base], dir, &[]);
    assert_eq!(code, 0, "{stderr}");
    let (code, _, stderr) = client(&["tasks", "show", id, "--url", &server.base], dir, &[]);
    assert_eq!(code, 6);
    assert!(stderr.contains("task_not_found"), "{stderr}");
}

/// A task cancelled while `tasks watch` follows it makes the watcher exit 3.
#[tokio::test]
async fn cancelled_exits_3() {
    let server = Server::start().await;
    let task = server
        .create("testkit.run", json!({"mode": "ok", "ms": 60_000}))
        .await;
    let id = task["task_id"].as_str().unwrap().to_owned();
    server.wait_status(&id, "PROCESSING", LONG).await;
    let watcher = Command::new(aihost_bin())
        .args(["tasks", "watch", &id, "--url", &server.base])
        .current_dir(server.dir.path())
        .env_remove("AIHOST_API_KEY")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // The watcher is following once its first event line is out; cancelling earlier would
    // still end in CANCELLED (the first event would be the final state), so no wait is needed
    // for correctness.
    let (status, _) = server
        .post(&format!("/api/tasks/{id}/cancel"), &json!({}))
        .await;
    assert!(status == 200 || status == 202, "{status}");
    let out = tokio::task::spawn_blocking(move || watcher.wait_with_output().unwrap())
        .await
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(3), "{stderr}");
    assert_eq!(
        task_of(&String::from_utf8_lossy(&out.stdout))["status"],
        "CANCELLED"
    );
    assert!(stderr.contains("was cancelled"), "{stderr}");
}

/// Bad input, an unknown type, a missing file and an unreachable service each give a clear
/// message with a code and their own exit code.
#[tokio::test]
async fn errors_have_clear_messages_and_codes() {
    let server = Server::start().await;
    let dir = server.dir.path();
    let url = server.base.as_str();
    let (code, _, stderr) = client(
        &["submit", "testkit.run", "--input", "{nope", "--url", url],
        dir,
        &[],
    );
    assert_eq!(code, 2, "{stderr}");
    assert!(
        stderr.contains("--input is not valid JSON") && stderr.contains("[client_usage]"),
        "{stderr}"
    );
    let (code, _, stderr) = client(
        &[
            "submit",
            "testkit.run",
            "--upload",
            "source=/no/such/file.png",
            "--url",
            url,
        ],
        dir,
        &[],
    );
    assert_eq!(code, 2, "{stderr}");
    assert!(stderr.contains("cannot read /no/such/file.png"), "{stderr}");
    let (code, _, stderr) = client(
        &["submit", "no.such.type", "--input", "{}", "--url", url],
        dir,
        &[],
    );
    assert_eq!(code, 6, "{stderr}");
    assert!(
        stderr.contains("unknown_task_type") && stderr.contains("HTTP 422"),
        "{stderr}"
    );
    let (code, _, stderr) = client(
        &[
            "submit",
            "testkit.run",
            "--input",
            r#"{"mode": 7}"#,
            "--url",
            url,
        ],
        dir,
        &[],
    );
    assert_eq!(code, 6, "{stderr}");
    assert!(stderr.contains("invalid_input"), "{stderr}");
    let closed = format!("http://127.0.0.1:{}", aihost_tests::free_port());
    let (code, _, stderr) = client(&["tasks", "list", "--url", &closed], dir, &[]);
    assert_eq!(code, 5, "{stderr}");
    assert!(stderr.contains("[client_unreachable]"), "{stderr}");
    let (code, _, stderr) = client(&["tasks", "list", "--url", "ftp://x"], dir, &[]);
    assert_eq!(code, 2, "{stderr}");
}

/// With API keys on, `AIHOST_API_KEY` (or `--api-key`) is sent; without it the service's 401
/// is reported with exit 6.
#[tokio::test]
async fn api_keys_are_sent() {
    let server = Server::start_with(Options {
        env: vec![("AIHOST_SERVER__API_KEYS".into(), "cli-key".into())],
        ..Options::default()
    })
    .await;
    let dir = server.dir.path();
    let url = server.base.as_str();
    let args = [
        "submit",
        "testkit.run",
        "--input",
        r#"{"mode": "progress", "steps": 3}"#,
        "--wait",
        "--url",
        url,
    ];
    let (code, _, stderr) = client(&args, dir, &[]);
    assert_eq!(code, 6, "{stderr}");
    assert!(stderr.contains("unauthorized"), "{stderr}");
    let (code, stdout, stderr) = client(&args, dir, &[("AIHOST_API_KEY", "cli-key")]);
    assert_eq!(code, 0, "{stderr}");
    let task = task_of(&stdout);
    assert_eq!(task["status"], "COMPLETED");
    assert_eq!(task["result"]["steps"], 3);
    let id = task["task_id"].as_str().unwrap();
    let (code, stdout, _) = client(
        &["tasks", "show", id, "--url", url, "--api-key", "cli-key"],
        dir,
        &[],
    );
    assert_eq!(code, 0);
    assert_eq!(task_of(&stdout)["status"], "COMPLETED");
}

/// `run WORKFLOW --param k=v` fills a template (values parsed as JSON where they are, e.g.
/// numbers), follows the task and downloads its output, against the fake ComfyUI; an unknown
/// template or a parameter outside its schema is refused with exit code 6 and the service's
/// error code. The client runs on a blocking thread: the fake serves from this test's runtime.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_fills_a_template_waits_and_downloads() {
    let fake = aihost_tests::fake_comfyui::FakeComfy::start().await;
    let cfg = format!(
        "urls = [{:?}]\nworkflows_dir = {:?}\nhistory_poll_ms = 200\n",
        fake.url,
        aihost_tests::workflows_dir()
    );
    let server = Server::start_with(Options {
        plugins: vec![(
            "comfyui".into(),
            aihost_tests::plugin_lib("aihost_comfyui"),
            cfg,
        )],
        ..Options::default()
    })
    .await;
    let work = tempfile::tempdir().unwrap();
    let out_dir = work.path().join("out");
    let run = |args: Vec<String>| {
        let cwd = work.path().to_owned();
        tokio::task::spawn_blocking(move || {
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            client(&args, &cwd, &[])
        })
    };
    let args = |extra: &[&str]| -> Vec<String> {
        let mut a: Vec<String> = ["run", "solid_color", "--url", &server.base]
            .iter()
            .map(|s| (*s).to_owned())
            .collect();
        a.extend(extra.iter().map(|s| (*s).to_owned()));
        a
    };
    let (code, stdout, stderr) = run(args(&[
        "--param",
        "width=24",
        "--param",
        "height=16",
        "--wait",
        "--out",
        out_dir.to_str().unwrap(),
    ]))
    .await
    .unwrap();
    assert_eq!(code, 0, "stdout:\n{stdout}\nstderr:\n{stderr}");
    let task = task_of(&stdout);
    assert_eq!(task["status"], "COMPLETED", "{task}");
    assert_eq!(task["input"]["workflow"], "solid_color", "{task}");
    assert_eq!(task["input"]["params"]["width"], 24, "{task}");
    let name = task["result"]["files"][0]["name"].as_str().unwrap();
    let img = image::open(out_dir.join(name)).expect("the output is in --out");
    assert_eq!((img.width(), img.height()), (24, 16));

    // A parameter outside the template's schema, and an unknown template.
    let (code, _, stderr) = run(args(&["--param", "width=0"])).await.unwrap();
    assert_eq!(code, 6, "{stderr}");
    assert!(stderr.contains("invalid_input"), "{stderr}");
    let mut unknown = args(&[]);
    unknown[1] = "no_such_template".into();
    let (code, _, stderr) = run(unknown).await.unwrap();
    assert_eq!(code, 6, "{stderr}");
    assert!(
        stderr.contains("not_found") || stderr.contains("unknown"),
        "{stderr}"
    );
}

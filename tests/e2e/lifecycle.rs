//! Task and data lifecycle through the real binary: `DELETE /api/tasks/{id}` (finished, live,
//! unknown), the background pruner on SQLite and PostgreSQL (old finished tasks and their
//! outputs go, live and recent ones stay), and `aihost store prune [--dry-run]` with uploads.

use std::time::Duration;

use aihost_tests::{Options, Server, TestDatabase, run_cli, wait_for};
use serde_json::{Value, json};

const T: Duration = Duration::from_secs(30);

/// DELETE answers (status, body).
async fn delete(s: &Server, id: &str) -> (u16, Value) {
    let r = s
        .http
        .delete(s.url(&format!("/api/tasks/{id}")))
        .send()
        .await
        .unwrap();
    let status = r.status().as_u16();
    let text = r.text().await.unwrap();
    (status, serde_json::from_str(&text).unwrap_or(Value::Null))
}

/// The status of a GET of a full URL.
async fn get_status(s: &Server, url: &str) -> u16 {
    s.http.get(url).send().await.unwrap().status().as_u16()
}

/// The URL of a finished task's first output.
fn output_url(task: &Value) -> String {
    task["result"]["outputs"][0]["url"]
        .as_str()
        .unwrap_or_else(|| panic!("no output: {task}"))
        .to_owned()
}

/// Options with a `[retention]` section (periods in seconds: `day_secs = 1`).
fn retention(lines: &str, env: Vec<(String, String)>) -> Options {
    Options {
        extra_toml: format!("[retention]\nday_secs = 1\n{lines}\n"),
        env,
        ..Options::default()
    }
}

#[tokio::test]
async fn delete_finished_task_refuses_live_one() {
    let s = Server::start().await;
    let done = s.run("testkit.run", json!({"mode": "ok"}), T).await;
    assert_eq!(done["status"], "COMPLETED", "{done}");
    let id = done["task_id"].as_str().unwrap();
    let url = output_url(&done);
    assert_eq!(get_status(&s, &url).await, 200);

    let (status, body) = delete(&s, id).await;
    assert_eq!(status, 204, "{body}");
    let (status, _) = s.get(&format!("/api/tasks/{id}")).await;
    assert_eq!(status, 404);
    assert_eq!(get_status(&s, &url).await, 404, "its output file is gone");
    let (status, body) = delete(&s, id).await;
    assert_eq!(status, 404);
    assert_eq!(body["error"]["code"], "task_not_found");

    let running = s
        .create("testkit.run", json!({"mode": "ok", "ms": 20000}))
        .await;
    let running = running["task_id"].as_str().unwrap();
    s.wait_status(running, "PROCESSING", T).await;
    let (status, body) = delete(&s, running).await;
    assert_eq!(status, 409, "{body}");
    assert_eq!(body["error"]["code"], "task_live");
    let (status, task) = s.get(&format!("/api/tasks/{running}")).await;
    assert_eq!((status, task["status"].as_str()), (200, Some("PROCESSING")));

    let (_, stats) = s.get("/api/stats").await;
    assert_eq!(stats["deleted_since_start"], 1, "{stats}");

    // The route is in the OpenAPI document with its answers.
    let (_, spec) = s.get("/openapi.json").await;
    let op = &spec["paths"]["/api/tasks/{task_id}"]["delete"];
    for code in ["204", "404", "409"] {
        assert!(op["responses"].get(code).is_some(), "{code} in {op}");
    }
}

/// Old finished tasks and their outputs go; a running one, a failed one (kept forever) and a
/// recent completed one stay.
async fn background_pruning(env: Vec<(String, String)>) {
    let s = Server::start_with(retention(
        "completed_days = 3\nfailed_days = 0\ninterval_secs = 1",
        env,
    ))
    .await;
    let running = s
        .create("testkit.run", json!({"mode": "ok", "ms": 30000}))
        .await;
    let running = running["task_id"].as_str().unwrap().to_owned();
    let old = s.run("testkit.run", json!({"mode": "ok"}), T).await;
    let old_id = old["task_id"].as_str().unwrap().to_owned();
    let old_url = output_url(&old);
    let failed = s.run("testkit.run", json!({"mode": "fail"}), T).await;
    assert_eq!(failed["status"], "FAILED", "{failed}");
    let failed_id = failed["task_id"].as_str().unwrap();

    wait_for("the old completed task is pruned", T, async || {
        match s.get(&format!("/api/tasks/{old_id}")).await {
            (404, _) => Ok(()),
            (status, t) => Err(format!("{status} {}", t["status"])),
        }
    })
    .await;
    // The row goes first, then its output folder (in the same pass, a moment later).
    wait_for("its output is gone", T, async || {
        match get_status(&s, &old_url).await {
            404 => Ok(()),
            status => Err(status),
        }
    })
    .await;

    // A task that just finished is younger than its 3 s period.
    let recent = s.run("testkit.run", json!({"mode": "ok"}), T).await;
    let recent_id = recent["task_id"].as_str().unwrap();
    for id in [recent_id, failed_id, running.as_str()] {
        let (status, t) = s.get(&format!("/api/tasks/{id}")).await;
        assert_eq!(status, 200, "{id} kept: {t}");
    }
    assert_eq!(get_status(&s, &output_url(&recent)).await, 200);
    let (_, stats) = s.get("/api/stats").await;
    assert!(stats["deleted_since_start"].as_u64() >= Some(1), "{stats}");
    assert!(
        s.log().contains("retention pass deleted"),
        "one INFO line per pass that deleted: {}",
        s.log()
    );
}

#[tokio::test]
async fn background_pruning_sqlite() {
    background_pruning(Vec::new()).await;
}

#[tokio::test]
async fn background_pruning_postgres() {
    let db = TestDatabase::create().await;
    background_pruning(db.env()).await;
}

/// The `aihost store prune` lines: `STATUS: n` and `uploads: n`.
fn count(out: &str, what: &str) -> Option<u64> {
    out.lines()
        .find_map(|l| l.strip_prefix(&format!("{what}: ")))
        .and_then(|n| n.trim().parse().ok())
}

#[tokio::test]
async fn store_prune_dry_run_then_for_real() {
    // The background pass runs once at start (nothing to do), then not for an hour.
    let s = Server::start_with(retention(
        "completed_days = 1\nuploads_days = 1\ninterval_secs = 3600",
        Vec::new(),
    ))
    .await;
    let loose = s
        .upload("loose.png", aihost_tests::solid_png(4, 4, [1, 2, 3]), None)
        .await;
    let used = s
        .upload("used.png", aihost_tests::solid_png(4, 4, [4, 5, 6]), None)
        .await;
    let loose_url = loose["url"].as_str().unwrap();
    let used_url = used["url"].as_str().unwrap();
    // A running task names `used` in its input.
    let running = s
        .create(
            "testkit.run",
            json!({"mode": "ok", "ms": 30000, "url": used_url}),
        )
        .await;
    s.wait_status(running["task_id"].as_str().unwrap(), "PROCESSING", T)
        .await;
    let done = s.run("testkit.run", json!({"mode": "ok"}), T).await;
    let done_id = done["task_id"].as_str().unwrap();
    let done_url = output_url(&done);

    let config = s.dir.path().join("aihost.toml");
    let config = config.to_str().unwrap();
    let out = wait_for(
        "the dry run counts the expired task and upload",
        T,
        async || {
            let (code, out, err) = run_cli(
                &["--config", config, "store", "prune", "--dry-run"],
                s.dir.path(),
            );
            assert_eq!(code, 0, "{out}{err}");
            if count(&out, "COMPLETED") == Some(1) && count(&out, "uploads") == Some(1) {
                Ok(out)
            } else {
                Err(out)
            }
        },
    )
    .await;
    assert_eq!(count(&out, "FAILED"), Some(0), "{out}");
    // Nothing deleted.
    let (status, _) = s.get(&format!("/api/tasks/{done_id}")).await;
    assert_eq!(status, 200);
    assert_eq!(get_status(&s, &done_url).await, 200);
    assert_eq!(get_status(&s, loose_url).await, 200);

    let (code, out, err) = run_cli(&["--config", config, "store", "prune"], s.dir.path());
    assert_eq!(code, 0, "{out}{err}");
    assert_eq!(count(&out, "COMPLETED"), Some(1), "{out}");
    assert_eq!(count(&out, "output files"), Some(1), "{out}");
    assert_eq!(count(&out, "uploads"), Some(1), "{out}");
    let (status, _) = s.get(&format!("/api/tasks/{done_id}")).await;
    assert_eq!(status, 404);
    assert_eq!(get_status(&s, &done_url).await, 404);
    assert_eq!(
        get_status(&s, loose_url).await,
        404,
        "the unreferenced upload is gone"
    );
    assert_eq!(
        get_status(&s, used_url).await,
        200,
        "the referenced upload stays"
    );
}

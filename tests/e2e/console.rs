//! The web console in a real headless Chromium (see `support/browser.rs`) against a real
//! `aihost serve` with the imageops and testkit plugins: the overview loads; an imageops task
//! submitted from the generated form with a file upload completes and its output image loads;
//! a slow testkit task is cancelled from its page and a failed one retried, both followed live
//! over the task's event stream; the task list filters. The same again with API keys on, the
//! key typed into the console's prompt.
//!
//! With `AIHOST_CONSOLE_SCREENSHOTS=DIR`, the test without keys also saves the README's
//! screenshots (`docs/screenshots/`) there.

use std::time::Duration;

use aihost_tests::{Options, Server, browser::Browser, write_png};
use serde_json::{Value, json};

const WAIT: Duration = Duration::from_secs(60);

/// A request to the server with the key, if any.
async fn api(server: &Server, key: Option<&str>, method: &str, path: &str, body: Value) -> Value {
    let mut rb = match method {
        "GET" => server.http.get(server.url(path)),
        _ => server.http.post(server.url(path)).json(&body),
    };
    if let Some(k) = key {
        rb = rb.bearer_auth(k);
    }
    let r = rb.send().await.unwrap();
    assert!(r.status().is_success(), "{method} {path}: {}", r.status());
    r.json().await.unwrap()
}

async fn shot(browser: &Browser, key: Option<&str>, name: &str) {
    // From the test without keys only (both would write the same files).
    if key.is_none()
        && let Ok(dir) = std::env::var("AIHOST_CONSOLE_SCREENSHOTS")
    {
        std::fs::create_dir_all(&dir).unwrap();
        browser
            .screenshot(&std::path::Path::new(&dir).join(name))
            .await;
    }
}

/// Every flow of the console, as one user would go through it.
async fn console_flows(server: &Server, browser: &Browser, key: Option<&str>) {
    // The page and its files: types, a strict CSP, nosniff; /docs still served.
    let page = server.http.get(server.url("/")).send().await.unwrap();
    assert_eq!(page.status(), 200);
    assert_eq!(page.headers()["content-type"], "text/html; charset=utf-8");
    assert_eq!(page.headers()["x-content-type-options"], "nosniff");
    let csp = page.headers()["content-security-policy"].to_str().unwrap();
    assert!(csp.contains("script-src 'self'") && csp.contains("default-src 'none'"));
    for (path, ty) in [
        ("/console/app.js", "text/javascript; charset=utf-8"),
        ("/console/app.css", "text/css; charset=utf-8"),
    ] {
        let r = server.http.get(server.url(path)).send().await.unwrap();
        assert_eq!(r.status(), 200);
        assert_eq!(r.headers()["content-type"], ty);
    }
    assert_eq!(
        server
            .http
            .get(server.url("/docs"))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );

    // Overview (after the key, when one is needed).
    browser.goto(&server.url("/#/")).await;
    if let Some(k) = key {
        browser
            .wait(
                "the API key prompt",
                WAIT,
                "return !document.querySelector('#auth').hidden",
            )
            .await;
        browser.type_into("#api-key", k).await;
        browser.click("#auth-form button[type=submit]").await;
    }
    browser
        .wait(
            "the overview with plugins, queue depth and chart",
            WAIT,
            "return document.querySelector('#queue-depth') && \
             document.querySelector('#throughput-chart') && \
             document.querySelector('[data-plugin=imageops]') && \
             document.querySelector('[data-plugin=testkit]')",
        )
        .await;
    assert!(
        browser
            .eval("return document.querySelector('#auth').hidden", json!([]))
            .await
            == true
    );

    // Submit imageops.transform from its generated form, the source uploaded from a file.
    let dir = tempfile::tempdir().unwrap();
    let png = dir.path().join("photo.png");
    write_png(&png, 400, 300);
    browser
        .goto(&server.url("/#/submit/imageops.transform"))
        .await;
    browser
        .wait(
            "the imageops form",
            WAIT,
            "return document.querySelector('#submit-form[data-for=\"imageops.transform\"] input[data-upload-for=source]')",
        )
        .await;
    browser
        .type_into("input[data-upload-for=source]", &png.display().to_string())
        .await;
    let uploaded = browser
        .wait(
            "the upload's key in the source field",
            WAIT,
            "const v = document.querySelector('input[name=source]').value; \
             return v.startsWith('uploads/') && v",
        )
        .await;
    browser
        .type_into(
            "textarea[name=operations]",
            r#"[{"op": "resize", "width": 200}]"#,
        )
        .await;
    shot(browser, key, "console-submit.png").await;
    browser.click("#submit-task").await;
    let task_id = browser
        .wait(
            "the new task's page",
            WAIT,
            "return location.hash.startsWith('#/task/') && location.hash.slice(7)",
        )
        .await;
    let task_id = task_id.as_str().unwrap().to_owned();
    browser
        .wait(
            "the task COMPLETED on its page",
            WAIT,
            "return document.querySelector('#task-status[data-status=COMPLETED]')",
        )
        .await;
    let size = browser
        .wait(
            "the output image loaded",
            WAIT,
            "const i = document.querySelector('#outputs img'); \
             return i && i.complete && i.naturalWidth > 0 && [i.naturalWidth, i.naturalHeight]",
        )
        .await;
    assert_eq!(size, json!([200, 150]));
    let task = api(
        server,
        key,
        "GET",
        &format!("/api/tasks/{task_id}"),
        Value::Null,
    )
    .await;
    assert_eq!(task["status"], "COMPLETED");
    assert_eq!(task["input"]["source"], uploaded);
    shot(browser, key, "console-task.png").await;

    // A slow testkit task submitted from the form, followed live, cancelled with its button.
    browser.goto(&server.url("/#/submit/testkit.run")).await;
    browser
        .wait(
            "the testkit form",
            WAIT,
            "return document.querySelector('#submit-form[data-for=\"testkit.run\"] select[name=mode]')",
        )
        .await;
    browser
        .eval(
            "const s = document.querySelector('select[name=mode]'); \
             [...s.options].find(o => o.text === 'ok').selected = true;",
            json!([]),
        )
        .await;
    browser.type_into("input[name=ms]", "120000").await;
    browser.click("#submit-task").await;
    browser
        .wait(
            "the slow task PROCESSING on its page",
            WAIT,
            "return location.hash.startsWith('#/task/') && \
             document.querySelector('#task-status[data-status=PROCESSING]')",
        )
        .await;
    browser.click("#cancel-task").await;
    browser
        .wait(
            "the cancel seen live",
            WAIT,
            "return document.querySelector('#task-status[data-status=CANCELLED]') && \
             [...document.querySelectorAll('#timeline li.ev')].some(l => l.textContent.includes('cancelled'))",
        )
        .await;

    // A failed task retried from its page, its new attempt followed live to COMPLETED.
    let failed = api(
        server,
        key,
        "POST",
        "/api/tasks",
        json!({"type": "testkit.run", "max_attempts": 1,
               "input": {"mode": "fail", "fail_times": 1, "code": "engine_error"}}),
    )
    .await;
    let failed_id = failed["task_id"].as_str().unwrap().to_owned();
    browser
        .goto(&server.url(&format!("/#/task/{failed_id}")))
        .await;
    browser
        .wait(
            "the failed task with its error code",
            WAIT,
            "return document.querySelector('#task-status[data-status=FAILED]') && \
             document.querySelector('#task-error').textContent.includes('engine_error')",
        )
        .await;
    browser.click("#retry-task").await;
    browser
        .wait(
            "the retried task COMPLETED live",
            WAIT,
            "return document.querySelector('#task-status[data-status=COMPLETED]') && \
             [...document.querySelectorAll('#timeline li.ev')].some(l => l.textContent.includes('completed'))",
        )
        .await;
    let retried = api(
        server,
        key,
        "GET",
        &format!("/api/tasks/{failed_id}"),
        Value::Null,
    )
    .await;
    assert_eq!(retried["status"], "COMPLETED");
    assert_eq!(retried["attempts"], 2);

    // The task list, all and filtered by status.
    browser.goto(&server.url("/#/tasks")).await;
    let rows = browser
        .wait(
            "the three tasks in the list",
            WAIT,
            "const n = document.querySelectorAll('#task-table tr[data-task]').length; \
             return n >= 3 && !document.querySelector('main').innerText.includes('null') && n",
        )
        .await;
    assert_eq!(rows, json!(3));
    shot(browser, key, "console-tasks.png").await;
    browser.goto(&server.url("/#/tasks?status=CANCELLED")).await;
    let cancelled = browser
        .wait(
            "only the cancelled task",
            WAIT,
            "const rows = [...document.querySelectorAll('#task-table tr[data-task]')]; \
             return rows.length === 1 && rows[0].querySelector('[data-status]').dataset.status",
        )
        .await;
    assert_eq!(cancelled, "CANCELLED");
    browser
        .wait(
            "the task page link",
            WAIT,
            &format!("return !document.querySelector('#task-table tr[data-task=\"{task_id}\"]')"),
        )
        .await;

    // The overview counts what happened.
    browser.goto(&server.url("/#/")).await;
    browser
        .wait(
            "the finished tasks in the by-type table",
            WAIT,
            "return document.querySelector('#by-type') && \
             document.querySelector('#by-type').textContent.includes('imageops.transform') && \
             !document.querySelector('main').innerText.includes('null')",
        )
        .await;
    shot(browser, key, "console-overview.png").await;
}

#[tokio::test]
async fn console_in_a_browser() {
    let Some(browser) = Browser::start().await else {
        return;
    };
    let server = Server::start().await;
    console_flows(&server, &browser, None).await;
}

#[tokio::test]
async fn console_in_a_browser_with_api_keys() {
    let Some(browser) = Browser::start().await else {
        return;
    };
    let server = Server::start_with(Options {
        env: vec![("AIHOST_SERVER__API_KEYS".into(), "console-key".into())],
        ..Options::default()
    })
    .await;
    // Without the key the API refuses the console's calls.
    let r = server
        .http
        .get(server.url("/api/tasks"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    console_flows(&server, &browser, Some("console-key")).await;
}

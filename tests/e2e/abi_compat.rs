//! The plugin promise, proven: which plugin builds which host loads.
//!
//! `tests/abi/v1_0` holds a frozen copy of the interface as released in plugin-api 1.0.0, and
//! `tests/abi/v1_1` a test-only 1.1 whose root module has one more entry appended after
//! `shutdown` (the way abi_stable's prefix types are meant to grow). Each has a plugin written
//! directly against it and a minimal host (`abi-probe-*`) that loads a library with abi_stable's
//! checks only. These tests build both workspaces (into `target/abi-compat`) and cross them with
//! each other, with the real `aihost` binary and with the real plugins of this workspace.
//!
//! What they establish (and what `plugins/README.md` promises):
//! - the current host loads and runs a plugin built against the frozen 1.0 layout, and the
//!   current SDK still exports exactly that layout;
//! - abi_stable accepts a root module with MORE entries than the host knows (a newer plugin in
//!   an older host), but refuses one with FEWER ("too many fields"): a host whose root module
//!   grew would lock out every older plugin. So the root module is frozen for all of 1.x, and
//!   new capabilities arrive as ops and JSON fields;
//! - the host's own version policy refuses a plugin built against a newer minor, in one line.

use std::{
    path::{Path, PathBuf},
    process::Command,
    time::Duration,
};

use aihost_tests::{Options, Server, plugin_lib, run_cli, target_dir};
use serde_json::json;

/// Builds the two frozen-interface workspaces once (cargo's lock makes concurrent callers wait
/// and later calls no-ops) and answers the folder holding their binaries and libraries.
fn abi_builds() -> PathBuf {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("abi");
    let target = target_dir()
        .parent()
        .expect("target/<profile> has a parent")
        .join("abi-compat");
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    for version in ["v1_0", "v1_1"] {
        let out = Command::new(&cargo)
            .args(["build", "--locked", "--quiet", "--target-dir"])
            .arg(&target)
            .current_dir(root.join(version))
            .env_remove("RUSTFLAGS")
            .output()
            .expect("run cargo");
        assert!(
            out.status.success(),
            "building tests/abi/{version} failed:\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    target.join("debug")
}

/// Runs a probe on a library: (exit code, stdout).
fn probe(probe: &str, library: &Path) -> (i32, String) {
    let bin = abi_builds().join(probe);
    let out = Command::new(&bin)
        .arg(library)
        .output()
        .unwrap_or_else(|e| panic!("run {}: {e}", bin.display()));
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
    )
}

fn frozen_plugin(version: &str) -> PathBuf {
    abi_builds().join(format!("libaihost_abi_{version}.so"))
}

#[tokio::test]
async fn the_current_host_loads_and_runs_a_plugin_built_against_the_frozen_1_0_layout() {
    let library = frozen_plugin("v1_0");
    let cwd = tempfile::tempdir().unwrap();
    let (code, out, err) = run_cli(&["plugins", "check", library.to_str().unwrap()], cwd.path());
    assert_eq!(code, 0, "{out}{err}");
    assert!(
        out.starts_with("abi_v1_0 1.0.0 (plugin-api 1.0.0)"),
        "{out}"
    );

    let s = Server::start_with(Options {
        plugins: vec![("abi_v1_0".into(), library, String::new())],
        ..Options::default()
    })
    .await;
    let task = s.create("abi_v1_0.echo", json!({"text": "hello"})).await;
    let id = task["task_id"].as_str().unwrap();
    let done = s.wait_done(id, Duration::from_secs(20)).await;
    assert_eq!(done["status"], "COMPLETED", "{done}");
    assert_eq!(done["result"]["echo"], "hello", "{done}");
    assert_eq!(done["result"]["built_against"], "1.0.0", "{done}");
    // Progress crossed through the host's task context (a 1.0 vtable).
    let (_, events) = s.get(&format!("/api/tasks/{id}")).await;
    assert_eq!(events["progress"]["message"], "half way", "{events}");
    let (_, plugins) = s.get("/api/plugins").await;
    let entry = plugins["plugins"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == "abi_v1_0")
        .unwrap_or_else(|| panic!("{plugins}"));
    assert_eq!(entry["ops"], json!(["built_against"]), "{entry}");
}

#[test]
fn the_current_sdk_still_exports_the_frozen_1_0_layout() {
    for lib in ["aihost_imageops", "aihost_test_testkit"] {
        let (code, out) = probe("abi-probe-v1_0", &plugin_lib(lib));
        assert_eq!(code, 0, "{lib}: {out}");
        assert!(out.contains(" api 1.0.0\n"), "{lib}: {out}");
        // The probe's task input is not the plugin's: the call crossed and the plugin refused
        // it with its own error, through the 1.0 types.
        assert!(out.contains("\ntask_error invalid_input "), "{lib}: {out}");
    }
}

#[test]
fn abi_stable_accepts_a_root_module_with_more_entries_than_the_host_knows() {
    let (code, out) = probe("abi-probe-v1_0", &frozen_plugin("v1_1"));
    assert_eq!(code, 0, "{out}");
    assert!(
        out.starts_with("loaded abi_v1_1 1.1.0 api 1.1.0\n"),
        "{out}"
    );
    assert!(out.contains("\nprogress 50 half way\n"), "{out}");
    assert!(
        out.contains(r#"result {"attempt":1,"built_against":"1.1.0","echo":"probe"}"#),
        "{out}"
    );
    // And a 1.1 host reads the new entry of a 1.1 plugin.
    let (code, out) = probe("abi-probe-v1_1", &frozen_plugin("v1_1"));
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("\ncapabilities {\"echo\":true}\n"), "{out}");
}

#[test]
fn a_host_whose_root_module_grew_refuses_every_older_plugin() {
    // This is why the root module is frozen for all of 1.x: appending an entry after
    // `shutdown` would make the new host refuse every plugin built before it.
    for library in [
        frozen_plugin("v1_0"),
        plugin_lib("aihost_imageops"),
        plugin_lib("aihost_test_testkit"),
    ] {
        let (code, out) = probe("abi-probe-v1_1", &library);
        assert_eq!(code, 2, "{}: {out}", library.display());
        assert_eq!(
            out.trim(),
            "refused Error:too many fields",
            "{}",
            library.display()
        );
    }
}

#[test]
fn the_host_refuses_a_plugin_built_against_a_newer_minor_in_one_line() {
    let library = frozen_plugin("v1_1");
    let cwd = tempfile::tempdir().unwrap();
    let (code, out, err) = run_cli(&["plugins", "check", library.to_str().unwrap()], cwd.path());
    assert_eq!(code, 1, "{out}{err}");
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(
        err.contains("plugin was built against plugin-api 1.1.0; this host needs ^1.0 up to 1.0"),
        "{err}"
    );
    assert!(
        err.trim_end().ends_with("[plugin_wrong_interface]"),
        "{err}"
    );
}

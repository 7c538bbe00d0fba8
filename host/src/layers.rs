//! The dependency rules between the host's top-level modules, checked on the source.
//!
//! `ARCHITECTURE.md` ("What must not depend on what") states these rules for people; this test
//! states them for the compiler's neighbour: it reads every file of `host/src`, collects the
//! top-level modules each one names through `crate::`, and fails on any dependency the table
//! below does not allow. Adding an edge is a design decision: change the table and the
//! document together.

use std::{
    collections::{BTreeMap, BTreeSet},
    path::Path,
};

/// Each top-level module and the modules it may use. The order is the layering, lowest first.
const ALLOWED: &[(&str, &[&str])] = &[
    // Ground floor: depend on nothing of the crate.
    ("names", &[]),
    ("percent", &[]),
    ("error_codes", &[]),
    // Metric names and recording: every layer records the facts it owns.
    ("metrics", &[]),
    ("store", &["error_codes", "metrics"]),
    ("config", &["error_codes"]),
    // Trace export and the W3C trace context: knows no task, request or setting.
    ("telemetry", &[]),
    // Shapes and settings built on the ground floor.
    ("task_view", &["store"]),
    ("manifest", &["config", "error_codes"]),
    ("storage", &["config", "percent", "error_codes", "metrics"]),
    // Remote inputs: may read the host's own storage, never task state.
    ("fetch", &["storage", "names", "percent", "error_codes"]),
    // Plugins: loading and the callbacks plugins call.
    ("plugins", &["fetch", "manifest", "config", "error_codes"]),
    // Retention: deletes finished tasks and their files; no HTTP, no plugins.
    ("retention", &["store", "storage", "config"]),
    // Live previews of running attempts: stored and recorded on the task.
    ("previews", &["plugins", "store", "storage"]),
    // Running tasks: no HTTP.
    (
        "dispatcher",
        &[
            "previews",
            "plugins",
            "store",
            "storage",
            "fetch",
            "names",
            "task_view",
            "telemetry",
            "config",
            "error_codes",
            "metrics",
        ],
    ),
    // This consumer's identity in the task store.
    ("worker", &["store", "config", "error_codes"]),
    // Webhook messages: read from the task store, sent through the fetcher's client rules.
    (
        "webhooks",
        &[
            "store",
            "task_view",
            "fetch",
            "config",
            "error_codes",
            "metrics",
        ],
    ),
    // HTTP: everything below, never the wiring above it.
    (
        "api",
        &[
            "dispatcher",
            "retention",
            "webhooks",
            "plugins",
            "store",
            "storage",
            "fetch",
            "names",
            "percent",
            "task_view",
            "telemetry",
            "config",
            "manifest",
            "error_codes",
            "metrics",
        ],
    ),
    // Wiring and the command line.
    (
        "service",
        &[
            "api",
            "webhooks",
            "worker",
            "dispatcher",
            "retention",
            "plugins",
            "store",
            "storage",
            "fetch",
            "config",
            "manifest",
            "error_codes",
            "metrics",
        ],
    ),
    // The command-line client: a client of the public HTTP API only.
    ("client", &["config", "error_codes"]),
    (
        "cli",
        &[
            "client",
            "service",
            "retention",
            "api",
            "plugins",
            "store",
            "storage",
            "telemetry",
            "config",
            "manifest",
            "error_codes",
        ],
    ),
];

/// The top-level module a file under `host/src` belongs to (`None` for lib.rs and main.rs).
fn module_of(relative: &Path) -> Option<String> {
    let first = relative.components().next()?.as_os_str().to_str()?;
    let name = first.strip_suffix(".rs").unwrap_or(first);
    (!matches!(name, "lib" | "main" | "layers")).then(|| name.to_owned())
}

/// The leading identifier of `text`.
fn ident(text: &str) -> String {
    text.trim_start()
        .chars()
        .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
        .collect()
}

/// The top-level modules a source text names as `crate::NAME` or inside a
/// `crate::{a::X, b::{Y, Z}}` group, with `//` comments left out.
fn crate_paths(text: &str) -> BTreeSet<String> {
    let code: String = text
        .lines()
        .map(|line| line.split("//").next().unwrap_or(""))
        .collect::<Vec<_>>()
        .join(" ");
    let mut found = BTreeSet::new();
    let mut rest = code.as_str();
    while let Some(i) = rest.find("crate::") {
        rest = &rest[i + "crate::".len()..];
        if let Some(group) = rest.strip_prefix('{') {
            // Split the group at its top-level commas; each part starts with a module name.
            let mut depth = 0usize;
            let mut start = 0;
            for (j, c) in group.char_indices() {
                match c {
                    '{' => depth += 1,
                    '}' if depth == 0 => {
                        found.insert(ident(&group[start..j]));
                        break;
                    }
                    '}' => depth -= 1,
                    ',' if depth == 0 => {
                        found.insert(ident(&group[start..j]));
                        start = j + 1;
                    }
                    _ => {}
                }
            }
        } else {
            found.insert(ident(rest));
        }
    }
    found.remove("");
    found
}

fn files(dir: &Path, out: &mut Vec<std::path::PathBuf>) {
    for entry in std::fs::read_dir(dir).expect("read host/src") {
        let path = entry.expect("dir entry").path();
        if path.is_dir() {
            files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

#[test]
fn every_module_depends_only_on_what_the_layering_allows() {
    let allowed: BTreeMap<&str, BTreeSet<&str>> = ALLOWED
        .iter()
        .map(|(m, deps)| (*m, deps.iter().copied().collect()))
        .collect();
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut all = Vec::new();
    files(&root, &mut all);
    let mut broken = Vec::new();
    for path in all {
        let relative = path.strip_prefix(&root).expect("under src");
        let Some(module) = module_of(relative) else {
            continue;
        };
        let text = std::fs::read_to_string(&path).expect("read source");
        let Some(may) = allowed.get(module.as_str()) else {
            broken.push(format!(
                "{}: module {module:?} is missing from ALLOWED",
                relative.display()
            ));
            continue;
        };
        for used in crate_paths(&text) {
            if used != module && !may.contains(used.as_str()) {
                broken.push(format!(
                    "{} ({module}) uses crate::{used}",
                    relative.display()
                ));
            }
        }
    }
    assert!(
        broken.is_empty(),
        "dependencies the layering does not allow:\n{}",
        broken.join("\n")
    );
}

#[test]
fn the_parser_sees_single_and_grouped_paths() {
    let text = "use crate::{\n    store::Task,\n    plugins::{Registry, services::x},\n};\nlet x = crate::names::sanitize(y); // crate::api is a comment";
    let found = crate_paths(text);
    let expected: BTreeSet<String> = ["store", "plugins", "names"].map(String::from).into();
    assert_eq!(found, expected);
}

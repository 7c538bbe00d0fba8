//! A minimal host built against a frozen copy of the interface: in `v1_0/` the 1.0 layout, in
//! `v1_1/` (feature `v1_1`) a test-only 1.1 layout with one more root-module entry.
//!
//! `abi-probe-vX_Y LIBRARY` loads the library with abi_stable's own checks only (no semver policy
//! of aihost's), initialises it, runs one task of its first task type with
//! `{"text": "probe"}`, and prints one line per step:
//!
//! ```text
//! loaded NAME VERSION api API_VERSION
//! capabilities JSON|missing        (v1_1 only)
//! progress PERCENT MESSAGE
//! result JSON
//! ```
//!
//! A refusal prints `refused REASON` (first line) and exits with code 2.

use std::{
    future::Future,
    pin::pin,
    task::{Context, Poll, Waker},
    time::Duration,
};

use abi_stable::{
    library::lib_header_from_path,
    sabi_trait::TD_Opaque,
    std_types::{RArc, RErr, ROk, ROption, RResult, RStr, RString},
};
use aihost_plugin_api::{
    HostServicesApi, HostServicesApi_TO, PluginError, PluginModRef, TaskContextApi,
    TaskContextApi_TO, TaskRequest,
};
use async_ffi::{FfiFuture, FutureExt};

#[derive(Clone)]
struct Host;

impl HostServicesApi for Host {
    fn max_level(&self) -> u8 {
        3
    }
    fn log(&self, _level: u8, target: RStr<'_>, message: RStr<'_>) {
        println!("log {target} {message}");
    }
}

#[derive(Clone)]
struct Ctx;

impl TaskContextApi for Ctx {
    fn progress(&self, percent: f32, message: RStr<'_>) {
        println!("progress {percent} {message}");
    }
    fn log(&self, _level: u8, message: RStr<'_>) {
        println!("log task {message}");
    }
    fn fetch(
        &self,
        _url: RString,
        _file_name: ROption<RString>,
    ) -> FfiFuture<RResult<RString, PluginError>> {
        async {
            RErr(PluginError {
                code: "fetch_failed".into(),
                message: "the probe fetches nothing".into(),
                retryable: false,
            })
        }
        .into_ffi()
    }
}

/// Polls a future to completion on this thread (plugins run their work on their own runtime
/// and wake us; polling every millisecond keeps the probe free of an executor dependency).
fn block_on<F: Future>(future: F) -> F::Output {
    let mut future = pin!(future);
    let mut cx = Context::from_waker(Waker::noop());
    loop {
        if let Poll::Ready(out) = future.as_mut().poll(&mut cx) {
            return out;
        }
        std::thread::sleep(Duration::from_millis(1));
    }
}

fn refuse(reason: impl std::fmt::Display) -> ! {
    let reason = reason.to_string();
    // abi_stable's layout report is long; its verdict is the line that starts with `Error:`.
    let verdict = reason
        .lines()
        .rev()
        .find(|l| l.trim_start().starts_with("Error:"))
        .or_else(|| reason.lines().find(|l| !l.trim().is_empty()))
        .unwrap_or("");
    println!("refused {}", verdict.trim());
    eprintln!("{reason}");
    std::process::exit(2)
}

fn main() {
    let path = std::env::args().nth(1).expect("usage: abi-probe LIBRARY");
    let module = lib_header_from_path(path.as_ref())
        .and_then(|header| header.init_root_module::<PluginModRef>())
        .unwrap_or_else(|e| refuse(e));
    let info = match module.describe()() {
        ROk(info) => info,
        RErr(e) => refuse(format!("describe: {}: {}", e.code, e.message)),
    };
    println!(
        "loaded {} {} api {}",
        info.name, info.version, info.api_version
    );

    #[cfg(feature = "v1_1")]
    match module.capabilities() {
        Some(capabilities) => println!("capabilities {}", capabilities()),
        None => println!("capabilities missing"),
    }

    let host = HostServicesApi_TO::from_ptr(RArc::new(Host), TD_Opaque);
    if let RErr(e) = module.init()(host, "{}".into()) {
        refuse(format!("init: {}: {}", e.code, e.message));
    }
    let task_type = info
        .task_types
        .first()
        .unwrap_or_else(|| refuse("no task type"));
    let work_dir = std::env::temp_dir();
    let request = TaskRequest {
        task_id: "0190f5d6-0000-7000-8000-000000000000".into(),
        task_type: task_type.name.clone(),
        attempt: 1,
        input_json: r#"{"text":"probe"}"#.into(),
        work_dir: work_dir.display().to_string().into(),
        meta_json: "{}".into(),
    };
    let ctx = TaskContextApi_TO::from_ptr(RArc::new(Ctx), TD_Opaque);
    match block_on(module.run_task()(request, ctx)) {
        ROk(output) => println!("result {}", output.result_json),
        RErr(e) => println!("task_error {} {}", e.code, e.message),
    }
    module.shutdown()();
}

//! A plugin written directly against a frozen copy of the interface (no SDK), built twice: in
//! `v1_0/` against the 1.0 layout and in `v1_1/` (feature `v1_1`) against a test-only 1.1 layout
//! whose root module has one more entry, `capabilities`.
//!
//! It registers `abi_v1_0.echo` (or `abi_v1_1.echo`), which reports progress through the host's
//! task context and answers its input, and the op `built_against`.

use abi_stable::{
    export_root_module,
    prefix_type::PrefixTypeTrait,
    std_types::{RErr, ROk, RResult, RString, RVec},
};
use aihost_plugin_api::{
    HostServices, OpInfo, PluginError, PluginInfo, PluginMod, PluginModRef, TaskContext,
    TaskOutput, TaskRequest, TaskTypeInfo, level,
};
use async_ffi::{FfiFuture, FutureExt};

#[cfg(not(feature = "v1_1"))]
const BUILT_AGAINST: &str = "1.0.0";
#[cfg(feature = "v1_1")]
const BUILT_AGAINST: &str = "1.1.0";

#[cfg(not(feature = "v1_1"))]
const NAME: &str = "abi_v1_0";
#[cfg(feature = "v1_1")]
const NAME: &str = "abi_v1_1";

fn error(code: &str, message: &str) -> PluginError {
    PluginError {
        code: code.into(),
        message: message.into(),
        retryable: false,
    }
}

extern "C" fn describe() -> RResult<PluginInfo, PluginError> {
    let task_type = TaskTypeInfo {
        name: format!("{NAME}.echo").into(),
        description: "Answers its input; reports progress half way.".into(),
        input_schema_json: r#"{"type":"object","properties":{"text":{"type":"string"}},"required":["text"],"additionalProperties":false}"#.into(),
        max_concurrency: 0,
        extra_json: "{}".into(),
    };
    ROk(PluginInfo {
        name: NAME.into(),
        version: BUILT_AGAINST.into(),
        api_version: BUILT_AGAINST.into(),
        description: "Built against a frozen copy of the plugin interface.".into(),
        task_types: RVec::from(vec![task_type]),
        ops: RVec::from(vec![OpInfo {
            name: "built_against".into(),
            description: "The interface version this plugin was built against.".into(),
        }]),
        default_config_json: "{}".into(),
        extra_json: "{}".into(),
    })
}

extern "C" fn init(host: HostServices, _config_json: RString) -> RResult<(), PluginError> {
    if host.max_level() >= level::INFO {
        host.log(
            level::INFO,
            NAME.into(),
            format!("initialised (built against {BUILT_AGAINST})")
                .as_str()
                .into(),
        );
    }
    ROk(())
}

extern "C" fn run_task(
    req: TaskRequest,
    ctx: TaskContext,
) -> FfiFuture<RResult<TaskOutput, PluginError>> {
    async move {
        ctx.progress(50.0, "half way".into());
        let input: serde_json::Value = match serde_json::from_str(req.input_json.as_str()) {
            Ok(v) => v,
            Err(e) => return RErr(error("invalid_input", &e.to_string())),
        };
        let result = serde_json::json!({
            "echo": input["text"],
            "built_against": BUILT_AGAINST,
            "attempt": req.attempt,
        });
        ROk(TaskOutput {
            files: RVec::new(),
            result_json: result.to_string().into(),
        })
    }
    .into_ffi()
}

extern "C" fn cancel_task(_task_id: RString) -> FfiFuture<()> {
    async {}.into_ffi()
}

extern "C" fn call_op(name: RString, _args: RString) -> FfiFuture<RResult<RString, PluginError>> {
    async move {
        match name.as_str() {
            "built_against" => ROk(format!("\"{BUILT_AGAINST}\"").into()),
            other => RErr(error("unknown_op", &format!("no op {other:?}"))),
        }
    }
    .into_ffi()
}

extern "C" fn health() -> FfiFuture<RResult<RString, PluginError>> {
    async { ROk(RString::from("{\"ok\":true}")) }.into_ffi()
}

extern "C" fn shutdown() {}

#[cfg(feature = "v1_1")]
extern "C" fn capabilities() -> RString {
    "{\"echo\":true}".into()
}

/// Exports the root module under abi_stable's symbol, as `export_plugin!` does for SDK plugins.
#[export_root_module]
pub fn get_library() -> PluginModRef {
    PluginMod {
        describe,
        init,
        run_task,
        cancel_task,
        call_op,
        health,
        shutdown,
        #[cfg(feature = "v1_1")]
        capabilities,
    }
    .leak_into_prefix()
}

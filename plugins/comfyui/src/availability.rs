//! The `availability` op: whether the pool can take a task now, answered from memory (the
//! instances' socket state), so the host can call it often. While no instance is reachable the
//! host leaves `comfyui.workflow` tasks in its queue instead of claiming and failing them.
//!
//! Separate from `ops.rs` because the host reads it on every claim round, not an operator.

use std::time::Duration;

use aihost_plugin_api::sdk::{Value, json};

use crate::{ComfyUi, TASK_TYPE};

/// An instance that answered HTTP this recently counts as reachable even with its socket down.
const RECENT: Duration = Duration::from_secs(2);

impl ComfyUi {
    /// `{"comfyui.workflow": {"ready": bool, "reason": "..."}}`.
    pub(crate) fn availability(&self) -> Value {
        let ready = self.instances.iter().any(|i| i.seems_reachable(RECENT));
        let reason = if ready {
            String::new()
        } else {
            format!(
                "waiting for a ComfyUI instance: none is reachable: {}",
                self.why_unreachable("not connected yet").join(", ")
            )
        };
        json!({ TASK_TYPE: {"ready": ready, "reason": reason} })
    }
}

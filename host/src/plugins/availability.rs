//! Whether a plugin's engines can take tasks now: the optional `availability` op.
//!
//! A plugin that lists the op answers it from memory, cheaply:
//! `{"<task type>": {"ready": bool, "reason": "..."}}` (types it leaves out are ready). The
//! dispatcher does not claim a type that is not ready (its tasks wait in the queue), and
//! `/api/status` and the task view show the reason. Answers are cached for [`TTL`] per plugin;
//! a plugin without the op, or whose op fails, counts as ready.
//!
//! Separate from `library.rs` because it is a convention on top of the ABI (an op), not part
//! of it.

use std::{
    collections::{BTreeMap, HashMap},
    sync::{LazyLock, Mutex},
    time::{Duration, Instant},
};

use serde_json::Value;

use super::library::Library;

/// The op's name.
pub(crate) const OP: &str = "availability";

/// How long an answer is reused.
pub(crate) const TTL: Duration = Duration::from_millis(300);

/// Longest wait for the op's answer.
const CALL_TIMEOUT: Duration = Duration::from_secs(2);

/// Per plugin name: when it was asked and the task types that are not ready, with reasons.
type Cache = HashMap<String, (Instant, BTreeMap<String, String>)>;

static CACHE: LazyLock<Mutex<Cache>> = LazyLock::new(Mutex::default);

/// Whether the plugin offers the op.
pub(crate) fn offers(plugin: &Library) -> bool {
    plugin.desc.ops.iter().any(|o| o.name == OP)
}

/// The task types of `plugin` that cannot take tasks now, with the plugin's reason (empty when
/// every type is ready or the plugin has no `availability` op). `fresh` skips the cache.
pub(crate) async fn waiting(plugin: &Library, fresh: bool) -> BTreeMap<String, String> {
    if !offers(plugin) {
        return BTreeMap::new();
    }
    let name = plugin.desc.name.clone();
    if !fresh
        && let Some((at, v)) = CACHE.lock().expect("availability cache").get(&name)
        && at.elapsed() < TTL
    {
        return v.clone();
    }
    let answer = tokio::time::timeout(CALL_TIMEOUT, plugin.call_op(OP, &Value::Null)).await;
    let waiting = match answer {
        Ok(Ok(v)) => parse(&v),
        Ok(Err(e)) => {
            tracing::debug!(plugin = %name, error = %e.message, "availability op failed; counting as ready");
            BTreeMap::new()
        }
        Err(_) => BTreeMap::new(),
    };
    CACHE
        .lock()
        .expect("availability cache")
        .insert(name, (Instant::now(), waiting.clone()));
    waiting
}

/// The types marked `"ready": false` in an answer, with their reasons.
fn parse(v: &Value) -> BTreeMap<String, String> {
    v.as_object()
        .into_iter()
        .flatten()
        .filter(|(_, s)| s["ready"] == false)
        .map(|(t, s)| {
            let reason = s["reason"]
                .as_str()
                .filter(|r| !r.is_empty())
                .unwrap_or("the engine is not ready");
            (t.clone(), reason.to_owned())
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn only_types_marked_not_ready_wait() {
        let w = parse(&json!({
            "a": {"ready": true},
            "b": {"ready": false, "reason": "down"},
            "c": {"ready": false},
            "d": "nonsense"
        }));
        assert_eq!(w.len(), 2);
        assert_eq!(w["b"], "down");
        assert_eq!(w["c"], "the engine is not ready");
    }
}

//! Prompt ids known without storage, re-attaching to the prompts of earlier attempts, and the
//! truthful end of a prompt (its slot stays taken until ComfyUI reports it gone).
//!
//! Each attempt's prompt id is a UUIDv5 of the task id and the attempt number
//! ([`prompt_id`]), so a restarted host knows every id the task may have in ComfyUI. Before
//! submitting, an attempt looks on every instance for the prompts of attempts `1..=N` (the
//! host numbers a rescued attempt N+1 and reuses N for an attempt it released at shutdown):
//! a queued or running one is followed, a succeeded one has its outputs collected, a failed or
//! interrupted one is ignored.
//!
//! Separate from `run.rs` so the decisions about which prompt a task owns live in one place.

use std::{
    collections::{HashMap, HashSet},
    sync::{Arc, LazyLock, Mutex, atomic::Ordering},
    time::{Duration, Instant},
};

use aihost_plugin_api::sdk::Value;

use crate::{ComfyUi, engine::Instance, pool::Slot};

/// The namespace of derived prompt ids (a fixed random UUID; changing it would orphan the
/// prompts of tasks running during an upgrade).
const NAMESPACE: uuid::Uuid = uuid::Uuid::from_u128(0x6b1f_0c52_9a4e_4d7e_b3c1_2f58_e0a9_d417);

/// How long a prompt we stopped (or that ended with an error) may take to leave ComfyUI's
/// queue before its slot is given back anyway.
pub(crate) const GONE_WAIT: Duration = Duration::from_secs(60);

/// Tasks whose `run` is going on in this process (cancel marks only these).
static ACTIVE: LazyLock<Mutex<HashSet<String>>> = LazyLock::new(Mutex::default);

/// The prompt id of attempt `attempt` of task `task_id`.
pub(crate) fn prompt_id(task_id: &str, attempt: u32) -> String {
    uuid::Uuid::new_v5(&NAMESPACE, format!("{task_id}/{attempt}").as_bytes()).to_string()
}

/// What the search for earlier prompts found.
pub(crate) enum Found {
    /// Queued or running on this instance: follow it.
    Live(Arc<Instance>, String),
    /// Succeeded on this instance: collect its outputs (the history entry).
    Done(Arc<Instance>, String, Value),
    /// Nothing to follow; `own_taken` when this attempt's derived id is already used in
    /// ComfyUI (a failed or interrupted prompt), so a fresh random id must be used.
    Nothing { own_taken: bool },
}

/// Marks `task_id` active for the life of the value (see [`ComfyUi::cancel`]).
pub(crate) struct Active(String);

impl Active {
    pub(crate) fn new(task_id: &str) -> Active {
        ACTIVE.lock().unwrap().insert(task_id.to_owned());
        Active(task_id.to_owned())
    }
}

impl Drop for Active {
    fn drop(&mut self) {
        ACTIVE.lock().unwrap().remove(&self.0);
        let mut ended = ENDED.lock().unwrap();
        ended.retain(|_, at| at.elapsed() < EARLY_KEEP);
        ended.insert(self.0.clone(), Instant::now());
    }
}

/// Whether a `run` of `task_id` is going on in this process.
pub(crate) fn is_active(task_id: &str) -> bool {
    ACTIVE.lock().unwrap().contains(task_id)
}

/// Cancels that arrived before the task's `run` began (the host may ask as soon as it handed
/// the task over), with when they arrived; kept [`EARLY_KEEP`] at most.
static EARLY: LazyLock<Mutex<HashMap<String, Instant>>> = LazyLock::new(Mutex::default);

/// Tasks whose `run` ended here lately, with when: the host also cancels after it dropped a
/// run (time limit, shutdown), and that cancel must not stop the task's next attempt.
static ENDED: LazyLock<Mutex<HashMap<String, Instant>>> = LazyLock::new(Mutex::default);

/// How long an early cancel waits for its `run` (and an ended run is remembered).
const EARLY_KEEP: Duration = Duration::from_secs(120);

/// Notes a cancel of `task_id` for a `run` that has not begun yet (unless one ended here
/// lately: that cancel is for the run that ended). The caller checks [`is_active`] again
/// afterwards: together with [`take_early_cancel`] after [`Active::new`], no cancel falls
/// between the two.
pub(crate) fn note_early_cancel(task_id: &str) {
    if ENDED.lock().unwrap().contains_key(task_id) {
        return;
    }
    let mut early = EARLY.lock().unwrap();
    early.retain(|_, at| at.elapsed() < EARLY_KEEP);
    early.insert(task_id.to_owned(), Instant::now());
}

/// Whether a cancel of `task_id` arrived before its `run` began (and forgets it).
pub(crate) fn take_early_cancel(task_id: &str) -> bool {
    EARLY.lock().unwrap().remove(task_id).is_some()
}

impl ComfyUi {
    /// Looks on every instance for the prompts of attempts `1..=attempt` of `task_id`
    /// (newest first). Instances that do not answer are skipped.
    pub(crate) async fn find_attempts(&self, task_id: &str, attempt: u32) -> Found {
        let ids: Vec<String> = (1..=attempt.max(1))
            .rev()
            .map(|k| prompt_id(task_id, k))
            .collect();
        let own = &ids[0];
        let mut own_taken = false;
        let mut live = None;
        for inst in &self.instances {
            let Ok(q) = inst.get_json("/queue").await else {
                continue;
            };
            let queued = |pid: &str| {
                ["queue_running", "queue_pending"].iter().any(|k| {
                    q[*k].as_array().is_some_and(|items| {
                        items
                            .iter()
                            .any(|it| it.get(1).and_then(Value::as_str) == Some(pid))
                    })
                })
            };
            for pid in &ids {
                if queued(pid) {
                    live.get_or_insert_with(|| (inst.clone(), pid.clone()));
                    continue;
                }
                match inst.history(pid).await {
                    Ok(Some(entry)) => {
                        if entry["status"]["status_str"] == "success" {
                            return Found::Done(inst.clone(), pid.clone(), entry);
                        }
                        if pid == own {
                            own_taken = true;
                        }
                    }
                    Ok(None) => {}
                    Err(_) => break,
                }
            }
        }
        match live {
            Some((inst, pid)) => Found::Live(inst, pid),
            None => Found::Nothing { own_taken },
        }
    }

    /// A slot on `inst` for a prompt of ours already in its queue: taken even when the
    /// instance's slots are all counted, since the prompt is there anyway.
    pub(crate) fn slot_on(self: &Arc<Self>, inst: &Arc<Instance>) -> Slot {
        inst.inflight.fetch_add(1, Ordering::AcqRel);
        Slot {
            plugin: self.clone(),
            inst: inst.clone(),
        }
    }

    /// Whether a cancel of `task_id` was asked for.
    pub(crate) fn is_cancelling(&self, task_id: &str) -> bool {
        self.cancelled.lock().unwrap().contains(task_id)
    }

    /// Resolves once a cancel of `task_id` was asked for.
    pub(crate) async fn cancel_requested(&self, task_id: &str) {
        while !self.is_cancelling(task_id) {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

/// Waits until `pid` is neither queued nor running on `inst` (or `within` passes, or the
/// instance stops answering: a restarted ComfyUI has lost its queue); answers whether it left.
pub(crate) async fn wait_gone(inst: &Instance, pid: &str, within: Duration) -> bool {
    let deadline = tokio::time::Instant::now() + within;
    let mut failures = 0;
    loop {
        match inst.in_queue(pid).await {
            Ok(false) => return true,
            Ok(true) => failures = 0,
            Err(_) => {
                failures += 1;
                if failures >= 5 {
                    return false;
                }
            }
        }
        if tokio::time::Instant::now() >= deadline {
            tracing::warn!(url = %inst.url, prompt_id = %pid, "a stopped prompt is still in ComfyUI's queue; giving its slot back");
            return false;
        }
        tokio::time::sleep(Duration::from_millis(150)).await;
    }
}

/// Stops a prompt (when `stop`), then holds `slot` until ComfyUI reports the prompt gone; in
/// the background.
pub(crate) fn release_when_gone(inst: Arc<Instance>, pid: String, slot: Option<Slot>, stop: bool) {
    let Ok(rt) = tokio::runtime::Handle::try_current() else {
        return;
    };
    rt.spawn(async move {
        if stop && let Err(e) = inst.cancel(&pid).await {
            tracing::warn!(prompt_id = %pid, error = %e, "could not stop an abandoned prompt");
        }
        if slot.is_some() {
            wait_gone(&inst, &pid, GONE_WAIT).await;
        }
        drop(slot);
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prompt_ids_are_derived_per_task_and_attempt() {
        let a = prompt_id("t1", 1);
        assert_eq!(a, prompt_id("t1", 1));
        assert_ne!(a, prompt_id("t1", 2));
        assert_ne!(a, prompt_id("t2", 1));
        assert_eq!(uuid::Uuid::parse_str(&a).unwrap().get_version_num(), 5);
    }

    #[test]
    fn an_early_cancel_reaches_the_run_that_has_not_begun_but_not_the_next_attempt() {
        // Cancelled before its run began: the run finds it.
        note_early_cancel("early-1");
        assert!(take_early_cancel("early-1"));
        assert!(!take_early_cancel("early-1"));
        // A run that ended here: a late cancel (after a time limit) is not kept for the next.
        drop(Active::new("early-2"));
        note_early_cancel("early-2");
        assert!(!take_early_cancel("early-2"));
    }
}

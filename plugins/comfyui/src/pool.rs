//! Choosing an instance of the pool: slots (`queue_depth` prompts of ours per instance) and
//! the wait for a free one.
//!
//! Separate from running a task (`run.rs`) because it is the one place that balances load
//! across instances and decides when the whole pool counts as unreachable.

use std::{
    sync::{Arc, atomic::Ordering},
    time::Duration,
};

use aihost_plugin_api::PluginError;

use crate::{
    ComfyUi,
    engine::Instance,
    error::no_instance,
    routing::{Fit, Want},
};

/// A place on an instance; freed on drop.
pub(crate) struct Slot {
    pub(crate) plugin: Arc<ComfyUi>,
    /// The instance the slot is on.
    pub(crate) inst: Arc<Instance>,
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.inst.inflight.fetch_sub(1, Ordering::AcqRel);
        self.plugin.slot_freed.notify_waiters();
    }
}

impl ComfyUi {
    /// `URL (last error)` of every instance, `otherwise` where no error was seen yet.
    pub(crate) fn why_unreachable(&self, otherwise: &str) -> Vec<String> {
        self.instances
            .iter()
            .map(|i| {
                let why = i.last_error().unwrap_or_else(|| otherwise.to_owned());
                format!("{} ({why})", i.url)
            })
            .collect()
    }

    /// Slots per instance: `queue_depth`, at least 1.
    pub(crate) fn depth(&self) -> usize {
        self.config.queue_depth.max(1) as usize
    }

    /// Takes a slot on the least busy connected instance that is ready and fits `want` (has
    /// its models, preferring one with them loaded: `routing.rs`); waits for a free one,
    /// fails with `model_unavailable` when no instance has the models, and with
    /// `engine_unavailable` when no instance is reachable for `unavailable_wait_secs`.
    pub(crate) async fn acquire(self: &Arc<Self>, want: &Want) -> Result<Slot, PluginError> {
        let wait = Duration::from_secs(self.config.unavailable_wait_secs);
        let mut deadline = tokio::time::Instant::now() + wait;
        loop {
            let notified = self.slot_freed.notified();
            {
                let _g = self.pick.lock().unwrap();
                let best = self
                    .instances
                    .iter()
                    .zip(&self.managed)
                    .filter(|(i, m)| i.is_connected() && m.ready())
                    .filter_map(|(i, m)| match m.fit(want) {
                        Fit::Yes(score) => Some(((score, i.inflight.load(Ordering::Acquire)), i)),
                        _ => None,
                    })
                    .filter(|((_, n), _)| *n < self.depth())
                    .min_by_key(|(key, _)| *key)
                    .map(|(_, i)| i.clone());
                if let Some(inst) = best {
                    inst.inflight.fetch_add(1, Ordering::AcqRel);
                    return Ok(Slot {
                        plugin: self.clone(),
                        inst,
                    });
                }
            }
            if let Some(e) = crate::managed::none_fits(&self.managed, want) {
                return Err(e);
            }
            let any_up = self
                .instances
                .iter()
                .zip(&self.managed)
                .any(|(i, m)| i.is_connected() && m.fit(want) != Fit::No);
            if any_up {
                deadline = tokio::time::Instant::now() + wait;
                let _ = tokio::time::timeout(Duration::from_millis(500), notified).await;
            } else {
                if tokio::time::Instant::now() >= deadline {
                    return Err(no_instance(&self.why_unreachable("not connected")));
                }
                let waits = self
                    .instances
                    .iter()
                    .map(|i| Box::pin(i.wait_connected(Duration::from_millis(500))));
                futures_util::future::select_all(waits).await;
            }
        }
    }
}

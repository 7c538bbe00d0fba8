//! Forwards a plugin's `tracing` events to the host's log.
//!
//! A plugin library has its own copy of `tracing`'s statics, so without this bridge its events
//! would go nowhere. The SDK installs [`HostLayer`] as the plugin's global subscriber in `init`.

use std::fmt::Write as _;

use abi_stable::std_types::RStr;
use tracing::{Event, Level, Subscriber, field::Field, level_filters::LevelFilter};
use tracing_subscriber::{Layer, layer::Context, prelude::*};

use crate::abi::{HostServices, level};

/// A tracing layer that hands every event to the host's `log` callback.
struct HostLayer {
    host: HostServices,
}

/// Collects an event's message and fields into one line: `message k=v k=v`.
#[derive(Default)]
struct LineVisitor {
    message: String,
    fields: String,
}

impl tracing::field::Visit for LineVisitor {
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        if field.name() == "message" {
            let _ = write!(self.message, "{value:?}");
        } else {
            let _ = write!(self.fields, " {}={value:?}", field.name());
        }
    }

    fn record_str(&mut self, field: &Field, value: &str) {
        if field.name() == "message" {
            self.message.push_str(value);
        } else {
            let _ = write!(self.fields, " {}={value:?}", field.name());
        }
    }
}

fn to_level(l: &Level) -> u8 {
    match *l {
        Level::ERROR => level::ERROR,
        Level::WARN => level::WARN,
        Level::INFO => level::INFO,
        Level::DEBUG => level::DEBUG,
        Level::TRACE => level::TRACE,
    }
}

impl<S: Subscriber> Layer<S> for HostLayer {
    fn on_event(&self, event: &Event<'_>, _ctx: Context<'_, S>) {
        let mut v = LineVisitor::default();
        event.record(&mut v);
        v.message.push_str(&v.fields);
        let meta = event.metadata();
        self.host.log(
            to_level(meta.level()),
            RStr::from_str(meta.target()),
            RStr::from_str(&v.message),
        );
    }
}

/// Installs the bridge as this library's global subscriber, filtered to the host's level.
/// A second call (a second `init`) keeps the first subscriber.
pub(crate) fn install(host: HostServices) {
    let filter = match host.max_level() {
        0 => LevelFilter::OFF,
        level::ERROR => LevelFilter::ERROR,
        level::WARN => LevelFilter::WARN,
        level::INFO => LevelFilter::INFO,
        level::DEBUG => LevelFilter::DEBUG,
        _ => LevelFilter::TRACE,
    };
    let subscriber = tracing_subscriber::registry().with(HostLayer { host }.with_filter(filter));
    let _ = tracing::subscriber::set_global_default(subscriber);
}

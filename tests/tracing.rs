//! With the `tracing` feature: a span per task and events for its life and its worker's.
//! Run with `cargo test --features tracing --test tracing`.

mod common;

use std::collections::HashMap;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use common::{eventually, spin, Runtime};
use offload::ProcessPool;
use tracing::field::{Field, Visit};
use tracing::span::{Attributes, Id, Record};
use tracing::{Event, Metadata, Subscriber};

/// Writes `name=value` pairs.
struct Fields(String);

impl Visit for Fields {
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        let _ = write!(self.0, " {}={:?}", field.name(), value);
    }
}

/// Keeps every event, with the fields of the span it happened in.
#[derive(Default, Clone)]
struct Collector {
    next_id: Arc<AtomicU64>,
    spans: Arc<Mutex<HashMap<u64, String>>>,
    events: Arc<Mutex<Vec<String>>>,
}

thread_local! {
    static CURRENT: std::cell::RefCell<Vec<u64>> = const { std::cell::RefCell::new(Vec::new()) };
}

impl Subscriber for Collector {
    fn enabled(&self, _: &Metadata<'_>) -> bool {
        true
    }
    fn new_span(&self, span: &Attributes<'_>) -> Id {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed) + 1;
        let mut fields = Fields(span.metadata().name().to_string());
        span.record(&mut fields);
        self.spans.lock().unwrap().insert(id, fields.0);
        Id::from_u64(id)
    }
    fn record(&self, span: &Id, values: &Record<'_>) {
        let mut fields = Fields(String::new());
        values.record(&mut fields);
        if let Some(text) = self.spans.lock().unwrap().get_mut(&span.into_u64()) {
            text.push_str(&fields.0);
        }
    }
    fn record_follows_from(&self, _: &Id, _: &Id) {}
    fn event(&self, event: &Event<'_>) {
        let mut fields = Fields(String::new());
        event.record(&mut fields);
        let span = CURRENT.with(|c| c.borrow().last().copied());
        let span = span
            .and_then(|id| self.spans.lock().unwrap().get(&id).cloned())
            .unwrap_or_default();
        self.events
            .lock()
            .unwrap()
            .push(format!("{}| {span}", fields.0));
    }
    fn enter(&self, span: &Id) {
        CURRENT.with(|c| c.borrow_mut().push(span.into_u64()));
    }
    fn exit(&self, _: &Id) {
        CURRENT.with(|c| c.borrow_mut().pop());
    }
}

fn whoami() -> u32 {
    std::process::id()
}

fn a_span_per_task_and_events_for_its_life() {
    let collector = Collector::default();
    tracing::subscriber::set_global_default(collector.clone()).unwrap();
    let log = collector.events.clone();
    let events = move || log.lock().unwrap().clone();

    let pool = ProcessPool::new(1).unwrap();
    Runtime::Smol.block_on(async move {
        let mut task = pool.spawn(whoami, ());
        let pid = (&mut task).await.unwrap();
        let id = task.id();
        let in_span = format!("offload_task id={id} func=\"whoami\"");
        eventually("the finish is reported", || {
            events().iter().any(|e| e.contains("task finished"))
        })
        .await;
        let mine: Vec<String> = events()
            .into_iter()
            .filter(|e| e.contains(&in_span))
            .collect();
        assert!(mine[0].contains("task spawned"), "{mine:#?}");
        assert!(
            mine[1].contains(&format!("task started pid={pid}|")),
            "{mine:#?}"
        );
        assert!(
            mine[1].contains(&format!("pid={pid}")),
            "the span records the pid"
        );
        assert!(
            mine[2].contains("task finished status=\"done\""),
            "{mine:#?}"
        );

        let spinning = pool.spawn(spin, ());
        eventually("it spins", || spinning.status() == "running").await;
        let spin_pid = spinning.pid().unwrap();
        assert!(spinning.cancel_and_wait().await);
        let replacement = pool.spawn(whoami, ()).await.unwrap();
        let all = events();
        assert!(
            all.iter()
                .any(|e| e.contains("offload worker stopped")
                    && e.contains(&format!("pid={spin_pid}"))),
            "{all:#?}"
        );
        assert!(
            all.iter().any(|e| e.contains("offload worker replaced")
                && e.contains(&format!("pid={replacement}"))),
            "{all:#?}"
        );
    });
}

fn main() {
    common::main_with(vec![common::trial(
        "a_span_per_task_and_events_for_its_life",
        a_span_per_task_and_events_for_its_life,
    )]);
}

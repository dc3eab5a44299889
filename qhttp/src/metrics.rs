//! What the proxy counts, served as Prometheus text on a port of its own: requests and their
//! latency by route and status, connections, and the counters of the qnet stack under it.

use std::fmt::Write;
use std::sync::Arc;
use std::time::Duration;

use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

type Labels = [(&'static str, String); 2];

/// One value the embedder's stack reports (qnet's counters), named without the `qnet_` prefix.
#[derive(Clone, Debug)]
pub struct StackSample {
    pub name: &'static str,
    pub help: &'static str,
    /// A counter (only grows) or a gauge.
    pub counter: bool,
    pub value: u64,
}

/// Reads the stack's counters when metrics are scraped.
pub type StackCounters = Arc<dyn Fn() -> Vec<StackSample> + Send + Sync>;

pub struct Metrics {
    registry: Registry,
    requests: Family<Labels, Counter>,
    latency: Family<Labels, Histogram, fn() -> Histogram>,
    pub connections_open: Gauge,
    pub connections: Counter,
    pub connections_rejected: Counter,
    ring_submissions: Gauge,
    ring_completions: Gauge,
    ring_events: Gauge,
    stack: Option<StackCounters>,
    ring: qnet_client::Client,
}

fn latency_histogram() -> Histogram {
    // 100 µs to ~26 s.
    Histogram::new(exponential_buckets(0.0001, 2.0, 19))
}

impl Metrics {
    pub fn new(ring: qnet_client::Client, stack: Option<StackCounters>) -> Metrics {
        let mut registry = Registry::default();
        let requests = Family::<Labels, Counter>::default();
        let latency =
            Family::<Labels, Histogram, fn() -> Histogram>::new_with_constructor(latency_histogram);
        let m = Metrics {
            requests,
            latency,
            connections_open: Gauge::default(),
            connections: Counter::default(),
            connections_rejected: Counter::default(),
            ring_submissions: Gauge::default(),
            ring_completions: Gauge::default(),
            ring_events: Gauge::default(),
            stack,
            ring,
            registry: Registry::default(),
        };
        registry.register(
            "qhttp_requests",
            "Requests answered, by route and status",
            m.requests.clone(),
        );
        registry.register(
            "qhttp_request_duration_seconds",
            "Time from request head to the response's last byte, by route and status",
            m.latency.clone(),
        );
        registry.register(
            "qhttp_connections_open",
            "Client connections open now",
            m.connections_open.clone(),
        );
        registry.register(
            "qhttp_connections",
            "Client connections accepted",
            m.connections.clone(),
        );
        registry.register(
            "qhttp_connections_rejected",
            "Client connections refused for the per-client limit",
            m.connections_rejected.clone(),
        );
        registry.register(
            "qnet_ring_submissions_pending",
            "Operations in the proxy's socket ring not yet taken by the stack",
            m.ring_submissions.clone(),
        );
        registry.register(
            "qnet_ring_completions_pending",
            "Completions in the proxy's socket ring not yet taken by the proxy",
            m.ring_completions.clone(),
        );
        registry.register(
            "qnet_ring_events_pending",
            "Readiness events in the proxy's socket ring not yet taken by the proxy",
            m.ring_events.clone(),
        );
        Metrics { registry, ..m }
    }

    /// Records one finished request.
    pub fn request(&self, route: &str, status: u16, took: Duration) {
        let labels = [("route", route.to_string()), ("status", status.to_string())];
        self.requests.get_or_create(&labels).inc();
        self.latency
            .get_or_create(&labels)
            .observe(took.as_secs_f64());
    }

    /// The OpenMetrics text of everything, the stack's counters included.
    pub fn render(&self) -> String {
        let occ = self.ring.occupancy();
        self.ring_submissions.set(occ.submissions.into());
        self.ring_completions.set(occ.completions.into());
        self.ring_events.set(occ.events.into());
        let mut text = String::new();
        if encode(&mut text, &self.registry).is_err() {
            return "# EOF\n".into();
        }
        // The stack's samples go before the terminating `# EOF`.
        if let (Some(stack), Some(body)) = (&self.stack, text.strip_suffix("# EOF\n")) {
            let mut out = body.to_string();
            for s in stack() {
                let kind = if s.counter { "counter" } else { "gauge" };
                let suffix = if s.counter { "_total" } else { "" };
                let _ = write!(
                    out,
                    "# HELP qnet_{n} {h}.\n# TYPE qnet_{n} {kind}\nqnet_{n}{suffix} {v}\n",
                    n = s.name,
                    h = s.help,
                    v = s.value
                );
            }
            out.push_str("# EOF\n");
            text = out;
        }
        text
    }
}

//! Prometheus metrics: requests by route and status, and the tokens each user spent on
//! each backend. One registry per server, so tests that start several do not mix counts.

use prometheus::{Encoder, IntCounterVec, IntGaugeVec, Opts, Registry, TextEncoder};

/// Marks an answer whose request is counted (and logged) when its body ends, with the
/// outcome it really had, rather than when its headers leave: a stream.
#[derive(Debug, Clone, Copy)]
pub struct CountedAtEnd;

/// The server's counters.
pub struct Metrics {
    registry: Registry,
    requests: IntCounterVec,
    tokens: IntCounterVec,
    queue_depth: IntGaugeVec,
    in_flight: IntGaugeVec,
    rejections: IntCounterVec,
}

impl Metrics {
    /// Registers every metric.
    pub fn new() -> Metrics {
        let registry = Registry::new();
        let requests = IntCounterVec::new(
            Opts::new(
                "switchyard_requests_total",
                "Requests answered, by route and status.",
            ),
            &["route", "status"],
        )
        .expect("valid metric definition");
        let tokens = IntCounterVec::new(
            Opts::new(
                "switchyard_tokens_total",
                "Tokens spent, by user (\"anonymous\" without keys), backend and kind (prompt or completion).",
            ),
            &["user", "backend", "kind"],
        )
        .expect("valid metric definition");
        let queue_depth = IntGaugeVec::new(
            Opts::new(
                "switchyard_queue_depth",
                "Requests waiting for a free slot, by backend.",
            ),
            &["backend"],
        )
        .expect("valid metric definition");
        let in_flight = IntGaugeVec::new(
            Opts::new(
                "switchyard_in_flight",
                "Requests holding a slot (from the upstream call to the answer's last byte), by backend.",
            ),
            &["backend"],
        )
        .expect("valid metric definition");
        let rejections = IntCounterVec::new(
            Opts::new(
                "switchyard_rejections_total",
                "Requests refused before reaching a backend for a limit, by user and reason (rpm, tpm, tokens_per_day, max_concurrent, queue_full, queue_timeout).",
            ),
            &["user", "reason"],
        )
        .expect("valid metric definition");
        for metric in [&requests, &tokens, &rejections] {
            registry
                .register(Box::new(metric.clone()))
                .expect("unique metric name");
        }
        for metric in [&queue_depth, &in_flight] {
            registry
                .register(Box::new(metric.clone()))
                .expect("unique metric name");
        }
        Metrics {
            registry,
            requests,
            tokens,
            queue_depth,
            in_flight,
            rejections,
        }
    }

    /// Counts one answered request; `route` is the route's pattern, never the raw path,
    /// so the label set stays small.
    pub fn request(&self, route: &str, status: actix_web::http::StatusCode) {
        self.requests
            .with_label_values(&[route, status.as_str()])
            .inc();
    }

    /// Adds what one answer cost.
    pub fn tokens(&self, user: &str, backend: &str, prompt: u64, completion: u64) {
        self.tokens
            .with_label_values(&[user, backend, "prompt"])
            .inc_by(prompt);
        self.tokens
            .with_label_values(&[user, backend, "completion"])
            .inc_by(completion);
    }

    /// Sets how many requests wait for a slot of `backend`.
    pub fn queue_depth(&self, backend: &str, waiting: usize) {
        self.queue_depth
            .with_label_values(&[backend])
            .set(i64::try_from(waiting).unwrap_or(i64::MAX));
    }

    /// Sets how many requests hold a slot of `backend`.
    pub fn in_flight(&self, backend: &str, running: usize) {
        self.in_flight
            .with_label_values(&[backend])
            .set(i64::try_from(running).unwrap_or(i64::MAX));
    }

    /// Counts a request refused for a limit; `reason` is one of a fixed few words.
    pub fn rejected(&self, user: &str, reason: &str) {
        self.rejections.with_label_values(&[user, reason]).inc();
    }

    /// The text exposition format.
    pub fn render(&self) -> Vec<u8> {
        let mut out = Vec::new();
        let _ = TextEncoder::new().encode(&self.registry.gather(), &mut out);
        out
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

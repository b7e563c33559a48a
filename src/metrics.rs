//! Prometheus metrics: requests by route and status, and the tokens each user spent on
//! each backend. One registry per server, so tests that start several do not mix counts.

use prometheus::{Encoder, IntCounterVec, Opts, Registry, TextEncoder};

/// Marks an answer whose request is counted (and logged) when its body ends, with the
/// outcome it really had, rather than when its headers leave: a stream.
#[derive(Debug, Clone, Copy)]
pub struct CountedAtEnd;

/// The server's counters.
pub struct Metrics {
    registry: Registry,
    requests: IntCounterVec,
    tokens: IntCounterVec,
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
        registry
            .register(Box::new(requests.clone()))
            .expect("unique metric name");
        registry
            .register(Box::new(tokens.clone()))
            .expect("unique metric name");
        Metrics {
            registry,
            requests,
            tokens,
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

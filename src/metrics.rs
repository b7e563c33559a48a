//! Prometheus metrics: requests by dialect, backend, model and status; latency and time
//! to first token; the tokens each user spent on each backend and model; upstream
//! errors by kind; queue depth, in-flight requests and refusals; and, by route, every
//! HTTP answer. One registry per server, so tests that start several do not mix counts.
//!
//! A model label takes the name the client sent, which a client may invent: the first
//! [`MODEL_LABELS`] distinct names keep their own label and every later one counts as
//! `other`, so the label set (and memory) stays bounded whatever clients send.

use std::collections::HashSet;
use std::sync::RwLock;

use prometheus::{
    Encoder, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGaugeVec, Opts, Registry,
    TextEncoder,
};

use crate::usage::Outcome;

/// Distinct model names that get a label of their own.
pub const MODEL_LABELS: usize = 500;

/// Marks an answer whose request is counted (and logged) when its body ends, with the
/// outcome it really had, rather than when its headers leave: a stream.
#[derive(Debug, Clone, Copy)]
pub struct CountedAtEnd;

/// The server's counters.
pub struct Metrics {
    registry: Registry,
    http_requests: IntCounterVec,
    requests: IntCounterVec,
    latency: HistogramVec,
    first_token: HistogramVec,
    tokens: IntCounterVec,
    upstream_errors: IntCounterVec,
    queue_depth: IntGaugeVec,
    in_flight: IntGaugeVec,
    rejections: IntCounterVec,
    ledger_dropped: IntCounter,
    /// Model names that have a label of their own.
    models: RwLock<HashSet<Box<str>>>,
    model_cap: usize,
}

/// Buckets in seconds, from a cached echo to a long generation.
const LATENCY_BUCKETS: &[f64] = &[
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0,
];

fn counter(name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
    IntCounterVec::new(Opts::new(name, help), labels).expect("valid metric definition")
}

fn gauge(name: &str, help: &str, labels: &[&str]) -> IntGaugeVec {
    IntGaugeVec::new(Opts::new(name, help), labels).expect("valid metric definition")
}

fn histogram(name: &str, help: &str) -> HistogramVec {
    HistogramVec::new(
        HistogramOpts::new(name, help).buckets(LATENCY_BUCKETS.to_vec()),
        &["dialect", "backend"],
    )
    .expect("valid metric definition")
}

impl Metrics {
    /// Registers every metric, with the usual cap on model labels.
    pub fn new() -> Metrics {
        Metrics::with_model_cap(MODEL_LABELS)
    }

    /// Registers every metric; `model_cap` distinct model names keep their own label.
    pub fn with_model_cap(model_cap: usize) -> Metrics {
        let registry = Registry::new();
        let http_requests = counter(
            "switchyard_http_requests_total",
            "HTTP answers, by route pattern and status (every route, including listings and probes).",
            &["route", "status"],
        );
        let requests = counter(
            "switchyard_requests_total",
            "Chat, completion and embedding requests, by dialect, backend (\"none\" when none was reached), model asked and status.",
            &["dialect", "backend", "model", "status"],
        );
        let latency = histogram(
            "switchyard_request_duration_seconds",
            "Time from a request's arrival to its answer's end (a stream's last byte), by dialect and backend.",
        );
        let first_token = histogram(
            "switchyard_time_to_first_token_seconds",
            "Time from a streamed request's arrival to its first event from the upstream, by dialect and backend.",
        );
        let tokens = counter(
            "switchyard_tokens_total",
            "Tokens spent, by user (\"anonymous\" without keys), backend, model asked and kind (prompt or completion).",
            &["user", "backend", "model", "kind"],
        );
        let upstream_errors = counter(
            "switchyard_upstream_errors_total",
            "Failed upstream calls, by backend and kind (connect, timeout, status, reset, garbage).",
            &["backend", "kind"],
        );
        let queue_depth = gauge(
            "switchyard_queue_depth",
            "Requests waiting for a free slot, by backend.",
            &["backend"],
        );
        let in_flight = gauge(
            "switchyard_in_flight",
            "Requests holding a slot (from the upstream call to the answer's last byte), by backend.",
            &["backend"],
        );
        let rejections = counter(
            "switchyard_rejections_total",
            "Requests refused before reaching a backend for a limit, by user and reason (rpm, tpm, tokens_per_day, max_concurrent, queue_full, queue_timeout).",
            &["user", "reason"],
        );
        let ledger_dropped = IntCounter::new(
            "switchyard_ledger_dropped_total",
            "Usage ledger rows dropped because the writer fell behind (its queue was full).",
        )
        .expect("valid metric definition");
        for metric in [
            &http_requests,
            &requests,
            &tokens,
            &upstream_errors,
            &rejections,
        ] {
            registry
                .register(Box::new(metric.clone()))
                .expect("unique metric name");
        }
        for metric in [&latency, &first_token] {
            registry
                .register(Box::new(metric.clone()))
                .expect("unique metric name");
        }
        for metric in [&queue_depth, &in_flight] {
            registry
                .register(Box::new(metric.clone()))
                .expect("unique metric name");
        }
        registry
            .register(Box::new(ledger_dropped.clone()))
            .expect("unique metric name");
        Metrics {
            registry,
            http_requests,
            requests,
            latency,
            first_token,
            tokens,
            upstream_errors,
            queue_depth,
            in_flight,
            rejections,
            ledger_dropped,
            models: RwLock::new(HashSet::new()),
            model_cap,
        }
    }

    /// Counts one HTTP answer; `route` is the route's pattern, never the raw path, so
    /// the label set stays small.
    pub fn request(&self, route: &str, status: actix_web::http::StatusCode) {
        self.http_requests
            .with_label_values(&[route, status.as_str()])
            .inc();
    }

    /// Counts one finished request of a dialect: its status, times and tokens.
    pub fn outcome(&self, outcome: &Outcome) {
        let backend = outcome.backend.as_deref().unwrap_or("none");
        let labels = self.models.read();
        let known = labels
            .as_ref()
            .is_ok_and(|models| models.contains(outcome.model.as_str()));
        drop(labels);
        // An empty name (refused before the body was read) needs no place of its own.
        let model = if known || outcome.model.is_empty() || self.admit_model(&outcome.model) {
            outcome.model.as_str()
        } else {
            "other"
        };
        let mut status = itoa::Buffer::new();
        self.requests
            .with_label_values(&[
                outcome.dialect,
                backend,
                model,
                status.format(outcome.status),
            ])
            .inc();
        self.latency
            .with_label_values(&[outcome.dialect, backend])
            .observe(outcome.latency.as_secs_f64());
        if let Some(first) = outcome.first_token {
            self.first_token
                .with_label_values(&[outcome.dialect, backend])
                .observe(first.as_secs_f64());
        }
        if outcome.backend.is_some() {
            self.tokens
                .with_label_values(&[&outcome.user, backend, model, "prompt"])
                .inc_by(outcome.prompt_tokens);
            self.tokens
                .with_label_values(&[&outcome.user, backend, model, "completion"])
                .inc_by(outcome.completion_tokens);
        }
    }

    /// Gives `model` a label of its own while fewer than the cap have one.
    fn admit_model(&self, model: &str) -> bool {
        let Ok(mut models) = self.models.write() else {
            return false;
        };
        if models.contains(model) {
            return true;
        }
        if models.len() >= self.model_cap {
            return false;
        }
        models.insert(model.into());
        true
    }

    /// Counts a failed upstream call; `kind` is one of a fixed few words.
    pub fn upstream_error(&self, backend: &str, kind: &str) {
        self.upstream_errors
            .with_label_values(&[backend, kind])
            .inc();
    }

    /// Counts a usage ledger row dropped because the writer fell behind.
    pub fn ledger_dropped(&self) {
        self.ledger_dropped.inc();
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

//! What each request of a dialect cost and how it ended, recorded once when it ends.
//!
//! A chat, completion or embedding request gathers its [`Draft`] as it goes (the model
//! asked, the backend and upstream model that answered, the usage reported, when the
//! first event came) and becomes one [`Outcome`] when it ends: when a whole answer is
//! rendered or an error answered, when a stream ends, or when a client leaves (the
//! request's future or stream is dropped, and the outcome says so, with the tokens it
//! had used). The [`Recorder`] hands every outcome to the metrics, charges a limited
//! key's token budgets, and queues it for the usage ledger (`ledger`), whose one writer
//! thread stores it off the request path. `switchyard usage` (`report`) reads the
//! ledger back.

pub mod ledger;
pub mod report;
mod rows;

use std::path::PathBuf;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant, SystemTime};

use actix_web::http::StatusCode;
use serde::Deserialize;

use crate::auth::KeyStore;
use crate::chat::Event;
use crate::error::GatewayError;
use crate::keys::KeyPolicy;
use crate::metrics::Metrics;

/// `[ledger]` in the config: where the usage ledger lives, and whether it is kept.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LedgerConfig {
    /// Keep the ledger (one row per request); `false` keeps none.
    pub enabled: bool,
    /// The SQLite file; a relative path is under the working directory. Its folder is
    /// created when missing.
    pub path: PathBuf,
}

/// Where the ledger is kept when the config says nothing.
pub const DEFAULT_LEDGER_PATH: &str = "data/switchyard.db";

impl Default for LedgerConfig {
    fn default() -> Self {
        LedgerConfig {
            enabled: true,
            path: PathBuf::from(DEFAULT_LEDGER_PATH),
        }
    }
}

/// How one request ended: one ledger row, and what the metrics count.
#[derive(Debug, Clone)]
pub struct Outcome {
    /// When it ended.
    pub at: SystemTime,
    pub user: Arc<str>,
    /// The key it came with (`None` when served anonymously); the ledger keeps its id,
    /// never the key.
    pub key: Option<Arc<KeyPolicy>>,
    /// The dialect's name (`Dialect::NAME`).
    pub dialect: &'static str,
    /// The model as the client named it (empty when refused before the body was read).
    pub model: String,
    /// The backend that answered or failed last; `None` when none was reached.
    pub backend: Option<Arc<str>>,
    /// The model as that backend knows it.
    pub upstream_model: Option<String>,
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
    pub status: u16,
    /// From arrival to the answer's end (a stream's last byte, or the client leaving).
    pub latency: Duration,
    /// From arrival to a stream's first event from the upstream; `None` for whole answers.
    pub first_token: Option<Duration>,
    /// The client left before its answer was complete.
    pub client_left: bool,
}

/// What a request has gathered so far, until it becomes an [`Outcome`].
#[derive(Debug, Default)]
pub struct Draft {
    pub dialect: &'static str,
    pub model: String,
    pub backend: Option<Arc<str>>,
    pub upstream_model: Option<String>,
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
    /// Whether the backend reported usage; without it a stream's completion tokens are
    /// its relayed pieces of text.
    pub reported: bool,
    /// Pieces of generated text relayed so far (a stream's estimate of its tokens).
    pub pieces: u64,
    pub first_event: Option<Instant>,
}

impl Draft {
    /// Notes the target now being tried; `backend` is interned by the recorder.
    pub fn target(&mut self, backend: Arc<str>, model: &str) {
        self.backend = Some(backend);
        match &mut self.upstream_model {
            Some(known) if known == model => {}
            known => *known = Some(model.to_owned()),
        }
    }

    /// Notes the usage a backend reported.
    pub fn usage(&mut self, prompt: u64, completion: u64) {
        self.prompt_tokens = prompt;
        self.completion_tokens = completion;
        self.reported = true;
    }

    /// Notes one streamed event: usage as reported, else pieces of text as they pass.
    /// No allocation: it runs once per streamed chunk.
    pub fn saw(&mut self, event: &Event) {
        match event {
            Event::Usage(usage) => self.usage(usage.prompt_tokens, usage.completion_tokens),
            Event::Text(_) | Event::Thinking(_) | Event::ToolCall(_) => self.pieces += 1,
            Event::Finish(_)
            | Event::StopSequence(_)
            | Event::PromptTokens(_)
            | Event::ThinkingSignature(_) => {}
        }
    }

    /// The completion tokens to record: reported, or estimated from the pieces relayed
    /// (most servers stream one token a piece) when the stream stopped before usage.
    fn completion(&self) -> u64 {
        if self.reported {
            self.completion_tokens
        } else {
            self.pieces
        }
    }
}

/// The kind of upstream failure an error is, for `switchyard_upstream_errors_total`;
/// `None` for errors that are not the upstream's.
pub fn upstream_error_kind(error: &GatewayError) -> Option<(&str, &'static str)> {
    match error {
        GatewayError::UpstreamUnreachable { backend, detail } => {
            // A connection that broke once the answer had begun, as opposed to one that
            // could not be made.
            let reset = detail.starts_with("the connection broke")
                || detail.starts_with("reading the body failed");
            Some((backend, if reset { "reset" } else { "connect" }))
        }
        GatewayError::UpstreamTimeout { backend, .. } => Some((backend, "timeout")),
        GatewayError::UpstreamStatus { backend, .. } => Some((backend, "status")),
        GatewayError::UpstreamProtocol { backend, .. } => Some((backend, "garbage")),
        _ => None,
    }
}

/// Takes every outcome: counts it, charges its key's token budgets, and queues it for
/// the ledger. One per server, shared by every worker.
pub struct Recorder {
    metrics: Arc<Metrics>,
    keys: Arc<KeyStore>,
    /// Backend names, shared rather than allocated for every request.
    backends: Vec<Arc<str>>,
    /// Set when the ledger opens (`serve`); absent when it is off.
    ledger: OnceLock<ledger::Ledger>,
    /// The last upstream failures, for the console's overview.
    recent_errors: crate::console::RecentErrors,
}

impl Recorder {
    pub fn new(metrics: Arc<Metrics>, keys: Arc<KeyStore>, backends: &[String]) -> Recorder {
        Recorder {
            metrics,
            keys,
            backends: backends
                .iter()
                .map(|name| Arc::from(name.as_str()))
                .collect(),
            ledger: OnceLock::new(),
            recent_errors: crate::console::RecentErrors::default(),
        }
    }

    /// Opens the ledger (when enabled), starts its writer and seeds each key's tokens
    /// of the day from it, so `tokens_per_day` holds across a restart.
    pub fn open_ledger(&self, config: &LedgerConfig) -> Result<(), String> {
        if !config.enabled || self.ledger.get().is_some() {
            return Ok(());
        }
        let (ledger, today) = ledger::Ledger::open(&config.path, self.metrics.clone())?;
        self.keys.limits().seed_day(today);
        let _ = self.ledger.set(ledger);
        Ok(())
    }

    /// Writes every row queued so far and stops the writer; later outcomes are counted
    /// but not stored.
    pub fn close(&self) {
        if let Some(ledger) = self.ledger.get() {
            ledger.close();
        }
    }

    /// The shared name of a configured backend.
    pub fn backend(&self, name: &str) -> Arc<str> {
        self.backends
            .iter()
            .find(|known| &***known == name)
            .cloned()
            .unwrap_or_else(|| Arc::from(name))
    }

    /// Counts an upstream call that failed.
    pub fn upstream_failed(&self, error: &GatewayError) {
        if let Some((backend, kind)) = upstream_error_kind(error) {
            self.metrics.upstream_error(backend, kind);
            self.recent_errors.note(backend, kind, error.to_string());
        }
    }

    /// The last upstream failures, newest first on reading.
    pub fn recent_errors(&self) -> &crate::console::RecentErrors {
        &self.recent_errors
    }

    /// Records a finished request.
    pub fn record(&self, outcome: Outcome) {
        self.metrics.outcome(&outcome);
        if let Some(key) = &outcome.key {
            self.keys
                .limits()
                .spend(key, outcome.prompt_tokens + outcome.completion_tokens);
        }
        if let Some(cluster) = self.keys.cluster() {
            crate::cluster::usage::note(cluster, &outcome);
        }
        if let Some(ledger) = self.ledger.get() {
            ledger.write(outcome);
        }
    }

    /// Records a request refused before its body was read (a bad or refused key, a
    /// limit): no model, no backend.
    pub fn refused(
        &self,
        dialect: &'static str,
        user: Option<Arc<str>>,
        key: Option<Arc<KeyPolicy>>,
        status: StatusCode,
        arrived: Instant,
    ) {
        let outcome = Outcome {
            at: SystemTime::now(),
            user: user.unwrap_or_else(|| Arc::from("")),
            dialect,
            model: String::new(),
            backend: None,
            upstream_model: None,
            prompt_tokens: 0,
            completion_tokens: 0,
            status: status.as_u16(),
            latency: arrived.elapsed(),
            first_token: None,
            client_left: false,
            key: None,
        };
        self.metrics.outcome(&outcome);
        // Only a known key's refusals are its usage; a stranger's never reach the ledger.
        let Some(key) = key else { return };
        let outcome = Outcome {
            key: Some(key),
            ..outcome
        };
        if let Some(cluster) = self.keys.cluster() {
            crate::cluster::usage::note(cluster, &outcome);
        }
        if let Some(ledger) = self.ledger.get() {
            ledger.write(outcome);
        }
    }

    /// Turns a finished draft into its outcome and records it.
    pub fn finish(&self, request: Finished) {
        let Finished {
            draft,
            user,
            key,
            status,
            arrived,
            client_left,
        } = request;
        let completion_tokens = draft.completion();
        self.record(Outcome {
            at: SystemTime::now(),
            user,
            key,
            dialect: draft.dialect,
            model: draft.model,
            backend: draft.backend,
            upstream_model: draft.upstream_model,
            prompt_tokens: draft.prompt_tokens,
            completion_tokens,
            status: status.as_u16(),
            latency: arrived.elapsed(),
            first_token: draft.first_event.map(|at| at.duration_since(arrived)),
            client_left,
        });
    }
}

/// Records a request a dialect's scope refused at its door (a missing, wrong or refused
/// key, a limit), with the user when the key was known.
pub fn refused_at_door(
    request: &actix_web::dev::ServiceRequest,
    dialect: &'static str,
    error: &GatewayError,
) {
    use actix_web::HttpMessage;
    let Some(recorder) = request.app_data::<actix_web::web::Data<Recorder>>() else {
        return;
    };
    let extensions = request.extensions();
    let user = extensions
        .get::<crate::auth::User>()
        .map(|user| user.0.clone());
    let key = extensions
        .get::<crate::auth::Key>()
        .map(|key| key.0.clone());
    let arrived = extensions
        .get::<crate::timing::Stopwatch>()
        .map_or_else(Instant::now, crate::timing::Stopwatch::arrived);
    drop(extensions);
    recorder.refused(dialect, user, key, error.status(), arrived);
}

/// A request's draft with who asked and how it ended.
pub struct Finished {
    pub draft: Draft,
    pub user: Arc<str>,
    pub key: Option<Arc<KeyPolicy>>,
    pub status: StatusCode,
    pub arrived: Instant,
    pub client_left: bool,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn upstream_errors_map_to_their_kind() {
        let kind = |error: GatewayError| upstream_error_kind(&error).map(|(_, kind)| kind);
        assert_eq!(
            kind(GatewayError::UpstreamUnreachable {
                backend: "b".into(),
                detail: "connection refused".into()
            }),
            Some("connect")
        );
        assert_eq!(
            kind(GatewayError::UpstreamUnreachable {
                backend: "b".into(),
                detail: "the connection broke mid-answer: eof".into()
            }),
            Some("reset")
        );
        assert_eq!(
            kind(GatewayError::UpstreamTimeout {
                backend: "b".into(),
                detail: "slow".into()
            }),
            Some("timeout")
        );
        assert_eq!(
            kind(GatewayError::UpstreamProtocol {
                backend: "b".into(),
                detail: "not JSON".into()
            }),
            Some("garbage")
        );
        assert_eq!(kind(GatewayError::ClientGone), None);
    }

    #[test]
    fn a_stream_without_usage_counts_its_pieces() {
        let mut draft = Draft::default();
        draft.saw(&Event::Text("a".into()));
        draft.saw(&Event::Text("b".into()));
        assert_eq!(draft.completion(), 2);
        draft.saw(&Event::Usage(crate::chat::Usage {
            prompt_tokens: 7,
            completion_tokens: 5,
            ..Default::default()
        }));
        assert_eq!((draft.prompt_tokens, draft.completion()), (7, 5));
    }
}

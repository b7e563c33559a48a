//! What the gateway speaks to upstreams: one folder per kind, all behind [`Backend`].
//!
//! A backend turns a canonical [`ChatRequest`] into its upstream's call and the answer
//! into canonical [`Event`](crate::chat::Event)s; it knows nothing of the client's dialect.
//! Four kinds need no trait objects: one enum and one `match` say it plainly. Each
//! kind's configuration lives beside it; [`BackendSettings`] names them all, so a new
//! kind is a folder here and a variant there.

pub mod anthropic;
pub mod echo;
mod error_body;
pub mod keys;
pub mod ollama;
pub mod openai;
pub mod pieces;
pub mod pool;
mod upstream;
mod upstream_config;

pub use pool::{Pool, Pools};
pub use upstream::Upstream;
pub use upstream_config::{BaseUrl, UpstreamAuth, UpstreamConfig, UpstreamFields};

use std::sync::Arc;

use serde::Deserialize;
use serde_json::{json, Value};

use crate::chat::{ChatRequest, Completion, EventStream};
use crate::embed::{EmbedRequest, Embeddings};
use crate::error::GatewayError;

/// A backend's settings as written in the config file, told apart by `kind`. Each
/// variant's fields are its kind's own, and a field no kind knows is an error.
#[derive(Debug, Deserialize)]
#[serde(tag = "kind", deny_unknown_fields)]
pub enum BackendSettings {
    #[serde(rename = "openai")]
    OpenAi(openai::OpenAiConfig),
    #[serde(rename = "ollama")]
    Ollama(ollama::OllamaConfig),
    #[serde(rename = "anthropic")]
    Anthropic(anthropic::AnthropicConfig),
    /// Built in, no upstream: it takes no settings at all.
    #[serde(rename = "echo")]
    Echo {},
}

/// The kinds' names, for the message that lists them.
pub const KIND_NAMES: &str = "\"openai\", \"ollama\", \"anthropic\" or \"echo\"";

impl BackendSettings {
    /// Checks the settings of the backend at `key` (`backends[2]`) once, at start, into
    /// types that cannot be wrong later; the error names the field at fault.
    pub fn check(self, key: &str) -> Result<BackendKind, String> {
        Ok(match self {
            BackendSettings::OpenAi(config) => BackendKind::OpenAi(config.check(key)?),
            BackendSettings::Ollama(config) => BackendKind::Ollama(config.check(key)?),
            BackendSettings::Anthropic(config) => BackendKind::Anthropic(config.check(key)?),
            BackendSettings::Echo {} => BackendKind::Echo,
        })
    }
}

/// One checked backend.
#[derive(Debug, Clone, PartialEq)]
pub struct BackendConfig {
    pub name: String,
    pub kind: BackendKind,
    /// `max_concurrent` and its line, for every kind alike; `None`: no limit.
    pub queue: Option<crate::queue::QueueSettings>,
    /// `max_output_tokens`, for every kind alike: the most a request's `max_tokens` may
    /// ask of this backend (larger values are lowered to it); `None`: no cap.
    pub max_output_tokens: Option<u64>,
}

/// What a backend talks to, checked.
#[derive(Debug, Clone, PartialEq)]
pub enum BackendKind {
    /// Any OpenAI-compatible server.
    OpenAi(UpstreamConfig),
    /// Native Ollama.
    Ollama(UpstreamConfig),
    /// Anthropic's Messages API.
    Anthropic(anthropic::AnthropicSettings),
    /// Built in, no upstream.
    Echo,
}

impl BackendKind {
    /// The kind's name as written in the config file.
    pub fn name(&self) -> &'static str {
        match self {
            BackendKind::OpenAi(_) => "openai",
            BackendKind::Ollama(_) => "ollama",
            BackendKind::Anthropic(_) => "anthropic",
            BackendKind::Echo => "echo",
        }
    }

    /// The upstream, for kinds that have one.
    pub fn upstream(&self) -> Option<&UpstreamConfig> {
        match self {
            BackendKind::OpenAi(upstream) | BackendKind::Ollama(upstream) => Some(upstream),
            BackendKind::Anthropic(settings) => Some(&settings.upstream),
            BackendKind::Echo => None,
        }
    }
}

/// A model a backend offers, as its upstream describes it.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ModelEntry {
    /// The upstream's own name for it (no backend prefix).
    pub id: String,
    /// Unix seconds, when known.
    pub created: Option<u64>,
    /// RFC 3339, when the upstream gave one (Ollama).
    pub modified_at: Option<String>,
    pub owned_by: Option<String>,
    pub size: Option<u64>,
    /// Ollama's `details` object, passed on as-is.
    pub details: Option<serde_json::Value>,
}

/// One configured backend, ready to serve (one per worker: its HTTP client is not `Send`).
pub enum Backend {
    OpenAi(openai::OpenAiBackend),
    Ollama(ollama::OllamaBackend),
    Anthropic(anthropic::AnthropicBackend),
    Echo(echo::EchoBackend),
}

impl Backend {
    /// Builds the running backend from its checked configuration and its servers'
    /// pool, which all workers share (a fresh one when none is given).
    pub fn new(config: &BackendConfig, pool: Option<Arc<Pool>>) -> Backend {
        let pool = |upstream: &UpstreamConfig| {
            pool.clone()
                .unwrap_or_else(|| Arc::new(Pool::for_config(upstream)))
        };
        match &config.kind {
            BackendKind::OpenAi(upstream) => Backend::OpenAi(openai::OpenAiBackend::new(
                Upstream::new(&config.name, upstream, pool(upstream), "/models"),
            )),
            BackendKind::Ollama(upstream) => Backend::Ollama(ollama::OllamaBackend::new(
                Upstream::new(&config.name, upstream, pool(upstream), "/api/version"),
            )),
            BackendKind::Anthropic(settings) => {
                let upstream = &settings.upstream;
                // The length it asks when the client named none stays under the cap too.
                let default_max_tokens = config
                    .max_output_tokens
                    .map_or(settings.default_max_tokens, |cap| {
                        cap.min(settings.default_max_tokens)
                    });
                Backend::Anthropic(anthropic::AnthropicBackend::new(
                    Upstream::new(&config.name, upstream, pool(upstream), "/models"),
                    default_max_tokens,
                ))
            }
            BackendKind::Echo => Backend::Echo(echo::EchoBackend),
        }
    }

    /// Starts a chat with `model`, the upstream's name for it (routing has removed the
    /// prefix); the stream yields the answer as it arrives. Errors before the upstream
    /// accepted the request come back here, errors after it in the stream.
    pub async fn chat(
        &self,
        model: &str,
        request: &ChatRequest<'_>,
    ) -> Result<EventStream, GatewayError> {
        match self {
            Backend::OpenAi(backend) => backend.chat(model, request).await,
            Backend::Ollama(backend) => backend.chat(model, request).await,
            Backend::Anthropic(backend) => backend.chat(model, request).await,
            Backend::Echo(backend) => Ok(backend.chat(request)),
        }
    }

    /// The whole answer at once, for clients that did not ask to stream: upstreams are
    /// asked for it whole too (one object instead of a line per token, and some servers
    /// report usage only on whole answers).
    pub async fn complete(
        &self,
        model: &str,
        request: &ChatRequest<'_>,
    ) -> Result<Completion, GatewayError> {
        match self {
            Backend::OpenAi(backend) => backend.complete(model, request).await,
            Backend::Ollama(backend) => backend.complete(model, request).await,
            Backend::Anthropic(backend) => backend.complete(model, request).await,
            Backend::Echo(backend) => Completion::collect(backend.chat(request)).await,
        }
    }

    /// The upstream's count of a request's input tokens, where the kind can count
    /// without generating (Anthropic's); `None` otherwise.
    pub async fn count_tokens(
        &self,
        model: &str,
        request: &ChatRequest<'_>,
    ) -> Result<Option<u64>, GatewayError> {
        match self {
            Backend::Anthropic(backend) => backend.count_tokens(model, request).await,
            Backend::OpenAi(_) | Backend::Ollama(_) | Backend::Echo(_) => Ok(None),
        }
    }

    /// The models the upstream offers.
    pub async fn models(&self) -> Result<Vec<ModelEntry>, GatewayError> {
        match self {
            Backend::OpenAi(backend) => backend.models().await,
            Backend::Ollama(backend) => backend.models().await,
            Backend::Anthropic(backend) => backend.models().await,
            Backend::Echo(_) => Ok(echo::EchoBackend::models()),
        }
    }

    /// Embeds texts with `model` (the upstream's name), one vector per input.
    pub async fn embed(
        &self,
        model: &str,
        request: &EmbedRequest,
    ) -> Result<Embeddings, GatewayError> {
        match self {
            Backend::OpenAi(backend) => backend.embed(model, request).await,
            Backend::Ollama(backend) => backend.embed(model, request).await,
            Backend::Anthropic(backend) => Err(backend.embed()),
            Backend::Echo(_) => Ok(echo::EchoBackend::embed(request)),
        }
    }

    /// What is known of one model, in the shape of Ollama's `/api/show`. Only Ollama
    /// can say more than a model's name; the others answer with what the gateway knows.
    pub async fn show(&self, model: &str) -> Result<Value, GatewayError> {
        match self {
            Backend::Ollama(backend) => backend.show(model).await,
            Backend::OpenAi(_) | Backend::Anthropic(_) => {
                Ok(synthesized_show(&["completion", "tools"]))
            }
            Backend::Echo(_) => Ok(synthesized_show(&["completion", "embedding"])),
        }
    }

    /// The models the upstream has loaded now (only Ollama knows).
    pub async fn running(&self) -> Result<Vec<Value>, GatewayError> {
        match self {
            Backend::Ollama(backend) => backend.running().await,
            Backend::OpenAi(_) | Backend::Anthropic(_) | Backend::Echo(_) => Ok(Vec::new()),
        }
    }

    /// The configured kind's name, for `/health` and logs.
    pub fn kind_name(&self) -> &'static str {
        match self {
            Backend::OpenAi(_) => "openai",
            Backend::Ollama(_) => "ollama",
            Backend::Anthropic(_) => "anthropic",
            Backend::Echo(_) => "echo",
        }
    }
}

/// An upstream request body as JSON, written in pieces (see [`pieces`]): a small one in
/// one buffer of `capacity` bytes (an estimate of its size) rather than one growing
/// from empty through every power of two, copying the body each time.
fn json_body<T: serde::Serialize>(
    value: &T,
    capacity: usize,
) -> Result<pieces::Encoded, GatewayError> {
    let mut body = pieces::Writer::new(capacity);
    serde_json::to_writer(&mut body, value)
        .map_err(|e| GatewayError::bad_request(format!("cannot encode the request: {e}")))?;
    Ok(body.finish())
}

/// A message's text parts joined by newlines, borrowed when there is only one.
fn text_of<'a>(message: &'a crate::chat::Message<'_>) -> crate::chat::WireText<'a> {
    message.wire_text()
}

/// About the size of a chat request's JSON: its texts and images and a little for the
/// keys and settings around them.
fn body_capacity(request: &ChatRequest) -> usize {
    let messages: usize = request
        .messages
        .iter()
        .map(|message| {
            let parts: usize = message
                .parts
                .iter()
                .map(|part| match part {
                    crate::chat::Part::Text(text) => text.len(),
                    crate::chat::Part::JsonText(literal) => literal.get().len(),
                    crate::chat::Part::Image(crate::chat::Image::Base64 { data, .. }) => {
                        data.len() + 32
                    }
                    crate::chat::Part::Image(crate::chat::Image::Url(url)) => url.len() + 32,
                })
                .sum();
            let calls: usize = message
                .tool_calls
                .iter()
                .map(|call| call.name.len() + call.arguments.len() + 64)
                .sum();
            parts + calls + message.thinking().map_or(0, |text| text.len()) + 64
        })
        .sum();
    // Text may grow a little by escaping; an eighth more covers the usual case.
    1024 + messages + messages / 8
}

/// About the size of an embeddings request's JSON.
fn embed_capacity(request: &EmbedRequest) -> usize {
    let inputs: usize = request.inputs.iter().map(|input| input.len() + 4).sum();
    256 + inputs + inputs / 8
}

/// Reads what is left of a finished answer's body, briefly, so its connection goes back
/// to the pool: awc closes a connection whose body was not read to the end, and a new
/// connection per request costs more than the whole rest of the gateway's work. A
/// server that keeps the body open after its last event is cut off.
async fn drain<S: futures::Stream + Unpin>(mut rest: S) {
    use futures::StreamExt;
    let _ = tokio::time::timeout(std::time::Duration::from_millis(100), async {
        while rest.next().await.is_some() {}
    })
    .await;
}

/// An `/api/show` answer for a model whose server cannot describe it.
fn synthesized_show(capabilities: &[&str]) -> Value {
    json!({
        "modelfile": "",
        "parameters": "",
        "template": "",
        "details": {
            "parent_model": "", "format": "", "family": "", "families": [],
            "parameter_size": "", "quantization_level": ""
        },
        "model_info": {},
        "capabilities": capabilities,
    })
}

/// A stream decoder's failure as the gateway's error: the transport's own, or an
/// upstream that broke its framing.
fn stream_error(backend: &str, error: crate::framing::FramingError<GatewayError>) -> GatewayError {
    match error {
        crate::framing::FramingError::Transport(error) => error,
        crate::framing::FramingError::Invalid(detail) => GatewayError::UpstreamProtocol {
            backend: backend.to_owned(),
            detail,
        },
    }
}

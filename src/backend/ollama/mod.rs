//! Backend for a native Ollama server (`/api/chat`, `/api/generate`, `/api/tags`). A
//! streaming client's answer is asked for as a stream, a whole one whole; both are
//! decoded by the same code, so token counts and errors behave alike for every client.
//!
//! `encode` writes the request, `decode` reads the answer, `config` says how the
//! backend is configured; this file only makes the calls.

mod config;
mod decode;
mod encode;

pub use config::OllamaConfig;

use serde_json::{Map, Value};

use crate::chat::{ChatRequest, Completion, EventStream};
use crate::embed::{EmbedRequest, Embeddings};
use crate::error::GatewayError;

use super::{ModelEntry, Upstream};
use decode::{WireEmbed, WireTags};

/// A native Ollama upstream.
pub struct OllamaBackend {
    upstream: Upstream,
}

impl OllamaBackend {
    /// Wraps the upstream.
    pub fn new(upstream: Upstream) -> OllamaBackend {
        OllamaBackend { upstream }
    }

    /// Sends the chat to `/api/chat` (a plain completion to `/api/generate`) and decodes
    /// its NDJSON answer.
    pub async fn chat(
        &self,
        model: &str,
        request: &ChatRequest<'_>,
    ) -> Result<EventStream, GatewayError> {
        let (path, body) = encode::encode(&self.upstream.backend, model, request, true)?;
        let response = self.upstream.post_stream(path, body).await?;
        Ok(decode::stream(self.upstream.backend.clone(), response))
    }

    /// Asks for the whole answer at once (`"stream": false`), for clients that did not
    /// ask to stream: one object to read instead of a line per token.
    pub async fn complete(
        &self,
        model: &str,
        request: &ChatRequest<'_>,
    ) -> Result<Completion, GatewayError> {
        let (path, body) = encode::encode(&self.upstream.backend, model, request, false)?;
        let answer = self.upstream.post_for_body(path, body).await?;
        decode::whole(&self.upstream.backend, &answer, path)
    }

    /// Embeds through `/api/embed`.
    pub async fn embed(
        &self,
        model: &str,
        request: &EmbedRequest,
    ) -> Result<Embeddings, GatewayError> {
        let body = encode::embed(model, request)?;
        let answer: WireEmbed = self.upstream.post_json("/api/embed", body).await?;
        Ok(answer.into_embeddings())
    }

    /// Asks `/api/show`; the answer is passed on as Ollama gave it.
    pub async fn show(&self, model: &str) -> Result<Value, GatewayError> {
        let body = serde_json::json!({ "model": model })
            .to_string()
            .into_bytes()
            .into();
        let mut answer: Value = self.upstream.post_json("/api/show", body).await?;
        // ollama-python fails on an answer without model_info.
        if let Some(object) = answer.as_object_mut() {
            object
                .entry("model_info")
                .or_insert_with(|| Value::Object(Map::new()));
        }
        Ok(answer)
    }

    /// The loaded models from `/api/ps`.
    pub async fn running(&self) -> Result<Vec<Value>, GatewayError> {
        let answer: Value = self.upstream.get_json("/api/ps").await?;
        Ok(answer
            .get("models")
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default())
    }

    /// Lists `GET /api/tags`.
    pub async fn models(&self) -> Result<Vec<ModelEntry>, GatewayError> {
        let tags: WireTags = self.upstream.get_json("/api/tags").await?;
        Ok(tags.into_entries())
    }
}

//! Backend for Anthropic's API and any server speaking its Messages API
//! (llama-server's `/v1/messages`): the key in `x-api-key`, `anthropic-version` on
//! every request, `max_tokens` filled with the configured default when the client's
//! dialect has none. A streaming client's answer is asked for as a stream, a whole one
//! whole.
//!
//! `encode` writes the request, `decode` reads the answer, `config` says how the
//! backend is configured; this file only makes the calls.

mod config;
mod decode;
mod encode;

pub use config::{AnthropicConfig, AnthropicSettings};

use crate::chat::{ChatRequest, Completion, EventStream};
use crate::error::GatewayError;

use super::{ModelEntry, Upstream};

/// An Anthropic Messages upstream.
pub struct AnthropicBackend {
    upstream: Upstream,
    default_max_tokens: u64,
}

impl AnthropicBackend {
    /// Wraps the upstream.
    pub fn new(upstream: Upstream, default_max_tokens: u64) -> AnthropicBackend {
        AnthropicBackend {
            upstream,
            default_max_tokens,
        }
    }

    /// Sends the chat upstream and decodes its SSE answer.
    pub async fn chat(
        &self,
        model: &str,
        request: &ChatRequest<'_>,
    ) -> Result<EventStream, GatewayError> {
        let body = encode::encode(model, request, true, self.default_max_tokens)?;
        let response = self.upstream.post_stream("/messages", body).await?;
        Ok(decode::stream(self.upstream.backend.clone(), response))
    }

    /// Asks for the whole answer at once.
    pub async fn complete(
        &self,
        model: &str,
        request: &ChatRequest<'_>,
    ) -> Result<Completion, GatewayError> {
        let body = encode::encode(model, request, false, self.default_max_tokens)?;
        let answer = self.upstream.post_for_body("/messages", body).await?;
        decode::whole(&self.upstream.backend, &answer)
    }

    /// The upstream's count of the request's input tokens (`POST /messages/count_tokens`);
    /// `None` when the server has no such route (llama-server and other servers that
    /// speak only `/messages`).
    pub async fn count_tokens(
        &self,
        model: &str,
        request: &ChatRequest<'_>,
    ) -> Result<Option<u64>, GatewayError> {
        #[derive(serde::Deserialize)]
        struct Count {
            input_tokens: u64,
        }
        let body = encode::encode_count(model, request)?;
        match self
            .upstream
            .post_json::<Count>("/messages/count_tokens", body)
            .await
        {
            Ok(count) => Ok(Some(count.input_tokens)),
            Err(GatewayError::UpstreamStatus {
                status: 404 | 405 | 501,
                ..
            }) => Ok(None),
            Err(error) => Err(error),
        }
    }

    /// Lists `GET /models`.
    pub async fn models(&self) -> Result<Vec<ModelEntry>, GatewayError> {
        let list: decode::WireModelList = self.upstream.get_json("/models").await?;
        Ok(list.into_entries())
    }

    /// Anthropic serves no embeddings.
    pub fn embed(&self) -> GatewayError {
        GatewayError::bad_request(format!(
            "backend '{}' is an Anthropic backend, which has no embeddings",
            self.upstream.backend
        ))
    }
}

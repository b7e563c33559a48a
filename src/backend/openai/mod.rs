//! Backend for any OpenAI-compatible server: OpenAI itself, llama.cpp's llama-server,
//! vLLM, and the like. A streaming client's answer is asked for as a stream with usage,
//! a whole one whole; both are decoded by the same code, so token counts, timeouts and
//! cancellation work the same for both.
//!
//! `encode` writes the request, `decode` reads the answer, `config` says how the
//! backend is configured and `presets` which providers it knows by name; this file
//! only makes the calls.

mod config;
mod decode;
mod encode;
pub mod presets;

pub use config::OpenAiConfig;

use crate::chat::{ChatRequest, Completion, EventStream};
use crate::embed::{EmbedRequest, Embeddings};
use crate::error::GatewayError;

use super::{ModelEntry, Upstream};
use decode::{WireEmbeddings, WireModelList};
use encode::{EmbeddingsRequest, Encoder};

/// An OpenAI-compatible upstream.
pub struct OpenAiBackend {
    upstream: Upstream,
    /// OpenAI's own API rejects parameters it does not know, so llama-server's extra
    /// sampling knobs are only sent elsewhere.
    strict_parameters: bool,
}

impl OpenAiBackend {
    /// Wraps the upstream.
    pub fn new(upstream: Upstream) -> OpenAiBackend {
        let strict_parameters = upstream
            .first_url()
            .host()
            .is_some_and(|host| host.ends_with("api.openai.com"));
        OpenAiBackend {
            upstream,
            strict_parameters,
        }
    }

    fn encoder(&self) -> Encoder<'_> {
        Encoder {
            backend: &self.upstream.backend,
            strict_parameters: self.strict_parameters,
        }
    }

    /// Sends the chat upstream and decodes its SSE answer.
    pub async fn chat(
        &self,
        model: &str,
        request: &ChatRequest<'_>,
    ) -> Result<EventStream, GatewayError> {
        let (path, body) = self.encoder().encode(model, request, true)?;
        let response = self.upstream.post_stream(path, body).await?;
        Ok(decode::stream(self.upstream.backend.clone(), response))
    }

    /// Asks for the whole answer at once, for clients that did not ask to stream: some
    /// servers (llama-cpp-python's) report usage only on whole answers.
    pub async fn complete(
        &self,
        model: &str,
        request: &ChatRequest<'_>,
    ) -> Result<Completion, GatewayError> {
        let (path, body) = self.encoder().encode(model, request, false)?;
        let answer = self.upstream.post_for_body(path, body).await?;
        decode::whole(&self.upstream.backend, &answer, path)
    }

    /// Embeds through `/embeddings`, always as floats.
    pub async fn embed(
        &self,
        model: &str,
        request: &EmbedRequest,
    ) -> Result<Embeddings, GatewayError> {
        let body = EmbeddingsRequest {
            model,
            input: &request.inputs,
            encoding_format: "float",
            dimensions: request.dimensions,
        };
        let body = super::json_body(&body, super::embed_capacity(request))?;
        let answer: WireEmbeddings = self.upstream.post_json("/embeddings", body).await?;
        Ok(answer.into_embeddings())
    }

    /// Lists `GET /models`.
    pub async fn models(&self) -> Result<Vec<ModelEntry>, GatewayError> {
        let list: WireModelList = self.upstream.get_json("/models").await?;
        Ok(list.into_entries())
    }
}

//! The OpenAI Chat Completions dialect (`/v1`): requests are read in `parse.rs`,
//! answers, streams and errors written in `render.rs`, embeddings in `embeddings.rs`.

pub mod embeddings;
mod parse;
mod render;

pub use parse::{parse_chat, Reply};
pub use render::{error_object, model_object, render_completion, render_error, SseRenderer};

use actix_web::HttpResponse;
use bytes::BytesMut;

use crate::chat::Completion;
use crate::dialect::{Dialect, ParsedChat};
use crate::error::GatewayError;

/// OpenAI's Chat Completions API: SSE streams, `{"error":{...}}` errors.
#[derive(Debug, Clone, Copy, Default)]
pub struct OpenAi;

impl Dialect for OpenAi {
    type Reply = Reply;
    type Renderer = SseRenderer;

    const NAME: &'static str = "openai";
    const STREAM_CONTENT_TYPE: &'static str = "text/event-stream";
    const STREAM_HEADERS: &'static [(&'static str, &'static str)] = super::SSE_STREAM_HEADERS;

    fn parse_chat<'a>(&self, body: &'a [u8]) -> Result<ParsedChat<'a, Reply>, GatewayError> {
        parse_chat(body)
    }

    fn stream_renderer(&self, model: String, reply: Reply) -> SseRenderer {
        SseRenderer::new(model, reply.include_usage)
    }

    fn render_completion(
        &self,
        model: &str,
        _reply: Reply,
        completion: &Completion,
    ) -> Result<HttpResponse, GatewayError> {
        Ok(HttpResponse::Ok().json(render_completion(model, completion)))
    }

    fn queue_comment(position: usize, out: &mut BytesMut) -> bool {
        super::sse_queue_comment(position, out)
    }

    fn render_error(error: &GatewayError) -> HttpResponse {
        render_error(error)
    }
}

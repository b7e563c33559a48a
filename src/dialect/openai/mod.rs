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
    // Proxies in front (nginx) would otherwise hold tokens back to fill their buffers.
    const STREAM_HEADERS: &'static [(&'static str, &'static str)] =
        &[("cache-control", "no-cache"), ("x-accel-buffering", "no")];

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
        // An SSE comment line: every SSE parser skips it.
        out.extend_from_slice(b": queue position ");
        out.extend_from_slice(itoa::Buffer::new().format(position).as_bytes());
        out.extend_from_slice(b"\n\n");
        true
    }

    fn render_error(error: &GatewayError) -> HttpResponse {
        render_error(error)
    }
}

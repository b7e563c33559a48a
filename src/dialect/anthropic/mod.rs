//! The Anthropic Messages dialect (`/v1/messages`), which Claude Code and Anthropic's
//! SDKs speak: requests are read in `parse.rs`, answers, streams, errors and listings
//! written in `render.rs`, and `count_tokens` estimated here.

mod parse;
mod render;

pub use parse::{parse, parse_chat, Reply};
pub use render::{
    model_list, model_object, render_completion, render_error, token_count, SseRenderer,
};

use actix_web::HttpResponse;

use crate::chat::{ChatRequest, Completion, Part};
use crate::dialect::{Dialect, ParsedChat};
use crate::error::GatewayError;

/// Anthropic's Messages API: named SSE events, `{"type":"error","error":{...}}` errors.
#[derive(Debug, Clone, Copy, Default)]
pub struct Anthropic;

impl Dialect for Anthropic {
    type Reply = Reply;
    type Renderer = SseRenderer;

    const NAME: &'static str = "anthropic";
    const STREAM_CONTENT_TYPE: &'static str = "text/event-stream";
    const STREAM_HEADERS: &'static [(&'static str, &'static str)] = super::SSE_STREAM_HEADERS;

    fn parse_chat<'a>(&self, body: &'a [u8]) -> Result<ParsedChat<'a, Reply>, GatewayError> {
        parse_chat(body)
    }

    fn stream_renderer(&self, model: String, _reply: Reply) -> SseRenderer {
        SseRenderer::new(model)
    }

    fn render_completion(
        &self,
        model: &str,
        _reply: Reply,
        completion: &Completion,
    ) -> Result<HttpResponse, GatewayError> {
        Ok(HttpResponse::Ok().json(render_completion(model, completion)?))
    }

    fn queue_comment(position: usize, out: &mut bytes::BytesMut) -> bool {
        super::sse_queue_comment(position, out)
    }

    fn render_error(error: &GatewayError) -> HttpResponse {
        render_error(error)
    }
}

/// What an image counts for in [`estimate_tokens`]: Anthropic's own rule (width times
/// height over 750) for an image of about 1.15 megapixels, the size it scales larger
/// ones down to. The gateway does not decode images to know better.
pub const IMAGE_TOKENS: u64 = 1600;

/// An estimate of a request's input tokens, for `count_tokens` when no backend can
/// count: a quarter of the bytes of every text the model reads (system, messages,
/// thinking, tool calls and results, tool names, descriptions and schemas), rounded
/// up, plus [`IMAGE_TOKENS`] per image. A quarter is the usual bytes-per-token of
/// English prose and code with the common tokenizers; it is an estimate, not a count.
pub fn estimate_tokens(request: &ChatRequest) -> u64 {
    let mut bytes = 0usize;
    let mut images = 0u64;
    for message in &request.messages {
        for part in &message.parts {
            match part {
                Part::Image(_) => images += 1,
                Part::Text(_) | Part::JsonText(_) => {
                    bytes += part.text().map_or(0, |text| text.len());
                }
            }
        }
        bytes += message.thinking().map_or(0, |text| text.len());
        for call in &message.tool_calls {
            bytes += call.name.len() + call.arguments.len();
        }
    }
    for tool in &request.tools {
        let function = &tool.function;
        bytes += function.name.len()
            + function.description.as_ref().map_or(0, |text| text.len())
            + function.parameters.map_or(0, |schema| schema.get().len());
    }
    (bytes as u64).div_ceil(4) + images * IMAGE_TOKENS
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn estimates_count_every_text_the_model_reads() {
        let body = br#"{"model": "m",
            "system": "12345678",
            "tools": [{"name": "abcd", "description": "efgh", "input_schema": {}}],
            "messages": [
                {"role": "user", "content": [{"type": "text", "text": "1234"},
                    {"type": "image", "source": {"type": "url", "url": "https://x/y.png"}}]},
                {"role": "assistant", "content": [{"type": "thinking", "thinking": "12"},
                    {"type": "tool_use", "id": "t", "name": "abcd", "input": {}}]},
                {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "t", "content": "1"}]}
            ]}"#;
        let parsed = parse(body, false).unwrap();
        // 8 + 4 + 2 + (4 + 2) + 1 + (4 + 4 + 2) = 31 bytes: 8 tokens, and one image.
        assert_eq!(estimate_tokens(&parsed.request), 8 + IMAGE_TOKENS);
    }
}

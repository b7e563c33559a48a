//! The Ollama dialect: `/api/chat` requests, NDJSON streams and single JSON answers,
//! parsed into and rendered from the canonical model.

pub mod embeddings;
mod render;

pub use render::{
    json_utf8, load_response, render_completion, render_error, timestamp, NdjsonRenderer, Shape,
    Timing,
};

use std::borrow::Cow;

use actix_web::HttpResponse;
use serde::Deserialize;
use serde_json::value::RawValue;
use serde_json::{Map, Value};

use crate::chat::{
    optional_str, ChatRequest, Completion, Generation, Image, Message, OutputFormat, Part, Rare,
    Role, Sampling, Str, Think, Tool, WireToolCallRef,
};
use crate::dialect::{Dialect, IntoCanonical, ParsedChat, TurnedMessages};
use crate::error::GatewayError;

/// Ollama's API, in the answer shape of one of its two generating routes; both shapes
/// read and write errors alike.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ollama(pub Shape);

impl Dialect for Ollama {
    /// The request's clock: Ollama answers report durations the upstream may not give.
    type Reply = Timing;
    type Renderer = NdjsonRenderer;

    const NAME: &'static str = "ollama";
    const STREAM_CONTENT_TYPE: &'static str = "application/x-ndjson";

    fn parse_chat<'a>(&self, body: &'a [u8]) -> Result<ParsedChat<'a, Timing>, GatewayError> {
        match self.0 {
            Shape::Chat => parse_chat(body),
            Shape::Generate => parse_generate(body),
        }
    }

    fn answer_locally(&self, parsed: &ParsedChat<'_, Timing>) -> Option<HttpResponse> {
        // Nothing to generate: Ollama only loads the model (or unloads it).
        parsed.request.messages.is_empty().then(|| {
            json_utf8(&load_response(
                self.0,
                &parsed.model,
                parsed.request.keep_alive.as_ref(),
            ))
        })
    }

    fn stream_renderer(&self, model: String, timing: Timing) -> NdjsonRenderer {
        NdjsonRenderer::new(self.0, model, timing)
    }

    fn render_completion(
        &self,
        model: &str,
        timing: Timing,
        completion: &Completion,
    ) -> Result<HttpResponse, GatewayError> {
        let value = render_completion(self.0, model, completion, &timing)?;
        Ok(json_utf8(&value))
    }

    fn render_error(error: &GatewayError) -> HttpResponse {
        render_error(error)
    }
}

/// The body as read: texts, images, tool calls and tool definitions borrow from it
/// (see [`Str`]).
#[derive(Deserialize)]
struct WireRequest<'a> {
    model: String,
    #[serde(default, borrow, deserialize_with = "super::null_as_default")]
    messages: TurnedMessages<'a, WireMessage<'a>>,
    stream: Option<bool>,
    format: Option<Value>,
    options: Option<Map<String, Value>>,
    #[serde(borrow)]
    tools: Option<Vec<Tool<'a>>>,
    think: Option<Value>,
    keep_alive: Option<Value>,
}

#[derive(Deserialize)]
struct WireMessage<'a> {
    #[serde(borrow)]
    role: Str<'a>,
    /// Kept raw until it is known to be a string: one with escapes stays the client's
    /// literal (see [`Part::JsonText`]).
    #[serde(default, borrow)]
    content: Option<&'a RawValue>,
    #[serde(default, borrow, deserialize_with = "super::null_as_default")]
    images: Vec<Str<'a>>,
    #[serde(default, borrow, deserialize_with = "optional_str")]
    thinking: Option<Cow<'a, str>>,
    #[serde(default, borrow, deserialize_with = "super::null_as_default")]
    tool_calls: Vec<WireToolCallRef<'a>>,
    #[serde(default, borrow, deserialize_with = "optional_str")]
    tool_name: Option<Cow<'a, str>>,
    #[serde(default, borrow, deserialize_with = "optional_str")]
    tool_call_id: Option<Cow<'a, str>>,
}

/// Parses an `/api/chat` body. An empty `messages` asks Ollama only to load the model;
/// the caller answers that without an upstream call. The request borrows from `body`.
pub fn parse_chat(body: &[u8]) -> Result<ParsedChat<'_, Timing>, GatewayError> {
    let timing = Timing::start();
    let wire: WireRequest = crate::dialect::parse_body(body)?;
    if wire.model.is_empty() {
        return Err(GatewayError::bad_field("model", "model is required"));
    }
    let mut request = ChatRequest::new(wire.messages.into_messages()?);
    request.sampling = parse_options(wire.options.unwrap_or_default())?;
    request.format = parse_format(wire.format)?;
    request.tools = wire.tools.unwrap_or_default();
    request.think = parse_think(wire.think)?;
    request.keep_alive = wire.keep_alive;
    Ok(ParsedChat {
        model: wire.model,
        stream: wire.stream.unwrap_or(true),
        request,
        reply: timing,
    })
}

#[derive(Deserialize)]
struct WireGenerate<'a> {
    model: String,
    #[serde(default, borrow)]
    prompt: Cow<'a, str>,
    suffix: Option<String>,
    #[serde(default, borrow, deserialize_with = "optional_str")]
    system: Option<Cow<'a, str>>,
    template: Option<String>,
    #[serde(default)]
    raw: bool,
    context: Option<Value>,
    #[serde(default, borrow, deserialize_with = "super::null_as_default")]
    images: Vec<Str<'a>>,
    stream: Option<bool>,
    format: Option<Value>,
    options: Option<Map<String, Value>>,
    think: Option<Value>,
    keep_alive: Option<Value>,
}

/// Parses an `/api/generate` body into a chat of an optional system message and the
/// prompt, with what only completions have kept beside it. An empty prompt asks Ollama
/// only to load the model.
pub fn parse_generate(body: &[u8]) -> Result<ParsedChat<'_, Timing>, GatewayError> {
    let timing = Timing::start();
    let wire: WireGenerate = crate::dialect::parse_body(body)?;
    if wire.model.is_empty() {
        return Err(GatewayError::bad_field("model", "model is required"));
    }
    if wire.raw && (wire.template.is_some() || wire.system.is_some() || wire.context.is_some()) {
        return Err(GatewayError::bad_field(
            "raw",
            "raw mode does not support template, system, or context",
        ));
    }
    let mut messages = Vec::with_capacity(2);
    if let Some(system) = wire.system.filter(|s| !s.is_empty()) {
        messages.push(Message::text(Role::System, system));
    }
    if !wire.prompt.is_empty() || !wire.images.is_empty() {
        let mut message = parse_message(
            0,
            WireMessage {
                role: Str(Cow::Borrowed("user")),
                content: None,
                images: wire.images,
                thinking: None,
                tool_calls: Vec::new(),
                tool_name: None,
                tool_call_id: None,
            },
        )?;
        // The prompt comes before the images, as a message's content does.
        if !wire.prompt.is_empty() {
            message.parts.insert(0, Part::Text(wire.prompt));
        }
        messages.push(message);
    } else {
        messages.clear();
    }
    let mut request = ChatRequest::new(messages);
    request.sampling = parse_options(wire.options.unwrap_or_default())?;
    request.format = parse_format(wire.format)?;
    request.think = parse_think(wire.think)?;
    request.keep_alive = wire.keep_alive;
    request.generation = Some(Generation {
        suffix: wire.suffix.filter(|s| !s.is_empty()),
        raw: wire.raw,
        template: wire.template,
        context: wire.context,
    });
    Ok(ParsedChat {
        model: wire.model,
        stream: wire.stream.unwrap_or(true),
        request,
        reply: timing,
    })
}

impl<'a> IntoCanonical<'a> for WireMessage<'a> {
    fn into_canonical(self, index: usize) -> Result<Message<'a>, GatewayError> {
        parse_message(index, self)
    }
}

fn parse_message(index: usize, wire: WireMessage<'_>) -> Result<Message<'_>, GatewayError> {
    let role = Role::parse(&wire.role.0).ok_or_else(|| {
        GatewayError::bad_field(
            "messages",
            format!(
                "messages[{index}].role \"{}\" is not system, user, assistant or tool",
                wire.role.0
            ),
        )
    })?;
    let mut parts = Vec::with_capacity(1 + wire.images.len());
    if let Some(content) = wire.content {
        if !content.get().starts_with('"') {
            return Err(GatewayError::bad_request(format!(
                "invalid request body: messages[{index}].content must be a string"
            )));
        }
        if content.get() != "\"\"" {
            parts.push(Part::from_literal(content).map_err(|e| {
                GatewayError::bad_request(format!(
                    "invalid request body: messages[{index}].content: {e}"
                ))
            })?);
        }
    }
    for Str(image) in wire.images {
        // Clients sometimes send a data: URL where raw base64 belongs; take both.
        let data = match image {
            Cow::Borrowed(image) => Cow::Borrowed(strip_data_url(image)),
            Cow::Owned(image) if strip_data_url(&image).len() != image.len() => {
                Cow::Owned(strip_data_url(&image).to_owned())
            }
            owned => owned,
        };
        parts.push(Part::Image(Image::Base64 { mime: None, data }));
    }
    let tool_calls = WireToolCallRef::all(index, wire.tool_calls)?;
    Ok(Message {
        role,
        parts,
        tool_calls,
        tool_call_id: wire.tool_call_id,
        rare: Rare {
            thinking: wire.thinking,
            tool_name: wire.tool_name,
            ..Rare::default()
        }
        .boxed(),
    })
}

/// An image's base64 data: a `data:...;base64,` prefix removed.
fn strip_data_url(image: &str) -> &str {
    match image.split_once(";base64,") {
        Some((prefix, data)) if prefix.starts_with("data:") => data,
        _ => image,
    }
}

/// Splits Ollama `options` into the shared sampling settings and Ollama-only runtime
/// options; a wrong type is a 400, as Ollama itself answers.
pub fn parse_options(options: Map<String, Value>) -> Result<Sampling, GatewayError> {
    let mut sampling = Sampling::default();
    let number = |key: &str, value: &Value| {
        value.as_f64().ok_or_else(|| {
            GatewayError::bad_field("options", format!("options.{key} must be a number"))
        })
    };
    let integer = |key: &str, value: &Value| {
        value
            .as_i64()
            .or_else(|| {
                value
                    .as_f64()
                    .filter(|f| f.fract() == 0.0)
                    .map(|f| f as i64)
            })
            .ok_or_else(|| {
                GatewayError::bad_field("options", format!("options.{key} must be an integer"))
            })
    };
    for (key, value) in options {
        if value.is_null() {
            continue;
        }
        match key.as_str() {
            // -1 (no limit) and -2 (fill the context) mean "no cap" to OpenAI servers.
            "num_predict" => sampling.max_tokens = u64::try_from(integer(&key, &value)?).ok(),
            "temperature" => sampling.temperature = Some(number(&key, &value)?),
            "top_p" => sampling.top_p = Some(number(&key, &value)?),
            "seed" => sampling.seed = Some(integer(&key, &value)?).filter(|&seed| seed >= 0),
            "frequency_penalty" => sampling.frequency_penalty = Some(number(&key, &value)?),
            "presence_penalty" => sampling.presence_penalty = Some(number(&key, &value)?),
            "top_k" => sampling.top_k = Some(integer(&key, &value)?),
            "min_p" => sampling.min_p = Some(number(&key, &value)?),
            "typical_p" => sampling.typical_p = Some(number(&key, &value)?),
            "repeat_penalty" => sampling.repeat_penalty = Some(number(&key, &value)?),
            "repeat_last_n" => sampling.repeat_last_n = Some(integer(&key, &value)?),
            "stop" => {
                sampling.stop = value
                    .as_array()
                    .and_then(|items| {
                        items
                            .iter()
                            .map(|s| s.as_str().map(str::to_owned))
                            .collect()
                    })
                    .ok_or_else(|| {
                        GatewayError::bad_field(
                            "options",
                            "options.stop must be an array of strings",
                        )
                    })?;
            }
            _ => {
                sampling.ollama_runtime.insert(key, value);
            }
        }
    }
    Ok(sampling)
}

/// Reads `format`: `"json"` or a JSON schema object.
pub fn parse_format(format: Option<Value>) -> Result<Option<OutputFormat>, GatewayError> {
    match format {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) if s.is_empty() => Ok(None),
        Some(Value::String(s)) if s == "json" => Ok(Some(OutputFormat::Json)),
        Some(schema @ Value::Object(_)) => Ok(Some(OutputFormat::Schema {
            name: None,
            schema,
            strict: None,
        })),
        Some(_) => Err(GatewayError::bad_field(
            "format",
            "format must be \"json\" or a JSON schema object",
        )),
    }
}

/// Reads `think`: a bool or an effort level.
pub fn parse_think(think: Option<Value>) -> Result<Option<Think>, GatewayError> {
    match think {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Bool(on)) => Ok(Some(Think::Enabled(on))),
        Some(Value::String(level)) if matches!(level.as_str(), "low" | "medium" | "high" | "max") => {
            Ok(Some(Think::Effort(level)))
        }
        Some(other) => Err(GatewayError::bad_field(
            "think",
            format!("invalid think value {other}: use true, false, \"low\", \"medium\", \"high\" or \"max\""),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn refusal(body: &str) -> String {
        match parse_chat(body.as_bytes()) {
            Err(GatewayError::BadRequest { message, .. }) => message,
            Err(other) => panic!("{body}: {other:?}"),
            Ok(_) => panic!("{body}: accepted"),
        }
    }

    /// Messages are turned as they are read, yet a body wrong in several places is
    /// answered as when the whole array was read first: the JSON's own errors, then
    /// the model, then the first message that cannot be turned.
    #[test]
    fn a_body_wrong_in_several_places_is_answered_in_the_same_order() {
        let bad_role = r#"{"role": "robot", "content": "x"}"#;
        let good = r#"{"role": "user", "content": "x"}"#;
        assert!(refusal(&format!(
            r#"{{"model": "m", "messages": [{good}, {bad_role}, {bad_role}], "options": 7}}"#
        ))
        .contains("invalid type"));
        assert_eq!(
            refusal(&format!(r#"{{"model": "", "messages": [{bad_role}]}}"#)),
            "model is required"
        );
        let second = refusal(&format!(
            r#"{{"model": "m", "messages": [{good}, {bad_role}, {bad_role}]}}"#
        ));
        assert!(second.starts_with("messages[1].role"), "{second}");
        assert!(refusal(r#"{"model": "m", "messages": "x"}"#).contains("expected a sequence"));
        let parsed =
            parse_chat(format!(r#"{{"model": "m", "messages": [{good}, {good}]}}"#).as_bytes())
                .map(|parsed| parsed.request.messages.len());
        assert!(matches!(parsed, Ok(2)));
        let empty = parse_chat(br#"{"model": "m", "messages": null}"#)
            .map(|parsed| parsed.request.messages.len());
        assert!(
            matches!(empty, Ok(0)),
            "null is no messages: a load request"
        );
    }
}

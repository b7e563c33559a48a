//! Reading `/v1/chat/completions` bodies into the canonical request: every field the
//! gateway models is checked here, with a 400 naming the field at fault, and the rest
//! is carried as-is to OpenAI-compatible backends.

use std::borrow::Cow;

use serde::Deserialize;
use serde_json::value::RawValue;
use serde_json::{Map, Value};

use crate::chat::{
    ChatRequest, Image, Message, OutputFormat, Part, Rare, Role, Sampling, Str, Think, Tool,
    WireToolCallRef,
};
use crate::dialect::{IntoCanonical, ParsedChat, TurnedMessages};
use crate::error::GatewayError;

/// What a chat answer needs from its request beyond the events.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Reply {
    /// `stream_options.include_usage`: a last chunk carrying the usage.
    pub include_usage: bool,
}

/// The body as read: every string that may be long (message texts, tool calls, tool
/// definitions) borrows from the body, and a message's content stays raw JSON until it
/// is known to be one string (read borrowed) or an array of parts.
#[derive(Deserialize)]
struct WireRequest<'a> {
    model: String,
    #[serde(borrow)]
    messages: TurnedMessages<'a, WireMessage<'a>>,
    stream: Option<bool>,
    stream_options: Option<WireStreamOptions>,
    max_tokens: Option<u64>,
    max_completion_tokens: Option<u64>,
    temperature: Option<f64>,
    top_p: Option<f64>,
    seed: Option<i64>,
    stop: Option<Value>,
    frequency_penalty: Option<f64>,
    presence_penalty: Option<f64>,
    n: Option<u32>,
    response_format: Option<Value>,
    #[serde(borrow)]
    tools: Option<Vec<Tool<'a>>>,
    tool_choice: Option<Value>,
    parallel_tool_calls: Option<bool>,
    reasoning_effort: Option<String>,
    reasoning: Option<WireReasoning>,
    top_k: Option<i64>,
    min_p: Option<f64>,
    typical_p: Option<f64>,
    repeat_penalty: Option<f64>,
    repeat_last_n: Option<i64>,
    /// Everything else is carried to OpenAI-compatible backends as sent.
    #[serde(flatten)]
    extra: Map<String, Value>,
}

#[derive(Deserialize)]
struct WireStreamOptions {
    #[serde(default)]
    include_usage: Option<bool>,
}

#[derive(Deserialize)]
struct WireReasoning {
    effort: Option<String>,
}

#[derive(Deserialize)]
struct WireMessage<'a> {
    #[serde(borrow)]
    role: Str<'a>,
    #[serde(default, borrow)]
    content: Option<&'a RawValue>,
    #[serde(default, borrow, deserialize_with = "crate::dialect::null_as_default")]
    tool_calls: Vec<WireToolCallRef<'a>>,
    #[serde(default, borrow)]
    tool_call_id: Option<Str<'a>>,
    /// Some clients name the tool on its result message.
    #[serde(default, borrow)]
    name: Option<Str<'a>>,
    #[serde(default, borrow)]
    reasoning_content: Option<Str<'a>>,
    #[serde(default, borrow)]
    reasoning: Option<Str<'a>>,
}

/// Parses a request body, naming the field at fault when it is wrong. The request
/// borrows from `body`.
pub fn parse_chat(body: &[u8]) -> Result<ParsedChat<'_, Reply>, GatewayError> {
    let wire: WireRequest = crate::dialect::parse_body(body)?;
    if wire.model.is_empty() {
        return Err(GatewayError::bad_field("model", "model must not be empty"));
    }
    if wire.messages.is_empty() {
        return Err(GatewayError::bad_field(
            "messages",
            "messages must hold at least one message",
        ));
    }
    if wire.n.is_some_and(|n| n != 1) {
        return Err(GatewayError::bad_field(
            "n",
            "n must be 1: the gateway returns one choice per request",
        ));
    }
    let messages = wire.messages.into_messages()?;
    let stop = match wire.stop {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::String(stop)) => vec![stop],
        Some(Value::Array(items)) => items
            .into_iter()
            .map(|item| match item {
                Value::String(s) => Ok(s),
                _ => Err(GatewayError::bad_field(
                    "stop",
                    "stop must be a string or an array of strings",
                )),
            })
            .collect::<Result<_, _>>()?,
        Some(_) => {
            return Err(GatewayError::bad_field(
                "stop",
                "stop must be a string or an array of strings",
            ))
        }
    };
    let format = match wire.response_format {
        None | Some(Value::Null) => None,
        Some(format) => parse_response_format(&format)?,
    };
    let effort = wire
        .reasoning
        .and_then(|r| r.effort)
        .or(wire.reasoning_effort);
    let mut passthrough = wire.extra;
    passthrough.remove("stream_options");
    let request = ChatRequest {
        messages,
        sampling: Sampling {
            max_tokens: wire.max_completion_tokens.or(wire.max_tokens),
            temperature: wire.temperature,
            top_p: wire.top_p,
            seed: wire.seed,
            stop,
            frequency_penalty: wire.frequency_penalty,
            presence_penalty: wire.presence_penalty,
            top_k: wire.top_k,
            min_p: wire.min_p,
            typical_p: wire.typical_p,
            repeat_penalty: wire.repeat_penalty,
            repeat_last_n: wire.repeat_last_n,
            ollama_runtime: Map::new(),
        },
        format,
        tools: wire.tools.unwrap_or_default(),
        tool_choice: wire.tool_choice,
        parallel_tool_calls: wire.parallel_tool_calls,
        think: effort.map(Think::Effort),
        keep_alive: None,
        passthrough,
        generation: None,
    };
    Ok(ParsedChat {
        model: wire.model,
        stream: wire.stream.unwrap_or(false),
        request,
        reply: Reply {
            include_usage: wire
                .stream_options
                .and_then(|o| o.include_usage)
                .unwrap_or(false),
        },
    })
}

fn parse_response_format(format: &Value) -> Result<Option<OutputFormat>, GatewayError> {
    let bad = |message: &str| GatewayError::bad_field("response_format", message.to_owned());
    match format.get("type").and_then(Value::as_str) {
        Some("text") => Ok(None),
        Some("json_object") => Ok(Some(OutputFormat::Json)),
        Some("json_schema") => {
            // llama-server also accepts a bare `schema` beside `type`.
            let spec = format.get("json_schema");
            let schema = spec
                .and_then(|s| s.get("schema"))
                .or_else(|| format.get("schema"))
                .cloned()
                .ok_or_else(|| bad("response_format json_schema needs json_schema.schema"))?;
            Ok(Some(OutputFormat::Schema {
                name: spec
                    .and_then(|s| s.get("name"))
                    .and_then(Value::as_str)
                    .map(str::to_owned),
                schema,
                strict: spec.and_then(|s| s.get("strict")).and_then(Value::as_bool),
            }))
        }
        _ => Err(bad(
            "response_format.type must be \"text\", \"json_object\" or \"json_schema\"",
        )),
    }
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
                "messages[{index}].role \"{}\" is not system, developer, user, assistant or tool",
                wire.role.0
            ),
        )
    })?;
    let parts = parse_content(index, wire.content)?;
    let tool_calls = WireToolCallRef::all(index, wire.tool_calls)?;
    Ok(Message {
        role,
        parts,
        tool_calls,
        tool_call_id: wire.tool_call_id.map(|id| id.0),
        rare: Rare {
            thinking: wire.reasoning_content.or(wire.reasoning).map(|text| text.0),
            tool_name: if role == Role::Tool {
                wire.name.map(|name| name.0)
            } else {
                None
            },
            ..Rare::default()
        }
        .boxed(),
    })
}

/// A message's content: one string (the usual case, borrowed from the body: as text,
/// or as its JSON literal when it holds escapes), an array of parts (read through a `Value`: rare, and its error
/// messages look inside each part), or nothing.
fn parse_content<'a>(
    index: usize,
    content: Option<&'a RawValue>,
) -> Result<Vec<Part<'a>>, GatewayError> {
    let bad = |what: String| {
        GatewayError::bad_field("messages", format!("messages[{index}].content{what}"))
    };
    let Some(content) = content else {
        return Ok(Vec::new());
    };
    let malformed = |e: serde_json::Error| bad(format!(" cannot be read: {e}"));
    if content.get().starts_with('"') {
        return Ok(vec![Part::from_literal(content).map_err(malformed)?]);
    }
    match serde_json::from_str(content.get()).map_err(malformed)? {
        Value::Array(items) => items
            .into_iter()
            .enumerate()
            .map(
                |(at, item)| match item.get("type").and_then(Value::as_str) {
                    Some("text") => item
                        .get("text")
                        .and_then(Value::as_str)
                        .map(|text| Part::Text(Cow::Owned(text.to_owned())))
                        .ok_or_else(|| bad(format!("[{at}] is a text part without a text string"))),
                    Some("image_url") => {
                        let url = match item.get("image_url") {
                            Some(Value::String(url)) => Some(url.as_str()),
                            Some(object) => object.get("url").and_then(Value::as_str),
                            None => None,
                        }
                        .ok_or_else(|| {
                            bad(format!("[{at}] is an image_url part without image_url.url"))
                        })?;
                        parse_image_url(url).map(Part::Image).ok_or_else(|| {
                            bad(format!(
                                "[{at}].image_url.url must be an http(s) URL or a base64 data: URL"
                            ))
                        })
                    }
                    Some(other) => Err(bad(format!(
                        "[{at}] has type \"{other}\"; the gateway carries text and image_url parts"
                    ))),
                    None => Err(bad(format!("[{at}] has no type"))),
                },
            )
            .collect(),
        _ => Err(bad(
            " must be a string, an array of parts or null".to_owned()
        )),
    }
}

fn parse_image_url(url: &str) -> Option<Image<'static>> {
    if let Some(rest) = url.strip_prefix("data:") {
        let (meta, data) = rest.split_once(',')?;
        let mime = meta.strip_suffix(";base64")?;
        return Some(Image::Base64 {
            mime: (!mime.is_empty()).then(|| Cow::Owned(mime.to_owned())),
            data: Cow::Owned(data.to_owned()),
        });
    }
    (url.starts_with("http://") || url.starts_with("https://"))
        .then(|| Image::Url(Cow::Owned(url.to_owned())))
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::chat::ToolCall;

    /// The request borrows from its body; a test's body lives as long as the test.
    fn parse(body: Value) -> Result<ParsedChat<'static, Reply>, GatewayError> {
        parse_chat(Box::leak(body.to_string().into_bytes().into_boxed_slice()))
    }

    /// The `param` of the 400 a body is refused with.
    fn refused(body: Value) -> Option<String> {
        match parse(body) {
            Err(GatewayError::BadRequest { param, .. }) => param,
            other => panic!("not a 400: {other:?}"),
        }
    }

    fn user(content: Value) -> Value {
        json!({"model": "m", "messages": [{"role": "user", "content": content}]})
    }

    #[test]
    fn every_field_reaches_the_canonical_request() {
        let parsed = parse(json!({
            "model": "oa/gpt",
            "stream": true,
            "stream_options": {"include_usage": true},
            "messages": [
                {"role": "developer", "content": "be brief"},
                {"role": "user", "content": [
                    {"type": "text", "text": "look"},
                    {"type": "image_url", "image_url": {"url": "data:image/jpeg;base64,AAAA"}},
                    {"type": "image_url", "image_url": "https://example.com/a.png"}
                ]},
                {"role": "assistant", "content": null, "reasoning_content": "hmm",
                 "tool_calls": [{"id": "call_1", "type": "function",
                                 "function": {"name": "f", "arguments": "{\"a\":1}"}}]},
                {"role": "tool", "tool_call_id": "call_1", "name": "f", "content": "42"}
            ],
            "max_tokens": 10,
            "max_completion_tokens": 20,
            "temperature": 0.5,
            "top_p": 0.9,
            "seed": 7,
            "stop": ["x", "y"],
            "frequency_penalty": 0.1,
            "presence_penalty": 0.2,
            "n": 1,
            "response_format": {"type": "json_schema",
                                "json_schema": {"name": "s", "schema": {"type": "object"}, "strict": true}},
            "tools": [{"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}],
            "tool_choice": "auto",
            "parallel_tool_calls": false,
            "reasoning_effort": "low",
            "reasoning": {"effort": "high"},
            "top_k": 40,
            "min_p": 0.05,
            "typical_p": 0.7,
            "repeat_penalty": 1.1,
            "repeat_last_n": 64,
            "cache_prompt": true
        }))
        .unwrap();
        assert_eq!(parsed.model, "oa/gpt");
        assert!(parsed.stream);
        assert_eq!(
            parsed.reply,
            Reply {
                include_usage: true
            }
        );
        let request = parsed.request;
        assert_eq!(
            request.sampling,
            Sampling {
                max_tokens: Some(20),
                temperature: Some(0.5),
                top_p: Some(0.9),
                seed: Some(7),
                stop: vec!["x".into(), "y".into()],
                frequency_penalty: Some(0.1),
                presence_penalty: Some(0.2),
                top_k: Some(40),
                min_p: Some(0.05),
                typical_p: Some(0.7),
                repeat_penalty: Some(1.1),
                repeat_last_n: Some(64),
                ollama_runtime: Map::new(),
            }
        );
        assert_eq!(
            request.format,
            Some(OutputFormat::Schema {
                name: Some("s".into()),
                schema: json!({"type": "object"}),
                strict: Some(true),
            })
        );
        assert_eq!(request.tools.len(), 1);
        assert_eq!(request.tools[0].function.name, "f");
        assert_eq!(request.tool_choice, Some(json!("auto")));
        assert_eq!(request.parallel_tool_calls, Some(false));
        assert_eq!(request.think, Some(Think::Effort("high".into())));
        assert_eq!(request.keep_alive, None);
        assert_eq!(request.generation, None);
        // Unmodelled fields travel on; stream_options is the client side's.
        assert_eq!(
            request.passthrough,
            json!({"cache_prompt": true}).as_object().unwrap().clone()
        );
        let [developer, user, assistant, tool] = &request.messages[..] else {
            panic!("four messages: {:?}", request.messages);
        };
        assert_eq!(*developer, Message::text(Role::Developer, "be brief"));
        assert_eq!(
            user.parts,
            vec![
                Part::Text("look".into()),
                Part::Image(Image::Base64 {
                    mime: Some("image/jpeg".into()),
                    data: "AAAA".into()
                }),
                Part::Image(Image::Url("https://example.com/a.png".into())),
            ]
        );
        assert_eq!(assistant.role, Role::Assistant);
        assert!(assistant.parts.is_empty());
        assert_eq!(assistant.thinking().map(|t| t.as_ref()), Some("hmm"));
        assert_eq!(
            assistant.tool_calls,
            vec![ToolCall {
                id: Some("call_1".into()),
                name: "f".into(),
                arguments: "{\"a\":1}".into()
            }]
        );
        assert_eq!(tool.tool_call_id.as_deref(), Some("call_1"));
        assert_eq!(tool.tool_name().map(|t| t.as_ref()), Some("f"));
        assert_eq!(tool.parts, vec![Part::Text("42".into())]);
    }

    #[test]
    fn plain_strings_borrow_from_the_body_and_escaped_ones_are_decoded() {
        let body = br#"{"model": "m", "messages": [
            {"role": "user", "content": "plain text"},
            {"role": "assistant", "content": "line\nbreak \"quoted\" \u00e9",
             "tool_calls": [{"id": "call_1", "type": "function",
                             "function": {"name": "f", "arguments": "{\"a\":1}"}}]},
            {"role": "tool", "tool_call_id": "call_1", "content": "42"}
        ], "tools": [{"type": "function", "function": {"name": "f",
            "description": "d", "parameters": {"type": "object", "b": [1, 2]}}}]}"#;
        let parsed = parse_chat(body).unwrap();
        let messages = &parsed.request.messages;
        assert!(matches!(
            messages[0].parts[0].text(),
            Some(Cow::Borrowed("plain text"))
        ));
        // Text with escapes stays the client's literal, and decodes as before.
        assert!(matches!(
            &messages[1].parts[..],
            [Part::JsonText(literal)] if literal.get() == r#""line\nbreak \"quoted\" \u00e9""#
        ));
        assert_eq!(messages[1].joined_text(), "line\nbreak \"quoted\" \u{e9}");
        let call = &messages[1].tool_calls[0];
        assert!(matches!(call.id, Some(Cow::Borrowed("call_1"))));
        assert!(matches!(call.name, Cow::Borrowed("f")));
        assert_eq!(call.arguments, "{\"a\":1}");
        assert!(matches!(
            messages[2].tool_call_id,
            Some(Cow::Borrowed("call_1"))
        ));
        let function = &parsed.request.tools[0].function;
        assert!(matches!(function.description, Some(Cow::Borrowed("d"))));
        assert_eq!(
            function.parameters.map(RawValue::get),
            Some(r#"{"type": "object", "b": [1, 2]}"#)
        );
    }

    #[test]
    fn absent_fields_stay_absent() {
        let parsed = parse(json!({"model": "m", "messages": [{"role": "user", "content": "hi"}],
                                  "stop": "end", "max_tokens": 5, "response_format": {"type": "text"}}))
        .unwrap();
        assert!(!parsed.stream);
        assert!(!parsed.reply.include_usage);
        let request = parsed.request;
        assert_eq!(request.sampling.max_tokens, Some(5));
        assert_eq!(request.sampling.stop, vec!["end".to_owned()]);
        assert_eq!(request.sampling.temperature, None);
        assert_eq!(request.format, None);
        assert_eq!(request.think, None);
        assert!(request.tools.is_empty() && request.passthrough.is_empty());
        // A name on a non-tool message is not a tool name.
        let named = parse(
            json!({"model": "m", "messages": [{"role": "user", "name": "bob", "content": "hi"}]}),
        )
        .unwrap();
        assert_eq!(named.request.messages[0].tool_name(), None);
        let json_object = parse(
            json!({"model": "m", "messages": [{"role": "user", "content": "hi"}],
                                       "response_format": {"type": "json_object"}}),
        )
        .unwrap();
        assert_eq!(json_object.request.format, Some(OutputFormat::Json));
    }

    #[test]
    fn each_refusal_names_its_field() {
        let param = |name: &str| Some(name.to_owned());
        let chat = |extra: Value| {
            let mut body = json!({"model": "m", "messages": [{"role": "user", "content": "hi"}]});
            for (key, value) in extra.as_object().unwrap() {
                body[key] = value.clone();
            }
            body
        };
        // Not JSON, or a required field missing: serde's message, no field to name.
        assert!(matches!(
            parse_chat(b"{bad"),
            Err(GatewayError::BadRequest { param: None, .. })
        ));
        assert_eq!(refused(json!({"messages": []})), None);
        assert_eq!(refused(chat(json!({"model": ""}))), param("model"));
        assert_eq!(
            refused(json!({"model": "m", "messages": []})),
            param("messages")
        );
        assert_eq!(refused(chat(json!({"n": 2}))), param("n"));
        assert_eq!(refused(chat(json!({"stop": 3}))), param("stop"));
        assert_eq!(refused(chat(json!({"stop": ["a", 3]}))), param("stop"));
        assert_eq!(
            refused(chat(json!({"response_format": {"type": "yaml"}}))),
            param("response_format")
        );
        assert_eq!(
            refused(chat(
                json!({"response_format": {"type": "json_schema", "json_schema": {"name": "s"}}})
            )),
            param("response_format")
        );
        assert_eq!(
            refused(json!({"model": "m", "messages": [{"role": "robot", "content": "hi"}]})),
            param("messages")
        );
        assert_eq!(refused(user(json!(3))), param("messages"));
        assert_eq!(refused(user(json!([{"type": "audio"}]))), param("messages"));
        assert_eq!(
            refused(user(json!([{"text": "no type"}]))),
            param("messages")
        );
        assert_eq!(refused(user(json!([{"type": "text"}]))), param("messages"));
        assert_eq!(
            refused(user(json!([{"type": "image_url"}]))),
            param("messages")
        );
        assert_eq!(
            refused(user(
                json!([{"type": "image_url", "image_url": {"url": "ftp://x"}}])
            )),
            param("messages")
        );
        assert_eq!(
            refused(user(
                json!([{"type": "image_url", "image_url": {"url": "data:image/png,AAAA"}}])
            )),
            param("messages")
        );
    }
}

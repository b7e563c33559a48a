//! A canonical [`ChatRequest`] written as an Anthropic Messages request.
//!
//! The Messages API differs from the canonical shape where the canonical one follows
//! OpenAI: system text is a top-level field, so every system and developer message is
//! gathered there; tool results are `tool_result` blocks of a user turn, and turns
//! alternate, so consecutive messages of one side are joined into one turn; a tool
//! call's arguments are an `input` object; `max_tokens` is required (the configured
//! default fills it); thinking is a token budget. Texts, schemas and arguments are
//! written from borrows of the request.

use std::borrow::Cow;

use serde::Serialize;
use serde_json::value::RawValue;
use serde_json::{json, Value};

use crate::backend::pieces::Encoded;
use crate::chat::{sniff_image_type, ChatRequest, Image, Part, Role, Think, WireText};
use crate::error::GatewayError;

#[derive(Serialize)]
struct WireRequest<'a> {
    model: &'a str,
    max_tokens: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    system: Option<WireText<'a>>,
    messages: Vec<WireMessage<'a>>,
    stream: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    temperature: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    top_p: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    top_k: Option<i64>,
    #[serde(skip_serializing_if = "<[_]>::is_empty")]
    stop_sequences: &'a [String],
    #[serde(skip_serializing_if = "Vec::is_empty")]
    tools: Vec<WireTool<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    tool_choice: Option<Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    thinking: Option<Value>,
}

#[derive(Serialize)]
struct WireMessage<'a> {
    role: &'static str,
    content: Vec<Block<'a>>,
}

#[derive(Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
enum Block<'a> {
    Text {
        text: WireText<'a>,
    },
    Thinking {
        thinking: &'a str,
        signature: &'a str,
    },
    Image {
        source: Source<'a>,
    },
    ToolUse {
        id: Cow<'a, str>,
        name: &'a str,
        input: &'a RawValue,
    },
    ToolResult {
        tool_use_id: Cow<'a, str>,
        #[serde(skip_serializing_if = "Vec::is_empty")]
        content: Vec<Block<'a>>,
        #[serde(skip_serializing_if = "std::ops::Not::not")]
        is_error: bool,
    },
}

#[derive(Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
enum Source<'a> {
    Base64 { media_type: &'a str, data: &'a str },
    Url { url: &'a str },
}

#[derive(Serialize)]
struct WireTool<'a> {
    name: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    description: Option<&'a str>,
    input_schema: &'a RawValue,
}

/// The thinking budget an effort level stands for (Anthropic's minimum is 1,024).
fn budget_for_effort(level: &str) -> Option<u64> {
    match level {
        "none" => None,
        "minimal" => Some(1024),
        "low" => Some(2048),
        "medium" => Some(8192),
        "high" => Some(16384),
        _ => Some(32768),
    }
}

/// A tool-call id as Anthropic takes it (`^[a-zA-Z0-9_-]+$`): other characters become
/// `_`, the same on the call and on its result, so they still match.
fn tool_id(id: &str) -> Cow<'_, str> {
    let fine = |c: char| c.is_ascii_alphanumeric() || c == '_' || c == '-';
    if !id.is_empty() && id.chars().all(fine) {
        Cow::Borrowed(id)
    } else if id.is_empty() {
        Cow::Borrowed("toolu_")
    } else {
        Cow::Owned(id.chars().map(|c| if fine(c) { c } else { '_' }).collect())
    }
}

/// The parts of a message as content blocks (empty texts left out: Anthropic refuses
/// them).
fn blocks<'a>(parts: &'a [Part<'a>]) -> Vec<Block<'a>> {
    parts
        .iter()
        .filter_map(|part| match part {
            Part::Text(text) if text.is_empty() => None,
            Part::Text(text) => Some(Block::Text {
                text: WireText::Text(Cow::Borrowed(text.as_ref())),
            }),
            Part::JsonText(literal) if literal.get() == "\"\"" => None,
            Part::JsonText(literal) => Some(Block::Text {
                text: WireText::Json(literal),
            }),
            Part::Image(Image::Base64 { mime, data }) => Some(Block::Image {
                source: Source::Base64 {
                    media_type: mime.as_deref().unwrap_or_else(|| sniff_image_type(data)),
                    data,
                },
            }),
            Part::Image(Image::Url(url)) => Some(Block::Image {
                source: Source::Url { url },
            }),
        })
        .collect()
}

/// The request as the body of `POST /messages`.
pub fn encode(
    model: &str,
    request: &ChatRequest,
    stream: bool,
    default_max_tokens: u64,
) -> Result<Encoded, GatewayError> {
    let mut system: Vec<WireText> = Vec::new();
    let mut messages: Vec<WireMessage> = Vec::with_capacity(request.messages.len());
    // Calls not yet answered, as (id, name), for results that name only their tool.
    let mut pending: Vec<(Cow<str>, &str)> = Vec::new();
    for (index, message) in request.messages.iter().enumerate() {
        let (role, content) = match message.role {
            Role::System | Role::Developer => {
                let text = message.wire_text();
                if !text.is_empty() {
                    system.push(text);
                }
                continue;
            }
            Role::User => ("user", blocks(&message.parts)),
            Role::Assistant => {
                // Earlier thinking goes back only with the signature Anthropic made for
                // it: unsigned reasoning (another server's) is refused there.
                let mut content = match (message.thinking(), message.thinking_signature()) {
                    (Some(thinking), Some(signature)) if !signature.is_empty() => {
                        vec![Block::Thinking {
                            thinking,
                            signature,
                        }]
                    }
                    _ => Vec::new(),
                };
                content.extend(blocks(&message.parts));
                for (number, call) in message.tool_calls.iter().enumerate() {
                    let id = match &call.id {
                        Some(id) => tool_id(id),
                        None => Cow::Owned(format!("toolu_{index}_{number}")),
                    };
                    let arguments = call.arguments.trim();
                    let input: &RawValue = if arguments.is_empty() {
                        literal("{}")
                    } else {
                        serde_json::from_str(arguments).map_err(|e| bad_call(index, &e))?
                    };
                    if !input.get().trim_start().starts_with('{') {
                        return Err(GatewayError::bad_field(
                            "messages",
                            format!("messages[{index}]: the arguments of a call to {} are not a JSON object, which Anthropic's tool_use input must be", call.name),
                        ));
                    }
                    pending.push((id.clone(), call.name.as_ref()));
                    content.push(Block::ToolUse {
                        id,
                        name: &call.name,
                        input,
                    });
                }
                ("assistant", content)
            }
            Role::Tool => {
                let id = match &message.tool_call_id {
                    Some(id) => {
                        let id = tool_id(id);
                        if let Some(at) = pending.iter().position(|(call, _)| *call == id) {
                            pending.remove(at);
                        }
                        id
                    }
                    // Ollama's clients name only the tool: the earliest unanswered call
                    // of that name, else the earliest unanswered call.
                    None => {
                        let at = message
                            .tool_name()
                            .and_then(|name| pending.iter().position(|(_, call)| *call == name))
                            .or((!pending.is_empty()).then_some(0));
                        match at {
                            Some(at) => pending.remove(at).0,
                            None => {
                                return Err(GatewayError::bad_field(
                                    "messages",
                                    format!(
                                    "messages[{index}]: a tool result answers no earlier tool call"
                                ),
                                ))
                            }
                        }
                    }
                };
                (
                    "user",
                    vec![Block::ToolResult {
                        tool_use_id: id,
                        content: blocks(&message.parts),
                        is_error: message.tool_error(),
                    }],
                )
            }
        };
        if content.is_empty() {
            continue;
        }
        // Turns alternate: a message of the same side as the last joins its turn.
        match messages.last_mut() {
            Some(last) if last.role == role => last.content.extend(content),
            _ => messages.push(WireMessage { role, content }),
        }
    }
    let system = match system.len() {
        0 => None,
        1 => system.pop(),
        _ => Some(WireText::Text(Cow::Owned(
            system
                .iter()
                .map(|text| match text {
                    WireText::Text(text) => text.clone().into_owned(),
                    WireText::Json(literal) => {
                        serde_json::from_str::<String>(literal.get()).unwrap_or_default()
                    }
                })
                .collect::<Vec<_>>()
                .join("\n\n"),
        ))),
    };
    let mut max_tokens = request
        .sampling
        .max_tokens
        .unwrap_or(default_max_tokens)
        .max(1);
    let budget = match &request.think {
        None | Some(Think::Enabled(false)) => None,
        Some(Think::Enabled(true)) => budget_for_effort("medium"),
        Some(Think::Effort(level)) => budget_for_effort(level),
    };
    let thinking = match (&request.think, budget) {
        (_, Some(budget)) => {
            // The budget is part of `max_tokens`; the answer keeps what was asked for.
            if max_tokens <= budget {
                max_tokens += budget;
            }
            Some(json!({"type": "enabled", "budget_tokens": budget}))
        }
        (Some(_), None) => Some(json!({"type": "disabled"})),
        (None, None) => None,
    };
    if request.format.is_some() {
        log::debug!("dropping the output format: Anthropic's structured outputs are a beta the gateway does not use");
    }
    let sampling = &request.sampling;
    // With thinking on, Anthropic refuses any change of temperature, top_p or top_k.
    let thinks = budget.is_some();
    let tools = request
        .tools
        .iter()
        .map(|tool| {
            let function = &tool.function;
            Ok(WireTool {
                name: &function.name,
                description: function.description.as_deref(),
                input_schema: match function.parameters {
                    Some(schema) if schema.get() != "null" => schema,
                    _ => literal(r#"{"type":"object"}"#),
                },
            })
        })
        .collect::<Result<Vec<_>, GatewayError>>()?;
    let body = WireRequest {
        model,
        max_tokens,
        system,
        messages,
        stream,
        temperature: sampling.temperature.filter(|_| !thinks),
        top_p: sampling.top_p.filter(|_| !thinks),
        top_k: sampling.top_k.filter(|_| !thinks),
        stop_sequences: &sampling.stop,
        tool_choice: tool_choice(request),
        tools,
        thinking,
    };
    super::super::json_body(&body, super::super::body_capacity(request))
}

/// The request as the body of `POST /messages/count_tokens`, which takes what the model
/// reads (`model`, `system`, `messages`, `tools`, `tool_choice`, `thinking`) and refuses
/// the sampling fields.
pub fn encode_count(model: &str, request: &ChatRequest) -> Result<Encoded, GatewayError> {
    let whole = encode(model, request, false, 1)?;
    let mut body: serde_json::Map<String, Value> = serde_json::from_slice(&whole.contiguous())
        .map_err(|e| GatewayError::bad_request(format!("cannot encode the request: {e}")))?;
    for field in [
        "max_tokens",
        "stream",
        "temperature",
        "top_p",
        "top_k",
        "stop_sequences",
    ] {
        body.remove(field);
    }
    super::super::json_body(&body, whole.len())
}

fn bad_call(index: usize, error: &serde_json::Error) -> GatewayError {
    GatewayError::bad_field(
        "messages",
        format!("messages[{index}]: tool call arguments are not JSON: {error}"),
    )
}

/// The canonical (OpenAI) `tool_choice` and `parallel_tool_calls` as Anthropic's
/// `tool_choice`.
fn tool_choice(request: &ChatRequest) -> Option<Value> {
    let mut choice = match &request.tool_choice {
        None => None,
        Some(Value::String(kind)) => match kind.as_str() {
            "required" => Some(json!({"type": "any"})),
            "none" => Some(json!({"type": "none"})),
            _ => Some(json!({"type": "auto"})),
        },
        Some(object) => match object.pointer("/function/name").and_then(Value::as_str) {
            Some(name) => Some(json!({"type": "tool", "name": name})),
            None => Some(json!({"type": "auto"})),
        },
    };
    if request.parallel_tool_calls == Some(false) && !request.tools.is_empty() {
        let choice = choice.get_or_insert_with(|| json!({"type": "auto"}));
        if choice["type"] != "none" {
            choice["disable_parallel_tool_use"] = Value::Bool(true);
        }
    }
    choice.filter(|_| !request.tools.is_empty())
}

/// A JSON value written in this file, as the borrowed raw value the wire structs hold.
/// Nothing a request sends reaches it, so it cannot fail.
fn literal(json: &'static str) -> &'static RawValue {
    serde_json::from_str(json).expect("a JSON literal of this file")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::chat::{FunctionDefinition, Message, Rare, Tool, ToolCall};

    fn encoded(request: &ChatRequest) -> Value {
        serde_json::from_slice(
            &encode("claude-x", request, true, 4096)
                .unwrap()
                .contiguous(),
        )
        .unwrap()
    }

    #[test]
    fn turns_alternate_with_system_text_on_top() {
        let schema: &RawValue =
            serde_json::from_str(r#"{"type":"object","properties":{}}"#).unwrap();
        let mut request = ChatRequest::new(vec![
            Message::text(Role::System, "be brief"),
            Message::text(Role::User, "hi"),
            Message::text(Role::User, "weather?"),
            Message {
                tool_calls: vec![
                    ToolCall {
                        id: Some("call.1".into()),
                        name: "get_weather".into(),
                        arguments: "{\"city\":\"Paris\"}".into(),
                    },
                    ToolCall {
                        id: None,
                        name: "get_time".into(),
                        arguments: "".into(),
                    },
                ],
                rare: Rare {
                    thinking: Some("earlier".into()),
                    ..Rare::default()
                }
                .boxed(),
                ..Message::text(Role::Assistant, "looking")
            },
            Message {
                tool_call_id: Some("call.1".into()),
                ..Message::text(Role::Tool, "sunny")
            },
            Message {
                rare: Rare {
                    tool_name: Some("get_time".into()),
                    tool_error: true,
                    ..Rare::default()
                }
                .boxed(),
                ..Message::text(Role::Tool, "noon")
            },
            Message::text(Role::Developer, "late rule"),
            Message {
                parts: vec![
                    Part::Text("and this?".into()),
                    Part::Image(Image::Base64 {
                        mime: None,
                        data: "/9j/4AAQSkZJRg==".into(),
                    }),
                    Part::Image(Image::Url("https://x/y.png".into())),
                ],
                ..Message::text(Role::User, "")
            },
        ]);
        request.tools = vec![Tool {
            kind: "function".into(),
            function: FunctionDefinition {
                name: "get_weather".into(),
                description: Some("Weather".into()),
                parameters: Some(schema),
                strict: None,
            },
        }];
        request.tool_choice = Some(json!("required"));
        request.parallel_tool_calls = Some(false);
        request.sampling.stop = vec!["END".into()];
        request.sampling.temperature = Some(0.2);
        let body = encoded(&request);
        assert_eq!(body["model"], "claude-x");
        assert_eq!(body["max_tokens"], 4096, "the configured default");
        assert_eq!(body["stream"], true);
        assert_eq!(body["system"], "be brief\n\nlate rule");
        assert_eq!(body["stop_sequences"], json!(["END"]));
        assert_eq!(body["temperature"], 0.2);
        assert_eq!(
            body["tool_choice"],
            json!({"type": "any", "disable_parallel_tool_use": true})
        );
        assert_eq!(
            body["tools"],
            json!([{"name": "get_weather", "description": "Weather", "input_schema": {"type": "object", "properties": {}}}])
        );
        assert_eq!(
            body["messages"],
            json!([
                {"role": "user", "content": [{"type": "text", "text": "hi"}, {"type": "text", "text": "weather?"}]},
                {"role": "assistant", "content": [
                    {"type": "text", "text": "looking"},
                    {"type": "tool_use", "id": "call_1", "name": "get_weather", "input": {"city": "Paris"}},
                    {"type": "tool_use", "id": "toolu_3_1", "name": "get_time", "input": {}}]},
                {"role": "user", "content": [
                    {"type": "tool_result", "tool_use_id": "call_1", "content": [{"type": "text", "text": "sunny"}]},
                    {"type": "tool_result", "tool_use_id": "toolu_3_1", "content": [{"type": "text", "text": "noon"}], "is_error": true},
                    {"type": "text", "text": "and this?"},
                    {"type": "image", "source": {"type": "base64", "media_type": "image/jpeg", "data": "/9j/4AAQSkZJRg=="}},
                    {"type": "image", "source": {"type": "url", "url": "https://x/y.png"}}]}
            ])
        );
        assert!(body.get("thinking").is_none());
    }

    #[test]
    fn thinking_is_a_budget_inside_max_tokens() {
        let mut request = ChatRequest::new(vec![Message::text(Role::User, "hi")]);
        request.sampling.max_tokens = Some(1000);
        request.sampling.temperature = Some(0.5);
        request.sampling.top_k = Some(5);
        request.think = Some(Think::Effort("low".into()));
        let body = encoded(&request);
        assert_eq!(
            body["thinking"],
            json!({"type": "enabled", "budget_tokens": 2048})
        );
        assert_eq!(body["max_tokens"], 3048, "the answer keeps its 1000");
        assert!(body.get("temperature").is_none() && body.get("top_k").is_none());
        request.think = Some(Think::Enabled(false));
        let body = encoded(&request);
        assert_eq!(body["thinking"], json!({"type": "disabled"}));
        assert_eq!(body["max_tokens"], 1000);
        assert_eq!(body["temperature"], 0.5);
        request.think = Some(Think::Effort("none".into()));
        assert_eq!(encoded(&request)["thinking"], json!({"type": "disabled"}));
        // A signed earlier thought goes back, before the turn's text.
        request.messages.push(Message {
            rare: Rare {
                thinking: Some("why".into()),
                thinking_signature: Some("c2ln".into()),
                ..Rare::default()
            }
            .boxed(),
            ..Message::text(Role::Assistant, "because")
        });
        assert_eq!(
            encoded(&request)["messages"][1]["content"],
            json!([{"type": "thinking", "thinking": "why", "signature": "c2ln"},
                   {"type": "text", "text": "because"}])
        );
        request.think = Some(Think::Enabled(true));
        request.sampling.max_tokens = Some(20000);
        let body = encoded(&request);
        assert_eq!(body["thinking"]["budget_tokens"], 8192);
        assert_eq!(body["max_tokens"], 20000);
    }

    #[test]
    fn arguments_that_are_no_object_are_refused() {
        let request = ChatRequest::new(vec![Message {
            tool_calls: vec![ToolCall {
                id: Some("a".into()),
                name: "f".into(),
                arguments: "[1]".into(),
            }],
            ..Message::text(Role::Assistant, "")
        }]);
        assert!(matches!(
            encode("m", &request, false, 10),
            Err(GatewayError::BadRequest { .. })
        ));
    }
}

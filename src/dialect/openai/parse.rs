//! Reading `/v1/chat/completions` bodies into the canonical request: every field the
//! gateway models is checked here, with a 400 naming the field at fault, and the rest
//! is carried as-is to OpenAI-compatible backends.

use serde::Deserialize;
use serde_json::{Map, Value};

use crate::chat::{
    ChatRequest, Image, Message, OutputFormat, Part, Role, Sampling, Think, Tool, ToolCall,
    WireToolCall,
};
use crate::dialect::ParsedChat;
use crate::error::GatewayError;

/// What a chat answer needs from its request beyond the events.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Reply {
    /// `stream_options.include_usage`: a last chunk carrying the usage.
    pub include_usage: bool,
}

#[derive(Deserialize)]
struct WireRequest {
    model: String,
    messages: Vec<WireMessage>,
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
    tools: Option<Vec<Tool>>,
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
struct WireMessage {
    role: String,
    #[serde(default)]
    content: Value,
    #[serde(default, deserialize_with = "crate::dialect::null_as_default")]
    tool_calls: Vec<WireToolCall>,
    tool_call_id: Option<String>,
    /// Some clients name the tool on its result message.
    name: Option<String>,
    reasoning_content: Option<String>,
    reasoning: Option<String>,
}

/// Parses a request body, naming the field at fault when it is wrong.
pub fn parse_chat(body: &[u8]) -> Result<ParsedChat<Reply>, GatewayError> {
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
    let mut messages = Vec::with_capacity(wire.messages.len());
    for (index, message) in wire.messages.into_iter().enumerate() {
        messages.push(parse_message(index, message)?);
    }
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
        model: wire.model.clone(),
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

fn parse_message(index: usize, wire: WireMessage) -> Result<Message, GatewayError> {
    let role = Role::parse(&wire.role).ok_or_else(|| {
        GatewayError::bad_field(
            "messages",
            format!(
                "messages[{index}].role \"{}\" is not system, developer, user, assistant or tool",
                wire.role
            ),
        )
    })?;
    let parts = parse_content(index, wire.content)?;
    let tool_calls = wire.tool_calls.into_iter().map(ToolCall::from).collect();
    Ok(Message {
        role,
        parts,
        thinking: wire.reasoning_content.or(wire.reasoning),
        tool_calls,
        tool_call_id: wire.tool_call_id,
        tool_name: if role == Role::Tool { wire.name } else { None },
    })
}

fn parse_content(index: usize, content: Value) -> Result<Vec<Part>, GatewayError> {
    let bad = |what: String| {
        GatewayError::bad_field("messages", format!("messages[{index}].content{what}"))
    };
    match content {
        Value::Null => Ok(Vec::new()),
        Value::String(text) => Ok(vec![Part::Text(text)]),
        Value::Array(items) => items
            .into_iter()
            .enumerate()
            .map(
                |(at, item)| match item.get("type").and_then(Value::as_str) {
                    Some("text") => item
                        .get("text")
                        .and_then(Value::as_str)
                        .map(|text| Part::Text(text.to_owned()))
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

fn parse_image_url(url: &str) -> Option<Image> {
    if let Some(rest) = url.strip_prefix("data:") {
        let (meta, data) = rest.split_once(',')?;
        let mime = meta.strip_suffix(";base64")?;
        return Some(Image::Base64 {
            mime: (!mime.is_empty()).then(|| mime.to_owned()),
            data: data.to_owned(),
        });
    }
    (url.starts_with("http://") || url.starts_with("https://")).then(|| Image::Url(url.to_owned()))
}

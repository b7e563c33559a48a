//! Reading `POST /v1/responses` bodies into the canonical request. Items become chat
//! messages in order: an assistant's reasoning, text and function calls of one turn are
//! joined into one assistant message (as chat APIs carry them), and a
//! `function_call_output` becomes a tool message answering its `call_id`. Fields the
//! gateway does not model (`prompt_cache_key`, `client_metadata`, `include`, ...) are
//! ignored rather than refused: agents are often newer than the gateway.

use std::borrow::Cow;

use serde::Deserialize;
use serde_json::value::RawValue;
use serde_json::{json, Map, Value};

use crate::chat::{
    optional_str, ChatRequest, FunctionDefinition, Image, Message, OutputFormat, Part, Rare, Role,
    Sampling, Str, Think, Tool, ToolCall,
};
use crate::error::GatewayError;

/// The body as read; long texts and schemas stay borrowed from it.
#[derive(Deserialize)]
pub(super) struct WireRequest<'a> {
    pub model: String,
    #[serde(default, borrow)]
    pub input: Option<&'a RawValue>,
    #[serde(default, borrow)]
    pub instructions: Option<Str<'a>>,
    #[serde(default, borrow)]
    pub tools: Option<&'a RawValue>,
    #[serde(default)]
    pub tool_choice: Option<Value>,
    #[serde(default)]
    pub parallel_tool_calls: Option<bool>,
    #[serde(default)]
    pub max_output_tokens: Option<u64>,
    #[serde(default)]
    pub temperature: Option<f64>,
    #[serde(default)]
    pub top_p: Option<f64>,
    #[serde(default)]
    pub reasoning: Option<WireReasoning>,
    #[serde(default)]
    pub text: Option<WireText>,
    #[serde(default)]
    pub stream: Option<bool>,
    #[serde(default)]
    pub store: Option<bool>,
    #[serde(default)]
    pub previous_response_id: Option<String>,
    #[serde(default)]
    pub metadata: Option<Value>,
    #[serde(default)]
    pub user: Option<String>,
}

#[derive(Deserialize)]
pub(super) struct WireReasoning {
    #[serde(default)]
    pub effort: Option<String>,
    #[serde(default)]
    pub summary: Option<String>,
}

#[derive(Deserialize)]
pub(super) struct WireText {
    #[serde(default)]
    pub format: Option<Value>,
}

/// A tool as the Responses API writes it: flat (`name` beside `type`), or a `namespace`
/// holding flat functions.
#[derive(Deserialize)]
struct WireTool<'a> {
    #[serde(rename = "type", borrow)]
    kind: Str<'a>,
    #[serde(default, borrow)]
    name: Option<Str<'a>>,
    #[serde(default, borrow, deserialize_with = "optional_str")]
    description: Option<Cow<'a, str>>,
    #[serde(default, borrow)]
    parameters: Option<&'a RawValue>,
    #[serde(default)]
    strict: Option<bool>,
    #[serde(default, borrow)]
    tools: Vec<WireTool<'a>>,
}

/// One input item. Every kind shares this struct, so one pass reads them all; `type`
/// is absent on the short form `{"role", "content"}`.
#[derive(Deserialize)]
struct WireItem<'a> {
    #[serde(rename = "type", default, borrow)]
    kind: Option<Str<'a>>,
    #[serde(default, borrow)]
    role: Option<Str<'a>>,
    #[serde(default, borrow)]
    content: Option<&'a RawValue>,
    #[serde(default, borrow)]
    name: Option<Str<'a>>,
    #[serde(default, borrow)]
    namespace: Option<Str<'a>>,
    #[serde(default, borrow)]
    arguments: Option<&'a RawValue>,
    #[serde(default, borrow)]
    call_id: Option<Str<'a>>,
    #[serde(default, borrow)]
    output: Option<&'a RawValue>,
    #[serde(default, borrow)]
    summary: Option<Vec<WirePart<'a>>>,
}

/// One content part of a message, a tool output or a reasoning item.
#[derive(Deserialize)]
struct WirePart<'a> {
    #[serde(rename = "type", borrow)]
    kind: Str<'a>,
    #[serde(default, borrow)]
    text: Option<&'a RawValue>,
    #[serde(default, borrow)]
    refusal: Option<&'a RawValue>,
    #[serde(default, borrow)]
    image_url: Option<Str<'a>>,
    #[serde(default)]
    file_id: Option<String>,
}

/// A namespaced function as the upstream knows it (`namespace__name`, the form Codex
/// itself flattens to), and the two names the client gave it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Namespaced {
    pub flat: String,
    pub namespace: String,
    pub name: String,
}

/// The flat name of `name` in `namespace`: stray underscores around the `__` are
/// trimmed, as Codex does.
pub fn flat_name(namespace: &str, name: &str) -> String {
    format!(
        "{}__{}",
        namespace.trim_end_matches('_'),
        name.trim_start_matches('_')
    )
}

/// The built-in tools an agent may offer that no backend here can run and that are
/// dropped rather than refused: Codex always offers `web_search`, and a model without
/// it answers the turn all the same.
const DROPPED_TOOLS: [&str; 2] = ["web_search", "web_search_preview"];

/// The request's tools made canonical, with the namespaced functions' names.
pub(super) fn parse_tools(
    raw: Option<&RawValue>,
) -> Result<(Vec<Tool<'_>>, Vec<Namespaced>), GatewayError> {
    let Some(raw) = raw else {
        return Ok((Vec::new(), Vec::new()));
    };
    let bad = |message: String| GatewayError::bad_field("tools", message);
    let wire: Option<Vec<WireTool<'_>>> =
        serde_json::from_str(raw.get()).map_err(|e| bad(format!("tools cannot be read: {e}")))?;
    let mut tools = Vec::new();
    let mut namespaced = Vec::new();
    for (index, tool) in wire.unwrap_or_default().into_iter().enumerate() {
        match &*tool.kind.0 {
            "function" => tools.push(function_tool(index, tool, None)?),
            "namespace" => {
                let namespace = tool
                    .name
                    .ok_or_else(|| bad(format!("tools[{index}] is a namespace without a name")))?
                    .0;
                for inner in tool.tools {
                    if inner.kind.0 != "function" {
                        return Err(bad(format!(
                            "tools[{index}] holds a \"{}\" tool; the gateway carries function tools only",
                            inner.kind.0
                        )));
                    }
                    let bare = inner.name.as_ref().map(|n| n.0.to_string());
                    let tool = function_tool(index, inner, Some(&namespace))?;
                    namespaced.push(Namespaced {
                        flat: tool.function.name.to_string(),
                        namespace: namespace.to_string(),
                        name: bare.unwrap_or_default(),
                    });
                    tools.push(tool);
                }
            }
            kind if DROPPED_TOOLS.contains(&kind) => {}
            other => {
                return Err(bad(format!(
                    "tools[{index}] has type \"{other}\": the gateway carries function tools (and namespaces of them) only; built-in tools run on OpenAI's servers"
                )))
            }
        }
    }
    Ok((tools, namespaced))
}

fn function_tool<'a>(
    index: usize,
    tool: WireTool<'a>,
    namespace: Option<&str>,
) -> Result<Tool<'a>, GatewayError> {
    let name = tool
        .name
        .ok_or_else(|| {
            GatewayError::bad_field(
                "tools",
                format!("tools[{index}] is a function without a name"),
            )
        })?
        .0;
    Ok(Tool {
        kind: Cow::Borrowed("function"),
        function: FunctionDefinition {
            name: match namespace {
                Some(namespace) => Cow::Owned(flat_name(namespace, &name)),
                None => name,
            },
            description: tool.description,
            parameters: tool.parameters,
            strict: tool.strict,
        },
    })
}

/// `tool_choice` in the chat form backends take: the strings as they are, a function
/// named flat (`{"type": "function", "name"}`) nested as chat writes it.
pub(super) fn parse_tool_choice(choice: Option<Value>) -> Result<Option<Value>, GatewayError> {
    let bad = || {
        GatewayError::bad_field(
            "tool_choice",
            "tool_choice must be \"auto\", \"none\", \"required\" or {\"type\": \"function\", \"name\": ...}",
        )
    };
    match choice {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(mode)) if matches!(mode.as_str(), "auto" | "none" | "required") => {
            Ok(Some(Value::String(mode)))
        }
        Some(Value::Object(object))
            if object.get("type").and_then(Value::as_str) == Some("function") =>
        {
            let name = object.get("name").and_then(Value::as_str).ok_or_else(bad)?;
            let name = match object.get("namespace").and_then(Value::as_str) {
                Some(namespace) => flat_name(namespace, name),
                None => name.to_owned(),
            };
            Ok(Some(
                json!({"type": "function", "function": {"name": name}}),
            ))
        }
        Some(_) => Err(bad()),
    }
}

/// `text.format` as the canonical output format; `text` is none.
pub(super) fn parse_format(format: Option<&Value>) -> Result<Option<OutputFormat>, GatewayError> {
    let bad = |message: &str| GatewayError::bad_field("text.format", message.to_owned());
    let Some(format) = format.filter(|f| !f.is_null()) else {
        return Ok(None);
    };
    match format.get("type").and_then(Value::as_str) {
        Some("text") => Ok(None),
        Some("json_object") => Ok(Some(OutputFormat::Json)),
        Some("json_schema") => Ok(Some(OutputFormat::Schema {
            name: format
                .get("name")
                .and_then(Value::as_str)
                .map(str::to_owned),
            schema: format
                .get("schema")
                .cloned()
                .ok_or_else(|| bad("text.format json_schema needs a schema"))?,
            strict: format.get("strict").and_then(Value::as_bool),
        })),
        _ => Err(bad(
            "text.format.type must be \"text\", \"json_object\" or \"json_schema\"",
        )),
    }
}

/// The canonical request of a parsed body, before any stored conversation is put in
/// front of its input.
pub(super) fn canonical_request<'a>(
    wire: &WireRequest<'a>,
    input: Vec<Message<'a>>,
    tools: Vec<Tool<'a>>,
) -> Result<ChatRequest<'a>, GatewayError> {
    let mut request = ChatRequest::new(input);
    request.sampling = Sampling {
        max_tokens: wire.max_output_tokens,
        temperature: wire.temperature,
        top_p: wire.top_p,
        ..Sampling::default()
    };
    request.format = parse_format(wire.text.as_ref().and_then(|t| t.format.as_ref()))?;
    request.tools = tools;
    request.tool_choice = parse_tool_choice(wire.tool_choice.clone())?;
    request.parallel_tool_calls = wire.parallel_tool_calls;
    request.think = wire
        .reasoning
        .as_ref()
        .and_then(|r| r.effort.clone())
        .map(Think::Effort);
    request.passthrough = Map::new();
    Ok(request)
}

/// The input's messages: a string is one user message; items are read in order.
pub(super) fn parse_input<'a>(
    input: Option<&'a RawValue>,
) -> Result<Vec<Message<'a>>, GatewayError> {
    let Some(input) = input else {
        return Ok(Vec::new());
    };
    let bad = |message: String| GatewayError::bad_field("input", message);
    if input.get().starts_with('"') {
        let part =
            Part::from_literal(input).map_err(|e| bad(format!("input cannot be read: {e}")))?;
        return Ok(vec![Message {
            parts: vec![part],
            ..Message::text(Role::User, "")
        }]);
    }
    let items: Vec<WireItem<'a>> = serde_json::from_str(input.get())
        .map_err(|e| bad(format!("input must be a string or an array of items: {e}")))?;
    let mut messages: Vec<Message<'a>> = Vec::with_capacity(items.len());
    // The assistant turn being gathered: its reasoning, text and calls.
    let mut turn: Option<Message<'a>> = None;
    for (index, item) in items.into_iter().enumerate() {
        let kind = item.kind.as_ref().map_or("message", |k| &*k.0);
        match kind {
            "message" => {
                let role = item.role.as_ref().map(|r| &*r.0).unwrap_or("");
                let role = Role::parse(role)
                    .filter(|role| *role != Role::Tool)
                    .ok_or_else(|| {
                        bad(format!(
                            "input[{index}].role \"{role}\" is not user, assistant, system or developer"
                        ))
                    })?;
                let parts = parse_content(index, item.content)?;
                if role == Role::Assistant {
                    let current = gather(&mut messages, &mut turn, |m| !m.tool_calls.is_empty());
                    current.parts.extend(parts);
                } else {
                    messages.extend(turn.take());
                    messages.push(Message {
                        role,
                        parts,
                        ..Message::text(role, "")
                    });
                }
            }
            "reasoning" => {
                let text = reasoning_text(index, item.content, item.summary)?;
                if let Some(text) = text.filter(|t| !t.is_empty()) {
                    let current = gather(&mut messages, &mut turn, |m| {
                        !m.parts.is_empty() || !m.tool_calls.is_empty()
                    });
                    let rare = current.rare_mut();
                    rare.thinking = Some(match rare.thinking.take() {
                        Some(before) => Cow::Owned(format!("{before}\n{text}")),
                        None => text,
                    });
                }
            }
            "function_call" => {
                let name = item
                    .name
                    .ok_or_else(|| bad(format!("input[{index}] is a function_call without a name")))?
                    .0;
                let name = match item.namespace {
                    Some(namespace) => Cow::Owned(flat_name(&namespace.0, &name)),
                    None => name,
                };
                let arguments = ToolCall::arguments_from_raw(item.arguments)
                    .map_err(|e| bad(format!("input[{index}].arguments: {e}")))?;
                let current = gather(&mut messages, &mut turn, |_| false);
                current.tool_calls.push(ToolCall {
                    id: item.call_id.map(|id| id.0),
                    name,
                    arguments,
                });
            }
            "function_call_output" => {
                messages.extend(turn.take());
                let call_id = item.call_id.map(|id| id.0).ok_or_else(|| {
                    bad(format!(
                        "input[{index}] is a function_call_output without a call_id"
                    ))
                })?;
                let tool_name = tool_name_of(&messages, &call_id);
                messages.push(Message {
                    parts: parse_output(index, item.output)?,
                    tool_call_id: Some(call_id),
                    rare: Rare {
                        tool_name,
                        ..Rare::default()
                    }
                    .boxed(),
                    ..Message::text(Role::Tool, "")
                });
            }
            other => {
                return Err(bad(format!(
                    "input[{index}] has type \"{other}\": the gateway reads message, reasoning, function_call and function_call_output items"
                )))
            }
        }
    }
    messages.extend(turn);
    Ok(messages)
}

/// The assistant message being gathered, a new one when there is none or when
/// `closes` says the current one cannot take what comes next (text after calls, or
/// reasoning after anything: each starts a new turn).
fn gather<'m, 'a>(
    messages: &mut Vec<Message<'a>>,
    turn: &'m mut Option<Message<'a>>,
    closes: impl Fn(&Message<'a>) -> bool,
) -> &'m mut Message<'a> {
    if turn.as_ref().is_some_and(&closes) {
        messages.extend(turn.take());
    }
    turn.get_or_insert_with(|| Message {
        parts: Vec::new(),
        ..Message::text(Role::Assistant, "")
    })
}

/// The name of the call `call_id` answers, from the calls before it: Ollama
/// backends name a tool result by its tool.
fn tool_name_of<'a>(messages: &[Message<'a>], call_id: &str) -> Option<Cow<'a, str>> {
    messages.iter().rev().find_map(|message| {
        message
            .tool_calls
            .iter()
            .find(|call| call.id.as_deref() == Some(call_id))
            .map(|call| call.name.clone())
    })
}

/// A reasoning item's text: its `reasoning_text` content where it has one, else its
/// summary. Encrypted reasoning cannot be read by another model and is left out.
fn reasoning_text<'a>(
    index: usize,
    content: Option<&'a RawValue>,
    summary: Option<Vec<WirePart<'a>>>,
) -> Result<Option<Cow<'a, str>>, GatewayError> {
    let content = parse_content(index, content)?;
    let parts = if content.is_empty() {
        let summary = summary.unwrap_or_default();
        summary
            .into_iter()
            .map(|part| text_part(index, part))
            .collect::<Result<Vec<_>, _>>()?
            .into_iter()
            .flatten()
            .collect()
    } else {
        content
    };
    let texts: Vec<Cow<'a, str>> = parts.iter().filter_map(Part::text).collect();
    Ok(match texts.len() {
        0 => None,
        1 => texts.into_iter().next(),
        _ => Some(Cow::Owned(texts.join("\n"))),
    })
}

/// A tool output: a string or parts, or the `{"content", "success"}` object earlier
/// Codex versions wrote for a failed call (its `content` is the output).
fn parse_output<'a>(
    index: usize,
    output: Option<&'a RawValue>,
) -> Result<Vec<Part<'a>>, GatewayError> {
    #[derive(Deserialize)]
    struct Wrapped<'a> {
        #[serde(borrow)]
        content: Option<&'a RawValue>,
    }
    match output {
        Some(raw) if raw.get().starts_with('{') => {
            let wrapped: Wrapped<'a> = serde_json::from_str(raw.get()).map_err(|e| {
                GatewayError::bad_field(
                    "input",
                    format!("input[{index}].output cannot be read: {e}"),
                )
            })?;
            parse_content(index, wrapped.content)
        }
        other => parse_content(index, other),
    }
}

/// A message's (or a tool output's) content: one string, or an array of parts.
fn parse_content<'a>(
    index: usize,
    content: Option<&'a RawValue>,
) -> Result<Vec<Part<'a>>, GatewayError> {
    let bad = |message: String| GatewayError::bad_field("input", message);
    let Some(content) = content else {
        return Ok(Vec::new());
    };
    let malformed =
        |e: serde_json::Error| bad(format!("input[{index}] content cannot be read: {e}"));
    if content.get().starts_with('"') {
        return Ok(vec![Part::from_literal(content).map_err(malformed)?]);
    }
    let parts: Option<Vec<WirePart<'a>>> =
        serde_json::from_str(content.get()).map_err(malformed)?;
    let mut out = Vec::new();
    for part in parts.unwrap_or_default() {
        out.extend(text_part(index, part)?);
    }
    Ok(out)
}

/// One content part made canonical.
fn text_part<'a>(index: usize, part: WirePart<'a>) -> Result<Option<Part<'a>>, GatewayError> {
    let bad = |message: String| GatewayError::bad_field("input", message);
    let kind = &*part.kind.0;
    let literal = |raw: Option<&'a RawValue>| -> Result<Option<Part<'a>>, GatewayError> {
        match raw {
            Some(raw) if raw.get().starts_with('"') => Part::from_literal(raw)
                .map(Some)
                .map_err(|e| bad(format!("input[{index}] text cannot be read: {e}"))),
            _ => Err(bad(format!(
                "input[{index}] has a {kind} part without a text string"
            ))),
        }
    };
    match kind {
        "input_text" | "output_text" | "text" | "reasoning_text" | "summary_text" => {
            literal(part.text)
        }
        "refusal" => literal(part.refusal),
        "input_image" => {
            if part.file_id.is_some() && part.image_url.is_none() {
                return Err(bad(format!(
                    "input[{index}] names an image by file_id; the gateway has no file store: send image_url"
                )));
            }
            let url = part.image_url.ok_or_else(|| {
                bad(format!(
                    "input[{index}] has an input_image part without image_url"
                ))
            })?;
            image(&url.0)
                .map(|image| Some(Part::Image(image)))
                .ok_or_else(|| {
                    bad(format!(
                        "input[{index}] image_url must be an http(s) URL or a base64 data: URL"
                    ))
                })
        }
        other => Err(bad(format!(
            "input[{index}] has a \"{other}\" part; the gateway carries text and image parts"
        ))),
    }
}

fn image(url: &str) -> Option<Image<'static>> {
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

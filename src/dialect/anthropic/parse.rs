//! Reading `/v1/messages` (and `/v1/messages/count_tokens`) bodies into the canonical
//! request. What the canonical model holds is checked, with a 400 naming the field at
//! fault; fields the gateway does not know are ignored, never refused, since clients
//! are often newer than the gateway (Claude Code sends `output_config`,
//! `context_management`, `cache_control` on blocks, `defer_loading` on tools).
//!
//! Anthropic's shape differs from the canonical one in three places that matter:
//! system text is a top-level field (and Claude Code also puts `role: "system"` turns
//! inside `messages`, which are merged into it, since many chat templates refuse a late
//! system message); tool results are blocks of a user turn, which become tool messages
//! placed right after the assistant's calls and before that turn's own text; and a tool
//! call's `input` is an object, kept as compact JSON text.

use std::borrow::Cow;

use serde::Deserialize;
use serde_json::value::RawValue;
use serde_json::{json, Map, Value};

use crate::chat::{
    optional_str, ChatRequest, FunctionDefinition, Image, Message, Part, Rare, Role, Sampling, Str,
    Think, Tool, ToolCall,
};
use crate::dialect::ParsedChat;
use crate::error::GatewayError;

/// What the answer needs from its request beyond the events: nothing yet, every field
/// of an Anthropic answer comes from the events or the model name.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Reply;

/// The body as read; unknown fields are skipped by serde.
#[derive(Deserialize)]
struct WireRequest<'a> {
    model: String,
    max_tokens: Option<u64>,
    #[serde(borrow)]
    messages: Vec<WireMessage<'a>>,
    #[serde(borrow, default)]
    system: Option<&'a RawValue>,
    stream: Option<bool>,
    stop_sequences: Option<Vec<String>>,
    temperature: Option<f64>,
    top_p: Option<f64>,
    top_k: Option<i64>,
    #[serde(borrow, default)]
    tools: Option<Vec<WireTool<'a>>>,
    tool_choice: Option<WireToolChoice>,
    thinking: Option<WireThinking>,
}

#[derive(Deserialize)]
struct WireMessage<'a> {
    #[serde(borrow)]
    role: Str<'a>,
    #[serde(borrow)]
    content: &'a RawValue,
}

/// One content block, every kind's fields optional: serde's tagged enums buffer their
/// input, which would copy every text instead of borrowing it from the body.
#[derive(Deserialize)]
struct WireBlock<'a> {
    #[serde(rename = "type", borrow)]
    kind: Str<'a>,
    /// `text`: kept as the client's string literal.
    #[serde(borrow, default)]
    text: Option<&'a RawValue>,
    /// `thinking`, with its `signature`.
    #[serde(borrow, default)]
    thinking: Option<Str<'a>>,
    #[serde(borrow, default)]
    signature: Option<Str<'a>>,
    /// `image`.
    #[serde(default)]
    source: Option<WireSource>,
    /// `tool_use`.
    #[serde(borrow, default)]
    id: Option<Str<'a>>,
    #[serde(borrow, default)]
    name: Option<Str<'a>>,
    #[serde(borrow, default)]
    input: Option<&'a RawValue>,
    /// `tool_result`.
    #[serde(borrow, default)]
    tool_use_id: Option<Str<'a>>,
    #[serde(borrow, default)]
    content: Option<&'a RawValue>,
    #[serde(default)]
    is_error: Option<bool>,
}

#[derive(Deserialize)]
struct WireSource {
    #[serde(rename = "type")]
    kind: String,
    media_type: Option<String>,
    data: Option<String>,
    url: Option<String>,
}

#[derive(Deserialize)]
struct WireTool<'a> {
    /// Absent or `custom` for a tool the client defines; a dated type
    /// (`web_search_20250305`, `bash_20250124`) for one of Anthropic's own.
    #[serde(rename = "type", default)]
    kind: Option<String>,
    #[serde(borrow)]
    name: Str<'a>,
    #[serde(default, borrow, deserialize_with = "optional_str")]
    description: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    input_schema: Option<&'a RawValue>,
}

#[derive(Deserialize)]
struct WireToolChoice {
    #[serde(rename = "type")]
    kind: String,
    name: Option<String>,
    disable_parallel_tool_use: Option<bool>,
}

#[derive(Deserialize)]
struct WireThinking {
    #[serde(rename = "type")]
    kind: String,
    budget_tokens: Option<u64>,
}

/// Parses a `/v1/messages` body; `max_tokens` is required, as Anthropic requires it.
pub fn parse_chat(body: &[u8]) -> Result<ParsedChat<'_, Reply>, GatewayError> {
    parse(body, true)
}

/// Parses a `/v1/messages` or `/v1/messages/count_tokens` body (the latter has no
/// `max_tokens`). The request borrows from `body`.
pub fn parse(
    body: &[u8],
    max_tokens_required: bool,
) -> Result<ParsedChat<'_, Reply>, GatewayError> {
    let wire: WireRequest = crate::dialect::parse_body(body)?;
    if wire.model.is_empty() {
        return Err(GatewayError::bad_field("model", "model: must not be empty"));
    }
    if max_tokens_required && wire.max_tokens.is_none() {
        return Err(GatewayError::bad_field(
            "max_tokens",
            "max_tokens: Field required",
        ));
    }
    if wire.messages.is_empty() {
        return Err(GatewayError::bad_field(
            "messages",
            "messages: at least one message is required",
        ));
    }
    let mut system = match wire.system {
        Some(system) => system_parts(system)?,
        None => Vec::new(),
    };
    let mut messages = Vec::with_capacity(wire.messages.len() + 1);
    // Tool names by call id, for the tool messages (Ollama names a result's tool).
    let mut tool_names: Vec<(Cow<'_, str>, Cow<'_, str>)> = Vec::new();
    for (index, message) in wire.messages.into_iter().enumerate() {
        match message.role.0.as_ref() {
            "system" => system.extend(text_parts(index, message.content)?),
            "user" => user_turn(index, message.content, &tool_names, &mut messages)?,
            "assistant" => {
                let turn = assistant_turn(index, message.content)?;
                for call in &turn.tool_calls {
                    if let Some(id) = &call.id {
                        tool_names.push((id.clone(), call.name.clone()));
                    }
                }
                messages.push(turn);
            }
            other => {
                return Err(GatewayError::bad_field(
                    "messages",
                    format!("messages.{index}.role: \"{other}\" is not user or assistant"),
                ))
            }
        }
    }
    if !system.is_empty() {
        messages.insert(
            0,
            Message {
                parts: system,
                ..Message::text(Role::System, "")
            },
        );
    }
    let tools = match wire.tools {
        Some(tools) => tools.into_iter().filter_map(canonical_tool).collect(),
        None => Vec::new(),
    };
    let (tool_choice, parallel_tool_calls) = match wire.tool_choice {
        Some(choice) => parse_tool_choice(choice)?,
        None => (None, None),
    };
    let request = ChatRequest {
        messages,
        sampling: Sampling {
            max_tokens: wire.max_tokens,
            temperature: wire.temperature,
            top_p: wire.top_p,
            top_k: wire.top_k,
            stop: wire.stop_sequences.unwrap_or_default(),
            ..Sampling::default()
        },
        format: None,
        tools,
        tool_choice,
        parallel_tool_calls,
        think: wire.thinking.and_then(think),
        keep_alive: None,
        // Anthropic's own fields mean nothing to an OpenAI-compatible server; none is
        // carried.
        passthrough: Map::new(),
        generation: None,
    };
    Ok(ParsedChat {
        model: wire.model,
        stream: wire.stream.unwrap_or(false),
        request,
        reply: Reply,
    })
}

/// A bad `messages.N.content` (or the like), named as Anthropic names fields.
fn bad_content(index: usize, what: impl std::fmt::Display) -> GatewayError {
    GatewayError::bad_field("messages", format!("messages.{index}.content{what}"))
}

/// The blocks of a content array, or the one text of a content string.
enum Content<'a> {
    Text(Part<'a>),
    Blocks(Vec<WireBlock<'a>>),
}

fn read_content(content: &RawValue) -> Result<Content<'_>, String> {
    if content.get().starts_with('"') {
        return Part::from_literal(content)
            .map(Content::Text)
            .map_err(|e| format!(": {e}"));
    }
    serde_json::from_str::<Vec<WireBlock>>(content.get())
        .map(Content::Blocks)
        .map_err(|e| format!(": must be a string or a list of content blocks ({e})"))
}

/// A text block's text, kept as the client's literal.
fn block_text<'a>(block: &WireBlock<'a>, at: &str) -> Result<Part<'a>, String> {
    match block.text {
        Some(text) if text.get().starts_with('"') => {
            Part::from_literal(text).map_err(|e| format!("{at}.text: {e}"))
        }
        _ => Err(format!("{at}.text: a text block needs a text string")),
    }
}

/// The top-level `system`: a string or a list of text blocks (`cache_control` and
/// other block fields dropped).
fn system_parts(system: &RawValue) -> Result<Vec<Part<'_>>, GatewayError> {
    let bad = |what: String| GatewayError::bad_field("system", format!("system{what}"));
    match read_content(system).map_err(bad)? {
        Content::Text(part) => Ok(vec![part]),
        Content::Blocks(blocks) => blocks
            .iter()
            .enumerate()
            .map(|(at, block)| match block.kind.0.as_ref() {
                "text" => block_text(block, &format!(".{at}")).map_err(bad),
                other => Err(bad(format!(".{at}.type: \"{other}\" is not a text block"))),
            })
            .collect(),
    }
}

/// The text of a `role: "system"` turn inside `messages`.
fn text_parts(index: usize, content: &RawValue) -> Result<Vec<Part<'_>>, GatewayError> {
    match read_content(content).map_err(|e| bad_content(index, e))? {
        Content::Text(part) => Ok(vec![part]),
        Content::Blocks(blocks) => blocks
            .iter()
            .enumerate()
            .map(|(at, block)| match block.kind.0.as_ref() {
                "text" => block_text(block, &format!(".{at}")).map_err(|e| bad_content(index, e)),
                other => Err(bad_content(
                    index,
                    format!(".{at}.type: \"{other}\" is not a text block"),
                )),
            })
            .collect(),
    }
}

/// An image block's source as the canonical image.
fn image(source: Option<WireSource>, at: &str) -> Result<Image<'static>, String> {
    let source = source.ok_or_else(|| format!("{at}.source: an image block needs a source"))?;
    match (source.kind.as_str(), source.data, source.url) {
        ("base64", Some(data), _) => Ok(Image::Base64 {
            mime: source.media_type.map(Cow::Owned),
            data: Cow::Owned(data),
        }),
        ("url", _, Some(url)) if url.starts_with("http://") || url.starts_with("https://") => {
            Ok(Image::Url(Cow::Owned(url)))
        }
        (kind, _, _) => Err(format!(
            "{at}.source: type \"{kind}\" with its data is not carried; send base64 data or an http(s) url"
        )),
    }
}

/// A user turn: its tool results as tool messages first, then its text and images as
/// one user message (none when the turn held only tool results).
fn user_turn<'a>(
    index: usize,
    content: &'a RawValue,
    tool_names: &[(Cow<'a, str>, Cow<'a, str>)],
    messages: &mut Vec<Message<'a>>,
) -> Result<(), GatewayError> {
    let blocks = match read_content(content).map_err(|e| bad_content(index, e))? {
        Content::Text(part) => {
            messages.push(Message {
                parts: vec![part],
                ..Message::text(Role::User, "")
            });
            return Ok(());
        }
        Content::Blocks(blocks) => blocks,
    };
    let mut parts = Vec::new();
    let mut results = 0;
    for (at, block) in blocks.into_iter().enumerate() {
        let at = format!(".{at}");
        match block.kind.0.as_ref() {
            "text" => parts.push(block_text(&block, &at).map_err(|e| bad_content(index, e))?),
            "image" => parts.push(Part::Image(
                image(block.source, &at).map_err(|e| bad_content(index, e))?,
            )),
            "tool_result" => {
                let id = block.tool_use_id.map(|id| id.0).ok_or_else(|| {
                    bad_content(index, format!("{at}.tool_use_id: Field required"))
                })?;
                let tool_name = tool_names
                    .iter()
                    .rev()
                    .find(|(call, _)| *call == id)
                    .map(|(_, name)| name.clone());
                let parts = match block.content {
                    None => Vec::new(),
                    Some(content) => result_parts(content)
                        .map_err(|e| bad_content(index, format!("{at}.content{e}")))?,
                };
                messages.push(Message {
                    role: Role::Tool,
                    parts,
                    tool_calls: Vec::new(),
                    tool_call_id: Some(id),
                    rare: Rare {
                        tool_name,
                        tool_error: block.is_error.unwrap_or(false),
                        ..Rare::default()
                    }
                    .boxed(),
                });
                results += 1;
            }
            other => {
                return Err(bad_content(
                    index,
                    format!("{at}.type: \"{other}\" is not carried in a user turn (text, image and tool_result are)"),
                ))
            }
        }
    }
    if results == 0 || !parts.is_empty() {
        messages.push(Message {
            parts,
            ..Message::text(Role::User, "")
        });
    }
    Ok(())
}

/// A tool result's content: a string, or text and image blocks.
fn result_parts(content: &RawValue) -> Result<Vec<Part<'_>>, String> {
    if content.get() == "null" {
        return Ok(Vec::new());
    }
    match read_content(content)? {
        Content::Text(part) => Ok(vec![part]),
        Content::Blocks(blocks) => blocks
            .into_iter()
            .enumerate()
            .map(|(at, block)| {
                let at = format!(".{at}");
                match block.kind.0.as_ref() {
                    "text" => block_text(&block, &at),
                    "image" => image(block.source, &at).map(Part::Image),
                    other => Err(format!(
                        "{at}.type: \"{other}\" is not carried in a tool result (text and image are)"
                    )),
                }
            })
            .collect(),
    }
}

/// An assistant turn: its text, its thinking (joined; a redacted block is opaque and
/// left out) and its tool calls, with their ids.
fn assistant_turn(index: usize, content: &RawValue) -> Result<Message<'_>, GatewayError> {
    let blocks = match read_content(content).map_err(|e| bad_content(index, e))? {
        Content::Text(part) => {
            return Ok(Message {
                parts: vec![part],
                ..Message::text(Role::Assistant, "")
            })
        }
        Content::Blocks(blocks) => blocks,
    };
    let mut message = Message {
        parts: Vec::new(),
        ..Message::text(Role::Assistant, "")
    };
    for (at, block) in blocks.into_iter().enumerate() {
        let at = format!(".{at}");
        match block.kind.0.as_ref() {
            "text" => message
                .parts
                .push(block_text(&block, &at).map_err(|e| bad_content(index, e))?),
            "thinking" => {
                let text = block.thinking.map(|text| text.0).unwrap_or_default();
                let rare = message.rare_mut();
                rare.thinking = Some(match rare.thinking.take() {
                    None => text,
                    Some(earlier) => Cow::Owned(format!("{earlier}\n{text}")),
                });
                // Several signed blocks cannot be joined under one signature: the
                // last one's is kept, and an Anthropic upstream checks it.
                rare.thinking_signature = block.signature.map(|signature| signature.0);
            }
            "redacted_thinking" => {}
            "tool_use" => {
                let name = block.name.map(|name| name.0).ok_or_else(|| {
                    bad_content(index, format!("{at}.name: Field required"))
                })?;
                let arguments = ToolCall::arguments_from_raw(block.input)
                    .map_err(|e| bad_content(index, format!("{at}.input: {e}")))?;
                message.tool_calls.push(ToolCall {
                    id: block.id.map(|id| id.0),
                    name,
                    arguments,
                });
            }
            other => {
                return Err(bad_content(
                    index,
                    format!("{at}.type: \"{other}\" is not carried in an assistant turn (text, thinking, redacted_thinking and tool_use are)"),
                ))
            }
        }
    }
    Ok(message)
}

/// A tool the client defines, in the canonical (OpenAI) shape; Anthropic's own tools
/// (a dated `type` such as `web_search_20250305`) run on Anthropic's servers or have
/// schemas only Claude knows, so no other model can use them: they are left out.
fn canonical_tool(tool: WireTool<'_>) -> Option<Tool<'_>> {
    if tool.kind.as_deref().is_some_and(|kind| kind != "custom") {
        log::debug!(
            "dropping the Anthropic tool {} ({:?}): only Anthropic serves it",
            tool.name.0,
            tool.kind
        );
        return None;
    }
    Some(Tool {
        kind: Cow::Borrowed("function"),
        function: FunctionDefinition {
            name: tool.name.0,
            description: tool.description,
            parameters: tool.input_schema,
            strict: None,
        },
    })
}

/// `tool_choice` in the canonical (OpenAI) form, and `parallel_tool_calls: false` when
/// parallel use is disabled.
fn parse_tool_choice(
    choice: WireToolChoice,
) -> Result<(Option<Value>, Option<bool>), GatewayError> {
    let value = match (choice.kind.as_str(), choice.name) {
        ("auto", _) => json!("auto"),
        ("any", _) => json!("required"),
        ("none", _) => json!("none"),
        ("tool", Some(name)) => json!({"type": "function", "function": {"name": name}}),
        ("tool", None) => {
            return Err(GatewayError::bad_field(
                "tool_choice",
                "tool_choice.name: Field required",
            ))
        }
        (other, _) => {
            return Err(GatewayError::bad_field(
                "tool_choice",
                format!("tool_choice.type: \"{other}\" is not auto, any, tool or none"),
            ))
        }
    };
    let parallel = choice.disable_parallel_tool_use.map(|disabled| !disabled);
    Ok((Some(value), parallel))
}

/// `thinking`: `enabled` with a budget becomes an effort level (the canonical control
/// every backend maps), `disabled` turns thinking off, and `adaptive` (or a type this
/// gateway does not know) leaves it to the model.
fn think(thinking: WireThinking) -> Option<Think> {
    match thinking.kind.as_str() {
        "enabled" => Some(Think::Effort(
            effort_for_budget(thinking.budget_tokens.unwrap_or(0)).to_owned(),
        )),
        "disabled" => Some(Think::Enabled(false)),
        _ => None,
    }
}

/// The effort level a thinking budget stands for: under 4,096 tokens `low`, under
/// 16,384 `medium`, more `high`.
fn effort_for_budget(budget_tokens: u64) -> &'static str {
    match budget_tokens {
        0..4096 => "low",
        4096..16384 => "medium",
        _ => "high",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The request borrows from its body; a test's body lives as long as the test.
    fn parse_value(body: Value) -> Result<ParsedChat<'static, Reply>, GatewayError> {
        parse_chat(Box::leak(body.to_string().into_bytes().into_boxed_slice()))
    }

    fn refused(body: Value) -> (Option<String>, String) {
        match parse_value(body) {
            Err(GatewayError::BadRequest { param, message }) => (param, message),
            other => panic!("not a 400: {other:?}"),
        }
    }

    #[test]
    fn every_field_reaches_the_canonical_request() {
        let parsed = parse_value(json!({
            "model": "claude-x",
            "max_tokens": 100,
            "stream": true,
            "system": [{"type": "text", "text": "be brief", "cache_control": {"type": "ephemeral"}}],
            "messages": [
                {"role": "user", "content": [
                    {"type": "text", "text": "look"},
                    {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "AAAA"}},
                    {"type": "image", "source": {"type": "url", "url": "https://example.com/a.png"}}
                ]},
                {"role": "assistant", "content": [
                    {"type": "thinking", "thinking": "hmm", "signature": "sig"},
                    {"type": "redacted_thinking", "data": "opaque"},
                    {"type": "text", "text": "calling"},
                    {"type": "tool_use", "id": "toolu_1", "name": "f", "input": {"a": 1}}
                ]},
                {"role": "user", "content": [
                    {"type": "text", "text": "and then"},
                    {"type": "tool_result", "tool_use_id": "toolu_1", "content": "42", "is_error": true}
                ]},
                {"role": "system", "content": "late system text"}
            ],
            "stop_sequences": ["x"],
            "temperature": 0.5,
            "top_p": 0.9,
            "top_k": 40,
            "tools": [
                {"name": "f", "description": "d", "input_schema": {"type": "object"}, "cache_control": {}},
                {"name": "g", "input_schema": {}, "defer_loading": true},
                {"type": "web_search_20250305", "name": "web_search"}
            ],
            "tool_choice": {"type": "any", "disable_parallel_tool_use": true},
            "thinking": {"type": "enabled", "budget_tokens": 8000},
            "metadata": {"user_id": "u"},
            "output_config": {"effort": "high"},
            "context_management": {"edits": []}
        }))
        .unwrap();
        assert_eq!(parsed.model, "claude-x");
        assert!(parsed.stream);
        let request = parsed.request;
        assert_eq!(request.sampling.max_tokens, Some(100));
        assert_eq!(request.sampling.stop, vec!["x".to_owned()]);
        assert_eq!(request.sampling.temperature, Some(0.5));
        assert_eq!(request.sampling.top_p, Some(0.9));
        assert_eq!(request.sampling.top_k, Some(40));
        assert_eq!(request.tool_choice, Some(json!("required")));
        assert_eq!(request.parallel_tool_calls, Some(false));
        assert_eq!(request.think, Some(Think::Effort("medium".into())));
        assert!(request.passthrough.is_empty());
        let names: Vec<&str> = request
            .tools
            .iter()
            .map(|t| t.function.name.as_ref())
            .collect();
        assert_eq!(names, ["f", "g"], "Anthropic's own tools are left out");
        assert_eq!(
            request.tools[0].function.parameters.map(RawValue::get),
            Some(r#"{"type":"object"}"#)
        );
        let [system, user, assistant, tool, text] = &request.messages[..] else {
            panic!("five messages: {:#?}", request.messages);
        };
        assert_eq!(system.role, Role::System);
        assert_eq!(system.joined_text(), "be brief\nlate system text");
        assert_eq!(
            user.parts,
            vec![
                Part::Text("look".into()),
                Part::Image(Image::Base64 {
                    mime: Some("image/png".into()),
                    data: "AAAA".into()
                }),
                Part::Image(Image::Url("https://example.com/a.png".into())),
            ]
        );
        assert_eq!(assistant.role, Role::Assistant);
        assert_eq!(assistant.thinking().map(|t| t.as_ref()), Some("hmm"));
        assert_eq!(
            assistant.thinking_signature().map(|t| t.as_ref()),
            Some("sig")
        );
        assert_eq!(assistant.joined_text(), "calling");
        assert_eq!(
            assistant.tool_calls,
            vec![ToolCall {
                id: Some("toolu_1".into()),
                name: "f".into(),
                arguments: "{\"a\":1}".into()
            }]
        );
        // The tool result comes before the turn's own text.
        assert_eq!(tool.role, Role::Tool);
        assert_eq!(tool.tool_call_id.as_deref(), Some("toolu_1"));
        assert_eq!(tool.tool_name().map(|t| t.as_ref()), Some("f"));
        assert_eq!(tool.joined_text(), "42");
        assert!(tool.tool_error());
        assert_eq!(*text, Message::text(Role::User, "and then"));
    }

    #[test]
    fn choices_thinking_and_result_blocks() {
        let base = |extra: Value| {
            let mut body = json!({"model": "m", "max_tokens": 5,
                "messages": [{"role": "user", "content": "hi"}]});
            for (key, value) in extra.as_object().unwrap() {
                body[key] = value.clone();
            }
            parse_value(body).unwrap().request
        };
        for (choice, canonical) in [
            (json!({"type": "auto"}), json!("auto")),
            (json!({"type": "none"}), json!("none")),
            (
                json!({"type": "tool", "name": "f"}),
                json!({"type": "function", "function": {"name": "f"}}),
            ),
        ] {
            let request = base(json!({ "tool_choice": choice }));
            assert_eq!(request.tool_choice, Some(canonical));
            assert_eq!(request.parallel_tool_calls, None);
        }
        assert_eq!(
            base(json!({"thinking": {"type": "disabled"}})).think,
            Some(Think::Enabled(false))
        );
        assert_eq!(base(json!({"thinking": {"type": "adaptive"}})).think, None);
        assert_eq!(
            base(json!({"thinking": {"type": "enabled", "budget_tokens": 1024}})).think,
            Some(Think::Effort("low".into()))
        );
        assert_eq!(
            base(json!({"thinking": {"type": "enabled", "budget_tokens": 32000}})).think,
            Some(Think::Effort("high".into()))
        );
        let request = base(json!({"messages": [
            {"role": "assistant", "content": [{"type": "tool_use", "id": "a", "name": "f", "input": {}},
                                              {"type": "tool_use", "id": "b", "name": "g", "input": {}}]},
            {"role": "user", "content": [
                {"type": "tool_result", "tool_use_id": "a", "content": [
                    {"type": "text", "text": "one"},
                    {"type": "image", "source": {"type": "base64", "media_type": "image/jpeg", "data": "BBBB"}}]},
                {"type": "tool_result", "tool_use_id": "b"}
            ]}
        ]}));
        let roles: Vec<Role> = request.messages.iter().map(|m| m.role).collect();
        // A turn of tool results alone adds no user message.
        assert_eq!(roles, [Role::Assistant, Role::Tool, Role::Tool]);
        assert_eq!(request.messages[1].parts.len(), 2);
        assert_eq!(
            request.messages[2].tool_name().map(|t| t.as_ref()),
            Some("g")
        );
        assert!(request.messages[2].parts.is_empty());
    }

    #[test]
    fn each_refusal_names_its_field() {
        let param = |name: &str| Some(name.to_owned());
        let without_max =
            refused(json!({"model": "m", "messages": [{"role": "user", "content": "hi"}]}));
        assert_eq!(without_max.0, param("max_tokens"));
        assert!(without_max.1.contains("max_tokens"), "{}", without_max.1);
        let chat = |messages: Value| json!({"model": "m", "max_tokens": 5, "messages": messages});
        assert_eq!(refused(chat(json!([]))).0, param("messages"));
        assert_eq!(
            refused(json!({"model": "", "max_tokens": 5, "messages": [{"role": "user", "content": "hi"}]})).0,
            param("model")
        );
        assert_eq!(
            refused(chat(json!([{"role": "tool", "content": "x"}]))).0,
            param("messages")
        );
        assert_eq!(
            refused(chat(json!([{"role": "user", "content": 3}]))).0,
            param("messages")
        );
        assert_eq!(
            refused(chat(
                json!([{"role": "user", "content": [{"type": "document"}]}])
            ))
            .0,
            param("messages")
        );
        assert_eq!(
            refused(chat(
                json!([{"role": "user", "content": [{"type": "text"}]}])
            ))
            .0,
            param("messages")
        );
        assert_eq!(
            refused(chat(json!([{"role": "user", "content": [
                {"type": "image", "source": {"type": "file", "file_id": "f"}}]}])))
            .0,
            param("messages")
        );
        assert_eq!(
            refused(chat(
                json!([{"role": "user", "content": [{"type": "tool_result"}]}])
            ))
            .0,
            param("messages")
        );
        let mut body = chat(json!([{"role": "user", "content": "hi"}]));
        body["tool_choice"] = json!({"type": "sometimes"});
        assert_eq!(refused(body.clone()).0, param("tool_choice"));
        body["tool_choice"] = json!({"type": "tool"});
        assert_eq!(refused(body.clone()).0, param("tool_choice"));
        body["tool_choice"] = json!({"type": "auto"});
        body["system"] = json!([{"type": "image"}]);
        assert_eq!(refused(body).0, param("system"));
        // count_tokens has no max_tokens.
        let counted = parse(
            br#"{"model": "m", "messages": [{"role": "user", "content": "hi"}]}"#,
            false,
        );
        assert!(counted.is_ok());
    }

    #[test]
    fn plain_texts_borrow_from_the_body() {
        let body = br#"{"model": "m", "max_tokens": 5, "system": "sys",
            "messages": [{"role": "user", "content": [{"type": "text", "text": "plain"},
                                                     {"type": "text", "text": "esc\naped"}]}]}"#;
        let parsed = parse_chat(body).unwrap();
        let messages = &parsed.request.messages;
        assert!(matches!(
            messages[0].parts[0].text(),
            Some(Cow::Borrowed("sys"))
        ));
        assert!(matches!(
            messages[1].parts[0].text(),
            Some(Cow::Borrowed("plain"))
        ));
        assert!(matches!(messages[1].parts[1], Part::JsonText(_)));
        assert_eq!(messages[1].joined_text(), "plain\nesc\naped");
    }

    /// The recorded request of a real agent parses, and its shape comes out as the
    /// canonical model wants it.
    #[test]
    fn a_recorded_claude_code_round_trip_parses() {
        let recorded = include_str!("../../../tests/fixtures/claude-code-tool-round-trip.jsonl");
        let bodies: Vec<String> = recorded
            .lines()
            .map(|line| serde_json::from_str::<Value>(line).unwrap()["body"].to_string())
            .collect();
        assert_eq!(bodies.len(), 2);
        let first = parse_chat(bodies[0].as_bytes()).unwrap();
        assert!(first.stream);
        assert_eq!(first.request.sampling.max_tokens, Some(32000));
        assert_eq!(
            first.request.think, None,
            "adaptive thinking is the model's choice"
        );
        assert_eq!(first.request.tools.len(), 12);
        let roles: Vec<Role> = first.request.messages.iter().map(|m| m.role).collect();
        assert_eq!(
            roles,
            [Role::System, Role::User],
            "the late system turn is merged"
        );
        let system = first.request.messages[0].joined_text();
        assert!(system.contains("Claude Agent SDK") && system.contains("# Environment"));
        assert!(first.request.messages[1]
            .joined_text()
            .ends_with("Run the shell command: echo TOOL-OK"));
        let second = parse_chat(bodies[1].as_bytes()).unwrap();
        let roles: Vec<Role> = second.request.messages.iter().map(|m| m.role).collect();
        assert_eq!(
            roles,
            [Role::System, Role::User, Role::Assistant, Role::Tool]
        );
        let call = &second.request.messages[2].tool_calls[0];
        assert_eq!(
            call.id.as_deref(),
            Some("toolu_mock_b794bc8ecd164ad58addc277")
        );
        assert_eq!(call.name, "Bash");
        let input: Value = serde_json::from_str(&call.arguments).unwrap();
        assert_eq!(input["command"], "echo TOOL-OK");
        let result = &second.request.messages[3];
        assert_eq!(result.tool_call_id, call.id);
        assert_eq!(result.tool_name().map(|t| t.as_ref()), Some("Bash"));
        assert_eq!(result.joined_text(), "TOOL-OK");
    }
}

//! The canonical chat model: the one shape every request, response and stream takes
//! between a dialect (what the client speaks) and a backend (what the upstream speaks).
//!
//! Each dialect parses its wire JSON into [`ChatRequest`] and renders [`Event`]s back;
//! each backend turns a [`ChatRequest`] into an upstream call and the upstream's answer
//! into [`Event`]s. Neither side knows the other, so a new dialect or backend is one file.

use std::borrow::Cow;
use std::pin::Pin;

use futures::Stream;
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use serde_json::{Map, Value};

use crate::error::GatewayError;

/// Who wrote a message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    System,
    /// OpenAI's newer name for system instructions; Ollama has no such role and reads it
    /// as `system`.
    Developer,
    User,
    Assistant,
    Tool,
}

impl Role {
    /// Parses a role case-insensitively, as Ollama does.
    pub fn parse(name: &str) -> Option<Role> {
        match name.to_ascii_lowercase().as_str() {
            "system" => Some(Role::System),
            "developer" => Some(Role::Developer),
            "user" => Some(Role::User),
            "assistant" => Some(Role::Assistant),
            "tool" => Some(Role::Tool),
            _ => None,
        }
    }

    /// The OpenAI wire name.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::System => "system",
            Role::Developer => "developer",
            Role::User => "user",
            Role::Assistant => "assistant",
            Role::Tool => "tool",
        }
    }
}

/// An image attached to a message.
#[derive(Debug, Clone, PartialEq)]
pub enum Image<'a> {
    /// Inline bytes, standard base64; `mime` is known when the client sent a `data:` URL.
    Base64 {
        mime: Option<Cow<'a, str>>,
        data: Cow<'a, str>,
    },
    /// A remote `http(s)` URL the client asked the model to look at.
    Url(Cow<'a, str>),
}

impl Image<'_> {
    /// The `data:` URL OpenAI-style servers take; the type is sniffed from the first
    /// bytes when the client did not name it.
    pub fn to_url(&self) -> String {
        match self {
            Image::Url(url) => url.clone().into_owned(),
            Image::Base64 { mime, data } => {
                let mime = mime.as_deref().unwrap_or_else(|| sniff_image_type(data));
                format!("data:{mime};base64,{data}")
            }
        }
    }
}

/// Guesses an image's type from its magic bytes (PNG, JPEG, GIF, WebP); PNG otherwise.
pub fn sniff_image_type(base64_data: &str) -> &'static str {
    use base64::Engine;
    let head = base64::engine::general_purpose::STANDARD
        .decode(base64_data.get(..16).unwrap_or(""))
        .unwrap_or_default();
    match head.as_slice() {
        [0xFF, 0xD8, 0xFF, ..] => "image/jpeg",
        [b'G', b'I', b'F', b'8', ..] => "image/gif",
        [b'R', b'I', b'F', b'F', _, _, _, _, b'W', b'E', b'B', b'P', ..] => "image/webp",
        _ => "image/png",
    }
}

/// One piece of a message's content, in the order the client gave them.
#[derive(Debug, Clone)]
pub enum Part<'a> {
    Text(Cow<'a, str>),
    /// Text kept as the JSON string literal the client wrote (quotes and escapes
    /// included, validated by the parse), borrowed from the body. Both upstream wire
    /// forms take the literal as it is, so a long history is neither decoded into a
    /// copy nor escaped again on the way out; [`Part::text`] decodes it where the text
    /// itself is needed.
    JsonText(&'a RawValue),
    Image(Image<'a>),
}

impl<'a> Part<'a> {
    /// A text part read from a JSON string literal (`"..."`, as the parse kept it),
    /// kept as the literal.
    ///
    /// Keeping a value raw checks its escapes' form but not that a `\uD800`-`\uDFFF`
    /// escape is half of a pair, which decoding it would refuse; a literal that may hold
    /// one (a `\ud` or `\uD` escape) is decoded once to check, so a lone surrogate is
    /// still a 400 and never reaches an upstream.
    pub fn from_literal(literal: &'a RawValue) -> Result<Part<'a>, serde_json::Error> {
        if may_hold_surrogate(literal.get()) {
            serde_json::from_str::<Str<'_>>(literal.get())?;
        }
        Ok(Part::JsonText(literal))
    }

    /// The decoded text of a text part, borrowed when it needs no unescaping; `None`
    /// for an image.
    pub fn text(&self) -> Option<Cow<'a, str>> {
        match self {
            Part::Text(text) => Some(text.clone()),
            Part::JsonText(literal) => Some(literal_text(literal)),
            Part::Image(_) => None,
        }
    }
}

/// The text of a validated JSON string literal: its inside when it holds no escape,
/// decoded otherwise. The parse validated it, so it decodes; an empty text would only
/// stand for a literal that somehow did not.
fn literal_text(literal: &RawValue) -> Cow<'_, str> {
    let text = literal.get();
    match text.strip_prefix('"').and_then(|t| t.strip_suffix('"')) {
        Some(inner) if !inner.contains('\\') => Cow::Borrowed(inner),
        _ => Cow::Owned(serde_json::from_str::<String>(text).unwrap_or_default()),
    }
}

/// Whether a JSON string literal holds a `\u` escape starting with `d` or `D` (the
/// surrogate range and a little more). One substring search rules out the usual
/// literal, which holds no `\u` at all; only one that does is walked from backslash to
/// backslash, stepping over each escaped character so that `\\ud` is not taken for
/// one. (A walk over every literal costs several instructions per byte where
/// backslashes are frequent, the search under one.)
fn may_hold_surrogate(literal: &str) -> bool {
    if !literal.contains("\\u") {
        return false;
    }
    let bytes = literal.as_bytes();
    let mut at = 0;
    while let Some(rest) = literal.get(at..) {
        let Some(offset) = rest.find('\\') else {
            return false;
        };
        let escaped = at + offset + 1;
        if bytes.get(escaped) == Some(&b'u') && matches!(bytes.get(escaped + 1), Some(b'd' | b'D'))
        {
            return true;
        }
        at = escaped + 1;
    }
    false
}

impl Part<'_> {}

impl PartialEq for Part<'_> {
    /// Texts compare by what they say, kept as a literal or not.
    fn eq(&self, other: &Self) -> bool {
        match (self, other) {
            (Part::Image(a), Part::Image(b)) => a == b,
            (Part::Image(_), _) | (_, Part::Image(_)) => false,
            (a, b) => a.text() == b.text(),
        }
    }
}

/// A text as an upstream body writes it: a string escaped on the way out, or a JSON
/// string literal kept from the client's body and written as it is.
#[derive(Debug, Clone, Serialize)]
#[serde(untagged)]
pub enum WireText<'a> {
    Text(Cow<'a, str>),
    Json(&'a RawValue),
}

impl WireText<'_> {
    /// Whether the text is empty.
    pub fn is_empty(&self) -> bool {
        match self {
            WireText::Text(text) => text.is_empty(),
            WireText::Json(literal) => literal.get() == "\"\"",
        }
    }
}

/// A complete tool call: one the assistant made earlier in a request's history
/// (borrowed from the request body where its text needed no unescaping) or one an
/// answer made (`ToolCall<'static>`, built up as it streams).
#[derive(Debug, Clone, PartialEq)]
pub struct ToolCall<'a> {
    /// The call's id; Ollama clients often send none, OpenAI always does.
    pub id: Option<Cow<'a, str>>,
    pub name: Cow<'a, str>,
    /// The arguments as JSON text (OpenAI's form). Ollama's object form is parsed from
    /// and written to this at the Ollama edges.
    pub arguments: Cow<'a, str>,
}

impl<'a> ToolCall<'a> {
    /// Arguments in OpenAI's text form from either wire form: OpenAI's text kept as
    /// written, Ollama's object written compactly, none read as `{}`. The one place
    /// arguments go from a wire value to text.
    pub fn arguments_from_wire(arguments: Value) -> String {
        match arguments {
            Value::String(text) => text,
            Value::Null => "{}".to_owned(),
            other => other.to_string(),
        }
    }

    /// [`ToolCall::arguments_from_wire`] for a request's history, read from the body
    /// without a `Value` in between: OpenAI's text borrowed when it holds no escape,
    /// Ollama's object written compactly (keys in the same order a `Value` gives them,
    /// so upstreams see what they saw before), none or `null` read as `{}`.
    pub fn arguments_from_raw(
        arguments: Option<&'a RawValue>,
    ) -> Result<Cow<'a, str>, serde_json::Error> {
        let Some(raw) = arguments else {
            return Ok(Cow::Borrowed("{}"));
        };
        match raw.get().as_bytes().first() {
            Some(b'"') => serde_json::from_str::<Str<'a>>(raw.get()).map(|text| text.0),
            Some(b'n') => Ok(Cow::Borrowed("{}")),
            _ => {
                serde_json::from_str::<Value>(raw.get()).map(|value| Cow::Owned(value.to_string()))
            }
        }
    }

    /// The arguments as a JSON value, for Ollama's object form: empty text is `{}`,
    /// text that is not JSON an error. The one place arguments go from text to a wire
    /// value.
    pub fn arguments_value(&self) -> Result<Value, serde_json::Error> {
        if self.arguments.trim().is_empty() {
            Ok(Value::Object(Map::new()))
        } else {
            serde_json::from_str(&self.arguments)
        }
    }
}

/// A tool call as both wire formats write it in messages and Ollama in answers:
/// `{"id"?, "function": {"name", "arguments"}}`; other keys (`type`, `index`) are not
/// needed. `arguments` is a JSON string (OpenAI) or an object (Ollama).
#[derive(Debug, Deserialize)]
pub struct WireToolCall {
    id: Option<String>,
    function: WireFunctionCall,
}

#[derive(Debug, Deserialize)]
struct WireFunctionCall {
    name: String,
    #[serde(default)]
    arguments: Value,
}

impl From<WireToolCall> for ToolCall<'static> {
    /// OpenAI's argument text is kept as written, Ollama's object written compactly,
    /// none read as `{}`.
    fn from(wire: WireToolCall) -> ToolCall<'static> {
        ToolCall {
            id: wire.id.map(Cow::Owned),
            name: Cow::Owned(wire.function.name),
            arguments: Cow::Owned(ToolCall::arguments_from_wire(wire.function.arguments)),
        }
    }
}

/// [`WireToolCall`] as a request's history holds it, borrowed from the body: the id and
/// name unless they hold escapes, the arguments as their raw JSON.
#[derive(Debug, Deserialize)]
pub struct WireToolCallRef<'a> {
    #[serde(borrow, default)]
    id: Option<Str<'a>>,
    #[serde(borrow)]
    function: WireFunctionCallRef<'a>,
}

#[derive(Debug, Deserialize)]
struct WireFunctionCallRef<'a> {
    #[serde(borrow)]
    name: Str<'a>,
    #[serde(borrow, default)]
    arguments: Option<&'a RawValue>,
}

impl<'a> WireToolCallRef<'a> {
    /// The canonical call; arguments that are not JSON text, an object or `null` are
    /// written compactly as they are, so only a malformed body fails here.
    pub fn into_call(self) -> Result<ToolCall<'a>, serde_json::Error> {
        Ok(ToolCall {
            id: self.id.map(|id| id.0),
            name: self.function.name.0,
            arguments: ToolCall::arguments_from_raw(self.function.arguments)?,
        })
    }

    /// Message `index`'s tool calls made canonical; a malformed one is a 400 that
    /// names the message.
    pub fn all(
        index: usize,
        calls: Vec<WireToolCallRef<'a>>,
    ) -> Result<Vec<ToolCall<'a>>, crate::error::GatewayError> {
        calls
            .into_iter()
            .map(WireToolCallRef::into_call)
            .collect::<Result<_, _>>()
            .map_err(|e| {
                crate::error::GatewayError::bad_field("messages", format!("messages[{index}]: {e}"))
            })
    }
}

/// A JSON string read from a request body: borrowed from it when the string holds no
/// escape, decoded into its own buffer when it does. serde gives a plain `Cow<str>` (in
/// an `Option` or a `Vec`) no way to borrow, so wire structs use this and unwrap it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Str<'a>(pub Cow<'a, str>);

impl<'de: 'a, 'a> Deserialize<'de> for Str<'a> {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl<'de> serde::de::Visitor<'de> for Visitor {
            type Value = Str<'de>;
            fn expecting(&self, formatter: &mut std::fmt::Formatter) -> std::fmt::Result {
                formatter.write_str("a string")
            }
            fn visit_borrowed_str<E: serde::de::Error>(
                self,
                text: &'de str,
            ) -> Result<Str<'de>, E> {
                Ok(Str(Cow::Borrowed(text)))
            }
            fn visit_str<E: serde::de::Error>(self, text: &str) -> Result<Str<'de>, E> {
                Ok(Str(Cow::Owned(text.to_owned())))
            }
            fn visit_string<E: serde::de::Error>(self, text: String) -> Result<Str<'de>, E> {
                Ok(Str(Cow::Owned(text)))
            }
        }
        deserializer.deserialize_str(Visitor)
    }
}

/// One chat message.
///
/// What few messages carry sits apart, boxed ([`Rare`]): a long history holds tens of
/// thousands of messages, and every byte of this struct is paid for each of them (88
/// bytes, where the rare fields inline made 152).
#[derive(Debug, Clone, PartialEq)]
pub struct Message<'a> {
    pub role: Role,
    pub parts: Vec<Part<'a>>,
    pub tool_calls: Vec<ToolCall<'a>>,
    /// On `role: tool`: the call this result answers (OpenAI, Anthropic, Responses).
    pub tool_call_id: Option<Cow<'a, str>>,
    /// `None` when none of [`Rare`]'s fields is set (see [`Rare::boxed`]), so that two
    /// messages alike compare equal.
    pub rare: Option<Box<Rare<'a>>>,
}

/// The fields of a [`Message`] that few messages carry.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Rare<'a> {
    /// Reasoning text of an earlier assistant turn.
    pub thinking: Option<Cow<'a, str>>,
    /// The signature the model's server gave that reasoning (Anthropic signs its
    /// thinking and takes it back only signed); other servers neither give nor read one.
    pub thinking_signature: Option<Cow<'a, str>>,
    /// On `role: tool`: the name of the tool whose result this is (Ollama).
    pub tool_name: Option<Cow<'a, str>>,
    /// On `role: tool`: the tool failed (Anthropic's `is_error`); only Anthropic's API
    /// has a place for it.
    pub tool_error: bool,
}

impl<'a> Rare<'a> {
    /// These fields as a message keeps them: boxed, or `None` when none is set.
    pub fn boxed(self) -> Option<Box<Rare<'a>>> {
        (self != Rare::default()).then(|| Box::new(self))
    }
}

impl<'a> Message<'a> {
    /// A message holding only text.
    pub fn text(role: Role, text: impl Into<Cow<'a, str>>) -> Message<'a> {
        Message {
            role,
            parts: vec![Part::Text(text.into())],
            tool_calls: Vec::new(),
            tool_call_id: None,
            rare: None,
        }
    }

    /// Reasoning text of an earlier assistant turn.
    pub fn thinking(&self) -> Option<&Cow<'a, str>> {
        self.rare.as_ref()?.thinking.as_ref()
    }

    /// The signature of that reasoning.
    pub fn thinking_signature(&self) -> Option<&Cow<'a, str>> {
        self.rare.as_ref()?.thinking_signature.as_ref()
    }

    /// On `role: tool`: the name of the tool whose result this is.
    pub fn tool_name(&self) -> Option<&Cow<'a, str>> {
        self.rare.as_ref()?.tool_name.as_ref()
    }

    /// On `role: tool`: whether the tool failed.
    pub fn tool_error(&self) -> bool {
        self.rare.as_ref().is_some_and(|rare| rare.tool_error)
    }

    /// The rare fields, to set one (made when the message has none yet); only for
    /// setting a value, so that a message without any keeps `rare` at `None`.
    pub fn rare_mut(&mut self) -> &mut Rare<'a> {
        self.rare.get_or_insert_with(Box::default)
    }

    /// The text parts joined by newlines: how a message reads where content is one string.
    pub fn joined_text(&self) -> String {
        let mut texts = self.parts.iter().filter_map(Part::text);
        let Some(first) = texts.next() else {
            return String::new();
        };
        let mut joined = first.into_owned();
        for text in texts {
            joined.push('\n');
            joined.push_str(&text);
        }
        joined
    }

    /// The text as an upstream body writes it, borrowed (as text or as the client's
    /// literal) when there is one text part, the usual case and the one where a long
    /// history would otherwise be copied again; the text parts joined otherwise.
    pub fn wire_text(&self) -> WireText<'_> {
        match self.parts.as_slice() {
            [Part::Text(text)] => WireText::Text(Cow::Borrowed(text.as_ref())),
            [Part::JsonText(literal)] => WireText::Json(literal),
            _ => WireText::Text(Cow::Owned(self.joined_text())),
        }
    }

    /// The images of this message, in order.
    pub fn images(&self) -> impl Iterator<Item = &Image<'a>> {
        self.parts.iter().filter_map(|part| match part {
            Part::Image(image) => Some(image),
            Part::Text(_) | Part::JsonText(_) => None,
        })
    }
}

/// A tool the model may call. Both dialects use this very shape on the wire, so it is
/// read borrowed from the request body and written back from the same borrows.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Tool<'a> {
    #[serde(rename = "type", default = "function_type", borrow)]
    pub kind: Cow<'a, str>,
    #[serde(borrow)]
    pub function: FunctionDefinition<'a>,
}

fn function_type<'a>() -> Cow<'a, str> {
    Cow::Borrowed("function")
}

/// The function a [`Tool`] offers. Its schema is carried as the client wrote it: the
/// gateway never looks inside, so it is neither parsed into a `Value` nor rebuilt.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct FunctionDefinition<'a> {
    #[serde(borrow)]
    pub name: Cow<'a, str>,
    #[serde(
        default,
        borrow,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "optional_str"
    )]
    pub description: Option<Cow<'a, str>>,
    #[serde(default, borrow, skip_serializing_if = "Option::is_none")]
    pub parameters: Option<&'a RawValue>,
    /// OpenAI's strict schema mode; meaningless to Ollama.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub strict: Option<bool>,
}

impl PartialEq for FunctionDefinition<'_> {
    /// Schemas compare as the text they were written in.
    fn eq(&self, other: &Self) -> bool {
        self.name == other.name
            && self.description == other.description
            && self.parameters.map(RawValue::get) == other.parameters.map(RawValue::get)
            && self.strict == other.strict
    }
}

/// Reads an optional string borrowed from the body where it can be (see [`Str`]).
pub fn optional_str<'de: 'a, 'a, D: serde::Deserializer<'de>>(
    deserializer: D,
) -> Result<Option<Cow<'a, str>>, D::Error> {
    Option::<Str<'a>>::deserialize(deserializer).map(|text| text.map(|text| text.0))
}

/// What shape the output must have.
#[derive(Debug, Clone, PartialEq)]
pub enum OutputFormat {
    /// Any JSON object (Ollama `format: "json"`, OpenAI `json_object`).
    Json,
    /// JSON matching this schema.
    Schema {
        name: Option<String>,
        schema: Value,
        strict: Option<bool>,
    },
}

/// Whether and how hard a reasoning model should think.
#[derive(Debug, Clone, PartialEq)]
pub enum Think {
    Enabled(bool),
    /// An effort level: `low`, `medium`, `high`, `max` (OpenAI's `minimal`/`xhigh` are
    /// mapped at the dialect edge).
    Effort(String),
}

/// Sampling and length settings. Absent fields stay absent upstream, so the model's own
/// defaults apply.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Sampling {
    pub max_tokens: Option<u64>,
    pub temperature: Option<f64>,
    pub top_p: Option<f64>,
    pub seed: Option<i64>,
    pub stop: Vec<String>,
    pub frequency_penalty: Option<f64>,
    pub presence_penalty: Option<f64>,
    pub top_k: Option<i64>,
    pub min_p: Option<f64>,
    pub typical_p: Option<f64>,
    pub repeat_penalty: Option<f64>,
    pub repeat_last_n: Option<i64>,
    /// Ollama runtime options with no OpenAI counterpart (`num_ctx`, `num_gpu`, ...):
    /// passed to Ollama backends, dropped elsewhere.
    pub ollama_runtime: Map<String, Value>,
}

/// A chat request, whichever dialect it came in. It names no model: the client's name
/// stays with the dialect, and routing hands each backend the upstream's name beside
/// the request, so one request serves every fallback target unchanged.
#[derive(Debug, Clone, PartialEq)]
///
/// It borrows its texts, tool calls, tool definitions and images from the request body
/// (`'a`), copying only strings that held escapes, so the body must outlive it: the
/// pipeline keeps the body's bytes until the answer no longer needs the request.
pub struct ChatRequest<'a> {
    pub messages: Vec<Message<'a>>,
    pub sampling: Sampling,
    pub format: Option<OutputFormat>,
    pub tools: Vec<Tool<'a>>,
    /// OpenAI `tool_choice`, carried as-is to OpenAI-compatible backends.
    pub tool_choice: Option<Value>,
    pub parallel_tool_calls: Option<bool>,
    pub think: Option<Think>,
    /// Ollama `keep_alive`, carried as-is to Ollama backends.
    pub keep_alive: Option<Value>,
    /// Fields the client sent that the gateway does not model, carried to
    /// OpenAI-compatible backends (llama-server's `top_k`, `cache_prompt`, ...).
    pub passthrough: Map<String, Value>,
    /// Set when the client asked for a plain completion (Ollama `/api/generate`). The
    /// messages still hold the system text and the prompt, so any backend can answer
    /// it as a chat; backends with a completion API use these too.
    pub generation: Option<Generation>,
}

/// What a plain completion request carries beyond a chat.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Generation {
    /// Text after the insertion point (fill-in-the-middle).
    pub suffix: Option<String>,
    /// No prompt template: the prompt goes to the model as written.
    pub raw: bool,
    /// Ollama prompt-template override.
    pub template: Option<String>,
    /// Ollama's (deprecated) context from an earlier answer.
    pub context: Option<Value>,
}

impl<'a> ChatRequest<'a> {
    /// A plain request: its messages, nothing else set.
    pub fn new(messages: Vec<Message<'a>>) -> ChatRequest<'a> {
        ChatRequest {
            messages,
            sampling: Sampling::default(),
            format: None,
            tools: Vec::new(),
            tool_choice: None,
            parallel_tool_calls: None,
            think: None,
            keep_alive: None,
            passthrough: Map::new(),
            generation: None,
        }
    }
}

/// Why generation stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FinishReason {
    Stop,
    Length,
    ToolCalls,
    ContentFilter,
}

impl FinishReason {
    /// The OpenAI wire name.
    pub fn as_openai(self) -> &'static str {
        match self {
            FinishReason::Stop => "stop",
            FinishReason::Length => "length",
            FinishReason::ToolCalls => "tool_calls",
            FinishReason::ContentFilter => "content_filter",
        }
    }

    /// The Ollama wire name: Ollama reports `stop` after tool calls too.
    pub fn as_ollama(self) -> &'static str {
        match self {
            FinishReason::Length => "length",
            FinishReason::Stop | FinishReason::ToolCalls | FinishReason::ContentFilter => "stop",
        }
    }

    /// Reads an OpenAI `finish_reason` or an Ollama `done_reason`.
    pub fn parse(name: &str) -> FinishReason {
        match name {
            "length" => FinishReason::Length,
            "tool_calls" | "function_call" => FinishReason::ToolCalls,
            "content_filter" => FinishReason::ContentFilter,
            _ => FinishReason::Stop,
        }
    }
}

/// Token counts and, where the upstream measured them, durations in nanoseconds.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Usage {
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
    pub prompt_eval_ns: Option<u64>,
    pub eval_ns: Option<u64>,
    pub load_ns: Option<u64>,
}

/// A piece of a tool call as it streams: the first piece of a call carries `id` and
/// `name`; later pieces carry more `arguments` text. Ollama backends send each call whole
/// in one piece.
#[derive(Debug, Clone, PartialEq)]
pub struct ToolCallDelta {
    /// The call's position in this response, from 0.
    pub index: usize,
    pub id: Option<String>,
    pub name: Option<String>,
    pub arguments: String,
}

/// One thing that happened in a streamed answer. A backend's stream ends cleanly only
/// after the upstream said it was done; a cut-off upstream ends in an error instead.
#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    Text(String),
    Thinking(String),
    /// (More of) the signature of the reasoning so far, from a server that signs it.
    ThinkingSignature(String),
    ToolCall(ToolCallDelta),
    Finish(FinishReason),
    /// The upstream stopped on this one of the request's stop sequences (said before its
    /// `Finish(Stop)`); only a server that names the sequence (Anthropic's) sends it,
    /// and only Anthropic's dialect has a place for it.
    StopSequence(String),
    /// The prompt's tokens, known before the answer (Anthropic's `message_start` says
    /// them), for a dialect that shows them at its stream's start. Only a hint: the
    /// final `Usage` carries them again, and nothing counts this one.
    PromptTokens(u64),
    Usage(Usage),
}

/// The events of one answer, as they arrive.
pub type EventStream = Pin<Box<dyn Stream<Item = Result<Event, GatewayError>>>>;

/// A whole answer, for clients that did not ask to stream.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Completion {
    pub text: String,
    pub thinking: String,
    /// The reasoning's signature, where the server gave one.
    pub thinking_signature: String,
    pub tool_calls: Vec<ToolCall<'static>>,
    pub finish_reason: Option<FinishReason>,
    /// The stop sequence the upstream stopped on, where it said so.
    pub stop_sequence: Option<String>,
    pub usage: Option<Usage>,
}

impl Completion {
    /// Folds one event into the answer.
    pub fn apply(&mut self, event: Event) {
        match event {
            Event::Text(text) => self.text.push_str(&text),
            Event::Thinking(text) => self.thinking.push_str(&text),
            Event::ThinkingSignature(text) => self.thinking_signature.push_str(&text),
            Event::ToolCall(delta) => {
                while self.tool_calls.len() <= delta.index {
                    self.tool_calls.push(ToolCall {
                        id: None,
                        name: Cow::Borrowed(""),
                        arguments: Cow::Borrowed(""),
                    });
                }
                let call = &mut self.tool_calls[delta.index];
                if let Some(id) = delta.id {
                    call.id = Some(Cow::Owned(id));
                }
                if let Some(name) = delta.name {
                    call.name.to_mut().push_str(&name);
                }
                call.arguments.to_mut().push_str(&delta.arguments);
            }
            Event::Finish(reason) => self.finish_reason = Some(reason),
            Event::StopSequence(sequence) => self.stop_sequence = Some(sequence),
            Event::PromptTokens(_) => {}
            Event::Usage(usage) => self.usage = Some(usage),
        }
    }

    /// The finish reason clients should see: `tool_calls` when calls were made.
    pub fn effective_finish(&self) -> FinishReason {
        match self.finish_reason {
            Some(FinishReason::Stop) | None if !self.tool_calls.is_empty() => {
                FinishReason::ToolCalls
            }
            Some(reason) => reason,
            None => FinishReason::Stop,
        }
    }

    /// Drains a stream into one answer, stopping at the first error.
    pub async fn collect(mut events: EventStream) -> Result<Completion, GatewayError> {
        use futures::StreamExt;
        let mut completion = Completion::default();
        while let Some(event) = events.next().await {
            completion.apply(event?);
        }
        Ok(completion)
    }
}

/// Waits for the first event before the answer is committed, so that an upstream that
/// fails before its first token gets a real error status, not a 200 carrying an error.
pub async fn peek_first(mut events: EventStream) -> Result<EventStream, GatewayError> {
    use futures::StreamExt;
    match events.next().await {
        None => Ok(events),
        Some(Err(error)) => Err(error),
        Some(Ok(first)) => Ok(Box::pin(
            futures::stream::once(async { Ok(first) }).chain(events),
        )),
    }
}

/// Random alphanumerics for response and tool-call ids.
pub fn random_id(prefix: &str, len: usize) -> String {
    const DIGITS: &[u8; 36] = b"0123456789abcdefghijklmnopqrstuvwxyz";
    let mut id = String::with_capacity(prefix.len() + len);
    id.push_str(prefix);
    // Twelve base-36 digits from each random u64: one generator call per twelve
    // characters instead of one (with rejection sampling) per character.
    let mut bits = 0u64;
    for i in 0..len {
        if i % 12 == 0 {
            bits = fastrand::u64(..);
        }
        id.push(char::from(DIGITS[(bits % 36) as usize]));
        bits /= 36;
    }
    id
}

/// Generators shared by the property tests of the parsers and encoders.
/// Events and figures the renderers' tests share.
#[cfg(test)]
pub mod samples {
    use super::{Event, ToolCallDelta, Usage};

    /// One piece of a streamed tool call.
    pub fn tool_call(index: usize, id: Option<&str>, name: Option<&str>, arguments: &str) -> Event {
        Event::ToolCall(ToolCallDelta {
            index,
            id: id.map(str::to_owned),
            name: name.map(str::to_owned),
            arguments: arguments.to_owned(),
        })
    }

    /// Usage of 7 prompt and 5 completion tokens.
    pub fn usage() -> Usage {
        Usage {
            prompt_tokens: 7,
            completion_tokens: 5,
            ..Usage::default()
        }
    }
}

#[cfg(test)]
pub mod strategies {
    use proptest::prelude::*;

    /// Message text: any text, escapes, controls and non-ASCII included, never empty.
    pub fn text() -> impl Strategy<Value = String> {
        prop_oneof![
            "[a-zA-Z0-9 .,!?]{1,40}",
            any::<String>().prop_filter("not empty", |s| !s.is_empty()),
            Just("line\nbreak \"quoted\" \\ back\u{0001}slash é 😀".to_owned()),
        ]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn random_ids_are_lowercase_alphanumeric_and_distinct() {
        let ids: std::collections::HashSet<String> =
            (0..1000).map(|_| random_id("chatcmpl-", 24)).collect();
        assert_eq!(ids.len(), 1000);
        for id in &ids {
            let tail = id.strip_prefix("chatcmpl-").unwrap();
            assert_eq!(tail.len(), 24);
            assert!(tail
                .bytes()
                .all(|b| b.is_ascii_digit() || b.is_ascii_lowercase()));
        }
    }

    #[test]
    fn tool_call_deltas_assemble_by_index() {
        let mut completion = Completion::default();
        let delta = |index, id: Option<&str>, name: Option<&str>, args: &str| {
            Event::ToolCall(ToolCallDelta {
                index,
                id: id.map(str::to_owned),
                name: name.map(str::to_owned),
                arguments: args.to_owned(),
            })
        };
        completion.apply(delta(0, Some("call_a"), Some("get_weather"), ""));
        completion.apply(delta(1, Some("call_b"), Some("get_time"), "{}"));
        completion.apply(delta(0, None, None, "{\"city\":"));
        completion.apply(delta(0, None, None, "\"Tokyo\"}"));
        completion.apply(Event::Finish(FinishReason::Stop));
        assert_eq!(completion.tool_calls[0].arguments, "{\"city\":\"Tokyo\"}");
        assert_eq!(completion.tool_calls[1].name, "get_time");
        assert_eq!(completion.effective_finish(), FinishReason::ToolCalls);
    }

    #[test]
    fn request_tool_arguments_read_as_before() {
        let raw = |text: &'static str| Some(serde_json::from_str::<&RawValue>(text).unwrap());
        let text = ToolCall::arguments_from_raw(raw(r#""{}""#)).unwrap();
        assert!(matches!(text, Cow::Borrowed("{}")));
        assert_eq!(
            ToolCall::arguments_from_raw(raw(r#""{\"a\": \"\u00e9\"}""#)).unwrap(),
            "{\"a\": \"\u{e9}\"}"
        );
        // Objects are written as a Value writes them, as `arguments_from_wire` does.
        let object = r#"{ "z": 1, "a": [true, null] }"#;
        assert_eq!(
            ToolCall::arguments_from_raw(raw(object)).unwrap(),
            ToolCall::arguments_from_wire(serde_json::from_str(object).unwrap())
        );
        assert_eq!(ToolCall::arguments_from_raw(raw("null")).unwrap(), "{}");
        assert_eq!(ToolCall::arguments_from_raw(None).unwrap(), "{}");
    }

    #[test]
    fn strings_borrow_unless_they_hold_escapes() {
        let plain: Str<'_> = serde_json::from_str(r#""abc""#).unwrap();
        assert!(matches!(plain.0, Cow::Borrowed("abc")));
        let escaped: Str<'_> = serde_json::from_str(r#""a\tb\ud83e\udd80""#).unwrap();
        assert!(matches!(escaped.0, Cow::Owned(_)));
        assert_eq!(escaped.0, "a\tb\u{1f980}");
    }

    #[test]
    fn literals_with_escapes_are_kept_and_lone_surrogates_refused() {
        let literal = |text: &'static str| serde_json::from_str::<&RawValue>(text).unwrap();
        let plain = Part::from_literal(literal(r#""plain""#)).unwrap();
        assert!(matches!(plain.text(), Some(Cow::Borrowed("plain"))));
        assert_eq!(plain, Part::Text("plain".into()));
        let kept = Part::from_literal(literal(r#""a\"b\n\ud83e\udd80""#)).unwrap();
        assert!(matches!(kept, Part::JsonText(_)));
        assert_eq!(kept.text().as_deref(), Some("a\"b\n\u{1f980}"));
        assert_eq!(kept, Part::Text("a\"b\n\u{1f980}".into()));
        assert!(Part::from_literal(literal(r#""lone \ud800 half""#)).is_err());
        assert!(Part::from_literal(literal(r#""lone \uDC00""#)).is_err());
        // An escaped backslash before a `ud` is no escape of its own.
        assert!(!may_hold_surrogate(r#""\\ud800 \n \u00e9""#));
        assert!(may_hold_surrogate(r#""\\\ud800""#));
        let empty = Message {
            parts: vec![Part::from_literal(literal("\"\"")).unwrap()],
            ..Message::text(Role::User, "")
        };
        assert!(empty.wire_text().is_empty());
        // Written upstream exactly as the client wrote it.
        let message = Message {
            parts: vec![kept],
            ..Message::text(Role::User, "")
        };
        assert_eq!(
            serde_json::to_string(&message.wire_text()).unwrap(),
            r#""a\"b\n\ud83e\udd80""#
        );
    }

    #[test]
    fn a_message_stays_small_and_its_rare_fields_box_only_when_set() {
        // A long history holds tens of thousands of messages: each byte here counts.
        assert!(std::mem::size_of::<Message>() <= 88);
        assert_eq!(Rare::default().boxed(), None);
        let mut message = Message::text(Role::Tool, "42");
        assert_eq!((message.tool_name(), message.tool_error()), (None, false));
        message.rare_mut().tool_name = Some("f".into());
        assert_eq!(message.tool_name().map(|t| t.as_ref()), Some("f"));
        assert_ne!(message, Message::text(Role::Tool, "42"));
    }

    #[test]
    fn joined_text_skips_images() {
        let message = Message {
            parts: vec![
                Part::Text("a".into()),
                Part::Image(Image::Url("http://x".into())),
                Part::Text("b".into()),
            ],
            ..Message::text(Role::User, "")
        };
        assert_eq!(message.joined_text(), "a\nb");
    }
}

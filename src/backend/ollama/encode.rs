//! A canonical [`ChatRequest`] written as a native Ollama request: `/api/chat`, or
//! `/api/generate` for a plain completion.
//!
//! The wire structs borrow from the request; what Ollama spells differently (sampling
//! settings under `options`, tool arguments as an object, `think` as a flag or a level)
//! is built anew.

use std::borrow::Cow;

use serde::Serialize;
use serde_json::{Map, Value};

use crate::chat::{
    ChatRequest, Generation, Image, Message, OutputFormat, Role, Sampling, Think, Tool, ToolCall,
    WireText,
};
use crate::embed::EmbedRequest;
use crate::error::GatewayError;

use super::super::text_of;

/// Ollama's `format`: `"json"` for any JSON object, or the schema itself.
#[derive(Serialize, Clone, Copy)]
#[serde(untagged)]
enum WireFormat<'a> {
    Json(&'static str),
    Schema(&'a Value),
}

#[derive(Serialize)]
struct WireRequest<'a> {
    model: &'a str,
    messages: Vec<WireMessage<'a>>,
    stream: bool,
    #[serde(skip_serializing_if = "Map::is_empty")]
    options: Map<String, Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    format: Option<WireFormat<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    tools: Option<&'a [Tool<'a>]>,
    #[serde(skip_serializing_if = "Option::is_none")]
    think: Option<Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    keep_alive: Option<&'a Value>,
}

#[derive(Serialize)]
struct WireMessage<'a> {
    role: &'static str,
    content: WireText<'a>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    images: Vec<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    thinking: Option<&'a str>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    tool_calls: Vec<WireToolCall<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    tool_name: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    tool_call_id: Option<&'a str>,
}

#[derive(Serialize)]
struct WireToolCall<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    id: Option<&'a str>,
    function: WireFunction<'a>,
}

#[derive(Serialize)]
struct WireFunction<'a> {
    name: &'a str,
    /// Ollama takes the arguments as an object.
    arguments: Value,
}

/// `/api/generate`'s request: the prompt and system text instead of messages.
#[derive(Serialize)]
struct GenerateRequest<'a> {
    model: &'a str,
    prompt: WireText<'a>,
    stream: bool,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    images: Vec<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    system: Option<WireText<'a>>,
    #[serde(skip_serializing_if = "Map::is_empty")]
    options: Map<String, Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    format: Option<WireFormat<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    think: Option<Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    keep_alive: Option<&'a Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    suffix: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    template: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    context: Option<&'a Value>,
    /// Only ever `true`: absent means templated.
    #[serde(skip_serializing_if = "Option::is_none")]
    raw: Option<bool>,
}

/// The `/api/embed` request, with the Ollama client's own extras beside it.
#[derive(Serialize)]
struct EmbedBody<'a> {
    model: &'a str,
    input: &'a [String],
    #[serde(skip_serializing_if = "Option::is_none")]
    dimensions: Option<u32>,
    #[serde(flatten)]
    extras: &'a Map<String, Value>,
}

/// The upstream path and body: `/api/chat`, or `/api/generate` for a plain completion.
pub(super) fn encode(
    backend: &str,
    model: &str,
    request: &ChatRequest,
    stream: bool,
) -> Result<(&'static str, super::super::pieces::Encoded), GatewayError> {
    let wire = wire_request(backend, model, request, stream)?;
    let capacity = super::super::body_capacity(request);
    Ok(match &request.generation {
        None => ("/api/chat", super::super::json_body(&wire, capacity)?),
        Some(generation) => (
            "/api/generate",
            super::super::json_body(&generate_request(wire, generation), capacity)?,
        ),
    })
}

/// The `/api/embed` body.
pub(super) fn embed(
    model: &str,
    request: &EmbedRequest,
) -> Result<super::super::pieces::Encoded, GatewayError> {
    let EmbedRequest {
        inputs,
        dimensions,
        ollama_extras,
    } = request;
    let body = EmbedBody {
        model,
        input: inputs,
        dimensions: *dimensions,
        // The client's own `truncate`, `options` and `keep_alive`, never a name of the
        // fields above.
        extras: ollama_extras,
    };
    super::super::json_body(&body, super::super::embed_capacity(request))
}

/// Ollama's sampling settings, all under `options`; its runtime options (`num_ctx`,
/// ...) too, winning over a setting of the same name.
fn options(sampling: &Sampling) -> Map<String, Value> {
    let Sampling {
        max_tokens,
        temperature,
        top_p,
        seed,
        stop,
        frequency_penalty,
        presence_penalty,
        top_k,
        min_p,
        typical_p,
        repeat_penalty,
        repeat_last_n,
        ollama_runtime,
    } = sampling;
    let mut options = Map::new();
    let settings = [
        ("num_predict", max_tokens.map(Value::from)),
        ("temperature", temperature.map(Value::from)),
        ("top_p", top_p.map(Value::from)),
        ("seed", seed.map(Value::from)),
        (
            "stop",
            (!stop.is_empty()).then(|| Value::from(stop.as_slice())),
        ),
        ("frequency_penalty", frequency_penalty.map(Value::from)),
        ("presence_penalty", presence_penalty.map(Value::from)),
        ("top_k", top_k.map(Value::from)),
        ("min_p", min_p.map(Value::from)),
        ("typical_p", typical_p.map(Value::from)),
        ("repeat_penalty", repeat_penalty.map(Value::from)),
        ("repeat_last_n", repeat_last_n.map(Value::from)),
    ];
    for (key, value) in settings {
        if let Some(value) = value {
            options.insert(key.to_owned(), value);
        }
    }
    for (key, value) in ollama_runtime {
        options.insert(key.clone(), value.clone());
    }
    options
}

fn wire_request<'a>(
    backend: &str,
    model: &'a str,
    request: &'a ChatRequest,
    stream: bool,
) -> Result<WireRequest<'a>, GatewayError> {
    if !request.passthrough.is_empty() || request.tool_choice.is_some() {
        log::debug!(
            "backend {backend}: dropping fields Ollama has no counterpart for: {:?}{}",
            request.passthrough.keys().collect::<Vec<_>>(),
            if request.tool_choice.is_some() {
                " tool_choice"
            } else {
                ""
            }
        );
    }
    let think = match &request.think {
        None => None,
        Some(Think::Enabled(on)) => Some(Value::Bool(*on)),
        Some(Think::Effort(level)) => Some(match level.as_str() {
            "none" => Value::Bool(false),
            "minimal" => Value::from("low"),
            "xhigh" | "ultra" => Value::from("max"),
            "low" | "medium" | "high" | "max" => Value::from(level.as_str()),
            other => {
                return Err(GatewayError::bad_field(
                    "reasoning_effort",
                    format!("reasoning_effort \"{other}\" is not one of none, minimal, low, medium, high, xhigh, max"),
                ))
            }
        }),
    };
    Ok(WireRequest {
        model,
        messages: wire_messages(&request.messages)?,
        stream,
        options: options(&request.sampling),
        format: request.format.as_ref().map(|format| match format {
            OutputFormat::Json => WireFormat::Json("json"),
            OutputFormat::Schema { schema, .. } => WireFormat::Schema(schema),
        }),
        tools: (!request.tools.is_empty()).then_some(request.tools.as_slice()),
        think,
        keep_alive: request.keep_alive.as_ref(),
    })
}

/// Turns a chat-shaped request back into `/api/generate`'s: the last user message is
/// the prompt, the first system message the system text.
fn generate_request<'a>(wire: WireRequest<'a>, generation: &'a Generation) -> GenerateRequest<'a> {
    // `tools` have no place in a plain completion.
    let WireRequest {
        model,
        messages,
        stream,
        options,
        format,
        tools: _,
        think,
        keep_alive,
    } = wire;
    let Generation {
        suffix,
        raw,
        template,
        context,
    } = generation;
    let mut prompt = None;
    let mut system = None;
    for message in messages {
        match message.role {
            "user" => prompt = Some(message),
            "system" if system.is_none() => system = Some(message.content),
            _ => {}
        }
    }
    let (prompt, images) = match prompt {
        Some(message) => (message.content, message.images),
        None => (WireText::Text(Cow::Borrowed("")), Vec::new()),
    };
    GenerateRequest {
        model,
        prompt,
        stream,
        images,
        system,
        options,
        format,
        think,
        keep_alive,
        suffix: suffix.as_deref(),
        template: template.as_deref(),
        context: context.as_ref(),
        raw: raw.then_some(true),
    }
}

fn wire_messages<'a>(messages: &'a [Message<'_>]) -> Result<Vec<WireMessage<'a>>, GatewayError> {
    let mut out = Vec::with_capacity(messages.len());
    for (index, message) in messages.iter().enumerate() {
        let mut images = Vec::new();
        for image in message.images() {
            match image {
                Image::Base64 { data, .. } => images.push(data.as_ref()),
                Image::Url(url) => {
                    return Err(GatewayError::bad_field(
                        "messages",
                        format!(
                            "messages[{index}] refers to the image URL {url}; an Ollama backend cannot fetch it and the gateway fetches nothing for clients: send the image inline as a data: URL"
                        ),
                    ))
                }
            }
        }
        let mut tool_calls = Vec::with_capacity(message.tool_calls.len());
        for call in &message.tool_calls {
            let arguments = call.arguments_value().map_err(|e| {
                GatewayError::bad_field(
                    "messages",
                    format!(
                        "messages[{index}] has a tool call to {} whose arguments are not JSON: {e}",
                        call.name
                    ),
                )
            })?;
            let ToolCall { id, name, .. } = call;
            tool_calls.push(WireToolCall {
                id: id.as_deref(),
                function: WireFunction { name, arguments },
            });
        }
        // OpenAI clients answer a call by id only; Ollama wants the tool's name.
        let tool_name = match (message.tool_name(), &message.tool_call_id) {
            (Some(name), _) => Some(name.as_ref()),
            (None, Some(id)) => messages[..index].iter().rev().find_map(|earlier| {
                earlier
                    .tool_calls
                    .iter()
                    .find(|call| call.id.as_deref() == Some(id))
                    .map(|call| call.name.as_ref())
            }),
            (None, None) => None,
        };
        out.push(WireMessage {
            role: match message.role {
                Role::Developer => "system",
                role => role.as_str(),
            },
            content: text_of(message),
            images,
            thinking: message.thinking().map(AsRef::as_ref),
            tool_calls,
            tool_name: if message.role == Role::Tool {
                tool_name
            } else {
                None
            },
            tool_call_id: message.tool_call_id.as_deref(),
        });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn body(request: &ChatRequest, stream: bool) -> (&'static str, Value) {
        let (path, bytes) = encode("b", "m", request, stream).unwrap();
        (path, serde_json::from_slice(&bytes.contiguous()).unwrap())
    }

    #[test]
    fn sampling_goes_under_options_and_runtime_options_win() {
        let mut request = ChatRequest::new(vec![Message::text(Role::User, "hi")]);
        request.sampling.max_tokens = Some(7);
        request.sampling.stop = vec!["END".into()];
        request
            .sampling
            .ollama_runtime
            .insert("num_ctx".into(), json!(8192));
        request
            .sampling
            .ollama_runtime
            .insert("num_predict".into(), json!(9));
        let (path, body) = body(&request, true);
        assert_eq!(path, "/api/chat");
        assert_eq!(body["stream"], true);
        assert_eq!(
            body["options"],
            json!({"num_predict": 9, "stop": ["END"], "num_ctx": 8192})
        );
    }

    #[test]
    fn tool_arguments_become_objects_and_results_name_their_tool() {
        let mut call = Message::text(Role::Assistant, "");
        call.tool_calls.push(ToolCall {
            id: Some("c1".into()),
            name: "get_time".into(),
            arguments: "{\"tz\":\"UTC\"}".into(),
        });
        call.tool_calls.push(ToolCall {
            id: None,
            name: "noop".into(),
            arguments: "".into(),
        });
        let mut answer = Message::text(Role::Tool, "noon");
        answer.tool_call_id = Some("c1".into());
        let request = ChatRequest::new(vec![call, answer]);
        let (_, body) = body(&request, false);
        let calls = &body["messages"][0]["tool_calls"];
        assert_eq!(
            calls[0],
            json!({"id": "c1", "function": {"name": "get_time", "arguments": {"tz": "UTC"}}})
        );
        assert_eq!(calls[1]["function"]["arguments"], json!({}));
        assert_eq!(body["messages"][1]["tool_name"], "get_time");
        let mut broken = Message::text(Role::Assistant, "");
        broken.tool_calls.push(ToolCall {
            id: None,
            name: "f".into(),
            arguments: "{not json".into(),
        });
        assert!(encode("b", "m", &ChatRequest::new(vec![broken]), false).is_err());
    }

    #[test]
    fn a_plain_completion_goes_to_generate() {
        let mut request = ChatRequest::new(vec![
            Message::text(Role::Developer, "be brief"),
            Message::text(Role::User, "first"),
            Message::text(Role::User, "Why?"),
        ]);
        request.generation = Some(Generation {
            raw: true,
            suffix: Some("end".into()),
            ..Generation::default()
        });
        let (path, body) = body(&request, false);
        assert_eq!(path, "/api/generate");
        assert_eq!(
            body,
            json!({
                "model": "m", "prompt": "Why?", "stream": false,
                "system": "be brief", "suffix": "end", "raw": true
            })
        );
    }

    #[test]
    fn an_image_url_cannot_reach_ollama() {
        let mut message = Message::text(Role::User, "look");
        message.parts.push(crate::chat::Part::Image(Image::Url(
            "http://x/y.png".into(),
        )));
        let error = encode("b", "m", &ChatRequest::new(vec![message]), false).unwrap_err();
        assert!(error.to_string().contains("messages[0]"), "{error}");
    }

    /// What an Ollama client sends, parsed by the Ollama dialect, written by this
    /// encoder and parsed again, is the same canonical request. (A test may cross the
    /// dialect/backend line that the code itself never does.)
    mod same_dialect_round_trip {
        use proptest::prelude::*;

        use crate::chat::strategies::text;
        use serde_json::{json, Value};

        use super::encode;
        use crate::dialect::ollama::parse_chat;

        fn message() -> impl Strategy<Value = Value> {
            prop_oneof![
                text().prop_map(|t| json!({"role": "user", "content": t})),
                text().prop_map(|t| json!({"role": "system", "content": t})),
                (text(), proptest::option::of(text())).prop_map(|(t, thinking)| {
                    let mut m = json!({"role": "assistant", "content": t});
                    if let Some(thinking) = thinking {
                        m["thinking"] = json!(thinking);
                    }
                    m
                }),
                ("[a-z_]{1,12}", 0u32..1000, text()).prop_map(|(name, n, value)| {
                    json!([
                        {"role": "assistant", "content": "", "tool_calls": [
                            {"function": {"name": name, "arguments": {"n": n, "value": value}}}
                        ]},
                        {"role": "tool", "tool_name": name, "content": format!("{n}")}
                    ])
                }),
            ]
        }

        fn request() -> impl Strategy<Value = Value> {
            (
                proptest::collection::vec(message(), 1..6),
                proptest::option::of(0.0f64..2.0),
                proptest::option::of(1i64..100),
                proptest::option::of(1u64..100_000),
                proptest::collection::vec(text(), 0..3),
                proptest::option::of(512u64..32768),
                proptest::option::of(any::<bool>()),
            )
                .prop_map(
                    |(messages, temperature, top_k, num_predict, stop, num_ctx, think)| {
                        let mut flat = Vec::new();
                        for message in messages {
                            match message {
                                Value::Array(pair) => flat.extend(pair),
                                one => flat.push(one),
                            }
                        }
                        let mut options = serde_json::Map::new();
                        let fields = [
                            ("temperature", temperature.map(Value::from)),
                            ("top_k", top_k.map(Value::from)),
                            ("num_predict", num_predict.map(Value::from)),
                            ("num_ctx", num_ctx.map(Value::from)),
                        ];
                        for (key, value) in fields {
                            if let Some(value) = value {
                                options.insert(key.to_owned(), value);
                            }
                        }
                        if !stop.is_empty() {
                            options.insert("stop".to_owned(), json!(stop));
                        }
                        let mut body =
                            json!({"model": "ol/m", "messages": flat, "options": options});
                        if let Some(think) = think {
                            body["think"] = json!(think);
                        }
                        body
                    },
                )
        }

        proptest! {
            #[test]
            fn every_field_survives(body in request()) {
                let sent = serde_json::to_vec(&body).unwrap();
                let first = parse_chat(&sent).unwrap();
                let (_, upstream) = encode("b", "m", &first.request, false).unwrap();
                let upstream = upstream.contiguous();
                let second = parse_chat(&upstream).unwrap();
                prop_assert_eq!(&first.request, &second.request);
            }
        }
    }
}

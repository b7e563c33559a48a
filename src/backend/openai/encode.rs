//! A canonical [`ChatRequest`] written as an OpenAI-compatible server's request: Chat
//! Completions, or the legacy `/completions` for a raw or fill-in-the-middle prompt.
//!
//! Every wire struct borrows from the request, so the body is serialised straight from
//! it; only what the wire form changes (a generated call id, an image's `data:` URL,
//! several text parts joined) is built anew.

use std::borrow::Cow;

use serde::Serialize;
use serde_json::{json, Map, Value};

use super::super::text_of;
use crate::chat::{
    ChatRequest, Message, OutputFormat, Part, Role, Sampling, Think, Tool, ToolCall, WireText,
};

/// How to write requests for one upstream.
pub(super) struct Encoder<'a> {
    /// The backend's name, for the log lines that say what was left out.
    pub backend: &'a str,
    /// OpenAI's own API rejects parameters it does not know, so llama-server's extra
    /// sampling knobs are only sent elsewhere.
    pub strict_parameters: bool,
}

#[derive(Serialize)]
struct WireRequest<'a> {
    model: &'a str,
    messages: WireMessages<'a>,
    stream: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    stream_options: Option<StreamOptions>,
    #[serde(skip_serializing_if = "Option::is_none")]
    max_completion_tokens: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    max_tokens: Option<u64>,
    #[serde(flatten)]
    sampling: Common<'a>,
    #[serde(skip_serializing_if = "Option::is_none")]
    response_format: Option<Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    tools: Option<&'a [Tool<'a>]>,
    #[serde(skip_serializing_if = "Option::is_none")]
    tool_choice: Option<&'a Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    parallel_tool_calls: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    reasoning_effort: Option<&'a str>,
    #[serde(flatten)]
    extra: Extra<'a>,
}

/// The fields beyond Chat Completions' own: llama-server's knobs, and the client's
/// fields the gateway does not model, written from the request, not copied. A knob
/// wins over a client field of the same name.
struct Extra<'a> {
    knobs: Knobs,
    /// Asks llama-server's chat template not to think.
    no_thinking: bool,
    passthrough: &'a Map<String, Value>,
}

impl Serialize for Extra<'_> {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        let Knobs {
            top_k,
            min_p,
            typical_p,
            repeat_penalty,
            repeat_last_n,
        } = self.knobs;
        let mut map = serializer.serialize_map(None)?;
        let mut written: Vec<&str> = Vec::new();
        let mut put = |map: &mut S::SerializeMap, key: &'static str, value: Option<Value>| {
            if let Some(value) = value {
                written.push(key);
                map.serialize_entry(key, &value)
            } else {
                Ok(())
            }
        };
        put(&mut map, "top_k", top_k.map(Value::from))?;
        put(&mut map, "min_p", min_p.map(Value::from))?;
        put(&mut map, "typical_p", typical_p.map(Value::from))?;
        put(&mut map, "repeat_penalty", repeat_penalty.map(Value::from))?;
        put(&mut map, "repeat_last_n", repeat_last_n.map(Value::from))?;
        put(
            &mut map,
            "chat_template_kwargs",
            self.no_thinking.then(|| json!({"enable_thinking": false})),
        )?;
        for (key, value) in self.passthrough {
            if !written.contains(&key.as_str()) {
                map.serialize_entry(key, value)?;
            }
        }
        map.end()
    }
}

/// The sampling fields chat and legacy completions both take, under the same names.
#[derive(Serialize)]
struct Common<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    temperature: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    top_p: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    seed: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    stop: Option<&'a [String]>,
    #[serde(skip_serializing_if = "Option::is_none")]
    frequency_penalty: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    presence_penalty: Option<f64>,
}

/// Always asked for: token counts arrive at the end of a stream only when asked.
#[derive(Serialize)]
struct StreamOptions {
    include_usage: bool,
}

/// A legacy `/completions` request: the prompt as written, with its suffix.
#[derive(Serialize)]
struct CompletionRequest<'a> {
    model: &'a str,
    prompt: WireText<'a>,
    stream: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    stream_options: Option<StreamOptions>,
    #[serde(skip_serializing_if = "Option::is_none")]
    max_tokens: Option<u64>,
    #[serde(flatten)]
    sampling: Common<'a>,
    #[serde(flatten)]
    knobs: Knobs,
    #[serde(skip_serializing_if = "Option::is_none")]
    suffix: Option<&'a str>,
}

/// llama-server's sampling knobs, sent at the top level where the server takes them.
#[derive(Serialize, Default, Clone, Copy)]
struct Knobs {
    #[serde(skip_serializing_if = "Option::is_none")]
    top_k: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    min_p: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    typical_p: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    repeat_penalty: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    repeat_last_n: Option<i64>,
}

#[derive(Serialize)]
struct WireMessage<'a> {
    role: &'static str,
    content: WireContent<'a>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    tool_calls: Vec<WireToolCall<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    tool_call_id: Option<Cow<'a, str>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    reasoning_content: Option<&'a str>,
}

/// A message's content: text, parts when there are images, or `null` for an assistant
/// turn that only called tools.
#[derive(Serialize)]
#[serde(untagged)]
enum WireContent<'a> {
    Null,
    Text(WireText<'a>),
    Parts(Vec<WirePart<'a>>),
}

#[derive(Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
enum WirePart<'a> {
    Text { text: WireText<'a> },
    ImageUrl { image_url: WireImageUrl },
}

#[derive(Serialize)]
struct WireImageUrl {
    url: String,
}

#[derive(Serialize)]
struct WireToolCall<'a> {
    id: Cow<'a, str>,
    #[serde(rename = "type")]
    kind: &'static str,
    function: WireFunction<'a>,
}

#[derive(Serialize)]
struct WireFunction<'a> {
    name: &'a str,
    arguments: &'a str,
}

/// The `/embeddings` request, always for floats.
#[derive(Serialize)]
pub(super) struct EmbeddingsRequest<'a> {
    pub model: &'a str,
    pub input: &'a [String],
    pub encoding_format: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub dimensions: Option<u32>,
}

impl Encoder<'_> {
    /// The upstream path and body. A raw or fill-in-the-middle completion goes to
    /// `/completions`, which takes the prompt untemplated.
    pub(super) fn encode(
        &self,
        model: &str,
        request: &ChatRequest,
        stream: bool,
    ) -> Result<(&'static str, super::super::pieces::Encoded), crate::error::GatewayError> {
        let plain = request
            .generation
            .as_ref()
            .is_some_and(|g| g.raw || g.suffix.is_some());
        let capacity = super::super::body_capacity(request);
        Ok(if plain {
            let body = self.completion_request(model, request, stream);
            ("/completions", super::super::json_body(&body, capacity)?)
        } else {
            let body = self.chat_request(model, request, stream);
            (
                "/chat/completions",
                super::super::json_body(&body, capacity)?,
            )
        })
    }

    fn completion_request<'a>(
        &self,
        model: &'a str,
        request: &'a ChatRequest,
        stream: bool,
    ) -> CompletionRequest<'a> {
        let (max_tokens, sampling, knobs) = self.sampling(request);
        let prompt = request
            .messages
            .iter()
            .rev()
            .find(|m| m.role == Role::User)
            .map_or(WireText::Text(Cow::Borrowed("")), text_of);
        CompletionRequest {
            model,
            prompt,
            stream,
            stream_options: stream.then_some(StreamOptions {
                include_usage: true,
            }),
            max_tokens,
            sampling,
            knobs,
            suffix: request
                .generation
                .as_ref()
                .and_then(|g| g.suffix.as_deref()),
        }
    }

    fn chat_request<'a>(
        &self,
        model: &'a str,
        request: &'a ChatRequest,
        stream: bool,
    ) -> WireRequest<'a> {
        let (max_tokens, sampling, knobs) = self.sampling(request);
        let extra = Extra {
            knobs,
            // llama-server's templates read this; the effort alone is not enough.
            no_thinking: !self.strict_parameters && request.think == Some(Think::Enabled(false)),
            passthrough: &request.passthrough,
        };
        WireRequest {
            model,
            messages: WireMessages {
                messages: &request.messages,
                local_dialect: !self.strict_parameters,
            },
            stream,
            stream_options: stream.then_some(StreamOptions {
                include_usage: true,
            }),
            max_completion_tokens: max_tokens,
            // Older OpenAI-compatible servers (and Ollama's /v1) read only the old name.
            max_tokens: max_tokens.filter(|_| !self.strict_parameters),
            sampling,
            response_format: request.format.as_ref().map(response_format),
            tools: (!request.tools.is_empty()).then_some(request.tools.as_slice()),
            tool_choice: request.tool_choice.as_ref(),
            parallel_tool_calls: request.parallel_tool_calls,
            reasoning_effort: match &request.think {
                None | Some(Think::Enabled(true)) => None,
                // OpenAI refuses reasoning_effort on models that do not reason.
                Some(Think::Enabled(false)) if self.strict_parameters => None,
                Some(Think::Enabled(false)) => Some("none"),
                Some(Think::Effort(level)) => Some(level.as_str()),
            },
            extra,
        }
    }

    /// The request's sampling settings as both request shapes write them: the length
    /// limit, the common fields, and llama-server's knobs (left out for OpenAI's own
    /// API, which rejects them). `Sampling` is destructured whole, so a new field does
    /// not compile until it is given a place or a reason to be dropped.
    fn sampling<'a>(&self, request: &'a ChatRequest) -> (Option<u64>, Common<'a>, Knobs) {
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
        } = &request.sampling;
        self.log_dropped(ollama_runtime, request);
        let common = Common {
            temperature: *temperature,
            top_p: *top_p,
            seed: *seed,
            stop: (!stop.is_empty()).then_some(stop.as_slice()),
            frequency_penalty: *frequency_penalty,
            presence_penalty: *presence_penalty,
        };
        let knobs = if self.strict_parameters {
            Knobs::default()
        } else {
            Knobs {
                top_k: *top_k,
                min_p: *min_p,
                typical_p: *typical_p,
                repeat_penalty: *repeat_penalty,
                repeat_last_n: *repeat_last_n,
            }
        };
        (*max_tokens, common, knobs)
    }

    /// Says at debug level what an OpenAI-compatible server has no place for.
    fn log_dropped(&self, ollama_runtime: &Map<String, Value>, request: &ChatRequest) {
        if !ollama_runtime.is_empty() {
            log::debug!(
                "backend {}: dropping Ollama runtime options with no OpenAI counterpart: {:?}",
                self.backend,
                ollama_runtime.keys().collect::<Vec<_>>()
            );
        }
        if request.keep_alive.is_some() {
            log::debug!("backend {}: dropping keep_alive", self.backend);
        }
    }
}

fn response_format(format: &OutputFormat) -> Value {
    match format {
        OutputFormat::Json => json!({"type": "json_object"}),
        OutputFormat::Schema {
            name,
            schema,
            strict,
        } => {
            let mut spec = json!({
                "name": name.as_deref().unwrap_or("response"),
                "schema": schema,
            });
            if let Some(strict) = strict {
                spec["strict"] = json!(strict);
            }
            json!({"type": "json_schema", "json_schema": spec})
        }
    }
}

/// The request's messages, written in OpenAI's form as they are serialised: each wire
/// message is built, written and dropped in turn, so a long history is never held a
/// second time as wire structs beside the request and the body being written.
struct WireMessages<'a> {
    messages: &'a [Message<'a>],
    local_dialect: bool,
}

impl Serialize for WireMessages<'_> {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeSeq;
        let mut seq = serializer.serialize_seq(Some(self.messages.len()))?;
        wire_messages(self.messages, self.local_dialect, |message| {
            seq.serialize_element(&message)
        })?;
        seq.end()
    }
}

/// Hands the messages to `out` in OpenAI's form, giving every tool call an id and every
/// tool result the id of the call it answers: OpenAI servers insist on both, Ollama
/// clients send neither. `local_dialect` is true for servers other than OpenAI's own
/// (llama-server, vLLM, Ollama's /v1), which read earlier reasoning back and may not
/// know the `developer` role.
fn wire_messages<'a, E>(
    messages: &'a [Message<'_>],
    local_dialect: bool,
    mut out: impl FnMut(WireMessage<'a>) -> Result<(), E>,
) -> Result<(), E> {
    // (id, name) of calls not yet answered by a tool message, oldest first.
    let mut unanswered: Vec<(Cow<'_, str>, &str)> = Vec::new();
    // Images that tool results returned (an agent reading a screenshot), for a user
    // message after the run of tool messages: OpenAI takes images only from users.
    let mut tool_images: Vec<WirePart<'a>> = Vec::new();
    for (message_index, message) in messages.iter().enumerate() {
        if message.role != Role::Tool && !tool_images.is_empty() {
            out(tool_images_message(std::mem::take(&mut tool_images)))?;
        }
        let mut tool_calls = Vec::with_capacity(message.tool_calls.len());
        for (call_index, call) in message.tool_calls.iter().enumerate() {
            let ToolCall {
                id,
                name,
                arguments,
            } = call;
            let id = match id {
                Some(id) => Cow::Borrowed(id.as_ref()),
                None => Cow::Owned(format!("call_{message_index}_{call_index}")),
            };
            unanswered.push((id.clone(), name.as_ref()));
            tool_calls.push(WireToolCall {
                id,
                kind: "function",
                function: WireFunction {
                    name: name.as_ref(),
                    arguments: arguments.as_ref(),
                },
            });
        }
        let tool_call_id = if message.role == Role::Tool {
            let position = match &message.tool_call_id {
                Some(id) => unanswered.iter().position(|(call_id, _)| call_id == id),
                None => message
                    .tool_name()
                    .and_then(|name| unanswered.iter().position(|(_, n)| n == name))
                    .or(if unanswered.is_empty() { None } else { Some(0) }),
            };
            let answered = position.map(|at| unanswered.remove(at).0);
            message
                .tool_call_id
                .as_deref()
                .map(Cow::Borrowed)
                .or(answered)
        } else {
            None
        };
        out(WireMessage {
            // Only OpenAI's own API is sure to know `developer`; elsewhere it would be
            // dropped by the chat template, instructions and all.
            role: match message.role {
                Role::Developer if local_dialect => "system",
                role => role.as_str(),
            },
            content: if message.role == Role::Tool {
                tool_result_content(message, &mut tool_images)
            } else {
                wire_content(message)
            },
            tool_calls,
            tool_call_id,
            reasoning_content: message
                .thinking()
                .map(AsRef::as_ref)
                .filter(|_| local_dialect && message.role == Role::Assistant),
        })?;
    }
    if !tool_images.is_empty() {
        out(tool_images_message(tool_images))?;
    }
    Ok(())
}

/// A tool message's content: its text, while its images go to `images` (see
/// `tool_images_message`); a result that was only images says where they went.
fn tool_result_content<'a>(
    message: &'a Message<'_>,
    images: &mut Vec<WirePart<'a>>,
) -> WireContent<'a> {
    let before = images.len();
    images.extend(message.images().map(|image| WirePart::ImageUrl {
        image_url: WireImageUrl {
            url: image.to_url(),
        },
    }));
    let text = text_of(message);
    if images.len() > before && text.is_empty() {
        return WireContent::Text(WireText::Text(Cow::Borrowed(
            "(the result is the image in the next message)",
        )));
    }
    WireContent::Text(text)
}

/// The user message that carries the images tool results returned, right after them.
fn tool_images_message(images: Vec<WirePart<'_>>) -> WireMessage<'_> {
    let mut parts = Vec::with_capacity(images.len() + 1);
    parts.push(WirePart::Text {
        text: WireText::Text(Cow::Borrowed("The images the tool results above returned:")),
    });
    parts.extend(images);
    WireMessage {
        role: "user",
        content: WireContent::Parts(parts),
        tool_calls: Vec::new(),
        tool_call_id: None,
        reasoning_content: None,
    }
}

fn wire_content<'a>(message: &'a Message<'_>) -> WireContent<'a> {
    let has_images = message.images().next().is_some();
    if !has_images {
        let text = text_of(message);
        if text.is_empty() && !message.tool_calls.is_empty() {
            return WireContent::Null;
        }
        return WireContent::Text(text);
    }
    WireContent::Parts(
        message
            .parts
            .iter()
            .map(|part| match part {
                Part::Text(text) => WirePart::Text {
                    text: WireText::Text(Cow::Borrowed(text.as_ref())),
                },
                Part::JsonText(literal) => WirePart::Text {
                    text: WireText::Json(literal),
                },
                Part::Image(image) => WirePart::ImageUrl {
                    image_url: WireImageUrl {
                        url: image.to_url(),
                    },
                },
            })
            .collect(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::chat::{Generation, Image};

    fn encoder(strict_parameters: bool) -> Encoder<'static> {
        Encoder {
            backend: "b",
            strict_parameters,
        }
    }

    fn body(strict: bool, request: &ChatRequest, stream: bool) -> (&'static str, Value) {
        let (path, bytes) = encoder(strict).encode("m", request, stream).unwrap();
        (path, serde_json::from_slice(&bytes.contiguous()).unwrap())
    }

    fn with_tools() -> ChatRequest<'static> {
        let mut call = Message::text(Role::Assistant, "");
        call.tool_calls.push(ToolCall {
            id: None,
            name: "get_time".into(),
            arguments: "{}".into(),
        });
        let mut answer = Message::text(Role::Tool, "noon");
        answer.rare_mut().tool_name = Some("get_time".into());
        ChatRequest::new(vec![Message::text(Role::User, "time?"), call, answer])
    }

    #[test]
    fn calls_get_ids_and_results_the_id_they_answer() {
        let (path, body) = body(false, &with_tools(), true);
        assert_eq!(path, "/chat/completions");
        assert_eq!(body["model"], "m");
        assert_eq!(body["stream_options"]["include_usage"], true);
        let messages = &body["messages"];
        assert_eq!(messages[1]["content"], Value::Null);
        assert_eq!(messages[1]["tool_calls"][0]["id"], "call_1_0");
        assert_eq!(messages[1]["tool_calls"][0]["type"], "function");
        assert_eq!(messages[1]["tool_calls"][0]["function"]["arguments"], "{}");
        assert_eq!(messages[2]["tool_call_id"], "call_1_0");
    }

    #[test]
    fn images_a_tool_returned_follow_the_tool_results_as_a_user_message() {
        let mut request = with_tools();
        let mut call = Message::text(Role::Assistant, "");
        for id in ["a", "b"] {
            call.tool_calls.push(ToolCall {
                id: Some(id.into()),
                name: "read".into(),
                arguments: "{}".into(),
            });
        }
        let image = || {
            Part::Image(Image::Base64 {
                mime: Some("image/png".into()),
                data: "iVBORw0KGgo=".into(),
            })
        };
        let mut only_image = Message::text(Role::Tool, "");
        only_image.parts = vec![image()];
        only_image.tool_call_id = Some("a".into());
        let mut text_and_image = Message::text(Role::Tool, "a chart");
        text_and_image.parts.push(image());
        text_and_image.tool_call_id = Some("b".into());
        request.messages.extend([
            call,
            only_image,
            text_and_image,
            Message::text(Role::User, "and?"),
        ]);
        let (_, wire) = body(false, &request, true);
        let messages = wire["messages"].as_array().unwrap();
        let roles: Vec<&str> = messages
            .iter()
            .map(|m| m["role"].as_str().unwrap())
            .collect();
        assert_eq!(
            roles,
            [
                "user",
                "assistant",
                "tool",
                "assistant",
                "tool",
                "tool",
                "user",
                "user"
            ]
        );
        assert_eq!(
            messages[2]["content"], "noon",
            "a text result stays as it is"
        );
        assert_eq!(
            messages[4]["content"],
            "(the result is the image in the next message)"
        );
        assert_eq!(messages[5]["content"], "a chart");
        let images = messages[6]["content"].as_array().unwrap();
        assert_eq!(images.len(), 3);
        assert_eq!(images[0]["type"], "text");
        for image in &images[1..] {
            assert_eq!(
                image["image_url"]["url"],
                "data:image/png;base64,iVBORw0KGgo="
            );
        }
        assert_eq!(messages[7]["content"], "and?");
        // Results that end the conversation get their images after them too.
        request.messages.pop();
        let (_, wire) = body(false, &request, true);
        assert_eq!(wire["messages"].as_array().unwrap().len(), 7);
        assert_eq!(wire["messages"][6]["role"], "user");
    }

    #[test]
    fn sampling_reaches_the_wire_and_knobs_only_where_taken() {
        let mut request = ChatRequest::new(vec![Message::text(Role::User, "hi")]);
        request.sampling = Sampling {
            max_tokens: Some(5),
            temperature: Some(0.5),
            top_k: Some(40),
            stop: vec!["x".into()],
            ..Sampling::default()
        };
        let (_, local) = body(false, &request, false);
        assert_eq!(local["max_completion_tokens"], 5);
        assert_eq!(local["max_tokens"], 5);
        assert_eq!(local["top_k"], 40);
        assert_eq!(local["stop"], json!(["x"]));
        assert!(local.get("stream_options").is_none());
        let (_, openai) = body(true, &request, false);
        assert!(openai.get("top_k").is_none());
        assert!(openai.get("max_tokens").is_none());
    }

    #[test]
    fn client_fields_pass_on_and_knobs_win_over_them() {
        let mut request = ChatRequest::new(vec![Message::text(Role::User, "hi")]);
        request.sampling.top_k = Some(40);
        request.think = Some(Think::Enabled(false));
        request.passthrough.insert("top_k".into(), json!(1));
        request
            .passthrough
            .insert("cache_prompt".into(), json!(true));
        let (_, local) = body(false, &request, true);
        assert_eq!(local["top_k"], 40);
        assert_eq!(local["cache_prompt"], true);
        assert_eq!(
            local["chat_template_kwargs"],
            json!({"enable_thinking": false})
        );
        assert!(local.get("reasoning_effort").is_some_and(|e| e == "none"));
        let (_, openai) = body(true, &request, true);
        assert_eq!(openai["top_k"], 1, "the client's own field, no knob to win");
        assert!(openai.get("chat_template_kwargs").is_none());
        assert!(openai.get("reasoning_effort").is_none());
    }

    #[test]
    fn a_raw_prompt_goes_to_completions() {
        let mut request = ChatRequest::new(vec![
            Message::text(Role::System, "sys"),
            Message::text(Role::User, "def f("),
        ]);
        request.generation = Some(Generation {
            suffix: Some("return 1".into()),
            ..Generation::default()
        });
        request.sampling.max_tokens = Some(9);
        request.sampling.top_k = Some(3);
        let (path, body) = body(false, &request, true);
        assert_eq!(path, "/completions");
        assert_eq!(
            body,
            json!({
                "model": "m", "prompt": "def f(", "stream": true,
                "stream_options": {"include_usage": true},
                "max_tokens": 9, "top_k": 3, "suffix": "return 1"
            })
        );
    }

    #[test]
    fn images_become_parts() {
        let mut message = Message::text(Role::User, "look");
        message
            .parts
            .push(Part::Image(Image::Url("http://x/y.png".into())));
        let (_, body) = body(false, &ChatRequest::new(vec![message]), false);
        assert_eq!(
            body["messages"][0]["content"],
            json!([
                {"type": "text", "text": "look"},
                {"type": "image_url", "image_url": {"url": "http://x/y.png"}}
            ])
        );
    }

    /// What an OpenAI client sends, parsed by the OpenAI dialect, written by this
    /// encoder and parsed again, is the same canonical request: no field the two share
    /// is dropped or changed on the way through the gateway. (A test may cross the
    /// dialect/backend line that the code itself never does.)
    mod same_dialect_round_trip {
        use proptest::prelude::*;

        use crate::chat::strategies::text;
        use serde_json::{json, Value};

        use super::encoder;
        use crate::dialect::openai::parse_chat;

        fn message(index: usize) -> impl Strategy<Value = Value> {
            prop_oneof![
                text().prop_map(|t| json!({"role": "user", "content": t})),
                text().prop_map(|t| json!({"role": "system", "content": t})),
                (text(), proptest::option::of(text()))
                    .prop_map(|(t, r)| {
                        let mut m = json!({"role": "assistant", "content": t});
                        if let Some(r) = r {
                            m["reasoning_content"] = json!(r);
                        }
                        m
                    }),
                ("[a-z_]{1,12}", 0u32..1000, text()).prop_map(move |(name, n, value)| {
                    let id = format!("call_{index}");
                    let arguments = json!({"n": n, "value": value}).to_string();
                    json!([
                        {"role": "assistant", "content": null, "tool_calls": [
                            {"id": id, "type": "function", "function": {"name": name, "arguments": arguments}}
                        ]},
                        {"role": "tool", "tool_call_id": id, "content": format!("{n}")}
                    ])
                }),
            ]
        }

        fn request() -> impl Strategy<Value = Value> {
            (
                proptest::collection::vec(0usize..1, 1..6).prop_flat_map(|slots| {
                    slots
                        .iter()
                        .enumerate()
                        .map(|(index, _)| message(index))
                        .collect::<Vec<_>>()
                }),
                proptest::option::of(0.0f64..2.0),
                proptest::option::of(0.0f64..1.0),
                proptest::option::of(1u64..100_000),
                proptest::option::of(any::<i64>()),
                proptest::collection::vec(text(), 0..3),
                proptest::option::of(("[a-z_]{1,12}", text())),
                proptest::option::of(any::<bool>()),
            )
                .prop_map(
                    |(messages, temperature, top_p, max_tokens, seed, stop, tool, parallel)| {
                        let mut flat = Vec::new();
                        for message in messages {
                            match message {
                                Value::Array(pair) => flat.extend(pair),
                                one => flat.push(one),
                            }
                        }
                        let mut body = json!({"model": "oa/m", "messages": flat});
                        let fields = [
                            ("temperature", temperature.map(Value::from)),
                            ("top_p", top_p.map(Value::from)),
                            ("max_completion_tokens", max_tokens.map(Value::from)),
                            ("seed", seed.map(Value::from)),
                            ("parallel_tool_calls", parallel.map(Value::from)),
                        ];
                        for (key, value) in fields {
                            if let Some(value) = value {
                                body[key] = value;
                            }
                        }
                        if !stop.is_empty() {
                            body["stop"] = json!(stop);
                        }
                        if let Some((name, description)) = tool {
                            body["tools"] = json!([{"type": "function", "function": {
                                "name": name, "description": description,
                                "parameters": {"type": "object", "properties": {"n": {"type": "integer"}}}
                            }}]);
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
                let (_, upstream) = encoder(false).encode("m", &first.request, false).unwrap();
                let upstream = upstream.contiguous();
                let second = parse_chat(&upstream).unwrap();
                prop_assert_eq!(&first.request, &second.request);
            }
        }
    }
}

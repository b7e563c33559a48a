//! The OpenAI Responses dialect (`POST /v1/responses`), the API Codex CLI and the
//! OpenAI Agents SDK speak: input items in, output items and typed SSE events out.
//! Requests are read in `parse.rs`, answers and streams written in `render.rs`; errors
//! are the Chat Completions dialect's, since both live under `/v1`.
//!
//! Unlike the other dialects, this one carries state: with `store` (the default) an
//! answer is kept in the [`ResponseStore`] under its `resp_…` id, owned by the caller's
//! key, so that `previous_response_id` can put the earlier conversation before a new
//! input. A dialect value is therefore made per request, knowing the store and who asks.

mod parse;
mod render;
mod saved;
pub mod store;

use std::sync::Arc;

use actix_web::HttpResponse;
use serde_json::Value;

pub use parse::{flat_name, Namespaced};
pub use render::ResponsesRenderer;

use crate::chat::{Completion, Message, Part, Role};
use crate::dialect::{Dialect, ParsedChat};
use crate::error::GatewayError;
use store::{owned_message, ResponseStore};

/// The Responses API for one request: the store it reads and writes, and the key id of
/// the caller (`""` for anonymous callers, who share one owner).
#[derive(Clone)]
pub struct Responses {
    pub store: Option<Arc<ResponseStore>>,
    pub owner: Arc<str>,
}

/// What the answer needs from the request: the fields a response object repeats, the
/// namespaced tools' names, and where to keep the answer.
#[derive(Debug)]
pub struct Reply {
    pub echo: Echo,
    pub namespaced: Vec<Namespaced>,
    /// Set when the answer is to be stored.
    pub save: Option<Save>,
}

/// The request fields a response object repeats back.
#[derive(Debug, Default)]
pub struct Echo {
    pub instructions: Option<String>,
    pub max_output_tokens: Option<u64>,
    pub temperature: Option<f64>,
    pub top_p: Option<f64>,
    pub parallel_tool_calls: bool,
    pub previous_response_id: Option<String>,
    pub store: bool,
    pub metadata: Value,
    pub user: Option<String>,
    pub tool_choice: Value,
    /// The tools as the client wrote them, read once for the objects that repeat them.
    pub tools: Value,
    pub text_format: Value,
    pub effort: Option<String>,
    pub summary: Option<String>,
}

/// Where an answer is kept, and the conversation it continues (the stored one, then
/// this request's input), owned so it outlives the request body.
pub struct Save {
    pub store: Arc<ResponseStore>,
    pub owner: Arc<str>,
    pub conversation: Vec<Message<'static>>,
}

impl std::fmt::Debug for Save {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Save")
            .field("owner", &self.owner)
            .field("conversation", &self.conversation.len())
            .finish()
    }
}

/// A 404 in OpenAI's shape for a response id this caller cannot see. No upstream is
/// involved: the variant is the one that carries a status, `type` and `code` as OpenAI
/// writes them.
pub fn not_found(id: &str, param: Option<&str>) -> GatewayError {
    GatewayError::UpstreamStatus {
        backend: "responses".to_owned(),
        status: 404,
        message: format!("Response with id '{id}' not found."),
        kind: Some("invalid_request_error".to_owned()),
        code: param.map(|_| "previous_response_not_found".to_owned()),
        retry_after: None,
    }
}

impl Dialect for Responses {
    type Reply = Reply;
    type Renderer = ResponsesRenderer;

    const NAME: &'static str = "responses";
    const STREAM_CONTENT_TYPE: &'static str = "text/event-stream";
    const STREAM_HEADERS: &'static [(&'static str, &'static str)] = super::SSE_STREAM_HEADERS;

    fn parse_chat<'a>(&self, body: &'a [u8]) -> Result<ParsedChat<'a, Reply>, GatewayError> {
        let wire: parse::WireRequest<'a> = crate::dialect::parse_body(body)?;
        if wire.model.is_empty() {
            return Err(GatewayError::bad_field("model", "model must not be empty"));
        }
        let (tools, namespaced) = parse::parse_tools(wire.tools)?;
        let input = parse::parse_input(wire.input)?;
        let earlier = match &wire.previous_response_id {
            None => None,
            Some(id) => Some(
                self.store
                    .as_ref()
                    .and_then(|store| store.get(id, &self.owner))
                    .ok_or_else(|| not_found(id, Some("previous_response_id")))?
                    .conversation,
            ),
        };
        if input.is_empty() && earlier.is_none() {
            return Err(GatewayError::bad_field(
                "input",
                "input must hold a text or at least one item",
            ));
        }
        let store = wire.store.unwrap_or(true);
        let save = match (&self.store, store) {
            (Some(responses), true) => Some(Save {
                store: responses.clone(),
                owner: self.owner.clone(),
                conversation: earlier
                    .iter()
                    .flat_map(|earlier| earlier.iter().cloned())
                    .chain(input.iter().map(owned_message))
                    .collect(),
            }),
            _ => None,
        };
        let mut request = parse::canonical_request(&wire, Vec::new(), tools)?;
        let instructions = wire.instructions.as_ref().map(|text| text.0.clone());
        let mut messages =
            Vec::with_capacity(input.len() + earlier.as_ref().map_or(0, |e| e.len()) + 1);
        if let Some(instructions) = instructions.filter(|text| !text.is_empty()) {
            messages.push(Message {
                parts: vec![Part::Text(instructions)],
                ..Message::text(Role::System, "")
            });
        }
        if let Some(earlier) = &earlier {
            messages.extend(earlier.iter().cloned());
        }
        messages.extend(input);
        request.messages = messages;
        let echo = Echo {
            instructions: wire.instructions.as_ref().map(|text| text.0.to_string()),
            max_output_tokens: wire.max_output_tokens,
            temperature: wire.temperature,
            top_p: wire.top_p,
            parallel_tool_calls: wire.parallel_tool_calls.unwrap_or(true),
            previous_response_id: wire.previous_response_id.clone(),
            store,
            metadata: wire
                .metadata
                .clone()
                .unwrap_or_else(|| Value::Object(Default::default())),
            user: wire.user.clone(),
            tool_choice: wire
                .tool_choice
                .clone()
                .unwrap_or_else(|| Value::from("auto")),
            tools: match wire.tools {
                Some(raw) => serde_json::from_str(raw.get()).unwrap_or(Value::Null),
                None => Value::Array(Vec::new()),
            },
            text_format: wire
                .text
                .as_ref()
                .and_then(|t| t.format.clone())
                .unwrap_or_else(|| serde_json::json!({"type": "text"})),
            effort: wire.reasoning.as_ref().and_then(|r| r.effort.clone()),
            summary: wire.reasoning.as_ref().and_then(|r| r.summary.clone()),
        };
        Ok(ParsedChat {
            model: wire.model,
            stream: wire.stream.unwrap_or(false),
            request,
            reply: Reply {
                echo,
                namespaced,
                save,
            },
        })
    }

    fn stream_renderer(&self, model: String, reply: Reply) -> ResponsesRenderer {
        ResponsesRenderer::new(model, reply)
    }

    fn render_completion(
        &self,
        model: &str,
        reply: Reply,
        completion: &Completion,
    ) -> Result<HttpResponse, GatewayError> {
        Ok(HttpResponse::Ok().json(render::render_whole(model, reply, completion)))
    }

    fn queue_comment(position: usize, out: &mut bytes::BytesMut) -> bool {
        // Before `response.created`: the first numbered event is still 0.
        super::sse_queue_comment(position, out)
    }

    fn render_error(error: &GatewayError) -> HttpResponse {
        crate::dialect::openai::render_error(error)
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::store::{StoreConfig, StoredResponse};
    use super::*;
    use crate::chat::{Image, OutputFormat, Think, ToolCall};

    fn dialect() -> Responses {
        Responses {
            store: None,
            owner: Arc::from(""),
        }
    }

    /// The request borrows from its body; a test's body lives as long as the test.
    fn parse(body: Value) -> Result<ParsedChat<'static, Reply>, GatewayError> {
        let body: &'static [u8] = Box::leak(body.to_string().into_bytes().into_boxed_slice());
        dialect().parse_chat(body)
    }

    fn refused(body: Value) -> Option<String> {
        match parse(body) {
            Err(GatewayError::BadRequest { param, .. }) => param,
            other => panic!("not a 400: {other:?}"),
        }
    }

    #[test]
    fn every_field_reaches_the_canonical_request() {
        let parsed = parse(json!({
            "model": "oa/gpt",
            "stream": true,
            "instructions": "be brief",
            "input": [
                {"role": "developer", "content": "dev"},
                {"type": "message", "role": "user", "content": [
                    {"type": "input_text", "text": "look"},
                    {"type": "input_image", "image_url": "data:image/jpeg;base64,AAAA"},
                    {"type": "input_image", "image_url": "https://example.com/a.png", "detail": "auto"}
                ]},
                {"type": "reasoning", "id": "rs_1", "summary": [{"type": "summary_text", "text": "hmm"}],
                 "encrypted_content": "opaque"},
                {"type": "message", "role": "assistant", "content": [{"type": "output_text", "text": "let me check"}]},
                {"type": "function_call", "call_id": "call_1", "name": "f", "arguments": "{\"a\":1}"},
                {"type": "function_call", "call_id": "call_2", "name": "spawn", "namespace": "agents", "arguments": "{}"},
                {"type": "function_call_output", "call_id": "call_1", "output": "42"},
                {"type": "function_call_output", "call_id": "call_2", "output": [{"type": "input_text", "text": "ok"}]},
                {"type": "function_call_output", "call_id": "call_2", "output": {"content": "failed", "success": false}}
            ],
            "tools": [
                {"type": "function", "name": "f", "description": "d", "parameters": {"type": "object"}, "strict": true},
                {"type": "namespace", "name": "agents", "description": "sub-agents",
                 "tools": [{"type": "function", "name": "spawn", "parameters": {"type": "object"}}]},
                {"type": "web_search", "external_web_access": false}
            ],
            "tool_choice": {"type": "function", "name": "f"},
            "parallel_tool_calls": false,
            "max_output_tokens": 64,
            "temperature": 0.5,
            "top_p": 0.9,
            "reasoning": {"effort": "high", "summary": "auto"},
            "text": {"format": {"type": "json_schema", "name": "s", "schema": {"type": "object"}, "strict": true}},
            "store": false,
            "metadata": {"k": "v"},
            "user": "u1",
            "include": ["reasoning.encrypted_content"],
            "prompt_cache_key": "abc",
            "client_metadata": {"x": "y"}
        }))
        .unwrap();
        assert_eq!(parsed.model, "oa/gpt");
        assert!(parsed.stream);
        let request = &parsed.request;
        assert_eq!(request.sampling.max_tokens, Some(64));
        assert_eq!(request.sampling.temperature, Some(0.5));
        assert_eq!(request.sampling.top_p, Some(0.9));
        assert_eq!(request.parallel_tool_calls, Some(false));
        assert_eq!(request.think, Some(Think::Effort("high".into())));
        assert_eq!(
            request.format,
            Some(OutputFormat::Schema {
                name: Some("s".into()),
                schema: json!({"type": "object"}),
                strict: Some(true)
            })
        );
        assert_eq!(
            request.tool_choice,
            Some(json!({"type": "function", "function": {"name": "f"}}))
        );
        // Unknown fields are not carried upstream.
        assert!(request.passthrough.is_empty());
        let names: Vec<&str> = request.tools.iter().map(|t| &*t.function.name).collect();
        assert_eq!(names, ["f", "agents__spawn"], "web_search dropped");
        assert_eq!(
            parsed.reply.namespaced,
            vec![Namespaced {
                flat: "agents__spawn".into(),
                namespace: "agents".into(),
                name: "spawn".into()
            }]
        );
        assert!(parsed.reply.save.is_none());
        assert!(!parsed.reply.echo.store);
        let roles: Vec<Role> = request.messages.iter().map(|m| m.role).collect();
        assert_eq!(
            roles,
            [
                Role::System,
                Role::Developer,
                Role::User,
                Role::Assistant,
                Role::Tool,
                Role::Tool,
                Role::Tool
            ]
        );
        assert_eq!(request.messages[0].joined_text(), "be brief");
        assert_eq!(
            request.messages[2].parts,
            vec![
                Part::Text("look".into()),
                Part::Image(Image::Base64 {
                    mime: Some("image/jpeg".into()),
                    data: "AAAA".into()
                }),
                Part::Image(Image::Url("https://example.com/a.png".into())),
            ]
        );
        // One assistant turn: its reasoning, text and both calls.
        let assistant = &request.messages[3];
        assert_eq!(assistant.thinking().map(|t| t.as_ref()), Some("hmm"));
        assert_eq!(assistant.joined_text(), "let me check");
        assert_eq!(
            assistant.tool_calls,
            vec![
                ToolCall {
                    id: Some("call_1".into()),
                    name: "f".into(),
                    arguments: "{\"a\":1}".into()
                },
                ToolCall {
                    id: Some("call_2".into()),
                    name: "agents__spawn".into(),
                    arguments: "{}".into()
                },
            ]
        );
        let tool = &request.messages[4];
        assert_eq!(tool.tool_call_id.as_deref(), Some("call_1"));
        assert_eq!(tool.tool_name().map(|t| t.as_ref()), Some("f"));
        assert_eq!(tool.joined_text(), "42");
        assert_eq!(
            request.messages[5].tool_name().map(|t| t.as_ref()),
            Some("agents__spawn")
        );
        assert_eq!(request.messages[5].joined_text(), "ok");
        assert_eq!(request.messages[6].joined_text(), "failed");
    }

    #[test]
    fn a_string_input_is_one_user_message_and_defaults_apply() {
        let parsed = parse(json!({"model": "m", "input": "hi \"there\""})).unwrap();
        assert!(!parsed.stream);
        let request = parsed.request;
        assert_eq!(request.messages.len(), 1);
        assert_eq!(request.messages[0].role, Role::User);
        assert_eq!(request.messages[0].joined_text(), "hi \"there\"");
        assert_eq!(request.format, None);
        assert_eq!(request.think, None);
        assert!(request.tools.is_empty());
        assert!(parsed.reply.echo.store, "store defaults to true");
        assert!(parsed.reply.echo.parallel_tool_calls);
        let json_object =
            parse(json!({"model": "m", "input": "x", "text": {"format": {"type": "json_object"}}}))
                .unwrap();
        assert_eq!(json_object.request.format, Some(OutputFormat::Json));
    }

    #[test]
    fn each_refusal_names_its_field() {
        let param = |name: &str| Some(name.to_owned());
        assert_eq!(refused(json!({"model": "", "input": "x"})), param("model"));
        assert_eq!(refused(json!({"model": "m"})), param("input"));
        assert_eq!(refused(json!({"model": "m", "input": []})), param("input"));
        assert_eq!(refused(json!({"model": "m", "input": 3})), param("input"));
        assert_eq!(
            refused(json!({"model": "m", "input": [{"type": "item_reference", "id": "x"}]})),
            param("input")
        );
        assert_eq!(
            refused(json!({"model": "m", "input": [{"role": "robot", "content": "x"}]})),
            param("input")
        );
        assert_eq!(
            refused(
                json!({"model": "m", "input": [{"role": "user", "content": [{"type": "input_file", "file_id": "f"}]}]})
            ),
            param("input")
        );
        assert_eq!(
            refused(
                json!({"model": "m", "input": [{"role": "user", "content": [{"type": "input_image", "file_id": "f"}]}]})
            ),
            param("input")
        );
        assert_eq!(
            refused(
                json!({"model": "m", "input": [{"type": "function_call_output", "output": "x"}]})
            ),
            param("input")
        );
        assert_eq!(
            refused(json!({"model": "m", "input": "x", "tools": [{"type": "file_search"}]})),
            param("tools")
        );
        assert_eq!(
            refused(json!({"model": "m", "input": "x", "tools": [{"type": "function"}]})),
            param("tools")
        );
        assert_eq!(
            refused(json!({"model": "m", "input": "x", "tool_choice": {"type": "file_search"}})),
            param("tool_choice")
        );
        assert_eq!(
            refused(json!({"model": "m", "input": "x", "text": {"format": {"type": "yaml"}}})),
            param("text.format")
        );
        assert_eq!(
            refused(
                json!({"model": "m", "input": "x", "text": {"format": {"type": "json_schema"}}})
            ),
            param("text.format")
        );
    }

    #[test]
    fn a_previous_response_is_put_before_the_input_for_its_owner_only() {
        let store = Arc::new(ResponseStore::new(StoreConfig::default()));
        store.put(
            "resp_a".into(),
            StoredResponse {
                owner: Arc::from("key-a"),
                object: json!({}),
                conversation: Arc::new(vec![
                    Message::text(Role::User, "first"),
                    Message::text(Role::Assistant, "answer"),
                ]),
            },
        );
        let as_owner = |owner: &str| Responses {
            store: Some(store.clone()),
            owner: Arc::from(owner),
        };
        let body = json!({"model": "m", "instructions": "sys", "previous_response_id": "resp_a",
                          "input": "second"})
        .to_string();
        let parsed = as_owner("key-a").parse_chat(body.as_bytes()).unwrap();
        let texts: Vec<String> = parsed
            .request
            .messages
            .iter()
            .map(Message::joined_text)
            .collect();
        assert_eq!(texts, ["sys", "first", "answer", "second"]);
        // The conversation to keep holds no instructions.
        let save = parsed.reply.save.expect("stored by default");
        assert_eq!(save.conversation.len(), 3);
        for owner in ["key-b", ""] {
            match as_owner(owner).parse_chat(body.as_bytes()) {
                Err(error) => assert_eq!(error.status(), 404),
                Ok(_) => panic!("{owner:?} continued another key's response"),
            }
        }
    }

    /// The two requests Codex CLI 0.171.0 sent in one tool round trip.
    #[test]
    fn codex_requests_parse() {
        let fixture =
            include_str!("../../../tests/fixtures/agents/codex-0.171.0-tool-round-trip.jsonl");
        let bodies: Vec<String> = fixture
            .lines()
            .map(|line| serde_json::from_str::<Value>(line).unwrap()["body"].to_string())
            .collect();
        assert_eq!(bodies.len(), 2);
        let first = dialect().parse_chat(bodies[0].as_bytes()).unwrap();
        assert!(first.stream);
        assert!(first.reply.save.is_none(), "store: false");
        let request = &first.request;
        assert_eq!(request.messages[0].role, Role::Developer);
        assert_eq!(
            request.messages.last().unwrap().joined_text(),
            "Run the shell command: echo TOOL-OK"
        );
        assert!(request
            .tools
            .iter()
            .any(|t| t.function.name == "exec_command"));
        assert!(request
            .tools
            .iter()
            .any(|t| t.function.name == "multi_agent_v1__close_agent"));
        assert!(first
            .reply
            .namespaced
            .iter()
            .any(|n| n.name == "close_agent" && n.namespace == "multi_agent_v1"));
        assert_eq!(request.tool_choice, Some(json!("auto")));
        assert_eq!(request.parallel_tool_calls, Some(true));

        let second = dialect().parse_chat(bodies[1].as_bytes()).unwrap();
        let messages = &second.request.messages;
        let (tool, before) = messages.split_last().unwrap();
        let assistant = before.last().unwrap();
        assert_eq!(assistant.role, Role::Assistant);
        assert_eq!(
            assistant.thinking().map(|t| t.as_ref()),
            Some("**Thinking** about the answer.")
        );
        assert_eq!(assistant.tool_calls.len(), 1);
        assert_eq!(assistant.tool_calls[0].name, "exec_command");
        assert_eq!(
            assistant.tool_calls[0].id.as_deref(),
            Some("call_mock_e3cced04dcdd48ae87a963c9")
        );
        assert_eq!(tool.role, Role::Tool);
        assert_eq!(tool.tool_call_id, assistant.tool_calls[0].id);
        assert_eq!(tool.tool_name().map(|t| t.as_ref()), Some("exec_command"));
        assert!(tool.joined_text().contains("TOOL-OK"));
    }
}

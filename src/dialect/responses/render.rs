//! Writing canonical answers as Responses API objects: one `response` object for a
//! whole answer, and for a stream the typed SSE events OpenAI sends (`event:` line and
//! `data:` JSON, each with an increasing `sequence_number`, no `[DONE]`), ending in
//! `response.completed` with usage (Codex fails a turn without it),
//! `response.incomplete` at the length limit, or `response.failed`.
//!
//! Output items come in the order the model produced them: reasoning, then text, then
//! function calls. A namespaced function's flat name is split back into `name` and
//! `namespace`. A stored answer is kept here, once its output is known.

use std::sync::Arc;

use bytes::BytesMut;
use serde::Serialize;
use serde_json::{json, Value};

use super::store::StoredResponse;
use crate::chat::{
    random_id, Completion, Event, FinishReason, Message, Part, Rare, Role, ToolCall, ToolCallDelta,
    Usage,
};
use crate::dialect::openai::error_object;
use crate::dialect::{unix_now, StreamRenderer};
use crate::error::GatewayError;
use crate::framing::write_json;

use super::{Namespaced, Reply};

/// The `usage` object: OpenAI's fields, details included as its SDKs read them.
fn usage_object(usage: Usage) -> Value {
    json!({
        "input_tokens": usage.prompt_tokens,
        "input_tokens_details": {"cached_tokens": 0},
        "output_tokens": usage.completion_tokens,
        "output_tokens_details": {"reasoning_tokens": 0},
        "total_tokens": usage.prompt_tokens + usage.completion_tokens,
    })
}

/// A response's `status` and `incomplete_details` for how generation stopped.
fn status_of(finish: FinishReason) -> (&'static str, Value) {
    match finish {
        FinishReason::Length => ("incomplete", json!({"reason": "max_output_tokens"})),
        FinishReason::ContentFilter => ("incomplete", json!({"reason": "content_filter"})),
        FinishReason::Stop | FinishReason::ToolCalls => ("completed", Value::Null),
    }
}

/// The client's name of a function the upstream knows by `flat`: a namespaced one's
/// bare name and namespace, any other as it is.
fn client_name<'n>(namespaced: &'n [Namespaced], flat: &'n str) -> (&'n str, Option<&'n str>) {
    namespaced
        .iter()
        .find(|entry| entry.flat == flat)
        .map_or((flat, None), |entry| {
            (entry.name.as_str(), Some(entry.namespace.as_str()))
        })
}

fn function_call_item(
    namespaced: &[Namespaced],
    id: &str,
    call: &ToolCall<'_>,
    status: &str,
) -> Value {
    let (name, namespace) = client_name(namespaced, &call.name);
    let mut item = json!({
        "type": "function_call",
        "id": id,
        "call_id": call.id.as_deref().unwrap_or(""),
        "name": name,
        "arguments": call.arguments,
        "status": status,
    });
    if let Some(namespace) = namespace {
        item["namespace"] = Value::from(namespace);
    }
    item
}

fn message_item(id: &str, text: &str, status: &str) -> Value {
    json!({
        "type": "message",
        "id": id,
        "status": status,
        "role": "assistant",
        "content": if status == "in_progress" {
            json!([])
        } else {
            json!([{"type": "output_text", "text": text, "annotations": [], "logprobs": []}])
        },
    })
}

fn reasoning_item(id: &str, text: &str, done: bool) -> Value {
    json!({
        "type": "reasoning",
        "id": id,
        "summary": [],
        "content": if done {
            json!([{"type": "reasoning_text", "text": text}])
        } else {
            json!([])
        },
    })
}

/// The response object: this answer's fields and the request's, as OpenAI returns them.
fn response_object(
    id: &str,
    created_at: u64,
    model: &str,
    reply: &Reply,
    status: &str,
    output: Vec<Value>,
    usage: Option<Usage>,
) -> Value {
    let echo = &reply.echo;
    json!({
        "id": id,
        "object": "response",
        "created_at": created_at,
        "status": status,
        "error": null,
        "incomplete_details": null,
        "instructions": echo.instructions,
        "max_output_tokens": echo.max_output_tokens,
        "model": model,
        "output": output,
        "parallel_tool_calls": echo.parallel_tool_calls,
        "previous_response_id": echo.previous_response_id,
        "reasoning": {"effort": echo.effort, "summary": echo.summary},
        "store": echo.store,
        "temperature": echo.temperature,
        "text": {"format": echo.text_format},
        "tool_choice": echo.tool_choice,
        "tools": echo.tools,
        "top_p": echo.top_p,
        "truncation": "disabled",
        "usage": usage.map(usage_object),
        "user": echo.user,
        "metadata": echo.metadata,
    })
}

/// Keeps an answer when the request asked for it: its object for `GET`, and the
/// conversation with this answer's turn at its end, for a continuation.
fn keep(reply: Reply, id: String, object: &Value, turn: Message<'static>) {
    let Some(save) = reply.save else {
        return;
    };
    let mut conversation = save.conversation;
    conversation.push(turn);
    save.store.put(
        id,
        StoredResponse {
            owner: save.owner,
            object: object.clone(),
            conversation: Arc::new(conversation),
        },
    );
}

/// The assistant turn as a continuation replays it: names and call ids as the
/// upstream saw and the client was told.
fn turn(text: String, thinking: String, tool_calls: Vec<ToolCall<'static>>) -> Message<'static> {
    Message {
        parts: if text.is_empty() {
            Vec::new()
        } else {
            vec![Part::Text(text.into())]
        },
        tool_calls,
        rare: Rare {
            thinking: (!thinking.is_empty()).then(|| thinking.into()),
            ..Rare::default()
        }
        .boxed(),
        ..Message::text(Role::Assistant, "")
    }
}

/// A whole answer as one response object (stored when asked).
pub fn render_whole(model: &str, reply: Reply, completion: &Completion) -> Value {
    let id = random_id("resp_", 24);
    let mut output = Vec::new();
    if !completion.thinking.is_empty() {
        output.push(reasoning_item(
            &random_id("rs_", 24),
            &completion.thinking,
            true,
        ));
    }
    if !completion.text.is_empty() || completion.tool_calls.is_empty() {
        output.push(message_item(
            &random_id("msg_", 24),
            &completion.text,
            "completed",
        ));
    }
    // Calls without an id get one here, the same in the answer and in the store.
    let calls: Vec<ToolCall<'static>> = completion
        .tool_calls
        .iter()
        .map(|call| ToolCall {
            id: Some(
                call.id
                    .clone()
                    .unwrap_or_else(|| random_id("call_", 24).into()),
            ),
            ..call.clone()
        })
        .collect();
    for call in &calls {
        output.push(function_call_item(
            &reply.namespaced,
            &random_id("fc_", 24),
            call,
            "completed",
        ));
    }
    let (status, incomplete) = status_of(completion.effective_finish());
    let mut object = response_object(
        &id,
        unix_now(),
        model,
        &reply,
        status,
        output,
        Some(completion.usage.unwrap_or_default()),
    );
    object["incomplete_details"] = incomplete;
    let turn = turn(completion.text.clone(), completion.thinking.clone(), calls);
    keep(reply, id, &object, turn);
    object
}

/// A text or reasoning item being streamed.
struct OpenText {
    index: usize,
    id: String,
    text: String,
    reasoning: bool,
}

/// A function call being streamed, known by the upstream's index of it.
struct OpenCall {
    upstream: usize,
    index: usize,
    id: String,
    call: ToolCall<'static>,
}

/// One streamed delta, written without building a `Value` for each token.
#[derive(Serialize)]
struct Delta<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    sequence_number: u64,
    item_id: &'a str,
    output_index: usize,
    #[serde(skip_serializing_if = "Option::is_none")]
    content_index: Option<usize>,
    delta: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    logprobs: Option<[(); 0]>,
}

/// Renders events as the Responses API's typed SSE events.
pub struct ResponsesRenderer {
    id: String,
    created_at: u64,
    model: String,
    reply: Option<Reply>,
    sequence: u64,
    started: bool,
    /// Finished items by output index; `None` while one is still open.
    items: Vec<Option<Value>>,
    text: Option<OpenText>,
    calls: Vec<OpenCall>,
    /// The whole answer so far, for the store.
    all_text: String,
    all_thinking: String,
    finish: Option<FinishReason>,
    usage: Option<Usage>,
}

impl ResponsesRenderer {
    pub fn new(model: String, reply: Reply) -> ResponsesRenderer {
        ResponsesRenderer {
            id: random_id("resp_", 24),
            created_at: unix_now(),
            model,
            reply: Some(reply),
            sequence: 0,
            started: false,
            items: Vec::new(),
            text: None,
            calls: Vec::new(),
            all_text: String::new(),
            all_thinking: String::new(),
            finish: None,
            usage: None,
        }
    }

    /// Writes one event: its `event:` line, then its data with `type` and
    /// `sequence_number` added.
    fn emit(&mut self, out: &mut BytesMut, kind: &'static str, mut data: Value) {
        if let Value::Object(fields) = &mut data {
            fields.insert("type".to_owned(), Value::from(kind));
            fields.insert("sequence_number".to_owned(), Value::from(self.sequence));
        }
        self.sequence += 1;
        out.extend_from_slice(b"event: ");
        out.extend_from_slice(kind.as_bytes());
        out.extend_from_slice(b"\ndata: ");
        write_json(out, &data);
        out.extend_from_slice(b"\n\n");
    }

    fn emit_delta(&mut self, out: &mut BytesMut, mut delta: Delta<'_>) {
        delta.sequence_number = self.sequence;
        self.sequence += 1;
        out.extend_from_slice(b"event: ");
        out.extend_from_slice(delta.kind.as_bytes());
        out.extend_from_slice(b"\ndata: ");
        write_json(out, &delta);
        out.extend_from_slice(b"\n\n");
    }

    fn object(&self, status: &str, output: Vec<Value>, usage: Option<Usage>) -> Value {
        match &self.reply {
            Some(reply) => response_object(
                &self.id,
                self.created_at,
                &self.model,
                reply,
                status,
                output,
                usage,
            ),
            None => json!({"id": self.id, "object": "response", "status": status}),
        }
    }

    /// `response.created` and `response.in_progress`, before anything else.
    fn start(&mut self, out: &mut BytesMut) {
        if std::mem::replace(&mut self.started, true) {
            return;
        }
        let object = self.object("in_progress", Vec::new(), None);
        self.emit(out, "response.created", json!({"response": object}));
        let object = self.object("in_progress", Vec::new(), None);
        self.emit(out, "response.in_progress", json!({"response": object}));
    }

    fn next_index(&mut self) -> usize {
        self.items.push(None);
        self.items.len() - 1
    }

    /// Opens a text or reasoning item unless one of that kind is open already.
    fn open_text(&mut self, out: &mut BytesMut, reasoning: bool) {
        if self.text.as_ref().is_some_and(|t| t.reasoning == reasoning) {
            return;
        }
        self.close_text(out);
        let index = self.next_index();
        let id = random_id(if reasoning { "rs_" } else { "msg_" }, 24);
        let (item, part) = if reasoning {
            (
                reasoning_item(&id, "", false),
                json!({"type": "reasoning_text", "text": ""}),
            )
        } else {
            (
                message_item(&id, "", "in_progress"),
                json!({"type": "output_text", "text": "", "annotations": [], "logprobs": []}),
            )
        };
        self.emit(
            out,
            "response.output_item.added",
            json!({"output_index": index, "item": item}),
        );
        self.emit(
            out,
            "response.content_part.added",
            json!({"item_id": id, "output_index": index, "content_index": 0, "part": part}),
        );
        self.text = Some(OpenText {
            index,
            id,
            text: String::new(),
            reasoning,
        });
    }

    fn close_text(&mut self, out: &mut BytesMut) {
        let Some(open) = self.text.take() else {
            return;
        };
        let (done, part, item) = if open.reasoning {
            (
                "response.reasoning_text.done",
                json!({"type": "reasoning_text", "text": open.text}),
                reasoning_item(&open.id, &open.text, true),
            )
        } else {
            (
                "response.output_text.done",
                json!({"type": "output_text", "text": open.text, "annotations": [], "logprobs": []}),
                message_item(&open.id, &open.text, "completed"),
            )
        };
        let mut done_data = json!({"item_id": open.id, "output_index": open.index,
                                   "content_index": 0, "text": open.text});
        if !open.reasoning {
            done_data["logprobs"] = json!([]);
        }
        self.emit(out, done, done_data);
        self.emit(
            out,
            "response.content_part.done",
            json!({"item_id": open.id, "output_index": open.index, "content_index": 0, "part": part}),
        );
        self.emit(
            out,
            "response.output_item.done",
            json!({"output_index": open.index, "item": item.clone()}),
        );
        self.items[open.index] = Some(item);
    }

    fn text(&mut self, out: &mut BytesMut, text: &str, reasoning: bool) {
        self.start(out);
        self.open_text(out, reasoning);
        let Some(open) = self.text.as_mut() else {
            return;
        };
        open.text.push_str(text);
        if reasoning {
            self.all_thinking.push_str(text);
        } else {
            self.all_text.push_str(text);
        }
        let (id, index) = (open.id.clone(), open.index);
        self.emit_delta(
            out,
            Delta {
                kind: if reasoning {
                    "response.reasoning_text.delta"
                } else {
                    "response.output_text.delta"
                },
                sequence_number: 0,
                item_id: &id,
                output_index: index,
                content_index: Some(0),
                delta: text,
                logprobs: (!reasoning).then_some([]),
            },
        );
    }

    fn tool_call(&mut self, out: &mut BytesMut, delta: ToolCallDelta) {
        self.start(out);
        self.close_text(out);
        let at = match self.calls.iter().position(|c| c.upstream == delta.index) {
            Some(at) => {
                if let Some(name) = &delta.name {
                    self.calls[at].call.name.to_mut().push_str(name);
                }
                at
            }
            None => {
                let index = self.next_index();
                let call = ToolCall {
                    id: Some(delta.id.unwrap_or_else(|| random_id("call_", 24)).into()),
                    name: delta.name.unwrap_or_default().into(),
                    arguments: String::new().into(),
                };
                let id = random_id("fc_", 24);
                let item = function_call_item(self.namespaced(), &id, &call, "in_progress");
                self.emit(
                    out,
                    "response.output_item.added",
                    json!({"output_index": index, "item": item}),
                );
                self.calls.push(OpenCall {
                    upstream: delta.index,
                    index,
                    id,
                    call,
                });
                self.calls.len() - 1
            }
        };
        if delta.arguments.is_empty() {
            return;
        }
        let open = &mut self.calls[at];
        open.call.arguments.to_mut().push_str(&delta.arguments);
        let (id, index) = (open.id.clone(), open.index);
        self.emit_delta(
            out,
            Delta {
                kind: "response.function_call_arguments.delta",
                sequence_number: 0,
                item_id: &id,
                output_index: index,
                content_index: None,
                delta: &delta.arguments,
                logprobs: None,
            },
        );
    }

    fn namespaced(&self) -> &[Namespaced] {
        self.reply.as_ref().map_or(&[], |r| r.namespaced.as_slice())
    }

    /// Closes every open item, in output order.
    fn close_all(&mut self, out: &mut BytesMut) -> Vec<ToolCall<'static>> {
        self.close_text(out);
        let calls = std::mem::take(&mut self.calls);
        let mut finished = Vec::with_capacity(calls.len());
        for open in calls {
            let (name, _) = client_name(self.namespaced(), &open.call.name);
            let data = json!({"item_id": open.id, "output_index": open.index,
                              "name": name, "arguments": open.call.arguments});
            self.emit(out, "response.function_call_arguments.done", data);
            let item = function_call_item(self.namespaced(), &open.id, &open.call, "completed");
            self.emit(
                out,
                "response.output_item.done",
                json!({"output_index": open.index, "item": item.clone()}),
            );
            self.items[open.index] = Some(item);
            finished.push(open.call);
        }
        finished
    }
}

impl StreamRenderer for ResponsesRenderer {
    fn event(&mut self, event: Event, out: &mut BytesMut) {
        match event {
            Event::Text(text) => self.text(out, &text, false),
            Event::Thinking(text) => self.text(out, &text, true),
            Event::ToolCall(delta) => self.tool_call(out, delta),
            Event::Finish(reason) => self.finish = Some(reason),
            Event::Usage(usage) => self.usage = Some(usage),
            // Only Anthropic's API takes its signature back; a Responses client has no
            // place for it but `encrypted_content`, which it sends back verbatim and
            // the gateway drops. A Responses answer does not say which stop sequence
            // ended it.
            Event::ThinkingSignature(_) | Event::StopSequence(_) | Event::PromptTokens(_) => {}
        }
    }

    fn end(&mut self, out: &mut BytesMut) {
        self.start(out);
        let calls = self.close_all(out);
        let finish = match self.finish {
            Some(FinishReason::Stop) | None if !calls.is_empty() => FinishReason::ToolCalls,
            Some(reason) => reason,
            None => FinishReason::Stop,
        };
        let (status, incomplete) = status_of(finish);
        let output = std::mem::take(&mut self.items)
            .into_iter()
            .flatten()
            .collect();
        let mut object = self.object(status, output, Some(self.usage.unwrap_or_default()));
        object["incomplete_details"] = incomplete;
        let kind = if status == "incomplete" {
            "response.incomplete"
        } else {
            "response.completed"
        };
        self.emit(out, kind, json!({"response": object}));
        if let Some(reply) = self.reply.take() {
            let turn = turn(
                std::mem::take(&mut self.all_text),
                std::mem::take(&mut self.all_thinking),
                calls,
            );
            keep(reply, self.id.clone(), &object, turn);
        }
    }

    fn error(&mut self, error: &GatewayError, out: &mut BytesMut) {
        self.start(out);
        let output = self.items.iter().flatten().cloned().collect();
        let mut object = self.object("failed", output, self.usage);
        let wire = error_object(error);
        object["error"] = json!({
            "code": wire["code"].as_str().unwrap_or(wire["type"].as_str().unwrap_or("server_error")),
            "message": wire["message"],
        });
        self.emit(out, "response.failed", json!({"response": object}));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::chat::samples::{tool_call as call, usage};
    use crate::dialect::responses::store::{ResponseStore, StoreConfig};
    use crate::dialect::responses::Echo;
    use crate::framing::EventCutter;

    fn reply() -> Reply {
        Reply {
            echo: Echo {
                store: true,
                ..Echo::default()
            },
            namespaced: vec![Namespaced {
                flat: "agents__spawn".into(),
                namespace: "agents".into(),
                name: "spawn".into(),
            }],
            save: None,
        }
    }

    /// Each event as (`event:` name, data), checking the name is the data's `type`.
    fn events(out: &[u8]) -> Vec<(String, Value)> {
        std::str::from_utf8(out)
            .unwrap()
            .split("\n\n")
            .filter(|event| !event.is_empty())
            .map(|event| {
                let (name, data) = event.split_once('\n').unwrap();
                let name = name.strip_prefix("event: ").unwrap().to_owned();
                let data: Value =
                    serde_json::from_str(data.strip_prefix("data: ").unwrap()).unwrap();
                assert_eq!(data["type"], name.as_str());
                (name, data)
            })
            .collect()
    }

    fn stream(reply: Reply, input: Vec<Event>) -> Vec<(String, Value)> {
        let mut renderer = ResponsesRenderer::new("oa/m".into(), reply);
        let mut out = BytesMut::new();
        for event in input {
            renderer.event(event, &mut out);
        }
        renderer.end(&mut out);
        events(&out)
    }

    #[test]
    fn whole_answer_items_in_order() {
        let completion = Completion {
            text: "Hello".into(),
            thinking: "hmm".into(),
            tool_calls: vec![ToolCall {
                id: None,
                name: "agents__spawn".into(),
                arguments: "{}".into(),
            }],
            finish_reason: Some(FinishReason::ToolCalls),
            usage: Some(usage()),
            thinking_signature: String::new(),
            stop_sequence: None,
        };
        let store = Arc::new(ResponseStore::new(StoreConfig::default()));
        let mut reply = reply();
        reply.save = Some(super::super::Save {
            store: store.clone(),
            owner: Arc::from("k"),
            conversation: vec![Message::text(Role::User, "hi")],
        });
        let object = render_whole("oa/m", reply, &completion);
        let id = object["id"].as_str().unwrap();
        assert!(id.starts_with("resp_"));
        assert_eq!(object["object"], "response");
        assert_eq!(object["status"], "completed");
        assert_eq!(object["model"], "oa/m");
        let output = object["output"].as_array().unwrap();
        let kinds: Vec<&str> = output.iter().map(|i| i["type"].as_str().unwrap()).collect();
        assert_eq!(kinds, ["reasoning", "message", "function_call"]);
        assert_eq!(output[0]["content"][0]["text"], "hmm");
        assert_eq!(output[1]["content"][0]["type"], "output_text");
        assert_eq!(output[1]["content"][0]["text"], "Hello");
        // The namespaced call is named as the client offered it, with a call id.
        assert_eq!(output[2]["name"], "spawn");
        assert_eq!(output[2]["namespace"], "agents");
        let call_id = output[2]["call_id"].as_str().unwrap();
        assert!(call_id.starts_with("call_"));
        assert_eq!(
            object["usage"],
            json!({"input_tokens": 7, "input_tokens_details": {"cached_tokens": 0},
                   "output_tokens": 5, "output_tokens_details": {"reasoning_tokens": 0},
                   "total_tokens": 12})
        );
        // Kept: the object, and the conversation with the answer's turn, the call
        // under the id the client was given and the upstream's name.
        let stored = store.get(id, "k").unwrap();
        assert_eq!(stored.object, object);
        let turn = stored.conversation.last().unwrap();
        assert_eq!(turn.role, Role::Assistant);
        assert_eq!(turn.tool_calls[0].id.as_deref(), Some(call_id));
        assert_eq!(turn.tool_calls[0].name, "agents__spawn");
        assert_eq!(turn.thinking().map(|t| t.as_ref()), Some("hmm"));
    }

    #[test]
    fn a_length_stop_is_incomplete() {
        let completion = Completion {
            text: "cut".into(),
            finish_reason: Some(FinishReason::Length),
            ..Completion::default()
        };
        let object = render_whole("m", reply(), &completion);
        assert_eq!(object["status"], "incomplete");
        assert_eq!(
            object["incomplete_details"],
            json!({"reason": "max_output_tokens"})
        );
        let events = stream(
            reply(),
            vec![
                Event::Text("cut".into()),
                Event::Finish(FinishReason::Length),
            ],
        );
        let (name, last) = events.last().unwrap();
        assert_eq!(name, "response.incomplete");
        assert_eq!(last["response"]["status"], "incomplete");
    }

    #[test]
    fn stream_event_sequence() {
        let events = stream(
            reply(),
            vec![
                Event::Thinking("Let me".into()),
                Event::Thinking(" think.".into()),
                Event::Text("Hel".into()),
                Event::Text("lo".into()),
                call(3, Some("call_a"), Some("agents__spawn"), ""),
                call(3, None, None, "{\"a\":"),
                call(3, None, None, "1}"),
                Event::Finish(FinishReason::ToolCalls),
                Event::Usage(usage()),
            ],
        );
        let names: Vec<&str> = events.iter().map(|(name, _)| name.as_str()).collect();
        assert_eq!(
            names,
            [
                "response.created",
                "response.in_progress",
                "response.output_item.added",
                "response.content_part.added",
                "response.reasoning_text.delta",
                "response.reasoning_text.delta",
                "response.reasoning_text.done",
                "response.content_part.done",
                "response.output_item.done",
                "response.output_item.added",
                "response.content_part.added",
                "response.output_text.delta",
                "response.output_text.delta",
                "response.output_text.done",
                "response.content_part.done",
                "response.output_item.done",
                "response.output_item.added",
                "response.function_call_arguments.delta",
                "response.function_call_arguments.delta",
                "response.function_call_arguments.done",
                "response.output_item.done",
                "response.completed",
            ]
        );
        for (number, (_, data)) in events.iter().enumerate() {
            assert_eq!(data["sequence_number"], number as u64);
        }
        let id = &events[0].1["response"]["id"];
        assert_eq!(events[0].1["response"]["status"], "in_progress");
        assert_eq!(events[13].1["text"], "Hello");
        assert_eq!(events[6].1["text"], "Let me think.");
        assert_eq!(events[16].1["item"]["name"], "spawn");
        assert_eq!(events[16].1["item"]["namespace"], "agents");
        assert_eq!(events[16].1["item"]["call_id"], "call_a");
        assert_eq!(events[19].1["arguments"], "{\"a\":1}");
        assert_eq!(events[20].1["item"]["status"], "completed");
        let done = &events[21].1["response"];
        assert_eq!(&done["id"], id);
        assert_eq!(done["status"], "completed");
        assert_eq!(done["usage"]["total_tokens"], 12);
        let output = done["output"].as_array().unwrap();
        assert_eq!(output.len(), 3);
        for (index, item) in output.iter().enumerate() {
            assert_eq!(item["id"], events[[2, 9, 16][index]].1["item"]["id"]);
        }
    }

    #[test]
    fn an_empty_stream_still_completes_with_usage() {
        let events = stream(reply(), Vec::new());
        let names: Vec<&str> = events.iter().map(|(name, _)| name.as_str()).collect();
        assert_eq!(
            names,
            [
                "response.created",
                "response.in_progress",
                "response.completed"
            ]
        );
        assert_eq!(events[2].1["response"]["usage"]["total_tokens"], 0);
    }

    #[test]
    fn a_failure_mid_stream_is_response_failed() {
        let mut renderer = ResponsesRenderer::new("m".into(), reply());
        let mut out = BytesMut::new();
        renderer.event(Event::Text("a".into()), &mut out);
        let error = GatewayError::UpstreamStatus {
            backend: "oa".into(),
            status: 500,
            message: "boom".into(),
            kind: None,
            code: None,
            retry_after: None,
        };
        renderer.error(&error, &mut out);
        let events = events(&out);
        let (name, last) = events.last().unwrap();
        assert_eq!(name, "response.failed");
        assert_eq!(last["response"]["status"], "failed");
        assert_eq!(
            last["response"]["error"],
            json!({"code": "server_error", "message": "boom"})
        );
        assert!(!events.iter().any(|(name, _)| name == "response.completed"));
    }

    mod properties {
        use proptest::prelude::*;

        use super::*;

        /// Short pieces with what JSON escapes and multi-byte characters: every cut of
        /// a stream is tried, so its length counts twice.
        fn text() -> impl Strategy<Value = String> {
            "[a-z é😀\"\\\n\u{1}]{1,12}"
        }

        fn event() -> impl Strategy<Value = Event> {
            prop_oneof![
                text().prop_map(Event::Text),
                text().prop_map(Event::Thinking),
                (0usize..3, proptest::option::of("[a-z_]{1,8}"), text()).prop_map(
                    |(index, name, arguments)| Event::ToolCall(ToolCallDelta {
                        index,
                        id: None,
                        name,
                        arguments,
                    })
                ),
            ]
        }

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(16))]

            /// However the rendered stream is cut, an SSE reader gets the same events,
            /// each one whole JSON in order; the texts add up to what was streamed.
            #[test]
            fn cut_at_every_byte_the_events_are_the_same(
                input in proptest::collection::vec(event(), 0..8)
            ) {
                let mut renderer = ResponsesRenderer::new("m".into(), reply());
                let mut out = BytesMut::new();
                let mut text = String::new();
                for event in input {
                    if let Event::Text(piece) = &event {
                        text.push_str(piece);
                    }
                    renderer.event(event, &mut out);
                }
                renderer.end(&mut out);
                let whole = events(&out);
                for (number, (_, data)) in whole.iter().enumerate() {
                    prop_assert_eq!(&data["sequence_number"], &json!(number));
                }
                let streamed: String = whole
                    .iter()
                    .filter(|(name, _)| name == "response.output_text.delta")
                    .map(|(_, data)| data["delta"].as_str().unwrap().to_owned())
                    .collect();
                prop_assert_eq!(&streamed, &text);
                prop_assert_eq!(whole.last().map(|(n, _)| n.as_str()), Some("response.completed"));
                // Cut anywhere, the same events come out, byte for byte.
                let raw = |pieces: [&[u8]; 2]| {
                    let mut cutter = EventCutter::default();
                    let mut seen = Vec::new();
                    for piece in pieces {
                        cutter.push(piece);
                        while let Some(event) = cutter.next_event() {
                            seen.push(event);
                        }
                    }
                    (seen, cutter.finish())
                };
                let (all, rest) = raw([&out[..], &[]]);
                prop_assert!(rest.is_none());
                prop_assert_eq!(all.len(), whole.len());
                for cut in 0..=out.len() {
                    let (seen, rest) = raw([&out[..cut], &out[cut..]]);
                    prop_assert!(rest.is_none());
                    prop_assert_eq!(&seen, &all);
                }
            }
        }
    }
}

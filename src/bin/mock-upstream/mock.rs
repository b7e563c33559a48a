//! A mock upstream that speaks OpenAI's `/v1`, Anthropic's `/v1/messages` and Ollama's
//! `/api`, for tests, client suites and benchmarks. The model name picks the behaviour,
//! so one server plays every part:
//!
//! | name contains | behaviour |
//! |---|---|
//! | `tool`        | calls `get_weather` with `{"city":"Tokyo"}` (OpenAI: arguments in 3 fragments) |
//! | `think`       | reasons first (`reasoning_content` / `thinking`), then answers |
//! | `length`      | stops with finish reason `length` |
//! | `statusNNN`   | answers HTTP NNN with an error body in its dialect (and a `location` for 3xx) |
//! | `errstream`   | one piece, then an in-stream error |
//! | `truncate`    | one piece, then the body ends with no finish |
//! | `garbage`     | 200 with bytes that are not the protocol |
//! | `hang`        | waits 60 s before any header |
//! | `delay`       | waits 200 ms before any header |
//! | `stall`       | one piece, then 60 s of silence |
//! | `slow`        | 50 pieces, 100 ms apart (for cancellation) |
//! | `chunksN`     | N pieces of text (`w0 `, `w1 ` ...) instead of the default 5 |
//! | `gapN`        | N ms between pieces |
//! | `bytesN`      | about N bytes of prose and code (newlines, quotes, non-ASCII) in pieces of ~40 bytes: a long answer |
//! | `agent`       | chat (OpenAI, Ollama, Anthropic): plays one tool round trip for a real agent. Until a tool result is in the history it calls the tool that the last `mock-call NAME {JSON}` line of the user's messages names, with those arguments; then it answers `MOCK-FINAL (tool said: RESULT)` with the last tool result |
//!
//! Otherwise it streams `Hello from the mock 🦀` in five pieces with usage 7 + 5.
//!
//! The upstream key picks a refusal, before any of the above, on every chat, generate
//! and embeddings route (the request is recorded first, so tests see which key came):
//!
//! | `Authorization: Bearer ...` | answer |
//! |---|---|
//! | `bad-key`       | 401, an invalid-key error |
//! | `forbidden-key` | 403 |
//! | `busy-key`      | 429 with `Retry-After: 1` |
//! | `busy-nohint-key` | 429 with no `Retry-After` |
//!
//! Any other key, or none, is accepted.
//! Every request is recorded (path, headers, body) and served at `GET /_requests`
//! (unless started with `--no-record`).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use actix_web::{web, App, HttpRequest, HttpResponse, HttpServer};
use bytes::Bytes;
use serde_json::{json, Value};

/// The default answer, cut into the pieces it is streamed in.
pub const PIECES: [&str; 5] = ["Hello", " from", " the", " mock", " 🦀"];
/// Prompt tokens the mock reports.
pub const PROMPT_TOKENS: u64 = 7;

/// One request as the mock received it.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Recorded {
    pub path: String,
    pub headers: BTreeMap<String, String>,
    pub body: Value,
}

/// What the mock has seen.
#[derive(Default)]
pub struct MockState {
    pub requests: Mutex<Vec<Recorded>>,
    /// Streams the client dropped before they ended.
    pub cancelled: AtomicUsize,
    /// TCP connections accepted: tells whether callers reuse their connections.
    pub connections: AtomicUsize,
    /// Streams being sent now, and the most there ever were at once.
    pub streaming: AtomicUsize,
    pub peak_streaming: AtomicUsize,
    /// Whether requests are kept for `requests`; off for load runs, where the list
    /// would grow by millions.
    pub recording: bool,
}

impl MockState {
    /// The recorded requests whose body names this model.
    pub fn requests_for(&self, model: &str) -> Vec<Recorded> {
        self.requests
            .lock()
            .map(|r| {
                r.iter()
                    .filter(|r| r.body.get("model").and_then(Value::as_str) == Some(model))
                    .cloned()
                    .collect()
            })
            .unwrap_or_default()
    }
}

/// Starts the mock on `listen` with one worker, keeping each request it receives when
/// `recording`; returns the server, its address and state.
pub fn start(
    listen: &str,
    recording: bool,
) -> std::io::Result<(actix_web::dev::Server, SocketAddr, Arc<MockState>)> {
    let state = Arc::new(MockState {
        recording,
        ..MockState::default()
    });
    let data = web::Data::from(state.clone());
    let counted = state.clone();
    let server = HttpServer::new(move || {
        App::new()
            .app_data(data.clone())
            .app_data(web::PayloadConfig::new(64 * 1024 * 1024))
            .route("/v1/chat/completions", web::post().to(openai_chat))
            .route("/v1/messages", web::post().to(anthropic_messages))
            .route("/v1/messages/count_tokens", web::post().to(anthropic_count))
            .route("/v1/models", web::get().to(openai_models))
            .route("/api/chat", web::post().to(ollama_chat))
            .route("/api/tags", web::get().to(ollama_tags))
            .route("/v1/completions", web::post().to(openai_chat))
            .route("/api/generate", web::post().to(ollama_chat))
            .route("/v1/embeddings", web::post().to(openai_embeddings))
            .route("/api/embed", web::post().to(ollama_embed))
            .route("/api/show", web::post().to(ollama_show))
            .route("/api/ps", web::get().to(ollama_ps))
            .route("/_requests", web::get().to(recorded))
    })
    .on_connect(move |_, _| {
        counted.connections.fetch_add(1, Ordering::SeqCst);
    })
    .workers(1)
    // Streams are many small writes, as a model server's are (Go's net package, under
    // Ollama, turns Nagle's algorithm off on every connection).
    .tcp_nodelay(true)
    .disable_signals()
    .bind(listen)?;
    let address = server.addrs()[0];
    Ok((server.run(), address, state))
}

fn record(state: &MockState, request: &HttpRequest, body: &Value) {
    if !state.recording {
        return;
    }
    let headers = request
        .headers()
        .iter()
        .map(|(name, value)| {
            (
                name.as_str().to_owned(),
                value.to_str().unwrap_or("").to_owned(),
            )
        })
        .collect();
    if let Ok(mut requests) = state.requests.lock() {
        requests.push(Recorded {
            path: request.path().to_owned(),
            headers,
            body: body.clone(),
        });
    }
}

/// `GET /_requests[?model=NAME]`: what was received, optionally for one model.
async fn recorded(
    query: web::Query<BTreeMap<String, String>>,
    state: web::Data<MockState>,
) -> HttpResponse {
    let requests = match query.get("model") {
        Some(model) => state.requests_for(model),
        None => state.requests.lock().map(|r| r.clone()).unwrap_or_default(),
    };
    HttpResponse::Ok().json(requests)
}

/// The behaviour a model name asks for.
struct Script {
    pieces: Vec<String>,
    thinking: Vec<&'static str>,
    /// The tool call to make instead of text: its name and JSON arguments.
    tool: Option<(String, String)>,
    finish: &'static str,
    status: Option<u16>,
    errstream: bool,
    truncate: bool,
    garbage: bool,
    hang: bool,
    delay: bool,
    stall: bool,
    gap: Option<Duration>,
}

impl Script {
    fn of(model: &str) -> Script {
        let count = model.split("chunks").nth(1).and_then(|rest| {
            rest.chars()
                .take_while(char::is_ascii_digit)
                .collect::<String>()
                .parse()
                .ok()
        });
        let slow = model.contains("slow");
        let gap = model
            .split("gap")
            .nth(1)
            .and_then(|rest| {
                rest.chars()
                    .take_while(char::is_ascii_digit)
                    .collect::<String>()
                    .parse()
                    .ok()
            })
            .map(Duration::from_millis);
        let bytes = model.split("bytes").nth(1).and_then(|rest| {
            rest.chars()
                .take_while(char::is_ascii_digit)
                .collect::<String>()
                .parse()
                .ok()
        });
        let pieces: Vec<String> = match (count, bytes) {
            (_, Some(n)) => long_answer(n),
            (Some(n), None) => (0..n).map(|i| format!("w{i} ")).collect(),
            (None, None) if slow => (0..50).map(|i| format!("s{i} ")).collect(),
            (None, None) => PIECES.iter().map(|p| (*p).to_owned()).collect(),
        };
        let status = model
            .split("status")
            .nth(1)
            .and_then(|rest| rest.get(..3))
            .and_then(|code| code.parse().ok());
        Script {
            pieces,
            thinking: if model.contains("think") {
                vec!["Let me", " think."]
            } else {
                vec![]
            },
            tool: model
                .contains("tool")
                .then(|| ("get_weather".to_owned(), "{\"city\":\"Tokyo\"}".to_owned())),
            finish: if model.contains("length") {
                "length"
            } else {
                "stop"
            },
            status,
            errstream: model.contains("errstream"),
            truncate: model.contains("truncate"),
            garbage: model.contains("garbage"),
            hang: model.contains("hang"),
            delay: model.contains("delay"),
            stall: model.contains("stall"),
            gap: gap.or(slow.then(|| Duration::from_millis(100))),
        }
    }
}

impl Script {
    /// The `agent` behaviour: a tool call named by the user, then an answer quoting its
    /// result, so a real agent's whole loop (call, run the tool, send the result back)
    /// can be checked end to end, and without looping, since the second turn ends it.
    fn play_agent(&mut self, body: &Value) {
        let messages = body["messages"]
            .as_array()
            .map(Vec::as_slice)
            .unwrap_or(&[]);
        // A `tool` message (OpenAI, Ollama) or a `tool_result` block (Anthropic).
        let result = messages.iter().rev().find_map(|message| {
            if message["role"] == "tool" {
                return Some(text_of(&message["content"]));
            }
            message["content"]
                .as_array()?
                .iter()
                .find(|block| block["type"] == "tool_result")
                .map(|block| text_of(&block["content"]))
        });
        if let Some(result) = result {
            self.tool = None;
            self.pieces = vec![
                "MOCK-FINAL".to_owned(),
                " (tool said: ".to_owned(),
                result.trim().to_owned(),
                ")".to_owned(),
            ];
            return;
        }
        self.tool = messages
            .iter()
            .filter(|message| message["role"] == "user")
            .flat_map(|message| {
                text_of(&message["content"])
                    .lines()
                    .filter_map(|line| {
                        let rest = line.split("mock-call ").nth(1)?;
                        let (name, arguments) = rest.trim().split_once(' ')?;
                        Some((name.to_owned(), arguments.trim().to_owned()))
                    })
                    .collect::<Vec<_>>()
            })
            .last();
    }
}

/// The text of a chat message's `content`: a string, or the `text` of its parts.
fn text_of(content: &Value) -> String {
    match content {
        Value::String(text) => text.clone(),
        Value::Array(parts) => parts
            .iter()
            .filter_map(|part| part["text"].as_str())
            .collect::<Vec<_>>()
            .join("\n"),
        _ => String::new(),
    }
}

/// About `size` bytes of what a model writes when it answers at length (prose, then code
/// with quotes, backslashes and newlines, and some non-ASCII), cut into pieces of about
/// 40 bytes as a model server streams them. Long answers are where decoding and
/// re-encoding JSON strings costs per byte, so the text has the escapes real ones have.
fn long_answer(size: usize) -> Vec<String> {
    const LINES: [&str; 6] = [
        "The function reads the whole file first, then splits it on blank lines — each block is one record.\n",
        "```rust\nlet path = std::path::Path::new(\"config/switchyard.toml\");\n",
        "if line.ends_with('\\\\') {\n    continued.push_str(&line[..line.len() - 1]);\n}\n```\n",
        "Note: «naïve» parsers treat \"\\t\" as a tab; this one keeps it as written.\n",
        "- step 1: run `cargo test --test gateway` and check the output;\n",
        "\t{\"name\": \"get_weather\", \"arguments\": {\"city\": \"Tokyo\"}}\n",
    ];
    let mut text = String::with_capacity(size + 128);
    let mut line = 0;
    while text.len() < size {
        text.push_str(LINES[line % LINES.len()]);
        line += 1;
    }
    let mut pieces = Vec::with_capacity(text.len() / 40 + 1);
    let mut rest = text.as_str();
    while !rest.is_empty() {
        let mut cut = rest.len().min(40);
        while !rest.is_char_boundary(cut) {
            cut += 1;
        }
        pieces.push(rest[..cut].to_owned());
        rest = &rest[cut..];
    }
    pieces
}

/// Counts a stream as cancelled if it is dropped before its end.
struct CancelWatch {
    state: Arc<MockState>,
    finished: bool,
}

impl CancelWatch {
    fn new(state: Arc<MockState>) -> CancelWatch {
        let now = state.streaming.fetch_add(1, Ordering::SeqCst) + 1;
        state.peak_streaming.fetch_max(now, Ordering::SeqCst);
        CancelWatch {
            state,
            finished: false,
        }
    }
}

impl Drop for CancelWatch {
    fn drop(&mut self) {
        self.state.streaming.fetch_sub(1, Ordering::SeqCst);
        if !self.finished {
            self.state.cancelled.fetch_add(1, Ordering::SeqCst);
        }
    }
}

/// What every chat handler does first: record the request, read the model's script,
/// and wait as long as it says.
async fn begin(request: &HttpRequest, body: &[u8], state: &MockState) -> (Value, String, Script) {
    let body: Value = serde_json::from_slice(body).unwrap_or(Value::Null);
    record(state, request, &body);
    let model = body["model"].as_str().unwrap_or("").to_owned();
    let script = Script::of(&model);
    if script.hang {
        tokio::time::sleep(Duration::from_secs(60)).await;
    }
    if script.delay {
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    (body, model, script)
}

/// The refusal a refused upstream key gets (see the module's table), in OpenAI's error
/// shape, which Ollama's clients read as well (`error` is there in both).
fn key_refusal(request: &HttpRequest) -> Option<HttpResponse> {
    let key = request
        .headers()
        .get("authorization")
        .and_then(|value| value.to_str().ok())?
        .strip_prefix("Bearer ")?;
    let (status, retry_after, message) = match key {
        "bad-key" => (401, None, "Incorrect API key provided"),
        "forbidden-key" => (403, None, "this key may not use this model"),
        "busy-key" => (429, Some("1"), "Rate limit reached"),
        "busy-nohint-key" => (429, None, "Rate limit reached"),
        _ => return None,
    };
    let mut response =
        HttpResponse::build(actix_web::http::StatusCode::from_u16(status).unwrap_or_default());
    if let Some(secs) = retry_after {
        response.insert_header(("retry-after", secs));
    }
    Some(response.json(json!({
        "error": {"message": message, "type": "invalid_request_error", "param": null, "code": status}
    })))
}

/// An error status with a back-off hint and a body in the caller's dialect.
fn refuse(status: u16, body: Value) -> HttpResponse {
    let mut response =
        HttpResponse::build(actix_web::http::StatusCode::from_u16(status).unwrap_or_default());
    response.insert_header(("retry-after", "7"));
    if (300..400).contains(&status) {
        response.insert_header(("location", "http://mock:secret@127.0.0.1:9/elsewhere"));
    }
    response.json(body)
}

/// `POST /v1/messages/count_tokens`: 42 for any request (a `nocount` model: 404, as
/// servers that speak only `/v1/messages` answer; `statusNNN` that status).
async fn anthropic_count(
    request: HttpRequest,
    body: web::Bytes,
    state: web::Data<MockState>,
) -> HttpResponse {
    let (_, model, script) = begin(&request, &body, &state).await;
    if let Some(status) = script.status {
        return refuse(
            status,
            json!({"type": "error", "error": {"type": "authentication_error", "message": format!("mock refused with {status}")}}),
        );
    }
    if model.contains("nocount") {
        return HttpResponse::NotFound().json(json!({"type": "error", "error": {"type": "not_found_error", "message": "no such route"}}));
    }
    HttpResponse::Ok().json(json!({"input_tokens": 42}))
}

/// `POST /v1/messages`: Anthropic's Messages API, whole or as its named SSE events.
async fn anthropic_messages(
    request: HttpRequest,
    body: web::Bytes,
    state: web::Data<MockState>,
) -> HttpResponse {
    let (body, model, mut script) = begin(&request, &body, &state).await;
    if model.contains("agent") {
        script.play_agent(&body);
    }
    if let Some(status) = script.status {
        let kind = match status {
            429 => "rate_limit_error",
            529 => "overloaded_error",
            400..=499 => "invalid_request_error",
            _ => "api_error",
        };
        return refuse(
            status,
            json!({"type": "error", "error": {"type": kind, "message": format!("mock refused with {status}")}}),
        );
    }
    if script.garbage {
        return HttpResponse::Ok()
            .content_type("text/event-stream")
            .body("this is not SSE at all {{{\n\n");
    }
    let stream = body["stream"].as_bool().unwrap_or(false);
    let output_tokens = script.pieces.len() as u64;
    let stop_reason = if script.tool.is_some() {
        "tool_use"
    } else if script.finish == "length" {
        "max_tokens"
    } else {
        "end_turn"
    };
    let (tool_name, tool_arguments) = script.tool.clone().unwrap_or_default();
    let tool = json!({"type": "tool_use", "id": "toolu_mock1", "name": tool_name, "input": {}});
    if !stream {
        if script.errstream {
            return HttpResponse::InternalServerError().json(json!({"type": "error", "error": {"type": "api_error", "message": "mock failed mid-stream"}}));
        }
        let mut content = Vec::new();
        if !script.thinking.is_empty() {
            content.push(json!({"type": "thinking", "thinking": script.thinking.concat(), "signature": "bW9jaw=="}));
        }
        if script.tool.is_some() {
            let mut call = tool;
            call["input"] = serde_json::from_str(&tool_arguments).unwrap_or(Value::Null);
            content.push(call);
        } else {
            content.push(json!({"type": "text", "text": script.pieces.concat()}));
        }
        return HttpResponse::Ok().json(json!({
            "id": "msg_mock", "type": "message", "role": "assistant", "model": model, "content": content,
            "stop_reason": stop_reason, "stop_sequence": null,
            "usage": {"input_tokens": PROMPT_TOKENS, "output_tokens": output_tokens},
        }));
    }
    let event = |data: Value| {
        let name = data["type"].as_str().unwrap_or("").to_owned();
        Bytes::from(format!("event: {name}\ndata: {data}\n\n"))
    };
    let mut events = vec![event(json!({"type": "message_start", "message": {
        "id": "msg_mock", "type": "message", "role": "assistant", "model": model, "content": [],
        "stop_reason": null, "stop_sequence": null, "usage": {"input_tokens": PROMPT_TOKENS, "output_tokens": 1}}}))];
    let mut index = 0;
    if !script.thinking.is_empty() {
        events.push(event(json!({"type": "content_block_start", "index": index, "content_block": {"type": "thinking", "thinking": "", "signature": ""}})));
        for piece in &script.thinking {
            events.push(event(json!({"type": "content_block_delta", "index": index, "delta": {"type": "thinking_delta", "thinking": piece}})));
        }
        events.push(event(json!({"type": "content_block_delta", "index": index, "delta": {"type": "signature_delta", "signature": "bW9jaw=="}})));
        events.push(event(json!({"type": "content_block_stop", "index": index})));
        index += 1;
    }
    if script.tool.is_some() {
        events.push(event(
            json!({"type": "content_block_start", "index": index, "content_block": tool}),
        ));
        let mut middle = tool_arguments.len() / 2;
        while !tool_arguments.is_char_boundary(middle) {
            middle += 1;
        }
        let (first, second) = tool_arguments.split_at(middle);
        for fragment in [first, second] {
            events.push(event(json!({"type": "content_block_delta", "index": index, "delta": {"type": "input_json_delta", "partial_json": fragment}})));
        }
    } else {
        events.push(event(json!({"type": "content_block_start", "index": index, "content_block": {"type": "text", "text": ""}})));
        for piece in &script.pieces {
            events.push(event(json!({"type": "content_block_delta", "index": index, "delta": {"type": "text_delta", "text": piece}})));
        }
    }
    if script.errstream || script.truncate {
        events.truncate(3);
        if script.errstream {
            events.push(event(json!({"type": "error", "error": {"type": "overloaded_error", "message": "mock failed mid-stream"}})));
        }
    } else {
        events.push(event(json!({"type": "content_block_stop", "index": index})));
        events.push(event(json!({"type": "message_delta", "delta": {"stop_reason": stop_reason, "stop_sequence": null}, "usage": {"output_tokens": output_tokens}})));
        events.push(event(json!({"type": "message_stop"})));
    }
    stream_response(state.into_inner(), "text/event-stream", events, &script)
}

async fn openai_chat(
    request: HttpRequest,
    body: web::Bytes,
    state: web::Data<MockState>,
) -> HttpResponse {
    let (body, model, mut script) = begin(&request, &body, &state).await;
    if model.contains("agent") {
        script.play_agent(&body);
    }
    if let Some(refusal) = key_refusal(&request) {
        return refusal;
    }
    if let Some(status) = script.status {
        return refuse(
            status,
            json!({
                "error": {"message": format!("mock refused with {status}"), "type": "mock_error", "param": null, "code": status}
            }),
        );
    }
    if script.garbage {
        return HttpResponse::Ok()
            .content_type("text/event-stream")
            .body("this is not SSE at all {{{\n\n");
    }
    let stream = body["stream"].as_bool().unwrap_or(false);
    let include_usage = body["stream_options"]["include_usage"]
        .as_bool()
        .unwrap_or(false);
    let completion_tokens = script.pieces.len() as u64;
    let usage = json!({"prompt_tokens": PROMPT_TOKENS, "completion_tokens": completion_tokens, "total_tokens": PROMPT_TOKENS + completion_tokens});
    let (tool_name, tool_arguments) = script.tool.clone().unwrap_or_default();
    let tool_call = |index_only: bool, args: &str| {
        if index_only {
            json!({"index": 0, "function": {"arguments": args}})
        } else {
            json!({"index": 0, "id": "call_mock1", "type": "function", "function": {"name": tool_name, "arguments": args}})
        }
    };
    if !stream && script.truncate {
        // The whole answer cut off halfway.
        return HttpResponse::Ok()
            .content_type("application/json")
            .body("{\"id\":\"chatcmpl-mock\",\"choices\":[{\"index\":0,");
    }
    if !stream && script.errstream {
        return HttpResponse::InternalServerError().json(json!({"error": {"message": "mock failed mid-stream", "type": "server_error", "code": 500}}));
    }
    if !stream {
        let mut message = json!({"role": "assistant", "content": if script.tool.is_some() { Value::Null } else { Value::from(script.pieces.concat()) }});
        if !script.thinking.is_empty() {
            message["reasoning_content"] = Value::from(script.thinking.concat());
        }
        if script.tool.is_some() {
            message["tool_calls"] = json!([{"id": "call_mock1", "type": "function", "function": {"name": tool_name, "arguments": tool_arguments}}]);
        }
        return HttpResponse::Ok().json(json!({
            "id": "chatcmpl-mock", "object": "chat.completion", "created": 1_700_000_000, "model": model,
            "choices": [{"index": 0, "message": message, "finish_reason": if script.tool.is_some() { "tool_calls" } else { script.finish }}],
            "usage": usage,
        }));
    }
    let legacy = request.path() == "/v1/completions";
    let chunk = |delta: Value, finish: Option<&str>| {
        let choice = if legacy {
            json!({"index": 0, "text": delta.get("content").and_then(Value::as_str).unwrap_or(""), "finish_reason": finish})
        } else {
            json!({"index": 0, "delta": delta, "finish_reason": finish})
        };
        let value = json!({"id": "chatcmpl-mock", "object": "chat.completion.chunk", "created": 1_700_000_000, "model": model,
            "choices": [choice]});
        Bytes::from(format!("data: {value}\n\n"))
    };
    let mut events: Vec<Bytes> = vec![chunk(json!({"role": "assistant", "content": null}), None)];
    for piece in &script.thinking {
        events.push(chunk(json!({"reasoning_content": piece}), None));
    }
    if script.tool.is_some() {
        // The arguments in two fragments, cut at the middle (`{"city":` + `"Tokyo"}`).
        let mut middle = tool_arguments.len() / 2;
        while !tool_arguments.is_char_boundary(middle) {
            middle += 1;
        }
        let (first, second) = tool_arguments.split_at(middle);
        events.push(chunk(json!({"tool_calls": [tool_call(false, "")]}), None));
        events.push(chunk(json!({"tool_calls": [tool_call(true, first)]}), None));
        events.push(chunk(
            json!({"tool_calls": [tool_call(true, second)]}),
            None,
        ));
    } else {
        for piece in &script.pieces {
            events.push(chunk(json!({"content": piece}), None));
        }
    }
    let tail: Vec<Bytes> = if script.errstream {
        events.truncate(2);
        vec![Bytes::from("data: {\"error\":{\"code\":500,\"message\":\"mock failed mid-stream\",\"type\":\"server_error\"}}\n\n")]
    } else if script.truncate {
        events.truncate(2);
        vec![]
    } else {
        let mut tail = vec![chunk(
            json!({}),
            Some(if script.tool.is_some() {
                "tool_calls"
            } else {
                script.finish
            }),
        )];
        if include_usage {
            let value = json!({"id": "chatcmpl-mock", "object": "chat.completion.chunk", "created": 1_700_000_000, "model": model, "choices": [], "usage": usage,
                "timings": {"prompt_n": PROMPT_TOKENS, "prompt_ms": 1.5, "predicted_n": completion_tokens, "predicted_ms": 2.5}});
            tail.push(Bytes::from(format!("data: {value}\n\n")));
        }
        tail.push(Bytes::from_static(b"data: [DONE]\n\n"));
        tail
    };
    events.extend(tail);
    stream_response(state.into_inner(), "text/event-stream", events, &script)
}

fn stream_response(
    state: Arc<MockState>,
    content_type: &str,
    events: Vec<Bytes>,
    script: &Script,
) -> HttpResponse {
    let gap = script.gap;
    let stall = script.stall;
    let body = async_stream::stream! {
        let mut watch = CancelWatch::new(state);
        for (index, event) in events.into_iter().enumerate() {
            if stall && index == 2 {
                tokio::time::sleep(Duration::from_secs(60)).await;
            }
            if let Some(gap) = gap {
                tokio::time::sleep(gap).await;
            }
            yield Ok::<_, actix_web::Error>(event);
        }
        watch.finished = true;
    };
    HttpResponse::Ok()
        .content_type(content_type.to_owned())
        .streaming(body)
}

async fn ollama_chat(
    request: HttpRequest,
    body: web::Bytes,
    state: web::Data<MockState>,
) -> HttpResponse {
    let (body, model, mut script) = begin(&request, &body, &state).await;
    if model.contains("agent") {
        script.play_agent(&body);
    }
    if let Some(refusal) = key_refusal(&request) {
        return refusal;
    }
    if let Some(status) = script.status {
        return refuse(
            status,
            json!({"error": format!("mock refused with {status}")}),
        );
    }
    if script.garbage {
        return HttpResponse::Ok()
            .content_type("application/x-ndjson")
            .body("<html>not json</html>\n");
    }
    let stream = body["stream"].as_bool().unwrap_or(true);
    let completion_tokens = script.pieces.len() as u64;
    let generate = request.path() == "/api/generate";
    let line = |message: Value, done: bool| {
        let mut value = if generate {
            let mut value = json!({"model": model, "created_at": "2025-07-07T20:22:19.101Z", "response": message["content"], "done": done});
            if let Some(thinking) = message.get("thinking") {
                value["thinking"] = thinking.clone();
            }
            value
        } else {
            json!({"model": model, "created_at": "2025-07-07T20:22:19.101Z", "message": message, "done": done})
        };
        if done {
            let extra = json!({"done_reason": script.finish, "total_duration": 5_000_000u64, "load_duration": 1_000_000u64,
                "prompt_eval_count": PROMPT_TOKENS, "prompt_eval_duration": 1_500_000u64, "eval_count": completion_tokens, "eval_duration": 2_500_000u64});
            if let (Some(target), Some(extra)) = (value.as_object_mut(), extra.as_object()) {
                target.extend(extra.clone());
            }
        }
        value
    };
    // Ollama's arguments are an object, not a string.
    let (tool_name, tool_arguments) = script.tool.clone().unwrap_or_default();
    let tool_arguments: Value = serde_json::from_str(&tool_arguments).unwrap_or(Value::Null);
    let tool_calls = json!([{"id": "call_mock1", "function": {"index": 0, "name": tool_name, "arguments": tool_arguments}}]);
    if !stream && script.truncate {
        return HttpResponse::Ok()
            .content_type("application/json")
            .body("{\"model\":\"m\",\"message\":{\"role\":");
    }
    if !stream && script.errstream {
        return HttpResponse::InternalServerError()
            .json(json!({"error": "mock failed mid-stream"}));
    }
    if !stream {
        let mut message = json!({"role": "assistant", "content": if script.tool.is_some() { String::new() } else { script.pieces.concat() }});
        if !script.thinking.is_empty() {
            message["thinking"] = Value::from(script.thinking.concat());
        }
        if script.tool.is_some() {
            message["tool_calls"] = tool_calls;
        }
        return HttpResponse::Ok().json(line(message, true));
    }
    let to_bytes = |value: Value| Bytes::from(format!("{value}\n"));
    let mut events = Vec::new();
    for piece in &script.thinking {
        events.push(to_bytes(line(
            json!({"role": "assistant", "content": "", "thinking": piece}),
            false,
        )));
    }
    if script.tool.is_some() {
        events.push(to_bytes(line(
            json!({"role": "assistant", "content": "", "tool_calls": tool_calls}),
            false,
        )));
    } else {
        for piece in &script.pieces {
            events.push(to_bytes(line(
                json!({"role": "assistant", "content": piece}),
                false,
            )));
        }
    }
    if script.errstream {
        events.truncate(1);
        events.push(Bytes::from_static(
            b"{\"error\":\"mock failed mid-stream\"}\n",
        ));
    } else if script.truncate {
        events.truncate(1);
    } else {
        events.push(to_bytes(line(
            json!({"role": "assistant", "content": ""}),
            true,
        )));
    }
    stream_response(state.into_inner(), "application/x-ndjson", events, &script)
}

async fn openai_models() -> HttpResponse {
    HttpResponse::Ok().json(json!({"object": "list", "data": [
        {"id": "mock-model", "object": "model", "created": 1_700_000_000, "owned_by": "mock"}
    ]}))
}

async fn ollama_tags() -> HttpResponse {
    HttpResponse::Ok().json(json!({"models": [{
        "name": "mock-model:latest", "model": "mock-model:latest",
        "modified_at": "2025-05-04T17:37:44.706015396-07:00", "size": 2_019_393_189u64,
        "digest": "a80c4f17acd55265feec403c7aef86be0c25983ab279d83f3bcd3abbcb5b8b72",
        "details": {"parent_model": "", "format": "gguf", "family": "llama", "families": ["llama"],
                    "parameter_size": "3.2B", "quantization_level": "Q4_K_M"}
    }]}))
}

/// A vector per input: its length, its first byte and 1, so tests can tell them apart.
fn mock_vector(input: &str) -> Vec<f64> {
    vec![
        input.len() as f64,
        f64::from(input.bytes().next().unwrap_or(0)),
        1.0,
    ]
}

fn inputs(body: &Value) -> Vec<String> {
    match &body["input"] {
        Value::String(text) => vec![text.clone()],
        Value::Array(items) => items
            .iter()
            .map(|i| i.as_str().unwrap_or("").to_owned())
            .collect(),
        _ => Vec::new(),
    }
}

async fn openai_embeddings(
    request: HttpRequest,
    body: web::Bytes,
    state: web::Data<MockState>,
) -> HttpResponse {
    let body: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    record(&state, &request, &body);
    if let Some(refusal) = key_refusal(&request) {
        return refusal;
    }
    let inputs = inputs(&body);
    // Answer out of order: clients must sort by index.
    let data: Vec<Value> = inputs
        .iter()
        .enumerate()
        .rev()
        .map(|(index, input)| json!({"object": "embedding", "index": index, "embedding": mock_vector(input)}))
        .collect();
    HttpResponse::Ok().json(
        json!({"object": "list", "data": data, "model": body["model"],
        "usage": {"prompt_tokens": inputs.len(), "total_tokens": inputs.len()}}),
    )
}

async fn ollama_embed(
    request: HttpRequest,
    body: web::Bytes,
    state: web::Data<MockState>,
) -> HttpResponse {
    let body: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    record(&state, &request, &body);
    if let Some(refusal) = key_refusal(&request) {
        return refusal;
    }
    let inputs = inputs(&body);
    let embeddings: Vec<Vec<f64>> = inputs.iter().map(|i| mock_vector(i)).collect();
    HttpResponse::Ok().json(json!({"model": body["model"], "embeddings": embeddings,
        "total_duration": 1000, "load_duration": 10, "prompt_eval_count": inputs.len()}))
}

async fn ollama_show(
    request: HttpRequest,
    body: web::Bytes,
    state: web::Data<MockState>,
) -> HttpResponse {
    let body: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    record(&state, &request, &body);
    if body["model"]
        .as_str()
        .is_some_and(|m| m.contains("status404"))
    {
        return HttpResponse::NotFound().json(
            json!({"error": format!("model '{}' not found", body["model"].as_str().unwrap_or(""))}),
        );
    }
    HttpResponse::Ok().json(json!({
        "modelfile": "FROM mock", "parameters": "temperature 0.7", "template": "{{ .Prompt }}",
        "details": {"parent_model": "", "format": "gguf", "family": "llama", "families": ["llama"],
                    "parameter_size": "3.2B", "quantization_level": "Q4_K_M"},
        "model_info": {"general.architecture": "llama", "llama.context_length": 8192},
        "capabilities": ["completion", "tools"],
        "modified_at": "2025-05-04T17:37:44.706015396-07:00"
    }))
}

async fn ollama_ps() -> HttpResponse {
    HttpResponse::Ok().json(json!({"models": [{
        "name": "mock-model:latest", "model": "mock-model:latest", "size": 5_137_025_024u64,
        "digest": "a80c4f17acd55265feec403c7aef86be0c25983ab279d83f3bcd3abbcb5b8b72",
        "details": {"format": "gguf", "family": "llama"},
        "expires_at": "2026-12-01T20:00:00Z", "size_vram": 5_137_025_024u64, "context_length": 4096
    }]}))
}

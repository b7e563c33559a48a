//! The Anthropic Messages dialect (`/v1/messages`) against every backend kind: text,
//! streams, tools both ways, thinking, images, parameters reaching the upstream, every
//! error in Anthropic's shape, failures mid-stream, cancellation, `Server-Timing`, keys,
//! `count_tokens`, listings, and what Claude Code really sends.

use std::time::Duration;

use futures::StreamExt;
use serde_json::{json, Value};

use crate::harness::{self, client, mock, send, Answer, Harness};

const PROMPT: &str = "Hello from the mock 🦀";

/// (model as the client names it, the upstream's name for it, prompt and completion
/// tokens).
fn backends() -> [(&'static str, Option<&'static str>, u64, u64); 3] {
    [
        ("oa/mock-model", Some("mock-model"), mock::PROMPT_TOKENS, 5),
        ("ol/mock-model", Some("mock-model"), mock::PROMPT_TOKENS, 5),
        ("echo", None, 5, 5),
    ]
}

/// Posts to `path` as Claude Code does: `anthropic-version`, `anthropic-beta`, an
/// `x-api-key`, and `accept: application/json` even for a stream.
async fn post(gateway: &Harness, path: &str, body: &Value) -> Answer {
    let request = client()
        .post(format!("{}{path}", gateway.base))
        .insert_header(("anthropic-version", "2023-06-01"))
        .insert_header((
            "anthropic-beta",
            "claude-code-20250219,interleaved-thinking-2025-05-14",
        ))
        .insert_header(("x-api-key", "anything"))
        .insert_header(("accept", "application/json"));
    send(request, Some(&body.to_string())).await
}

fn messages(model: &str, stream: bool, content: Value) -> Value {
    json!({"model": model, "max_tokens": 1024, "stream": stream,
           "messages": [{"role": "user", "content": content}]})
}

/// The named events of an Anthropic stream, each checked to name itself in its data.
fn events(answer: &Answer) -> Vec<(String, Value)> {
    assert!(
        answer.content_type.starts_with("text/event-stream"),
        "{}: {}",
        answer.content_type,
        answer.body
    );
    answer
        .body
        .split("\n\n")
        .filter(|event| !event.is_empty())
        .map(|event| {
            let (name, data) = event
                .split_once('\n')
                .unwrap_or_else(|| panic!("not a named event: {event:?}"));
            let name = name.strip_prefix("event: ").expect("event line").to_owned();
            let data: Value = serde_json::from_str(data.strip_prefix("data: ").expect("data line"))
                .expect("JSON data");
            assert_eq!(data["type"], name.as_str(), "{event}");
            (name, data)
        })
        .collect()
}

/// What a stream says, read the way Anthropic's SDK accumulates it.
#[derive(Debug, Default)]
struct Streamed {
    names: Vec<String>,
    /// Each block's type, in order.
    blocks: Vec<String>,
    text: String,
    thinking: String,
    /// Each tool call's id, name and input.
    calls: Vec<(String, String, Value)>,
    stop_reason: Option<String>,
    usage: Option<Value>,
    message: Value,
}

fn read_stream(answer: &Answer) -> Streamed {
    assert_eq!(answer.status, 200, "{}", answer.body);
    let mut out = Streamed::default();
    let mut partial = String::new();
    let mut open = None;
    for (name, data) in events(answer) {
        match name.as_str() {
            "message_start" => out.message = data["message"].clone(),
            "content_block_start" => {
                assert_eq!(open, None, "one block open at a time");
                assert_eq!(
                    data["index"],
                    out.blocks.len(),
                    "blocks are numbered in turn"
                );
                open = Some(out.blocks.len());
                let block = &data["content_block"];
                out.blocks.push(block["type"].as_str().unwrap().to_owned());
                if block["type"] == "tool_use" {
                    assert_eq!(block["input"], json!({}));
                    out.calls.push((
                        block["id"].as_str().unwrap().to_owned(),
                        block["name"].as_str().unwrap().to_owned(),
                        Value::Null,
                    ));
                    partial.clear();
                }
            }
            "content_block_delta" => {
                assert_eq!(Some(data["index"].as_u64().unwrap() as usize), open);
                let delta = &data["delta"];
                match delta["type"].as_str().unwrap() {
                    "text_delta" => out.text.push_str(delta["text"].as_str().unwrap()),
                    "thinking_delta" => out.thinking.push_str(delta["thinking"].as_str().unwrap()),
                    "input_json_delta" => partial.push_str(delta["partial_json"].as_str().unwrap()),
                    other => panic!("unexpected delta {other}"),
                }
            }
            "content_block_stop" => {
                assert_eq!(Some(data["index"].as_u64().unwrap() as usize), open);
                if out.blocks.last().map(String::as_str) == Some("tool_use") {
                    out.calls.last_mut().unwrap().2 = serde_json::from_str(&partial).unwrap();
                }
                open = None;
            }
            "message_delta" => {
                out.stop_reason = data["delta"]["stop_reason"].as_str().map(str::to_owned);
                out.usage = Some(data["usage"].clone());
            }
            _ => {}
        }
        out.names.push(name);
    }
    out
}

/// An Anthropic error body: `{"type":"error","error":{"type","message"}}`.
fn anthropic_error(answer: &Answer) -> (String, String) {
    assert!(
        answer.content_type.starts_with("application/json"),
        "{}: {}",
        answer.content_type,
        answer.body
    );
    let body = answer.json();
    assert_eq!(body["type"], "error", "{body}");
    (
        body["error"]["type"]
            .as_str()
            .expect("error.type")
            .to_owned(),
        body["error"]["message"]
            .as_str()
            .expect("error.message")
            .to_owned(),
    )
}

#[actix_web::test]
async fn text_whole_and_streamed_from_every_backend() {
    let gateway = harness::start("").await;
    for (model, upstream, prompt_tokens, completion_tokens) in backends() {
        let answer = post(
            &gateway,
            "/v1/messages",
            &messages(model, false, json!(PROMPT)),
        )
        .await;
        assert_eq!(answer.status, 200, "{model}: {}", answer.body);
        let body = answer.json();
        assert!(body["id"].as_str().unwrap().starts_with("msg_"));
        assert_eq!(body["type"], "message");
        assert_eq!(body["role"], "assistant");
        assert_eq!(body["model"], model, "the model is named as asked");
        assert_eq!(
            body["content"],
            json!([{"type": "text", "text": PROMPT}]),
            "{model}"
        );
        assert_eq!(body["stop_reason"], "end_turn");
        assert_eq!(body["stop_sequence"], Value::Null);
        assert_eq!(
            body["usage"],
            json!({"input_tokens": prompt_tokens, "output_tokens": completion_tokens}),
            "{model}"
        );
        if let Some(upstream) = upstream {
            let seen = gateway.mock.requests_for(upstream);
            assert_eq!(seen.last().unwrap().body["stream"], false, "asked whole");
        }
        // `stream: true` with `accept: application/json` streams: the body decides. The
        // query string Claude Code adds is no part of the route.
        let answer = post(
            &gateway,
            "/v1/messages?beta=true",
            &messages(model, true, json!([{"type": "text", "text": PROMPT}])),
        )
        .await;
        assert_eq!(answer.headers.get("cache-control").unwrap(), "no-cache");
        let streamed = read_stream(&answer);
        assert_eq!(
            streamed.names.first().map(String::as_str),
            Some("message_start")
        );
        assert_eq!(
            streamed.names.last().map(String::as_str),
            Some("message_stop")
        );
        assert!(streamed.message["id"].as_str().unwrap().starts_with("msg_"));
        assert_eq!(streamed.message["model"], model);
        assert_eq!(streamed.message["content"], json!([]));
        assert_eq!(streamed.blocks, ["text"], "{model}");
        assert_eq!(streamed.text, PROMPT, "{model}");
        assert_eq!(streamed.stop_reason.as_deref(), Some("end_turn"));
        assert_eq!(
            streamed.usage,
            Some(json!({"input_tokens": prompt_tokens, "output_tokens": completion_tokens})),
            "{model}"
        );
    }
    // The length limit is `max_tokens`.
    let answer = post(
        &gateway,
        "/v1/messages",
        &messages("oa/mock-length", false, json!("x")),
    )
    .await;
    assert_eq!(answer.json()["stop_reason"], "max_tokens");
    let answer = post(
        &gateway,
        "/v1/messages",
        &messages("ol/mock-length", true, json!("x")),
    )
    .await;
    assert_eq!(
        read_stream(&answer).stop_reason.as_deref(),
        Some("max_tokens")
    );
}

fn weather_tool() -> Value {
    json!([{"name": "get_weather", "description": "Weather by city",
            "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
            "cache_control": {"type": "ephemeral"}}])
}

/// A conversation after one tool round trip: the call, its result, and a new question
/// in the same user turn.
fn round_trip(model: &str, stream: bool) -> Value {
    json!({"model": model, "max_tokens": 300, "stream": stream, "tools": weather_tool(),
    "tool_choice": {"type": "any"},
    "messages": [
        {"role": "user", "content": "Weather in Paris?"},
        {"role": "assistant", "content": [
            {"type": "text", "text": "Let me look."},
            {"type": "tool_use", "id": "toolu_01", "name": "get_weather", "input": {"city": "Paris"}}]},
        {"role": "user", "content": [
            {"type": "tool_result", "tool_use_id": "toolu_01", "content": [{"type": "text", "text": "sunny"}]},
            {"type": "text", "text": "And in Tokyo?"}]}
    ]})
}

#[actix_web::test]
async fn tool_calls_come_out_and_results_go_back_in() {
    let gateway = harness::start("").await;
    for model in ["oa/mock-tool", "ol/mock-tool"] {
        let answer = post(&gateway, "/v1/messages", &round_trip(model, false)).await;
        assert_eq!(answer.status, 200, "{model}: {}", answer.body);
        let body = answer.json();
        assert_eq!(body["stop_reason"], "tool_use", "{model}");
        assert_eq!(
            body["content"],
            json!([{"type": "tool_use", "id": "call_mock1", "name": "get_weather", "input": {"city": "Tokyo"}}]),
            "{model}: the upstream's id survives"
        );
        let streamed = read_stream(&post(&gateway, "/v1/messages", &round_trip(model, true)).await);
        assert_eq!(streamed.blocks, ["tool_use"], "{model}");
        assert_eq!(
            streamed.calls,
            [(
                "call_mock1".to_owned(),
                "get_weather".to_owned(),
                json!({"city": "Tokyo"})
            )]
        );
        assert_eq!(streamed.stop_reason.as_deref(), Some("tool_use"));
    }
    // The history reaches each upstream with the result right after the call, before
    // the turn's own text, and the call's id both ways.
    let openai = &gateway.mock.requests_for("mock-tool")[0].body;
    assert_eq!(
        openai["messages"],
        json!([
            {"role": "user", "content": "Weather in Paris?"},
            {"role": "assistant", "content": "Let me look.", "tool_calls": [
                {"id": "toolu_01", "type": "function", "function": {"name": "get_weather", "arguments": "{\"city\":\"Paris\"}"}}]},
            {"role": "tool", "content": "sunny", "tool_call_id": "toolu_01"},
            {"role": "user", "content": "And in Tokyo?"}
        ])
    );
    assert_eq!(
        openai["tools"],
        json!([{"type": "function", "function": {"name": "get_weather", "description": "Weather by city",
                "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}])
    );
    assert_eq!(openai["tool_choice"], "required");
    let ollama = gateway
        .mock
        .requests_for("mock-tool")
        .into_iter()
        .find(|seen| seen.path == "/api/chat")
        .unwrap()
        .body;
    let history = ollama["messages"].as_array().unwrap();
    assert_eq!(history.len(), 4);
    assert_eq!(
        history[1]["tool_calls"][0]["function"],
        json!({"name": "get_weather", "arguments": {"city": "Paris"}})
    );
    assert_eq!(history[2]["role"], "tool");
    assert_eq!(history[2]["tool_name"], "get_weather");
    assert_eq!(history[2]["content"], "sunny");
    assert_eq!(
        history[3],
        json!({"role": "user", "content": "And in Tokyo?"})
    );
    // Echo answers the turn's text, past the tool result.
    let answer = post(&gateway, "/v1/messages", &round_trip("echo", false)).await;
    assert_eq!(answer.json()["content"][0]["text"], "And in Tokyo?");
}

#[actix_web::test]
async fn thinking_comes_out_first_and_goes_back_in() {
    let gateway = harness::start("").await;
    for model in ["oa/mock-think", "ol/mock-think"] {
        let mut request = messages(model, false, json!("why?"));
        request["thinking"] = json!({"type": "enabled", "budget_tokens": 2048});
        request["messages"] = json!([
            {"role": "user", "content": "first"},
            {"role": "assistant", "content": [
                {"type": "thinking", "thinking": "earlier thought", "signature": "c2ln"},
                {"type": "redacted_thinking", "data": "b3BhcXVl"},
                {"type": "text", "text": "earlier answer"}]},
            {"role": "user", "content": "why?"}
        ]);
        let body = post(&gateway, "/v1/messages", &request).await.json();
        assert_eq!(
            body["content"],
            json!([{"type": "thinking", "thinking": "Let me think.", "signature": ""},
                   {"type": "text", "text": PROMPT}]),
            "{model}"
        );
        request["stream"] = json!(true);
        let streamed = read_stream(&post(&gateway, "/v1/messages", &request).await);
        assert_eq!(streamed.blocks, ["thinking", "text"], "{model}");
        assert_eq!(streamed.thinking, "Let me think.");
        assert_eq!(streamed.text, PROMPT);
    }
    for seen in gateway.mock.requests_for("mock-think") {
        let assistant = &seen.body["messages"][1];
        if seen.path == "/api/chat" {
            assert_eq!(
                seen.body["think"], "low",
                "a 2048-token budget is a low effort"
            );
            assert_eq!(assistant["thinking"], "earlier thought");
        } else {
            assert_eq!(seen.body["reasoning_effort"], "low");
            assert_eq!(assistant["reasoning_content"], "earlier thought");
        }
        assert_eq!(assistant["content"], "earlier answer");
    }
}

#[actix_web::test]
async fn images_and_parameters_reach_the_upstream() {
    let gateway = harness::start("").await;
    let request = |model: &str, url: bool| {
        let mut content = vec![
            json!({"type": "text", "text": "what is this?"}),
            json!({"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "iVBORw0KGgo="}}),
        ];
        if url {
            content.push(json!({"type": "image", "source": {"type": "url", "url": "https://example.com/cat.jpg"}}));
        }
        json!({"model": model, "max_tokens": 77, "temperature": 0.3, "top_p": 0.8, "top_k": 20,
               "stop_sequences": ["END", "STOP"], "metadata": {"user_id": "u-1"},
               "system": [{"type": "text", "text": "be brief", "cache_control": {"type": "ephemeral"}}],
               "output_config": {"effort": "high"}, "context_management": {"edits": []},
               "messages": [{"role": "user", "content": content}]})
    };
    assert_eq!(
        post(&gateway, "/v1/messages", &request("oa/mock-params", true))
            .await
            .status,
        200
    );
    let sent = &gateway.mock.requests_for("mock-params")[0].body;
    assert_eq!(sent["max_completion_tokens"], 77);
    assert_eq!(sent["temperature"], 0.3);
    assert_eq!(sent["top_p"], 0.8);
    assert_eq!(sent["top_k"], 20);
    assert_eq!(sent["stop"], json!(["END", "STOP"]));
    assert_eq!(
        sent["messages"][0],
        json!({"role": "system", "content": "be brief"})
    );
    assert_eq!(
        sent["messages"][1]["content"],
        json!([{"type": "text", "text": "what is this?"},
               {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo="}},
               {"type": "image_url", "image_url": {"url": "https://example.com/cat.jpg"}}])
    );
    for unknown in [
        "output_config",
        "context_management",
        "metadata",
        "thinking",
    ] {
        assert!(
            sent.get(unknown).is_none(),
            "{unknown} is Anthropic's own: {sent}"
        );
    }
    assert_eq!(
        post(&gateway, "/v1/messages", &request("ol/mock-params", false))
            .await
            .status,
        200
    );
    let sent = &gateway.mock.requests_for("mock-params")[1].body;
    assert_eq!(
        sent["options"],
        json!({"num_predict": 77, "temperature": 0.3, "top_p": 0.8, "top_k": 20, "stop": ["END", "STOP"]})
    );
    assert_eq!(sent["messages"][1]["images"], json!(["iVBORw0KGgo="]));
    assert_eq!(sent["messages"][1]["content"], "what is this?");
    // Echo reads past the images.
    let answer = post(&gateway, "/v1/messages", &request("echo", true)).await;
    assert_eq!(answer.json()["content"][0]["text"], "what is this?");
}

#[actix_web::test]
async fn every_error_answers_in_anthropics_shape() {
    let gateway = harness::start_with("", "response_timeout_secs = 0.5").await;
    let cases: Vec<(Value, u16, &str, &str)> = vec![
        (
            json!({"model": "echo", "messages": [{"role": "user", "content": "hi"}]}),
            400,
            "invalid_request_error",
            "max_tokens",
        ),
        (
            json!({"model": "echo", "max_tokens": 5, "messages": [{"role": "robot", "content": "hi"}]}),
            400,
            "invalid_request_error",
            "robot",
        ),
        (
            messages("oa/mock-status429", false, json!("x")),
            429,
            "rate_limit_error",
            "mock refused with 429",
        ),
        (
            messages("oa/mock-status500", false, json!("x")),
            500,
            "api_error",
            "mock refused with 500",
        ),
        (
            messages("ol/mock-status404", false, json!("x")),
            404,
            "not_found_error",
            "mock refused with 404",
        ),
        (
            messages("oa/mock-status529", false, json!("x")),
            529,
            "overloaded_error",
            "mock refused with 529",
        ),
        (
            messages("ol/mock-status503", true, json!("x")),
            503,
            "overloaded_error",
            "mock refused with 503",
        ),
        (
            messages("oa/mock-status401", false, json!("x")),
            401,
            "authentication_error",
            "mock refused with 401",
        ),
        (
            messages("oa/mock-garbage", false, json!("x")),
            502,
            "api_error",
            "invalid response",
        ),
        (
            messages("ol/mock-hang", true, json!("x")),
            504,
            "api_error",
            "timed out",
        ),
    ];
    for (body, status, kind, says) in cases {
        let answer = post(&gateway, "/v1/messages", &body).await;
        assert_eq!(answer.status, status, "{body}: {}", answer.body);
        let (got, message) = anthropic_error(&answer);
        assert_eq!(got, kind, "{body}");
        assert!(message.contains(says), "{body}: {message}");
    }
    let answer = post(
        &gateway,
        "/v1/messages",
        &messages("oa/mock-status429", true, json!("x")),
    )
    .await;
    assert_eq!(
        answer.headers.get("retry-after").unwrap(),
        "7",
        "the upstream's back-off is passed on"
    );
    let answer = gateway.post_raw("/v1/messages", "{not json").await;
    assert_eq!(answer.status, 400);
    assert_eq!(anthropic_error(&answer).0, "invalid_request_error");
    let big = messages("echo", false, json!("x".repeat(70_000)));
    let answer = post(&gateway, "/v1/messages", &big).await;
    assert_eq!(answer.status, 413);
    assert_eq!(anthropic_error(&answer).0, "request_too_large");
    let answer = post(&gateway, "/v1/messages/count_tokens", &big).await;
    assert_eq!(answer.status, 413);
    assert_eq!(anthropic_error(&answer).0, "request_too_large");
    // A wrong method or an unknown path under the scope is Anthropic's 404.
    for answer in [
        gateway.get("/v1/messages").await,
        gateway.get("/v1/messages/batches").await,
        gateway.post_raw("/v1/messages/nothing", "{}").await,
    ] {
        assert_eq!(answer.status, 404);
        assert_eq!(anthropic_error(&answer).0, "not_found_error");
    }
    // OpenAI's routes beside it are untouched.
    assert_eq!(gateway.get("/v1/models").await.json()["object"], "list");
    let beside = gateway.get("/v1/messagesx").await;
    assert_eq!(beside.status, 404);
    assert!(
        beside.json()["error"]["type"].is_string(),
        "OpenAI's: {}",
        beside.body
    );
    // Claude Code's first call: any answer will do, as long as it is one.
    let hello = send(client().head(format!("{}/api/hello", gateway.base)), None).await;
    assert_eq!(hello.status, 404);
}

#[actix_web::test]
async fn a_model_that_routes_nowhere_is_not_found() {
    let gateway = harness::start_config(
        "[server]\nlisten = \"127.0.0.1:0\"\n[[backends]]\nname = \"ol\"\nkind = \"ollama\"\nurl = \"{mock}\"\n",
    )
    .await;
    for path in ["/v1/messages", "/v1/messages/count_tokens"] {
        let answer = post(
            &gateway,
            path,
            &messages("claude-sonnet-4-5", false, json!("hi")),
        )
        .await;
        assert_eq!(answer.status, 404, "{path}");
        let (kind, message) = anthropic_error(&answer);
        assert_eq!(kind, "not_found_error");
        assert!(message.contains("claude-sonnet-4-5"), "{message}");
    }
}

#[actix_web::test]
async fn a_failure_mid_stream_is_one_error_event_then_the_end() {
    let gateway = harness::start_with("", "idle_timeout_secs = 0.5").await;
    for model in [
        "oa/mock-errstream",
        "ol/mock-errstream",
        "oa/mock-truncate",
        "ol/mock-stall",
    ] {
        let answer = post(&gateway, "/v1/messages", &messages(model, true, json!("x"))).await;
        assert_eq!(answer.status, 200, "{model}: the stream had started");
        let events = events(&answer);
        let names: Vec<&str> = events.iter().map(|(name, _)| name.as_str()).collect();
        assert_eq!(names.first(), Some(&"message_start"), "{model}");
        assert_eq!(names.last(), Some(&"error"), "{model}: {names:?}");
        assert_eq!(names.iter().filter(|name| **name == "error").count(), 1);
        assert!(!names.contains(&"message_stop") && !names.contains(&"message_delta"));
        let error = &events.last().unwrap().1;
        assert!(error["error"]["type"].is_string() && error["error"]["message"].is_string());
    }
}

#[actix_web::test]
async fn a_client_that_hangs_up_cancels_the_upstream() {
    let gateway = harness::start("").await;
    for (number, model) in ["oa/mock-slow", "ol/mock-slow"].into_iter().enumerate() {
        let mut response = client()
            .post(format!("{}/v1/messages", gateway.base))
            .insert_header(("content-type", "application/json"))
            .send_body(messages(model, true, json!("x")).to_string())
            .await
            .unwrap();
        let first = response.next().await.expect("a first chunk").unwrap();
        assert!(first.starts_with(b"event: message_start"));
        drop(response);
        gateway
            .until_cancelled(
                number + 1,
                &format!("{model}: the upstream stream was dropped when the client left"),
            )
            .await;
    }
}

#[actix_web::test]
async fn a_silent_upstream_gets_pings() {
    let gateway = harness::start("").await;
    // One piece, then a minute of silence.
    let mut response = client()
        .post(format!("{}/v1/messages", gateway.base))
        .insert_header(("content-type", "application/json"))
        .send_body(messages("oa/mock-stall", true, json!("x")).to_string())
        .await
        .unwrap();
    let mut seen = String::new();
    let started = std::time::Instant::now();
    while !seen.contains("event: ping") {
        let chunk = response
            .next()
            .await
            .expect("the stream stays open")
            .unwrap();
        seen.push_str(std::str::from_utf8(&chunk).unwrap());
    }
    let waited = started.elapsed();
    assert!(
        waited >= Duration::from_secs(9) && waited < Duration::from_secs(20),
        "{waited:?}"
    );
    assert!(
        seen.contains("event: ping\ndata: {\"type\":\"ping\"}\n\n"),
        "{seen}"
    );
    assert!(seen.starts_with("event: message_start"), "{seen}");
}

/// `gateway;dur=X, upstream;dur=Y`: the upstream's part, if any.
fn upstream_time(answer: &Answer) -> Option<f64> {
    let header = answer
        .headers
        .get("server-timing")
        .expect("Server-Timing")
        .to_str()
        .unwrap();
    header.split(',').find_map(|metric| {
        let (name, duration) = metric.trim().split_once(";dur=")?;
        (name == "upstream").then(|| duration.parse().unwrap())
    })
}

#[actix_web::test]
async fn server_timing_on_every_backend() {
    let gateway = harness::start("").await;
    for (model, _, _, _) in backends() {
        for stream in [false, true] {
            let answer = post(
                &gateway,
                "/v1/messages",
                &messages(model, stream, json!("x")),
            )
            .await;
            assert!(
                upstream_time(&answer).expect("the backend was called") >= 0.0,
                "{model}"
            );
        }
    }
    let slow = post(
        &gateway,
        "/v1/messages",
        &messages("oa/mock-delay", true, json!("x")),
    )
    .await;
    assert!(upstream_time(&slow).unwrap() >= 200.0);
    let refused = post(&gateway, "/v1/messages", &json!({"model": "echo"})).await;
    assert_eq!(
        upstream_time(&refused),
        None,
        "a 400 never reached a backend"
    );
}

fn keys_file(content: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("switchyard-anthropic-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("keys.json");
    std::fs::write(&path, content).unwrap();
    path
}

#[actix_web::test]
async fn keys_permissions_and_limits_answer_in_anthropics_shape() {
    let path =
        keys_file(r#"{"sk-narrow-0123456789": {"user": "friend", "models": ["echo"], "rpm": 4}}"#);
    let gateway = harness::start(&format!("[auth]\nkeys_file = \"{}\"\n", path.display())).await;
    let ask = |path: &str, headers: Vec<(&'static str, &'static str)>, model: &str| {
        let mut request = client()
            .post(format!("{}{path}", gateway.base))
            .insert_header(("anthropic-version", "2026-10-21"));
        for header in headers {
            request = request.insert_header(header);
        }
        let body = messages(model, false, json!("hi")).to_string();
        async move { send(request, Some(&body)).await }
    };
    let none = ask("/v1/messages", vec![], "echo").await;
    assert_eq!(none.status, 401);
    assert_eq!(anthropic_error(&none).0, "authentication_error");
    let wrong = ask(
        "/v1/messages/count_tokens",
        vec![("x-api-key", "sk-wrong")],
        "echo",
    )
    .await;
    assert_eq!(wrong.status, 401);
    assert_eq!(anthropic_error(&wrong).0, "authentication_error");
    // Claude Code's x-api-key and the SDK's Bearer both carry the key.
    let by_header = ask(
        "/v1/messages",
        vec![("x-api-key", "sk-narrow-0123456789")],
        "echo",
    )
    .await;
    assert_eq!(by_header.status, 200, "{}", by_header.body);
    assert_eq!(
        by_header.headers.get("x-ratelimit-limit-requests").unwrap(),
        "4"
    );
    let by_bearer = ask(
        "/v1/messages?beta=true",
        vec![("authorization", "Bearer sk-narrow-0123456789")],
        "echo",
    )
    .await;
    assert_eq!(by_bearer.status, 200, "{}", by_bearer.body);
    let forbidden = ask(
        "/v1/messages",
        vec![("x-api-key", "sk-narrow-0123456789")],
        "oa/mock-x",
    )
    .await;
    assert_eq!(forbidden.status, 403);
    let (kind, message) = anthropic_error(&forbidden);
    assert_eq!(kind, "permission_error");
    assert!(message.contains("oa/mock-x"), "{message}");
    let forbidden = ask(
        "/v1/messages/count_tokens",
        vec![("x-api-key", "sk-narrow-0123456789")],
        "oa/mock-x",
    )
    .await;
    assert_eq!(forbidden.status, 403);
    assert!(gateway.mock.requests_for("mock-x").is_empty());
    let limited = ask(
        "/v1/messages",
        vec![("x-api-key", "sk-narrow-0123456789")],
        "echo",
    )
    .await;
    assert_eq!(limited.status, 429, "{}", limited.body);
    assert_eq!(anthropic_error(&limited).0, "rate_limit_error");
    assert!(limited.headers.get("retry-after").is_some());
}

#[actix_web::test]
async fn count_tokens_estimates_what_the_model_would_read() {
    let gateway = harness::start("").await;
    let answer = post(
        &gateway,
        "/v1/messages/count_tokens?beta=true",
        &json!({"model": "oa/mock-model", "system": "12345678",
                "messages": [{"role": "user", "content": "1234"}]}),
    )
    .await;
    assert_eq!(answer.status, 200, "{}", answer.body);
    assert_eq!(answer.json(), json!({"input_tokens": 3}));
    assert!(
        gateway.mock.requests_for("mock-model").is_empty(),
        "no upstream call"
    );
    let tools = post(
        &gateway,
        "/v1/messages/count_tokens",
        &json!({"model": "echo", "tools": weather_tool(),
                "messages": [{"role": "user", "content": "1234"}]}),
    )
    .await;
    assert!(
        tools.json()["input_tokens"].as_u64().unwrap() > 20,
        "tool schemas count"
    );
    let missing = post(
        &gateway,
        "/v1/messages/count_tokens",
        &json!({"model": "echo"}),
    )
    .await;
    assert_eq!(missing.status, 400);
    assert_eq!(anthropic_error(&missing).0, "invalid_request_error");
}

#[actix_web::test]
async fn listings_take_anthropics_shape_for_anthropic_clients() {
    let gateway = harness::start("").await;
    let listing = client()
        .get(format!("{}/v1/models", gateway.base))
        .insert_header(("anthropic-version", "2023-06-01"));
    let body = send(listing, None).await.json();
    let data = body["data"].as_array().unwrap();
    assert!(
        data.iter().any(|model| model["id"] == "oa/mock-model"),
        "{body}"
    );
    for model in data {
        assert_eq!(model["type"], "model");
        assert_eq!(model["display_name"], model["id"]);
        assert!(model["created_at"].as_str().unwrap().ends_with('Z'));
    }
    assert_eq!(body["has_more"], false);
    assert_eq!(body["first_id"], data[0]["id"]);
    assert_eq!(body["last_id"], data[data.len() - 1]["id"]);
    let one = client()
        .get(format!("{}/v1/models/oa/mock-model", gateway.base))
        .insert_header(("anthropic-version", "2023-06-01"));
    let model = send(one, None).await.json();
    assert_eq!(model["type"], "model");
    assert_eq!(model["created_at"], "2023-11-14T22:13:20Z");
    let missing = client()
        .get(format!("{}/v1/models/oa/not-listed", gateway.base))
        .insert_header(("anthropic-version", "2023-06-01"));
    let missing = send(missing, None).await;
    assert_eq!(missing.status, 404);
    assert_eq!(anthropic_error(&missing).0, "not_found_error");
    // Without the header, OpenAI's shape as before.
    assert_eq!(gateway.get("/v1/models").await.json()["object"], "list");
    assert_eq!(
        gateway.get("/v1/models/oa/mock-model").await.json()["object"],
        "model"
    );
}

/// Claude Code's recorded tool round trip: the same bodies, the same headers.
fn recorded() -> Vec<Value> {
    include_str!("../fixtures/claude-code-tool-round-trip.jsonl")
        .lines()
        .map(|line| serde_json::from_str(line).unwrap())
        .collect()
}

async fn replay(gateway: &Harness, recorded: &Value, model: &str) -> Answer {
    let mut body = recorded["body"].clone();
    body["model"] = json!(model);
    let mut request = client().post(format!(
        "{}{}?beta=true",
        gateway.base,
        recorded["path"].as_str().unwrap()
    ));
    for (name, value) in recorded["headers"].as_object().unwrap() {
        if !["host", "content-length", "connection", "accept-encoding"].contains(&name.as_str()) {
            request = request.insert_header((name.as_str(), value.as_str().unwrap()));
        }
    }
    send(request, Some(&body.to_string())).await
}

#[actix_web::test]
async fn what_claude_code_sends_is_served() {
    // Claude Code's bodies are about 49 KB.
    let gateway = harness::start_config(
        "[server]\nlisten = \"127.0.0.1:0\"\nbody_limit_bytes = 1048576\n[routing]\ndefault_backend = \"echo\"\n[[backends]]\nname = \"oa\"\nkind = \"openai\"\nurl = \"{mock}/v1\"\n[[backends]]\nname = \"echo\"\nkind = \"echo\"\n",
    )
    .await;
    let [first, second] = &recorded()[..] else {
        panic!("two recorded requests");
    };
    // On echo: the answer is the user's turn, streamed as asked.
    let answer = replay(&gateway, first, "echo/echo").await;
    let streamed = read_stream(&answer);
    assert!(
        streamed
            .text
            .ends_with("Run the shell command: echo TOOL-OK"),
        "{}",
        streamed.text
    );
    assert_eq!(
        streamed.names.last().map(String::as_str),
        Some("message_stop")
    );
    let answer = replay(&gateway, second, "echo/echo").await;
    assert!(read_stream(&answer).text.ends_with("echo TOOL-OK"));
    // On an OpenAI-compatible upstream: one system message first, the call and its
    // result in place, the twelve tools.
    let answer = replay(&gateway, second, "oa/mock-claude").await;
    assert_eq!(read_stream(&answer).text, PROMPT);
    let sent = &gateway.mock.requests_for("mock-claude")[0].body;
    let roles: Vec<&str> = sent["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["role"].as_str().unwrap())
        .collect();
    assert_eq!(roles, ["system", "user", "assistant", "tool"]);
    let system = sent["messages"][0]["content"].as_str().unwrap();
    assert!(system.contains("Claude Agent SDK") && system.contains("# Environment"));
    assert_eq!(
        sent["messages"][2]["tool_calls"][0]["id"],
        "toolu_mock_b794bc8ecd164ad58addc277"
    );
    assert_eq!(
        sent["messages"][3]["tool_call_id"],
        "toolu_mock_b794bc8ecd164ad58addc277"
    );
    assert_eq!(sent["messages"][3]["content"], "TOOL-OK");
    assert_eq!(sent["tools"].as_array().unwrap().len(), 12);
    assert_eq!(sent["max_completion_tokens"], 32000);
    for unknown in [
        "output_config",
        "context_management",
        "metadata",
        "thinking",
    ] {
        assert!(sent.get(unknown).is_none(), "{unknown}");
    }
}

/// The listings' refusals reach an Anthropic client in its shape too: no key (401, from
/// the `/v1` scope's key check), a model the key may not use (403), one that does not
/// exist (404); without the header they stay OpenAI's.
#[actix_web::test]
async fn listing_refusals_take_anthropics_shape_for_anthropic_clients() {
    let path = keys_file(r#"{"sk-listing-0123456789": {"user": "lister", "models": ["oa/*"]}}"#);
    let gateway = harness::start(&format!("[auth]\nkeys_file = \"{}\"\n", path.display())).await;
    let get = |path: &str, key: Option<&'static str>, anthropic: bool| {
        let mut request = client().get(format!("{}{path}", gateway.base));
        if anthropic {
            request = request.insert_header(("anthropic-version", "2023-06-01"));
        }
        if let Some(key) = key {
            request = request.insert_header(("x-api-key", key));
        }
        async move { send(request, None).await }
    };
    let key = Some("sk-listing-0123456789");
    for path in ["/v1/models", "/v1/models/oa/mock-model"] {
        let none = get(path, None, true).await;
        assert_eq!(none.status, 401, "{path}");
        assert_eq!(anthropic_error(&none).0, "authentication_error");
        let wrong = get(path, Some("sk-wrong"), true).await;
        assert_eq!(wrong.status, 401, "{path}");
        assert_eq!(anthropic_error(&wrong).0, "authentication_error");
        let openai = get(path, None, false).await;
        assert_eq!(openai.status, 401);
        assert_eq!(
            openai.json()["error"]["code"],
            "invalid_api_key",
            "{}",
            openai.body
        );
        assert!(openai.json().get("type").is_none(), "OpenAI's shape");
    }
    let forbidden = get("/v1/models/ol/mock-model", key, true).await;
    assert_eq!(forbidden.status, 403);
    assert_eq!(anthropic_error(&forbidden).0, "permission_error");
    let missing = get("/v1/models/oa/not-listed", key, true).await;
    assert_eq!(missing.status, 404);
    assert_eq!(anthropic_error(&missing).0, "not_found_error");
    let allowed = get("/v1/models/oa/mock-model", key, true).await;
    assert_eq!(allowed.status, 200, "{}", allowed.body);
    assert_eq!(allowed.json()["type"], "model");
    // Other /v1 routes keep OpenAI's shape whatever the headers.
    let chat = client()
        .post(format!("{}/v1/chat/completions", gateway.base))
        .insert_header(("anthropic-version", "2023-06-01"));
    let chat = send(chat, Some("{}")).await;
    assert_eq!(chat.status, 401);
    assert!(chat.json().get("type").is_none(), "{}", chat.body);
}

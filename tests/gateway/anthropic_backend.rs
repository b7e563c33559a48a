//! The `anthropic` backend kind, reached from every dialect: the Messages API spoken
//! upstream (the mock's `/v1/messages`), its answers and streams decoded into what
//! each client reads.

use serde_json::{json, Value};

use crate::harness::{self, mock, Harness};

const PROMPT: &str = "Hello from the mock 🦀";

async fn start() -> Harness {
    std::env::set_var("SWITCHYARD_TEST_ANTHROPIC_UPSTREAM", "sk-ant-test");
    harness::start(
        "[[backends]]\nname = \"an\"\nkind = \"anthropic\"\nurl = \"{mock}/v1\"\napi_key_env = \"SWITCHYARD_TEST_ANTHROPIC_UPSTREAM\"\ndefault_max_tokens = 321\n",
    )
    .await
}

fn chat(model: &str, stream: bool) -> Value {
    json!({"model": model, "stream": stream, "messages": [{"role": "user", "content": "hi"}]})
}

/// The text of an OpenAI SSE stream.
fn openai_text(events: &[String]) -> String {
    events
        .iter()
        .filter(|event| *event != "[DONE]")
        .map(|event| serde_json::from_str::<Value>(event).unwrap())
        .filter_map(|chunk| {
            chunk["choices"][0]["delta"]["content"]
                .as_str()
                .map(str::to_owned)
        })
        .collect()
}

#[actix_web::test]
async fn every_dialect_reaches_an_anthropic_upstream() {
    let gateway = start().await;
    let model = "an/mock-model";
    // OpenAI, whole and streamed.
    let body = gateway
        .post("/v1/chat/completions", &chat(model, false))
        .await
        .json();
    assert_eq!(body["choices"][0]["message"]["content"], PROMPT);
    assert_eq!(body["choices"][0]["finish_reason"], "stop");
    assert_eq!(body["usage"]["prompt_tokens"], mock::PROMPT_TOKENS);
    assert_eq!(body["usage"]["completion_tokens"], 5);
    let mut stream = chat(model, true);
    stream["stream_options"] = json!({"include_usage": true});
    let events = gateway.post("/v1/chat/completions", &stream).await.sse();
    assert_eq!(openai_text(&events), PROMPT);
    let usage: Value = serde_json::from_str(&events[events.len() - 2]).unwrap();
    assert_eq!(usage["usage"]["completion_tokens"], 5);
    // Ollama, streamed by default and whole.
    let lines = gateway.post("/api/chat", &chat(model, true)).await.ndjson();
    let text: String = lines
        .iter()
        .filter_map(|l| l["message"]["content"].as_str())
        .collect();
    assert_eq!(text, PROMPT);
    let last = lines.last().unwrap();
    assert_eq!(
        (last["done"].clone(), last["eval_count"].clone()),
        (json!(true), json!(5))
    );
    let whole = gateway.post("/api/chat", &chat(model, false)).await.json();
    assert_eq!(whole["message"]["content"], PROMPT);
    // Anthropic's own clients too.
    let mut messages = chat(model, false);
    messages["max_tokens"] = json!(50);
    let answer = gateway.post("/v1/messages", &messages).await.json();
    assert_eq!(answer["content"], json!([{"type": "text", "text": PROMPT}]));
    messages["stream"] = json!(true);
    let answer = gateway.post("/v1/messages", &messages).await;
    assert!(answer.body.contains("\"text\":\" 🦀\""), "{}", answer.body);
    assert!(answer
        .body
        .ends_with("event: message_stop\ndata: {\"type\":\"message_stop\"}\n\n"));
    // Upstream: the Messages API, its version, the key in x-api-key, max_tokens filled.
    let seen = gateway.mock.requests_for("mock-model");
    assert_eq!(seen.len(), 6);
    for request in &seen {
        assert_eq!(request.path, "/v1/messages");
        assert_eq!(request.headers["anthropic-version"], "2023-06-01");
        assert_eq!(request.headers["x-api-key"], "sk-ant-test");
        assert!(!request.headers.contains_key("authorization"));
        assert_eq!(
            request.body["messages"],
            json!([{"role": "user", "content": [{"type": "text", "text": "hi"}]}])
        );
    }
    assert_eq!(seen[0].body["max_tokens"], 321, "the configured default");
    assert_eq!(seen[0].body["stream"], false);
    assert_eq!(seen[1].body["stream"], true);
    assert_eq!(seen[4].body["max_tokens"], 50, "the client's own");
    // Listed from the upstream's /models.
    let models = gateway.get("/v1/models").await.json();
    assert!(models["data"]
        .as_array()
        .unwrap()
        .iter()
        .any(|m| m["id"] == "an/mock-model"));
}

#[actix_web::test]
async fn tools_and_thinking_cross_both_ways() {
    let gateway = start().await;
    let tools = json!([{"type": "function", "function": {"name": "get_weather", "description": "Weather by city",
                        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}}]);
    for stream in [false, true] {
        let request = json!({"model": "an/mock-tool", "stream": stream, "tools": tools, "tool_choice": "required",
        "reasoning_effort": "low",
        "messages": [
            {"role": "system", "content": "be brief"},
            {"role": "user", "content": "Weather in Paris?"},
            {"role": "assistant", "content": null, "tool_calls": [
                {"id": "call_9", "type": "function", "function": {"name": "get_weather", "arguments": "{\"city\":\"Paris\"}"}}]},
            {"role": "tool", "tool_call_id": "call_9", "content": "sunny"},
            {"role": "user", "content": "And Tokyo?"}
        ]});
        let answer = gateway.post("/v1/chat/completions", &request).await;
        assert_eq!(answer.status, 200, "{}", answer.body);
        if stream {
            let mut arguments = String::new();
            let mut finish = None;
            for event in answer.sse().iter().filter(|e| *e != "[DONE]") {
                let chunk: Value = serde_json::from_str(event).unwrap();
                let choice = &chunk["choices"][0];
                if let Some(call) = choice["delta"]["tool_calls"].get(0) {
                    if call.get("id").is_some() {
                        assert_eq!(call["id"], "toolu_mock1");
                    }
                    arguments.push_str(call["function"]["arguments"].as_str().unwrap());
                }
                finish = choice["finish_reason"]
                    .as_str()
                    .map(str::to_owned)
                    .or(finish);
            }
            assert_eq!(
                serde_json::from_str::<Value>(&arguments).unwrap(),
                json!({"city": "Tokyo"})
            );
            assert_eq!(finish.as_deref(), Some("tool_calls"));
        } else {
            let message = &answer.json()["choices"][0]["message"];
            assert_eq!(message["tool_calls"][0]["id"], "toolu_mock1");
            assert_eq!(
                message["tool_calls"][0]["function"]["arguments"],
                "{\"city\":\"Tokyo\"}"
            );
        }
    }
    let sent = &gateway.mock.requests_for("mock-tool")[0].body;
    assert_eq!(sent["system"], "be brief");
    assert_eq!(sent["tool_choice"], json!({"type": "any"}));
    assert_eq!(
        sent["tools"][0]["input_schema"]["properties"]["city"]["type"],
        "string"
    );
    assert_eq!(
        sent["thinking"],
        json!({"type": "enabled", "budget_tokens": 2048})
    );
    assert_eq!(
        sent["messages"],
        json!([
            {"role": "user", "content": [{"type": "text", "text": "Weather in Paris?"}]},
            {"role": "assistant", "content": [{"type": "tool_use", "id": "call_9", "name": "get_weather", "input": {"city": "Paris"}}]},
            {"role": "user", "content": [
                {"type": "tool_result", "tool_use_id": "call_9", "content": [{"type": "text", "text": "sunny"}]},
                {"type": "text", "text": "And Tokyo?"}]}
        ])
    );
    // Ollama's clients get whole calls, and their results (named by tool) find their id.
    let request = json!({"model": "an/mock-tool", "stream": false, "tools": tools, "messages": [
        {"role": "user", "content": "Weather in Paris?"},
        {"role": "assistant", "content": "", "tool_calls": [{"function": {"name": "get_weather", "arguments": {"city": "Paris"}}}]},
        {"role": "tool", "tool_name": "get_weather", "content": "sunny"}
    ]});
    let answer = gateway.post("/api/chat", &request).await.json();
    assert_eq!(
        answer["message"]["tool_calls"][0]["function"]["arguments"],
        json!({"city": "Tokyo"})
    );
    let sent = gateway.mock.requests_for("mock-tool").pop().unwrap().body;
    assert_eq!(sent["messages"][1]["content"][0]["id"], "toolu_1_0");
    assert_eq!(
        sent["messages"][2]["content"][0]["tool_use_id"],
        "toolu_1_0"
    );
    // Thinking comes back as each dialect's reasoning.
    let body = gateway
        .post("/v1/chat/completions", &chat("an/mock-think", false))
        .await
        .json();
    assert_eq!(
        body["choices"][0]["message"]["reasoning_content"],
        "Let me think."
    );
    let lines = gateway
        .post("/api/chat", &chat("an/mock-think", true))
        .await
        .ndjson();
    let thinking: String = lines
        .iter()
        .filter_map(|l| l["message"]["thinking"].as_str())
        .collect();
    assert_eq!(thinking, "Let me think.");
}

#[actix_web::test]
async fn upstream_failures_keep_their_meaning() {
    let gateway = start().await;
    let answer = gateway
        .post("/v1/chat/completions", &chat("an/mock-status529", false))
        .await;
    assert_eq!(answer.status, 529);
    assert_eq!(answer.json()["error"]["message"], "mock refused with 529");
    let answer = gateway.post("/v1/messages", &json!({"model": "an/mock-status529", "max_tokens": 5, "messages": [{"role": "user", "content": "x"}]})).await;
    assert_eq!(answer.status, 529);
    assert_eq!(answer.json()["error"]["type"], "overloaded_error");
    let answer = gateway
        .post("/api/chat", &chat("an/mock-status429", false))
        .await;
    assert_eq!(answer.status, 429);
    assert_eq!(answer.headers.get("retry-after").unwrap(), "7");
    // After the start: one error event (the upstream's own type kept), or a cut-off.
    let events = gateway
        .post("/v1/chat/completions", &chat("an/mock-errstream", true))
        .await
        .sse();
    let last: Value = serde_json::from_str(events.last().unwrap()).unwrap();
    assert_eq!(last["error"]["message"], "mock failed mid-stream");
    assert_eq!(last["error"]["type"], "overloaded_error");
    let lines = gateway
        .post("/api/chat", &chat("an/mock-truncate", true))
        .await
        .ndjson();
    assert!(lines.last().unwrap()["error"]
        .as_str()
        .unwrap()
        .contains("ended before"));
    let answer = gateway
        .post("/v1/chat/completions", &chat("an/mock-garbage", false))
        .await;
    assert_eq!(answer.status, 502);
    let embed = gateway
        .post(
            "/v1/embeddings",
            &json!({"model": "an/mock-model", "input": "x"}),
        )
        .await;
    assert_eq!(embed.status, 400);
    assert!(embed.body.contains("no embeddings"), "{}", embed.body);
}

#[actix_web::test]
async fn count_tokens_asks_an_anthropic_upstream_and_estimates_otherwise() {
    let gateway = start().await;
    let body = |model: &str| {
        json!({"model": model, "system": "12345678", "max_tokens": 5, "temperature": 0.5,
               "messages": [{"role": "user", "content": "1234"}]})
    };
    let counted = gateway
        .post("/v1/messages/count_tokens", &body("an/mock-count"))
        .await;
    assert_eq!(
        counted.json(),
        json!({"input_tokens": 42}),
        "the upstream's count"
    );
    let sent = &gateway.mock.requests_for("mock-count")[0];
    assert_eq!(sent.path, "/v1/messages/count_tokens");
    assert_eq!(sent.body["system"], "12345678");
    for refused in ["max_tokens", "stream", "temperature"] {
        assert!(sent.body.get(refused).is_none(), "{refused}: {}", sent.body);
    }
    // A server without the route, and the other kinds: the estimate.
    for model in ["an/mock-nocount", "oa/mock-model", "echo"] {
        let estimated = gateway
            .post("/v1/messages/count_tokens", &body(model))
            .await;
        assert_eq!(estimated.json(), json!({"input_tokens": 3}), "{model}");
    }
    // Any other failure is the answer: an estimate would hide a wrong upstream key.
    let failed = gateway
        .post("/v1/messages/count_tokens", &body("an/mock-status401"))
        .await;
    assert_eq!(failed.status, 401, "{}", failed.body);
    assert_eq!(failed.json()["error"]["type"], "authentication_error");
}

#[actix_web::test]
async fn signed_thinking_goes_from_claude_to_the_client_and_back() {
    let gateway = start().await;
    let mut request = json!({"model": "an/mock-think", "max_tokens": 4000,
        "thinking": {"type": "enabled", "budget_tokens": 2000},
        "messages": [{"role": "user", "content": "why?"}]});
    let answer = gateway.post("/v1/messages", &request).await.json();
    assert_eq!(
        answer["content"][0],
        json!({"type": "thinking", "thinking": "Let me think.", "signature": "bW9jaw=="})
    );
    request["stream"] = json!(true);
    let streamed = gateway.post("/v1/messages", &request).await.body;
    assert!(
        streamed.contains(r#""delta":{"type":"signature_delta","signature":"bW9jaw=="}"#),
        "{streamed}"
    );
    // The signed block goes back upstream in the next turn, as Anthropic requires.
    request["stream"] = json!(false);
    request["messages"] = json!([
        {"role": "user", "content": "why?"},
        {"role": "assistant", "content": answer["content"]},
        {"role": "user", "content": "and then?"}
    ]);
    assert_eq!(gateway.post("/v1/messages", &request).await.status, 200);
    let sent = gateway.mock.requests_for("mock-think").pop().unwrap().body;
    assert_eq!(
        sent["messages"][1]["content"][0],
        json!({"type": "thinking", "thinking": "Let me think.", "signature": "bW9jaw=="})
    );
    assert_eq!(
        sent["thinking"],
        json!({"type": "enabled", "budget_tokens": 2048})
    );
}

#[actix_web::test]
async fn a_failed_tool_says_so_and_a_client_that_leaves_cancels_the_upstream() {
    use futures::StreamExt;

    let gateway = start().await;
    let request = json!({"model": "an/mock-errortool", "max_tokens": 64, "messages": [
        {"role": "user", "content": "run it"},
        {"role": "assistant", "content": [{"type": "tool_use", "id": "toolu_x", "name": "sh", "input": {}}]},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "toolu_x", "content": "exit 1", "is_error": true}]}
    ]});
    assert_eq!(gateway.post("/v1/messages", &request).await.status, 200);
    let sent = gateway
        .mock
        .requests_for("mock-errortool")
        .pop()
        .unwrap()
        .body;
    assert_eq!(
        sent["messages"][2]["content"][0],
        json!({"type": "tool_result", "tool_use_id": "toolu_x", "content": [{"type": "text", "text": "exit 1"}], "is_error": true})
    );
    let mut response = crate::harness::client()
        .post(format!("{}/v1/chat/completions", gateway.base))
        .insert_header(("content-type", "application/json"))
        .send_body(chat("an/mock-slow", true).to_string())
        .await
        .unwrap();
    assert!(!response
        .next()
        .await
        .expect("a first chunk")
        .unwrap()
        .is_empty());
    drop(response);
    gateway
        .until_cancelled(1, "the upstream stream was dropped when the client left")
        .await;
}

/// An Anthropic upstream that stopped on one of the request's stop sequences says which;
/// an Anthropic client reads `stop_reason: "stop_sequence"` and the sequence, whole and
/// streamed. An OpenAI-style upstream does not say, so its answer reads `end_turn`.
#[actix_web::test]
async fn a_stop_sequence_named_upstream_reaches_an_anthropic_client() {
    let gateway = start().await;
    let ask = |model: &str, stream: bool| {
        json!({"model": model, "max_tokens": 50, "stream": stream, "stop_sequences": ["END", "STOP"],
               "messages": [{"role": "user", "content": "hi"}]})
    };
    let whole = gateway
        .post("/v1/messages", &ask("an/mock-stopseq", false))
        .await
        .json();
    assert_eq!(whole["stop_reason"], "stop_sequence", "{whole}");
    assert_eq!(whole["stop_sequence"], "END");
    let streamed = gateway
        .post("/v1/messages", &ask("an/mock-stopseq", true))
        .await;
    let delta = streamed
        .body
        .split("\n\n")
        .find(|event| event.starts_with("event: message_delta"))
        .and_then(|event| event.split_once("data: "))
        .map(|(_, data)| serde_json::from_str::<Value>(data).unwrap())
        .unwrap();
    assert_eq!(delta["delta"]["stop_reason"], "stop_sequence", "{delta}");
    assert_eq!(delta["delta"]["stop_sequence"], "END");
    // An OpenAI client of the same upstream reads "stop".
    let openai = gateway
        .post(
            "/v1/chat/completions",
            &json!({"model": "an/mock-stopseq", "stop": ["END"], "messages": [{"role": "user", "content": "hi"}]}),
        )
        .await
        .json();
    assert_eq!(openai["choices"][0]["finish_reason"], "stop");
    // The OpenAI-style upstream never says which sequence stopped it.
    let other = gateway
        .post("/v1/messages", &ask("oa/mock-stopseq", false))
        .await
        .json();
    assert_eq!(other["stop_reason"], "end_turn", "{other}");
    assert_eq!(other["stop_sequence"], Value::Null);
}

/// An Anthropic upstream says the prompt's tokens in its `message_start`; an Anthropic
/// client reads them in the gateway's `message_start` too, and the counts in
/// `message_delta` are the same as before. Other upstreams say them only at the end.
#[actix_web::test]
async fn message_start_carries_the_prompt_tokens_an_anthropic_upstream_said() {
    let gateway = start().await;
    let start_usage = |model: &'static str| {
        let gateway = &gateway;
        async move {
            let body = json!({"model": model, "max_tokens": 50, "stream": true,
                              "messages": [{"role": "user", "content": "hi"}]});
            let answer = gateway.post("/v1/messages", &body).await;
            let data = |name: &str| -> Value {
                let event = answer
                    .body
                    .split("\n\n")
                    .find(|event| event.starts_with(&format!("event: {name}\n")))
                    .unwrap_or_else(|| panic!("{name}: {}", answer.body));
                serde_json::from_str(event.split_once("data: ").unwrap().1).unwrap()
            };
            (
                data("message_start")["message"]["usage"].clone(),
                data("message_delta")["usage"].clone(),
            )
        }
    };
    let (at_start, at_end) = start_usage("an/mock-model").await;
    assert_eq!(
        at_start,
        json!({"input_tokens": mock::PROMPT_TOKENS, "output_tokens": 0})
    );
    assert_eq!(
        at_end,
        json!({"input_tokens": mock::PROMPT_TOKENS, "output_tokens": 5})
    );
    let (at_start, at_end) = start_usage("oa/mock-model").await;
    assert_eq!(at_start["input_tokens"], 0, "known only at the end");
    assert_eq!(at_end["input_tokens"], mock::PROMPT_TOKENS);
}

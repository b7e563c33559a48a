//! What the upstream receives: each request field carried to its counterpart on the
//! other protocol, asserted on the mock's record of the request.

use serde_json::{json, Value};

use crate::harness;

/// The body the mock received for `model`, after sending `request` to `path`.
async fn upstream_body(gateway: &harness::Harness, path: &str, request: Value) -> Value {
    let model = request["model"]
        .as_str()
        .unwrap()
        .split_once('/')
        .unwrap()
        .1
        .to_owned();
    let answer = gateway.post(path, &request).await;
    assert_eq!(answer.status, 200, "{}", answer.body);
    let seen = gateway.mock.requests_for(&model);
    assert_eq!(seen.len(), 1, "one upstream call for {model}");
    seen[0].body.clone()
}

#[actix_web::test]
async fn ollama_request_to_openai_backend() {
    let gateway = harness::start("").await;
    let sent = upstream_body(
        &gateway,
        "/api/chat",
        json!({"model": "oa/mock-a", "stream": false,
               "options": {"num_predict": 64, "temperature": 0.2, "top_p": 0.9, "seed": 7, "stop": ["</end>"], "top_k": 40, "num_ctx": 8192},
               "format": {"type": "object", "properties": {"answer": {"type": "string"}}},
               "think": false,
               "messages": [
                   {"role": "system", "content": "Be brief."},
                   {"role": "user", "content": "What is this?", "images": ["iVBORw0KGgoAAAANSUhEUg=="]},
                   {"role": "assistant", "content": "", "tool_calls": [{"function": {"name": "get_weather", "arguments": {"city": "Tokyo"}}}]},
                   {"role": "tool", "tool_name": "get_weather", "content": "11 degrees"}
               ]}),
    )
    .await;
    assert_eq!(sent["model"], "mock-a");
    assert_eq!(sent["stream"], false, "a whole answer is asked for whole");
    assert!(sent.get("stream_options").is_none());
    let streamed = upstream_body(
        &gateway,
        "/api/chat",
        json!({"model": "oa/mock-a2", "messages": [{"role": "user", "content": "x"}]}),
    )
    .await;
    assert_eq!(streamed["stream"], true);
    assert_eq!(
        streamed["stream_options"],
        json!({"include_usage": true}),
        "usage asked for so the done line has counts"
    );
    assert_eq!(sent["max_completion_tokens"], 64);
    assert_eq!(sent["temperature"], 0.2);
    assert_eq!(sent["top_p"], 0.9);
    assert_eq!(sent["seed"], 7);
    assert_eq!(sent["stop"], json!(["</end>"]));
    assert_eq!(
        sent["top_k"], 40,
        "llama-server's extra knobs are passed on"
    );
    assert!(
        sent.get("num_ctx").is_none() && sent.get("options").is_none(),
        "runtime options dropped"
    );
    assert_eq!(sent["response_format"]["type"], "json_schema");
    assert_eq!(sent["response_format"]["json_schema"]["name"], "response");
    assert_eq!(
        sent["response_format"]["json_schema"]["schema"]["properties"]["answer"]["type"],
        "string"
    );
    assert_eq!(sent["reasoning_effort"], "none");
    let messages = sent["messages"].as_array().unwrap();
    assert_eq!(
        messages[0],
        json!({"role": "system", "content": "Be brief."})
    );
    assert_eq!(
        messages[1]["content"][0],
        json!({"type": "text", "text": "What is this?"})
    );
    assert_eq!(
        messages[1]["content"][1],
        json!({"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgoAAAANSUhEUg=="}})
    );
    let call = &messages[2]["tool_calls"][0];
    assert_eq!(messages[2]["content"], Value::Null);
    assert_eq!(call["type"], "function");
    assert_eq!(
        call["function"]["arguments"], "{\"city\":\"Tokyo\"}",
        "arguments become a JSON string"
    );
    let id = call["id"].as_str().unwrap();
    assert_eq!(
        messages[3]["tool_call_id"], id,
        "the tool result answers the synthesized id"
    );
}

#[actix_web::test]
async fn openai_request_to_ollama_backend() {
    let gateway = harness::start("").await;
    let sent = upstream_body(
        &gateway,
        "/v1/chat/completions",
        json!({"model": "ol/mock-b", "max_tokens": 32, "temperature": 0.5, "stop": "END",
               "frequency_penalty": 0.1, "presence_penalty": 0.2, "seed": 3,
               "response_format": {"type": "json_object"},
               "reasoning_effort": "minimal",
               "user": "someone",
               "messages": [
                   {"role": "developer", "content": "Be brief."},
                   {"role": "user", "content": [{"type": "text", "text": "Look"},
                                                {"type": "image_url", "image_url": {"url": "data:image/jpeg;base64,/9j/4AAQ"}}]},
                   {"role": "assistant", "content": null, "tool_calls": [{"id": "call_9", "type": "function",
                       "function": {"name": "get_weather", "arguments": "{\"city\":\"Paris\"}"}}]},
                   {"role": "tool", "tool_call_id": "call_9", "content": "20 degrees"}
               ]}),
    )
    .await;
    assert_eq!(sent["model"], "mock-b");
    assert_eq!(sent["stream"], false, "a whole answer is asked for whole");
    assert_eq!(
        sent["options"],
        json!({"num_predict": 32, "temperature": 0.5, "stop": ["END"], "frequency_penalty": 0.1, "presence_penalty": 0.2, "seed": 3})
    );
    assert!(
        sent["options"].get("top_p").is_none(),
        "absent fields stay absent"
    );
    assert_eq!(sent["format"], "json");
    assert_eq!(sent["think"], "low");
    assert!(
        sent.get("user").is_none(),
        "fields with no Ollama counterpart are dropped"
    );
    let messages = sent["messages"].as_array().unwrap();
    assert_eq!(messages[0]["role"], "system", "developer reads as system");
    assert_eq!(messages[1]["content"], "Look");
    assert_eq!(
        messages[1]["images"],
        json!(["/9j/4AAQ"]),
        "raw base64, no data: prefix"
    );
    assert_eq!(
        messages[2]["tool_calls"][0]["function"]["arguments"],
        json!({"city": "Paris"})
    );
    assert_eq!(
        messages[3]["tool_name"], "get_weather",
        "named from the call it answers"
    );
    assert_eq!(messages[3]["tool_call_id"], "call_9");
}

#[actix_web::test]
async fn remote_image_urls_are_refused_for_ollama_backends() {
    let gateway = harness::start("").await;
    let answer = gateway
        .post(
            "/v1/chat/completions",
            &json!({"model": "ol/mock-c", "messages": [{"role": "user", "content": [
                {"type": "image_url", "image_url": {"url": "https://example.com/cat.png"}}]}]}),
        )
        .await;
    assert_eq!(answer.status, 400);
    assert!(answer.json()["error"]["message"]
        .as_str()
        .unwrap()
        .contains("data: URL"));
    assert!(
        gateway.mock.requests_for("mock-c").is_empty(),
        "nothing was fetched or sent"
    );
}

#[actix_web::test]
async fn openai_to_openai_carries_unknown_fields() {
    let gateway = harness::start("").await;
    let sent = upstream_body(
        &gateway,
        "/v1/chat/completions",
        json!({"model": "oa/mock-d", "user": "u1", "cache_prompt": true, "tool_choice": "auto",
               "messages": [{"role": "user", "content": "hi"}]}),
    )
    .await;
    assert_eq!(sent["user"], "u1");
    assert_eq!(sent["cache_prompt"], true);
    assert_eq!(sent["tool_choice"], "auto");
}

#[actix_web::test]
async fn structured_output_and_tool_definitions_cross_both_ways() {
    let gateway = harness::start("").await;
    let tool = json!({"type": "function", "function": {"name": "get_weather", "description": "Weather by city",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}});
    let sent = upstream_body(
        &gateway,
        "/api/chat",
        json!({"model": "oa/mock-s1", "stream": false, "format": "json", "tools": [tool],
               "messages": [{"role": "user", "content": "JSON please"}]}),
    )
    .await;
    assert_eq!(sent["response_format"], json!({"type": "json_object"}));
    assert_eq!(
        sent["tools"],
        json!([tool]),
        "tool definitions are copied whole"
    );

    let schema = json!({"type": "object", "properties": {"answer": {"type": "string"}}, "required": ["answer"]});
    let sent = upstream_body(
        &gateway,
        "/v1/chat/completions",
        json!({"model": "ol/mock-s2", "tools": [tool], "tool_choice": "auto",
               "response_format": {"type": "json_schema", "json_schema": {"name": "answer", "strict": true, "schema": schema}},
               "messages": [{"role": "user", "content": "x"}]}),
    )
    .await;
    assert_eq!(sent["format"], schema, "Ollama takes the bare schema");
    assert_eq!(sent["tools"], json!([tool]));
    assert!(
        sent.get("tool_choice").is_none(),
        "no Ollama counterpart: dropped, not an error"
    );

    let sent = upstream_body(
        &gateway,
        "/v1/chat/completions",
        json!({"model": "oa/mock-s3", "response_format": {"type": "json_schema", "json_schema": {"name": "answer", "strict": true, "schema": schema}},
               "messages": [{"role": "user", "content": "x"}]}),
    )
    .await;
    assert_eq!(
        sent["response_format"]["json_schema"],
        json!({"name": "answer", "strict": true, "schema": schema})
    );
}

#[actix_web::test]
async fn reasoning_history_and_think_levels_reach_the_upstream() {
    let gateway = harness::start("").await;
    let sent = upstream_body(
        &gateway,
        "/api/chat",
        json!({"model": "oa/mock-r1", "stream": false, "think": "high",
               "messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b", "thinking": "because"},
                            {"role": "user", "content": "c"}]}),
    )
    .await;
    assert_eq!(sent["reasoning_effort"], "high");
    assert_eq!(sent["messages"][1]["reasoning_content"], "because");
    let sent = upstream_body(
        &gateway,
        "/v1/chat/completions",
        json!({"model": "ol/mock-r2", "reasoning_effort": "xhigh",
               "messages": [{"role": "assistant", "content": "b", "reasoning": "because"}, {"role": "user", "content": "c"}]}),
    )
    .await;
    assert_eq!(sent["think"], "max");
    assert_eq!(sent["messages"][0]["thinking"], "because");
    let answer = gateway
        .post("/api/chat", &json!({"model": "echo", "think": "very", "messages": [{"role": "user", "content": "x"}]}))
        .await;
    assert_eq!(answer.status, 400);
    assert!(answer.json()["error"]
        .as_str()
        .unwrap()
        .contains("invalid think value"));
}

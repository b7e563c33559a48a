//! The OpenAI Responses API (`/v1/responses`) in front of every backend kind: whole and
//! streamed answers, tools both ways (namespaces included), reasoning, images,
//! structured output and parameters as the upstream receives them, errors in OpenAI's
//! shape, a failure mid-stream, cancellation, `Server-Timing`, and stored responses
//! with their isolation by key.

use std::time::Duration;

use futures::StreamExt;
use serde_json::{json, Value};

use crate::harness::{self, client, mock, send, Answer, Harness};

/// (model as the client names it, prompt and completion tokens).
fn backends() -> [(&'static str, u64, u64); 3] {
    [
        ("oa/mock-model", mock::PROMPT_TOKENS, 5),
        ("ol/mock-model", mock::PROMPT_TOKENS, 5),
        // Echo repeats the prompt: five pieces in, five out.
        ("echo", 5, 5),
    ]
}

const PROMPT: &str = "Hello from the mock 🦀";

/// The SSE events of a Responses stream as (`event:` name, data), checking each name is
/// its data's `type`, the sequence numbers count up from 0 and there is no `[DONE]`.
fn events(answer: &Answer) -> Vec<(String, Value)> {
    assert!(
        answer.content_type.starts_with("text/event-stream"),
        "{}",
        answer.content_type
    );
    let events: Vec<(String, Value)> = answer
        .body
        .split("\n\n")
        .filter(|event| !event.is_empty())
        .map(|event| {
            let (name, data) = event
                .split_once("\ndata: ")
                .unwrap_or_else(|| panic!("not an event: {event:?}"));
            let name = name.strip_prefix("event: ").unwrap().to_owned();
            let data: Value = serde_json::from_str(data).unwrap();
            assert_eq!(data["type"], name.as_str());
            (name, data)
        })
        .collect();
    for (number, (_, data)) in events.iter().enumerate() {
        assert_eq!(data["sequence_number"], number, "{data}");
    }
    assert!(!answer.body.contains("[DONE]"));
    events
}

/// The concatenated deltas of one kind of event.
fn deltas(events: &[(String, Value)], kind: &str) -> String {
    events
        .iter()
        .filter(|(name, _)| name == kind)
        .map(|(_, data)| data["delta"].as_str().unwrap().to_owned())
        .collect()
}

/// The text of a whole response's message items.
fn output_text(response: &Value) -> String {
    response["output"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|item| item["type"] == "message")
        .flat_map(|item| item["content"].as_array().unwrap().iter())
        .map(|part| part["text"].as_str().unwrap().to_owned())
        .collect()
}

/// The last body the mock received for `model`.
fn upstream(gateway: &Harness, model: &str) -> Value {
    gateway
        .mock
        .requests_for(model)
        .last()
        .unwrap_or_else(|| panic!("the upstream saw no request for {model}"))
        .body
        .clone()
}

#[actix_web::test]
async fn whole_answers_from_every_backend() {
    let gateway = harness::start("").await;
    for (model, prompt_tokens, completion_tokens) in backends() {
        let answer = gateway
            .post("/v1/responses", &json!({"model": model, "input": PROMPT}))
            .await;
        assert_eq!(answer.status, 200, "{model}: {}", answer.body);
        let body = answer.json();
        assert!(body["id"].as_str().unwrap().starts_with("resp_"));
        assert_eq!(body["object"], "response");
        assert_eq!(body["status"], "completed");
        assert_eq!(body["model"], model, "named as asked");
        assert_eq!(output_text(&body), mock::PIECES.concat(), "{model}");
        let message = &body["output"][0];
        assert_eq!(message["role"], "assistant");
        assert_eq!(message["content"][0]["type"], "output_text");
        assert_eq!(
            body["usage"]["input_tokens"], prompt_tokens,
            "{model}: {body}"
        );
        assert_eq!(body["usage"]["output_tokens"], completion_tokens);
        assert_eq!(
            body["usage"]["total_tokens"],
            prompt_tokens + completion_tokens
        );
        assert!(answer.headers.get("server-timing").is_some());
        if model != "echo" {
            assert_eq!(upstream(&gateway, "mock-model")["stream"], false);
        }
    }
}

#[actix_web::test]
async fn streams_from_every_backend() {
    let gateway = harness::start("").await;
    for (model, prompt_tokens, completion_tokens) in backends() {
        let answer = gateway
            .post(
                "/v1/responses",
                &json!({"model": model, "stream": true,
                        "input": [{"role": "user", "content": [{"type": "input_text", "text": PROMPT}]}]}),
            )
            .await;
        assert_eq!(answer.status, 200, "{model}: {}", answer.body);
        assert_eq!(answer.headers.get("cache-control").unwrap(), "no-cache");
        assert!(answer.headers.get("server-timing").is_some());
        let events = events(&answer);
        let names: Vec<&str> = events.iter().map(|(name, _)| name.as_str()).collect();
        assert_eq!(
            names[..4],
            [
                "response.created",
                "response.in_progress",
                "response.output_item.added",
                "response.content_part.added"
            ]
        );
        assert_eq!(
            names[names.len() - 5..],
            [
                "response.output_text.delta",
                "response.output_text.done",
                "response.content_part.done",
                "response.output_item.done",
                "response.completed"
            ],
            "{model}"
        );
        assert_eq!(
            deltas(&events, "response.output_text.delta"),
            mock::PIECES.concat()
        );
        let done = &events.last().unwrap().1["response"];
        assert_eq!(done["status"], "completed");
        assert_eq!(done["id"], events[0].1["response"]["id"]);
        assert_eq!(output_text(done), mock::PIECES.concat());
        assert_eq!(done["usage"]["input_tokens"], prompt_tokens, "{model}");
        assert_eq!(done["usage"]["output_tokens"], completion_tokens);
    }
}

fn weather_tool() -> Value {
    json!({"type": "function", "name": "get_weather", "description": "Weather in a city",
           "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}})
}

#[actix_web::test]
async fn function_calls_come_out_of_every_tool_backend() {
    let gateway = harness::start("").await;
    for model in ["oa/mock-tool", "ol/mock-tool"] {
        let request = json!({"model": model, "input": "weather?", "tools": [weather_tool()]});
        let body = gateway.post("/v1/responses", &request).await.json();
        assert_eq!(body["status"], "completed", "{body}");
        let calls: Vec<&Value> = body["output"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|item| item["type"] == "function_call")
            .collect();
        assert_eq!(calls.len(), 1, "{body}");
        assert_eq!(calls[0]["call_id"], "call_mock1");
        assert_eq!(calls[0]["name"], "get_weather");
        assert!(calls[0]["id"].as_str().unwrap().starts_with("fc_"));
        let arguments: Value =
            serde_json::from_str(calls[0]["arguments"].as_str().unwrap()).unwrap();
        assert_eq!(arguments, json!({"city": "Tokyo"}));
        // The upstream got the flat tool in its own form.
        let sent = upstream(&gateway, "mock-tool");
        assert_eq!(
            sent["tools"][0]["function"]["name"], "get_weather",
            "{model}"
        );

        let mut streamed = request.clone();
        streamed["stream"] = json!(true);
        let events = events(&gateway.post("/v1/responses", &streamed).await);
        let arguments = deltas(&events, "response.function_call_arguments.delta");
        assert_eq!(
            serde_json::from_str::<Value>(&arguments).unwrap(),
            json!({"city": "Tokyo"}),
            "{model}"
        );
        let added = events
            .iter()
            .find(|(name, data)| {
                name == "response.output_item.added" && data["item"]["type"] == "function_call"
            })
            .expect("the call's item is announced");
        assert_eq!(added.1["item"]["name"], "get_weather");
        assert_eq!(added.1["item"]["call_id"], "call_mock1");
        let done = &events.last().unwrap().1["response"];
        assert_eq!(done["status"], "completed");
        assert_eq!(done["output"][0]["arguments"], arguments);
    }
}

/// An earlier turn's call and its output, as Codex sends them back.
fn round_trip(model: &str) -> Value {
    json!({"model": model, "store": false, "input": [
        {"type": "message", "role": "user", "content": [{"type": "input_text", "text": "weather in Paris?"}]},
        {"type": "reasoning", "id": "rs_1", "summary": [], "encrypted_content": "opaque"},
        {"type": "function_call", "id": "fc_1", "call_id": "call_9", "name": "get_weather",
         "arguments": "{\"city\":\"Paris\"}", "status": "completed"},
        {"type": "function_call_output", "call_id": "call_9", "output": "20 degrees"}
    ], "tools": [weather_tool()], "include": ["reasoning.encrypted_content"]})
}

#[actix_web::test]
async fn function_call_outputs_reach_the_upstream_as_tool_messages() {
    let gateway = harness::start("").await;
    let answer = gateway
        .post("/v1/responses", &round_trip("oa/mock-rt"))
        .await;
    assert_eq!(answer.status, 200, "{}", answer.body);
    let messages = upstream(&gateway, "mock-rt")["messages"].clone();
    assert_eq!(messages[0]["role"], "user");
    assert_eq!(messages[1]["role"], "assistant");
    assert_eq!(messages[1]["tool_calls"][0]["id"], "call_9");
    assert_eq!(
        messages[1]["tool_calls"][0]["function"],
        json!({"name": "get_weather", "arguments": "{\"city\":\"Paris\"}"})
    );
    assert_eq!(
        messages[2],
        json!({"role": "tool", "tool_call_id": "call_9", "content": "20 degrees"})
    );

    let answer = gateway
        .post("/v1/responses", &round_trip("ol/mock-rt2"))
        .await;
    assert_eq!(answer.status, 200, "{}", answer.body);
    let messages = upstream(&gateway, "mock-rt2")["messages"].clone();
    assert_eq!(
        messages[1]["tool_calls"][0]["function"]["arguments"],
        json!({"city": "Paris"})
    );
    assert_eq!(messages[2]["role"], "tool");
    assert_eq!(messages[2]["tool_name"], "get_weather");
    assert_eq!(messages[2]["content"], "20 degrees");
    // Echo answers the last user message whatever follows it.
    let body = gateway
        .post("/v1/responses", &round_trip("echo"))
        .await
        .json();
    assert_eq!(output_text(&body), "weather in Paris?");
}

#[actix_web::test]
async fn namespaced_tools_are_flattened_and_named_back() {
    let gateway = harness::start("").await;
    let request = json!({"model": "oa/mock-ns",
        "input": [{"type": "function_call", "call_id": "c1", "name": "spawn", "namespace": "agents",
                   "arguments": "{}"},
                  {"type": "function_call_output", "call_id": "c1", "output": "spawned"},
                  {"role": "user", "content": "go on"}],
        "tools": [{"type": "namespace", "name": "agents", "description": "sub-agents",
                   "tools": [{"type": "function", "name": "spawn", "parameters": {"type": "object"}}]},
                  {"type": "web_search", "external_web_access": false}],
        "tool_choice": {"type": "function", "name": "spawn", "namespace": "agents"}});
    let answer = gateway.post("/v1/responses", &request).await;
    assert_eq!(answer.status, 200, "{}", answer.body);
    let sent = upstream(&gateway, "mock-ns");
    let tools = sent["tools"].as_array().unwrap();
    assert_eq!(tools.len(), 1, "web_search is dropped: {tools:?}");
    assert_eq!(tools[0]["function"]["name"], "agents__spawn");
    assert_eq!(
        sent["tool_choice"],
        json!({"type": "function", "function": {"name": "agents__spawn"}})
    );
    assert_eq!(
        sent["messages"][0]["tool_calls"][0]["function"]["name"],
        "agents__spawn"
    );
}

#[actix_web::test]
async fn other_built_in_tools_are_refused() {
    let gateway = harness::start("").await;
    let answer = gateway
        .post(
            "/v1/responses",
            &json!({"model": "echo", "input": "x", "tools": [{"type": "file_search", "vector_store_ids": []}]}),
        )
        .await;
    assert_eq!(answer.status, 400);
    let error = &answer.json()["error"];
    assert_eq!(error["type"], "invalid_request_error");
    assert_eq!(error["param"], "tools");
    assert!(error["message"].as_str().unwrap().contains("file_search"));
}

#[actix_web::test]
async fn reasoning_comes_out_as_reasoning_items() {
    let gateway = harness::start("").await;
    for model in ["oa/mock-think", "ol/mock-think"] {
        let body = gateway
            .post("/v1/responses", &json!({"model": model, "input": "think"}))
            .await
            .json();
        let output = body["output"].as_array().unwrap();
        assert_eq!(output[0]["type"], "reasoning", "{body}");
        assert_eq!(output[0]["content"][0]["type"], "reasoning_text");
        assert_eq!(output[0]["content"][0]["text"], "Let me think.");
        assert_eq!(output[1]["type"], "message");
        let events = events(
            &gateway
                .post(
                    "/v1/responses",
                    &json!({"model": model, "input": "think", "stream": true}),
                )
                .await,
        );
        assert_eq!(
            deltas(&events, "response.reasoning_text.delta"),
            "Let me think.",
            "{model}"
        );
        let done = &events.last().unwrap().1["response"];
        assert_eq!(done["output"][0]["type"], "reasoning");
        assert_eq!(done["output"][1]["type"], "message");
    }
}

#[actix_web::test]
async fn images_structured_output_and_parameters_reach_the_upstream() {
    let gateway = harness::start("").await;
    let request = |model: &str| {
        json!({"model": model, "instructions": "Be brief.",
            "input": [{"role": "user", "content": [
                {"type": "input_text", "text": "What is this?"},
                {"type": "input_image", "image_url": "data:image/png;base64,iVBORw0KGgoAAAANSUhEUg==", "detail": "auto"}]}],
            "max_output_tokens": 64, "temperature": 0.2, "top_p": 0.9,
            "reasoning": {"effort": "low"}, "parallel_tool_calls": false,
            "tools": [weather_tool()], "tool_choice": "required",
            "text": {"format": {"type": "json_schema", "name": "answer", "strict": true,
                                "schema": {"type": "object", "properties": {"answer": {"type": "string"}}}}},
            "metadata": {"trace": "t1"}, "user": "someone", "prompt_cache_key": "k", "store": false})
    };
    let answer = gateway.post("/v1/responses", &request("oa/mock-p")).await;
    assert_eq!(answer.status, 200, "{}", answer.body);
    let body = answer.json();
    assert_eq!(body["metadata"], json!({"trace": "t1"}));
    assert_eq!(body["instructions"], "Be brief.");
    assert_eq!(body["max_output_tokens"], 64);
    assert_eq!(body["store"], false);
    let sent = upstream(&gateway, "mock-p");
    assert_eq!(
        sent["messages"][0],
        json!({"role": "system", "content": "Be brief."})
    );
    assert_eq!(
        sent["messages"][1]["content"][1],
        json!({"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgoAAAANSUhEUg=="}})
    );
    assert_eq!(sent["max_completion_tokens"], 64);
    assert_eq!(sent["temperature"], 0.2);
    assert_eq!(sent["top_p"], 0.9);
    assert_eq!(sent["reasoning_effort"], "low");
    assert_eq!(sent["parallel_tool_calls"], false);
    assert_eq!(sent["tool_choice"], "required");
    assert_eq!(sent["response_format"]["type"], "json_schema");
    assert_eq!(sent["response_format"]["json_schema"]["name"], "answer");
    assert_eq!(
        sent["response_format"]["json_schema"]["schema"]["properties"]["answer"]["type"],
        "string"
    );
    for dropped in [
        "prompt_cache_key",
        "metadata",
        "store",
        "input",
        "instructions",
    ] {
        assert!(
            sent.get(dropped).is_none(),
            "{dropped} is not sent upstream"
        );
    }

    let answer = gateway.post("/v1/responses", &request("ol/mock-p2")).await;
    assert_eq!(answer.status, 200, "{}", answer.body);
    let sent = upstream(&gateway, "mock-p2");
    assert_eq!(
        sent["messages"][1]["images"],
        json!(["iVBORw0KGgoAAAANSUhEUg=="])
    );
    assert_eq!(sent["options"]["num_predict"], 64);
    assert_eq!(sent["options"]["temperature"], 0.2);
    assert_eq!(sent["format"]["properties"]["answer"]["type"], "string");
    assert_eq!(sent["think"], "low");

    let json_object =
        json!({"model": "oa/mock-p3", "input": "x", "text": {"format": {"type": "json_object"}}});
    gateway.post("/v1/responses", &json_object).await;
    assert_eq!(
        upstream(&gateway, "mock-p3")["response_format"],
        json!({"type": "json_object"})
    );
}

#[actix_web::test]
async fn a_length_stop_is_an_incomplete_response() {
    let gateway = harness::start("").await;
    let body = gateway
        .post(
            "/v1/responses",
            &json!({"model": "oa/mock-length", "input": "x"}),
        )
        .await
        .json();
    assert_eq!(body["status"], "incomplete");
    assert_eq!(body["incomplete_details"]["reason"], "max_output_tokens");
    let events = events(
        &gateway
            .post(
                "/v1/responses",
                &json!({"model": "ol/mock-length", "input": "x", "stream": true}),
            )
            .await,
    );
    let (name, data) = events.last().unwrap();
    assert_eq!(name, "response.incomplete");
    assert_eq!(
        data["response"]["incomplete_details"]["reason"],
        "max_output_tokens"
    );
    assert!(data["response"]["usage"]["total_tokens"].is_u64());
}

#[actix_web::test]
async fn errors_are_in_openai_shape() {
    let gateway = harness::start("").await;
    let bad = gateway.post_raw("/v1/responses", "{not json").await;
    assert_eq!(bad.status, 400);
    assert_eq!(bad.json()["error"]["type"], "invalid_request_error");
    let no_input = gateway
        .post("/v1/responses", &json!({"model": "echo"}))
        .await;
    assert_eq!(no_input.status, 400);
    assert_eq!(no_input.json()["error"]["param"], "input");
    let unknown = gateway
        .post(
            "/v1/responses",
            &json!({"model": "echo", "previous_response_id": "resp_nope", "input": "x"}),
        )
        .await;
    assert_eq!(unknown.status, 404);
    assert_eq!(
        unknown.json()["error"],
        json!({"message": "Response with id 'resp_nope' not found.", "type": "invalid_request_error",
               "param": null, "code": "previous_response_not_found"})
    );
    for (model, status) in [
        ("oa/mock-status429", 429),
        ("oa/mock-status500", 500),
        ("ol/mock-status404", 404),
    ] {
        for stream in [false, true] {
            let answer = gateway
                .post(
                    "/v1/responses",
                    &json!({"model": model, "input": "x", "stream": stream}),
                )
                .await;
            assert_eq!(answer.status, status, "{model}: {}", answer.body);
            let error = &answer.json()["error"];
            assert!(error["message"].is_string(), "{error}");
            assert!(error.get("param").is_some() && error.get("code").is_some());
            assert!(error["type"].is_string(), "{model}: {error}");
        }
    }
}

#[actix_web::test]
async fn a_failure_mid_stream_ends_in_response_failed() {
    let gateway = harness::start("").await;
    for model in ["oa/mock-errstream", "ol/mock-errstream", "oa/mock-truncate"] {
        let answer = gateway
            .post(
                "/v1/responses",
                &json!({"model": model, "input": "x", "stream": true}),
            )
            .await;
        assert_eq!(answer.status, 200, "the stream had started");
        let events = events(&answer);
        let (name, data) = events.last().unwrap();
        assert_eq!(name, "response.failed", "{model}: {}", answer.body);
        assert_eq!(data["response"]["status"], "failed");
        assert!(data["response"]["error"]["message"].is_string());
        assert!(!events.iter().any(|(name, _)| name == "response.completed"));
    }
}

#[actix_web::test]
async fn a_client_that_hangs_up_cancels_the_upstream() {
    let gateway = harness::start("").await;
    for (number, model) in ["oa/mock-slow", "ol/mock-slow"].into_iter().enumerate() {
        let body = json!({"model": model, "stream": true, "input": "x"});
        let mut response = client()
            .post(format!("{}/v1/responses", gateway.base))
            .insert_header(("content-type", "application/json"))
            .send_body(body.to_string())
            .await
            .unwrap();
        let first = response.next().await.expect("a first chunk").unwrap();
        assert!(!first.is_empty());
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
async fn stored_responses_continue_read_and_delete() {
    let gateway = harness::start("").await;
    let first = gateway
        .post(
            "/v1/responses",
            &json!({"model": "oa/mock-store", "instructions": "first rules", "input": "My name is Ada."}),
        )
        .await
        .json();
    assert_eq!(first["store"], true, "store is the default");
    let id = first["id"].as_str().unwrap().to_owned();
    let got = gateway.get(&format!("/v1/responses/{id}")).await;
    assert_eq!(got.status, 200);
    assert_eq!(got.json(), first, "GET returns the stored object");

    // A continuation, streamed: the earlier input and output come first.
    let answer = gateway
        .post(
            "/v1/responses",
            &json!({"model": "oa/mock-store2", "previous_response_id": id, "stream": true,
                    "instructions": "second rules", "input": "What is my name?"}),
        )
        .await;
    let events = events(&answer);
    let second = events.last().unwrap().1["response"].clone();
    assert_eq!(second["previous_response_id"], id.as_str());
    let messages = upstream(&gateway, "mock-store2")["messages"].clone();
    assert_eq!(
        messages,
        json!([
            {"role": "system", "content": "second rules"},
            {"role": "user", "content": "My name is Ada."},
            {"role": "assistant", "content": mock::PIECES.concat()},
            {"role": "user", "content": "What is my name?"}
        ]),
        "the new instructions only, then the stored turn, then the new input"
    );
    // The streamed answer was stored too, and continues on another backend.
    let second_id = second["id"].as_str().unwrap();
    assert_eq!(
        gateway
            .get(&format!("/v1/responses/{second_id}"))
            .await
            .status,
        200
    );
    let third = gateway
        .post(
            "/v1/responses",
            &json!({"model": "ol/mock-store3", "previous_response_id": second_id, "input": "Again?"}),
        )
        .await;
    assert_eq!(third.status, 200, "{}", third.body);
    let messages = upstream(&gateway, "mock-store3")["messages"].clone();
    assert_eq!(messages.as_array().unwrap().len(), 5, "{messages}");

    let deleted = send(
        client().delete(format!("{}/v1/responses/{id}", gateway.base)),
        None,
    )
    .await;
    assert_eq!(deleted.status, 200);
    assert_eq!(
        deleted.json(),
        json!({"id": id, "object": "response", "deleted": true})
    );
    let gone = gateway.get(&format!("/v1/responses/{id}")).await;
    assert_eq!(gone.status, 404);
    assert_eq!(gone.json()["error"]["type"], "invalid_request_error");
    let again = send(
        client().delete(format!("{}/v1/responses/{id}", gateway.base)),
        None,
    )
    .await;
    assert_eq!(again.status, 404);
    let continued = gateway
        .post(
            "/v1/responses",
            &json!({"model": "echo", "previous_response_id": id, "input": "x"}),
        )
        .await;
    assert_eq!(continued.status, 404);
    assert_eq!(
        continued.json()["error"]["code"],
        "previous_response_not_found"
    );

    // store: false keeps nothing.
    let unstored = gateway
        .post(
            "/v1/responses",
            &json!({"model": "echo", "input": "x", "store": false}),
        )
        .await
        .json();
    let unstored_id = unstored["id"].as_str().unwrap();
    assert_eq!(
        gateway
            .get(&format!("/v1/responses/{unstored_id}"))
            .await
            .status,
        404
    );
}

#[actix_web::test]
async fn the_store_keeps_at_most_its_count() {
    let gateway = harness::start("[responses]\nstore_max = 2\n").await;
    let mut ids = Vec::new();
    for n in 0..3 {
        let body = gateway
            .post(
                "/v1/responses",
                &json!({"model": "echo", "input": format!("n{n}")}),
            )
            .await
            .json();
        ids.push(body["id"].as_str().unwrap().to_owned());
    }
    let status = |id: String| {
        let gateway = &gateway;
        async move { gateway.get(&format!("/v1/responses/{id}")).await.status }
    };
    assert_eq!(status(ids[0].clone()).await, 404, "the oldest went first");
    assert_eq!(status(ids[1].clone()).await, 200);
    assert_eq!(status(ids[2].clone()).await, 200);
}

fn keys_file(name: &str, content: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!(
        "switchyard-responses-{}-{name}",
        std::process::id()
    ));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("keys.json");
    std::fs::write(&path, content).unwrap();
    path
}

async fn as_key(
    gateway: &Harness,
    key: &str,
    method: &str,
    path: &str,
    body: Option<Value>,
) -> Answer {
    let url = format!("{}{path}", gateway.base);
    let request = match method {
        "GET" => client().get(url),
        "DELETE" => client().delete(url),
        _ => client().post(url),
    }
    .insert_header(("Authorization", format!("Bearer {key}")));
    send(request, body.map(|b| b.to_string()).as_deref()).await
}

#[actix_web::test]
async fn a_key_sees_only_its_own_responses_and_its_limits_apply() {
    let path = keys_file(
        "isolation",
        r#"{"sk-alice-0123456789": "alice",
            "sk-bob-0123456789ab": {"user": "bob", "models": ["echo"], "rpm": 4}}"#,
    );
    let gateway = harness::start(&format!("[auth]\nkeys_file = \"{}\"\n", path.display())).await;
    let (alice, bob) = ("sk-alice-0123456789", "sk-bob-0123456789ab");
    let made = as_key(
        &gateway,
        alice,
        "POST",
        "/v1/responses",
        Some(json!({"model": "echo", "input": "secret"})),
    )
    .await;
    assert_eq!(made.status, 200, "{}", made.body);
    let id = made.json()["id"].as_str().unwrap().to_owned();
    let path = format!("/v1/responses/{id}");
    assert_eq!(
        as_key(&gateway, alice, "GET", &path, None).await.status,
        200
    );
    // Bob is told it does not exist, however he asks.
    let read = as_key(&gateway, bob, "GET", &path, None).await;
    assert_eq!(read.status, 404);
    assert_eq!(read.json()["error"]["type"], "invalid_request_error");
    assert_eq!(
        as_key(&gateway, bob, "DELETE", &path, None).await.status,
        404
    );
    let continued = as_key(
        &gateway,
        bob,
        "POST",
        "/v1/responses",
        Some(json!({"model": "echo", "previous_response_id": id, "input": "tell me"})),
    )
    .await;
    assert_eq!(continued.status, 404);
    // Bob's requests so far: 3 of his 4.
    // A model outside his list is 403, in OpenAI's shape.
    let forbidden = as_key(
        &gateway,
        bob,
        "POST",
        "/v1/responses",
        Some(json!({"model": "oa/mock-model", "input": "x"})),
    )
    .await;
    assert_eq!(forbidden.status, 403);
    assert_eq!(forbidden.json()["error"]["type"], "permission_error");
    let limited = as_key(
        &gateway,
        bob,
        "POST",
        "/v1/responses",
        Some(json!({"model": "echo", "input": "x"})),
    )
    .await;
    assert_eq!(limited.status, 429, "{}", limited.body);
    assert_eq!(limited.json()["error"]["type"], "rate_limit_error");
    assert!(limited.headers.get("retry-after").is_some());
    // No key at all is 401; Alice still has hers.
    let anonymous = send(client().get(format!("{}{path}", gateway.base)), None).await;
    assert_eq!(anonymous.status, 401);
    assert_eq!(
        as_key(&gateway, alice, "DELETE", &path, None).await.status,
        200
    );
}

/// The two requests Codex CLI 0.171.0 sent in one tool round trip, replayed as recorded
/// against echo, then against a mock that calls a tool.
#[actix_web::test]
async fn codex_requests_are_served() {
    let gateway = harness::start("").await;
    let fixture = include_str!("../fixtures/agents/codex-0.171.0-tool-round-trip.jsonl");
    let bodies: Vec<Value> = fixture
        .lines()
        .map(|line| serde_json::from_str::<Value>(line).unwrap()["body"].clone())
        .collect();
    for body in &bodies {
        assert_eq!(body["model"], "echo/echo");
        let answer = gateway.post("/v1/responses", body).await;
        assert_eq!(answer.status, 200, "{}", answer.body);
        let events = events(&answer);
        let (name, done) = events.last().unwrap();
        assert_eq!(name, "response.completed");
        assert!(done["response"]["usage"]["total_tokens"].as_u64().unwrap() > 0);
        assert_eq!(
            deltas(&events, "response.output_text.delta"),
            "Run the shell command: echo TOOL-OK",
            "echo answers the last user message"
        );
    }
    let mut first = bodies[0].clone();
    first["model"] = json!("oa/mock-tool");
    let events = events(&gateway.post("/v1/responses", &first).await);
    let done = &events.last().unwrap().1["response"];
    assert_eq!(done["output"][0]["type"], "function_call");
    assert_eq!(done["output"][0]["name"], "get_weather");
    let sent = upstream(&gateway, "mock-tool");
    let names: Vec<&str> = sent["tools"]
        .as_array()
        .unwrap()
        .iter()
        .map(|tool| tool["function"]["name"].as_str().unwrap())
        .collect();
    assert!(names.contains(&"exec_command"), "{names:?}");
    assert!(names.contains(&"multi_agent_v1__spawn_agent"), "{names:?}");
    assert!(!names.iter().any(|name| name.contains("web_search")));
    for unknown in ["prompt_cache_key", "client_metadata", "include", "store"] {
        assert!(
            sent.get(unknown).is_none(),
            "{unknown} is not sent upstream"
        );
    }
    // Codex's developer messages lead the conversation (as system, which every chat
    // template takes).
    assert_eq!(sent["messages"][0]["role"], "system");
    assert!(sent["messages"][0]["content"]
        .as_str()
        .unwrap()
        .starts_with("You are a coding agent"));
}

/// With the usage ledger on, stored responses are kept in its database: a second gateway
/// on the same file (as after a restart) reads, continues and deletes them, each key
/// still seeing only its own.
#[actix_web::test]
async fn stored_responses_outlast_a_restart_with_the_ledger_on() {
    let keys = keys_file(
        "restart",
        r#"{"sk-alice-0123456789": "alice", "sk-bob-0123456789ab": "bob"}"#,
    );
    let db = keys.with_file_name("ledger/switchyard.db");
    let _ = std::fs::remove_file(&db);
    let config = format!(
        "[auth]\nkeys_file = \"{}\"\n[ledger]\nenabled = true\npath = \"{}\"\n",
        keys.display(),
        db.display()
    );
    let (alice, bob) = ("sk-alice-0123456789", "sk-bob-0123456789ab");
    let first = harness::start(&config).await;
    let made = as_key(
        &first,
        alice,
        "POST",
        "/v1/responses",
        Some(json!({"model": "oa/mock-restart", "input": "My name is Ada."})),
    )
    .await;
    assert_eq!(made.status, 200, "{}", made.body);
    let object = made.json();
    let id = object["id"].as_str().unwrap().to_owned();
    let path = format!("/v1/responses/{id}");

    let second = harness::start(&config).await;
    // The first gateway's writer puts the row in the table a moment after the answer.
    let mut read = as_key(&second, alice, "GET", &path, None).await;
    for _ in 0..40 {
        if read.status == 200 {
            break;
        }
        actix_web::rt::time::sleep(Duration::from_millis(50)).await;
        read = as_key(&second, alice, "GET", &path, None).await;
    }
    assert_eq!(read.status, 200, "{}", read.body);
    assert_eq!(read.json(), object);
    assert_eq!(as_key(&second, bob, "GET", &path, None).await.status, 404);
    assert_eq!(
        as_key(&second, bob, "DELETE", &path, None).await.status,
        404
    );
    let continued = as_key(
        &second,
        alice,
        "POST",
        "/v1/responses",
        Some(json!({"model": "oa/mock-restart2", "previous_response_id": id, "input": "Name?"})),
    )
    .await;
    assert_eq!(continued.status, 200, "{}", continued.body);
    assert_eq!(
        upstream(&second, "mock-restart2")["messages"],
        json!([
            {"role": "user", "content": "My name is Ada."},
            {"role": "assistant", "content": mock::PIECES.concat()},
            {"role": "user", "content": "Name?"}
        ])
    );
    assert_eq!(
        as_key(&second, alice, "DELETE", &path, None).await.status,
        200
    );
    assert_eq!(as_key(&first, alice, "GET", &path, None).await.status, 404);
}

//! Every dialect against every backend kind, streaming and not: content, roles,
//! finish reasons, token counts and the model name the client used.

use serde_json::{json, Value};

use crate::harness::{self, mock};

const PROMPT: &str = "Hello from the mock 🦀";

/// (model as the client names it, upstream model the mock must see, prompt and
/// completion tokens).
fn backends() -> Vec<(&'static str, Option<&'static str>, u64, u64)> {
    vec![
        ("oa/mock-model", Some("mock-model"), mock::PROMPT_TOKENS, 5),
        ("ol/mock-model", Some("mock-model"), mock::PROMPT_TOKENS, 5),
        // Echo repeats the prompt: five pieces in, five out.
        ("echo", None, 5, 5),
    ]
}

fn expected_text() -> String {
    mock::PIECES.concat()
}

#[actix_web::test]
async fn openai_client_non_stream_every_backend() {
    let gateway = harness::start("").await;
    for (model, upstream, prompt_tokens, completion_tokens) in backends() {
        let answer = gateway
            .post(
                "/v1/chat/completions",
                &json!({"model": model, "messages": [{"role": "user", "content": PROMPT}]}),
            )
            .await;
        assert_eq!(answer.status, 200, "{model}: {}", answer.body);
        assert!(answer.content_type.starts_with("application/json"));
        let body = answer.json();
        assert_eq!(body["object"], "chat.completion");
        assert_eq!(body["model"], model, "the model is named as asked");
        assert!(body["id"].as_str().unwrap().starts_with("chatcmpl-"));
        let choice = &body["choices"][0];
        assert_eq!(choice["message"]["role"], "assistant");
        assert_eq!(choice["message"]["content"], expected_text(), "{model}");
        assert_eq!(choice["finish_reason"], "stop");
        assert_eq!(body["usage"]["prompt_tokens"], prompt_tokens, "{model}");
        assert_eq!(body["usage"]["completion_tokens"], completion_tokens);
        assert_eq!(
            body["usage"]["total_tokens"],
            prompt_tokens + completion_tokens
        );
        if let Some(upstream) = upstream {
            let seen = gateway.mock.requests_for(upstream);
            let last = seen.last().expect("the upstream was called");
            // A whole answer is asked for whole (some servers count usage only then).
            assert_eq!(last.body["stream"], false, "{model}");
        }
    }
}

/// Checks an OpenAI SSE stream the way the SDK stream helpers read it.
fn check_openai_stream(
    events: &[String],
    model: &str,
    include_usage: bool,
) -> (String, Option<Value>) {
    assert_eq!(
        events.last().map(String::as_str),
        Some("[DONE]"),
        "ends with [DONE]"
    );
    let chunks: Vec<Value> = events[..events.len() - 1]
        .iter()
        .map(|e| serde_json::from_str(e).unwrap())
        .collect();
    let id = chunks[0]["id"].clone();
    let created = chunks[0]["created"].clone();
    let mut text = String::new();
    let mut finish = None;
    let mut usage = None;
    for (index, chunk) in chunks.iter().enumerate() {
        assert_eq!(chunk["object"], "chat.completion.chunk");
        assert_eq!(chunk["id"], id, "one id for the stream");
        assert_eq!(chunk["created"], created, "one created for the stream");
        assert_eq!(chunk["model"], model);
        let choices = chunk["choices"].as_array().unwrap();
        if choices.is_empty() {
            assert!(include_usage, "a usage chunk only when asked for");
            assert_eq!(index, chunks.len() - 1, "usage is the last chunk");
            usage = Some(chunk["usage"].clone());
            continue;
        }
        let delta = &choices[0]["delta"];
        assert_eq!(
            delta.get("role").is_some(),
            index == 0,
            "role only in the first chunk"
        );
        if let Some(reason) = choices[0]["finish_reason"].as_str() {
            assert_eq!(delta, &json!({}), "finish_reason comes in its own chunk");
            finish = Some(reason.to_owned());
        }
        text.push_str(delta["content"].as_str().unwrap_or(""));
    }
    assert_eq!(finish.as_deref(), Some("stop"));
    (text, usage)
}

#[actix_web::test]
async fn openai_client_stream_every_backend() {
    let gateway = harness::start("").await;
    for include_usage in [true, false] {
        for (model, _, prompt_tokens, completion_tokens) in backends() {
            let answer = gateway
                .post(
                    "/v1/chat/completions",
                    &json!({"model": model, "stream": true, "stream_options": {"include_usage": include_usage},
                            "messages": [{"role": "user", "content": PROMPT}]}),
                )
                .await;
            assert_eq!(answer.status, 200, "{model}: {}", answer.body);
            assert!(answer.content_type.starts_with("text/event-stream"));
            assert_eq!(answer.headers.get("cache-control").unwrap(), "no-cache");
            let (text, usage) = check_openai_stream(&answer.sse(), model, include_usage);
            assert_eq!(text, expected_text(), "{model}");
            if include_usage {
                let usage = usage.expect("usage chunk");
                assert_eq!(usage["prompt_tokens"], prompt_tokens, "{model}");
                assert_eq!(usage["completion_tokens"], completion_tokens, "{model}");
            } else {
                assert!(usage.is_none());
            }
        }
    }
}

/// Checks the final `done` line's fields.
fn check_done_line(line: &Value, model: &str, prompt_tokens: u64, completion_tokens: u64) {
    assert_eq!(line["done"], true);
    assert_eq!(line["model"], model);
    assert_eq!(line["done_reason"], "stop");
    assert_eq!(line["prompt_eval_count"], prompt_tokens, "{model}");
    assert_eq!(line["eval_count"], completion_tokens, "{model}");
    for key in [
        "total_duration",
        "load_duration",
        "prompt_eval_duration",
        "eval_duration",
    ] {
        assert!(
            line[key].is_u64(),
            "{key} is a number of nanoseconds in {line}"
        );
    }
    assert!(line["created_at"].as_str().unwrap().ends_with('Z'));
}

#[actix_web::test]
async fn ollama_client_stream_by_default_every_backend() {
    let gateway = harness::start("").await;
    for (model, _, prompt_tokens, completion_tokens) in backends() {
        // No "stream" key: Ollama streams by default.
        let answer = gateway
            .post(
                "/api/chat",
                &json!({"model": model, "messages": [{"role": "user", "content": PROMPT}]}),
            )
            .await;
        assert_eq!(answer.status, 200, "{model}: {}", answer.body);
        assert_eq!(answer.content_type, "application/x-ndjson");
        let lines = answer.ndjson();
        let (last, pieces) = lines.split_last().unwrap();
        assert_eq!(pieces.len(), 5, "one line per piece: {lines:?}");
        let mut text = String::new();
        for line in pieces {
            assert_eq!(line["done"], false);
            assert_eq!(line["model"], model);
            assert_eq!(line["message"]["role"], "assistant");
            text.push_str(line["message"]["content"].as_str().unwrap());
        }
        assert_eq!(text, expected_text());
        assert_eq!(last["message"], json!({"role": "assistant", "content": ""}));
        check_done_line(last, model, prompt_tokens, completion_tokens);
        // The mock reports 1.5 ms of prompt evaluation; echo and OpenAI paths measure.
        if model == "oa/mock-model" {
            assert_eq!(
                last["prompt_eval_duration"], 1_500_000,
                "llama-server timings carried"
            );
        }
    }
}

#[actix_web::test]
async fn ollama_client_non_stream_every_backend() {
    let gateway = harness::start("").await;
    for (model, _, prompt_tokens, completion_tokens) in backends() {
        let answer = gateway
            .post(
                "/api/chat",
                &json!({"model": model, "stream": false, "messages": [{"role": "user", "content": PROMPT}]}),
            )
            .await;
        assert_eq!(answer.status, 200, "{model}: {}", answer.body);
        assert_eq!(answer.content_type, "application/json; charset=utf-8");
        let body = answer.json();
        assert_eq!(body["message"]["role"], "assistant");
        assert_eq!(body["message"]["content"], expected_text());
        check_done_line(&body, model, prompt_tokens, completion_tokens);
    }
}

#[actix_web::test]
async fn routing_strips_the_prefix_and_keeps_the_rest() {
    let gateway = harness::start("").await;
    let answer = gateway
        .post(
            "/api/chat",
            &json!({"model": "ol/hf.co/x/mock-y:q4", "stream": false, "messages": [{"role": "user", "content": "hi"}]}),
        )
        .await;
    assert_eq!(answer.status, 200, "{}", answer.body);
    assert_eq!(answer.json()["model"], "ol/hf.co/x/mock-y:q4");
    let seen = gateway.mock.requests_for("hf.co/x/mock-y:q4");
    assert_eq!(
        seen.len(),
        1,
        "the upstream got the name without the prefix"
    );
    assert_eq!(seen[0].path, "/api/chat");
    // Unprefixed names go whole to the default backend (echo here).
    let answer = gateway
        .post(
            "/v1/chat/completions",
            &json!({"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}),
        )
        .await;
    assert_eq!(answer.json()["model"], "gpt-4o-mini");
    assert_eq!(answer.json()["choices"][0]["message"]["content"], "hi");
}

#[actix_web::test]
async fn model_listings_name_backend_slash_model() {
    let gateway = harness::start("").await;
    let models = gateway.get("/v1/models").await.json();
    let ids: Vec<&str> = models["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["id"].as_str().unwrap())
        .collect();
    assert_eq!(
        ids,
        vec!["oa/mock-model", "ol/mock-model:latest", "echo/echo"]
    );
    for model in models["data"].as_array().unwrap() {
        assert_eq!(model["object"], "model");
        assert!(model["created"].is_u64() && model["owned_by"].is_string());
    }
    let tags = gateway.get("/api/tags").await.json();
    let entries = tags["models"].as_array().unwrap();
    assert_eq!(entries.len(), 3);
    for entry in entries {
        assert_eq!(
            entry["name"], entry["model"],
            "both name and model, for every client"
        );
        assert_eq!(entry["digest"].as_str().unwrap().len(), 64);
        assert!(entry["modified_at"].is_string() && entry["details"].is_object());
    }
    assert_eq!(
        entries[1]["details"]["family"], "llama",
        "Ollama's details kept"
    );
    // Every listed name routes back to its backend.
    let answer = gateway
        .post("/api/chat", &json!({"model": "ol/mock-model:latest", "stream": false, "messages": [{"role": "user", "content": "x"}]}))
        .await;
    assert_eq!(answer.status, 200);
    assert_eq!(gateway.mock.requests_for("mock-model:latest").len(), 1);
}

#[actix_web::test]
async fn ollama_probes_and_version() {
    let gateway = harness::start("").await;
    let root = gateway.get("/").await;
    assert_eq!(
        (root.status, root.body.as_str()),
        (200, "Ollama is running")
    );
    let head = harness::send(harness::client().head(format!("{}/", gateway.base)), None).await;
    assert_eq!(head.status, 200);
    let version = gateway.get("/api/version").await.json();
    assert!(version["version"].as_str().unwrap().split('.').count() == 3);
    let health = gateway.get("/health").await;
    assert_eq!(health.status, 200);
    assert_eq!(health.json()["status"], "ok");
}

#[actix_web::test]
async fn empty_messages_only_load_the_model() {
    let gateway = harness::start("").await;
    let answer = gateway
        .post(
            "/api/chat",
            &json!({"model": "ol/mock-model", "messages": []}),
        )
        .await;
    assert_eq!(answer.status, 200);
    let body = answer.json();
    assert_eq!(
        (body["done"].clone(), body["done_reason"].clone()),
        (json!(true), json!("load"))
    );
}

/// `gateway;dur=X, upstream;dur=Y` in milliseconds.
fn server_timing(answer: &crate::harness::Answer) -> (f64, Option<f64>) {
    let header = answer
        .headers
        .get("server-timing")
        .expect("Server-Timing on every answer")
        .to_str()
        .unwrap();
    let mut gateway = None;
    let mut upstream = None;
    for metric in header.split(',') {
        let (name, duration) = metric
            .trim()
            .split_once(";dur=")
            .unwrap_or_else(|| panic!("{header}"));
        let duration: f64 = duration.parse().unwrap();
        match name {
            "gateway" => gateway = Some(duration),
            "upstream" => upstream = Some(duration),
            other => panic!("unexpected metric {other} in {header}"),
        }
    }
    (gateway.expect("gateway time"), upstream)
}

#[actix_web::test]
async fn server_timing_on_every_dialect_and_backend() {
    let gateway = harness::start("").await;
    for (model, _, _, _) in backends() {
        for stream in [false, true] {
            let chat = json!({"model": model, "stream": stream, "messages": [{"role": "user", "content": PROMPT}]});
            for path in ["/v1/chat/completions", "/api/chat"] {
                let answer = gateway.post(path, &chat).await;
                let (own, upstream) = server_timing(&answer);
                assert!(
                    own >= 0.0 && upstream.expect("the backend was called") >= 0.0,
                    "{path} {model}"
                );
            }
        }
    }
    // A slow upstream shows as upstream time, not gateway time.
    for path in ["/v1/chat/completions", "/api/chat"] {
        let slow = gateway
            .post(
                path,
                &json!({"model": "oa/mock-delay", "messages": [{"role": "user", "content": "x"}]}),
            )
            .await;
        let (own, upstream) = server_timing(&slow);
        assert!(upstream.unwrap() >= 200.0, "{path}: {upstream:?}");
        assert!(own < 200.0, "{path}: {own}");
    }
    // Routes that call no backend report the gateway's time alone.
    let (_, upstream) = server_timing(&gateway.get("/api/version").await);
    assert_eq!(upstream, None);
    let (_, upstream) = server_timing(
        &gateway
            .post("/v1/chat/completions", &json!({"model": "echo"}))
            .await,
    );
    assert_eq!(upstream, None, "a 400 never reached a backend");
    let (_, upstream) = server_timing(
        &gateway
            .post(
                "/api/embed",
                &json!({"model": "ol/mock-model", "input": "x"}),
            )
            .await,
    );
    assert!(upstream.is_some());
}

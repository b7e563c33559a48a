//! Every failure gets its status and a body in the caller's dialect; failures after a
//! stream started end it with one error event in the stream's own format.

use serde_json::{json, Value};

use crate::harness::{self, Answer};

fn openai_error(answer: &Answer) -> Value {
    assert!(
        answer.content_type.starts_with("application/json"),
        "{}",
        answer.content_type
    );
    let body = answer.json();
    let error = body["error"].clone();
    for key in ["message", "type", "param", "code"] {
        assert!(
            error.get(key).is_some(),
            "OpenAI errors carry {key}: {body}"
        );
    }
    assert!(error["message"].is_string() && error["type"].is_string());
    error
}

fn ollama_error(answer: &Answer) -> String {
    assert!(answer.content_type.starts_with("application/json"));
    answer.json()["error"]
        .as_str()
        .expect("Ollama errors are a string")
        .to_owned()
}

fn chat(model: &str) -> Value {
    json!({"model": model, "messages": [{"role": "user", "content": "hi"}]})
}

#[actix_web::test]
async fn malformed_json_and_missing_fields_are_400_naming_the_problem() {
    let gateway = harness::start("").await;
    let answer = gateway
        .post_raw("/v1/chat/completions", "{\"model\": ")
        .await;
    assert_eq!(answer.status, 400);
    assert_eq!(openai_error(&answer)["type"], "invalid_request_error");
    let answer = gateway
        .post("/v1/chat/completions", &json!({"model": "echo"}))
        .await;
    assert_eq!(answer.status, 400);
    assert!(openai_error(&answer)["message"]
        .as_str()
        .unwrap()
        .contains("messages"));
    let answer = gateway
        .post(
            "/v1/chat/completions",
            &json!({"model": "echo", "messages": []}),
        )
        .await;
    assert_eq!(answer.status, 400);
    assert_eq!(openai_error(&answer)["param"], "messages");
    let answer = gateway.post("/api/chat", &json!({"messages": []})).await;
    assert_eq!(answer.status, 400);
    assert!(ollama_error(&answer).contains("model"));
    let answer = gateway.post_raw("/api/chat", "not json").await;
    assert_eq!(answer.status, 400);
    assert!(ollama_error(&answer).contains("invalid request body"));
    let answer = gateway
        .post(
            "/api/chat",
            &json!({"model": "echo", "messages": [{"role": "wizard", "content": "x"}]}),
        )
        .await;
    assert_eq!(answer.status, 400);
    assert!(ollama_error(&answer).contains("messages[0].role"));
    let answer = gateway
        .post("/api/chat", &json!({"model": "echo", "options": {"temperature": "hot"}, "messages": [{"role": "user", "content": "x"}]}))
        .await;
    assert_eq!(answer.status, 400);
    assert!(ollama_error(&answer).contains("options.temperature"));
}

#[actix_web::test]
async fn unknown_model_is_404_naming_it() {
    let gateway = harness::start_config(
        "[server]\nlisten = \"127.0.0.1:0\"\n[[backends]]\nname = \"ol\"\nkind = \"ollama\"\nurl = \"{mock}\"\n",
    )
    .await;
    let answer = gateway.post("/v1/chat/completions", &chat("llama3")).await;
    assert_eq!(answer.status, 404);
    let error = openai_error(&answer);
    assert_eq!(error["code"], "model_not_found");
    assert!(error["message"].as_str().unwrap().contains("llama3"));
    let answer = gateway.post("/api/chat", &chat("llama3")).await;
    assert_eq!(answer.status, 404);
    assert!(ollama_error(&answer).contains("model 'llama3' not found"));
}

#[actix_web::test]
async fn body_over_the_limit_is_413() {
    let gateway = harness::start("").await;
    let big = "x".repeat(70_000);
    let answer = gateway.post("/v1/chat/completions", &chat(&big)).await;
    assert_eq!(answer.status, 413);
    openai_error(&answer);
    let answer = gateway.post("/api/chat", &chat(&big)).await;
    assert_eq!(answer.status, 413);
    assert!(ollama_error(&answer).contains("larger than the limit"));
    // Every route with a body keeps the one limit and answers in its dialect.
    for path in [
        "/api/generate",
        "/api/embed",
        "/api/embeddings",
        "/api/show",
    ] {
        let answer = gateway.post(path, &json!({"model": big})).await;
        assert_eq!(answer.status, 413, "{path}");
        ollama_error(&answer);
    }
    let answer = gateway
        .post("/v1/embeddings", &json!({"model": "echo", "input": big}))
        .await;
    assert_eq!(answer.status, 413);
    openai_error(&answer);
}

#[actix_web::test]
async fn unreachable_upstream_is_502() {
    // Port 9 on loopback: nothing listens, so the connection is refused at once.
    let gateway = harness::start(
        "[[backends]]\nname = \"down\"\nkind = \"openai\"\nurl = \"http://127.0.0.1:9/v1\"\n[[backends]]\nname = \"downo\"\nkind = \"ollama\"\nurl = \"http://127.0.0.1:9\"\n",
    )
    .await;
    for model in ["down/m", "downo/m"] {
        let answer = gateway.post("/v1/chat/completions", &chat(model)).await;
        assert_eq!(answer.status, 502, "{model}: {}", answer.body);
        assert_eq!(openai_error(&answer)["type"], "server_error");
        let answer = gateway.post("/api/chat", &chat(model)).await;
        assert_eq!(answer.status, 502);
        assert!(ollama_error(&answer).contains("unreachable"));
    }
    // A backend that is down is left out of the listings, not failing them.
    let models = gateway.get("/v1/models").await;
    assert_eq!(models.status, 200);
    assert_eq!(models.json()["data"].as_array().unwrap().len(), 3);
}

#[actix_web::test]
async fn upstream_that_hangs_before_headers_is_504() {
    let gateway = harness::start_with("", "response_timeout_secs = 0.5").await;
    for model in ["oa/mock-hang", "ol/mock-hang"] {
        let answer = gateway.post("/v1/chat/completions", &chat(model)).await;
        assert_eq!(answer.status, 504, "{model}: {}", answer.body);
        assert_eq!(openai_error(&answer)["code"], "timeout");
        let answer = gateway.post("/api/chat", &json!({"model": model, "stream": true, "messages": [{"role": "user", "content": "x"}]})).await;
        assert_eq!(answer.status, 504);
        assert!(ollama_error(&answer).contains("timed out"));
    }
}

#[actix_web::test]
async fn upstream_error_status_is_passed_on_translated() {
    let gateway = harness::start("").await;
    for (model, status) in [
        ("oa/mock-status429", 429),
        ("ol/mock-status429", 429),
        ("oa/mock-status500", 500),
        ("ol/mock-status404", 404),
    ] {
        let answer = gateway.post("/v1/chat/completions", &chat(model)).await;
        assert_eq!(answer.status, status, "{model}");
        let error = openai_error(&answer);
        assert_eq!(error["message"], format!("mock refused with {status}"));
        assert!(
            !error["code"].is_number(),
            "llama-server's integer code is not copied"
        );
        assert_eq!(
            answer.headers.get("retry-after").unwrap(),
            "7",
            "the upstream's back-off is passed on"
        );
        let answer = gateway.post("/api/chat", &chat(model)).await;
        assert_eq!(answer.status, status);
        assert_eq!(ollama_error(&answer), format!("mock refused with {status}"));
        assert_eq!(answer.headers.get("retry-after").unwrap(), "7");
    }
}

#[actix_web::test]
async fn upstream_redirect_is_502_and_not_followed() {
    let gateway = harness::start("").await;
    for model in ["oa/mock-status307", "ol/mock-status301"] {
        let answer = gateway.post("/v1/chat/completions", &chat(model)).await;
        assert_eq!(answer.status, 502, "{model}: {}", answer.body);
        let message = openai_error(&answer)["message"]
            .as_str()
            .unwrap()
            .to_owned();
        assert!(
            message.contains("http://127.0.0.1:9/elsewhere"),
            "{message}"
        );
        assert!(message.contains("not followed"), "{message}");
        let answer = gateway.post("/api/chat", &chat(model)).await;
        assert_eq!(answer.status, 502);
        assert!(ollama_error(&answer).contains("not followed"));
    }
    assert_eq!(gateway.mock.requests_for("mock-status307").len(), 2);
}

#[actix_web::test]
async fn garbage_from_upstream_is_502() {
    let gateway = harness::start("").await;
    for model in ["oa/mock-garbage", "ol/mock-garbage"] {
        let answer = gateway.post("/v1/chat/completions", &json!({"model": model, "stream": true, "messages": [{"role": "user", "content": "x"}]})).await;
        assert_eq!(answer.status, 502, "{model}: {}", answer.body);
        assert!(openai_error(&answer)["message"]
            .as_str()
            .unwrap()
            .contains("invalid response"));
        let answer = gateway.post("/api/chat", &chat(model)).await;
        assert_eq!(answer.status, 502);
    }
}

/// The last SSE event is one error object and there is no `[DONE]`.
fn assert_sse_ends_in_error(answer: &Answer) -> Value {
    assert_eq!(answer.status, 200, "the stream had started");
    let events = answer.sse();
    assert!(
        !events.iter().any(|e| e == "[DONE]"),
        "no [DONE] after an error: {events:?}"
    );
    let last: Value = serde_json::from_str(events.last().unwrap()).unwrap();
    assert!(last["error"]["message"].is_string(), "{last}");
    let texts: Vec<&String> = events
        .iter()
        .filter(|e| e.contains("\"content\":\"Hello\""))
        .collect();
    assert_eq!(
        texts.len(),
        1,
        "what came before the error was relayed: {events:?}"
    );
    last
}

/// The last NDJSON line is `{"error": "..."}` and no `done` line came.
fn assert_ndjson_ends_in_error(answer: &Answer) -> String {
    assert_eq!(answer.status, 200);
    let lines = answer.ndjson();
    assert!(
        !lines.iter().any(|l| l["done"] == true),
        "no done line after an error: {lines:?}"
    );
    assert_eq!(lines[0]["message"]["content"], "Hello");
    let last = lines.last().unwrap();
    assert_eq!(last.as_object().unwrap().len(), 1, "only the error: {last}");
    last["error"].as_str().unwrap().to_owned()
}

/// Both dialects' streams from `model` end in one error event whose message says `expect`.
async fn assert_streams_end_in_error(gateway: &harness::Harness, model: &str, expect: &str) {
    let sse = gateway
        .post("/v1/chat/completions", &json!({"model": model, "stream": true, "messages": [{"role": "user", "content": "x"}]}))
        .await;
    let error = assert_sse_ends_in_error(&sse);
    assert!(
        error["error"]["message"].as_str().unwrap().contains(expect),
        "{model}: {error}"
    );
    let ndjson = gateway
        .post(
            "/api/chat",
            &json!({"model": model, "messages": [{"role": "user", "content": "x"}]}),
        )
        .await;
    let message = assert_ndjson_ends_in_error(&ndjson);
    assert!(message.contains(expect), "{model}: {message}");
}

#[actix_web::test]
async fn failures_mid_stream_end_with_one_error_event() {
    let gateway = harness::start_with("", "idle_timeout_secs = 0.5").await;
    for backend in ["oa", "ol"] {
        for (case, expect) in [
            ("errstream", "mock failed mid-stream"),
            ("truncate", "ended"),
            ("stall", "stalled"),
        ] {
            let model = format!("{backend}/mock-{case}");
            assert_streams_end_in_error(&gateway, &model, expect).await;
        }
    }
}

#[actix_web::test]
async fn failures_mid_answer_fail_a_non_streamed_request() {
    let gateway = harness::start("").await;
    let answer = gateway
        .post("/v1/chat/completions", &chat("oa/mock-truncate"))
        .await;
    assert_eq!(
        answer.status, 502,
        "a cut-off answer is not passed off as complete"
    );
    let answer = gateway.post("/api/chat", &json!({"model": "ol/mock-truncate", "stream": false, "messages": [{"role": "user", "content": "x"}]})).await;
    assert_eq!(answer.status, 502);
    let answer = gateway.post("/api/chat", &json!({"model": "ol/mock-errstream", "stream": false, "messages": [{"role": "user", "content": "x"}]})).await;
    assert_eq!(answer.status, 500, "the upstream's own status");
    assert_eq!(ollama_error(&answer), "mock failed mid-stream");
}

#[actix_web::test]
async fn unknown_routes_answer_in_their_dialect() {
    let gateway = harness::start("").await;
    let answer = gateway.get("/v1/nothing").await;
    assert_eq!(answer.status, 404);
    openai_error(&answer);
    let answer = gateway.get("/api/nothing").await;
    assert_eq!(answer.status, 404);
    ollama_error(&answer);
}

#[actix_web::test]
async fn each_scope_answers_whole_path_segments_only() {
    let gateway = harness::start("").await;
    // `/v1` itself and a wrong method on a route are the OpenAI scope's.
    for answer in [
        gateway.get("/v1").await,
        gateway.get("/v1/").await,
        gateway.get("/v1/chat/completions").await,
    ] {
        assert_eq!(answer.status, 404);
        openai_error(&answer);
    }
    // A path that only starts with a scope's letters is in no scope: Ollama's, like `/`.
    for path in ["/v1x", "/api", "/apix", "/metricsx"] {
        let answer = gateway.get(path).await;
        assert_eq!(answer.status, 404, "{path}");
        assert!(ollama_error(&answer).contains("is not a route"), "{path}");
    }
}

/// An upstream that starts a stream in its protocol, then resets the connection.
async fn resetting_upstream() -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    actix_web::rt::spawn(async move {
        while let Ok((mut socket, _)) = listener.accept().await {
            actix_web::rt::spawn(async move {
                let mut request = Vec::new();
                let mut buffer = [0u8; 4096];
                while !request.windows(4).any(|w| w == b"\r\n\r\n") {
                    match socket.read(&mut buffer).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => request.extend_from_slice(&buffer[..n]),
                    }
                }
                let text = String::from_utf8_lossy(&request);
                let piece = if text.starts_with("POST /api/") {
                    "{\"model\":\"m\",\"created_at\":\"2025-01-01T00:00:00Z\",\"message\":{\"role\":\"assistant\",\"content\":\"Hello\"},\"done\":false}\n".to_owned()
                } else {
                    "data: {\"choices\":[{\"index\":0,\"delta\":{\"role\":\"assistant\",\"content\":\"Hello\"},\"finish_reason\":null}]}\n\n".to_owned()
                };
                let head = "HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ntransfer-encoding: chunked\r\n\r\n";
                let chunk = format!("{:x}\r\n{piece}\r\n", piece.len());
                let _ = socket.write_all(format!("{head}{chunk}").as_bytes()).await;
                let _ = socket.flush().await;
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                // Linger zero: closing sends RST, as a crashed server would.
                let _ = socket.set_zero_linger();
                drop(socket);
            });
        }
    });
    format!("http://{address}")
}

#[actix_web::test]
async fn a_reset_mid_stream_ends_it_with_one_error_event() {
    let reset = resetting_upstream().await;
    let gateway = harness::start(&format!(
        "[[backends]]\nname = \"ro\"\nkind = \"openai\"\nurl = \"{reset}/v1\"\n[[backends]]\nname = \"rl\"\nkind = \"ollama\"\nurl = \"{reset}\"\n"
    ))
    .await;
    for model in ["ro/m", "rl/m"] {
        assert_streams_end_in_error(&gateway, model, "broke").await;
    }
}

#[actix_web::test]
async fn an_upstream_that_never_accepts_is_a_connect_timeout_504() {
    // A listener whose accept queue is full: further connection attempts go
    // unanswered, like a host that drops packets.
    let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    socket
        .bind(
            &"127.0.0.1:0"
                .parse::<std::net::SocketAddr>()
                .unwrap()
                .into(),
        )
        .unwrap();
    socket.listen(0).unwrap();
    let address = socket.local_addr().unwrap().as_socket().unwrap();
    let mut fillers = Vec::new();
    for _ in 0..4 {
        if let Ok(stream) =
            std::net::TcpStream::connect_timeout(&address, std::time::Duration::from_millis(200))
        {
            fillers.push(stream);
        }
    }
    let gateway = harness::start(&format!(
        "[[backends]]\nname = \"black\"\nkind = \"openai\"\nurl = \"http://{address}/v1\"\nconnect_timeout_secs = 0.3\n"
    ))
    .await;
    let answer = gateway.post("/v1/chat/completions", &chat("black/m")).await;
    assert_eq!(answer.status, 504, "{}", answer.body);
    assert!(
        openai_error(&answer)["message"]
            .as_str()
            .unwrap()
            .contains("could not connect"),
        "{}",
        answer.body
    );
    drop(fillers);
}

#[actix_web::test]
async fn null_lists_read_as_empty() {
    let gateway = harness::start("").await;
    let answer = gateway
        .post(
            "/api/chat",
            &json!({"model": "echo", "stream": false,
            "messages": [{"role": "user", "content": "hi", "images": null, "tool_calls": null}]}),
        )
        .await;
    assert_eq!(answer.status, 200, "{}", answer.body);
    let answer = gateway
        .post("/v1/chat/completions", &json!({"model": "echo",
            "messages": [{"role": "assistant", "content": "a", "tool_calls": null}, {"role": "user", "content": "b"}]}))
        .await;
    assert_eq!(answer.status, 200, "{}", answer.body);
    let unload = gateway
        .post(
            "/api/generate",
            &json!({"model": "echo", "prompt": "", "keep_alive": 0, "stream": false}),
        )
        .await
        .json();
    assert_eq!(
        (unload["done_reason"].clone(), unload["context"].clone()),
        (json!("unload"), json!([]))
    );
}

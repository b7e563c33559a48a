//! Streams across the crossings: tool calls reassembled or split, reasoning carried,
//! chunks relayed as they arrive, and a client that hangs up cancelling the upstream.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use serde_json::{json, Value};

use crate::harness::{self, client};

fn tools_request(model: &str, stream: bool) -> Value {
    json!({"model": model, "stream": stream, "messages": [{"role": "user", "content": "Weather in Tokyo?"}],
           "tools": [{"type": "function", "function": {"name": "get_weather", "description": "Weather by city",
                      "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}]})
}

#[actix_web::test]
async fn openai_client_gets_tool_calls_from_every_backend() {
    let gateway = harness::start("").await;
    for model in ["oa/mock-tool", "ol/mock-tool"] {
        let body = gateway
            .post("/v1/chat/completions", &tools_request(model, false))
            .await
            .json();
        let choice = &body["choices"][0];
        assert_eq!(choice["finish_reason"], "tool_calls", "{model}");
        assert_eq!(choice["message"]["content"], Value::Null);
        let call = &choice["message"]["tool_calls"][0];
        assert_eq!(call["type"], "function");
        assert_eq!(call["id"], "call_mock1");
        assert_eq!(call["function"]["name"], "get_weather");
        let arguments: Value =
            serde_json::from_str(call["function"]["arguments"].as_str().unwrap()).unwrap();
        assert_eq!(arguments, json!({"city": "Tokyo"}));

        let events = gateway
            .post("/v1/chat/completions", &tools_request(model, true))
            .await
            .sse();
        let mut arguments = String::new();
        let mut firsts = 0;
        let mut finish = None;
        for event in events.iter().filter(|e| *e != "[DONE]") {
            let chunk: Value = serde_json::from_str(event).unwrap();
            let choice = &chunk["choices"][0];
            if let Some(reason) = choice["finish_reason"].as_str() {
                finish = Some(reason.to_owned());
            }
            for fragment in choice["delta"]["tool_calls"]
                .as_array()
                .into_iter()
                .flatten()
            {
                assert_eq!(fragment["index"], 0, "contiguous indices from 0");
                assert!(
                    fragment["function"].is_object(),
                    "every fragment has a function object"
                );
                if fragment.get("id").is_some() {
                    firsts += 1;
                    assert_eq!(fragment["type"], "function");
                    assert_eq!(fragment["function"]["name"], "get_weather");
                } else {
                    assert!(
                        fragment["function"].get("name").is_none(),
                        "the name is sent once"
                    );
                }
                arguments.push_str(fragment["function"]["arguments"].as_str().unwrap());
            }
        }
        assert_eq!(firsts, 1, "{model}: id, type and name once per call");
        assert_eq!(
            serde_json::from_str::<Value>(&arguments).unwrap(),
            json!({"city": "Tokyo"})
        );
        assert_eq!(finish.as_deref(), Some("tool_calls"));
    }
}

#[actix_web::test]
async fn ollama_client_gets_whole_tool_calls_from_every_backend() {
    let gateway = harness::start("").await;
    for model in ["oa/mock-tool", "ol/mock-tool"] {
        let lines = gateway
            .post("/api/chat", &tools_request(model, true))
            .await
            .ndjson();
        let with_calls: Vec<&Value> = lines
            .iter()
            .filter(|l| l["message"].get("tool_calls").is_some())
            .collect();
        assert_eq!(
            with_calls.len(),
            1,
            "{model}: all calls of a turn in one line: {lines:?}"
        );
        let call = &with_calls[0]["message"]["tool_calls"][0];
        assert_eq!(call["function"]["name"], "get_weather");
        assert_eq!(
            call["function"]["arguments"],
            json!({"city": "Tokyo"}),
            "arguments are an object"
        );
        assert_eq!(call["function"]["index"], 0);
        let last = lines.last().unwrap();
        assert_eq!(
            (last["done"].clone(), last["done_reason"].clone()),
            (json!(true), json!("stop"))
        );

        let body = gateway
            .post("/api/chat", &tools_request(model, false))
            .await
            .json();
        assert_eq!(
            body["message"]["tool_calls"][0]["function"]["arguments"],
            json!({"city": "Tokyo"})
        );
        assert_eq!(body["done_reason"], "stop");
    }
}

#[actix_web::test]
async fn reasoning_crosses_both_ways() {
    let gateway = harness::start("").await;
    for model in ["oa/mock-think", "ol/mock-think"] {
        let lines = gateway
            .post(
                "/api/chat",
                &json!({"model": model, "messages": [{"role": "user", "content": "x"}]}),
            )
            .await
            .ndjson();
        let thinking: String = lines
            .iter()
            .filter_map(|l| l["message"]["thinking"].as_str())
            .collect();
        assert_eq!(thinking, "Let me think.", "{model}");
        let first_content = lines
            .iter()
            .position(|l| l["message"]["content"] != "")
            .unwrap();
        let last_thinking = lines
            .iter()
            .rposition(|l| l["message"].get("thinking").is_some())
            .unwrap();
        assert!(last_thinking < first_content, "thinking precedes content");

        let body = gateway
            .post(
                "/v1/chat/completions",
                &json!({"model": model, "messages": [{"role": "user", "content": "x"}]}),
            )
            .await
            .json();
        assert_eq!(
            body["choices"][0]["message"]["reasoning_content"],
            "Let me think."
        );
        let events = gateway
            .post("/v1/chat/completions", &json!({"model": model, "stream": true, "messages": [{"role": "user", "content": "x"}]}))
            .await
            .sse();
        let reasoning: String = events
            .iter()
            .filter(|e| *e != "[DONE]")
            .filter_map(|e| {
                serde_json::from_str::<Value>(e).unwrap()["choices"][0]["delta"]
                    ["reasoning_content"]
                    .as_str()
                    .map(str::to_owned)
            })
            .collect();
        assert_eq!(reasoning, "Let me think.");
    }
}

#[actix_web::test]
async fn a_client_that_hangs_up_cancels_the_upstream() {
    let gateway = harness::start("").await;
    let cases = [
        ("/v1/chat/completions", "oa/mock-slow"),
        ("/api/chat", "ol/mock-slow"),
        ("/v1/chat/completions", "ol/mock-slow"),
        ("/api/chat", "oa/mock-slow"),
    ];
    for (number, (path, model)) in cases.into_iter().enumerate() {
        let body =
            json!({"model": model, "stream": true, "messages": [{"role": "user", "content": "x"}]});
        let mut response = client()
            .post(format!("{}{path}", gateway.base))
            .insert_header(("content-type", "application/json"))
            .send_body(body.to_string())
            .await
            .unwrap();
        // The slow upstream takes five seconds in all; its first piece is relayed at once.
        let first = response.next().await.expect("a first chunk").unwrap();
        assert!(!first.is_empty());
        drop(response);
        gateway
            .until_cancelled(
                number + 1,
                &format!("{path} {model}: the upstream stream was dropped when the client left"),
            )
            .await;
    }
}

/// An upstream that reads a request, never answers, and notes when the gateway closes
/// the connection. (An HTTP framework would not tell: it keeps a handler running.)
async fn silent_upstream() -> (String, Arc<AtomicUsize>) {
    use tokio::io::AsyncReadExt;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    let closed = Arc::new(AtomicUsize::new(0));
    let seen = closed.clone();
    actix_web::rt::spawn(async move {
        loop {
            let Ok((mut socket, _)) = listener.accept().await else {
                return;
            };
            let seen = seen.clone();
            actix_web::rt::spawn(async move {
                let mut buffer = [0u8; 4096];
                // Read until the peer closes; the request itself arrives first.
                loop {
                    match socket.read(&mut buffer).await {
                        Ok(0) | Err(_) => break,
                        Ok(_) => {}
                    }
                }
                seen.fetch_add(1, Ordering::SeqCst);
            });
        }
    });
    (format!("http://{address}"), closed)
}

#[actix_web::test]
async fn a_client_that_hangs_up_before_the_upstream_answered_cancels_it() {
    let (silent, closed) = silent_upstream().await;
    let gateway = harness::start(&format!(
        "[[backends]]\nname = \"so\"\nkind = \"openai\"\nurl = \"{silent}/v1\"\n[[backends]]\nname = \"sl\"\nkind = \"ollama\"\nurl = \"{silent}\"\n"
    ))
    .await;
    let cases = [
        ("/v1/chat/completions", "so/m", true),
        ("/api/chat", "sl/m", true),
        ("/v1/chat/completions", "sl/m", true),
        // Whole answers are asked for whole: the wait before them is cancelled too.
        ("/v1/chat/completions", "so/m", false),
        ("/api/chat", "so/m", false),
        ("/api/chat", "sl/m", false),
    ];
    for (number, (path, model, stream)) in cases.into_iter().enumerate() {
        let body = json!({"model": model, "stream": stream, "messages": [{"role": "user", "content": "x"}]});
        let gave_up = awc::Client::builder()
            .timeout(Duration::from_millis(300))
            .finish()
            .post(format!("{}{path}", gateway.base))
            .insert_header(("content-type", "application/json"))
            .send_body(body.to_string())
            .await;
        assert!(
            gave_up.is_err(),
            "the upstream never answers, so the client gives up"
        );
        let mut waited = Duration::ZERO;
        while closed.load(Ordering::SeqCst) <= number && waited < Duration::from_secs(4) {
            actix_web::rt::time::sleep(Duration::from_millis(50)).await;
            waited += Duration::from_millis(50);
        }
        assert_eq!(
            closed.load(Ordering::SeqCst),
            number + 1,
            "{path} {model}: the upstream connection was closed"
        );
    }
    // Embeddings wait on the upstream the same way.
    let before = closed.load(Ordering::SeqCst);
    for (number, (path, model)) in [("/v1/embeddings", "so/m"), ("/api/embed", "sl/m")]
        .into_iter()
        .enumerate()
    {
        let gave_up = awc::Client::builder()
            .timeout(Duration::from_millis(300))
            .finish()
            .post(format!("{}{path}", gateway.base))
            .insert_header(("content-type", "application/json"))
            .send_body(json!({"model": model, "input": "x"}).to_string())
            .await;
        assert!(gave_up.is_err());
        let mut waited = Duration::ZERO;
        while closed.load(Ordering::SeqCst) <= before + number && waited < Duration::from_secs(4) {
            actix_web::rt::time::sleep(Duration::from_millis(50)).await;
            waited += Duration::from_millis(50);
        }
        assert_eq!(
            closed.load(Ordering::SeqCst),
            before + number + 1,
            "{path}: the upstream connection was closed"
        );
    }
}

#[actix_web::test]
async fn hundreds_of_streams_flow_at_once_through_one_backend() {
    let gateway = harness::start("").await;
    let client = awc::Client::builder()
        .connector(awc::Connector::new().limit(0))
        .timeout(Duration::from_secs(30))
        .finish();
    let streams = (0..250).map(|index| {
        let client = client.clone();
        let url = format!("{}/v1/chat/completions", gateway.base);
        async move {
            let body = json!({"model": "oa/mock-chunks3-gap400", "stream": true, "messages": [{"role": "user", "content": index.to_string()}]});
            let mut response = client.post(url).insert_header(("content-type", "application/json")).send_body(body.to_string()).await.unwrap();
            let body = response.body().limit(1 << 20).await.unwrap();
            String::from_utf8(body.to_vec()).unwrap().ends_with("data: [DONE]\n\n")
        }
    });
    let finished = futures::future::join_all(streams).await;
    assert!(finished.iter().all(|ok| *ok), "every stream completed");
    let peak = gateway.mock.peak_streaming.load(Ordering::SeqCst);
    assert_eq!(
        peak, 250,
        "no stream waited for another's upstream connection"
    );
}

#[actix_web::test]
async fn upstream_connections_are_reused_after_a_complete_answer() {
    let gateway = harness::start("").await;
    let client = client();
    for round in 0..12 {
        for (path, model) in [
            ("/v1/chat/completions", "oa/mock-model"),
            ("/api/chat", "ol/mock-model"),
        ] {
            let body = json!({"model": model, "stream": round % 2 == 0, "messages": [{"role": "user", "content": "x"}]});
            let answer = harness::send(
                client.post(format!("{}{path}", gateway.base)),
                Some(&body.to_string()),
            )
            .await;
            assert_eq!(answer.status, 200);
        }
    }
    // One connection per backend and gateway worker at most, not one per request.
    let connections = gateway.mock.connections.load(Ordering::SeqCst);
    assert!(
        connections <= 4,
        "{connections} upstream connections for 24 requests"
    );
}

/// The chunked-encoding frames of one streamed answer, read off a raw connection so that
/// no client library joins or splits them.
async fn answer_chunks(base: &str, path: &str, body: &Value) -> Vec<String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let address = base.trim_start_matches("http://");
    let mut socket = tokio::net::TcpStream::connect(address).await.unwrap();
    let body = body.to_string();
    let request = format!(
        "POST {path} HTTP/1.1\r\nHost: {address}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    socket.write_all(request.as_bytes()).await.unwrap();
    let mut raw = Vec::new();
    socket.read_to_end(&mut raw).await.unwrap();
    let raw = String::from_utf8(raw).unwrap();
    let (head, mut rest) = raw.split_once("\r\n\r\n").unwrap();
    assert!(
        head.to_ascii_lowercase()
            .contains("transfer-encoding: chunked"),
        "{head}"
    );
    let mut chunks = Vec::new();
    loop {
        let (size, after) = rest.split_once("\r\n").unwrap();
        let size = usize::from_str_radix(size.trim(), 16).unwrap();
        if size == 0 {
            return chunks;
        }
        chunks.push(after[..size].to_owned());
        rest = &after[size + 2..];
    }
}

#[actix_web::test]
async fn events_that_arrive_together_leave_together_and_apart_leave_apart() {
    let gateway = harness::start("").await;
    for (path, model) in [
        ("/v1/chat/completions", "oa/mock-chunks20"),
        ("/api/chat", "ol/mock-chunks20"),
    ] {
        let body =
            json!({"model": model, "stream": true, "messages": [{"role": "user", "content": "x"}]});
        let chunks = answer_chunks(&gateway.base, path, &body).await;
        let text = chunks.concat();
        for i in 0..20 {
            assert!(
                text.contains(&format!("w{i} ")),
                "{model}: piece {i} in {text}"
            );
        }
        // The mock writes its 20 pieces at once; one event per frame would be 21 or more.
        assert!(chunks.len() <= 6, "{model}: {} frames", chunks.len());
    }
    // Pieces 150 ms apart cannot be joined: each leaves when it arrives.
    let body = json!({"model": "oa/mock-chunks3-gap150", "stream": true, "messages": [{"role": "user", "content": "x"}]});
    let chunks = answer_chunks(&gateway.base, "/v1/chat/completions", &body).await;
    let with_text = chunks
        .iter()
        .filter(|c| c.contains("\"content\":\"w"))
        .count();
    assert_eq!(with_text, 3, "{chunks:?}");
    for chunk in chunks.iter().filter(|c| c.contains("\"content\":\"w")) {
        assert_eq!(chunk.matches("\"content\":\"w").count(), 1, "{chunk}");
    }
}

/// The value of `switchyard_http_requests_total` for one route and status (0 when absent).
fn requests_counted(metrics: &str, route: &str, status: u16) -> u64 {
    let prefix =
        format!("switchyard_http_requests_total{{route=\"{route}\",status=\"{status}\"}} ");
    metrics
        .lines()
        .find_map(|line| line.strip_prefix(&prefix))
        .map_or(0, |count| count.parse().unwrap())
}

#[actix_web::test]
async fn a_stream_counts_with_the_outcome_it_really_had() {
    let gateway = harness::start("").await;
    let stream = |model: &str| json!({"model": model, "stream": true, "messages": [{"role": "user", "content": "x"}]});
    // Clean, failed half way (an upstream's error event; a cut-off upstream): all start
    // with 200, only the first ends well.
    let clean = gateway.post("/v1/chat/completions", &stream("echo")).await;
    assert_eq!(clean.status, 200);
    let failed = gateway
        .post("/v1/chat/completions", &stream("oa/mock-errstream"))
        .await;
    assert_eq!(failed.status, 200);
    assert!(
        failed.body.contains("mock failed mid-stream"),
        "{}",
        failed.body
    );
    let cut = gateway.post("/api/chat", &stream("ol/mock-truncate")).await;
    assert_eq!(cut.status, 200);
    assert!(cut.ndjson().last().unwrap()["error"].is_string());
    // A client that leaves half way.
    let mut response = client()
        .post(format!("{}/api/chat", gateway.base))
        .insert_header(("content-type", "application/json"))
        .send_body(stream("ol/mock-slow").to_string())
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    response.next().await.expect("a first chunk").unwrap();
    drop(response);
    let mut metrics = String::new();
    for _ in 0..80 {
        metrics = gateway.get("/metrics").await.body;
        if requests_counted(&metrics, "/api/chat", 499) == 1 {
            break;
        }
        actix_web::rt::time::sleep(Duration::from_millis(50)).await;
    }
    let chat = "/v1/chat/completions";
    assert_eq!(requests_counted(&metrics, chat, 200), 1, "{metrics}");
    assert_eq!(requests_counted(&metrics, chat, 500), 1, "{metrics}");
    assert_eq!(requests_counted(&metrics, "/api/chat", 200), 0, "{metrics}");
    assert_eq!(requests_counted(&metrics, "/api/chat", 502), 1, "{metrics}");
    assert_eq!(requests_counted(&metrics, "/api/chat", 499), 1, "{metrics}");
}

//! A busy backend's slots and line (`max_concurrent`, `max_queue`,
//! `queue_timeout_secs`) and a key's own `max_concurrent`: fairness between users, the
//! place in line on an SSE stream, refusals that never reach the upstream, clients that
//! leave while waiting, and the gauges.
//!
//! The mock's `gapN` / `chunksN` models hold a slot for a known time; the mock records
//! every request it receives, in order, so what reached the upstream can be counted.

use std::time::{Duration, Instant};

use futures::StreamExt;
use serde_json::{json, Value};

use crate::harness::{self, client, send, Answer, Harness};

const ALICE: &str = "sk-alice-0123456789";
const BOB: &str = "sk-bob-0123456789ab";
const CAPPED: &str = "sk-capped-0123456789";

/// A gateway whose `gpu` backend (Ollama on the mock) has `queue` written in its table,
/// and `free` (the same mock) has no limit; keys for alice, bob and a capped key.
async fn gateway(name: &str, queue: &str) -> Harness {
    let dir = std::env::temp_dir().join(format!("switchyard-queue-{}-{name}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let keys = dir.join("keys.json");
    std::fs::write(
        &keys,
        format!(
            r#"{{"{ALICE}": "alice", "{BOB}": "bob", "{CAPPED}": {{"user": "carol", "max_concurrent": 1}}}}"#
        ),
    )
    .unwrap();
    harness::start_config(&format!(
        r#"
[server]
listen = "127.0.0.1:0"
shutdown_timeout_secs = 1
[auth]
keys_file = "{}"
[[backends]]
name = "gpu"
kind = "ollama"
url = "{{mock}}"
{queue}
[[backends]]
name = "free"
kind = "ollama"
url = "{{mock}}"
"#,
        keys.display()
    ))
    .await
}

/// A chat request of `key` for `model`, marked `marker` (the user message, which the
/// mock records).
fn chat(
    gateway: &Harness,
    path: &str,
    key: &str,
    model: &str,
    stream: bool,
    marker: &str,
) -> awc::SendClientRequest {
    let body = json!({"model": model, "stream": stream, "messages": [{"role": "user", "content": marker}]});
    client()
        .post(format!("{}{path}", gateway.base))
        .insert_header(("authorization", format!("Bearer {key}")))
        .insert_header(("content-type", "application/json"))
        .send_body(body.to_string())
}

/// Fills `gpu`'s one slot and its line of one: alice's slow stream ("holder") holds the
/// slot and alice's next request ("waiter") waits, so the next request finds both full.
async fn fill_the_line(
    gateway: &Harness,
) -> (
    actix_web::rt::task::JoinHandle<Answer>,
    actix_web::rt::task::JoinHandle<Answer>,
) {
    let holder = hold_the_slot(gateway, "gpu/m-gap300chunks3").await;
    let waiter = actix_web::rt::spawn(ask(gateway, "/api/chat", ALICE, "gpu/m", false, "waiter"));
    until_metric(gateway, DEPTH, &[GPU], 1.0).await;
    (holder, waiter)
}

/// Alice's slow stream ("holder") takes `gpu`'s one slot: `model` says how slow (its
/// gap and chunks), which each test sets to outlast what it does meanwhile.
async fn hold_the_slot(gateway: &Harness, model: &str) -> actix_web::rt::task::JoinHandle<Answer> {
    let holder = actix_web::rt::spawn(ask(gateway, "/api/chat", ALICE, model, true, "holder"));
    until_metric(gateway, IN_FLIGHT, &[GPU], 1.0).await;
    holder
}

/// Sends and reads the whole answer (a future that borrows nothing, to spawn).
fn ask(
    gateway: &Harness,
    path: &str,
    key: &str,
    model: &str,
    stream: bool,
    marker: &str,
) -> impl std::future::Future<Output = Answer> + 'static {
    let body = json!({"model": model, "stream": stream, "messages": [{"role": "user", "content": marker}]});
    let request = client()
        .post(format!("{}{path}", gateway.base))
        .insert_header(("authorization", format!("Bearer {key}")));
    async move { send(request, Some(&body.to_string())).await }
}

/// The markers of the requests that reached the upstream, in the order they came.
fn arrived(gateway: &Harness) -> Vec<String> {
    gateway
        .mock
        .requests
        .lock()
        .unwrap()
        .iter()
        .filter_map(|request| {
            request.body["messages"][0]["content"]
                .as_str()
                .map(str::to_owned)
        })
        .collect()
}

/// The value of the metric line named `name` that carries every label in `labels`.
async fn metric(gateway: &Harness, name: &str, labels: &[&str]) -> Option<f64> {
    let text = gateway.get("/metrics").await.body;
    text.lines()
        .filter(|line| line.starts_with(&format!("{name}{{")))
        .find(|line| labels.iter().all(|label| line.contains(label)))
        .and_then(|line| line.rsplit(' ').next())
        .and_then(|value| value.parse().ok())
}

/// Waits (up to 5 s) until the gauge reads `value`.
async fn until_metric(gateway: &Harness, name: &str, labels: &[&str], value: f64) {
    let start = Instant::now();
    while metric(gateway, name, labels).await != Some(value) {
        assert!(
            start.elapsed() < Duration::from_secs(5),
            "{name}{labels:?} never became {value}: {:?}",
            metric(gateway, name, labels).await
        );
        actix_web::rt::time::sleep(Duration::from_millis(20)).await;
    }
}

const DEPTH: &str = "switchyard_queue_depth";
const IN_FLIGHT: &str = "switchyard_in_flight";
const GPU: &str = "backend=\"gpu\"";

#[actix_web::test]
async fn bob_is_served_within_two_slots_of_alices_twenty() {
    let gateway = gateway("fair", "max_concurrent = 1").await;
    // Each answer holds the slot for about 60 ms.
    let model = "gpu/m-gap30chunks2";
    let mut alices = Vec::new();
    for number in 0..20 {
        // The first holds the slot while the line forms.
        let model = if number == 0 {
            "gpu/m-gap500chunks3"
        } else {
            model
        };
        alices.push(actix_web::rt::spawn(chat(
            &gateway,
            "/api/chat",
            ALICE,
            model,
            true,
            &format!("alice {number}"),
        )));
        // Sent one after another, so that alice's own order is known.
        if number == 0 {
            until_metric(&gateway, IN_FLIGHT, &[GPU], 1.0).await;
        } else {
            until_metric(&gateway, DEPTH, &[GPU], number as f64).await;
        }
    }
    let bob = ask(&gateway, "/api/chat", BOB, model, true, "bob").await;
    assert_eq!(bob.status, 200, "{}", bob.body);
    for alice in alices {
        let mut answer = alice.await.unwrap().unwrap();
        assert_eq!(answer.status(), 200);
        answer.body().await.unwrap();
    }
    let order = arrived(&gateway);
    assert_eq!(order.len(), 21, "{order:?}");
    let bob_at = order.iter().position(|m| m == "bob").unwrap();
    // alice 0 held the slot when bob came; alice 1 had the next; bob the one after.
    assert!(bob_at <= 2, "bob served within two slots: {order:?}");
    let alices: Vec<&String> = order.iter().filter(|m| *m != "bob").collect();
    let expected: Vec<String> = (0..20).map(|n| format!("alice {n}")).collect();
    assert_eq!(
        alices,
        expected.iter().collect::<Vec<_>>(),
        "first come first served within a user"
    );
    until_metric(&gateway, IN_FLIGHT, &[GPU], 0.0).await;
    until_metric(&gateway, DEPTH, &[GPU], 0.0).await;
}

#[actix_web::test]
async fn an_sse_stream_that_waits_is_told_its_place_in_comments() {
    let gateway = gateway("place", "max_concurrent = 1").await;
    let holder = hold_the_slot(&gateway, "gpu/m-gap400chunks3").await;
    let first = actix_web::rt::spawn(chat(
        &gateway,
        "/v1/chat/completions",
        ALICE,
        // Holds the slot long enough for the second to be told it is next.
        "gpu/m-gap200chunks2",
        true,
        "first",
    ));
    until_metric(&gateway, DEPTH, &[GPU], 1.0).await;
    let mut second = chat(
        &gateway,
        "/v1/chat/completions",
        BOB,
        "gpu/m-chunks2",
        true,
        "second",
    )
    .await
    .unwrap();
    // The headers come while it waits.
    assert_eq!(second.status(), 200);
    assert_eq!(
        second.headers().get("content-type").unwrap(),
        "text/event-stream"
    );
    let mut raw = Vec::new();
    while let Some(chunk) = second.next().await {
        raw.extend_from_slice(&chunk.unwrap());
    }
    let raw = String::from_utf8(raw).unwrap();
    assert!(
        raw.starts_with(": queue position 2\n\n: queue position 1\n\ndata: "),
        "{raw}"
    );
    assert!(raw.ends_with("data: [DONE]\n\n"), "{raw}");
    // An SSE parser sees the usual events only.
    let parsed = parse_sse(&raw);
    assert!(
        parsed
            .iter()
            .all(|data| data == "[DONE]" || serde_json::from_str::<Value>(data).is_ok()),
        "{parsed:?}"
    );
    let text: String = parsed
        .iter()
        .filter_map(|data| serde_json::from_str::<Value>(data).ok())
        .filter_map(|event| {
            event["choices"][0]["delta"]["content"]
                .as_str()
                .map(str::to_owned)
        })
        .collect();
    assert_eq!(text, "w0 w1 ");
    let mut first = first.await.unwrap().unwrap();
    let first_body = String::from_utf8(first.body().await.unwrap().to_vec()).unwrap();
    assert!(
        first_body.starts_with(": queue position 1\n\ndata: "),
        "{first_body}"
    );
    assert_eq!(holder.await.unwrap().status, 200);
    assert_eq!(arrived(&gateway), ["holder", "first", "second"]);
}

/// The `data:` payloads of an SSE body as a parser reads them: comment lines (a `:`
/// first) are skipped.
fn parse_sse(raw: &str) -> Vec<String> {
    raw.split("\n\n")
        .flat_map(|event| event.lines())
        .filter(|line| !line.starts_with(':'))
        .filter_map(|line| line.strip_prefix("data: ").map(str::to_owned))
        .collect()
}

#[actix_web::test]
async fn a_full_queue_answers_429_with_retry_after_in_both_dialects() {
    let gateway = gateway("full", "max_concurrent = 1\nmax_queue = 1").await;
    let (holder, waiter) = fill_the_line(&gateway).await;
    for (path, stream) in [
        ("/v1/chat/completions", false),
        ("/v1/chat/completions", true),
        ("/api/chat", false),
        ("/api/chat", true),
    ] {
        let answer = ask(&gateway, path, BOB, "gpu/m", stream, "refused").await;
        assert_eq!(answer.status, 429, "{path} {stream}: {}", answer.body);
        let retry: u64 = answer
            .headers
            .get("retry-after")
            .unwrap()
            .to_str()
            .unwrap()
            .parse()
            .unwrap();
        assert!(retry >= 1, "{path}");
        let body = answer.json();
        let message = if path.starts_with("/v1") {
            assert_eq!(body["error"]["type"], "rate_limit_error");
            body["error"]["message"].as_str().unwrap().to_owned()
        } else {
            body["error"].as_str().unwrap().to_owned()
        };
        assert!(message.contains("max_queue"), "{message}");
    }
    // Embeddings take a slot of their backend as well.
    for path in ["/v1/embeddings", "/api/embed"] {
        let answer = send(
            client()
                .post(format!("{}{path}", gateway.base))
                .insert_header(("authorization", format!("Bearer {BOB}"))),
            Some(&json!({"model": "gpu/m", "input": "refused"}).to_string()),
        )
        .await;
        assert_eq!(answer.status, 429, "{path}: {}", answer.body);
        assert!(answer.headers.contains_key("retry-after"), "{path}");
    }
    assert_eq!(
        metric(
            &gateway,
            "switchyard_rejections_total",
            &["reason=\"queue_full\"", "user=\"bob\""]
        )
        .await,
        Some(6.0)
    );
    assert_eq!(holder.await.unwrap().status, 200);
    assert_eq!(waiter.await.unwrap().status, 200);
    // Only the two admitted reached the upstream.
    assert_eq!(gateway.mock.requests.lock().unwrap().len(), 2);
    assert_eq!(arrived(&gateway), ["holder", "waiter"], "never forwarded");
}

#[actix_web::test]
async fn an_expired_wait_answers_429_or_ends_the_stream_with_one_error() {
    let gateway = gateway("expired", "max_concurrent = 1\nqueue_timeout_secs = 0.3").await;
    let holder = hold_the_slot(&gateway, "gpu/m-gap500chunks3").await;
    let (plain, ollama, ollama_stream) = futures::join!(
        ask(
            &gateway,
            "/v1/chat/completions",
            BOB,
            "gpu/m",
            false,
            "late"
        ),
        ask(&gateway, "/api/chat", BOB, "gpu/m", false, "late"),
        ask(&gateway, "/api/chat", BOB, "gpu/m", true, "late"),
    );
    for answer in [&plain, &ollama, &ollama_stream] {
        assert_eq!(answer.status, 429, "{}", answer.body);
        assert!(answer.headers.contains_key("retry-after"));
        assert!(
            answer.body.contains("queue_timeout_secs"),
            "{}",
            answer.body
        );
    }
    // A stream whose headers went out ends with one error event in its dialect.
    let streamed = ask(&gateway, "/v1/chat/completions", BOB, "gpu/m", true, "late").await;
    assert_eq!(streamed.status, 200);
    let data = parse_sse(&streamed.body);
    assert_eq!(data.len(), 1, "{}", streamed.body);
    let error: Value = serde_json::from_str(&data[0]).unwrap();
    assert_eq!(error["error"]["type"], "rate_limit_error", "{error}");
    assert!(streamed.body.starts_with(": queue position 1\n\n"));
    assert_eq!(
        metric(
            &gateway,
            "switchyard_rejections_total",
            &["reason=\"queue_timeout\"", "user=\"bob\""]
        )
        .await,
        Some(4.0)
    );
    assert_eq!(holder.await.unwrap().status, 200);
    assert_eq!(
        arrived(&gateway),
        ["holder"],
        "no late request was forwarded"
    );
}

#[actix_web::test]
async fn a_client_that_leaves_while_waiting_leaves_the_line() {
    let gateway = gateway("leave", "max_concurrent = 1").await;
    let holder = hold_the_slot(&gateway, "gpu/m-gap500chunks4").await;
    // One waits without a stream, one on an SSE stream; both give up.
    let impatient = awc::Client::builder()
        .timeout(Duration::from_secs(1))
        .finish()
        .post(format!("{}/api/chat", gateway.base))
        .insert_header(("authorization", format!("Bearer {BOB}")))
        .insert_header(("content-type", "application/json"))
        .send_body(json!({"model": "gpu/m", "stream": false, "messages": [{"role": "user", "content": "gone"}]}).to_string());
    let impatient = actix_web::rt::spawn(impatient);
    let streamed = chat(
        &gateway,
        "/v1/chat/completions",
        BOB,
        "gpu/m",
        true,
        "gone too",
    );
    let stays = actix_web::rt::spawn(ask(&gateway, "/api/chat", ALICE, "gpu/m", false, "stays"));
    let mut streamed = streamed.await.unwrap();
    let place = streamed.next().await.unwrap().unwrap();
    assert!(place.starts_with(b": queue position"), "{place:?}");
    until_metric(&gateway, DEPTH, &[GPU], 3.0).await;
    assert!(
        impatient.await.unwrap().is_err(),
        "the impatient client timed out"
    );
    until_metric(&gateway, DEPTH, &[GPU], 2.0).await;
    drop(streamed);
    until_metric(&gateway, DEPTH, &[GPU], 1.0).await;
    assert_eq!(holder.await.unwrap().status, 200);
    assert_eq!(stays.await.unwrap().status, 200);
    assert_eq!(
        arrived(&gateway),
        ["holder", "stays"],
        "the ones that left never reached the upstream"
    );
}

#[actix_web::test]
async fn a_stream_holds_its_slot_to_its_last_byte() {
    let gateway = gateway("held", "max_concurrent = 1").await;
    let mut stream = chat(
        &gateway,
        "/api/chat",
        ALICE,
        "gpu/m-gap100chunks5",
        true,
        "stream",
    )
    .await
    .unwrap();
    stream.next().await.unwrap().unwrap();
    let second = actix_web::rt::spawn(ask(&gateway, "/api/chat", BOB, "gpu/m", false, "second"));
    until_metric(&gateway, DEPTH, &[GPU], 1.0).await;
    let mut rest = Vec::new();
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.unwrap();
        // Until the stream's last byte, the second request is not sent upstream.
        if !String::from_utf8_lossy(&chunk).contains("\"done\":true") {
            assert_eq!(arrived(&gateway), ["stream"]);
        }
        rest.extend_from_slice(&chunk);
    }
    assert!(String::from_utf8(rest).unwrap().contains("\"done\":true"));
    assert_eq!(second.await.unwrap().status, 200);
    assert_eq!(arrived(&gateway), ["stream", "second"]);
}

#[actix_web::test]
async fn a_key_at_its_own_cap_waits_in_line_or_is_refused_where_there_is_none() {
    let gateway = gateway("key", "max_concurrent = 4").await;
    // `free` has no line: the capped key's second request is refused at once.
    let running = actix_web::rt::spawn(ask(
        &gateway,
        "/api/chat",
        CAPPED,
        "free/m-gap300chunks3",
        true,
        "one",
    ));
    let start = Instant::now();
    while arrived(&gateway).is_empty() {
        assert!(start.elapsed() < Duration::from_secs(5));
        actix_web::rt::time::sleep(Duration::from_millis(10)).await;
    }
    for path in ["/v1/chat/completions", "/api/chat"] {
        let refused = ask(&gateway, path, CAPPED, "free/m", false, "two").await;
        assert_eq!(refused.status, 429, "{}", refused.body);
        assert_eq!(refused.headers.get("retry-after").unwrap(), "1");
        assert!(refused.body.contains("max_concurrent"), "{}", refused.body);
    }
    // Another key is not held back.
    assert_eq!(
        ask(&gateway, "/api/chat", BOB, "free/m", false, "other")
            .await
            .status,
        200
    );
    // `gpu` has a line: the capped key's request waits there (with three slots free)
    // until its first request ends, then runs.
    let waited = actix_web::rt::spawn(ask(&gateway, "/api/chat", CAPPED, "gpu/m", false, "waited"));
    until_metric(&gateway, DEPTH, &[GPU], 1.0).await;
    assert_eq!(metric(&gateway, IN_FLIGHT, &[GPU]).await, Some(0.0));
    assert_eq!(arrived(&gateway), ["one", "other"]);
    assert_eq!(running.await.unwrap().status, 200);
    assert_eq!(waited.await.unwrap().status, 200);
    assert_eq!(arrived(&gateway), ["one", "other", "waited"]);
    assert_eq!(
        metric(
            &gateway,
            "switchyard_rejections_total",
            &["reason=\"max_concurrent\"", "user=\"carol\""]
        )
        .await,
        Some(2.0)
    );
}

/// Sends `body` as `key` and reads the whole answer (a future that borrows nothing).
fn ask_with(
    gateway: &Harness,
    path: &str,
    key: &str,
    body: Value,
) -> impl std::future::Future<Output = Answer> + 'static {
    let request = client()
        .post(format!("{}{path}", gateway.base))
        .insert_header(("authorization", format!("Bearer {key}")))
        .insert_header(("anthropic-version", "2023-06-01"));
    async move { send(request, Some(&body.to_string())).await }
}

/// An Anthropic Messages request and a Responses request for `model`.
fn anthropic_body(model: &str, stream: bool, marker: &str) -> Value {
    json!({"model": model, "max_tokens": 50, "stream": stream,
           "messages": [{"role": "user", "content": marker}]})
}

fn responses_body(model: &str, stream: bool, marker: &str) -> Value {
    json!({"model": model, "stream": stream, "input": marker})
}

/// The (`event:` name, data) pairs of an SSE body as a parser reads them.
fn named_events(raw: &str) -> Vec<(String, Value)> {
    raw.split("\n\n")
        .filter_map(|event| {
            let lines: Vec<&str> = event.lines().filter(|l| !l.starts_with(':')).collect();
            let name = lines.iter().find_map(|l| l.strip_prefix("event: "))?;
            let data = lines.iter().find_map(|l| l.strip_prefix("data: "))?;
            Some((name.to_owned(), serde_json::from_str(data).unwrap()))
        })
        .collect()
}

#[actix_web::test]
async fn anthropic_and_responses_streams_that_wait_are_told_their_place() {
    let gateway = gateway("place-sse", "max_concurrent = 1").await;
    for (path, body, first_event) in [
        (
            "/v1/messages",
            anthropic_body("gpu/m-chunks2", true, "anthropic"),
            "message_start",
        ),
        (
            "/v1/responses",
            responses_body("gpu/m-chunks2", true, "responses"),
            "response.created",
        ),
    ] {
        let holder = hold_the_slot(&gateway, "gpu/m-gap300chunks3").await;
        let answer = ask_with(&gateway, path, BOB, body).await;
        assert_eq!(answer.status, 200, "{path}: {}", answer.body);
        assert!(
            answer.body.starts_with(&format!(
                ": queue position 1\n\nevent: {first_event}\ndata: "
            )),
            "{path}: {}",
            answer.body
        );
        let events = named_events(&answer.body);
        assert_eq!(events[0].0, first_event);
        // What the SDKs read: every event whole, the text as the upstream sent it.
        let text: String = events
            .iter()
            .filter_map(|(name, data)| match name.as_str() {
                "content_block_delta" => data["delta"]["text"].as_str(),
                "response.output_text.delta" => data["delta"].as_str(),
                _ => None,
            })
            .collect();
        assert_eq!(text, "w0 w1 ", "{path}");
        if path == "/v1/responses" {
            for (number, (_, data)) in events.iter().enumerate() {
                assert_eq!(data["sequence_number"], number, "{data}");
            }
        }
        assert_eq!(holder.await.unwrap().status, 200);
    }
    assert_eq!(
        arrived(&gateway),
        ["holder", "anthropic", "holder", "responses"]
    );
}

/// The place in line, the queue's refusals, for the Anthropic and Responses dialects.
#[actix_web::test]
async fn a_full_queue_and_an_expired_wait_refuse_in_anthropics_and_openais_shapes() {
    let gateway = gateway("full-sse", "max_concurrent = 1\nmax_queue = 1").await;
    let (holder, waiter) = fill_the_line(&gateway).await;
    for stream in [false, true] {
        for (path, body) in [
            ("/v1/messages", anthropic_body("gpu/m", stream, "refused")),
            ("/v1/responses", responses_body("gpu/m", stream, "refused")),
        ] {
            let answer = ask_with(&gateway, path, BOB, body).await;
            assert_eq!(answer.status, 429, "{path} {stream}: {}", answer.body);
            assert!(answer.headers.contains_key("retry-after"), "{path}");
            let body = answer.json();
            if path == "/v1/messages" {
                assert_eq!(body["type"], "error", "{body}");
            }
            assert_eq!(body["error"]["type"], "rate_limit_error", "{body}");
            assert!(
                body["error"]["message"]
                    .as_str()
                    .unwrap()
                    .contains("max_queue"),
                "{body}"
            );
        }
    }
    assert_eq!(holder.await.unwrap().status, 200);
    assert_eq!(waiter.await.unwrap().status, 200);
    assert_eq!(arrived(&gateway), ["holder", "waiter"], "never forwarded");

    let gateway = self::gateway(
        "expired-sse",
        "max_concurrent = 1\nqueue_timeout_secs = 0.3",
    )
    .await;
    let holder = hold_the_slot(&gateway, "gpu/m-gap500chunks3").await;
    let (anthropic, responses, anthropic_stream, responses_stream) = futures::join!(
        ask_with(
            &gateway,
            "/v1/messages",
            BOB,
            anthropic_body("gpu/m", false, "late")
        ),
        ask_with(
            &gateway,
            "/v1/responses",
            BOB,
            responses_body("gpu/m", false, "late")
        ),
        ask_with(
            &gateway,
            "/v1/messages",
            BOB,
            anthropic_body("gpu/m", true, "late")
        ),
        ask_with(
            &gateway,
            "/v1/responses",
            BOB,
            responses_body("gpu/m", true, "late")
        ),
    );
    for answer in [&anthropic, &responses] {
        assert_eq!(answer.status, 429, "{}", answer.body);
        assert!(answer.headers.contains_key("retry-after"));
        assert_eq!(answer.json()["error"]["type"], "rate_limit_error");
        assert!(
            answer.body.contains("queue_timeout_secs"),
            "{}",
            answer.body
        );
    }
    assert_eq!(anthropic.json()["type"], "error");
    // Streams whose headers went out end with their dialect's error event.
    assert_eq!(anthropic_stream.status, 200);
    assert!(anthropic_stream.body.starts_with(": queue position "));
    let events = named_events(&anthropic_stream.body);
    assert_eq!(events.len(), 1, "{}", anthropic_stream.body);
    assert_eq!(events[0].0, "error");
    assert_eq!(events[0].1["error"]["type"], "rate_limit_error");
    assert_eq!(responses_stream.status, 200);
    assert!(responses_stream.body.starts_with(": queue position "));
    let events = named_events(&responses_stream.body);
    let (name, failed) = events.last().unwrap();
    assert_eq!(name, "response.failed", "{}", responses_stream.body);
    assert_eq!(failed["response"]["status"], "failed");
    assert!(
        failed["response"]["error"]["message"]
            .as_str()
            .unwrap()
            .contains("queue_timeout_secs"),
        "{failed}"
    );
    assert_eq!(holder.await.unwrap().status, 200);
    assert_eq!(
        arrived(&gateway),
        ["holder"],
        "no late request was forwarded"
    );
}

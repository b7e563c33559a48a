//! Long conversations reach the upstream whole. A body of more than one piece (64 KiB)
//! is sent to the upstream as a sized stream of pieces rather than one buffer; these
//! tests check that what the upstream receives is the whole conversation, in order, on
//! the straight path, both translated directions, and when a refused key makes the
//! gateway send the same body a second time.

use serde_json::{json, Value};

use crate::harness::{self, Harness};

/// The mock as `oa` (OpenAI-compatible, two upstream keys of which the first is refused)
/// and `ol` (Ollama), with a body limit that lets a long conversation in.
async fn gateway() -> Harness {
    std::env::set_var("SWITCHYARD_TEST_LONG_BAD", "bad-key");
    std::env::set_var("SWITCHYARD_TEST_LONG_GOOD", "good-key");
    harness::start_config(
        r#"
[server]
listen = "127.0.0.1:0"
body_limit_bytes = 4194304
shutdown_timeout_secs = 1
[routing]
default_backend = "oa"
[[backends]]
name = "oa"
kind = "openai"
url = "{mock}/v1"
[[backends]]
name = "keys"
kind = "openai"
url = "{mock}/v1"
api_key_envs = ["SWITCHYARD_TEST_LONG_BAD", "SWITCHYARD_TEST_LONG_GOOD"]
[[backends]]
name = "ol"
kind = "ollama"
url = "{mock}"
"#,
    )
    .await
}

/// About `size` bytes of alternating user and assistant turns, each different, with the
/// quotes, backslashes, newlines and non-ASCII text that real histories carry.
fn history(size: usize) -> Vec<Value> {
    let mut messages = Vec::new();
    let mut used = 0;
    while used < size {
        let turn = messages.len();
        let text = format!(
            "turn {turn}: \"quoted\", a back\\slash, a tab\there, Ünïcödé 🦀\n{}",
            "the quick brown fox jumps over the lazy dog. ".repeat(turn % 13 + 1)
        );
        used += text.len() + 40;
        let role = if turn % 2 == 0 { "user" } else { "assistant" };
        messages.push(json!({"role": role, "content": text}));
    }
    messages
}

/// The (role, content) of each message the mock received for `model`, one list per
/// upstream request.
fn received(gateway: &Harness, model: &str) -> Vec<Vec<(String, String)>> {
    gateway
        .mock
        .requests_for(model)
        .iter()
        .map(|request| {
            request.body["messages"]
                .as_array()
                .expect("the upstream got messages")
                .iter()
                .map(|message| {
                    (
                        message["role"].as_str().unwrap_or_default().to_owned(),
                        message["content"].as_str().unwrap_or_default().to_owned(),
                    )
                })
                .collect()
        })
        .collect()
}

fn expected(messages: &[Value]) -> Vec<(String, String)> {
    messages
        .iter()
        .map(|message| {
            (
                message["role"].as_str().unwrap().to_owned(),
                message["content"].as_str().unwrap().to_owned(),
            )
        })
        .collect()
}

#[actix_web::test]
async fn a_long_history_reaches_the_upstream_whole_and_again_after_a_refused_key() {
    let gateway = gateway().await;
    let messages = history(600_000);
    let answer = gateway
        .post(
            "/v1/chat/completions",
            &json!({"model": "keys/mock-long-keys", "messages": messages}),
        )
        .await;
    assert_eq!(answer.status, 200, "{}", answer.body);
    let seen = received(&gateway, "mock-long-keys");
    assert_eq!(seen.len(), 2, "sent with the refused key, then the next");
    let want = expected(&messages);
    assert!(seen[0] == want, "the first sending is the whole history");
    assert!(seen[1] == want, "the second sending is the whole history");
}

#[actix_web::test]
async fn a_long_history_reaches_the_upstream_whole_translated_both_ways() {
    let gateway = gateway().await;
    let messages = history(300_000);
    let want = expected(&messages);
    let answer = gateway
        .post(
            "/api/chat",
            &json!({"model": "oa/mock-long-from-ollama", "messages": messages}),
        )
        .await;
    assert_eq!(answer.status, 200, "{}", answer.body);
    assert!(received(&gateway, "mock-long-from-ollama") == vec![want.clone()]);
    let answer = gateway
        .post(
            "/v1/chat/completions",
            &json!({"model": "ol/mock-long-to-ollama", "stream": true, "messages": messages}),
        )
        .await;
    assert_eq!(answer.status, 200, "{}", answer.body);
    assert!(received(&gateway, "mock-long-to-ollama") == vec![want]);
}

//! What coding agents need of the gateway beyond each dialect's own tests: a backend's
//! `max_output_tokens` lowering the 32000-token asks agents send to what a small model
//! can give, from every dialect, on every backend kind, each fallback target by its own
//! cap.

use serde_json::{json, Value};

use crate::harness::{self, Harness};

/// The body the mock received for `model`, the last time.
fn upstream_body(gateway: &Harness, model: &str) -> Value {
    let requests = gateway.mock.requests_for(model);
    requests
        .last()
        .unwrap_or_else(|| panic!("no request for {model} reached the mock"))
        .body
        .clone()
}

const CAPPED: &str = r#"
[[backends]]
name = "small"
kind = "openai"
url = "{mock}/v1"
max_output_tokens = 4096
[[backends]]
name = "smoll"
kind = "ollama"
url = "{mock}"
max_output_tokens = 2048
[[backends]]
name = "rented"
kind = "anthropic"
url = "{mock}/v1"
max_output_tokens = 1000
[[models]]
name = "agent-model"
targets = ["small/mock-status503-first", "smoll/mock-second"]
"#;

#[actix_web::test]
async fn max_output_tokens_lowers_a_larger_ask_on_every_kind_and_streamed_or_whole() {
    let gateway = harness::start(CAPPED).await;
    for stream in [false, true] {
        let answer = gateway
            .post(
                "/v1/chat/completions",
                &json!({"model": "small/mock-a", "max_tokens": 32000, "stream": stream,
                        "messages": [{"role": "user", "content": "hi"}]}),
            )
            .await;
        assert_eq!(answer.status, 200, "{}", answer.body);
        assert_eq!(upstream_body(&gateway, "mock-a")["max_tokens"], 4096);

        let answer = gateway
            .post(
                "/api/chat",
                &json!({"model": "smoll/mock-b", "stream": stream, "options": {"num_predict": 32000},
                        "messages": [{"role": "user", "content": "hi"}]}),
            )
            .await;
        assert_eq!(answer.status, 200, "{}", answer.body);
        assert_eq!(
            upstream_body(&gateway, "mock-b")["options"]["num_predict"],
            2048
        );

        let answer = gateway
            .post(
                "/v1/responses",
                &json!({"model": "small/mock-c", "max_output_tokens": 32000, "stream": stream,
                        "store": false, "input": "hi"}),
            )
            .await;
        assert_eq!(answer.status, 200, "{}", answer.body);
        assert_eq!(upstream_body(&gateway, "mock-c")["max_tokens"], 4096);
        assert_eq!(
            upstream_body(&gateway, "mock-c")["max_completion_tokens"],
            4096
        );

        let answer = gateway
            .post(
                "/v1/messages",
                &json!({"model": "rented/mock-d", "max_tokens": 32000, "stream": stream,
                        "messages": [{"role": "user", "content": "hi"}]}),
            )
            .await;
        assert_eq!(answer.status, 200, "{}", answer.body);
        assert_eq!(upstream_body(&gateway, "mock-d")["max_tokens"], 1000);
    }
}

#[actix_web::test]
async fn max_output_tokens_never_fills_in_or_raises_an_ask_and_lowers_a_default() {
    let gateway = harness::start(CAPPED).await;
    let answer = gateway
        .post(
            "/v1/chat/completions",
            &json!({"model": "small/mock-none", "messages": [{"role": "user", "content": "hi"}]}),
        )
        .await;
    assert_eq!(answer.status, 200, "{}", answer.body);
    assert!(
        upstream_body(&gateway, "mock-none")
            .get("max_tokens")
            .is_none(),
        "no ask stays no ask"
    );
    let answer = gateway
        .post(
            "/v1/chat/completions",
            &json!({"model": "small/mock-few", "max_tokens": 64,
                    "messages": [{"role": "user", "content": "hi"}]}),
        )
        .await;
    assert_eq!(answer.status, 200, "{}", answer.body);
    assert_eq!(upstream_body(&gateway, "mock-few")["max_tokens"], 64);
    // An anthropic backend must name a limit: its default is lowered to the cap too.
    let answer = gateway
        .post(
            "/v1/chat/completions",
            &json!({"model": "rented/mock-unasked", "messages": [{"role": "user", "content": "hi"}]}),
        )
        .await;
    assert_eq!(answer.status, 200, "{}", answer.body);
    assert_eq!(upstream_body(&gateway, "mock-unasked")["max_tokens"], 1000);
    // A backend without the key passes the ask on as it came.
    let answer = gateway
        .post(
            "/v1/chat/completions",
            &json!({"model": "oa/mock-big", "max_tokens": 32000,
                    "messages": [{"role": "user", "content": "hi"}]}),
        )
        .await;
    assert_eq!(answer.status, 200, "{}", answer.body);
    assert_eq!(upstream_body(&gateway, "mock-big")["max_tokens"], 32000);
}

#[actix_web::test]
async fn each_fallback_target_is_capped_by_its_own_backend() {
    let gateway = harness::start(CAPPED).await;
    let answer = gateway
        .post(
            "/v1/chat/completions",
            &json!({"model": "agent-model", "max_tokens": 32000,
                    "messages": [{"role": "user", "content": "hi"}]}),
        )
        .await;
    assert_eq!(answer.status, 200, "{}", answer.body);
    assert_eq!(
        upstream_body(&gateway, "mock-status503-first")["max_tokens"],
        4096
    );
    assert_eq!(
        upstream_body(&gateway, "mock-second")["options"]["num_predict"],
        2048
    );
}

/// Claude Code reading a screenshot: its `Read` tool answers with an image block. OpenAI
/// takes images only in user messages (a tool message with one is a 400 there), so the
/// image follows the tool results as a user message, and the tool message keeps the
/// text.
#[actix_web::test]
async fn an_image_a_tool_returned_reaches_an_openai_upstream_as_a_user_message() {
    let gateway = harness::start("").await;
    let png = "iVBORw0KGgoAAAANSUhEUgAAAAgAAAAICAIAAABLbSncAAAAEklEQVR4nGP4z8CAFWEXHbQSACj/P8Fu7N9hAAAAAElFTkSuQmCC";
    let answer = gateway
        .post(
            "/v1/messages?beta=true",
            &json!({"model": "oa/mock-screenshot", "max_tokens": 32000, "stream": true,
                "messages": [
                    {"role": "user", "content": "Look at shot.png"},
                    {"role": "assistant", "content": [{"type": "tool_use", "id": "toolu_1", "name": "Read",
                        "input": {"file_path": "/w/shot.png"}}]},
                    {"role": "user", "content": [
                        {"type": "tool_result", "tool_use_id": "toolu_1", "content": [
                            {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": png}}]},
                        {"type": "text", "text": "What does it show?"}]}
                ]}),
        )
        .await;
    assert_eq!(answer.status, 200, "{}", answer.body);
    let sent = upstream_body(&gateway, "mock-screenshot");
    let messages = sent["messages"].as_array().expect("messages");
    let roles: Vec<&str> = messages
        .iter()
        .map(|m| m["role"].as_str().unwrap_or(""))
        .collect();
    assert_eq!(roles, ["user", "assistant", "tool", "user", "user"]);
    assert_eq!(messages[2]["tool_call_id"], "toolu_1");
    assert!(
        messages[2]["content"].is_string(),
        "a tool message holds text only: {}",
        messages[2]
    );
    assert_eq!(
        messages[3]["content"][1]["image_url"]["url"],
        format!("data:image/png;base64,{png}")
    );
    assert_eq!(messages[4]["content"], "What does it show?");
}

//! Provider presets and several upstream keys: a preset backend serving through the mock
//! with its URL overridden, keys taking turns, a refused or throttled key resting while
//! the request goes through the next, and `/health` naming resting keys by variable.

use std::time::Duration;

use serde_json::{json, Value};

use crate::harness::{self, Harness};

fn chat(model: &str, stream: bool) -> Value {
    json!({"model": model, "stream": stream, "messages": [{"role": "user", "content": "x"}]})
}

/// The upstream keys the mock saw for `model`, in order.
fn keys_seen(gateway: &Harness, model: &str) -> Vec<String> {
    gateway
        .mock
        .requests_for(model)
        .iter()
        .map(|request| {
            request
                .headers
                .get("authorization")
                .cloned()
                .unwrap_or_default()
        })
        .collect()
}

/// A backend `keys` on the mock with these (variable, key) pairs in turn; each test
/// uses its own variable names, as tests share the process environment.
async fn with_keys(keys: &[(&str, &str)]) -> Harness {
    for (var, value) in keys {
        std::env::set_var(var, value);
    }
    let vars: Vec<String> = keys.iter().map(|(var, _)| format!("\"{var}\"")).collect();
    harness::start(&format!(
        "[[backends]]\nname = \"keys\"\nkind = \"openai\"\nurl = \"{{mock}}/v1\"\napi_key_envs = [{}]\n",
        vars.join(", ")
    ))
    .await
}

/// The `/health` entry of backend `keys`: its keys' report.
async fn key_report(gateway: &Harness) -> (Vec<Value>, String) {
    let answer = gateway.get("/health").await;
    let health = answer.json();
    let keys = health["backends"]
        .as_array()
        .unwrap()
        .iter()
        .find(|backend| backend["name"] == "keys")
        .unwrap()["keys"]
        .as_array()
        .unwrap_or_else(|| panic!("the backend reports its keys: {health}"))
        .clone();
    (keys, answer.body)
}

#[actix_web::test]
async fn a_preset_backend_serves_through_an_overriding_url() {
    std::env::set_var("SWITCHYARD_TEST_PRESET_KEY", "sk-preset-override");
    let gateway = harness::start(
        "[[backends]]\nname = \"lm\"\nkind = \"openai\"\npreset = \"lmstudio\"\nurl = \"{mock}/v1\"\n[[backends]]\nname = \"groq\"\nkind = \"openai\"\npreset = \"groq\"\nurl = \"{mock}/v1\"\napi_key_env = \"SWITCHYARD_TEST_PRESET_KEY\"\n",
    )
    .await;
    let answer = gateway
        .post("/v1/chat/completions", &chat("lm/mock-preset-local", false))
        .await;
    assert_eq!(answer.status, 200, "{}", answer.body);
    assert_eq!(
        answer.json()["choices"][0]["message"]["content"],
        "Hello from the mock 🦀"
    );
    assert_eq!(
        keys_seen(&gateway, "mock-preset-local"),
        vec![String::new()],
        "a local preset sends no key"
    );
    let answer = gateway
        .post("/api/chat", &chat("groq/mock-preset-hosted", true))
        .await;
    assert_eq!(answer.status, 200, "{}", answer.body);
    assert_eq!(
        keys_seen(&gateway, "mock-preset-hosted"),
        vec!["Bearer sk-preset-override".to_owned()],
        "the overriding api_key_env is the key sent"
    );
}

#[actix_web::test]
async fn a_refused_key_rests_and_the_request_goes_through_the_next() {
    let gateway = with_keys(&[
        ("SWITCHYARD_TEST_ROT401_BAD", "bad-key"),
        ("SWITCHYARD_TEST_ROT401_GOOD", "good-key"),
    ])
    .await;
    let answer = gateway
        .post("/v1/chat/completions", &chat("keys/mock-rot401", false))
        .await;
    assert_eq!(answer.status, 200, "{}", answer.body);
    assert_eq!(
        keys_seen(&gateway, "mock-rot401"),
        vec!["Bearer bad-key", "Bearer good-key"],
        "the refused key once, then the next"
    );
    // The refused key rests: every request takes the good one, its turn included.
    for _ in 0..3 {
        let answer = gateway
            .post(
                "/v1/chat/completions",
                &chat("keys/mock-rot401-after", true),
            )
            .await;
        assert_eq!(answer.status, 200, "{}", answer.body);
    }
    assert_eq!(
        keys_seen(&gateway, "mock-rot401-after"),
        vec!["Bearer good-key"; 3]
    );
    let (keys, body) = key_report(&gateway).await;
    assert_eq!(keys[0]["env"], "SWITCHYARD_TEST_ROT401_BAD");
    assert_eq!(keys[0]["resting"], true);
    let left = keys[0]["resting_secs"].as_u64().unwrap();
    assert!((290..=300).contains(&left), "a 401 rests 300 s: {left}");
    assert_eq!(keys[1]["env"], "SWITCHYARD_TEST_ROT401_GOOD");
    assert_eq!(keys[1]["resting"], false);
    assert!(
        !body.contains("bad-key") && !body.contains("good-key"),
        "keys are shown by variable, never by value: {body}"
    );
}

#[actix_web::test]
async fn a_throttled_key_rests_for_retry_after_then_takes_its_turn_again() {
    let gateway = with_keys(&[
        ("SWITCHYARD_TEST_ROT429_BUSY", "busy-key"),
        ("SWITCHYARD_TEST_ROT429_GOOD", "good-key"),
    ])
    .await;
    // Streamed, so the retry happens before the stream's status is sent.
    let answer = gateway
        .post("/v1/chat/completions", &chat("keys/mock-rot429", true))
        .await;
    assert_eq!(answer.status, 200, "{}", answer.body);
    assert!(answer.body.contains("[DONE]"), "{}", answer.body);
    assert_eq!(
        keys_seen(&gateway, "mock-rot429"),
        vec!["Bearer busy-key", "Bearer good-key"]
    );
    let (keys, body) = key_report(&gateway).await;
    assert_eq!(keys[0]["env"], "SWITCHYARD_TEST_ROT429_BUSY");
    assert_eq!(keys[0]["resting_secs"], 1, "Retry-After: 1 is the rest");
    assert!(!body.contains("busy-key"), "{body}");
    for _ in 0..2 {
        let answer = gateway
            .post("/api/chat", &chat("keys/mock-rot429-resting", false))
            .await;
        assert_eq!(answer.status, 200, "{}", answer.body);
    }
    assert_eq!(
        keys_seen(&gateway, "mock-rot429-resting"),
        vec!["Bearer good-key"; 2],
        "the resting key is skipped"
    );
    actix_web::rt::time::sleep(Duration::from_millis(1200)).await;
    assert_eq!(key_report(&gateway).await.0[0]["resting"], false);
    for _ in 0..2 {
        let answer = gateway
            .post(
                "/v1/chat/completions",
                &chat("keys/mock-rot429-back", false),
            )
            .await;
        assert_eq!(answer.status, 200, "{}", answer.body);
    }
    let seen = keys_seen(&gateway, "mock-rot429-back");
    assert_eq!(
        seen.iter().filter(|key| *key == "Bearer busy-key").count(),
        1,
        "its rest over, the busy key takes its turn again: {seen:?}"
    );
}

#[actix_web::test]
async fn a_request_is_retried_once_and_when_all_keys_rest_the_soonest_back_is_used() {
    let gateway = with_keys(&[
        ("SWITCHYARD_TEST_ROTALL_BAD", "bad-key"),
        ("SWITCHYARD_TEST_ROTALL_FORBIDDEN", "forbidden-key"),
    ])
    .await;
    let answer = gateway
        .post("/v1/chat/completions", &chat("keys/mock-rotall", false))
        .await;
    assert_ne!(answer.status, 200, "{}", answer.body);
    assert_eq!(
        keys_seen(&gateway, "mock-rotall"),
        vec!["Bearer bad-key", "Bearer forbidden-key"],
        "one retry, no more"
    );
    let answer = gateway
        .post(
            "/v1/chat/completions",
            &chat("keys/mock-rotall-rest", false),
        )
        .await;
    assert_ne!(answer.status, 200, "{}", answer.body);
    assert_eq!(
        keys_seen(&gateway, "mock-rotall-rest"),
        vec!["Bearer bad-key"],
        "both rest: the one rested first is back first, and there is nothing to retry with"
    );
    let (keys, _) = key_report(&gateway).await;
    assert!(keys.iter().all(|key| key["resting"] == true), "{keys:?}");
}

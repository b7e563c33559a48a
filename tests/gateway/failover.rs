//! Several servers behind one backend: load spread by requests in flight, a failing
//! server taken out and probed back in, and `/health` telling which is which.

use std::time::Duration;

use serde_json::{json, Value};

use crate::harness::{self, mock};

fn chat(model: &str) -> Value {
    json!({"model": model, "messages": [{"role": "user", "content": "x"}]})
}

fn upstream_states(health: &Value, backend: &str) -> Vec<(String, String)> {
    health["backends"]
        .as_array()
        .unwrap()
        .iter()
        .find(|b| b["name"] == backend)
        .unwrap()["upstreams"]
        .as_array()
        .unwrap()
        .iter()
        .map(|u| {
            (
                u["url"].as_str().unwrap().to_owned(),
                u["state"].as_str().unwrap().to_owned(),
            )
        })
        .collect()
}

#[actix_web::test]
async fn requests_spread_over_servers_and_skip_a_dead_one() {
    let (second, second_address, second_state) = mock::start("127.0.0.1:0", true).unwrap();
    actix_web::rt::spawn(second);
    let gateway = harness::start(&format!(
        "[[backends]]\nname = \"pool\"\nkind = \"openai\"\nurls = [\"{{mock}}/v1\", \"http://127.0.0.1:9/v1\", \"http://{second_address}/v1\"]\nmax_failures = 2\ncooldown_secs = 30\n"
    ))
    .await;
    for _ in 0..9 {
        let answer = gateway
            .post("/v1/chat/completions", &chat("pool/mock-spread"))
            .await;
        assert_eq!(
            answer.status, 200,
            "a refused server is skipped within the request: {}",
            answer.body
        );
    }
    let first = gateway.mock.requests_for("mock-spread").len();
    let second = second_state.requests_for("mock-spread").len();
    assert_eq!(first + second, 9);
    assert!(
        first >= 3 && second >= 3,
        "load is spread: {first} and {second}"
    );
    let health = gateway.get("/health").await.json();
    let states = upstream_states(&health, "pool");
    assert_eq!(
        states[1],
        ("http://127.0.0.1:9/v1".to_owned(), "ejected".to_owned()),
        "{health}"
    );
    assert_eq!(states[0].1, "healthy");
    assert_eq!(health["status"], "ok", "the backend still has servers");
}

#[actix_web::test]
async fn a_failing_server_is_ejected_then_probed_back_in() {
    let (spare, spare_address, _) = mock::start("127.0.0.1:0", true).unwrap();
    let spare_handle = spare.handle();
    actix_web::rt::spawn(spare);
    let gateway = harness::start(&format!(
        "[[backends]]\nname = \"solo\"\nkind = \"ollama\"\nurls = [\"http://{spare_address}\"]\nmax_failures = 2\ncooldown_secs = 0.3\n"
    ))
    .await;
    assert_eq!(
        gateway.post("/api/chat", &chat("solo/mock-a")).await.status,
        200
    );
    // 5xx answers count as failures too.
    for _ in 0..2 {
        assert_eq!(
            gateway
                .post("/api/chat", &chat("solo/mock-status503"))
                .await
                .status,
            503
        );
    }
    let health = gateway.get("/health").await.json();
    assert_eq!(upstream_states(&health, "solo")[0].1, "ejected");
    assert_eq!(health["status"], "degraded");
    // The server goes away entirely: a wholly ejected backend is still tried, and fails.
    spare_handle.stop(false).await;
    assert_eq!(
        gateway.post("/api/chat", &chat("solo/mock-b")).await.status,
        502
    );
    // It comes back on the same address; after the cool-down a probe lets it back in.
    let (back, _, back_state) = mock::start(&spare_address.to_string(), true).unwrap();
    actix_web::rt::spawn(back);
    actix_web::rt::time::sleep(Duration::from_millis(400)).await;
    // This request finds the cool-down over and starts the probe.
    let _ = gateway.post("/api/chat", &chat("solo/mock-c")).await;
    let mut state = String::new();
    for _ in 0..40 {
        actix_web::rt::time::sleep(Duration::from_millis(50)).await;
        state = upstream_states(&gateway.get("/health").await.json(), "solo")[0]
            .1
            .clone();
        if state == "healthy" {
            break;
        }
    }
    assert_eq!(state, "healthy", "the probe found it up");
    assert_eq!(
        gateway.post("/api/chat", &chat("solo/mock-d")).await.status,
        200
    );
    assert_eq!(back_state.requests_for("mock-d").len(), 1);
}

const ALIASES: &str = r#"
[[backends]]
name = "down"
kind = "openai"
url = "http://127.0.0.1:9/v1"
[[models]]
name = "chat"
targets = ["oa/mock-status503", "ol/mock-fine"]
[[models]]
name = "busy"
targets = ["oa/mock-status429", "down/x", "oa/mock-hang", "echo"]
[[models]]
name = "picky"
targets = ["oa/mock-status400", "echo"]
[[models]]
name = "midway"
targets = ["oa/mock-errstream", "echo"]
"#;

#[actix_web::test]
async fn an_alias_falls_back_until_a_target_answers() {
    let gateway = harness::start_with(ALIASES, "response_timeout_secs = 0.5").await;
    let answer = gateway.post("/v1/chat/completions", &chat("chat")).await;
    assert_eq!(answer.status, 200, "{}", answer.body);
    let body = answer.json();
    assert_eq!(body["model"], "chat", "named as the client asked");
    assert_eq!(
        body["choices"][0]["message"]["content"],
        "Hello from the mock 🦀"
    );
    assert_eq!(gateway.mock.requests_for("mock-status503").len(), 1);
    assert_eq!(gateway.mock.requests_for("mock-fine").len(), 1);
    // 429, a refused connection and a timeout are all skipped, streaming too.
    let lines = gateway
        .post(
            "/api/chat",
            &json!({"model": "busy", "messages": [{"role": "user", "content": "from echo"}]}),
        )
        .await
        .ndjson();
    let text: String = lines
        .iter()
        .filter_map(|l| l["message"]["content"].as_str())
        .collect();
    assert_eq!(text, "from echo");
    assert_eq!(lines.last().unwrap()["model"], "busy");
    // Embeddings take the same path.
    let embedded = gateway
        .post("/api/embed", &json!({"model": "busy", "input": "x"}))
        .await;
    assert_eq!(embedded.status, 200, "{}", embedded.body);
}

#[actix_web::test]
async fn no_fallback_for_the_clients_own_errors_or_after_the_first_byte() {
    let gateway = harness::start_with(ALIASES, "").await;
    let answer = gateway.post("/v1/chat/completions", &chat("picky")).await;
    assert_eq!(
        answer.status, 400,
        "a request the upstream calls bad is bad everywhere"
    );
    let answer = gateway
        .post("/v1/chat/completions", &json!({"model": "midway", "stream": true, "messages": [{"role": "user", "content": "x"}]}))
        .await;
    assert_eq!(answer.status, 200);
    let events = answer.sse();
    assert!(
        events.last().unwrap().contains("\"error\""),
        "text had reached the client: {events:?}"
    );
}

#[actix_web::test]
async fn aliases_are_listed_as_models() {
    let gateway = harness::start_with(ALIASES, "").await;
    let ids: Vec<String> = gateway.get("/v1/models").await.json()["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["id"].as_str().unwrap().to_owned())
        .collect();
    for alias in ["chat", "busy", "picky", "midway"] {
        assert!(ids.contains(&alias.to_owned()), "{alias} in {ids:?}");
    }
    let tags = gateway.get("/api/tags").await.json();
    assert!(tags["models"]
        .as_array()
        .unwrap()
        .iter()
        .any(|m| m["name"] == "chat" && m["model"] == "chat"));
    let shown = gateway.post("/api/show", &json!({"model": "chat"})).await;
    assert_eq!(shown.status, 200);
}

#[actix_web::test]
async fn a_pattern_alias_serves_every_name_it_matches_and_is_not_listed() {
    let gateway =
        harness::start("[[models]]\nname = \"claude-*\"\ntargets = [\"ol/mock-fine\"]\n").await;
    let answer = gateway
        .post("/v1/chat/completions", &chat("claude-haiku-4-5-20251001"))
        .await;
    assert_eq!(answer.status, 200, "{}", answer.body);
    assert_eq!(answer.json()["model"], "claude-haiku-4-5-20251001");
    assert_eq!(gateway.mock.requests_for("mock-fine").len(), 1);
    let listed = gateway.get("/v1/models").await.body;
    assert!(!listed.contains("claude-"), "{listed}");
    let entry = gateway.get("/v1/models/claude-sonnet-4-5").await;
    assert_eq!(entry.status, 200, "{}", entry.body);
    assert_eq!(entry.json()["id"], "claude-sonnet-4-5");
}

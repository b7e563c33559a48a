//! API keys: both headers, missing and wrong keys answered in the caller's dialect,
//! open routes, hot reload, and the client's key never reaching the upstream.

use serde_json::json;

use crate::harness::{self, client, send, Harness};

fn keys_file(name: &str, content: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("switchyard-auth-{}-{name}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("keys.json");
    std::fs::write(&path, content).unwrap();
    path
}

async fn with_keys(name: &str) -> (Harness, std::path::PathBuf) {
    let path = keys_file(name, r#"{"sk-abc123": "alice", "sk-xyz789": "bob"}"#);
    let gateway = harness::start(&format!("[auth]\nkeys_file = \"{}\"\n", path.display())).await;
    (gateway, path)
}

fn chat() -> String {
    json!({"model": "oa/mock-model", "stream": false, "messages": [{"role": "user", "content": "hi"}]}).to_string()
}

#[actix_web::test]
async fn both_headers_are_accepted() {
    let (gateway, _) = with_keys("both").await;
    let url = format!("{}/v1/chat/completions", gateway.base);
    let answer = send(
        client()
            .post(&url)
            .insert_header(("X-API-Key", "sk-abc123")),
        Some(&chat()),
    )
    .await;
    assert_eq!(answer.status, 200, "{}", answer.body);
    let answer = send(
        client()
            .post(&url)
            .insert_header(("Authorization", "Bearer sk-xyz789")),
        Some(&chat()),
    )
    .await;
    assert_eq!(answer.status, 200);
    let url = format!("{}/api/chat", gateway.base);
    let answer = send(
        client()
            .post(&url)
            .insert_header(("authorization", "bearer sk-xyz789")),
        Some(&chat()),
    )
    .await;
    assert_eq!(answer.status, 200);
    // Neither the gateway key nor the client's other headers went upstream.
    for request in gateway.mock.requests_for("mock-model") {
        assert!(!request.headers.contains_key("x-api-key"));
        assert!(
            !request.headers.contains_key("authorization"),
            "no upstream key configured, none sent"
        );
        assert!(!format!("{:?}", request.headers).contains("sk-"));
    }
}

#[actix_web::test]
async fn missing_or_wrong_keys_are_401_in_the_callers_dialect() {
    let (gateway, _) = with_keys("wrong").await;
    let openai = format!("{}/v1/chat/completions", gateway.base);
    let ollama = format!("{}/api/chat", gateway.base);
    let answer = send(client().post(&openai), Some(&chat())).await;
    assert_eq!(answer.status, 401);
    let body = answer.json();
    assert_eq!(body["error"]["code"], "invalid_api_key");
    assert!(body["error"]["message"]
        .as_str()
        .unwrap()
        .contains("X-API-Key"));
    let answer = send(
        client()
            .post(&openai)
            .insert_header(("X-API-Key", "sk-abc12")),
        Some(&chat()),
    )
    .await;
    assert_eq!(answer.status, 401);
    assert_eq!(answer.json()["error"]["type"], "invalid_request_error");
    let answer = send(client().post(&ollama).bearer_auth("nope"), Some(&chat())).await;
    assert_eq!(answer.status, 401);
    assert!(answer.json()["error"].is_string());
    let answer = send(client().get(format!("{}/api/tags", gateway.base)), None).await;
    assert_eq!(answer.status, 401);
    let answer = send(client().get(format!("{}/v1/models", gateway.base)), None).await;
    assert_eq!(answer.status, 401);
    assert!(
        gateway.mock.requests_for("mock-model").is_empty(),
        "nothing reached the upstream"
    );
}

#[actix_web::test]
async fn health_and_root_stay_open() {
    let (gateway, _) = with_keys("open").await;
    assert_eq!(gateway.get("/health").await.status, 200);
    assert_eq!(gateway.get("/").await.status, 200);
    let head = send(client().head(format!("{}/", gateway.base)), None).await;
    assert_eq!(head.status, 200);
}

#[actix_web::test]
async fn an_edited_keys_file_takes_effect_and_a_broken_one_is_ignored() {
    let (gateway, path) = with_keys("reload").await;
    let url = format!("{}/api/tags", gateway.base);
    let with = |key: &'static str| send(client().get(&url).insert_header(("X-API-Key", key)), None);
    assert_eq!(with("sk-new").await.status, 401);
    std::fs::write(&path, r#"{"sk-new": "carol"}"#).unwrap();
    // The file is looked at once a second.
    actix_web::rt::time::sleep(std::time::Duration::from_millis(1300)).await;
    assert_eq!(with("sk-new").await.status, 200);
    assert_eq!(
        with("sk-abc123").await.status,
        401,
        "removed keys stop working"
    );
    std::fs::write(&path, "{ broken").unwrap();
    actix_web::rt::time::sleep(std::time::Duration::from_millis(1300)).await;
    assert_eq!(with("sk-new").await.status, 200, "the last good keys stay");
}

#[actix_web::test]
async fn the_upstream_key_comes_from_the_environment_only() {
    std::env::set_var("SWITCHYARD_TEST_UPSTREAM_KEY", "sk-upstream-secret");
    let (gateway, _) = {
        let path = keys_file("upstream", r#"{"sk-client": "alice"}"#);
        let gateway = harness::start(&format!(
            "[[backends]]\nname = \"keyed\"\nkind = \"openai\"\nurl = \"{{mock}}/v1\"\napi_key_env = \"SWITCHYARD_TEST_UPSTREAM_KEY\"\n[auth]\nkeys_file = \"{}\"\n",
            path.display()
        ))
        .await;
        (gateway, path)
    };
    let body =
        json!({"model": "keyed/mock-keyed", "messages": [{"role": "user", "content": "hi"}]})
            .to_string();
    let answer = send(
        client()
            .post(format!("{}/v1/chat/completions", gateway.base))
            .bearer_auth("sk-client")
            .insert_header(("cookie", "session=1"))
            .insert_header(("x-forwarded-for", "10.1.2.3")),
        Some(&body),
    )
    .await;
    assert_eq!(answer.status, 200, "{}", answer.body);
    let seen = gateway.mock.requests_for("mock-keyed");
    assert_eq!(
        seen[0].headers.get("authorization").map(String::as_str),
        Some("Bearer sk-upstream-secret")
    );
    assert!(!seen[0].headers.contains_key("cookie"));
    assert!(!seen[0].headers.contains_key("x-forwarded-for"));
}

#[actix_web::test]
async fn the_upstream_key_travels_in_the_configured_header() {
    std::env::set_var("SWITCHYARD_TEST_UPSTREAM_HEADER_KEY", "sk-in-header");
    let gateway = harness::start(
        "[[backends]]\nname = \"keyed\"\nkind = \"ollama\"\nurl = \"{mock}\"\napi_key_env = \"SWITCHYARD_TEST_UPSTREAM_HEADER_KEY\"\napi_key_header = \"x-api-key\"\n",
    )
    .await;
    let body =
        json!({"model": "keyed/mock-header", "messages": [{"role": "user", "content": "hi"}]})
            .to_string();
    let answer = send(
        client().post(format!("{}/api/chat", gateway.base)),
        Some(&body),
    )
    .await;
    assert_eq!(answer.status, 200, "{}", answer.body);
    let seen = gateway.mock.requests_for("mock-header");
    assert_eq!(
        seen[0].headers.get("x-api-key").map(String::as_str),
        Some("sk-in-header")
    );
    assert!(!seen[0].headers.contains_key("authorization"));
}

#[actix_web::test]
async fn metrics_count_what_each_user_spends() {
    let (gateway, _) = with_keys("metrics").await;
    let url = format!("{}/v1/chat/completions", gateway.base);
    for stream in [false, true] {
        let body = json!({"model": "oa/mock-model", "stream": stream, "messages": [{"role": "user", "content": "hi"}]});
        let answer = send(
            client()
                .post(&url)
                .insert_header(("X-API-Key", "sk-abc123")),
            Some(&body.to_string()),
        )
        .await;
        assert_eq!(answer.status, 200);
    }
    let answer = send(
        client()
            .post(format!("{}/api/chat", gateway.base))
            .bearer_auth("sk-xyz789"),
        Some(&chat()),
    )
    .await;
    assert_eq!(answer.status, 200);
    // /metrics is open, like /health.
    let metrics = gateway.get("/metrics").await;
    assert_eq!(metrics.status, 200);
    assert!(metrics.content_type.starts_with("text/plain"));
    let value = |user: &str, kind: &str| -> u64 {
        metrics
            .body
            .lines()
            .find(|line| {
                line.starts_with("switchyard_tokens_total{")
                    && line.contains(&format!("user=\"{user}\""))
                    && line.contains(&format!("kind=\"{kind}\""))
                    && line.contains("backend=\"oa\"")
            })
            .and_then(|line| line.rsplit(' ').next())
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("no {user} {kind} line in {}", metrics.body))
    };
    assert_eq!(value("alice", "prompt"), 2 * harness::mock::PROMPT_TOKENS);
    assert_eq!(value("alice", "completion"), 10);
    assert_eq!(value("bob", "completion"), 5);
    assert!(
        metrics.body.contains(
            "switchyard_http_requests_total{route=\"/v1/chat/completions\",status=\"200\"} 2"
        ),
        "{}",
        metrics.body
    );
    assert!(!metrics.body.contains("sk-"), "keys never appear");
}

#[actix_web::test]
async fn nothing_of_the_clients_headers_goes_upstream() {
    // The request carries relay headers, so without keys it is served only when
    // anonymous serving of relayed requests is allowed on purpose.
    let gateway = harness::start("[auth]\nallow_anonymous = true\n").await;
    let body = json!({"model": "oa/mock-hygiene", "messages": [{"role": "user", "content": "hi"}]})
        .to_string();
    let request = client()
        .post(format!("{}/v1/chat/completions", gateway.base))
        .insert_header(("authorization", "Bearer sk-client-secret"))
        .insert_header(("x-api-key", "sk-client-secret"))
        .insert_header(("proxy-authorization", "Basic Zm9vOmJhcg=="))
        .insert_header(("cookie", "session=1"))
        .insert_header(("forwarded", "for=10.0.0.1"))
        .insert_header(("x-forwarded-for", "10.0.0.1"))
        .insert_header(("x-forwarded-host", "evil.example"))
        .insert_header(("x-forwarded-proto", "https"))
        .insert_header(("x-real-ip", "10.0.0.1"))
        .insert_header(("cf-connecting-ip", "10.0.0.1"))
        .insert_header(("te", "trailers"))
        .insert_header(("keep-alive", "timeout=5"))
        .insert_header(("x-custom", "client-only"));
    let answer = send(request, Some(&body)).await;
    assert_eq!(answer.status, 200, "{}", answer.body);
    let seen = gateway.mock.requests_for("mock-hygiene");
    let names: Vec<&str> = seen[0].headers.keys().map(String::as_str).collect();
    for name in &names {
        assert!(
            [
                "host",
                "content-type",
                "content-length",
                "user-agent",
                "date",
                "accept-encoding"
            ]
            .contains(name),
            "{name} reached the upstream: {names:?}"
        );
    }
    assert!(seen[0].headers["user-agent"].starts_with("switchyard/"));
}

/// awc is patched to share one codec configuration per worker thread (vendor/README.md);
/// its date service must keep the `Date` of later requests current.
#[actix_web::test]
async fn upstream_requests_carry_a_current_date() {
    let gateway = harness::start("").await;
    let body = json!({"model": "oa/mock-date", "messages": [{"role": "user", "content": "hi"}]});
    assert_eq!(
        gateway.post("/v1/chat/completions", &body).await.status,
        200
    );
    // Past a second even when the 500 ms date tick runs late.
    actix_web::rt::time::sleep(std::time::Duration::from_millis(1600)).await;
    assert_eq!(
        gateway.post("/v1/chat/completions", &body).await.status,
        200
    );
    let seen = gateway.mock.requests_for("mock-date");
    let dates: Vec<&str> = seen.iter().map(|r| r.headers["date"].as_str()).collect();
    assert_eq!(dates.len(), 2);
    assert!(dates.iter().all(|d| d.ends_with(" GMT")), "{dates:?}");
    assert_ne!(dates[0], dates[1], "the second request's date went stale");
}

//! Who may come in: relayed requests never served anonymously, the operational routes'
//! access modes, admin keys, and keys that are disabled or expired.

use actix_web::http::{header::HeaderMap, StatusCode};
use serde_json::json;

use crate::harness::{self, client, send, Answer, Harness};

const RELAY_HEADERS: [(&str, &str); 5] = [
    ("CF-Connecting-IP", "203.0.113.7"),
    ("CF-Ray", "8c0ffee-AMS"),
    ("X-Forwarded-For", "203.0.113.7"),
    ("X-Real-IP", "203.0.113.7"),
    ("Forwarded", "for=203.0.113.7;proto=https"),
];

/// A gateway with `server` and `auth` lines added to those sections.
async fn start(server: &str, auth: &str) -> Harness {
    harness::start_config(&format!(
        "[server]\nlisten = \"127.0.0.1:0\"\n{server}\n[auth]\n{auth}\n[routing]\ndefault_backend = \"echo\"\n[[backends]]\nname = \"oa\"\nkind = \"openai\"\nurl = \"{{mock}}/v1\"\n[[backends]]\nname = \"ol\"\nkind = \"ollama\"\nurl = \"{{mock}}\"\n[[backends]]\nname = \"echo\"\nkind = \"echo\"\n"
    ))
    .await
}

fn keys_file(name: &str, content: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("switchyard-access-{}-{name}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("keys.json");
    std::fs::write(&path, content).unwrap();
    path
}

async fn call(gateway: &Harness, method: &str, path: &str, headers: &[(&str, &str)]) -> Answer {
    let url = format!("{}{path}", gateway.base);
    let mut request = match method {
        "GET" => client().get(&url),
        _ => client().post(&url),
    };
    for &(name, value) in headers {
        request = request.insert_header((name, value));
    }
    let body =
        json!({"model": "echo", "stream": false, "messages": [{"role": "user", "content": "hi"}]})
            .to_string();
    send(request, (method == "POST").then_some(body.as_str())).await
}

#[actix_web::test]
async fn relayed_requests_are_never_served_anonymously() {
    let gateway = start("", "").await;
    for path in ["/v1/chat/completions", "/api/chat"] {
        assert_eq!(
            call(&gateway, "POST", path, &[]).await.status,
            200,
            "{path}"
        );
        for header in RELAY_HEADERS {
            let answer = call(&gateway, "POST", path, &[header]).await;
            assert_eq!(answer.status, 401, "{path} with {}", header.0);
            let body = answer.json();
            let message = if path.starts_with("/v1") {
                assert_eq!(body["error"]["code"], "invalid_api_key");
                body["error"]["message"].as_str().unwrap().to_owned()
            } else {
                body["error"].as_str().unwrap().to_owned()
            };
            assert!(message.contains("proxy or tunnel"), "{message}");
            assert!(
                message.contains("switchyard keys add"),
                "says how: {message}"
            );
        }
    }
}

#[actix_web::test]
async fn allow_anonymous_serves_relayed_requests_on_purpose() {
    let gateway = start("", "allow_anonymous = true").await;
    for header in RELAY_HEADERS {
        let answer = call(&gateway, "POST", "/api/chat", &[header]).await;
        assert_eq!(answer.status, 200, "{}", header.0);
    }
}

#[actix_web::test]
async fn metrics_and_health_detail_follow_server_metrics() {
    // loopback, the default: local callers yes, relayed no.
    let gateway = start("", "").await;
    assert_eq!(call(&gateway, "GET", "/metrics", &[]).await.status, 200);
    let relayed = call(&gateway, "GET", "/metrics", &[RELAY_HEADERS[2]]).await;
    assert_eq!(relayed.status, 403, "{}", relayed.body);
    assert!(call(&gateway, "GET", "/health", &[]).await.json()["backends"].is_array());
    let health = call(&gateway, "GET", "/health", &[RELAY_HEADERS[0]]).await;
    assert_eq!(health.status, 200);
    assert_eq!(health.json(), json!({"status": "ok"}));

    let gateway = start("metrics = \"public\"", "allow_anonymous = true").await;
    let relayed = call(&gateway, "GET", "/metrics", &[RELAY_HEADERS[2]]).await;
    assert_eq!(relayed.status, 200);
    assert!(call(&gateway, "GET", "/health", &[RELAY_HEADERS[2]])
        .await
        .json()["backends"]
        .is_array());

    let keys = keys_file(
        "metrics-key",
        r#"{"sk-user-0123456789": "alice", "sk-boss-0123456789": {"user": "boss", "admin": true}}"#,
    );
    let gateway = start(
        "metrics = \"key\"",
        &format!(
            "keys_file = \"{}\"\nadmin_keys = [\"sk-root-0123456789\"]",
            keys.display()
        ),
    )
    .await;
    assert_eq!(call(&gateway, "GET", "/metrics", &[]).await.status, 401);
    let user = call(
        &gateway,
        "GET",
        "/metrics",
        &[("X-API-Key", "sk-user-0123456789")],
    )
    .await;
    assert_eq!(user.status, 403);
    assert!(user.body.contains("admin key"), "{}", user.body);
    for admin in ["sk-root-0123456789", "sk-boss-0123456789"] {
        let bearer = format!("Bearer {admin}");
        let answer = call(&gateway, "GET", "/metrics", &[("Authorization", &bearer)]).await;
        assert_eq!(answer.status, 200, "{admin}");
        assert!(answer.body.contains("switchyard_http_requests_total"));
        let health = call(&gateway, "GET", "/health", &[("Authorization", &bearer)]).await;
        assert!(health.json()["backends"].is_array());
    }
    let health = call(
        &gateway,
        "GET",
        "/health",
        &[("X-API-Key", "sk-user-0123456789")],
    )
    .await;
    assert_eq!(health.json(), json!({"status": "ok"}));
    // An admin key is a key for the API too, as user "admin".
    let chat = call(
        &gateway,
        "POST",
        "/v1/chat/completions",
        &[("X-API-Key", "sk-root-0123456789")],
    )
    .await;
    assert_eq!(chat.status, 200);
}

#[actix_web::test]
async fn disabled_and_expired_keys_are_refused_and_say_which() {
    let path = keys_file(
        "states",
        r#"{"sk-live-0123456789": {"user": "alice", "expires": "2999-01-01"},
            "sk-off-0123456789ab": {"user": "bob", "disabled": true},
            "sk-old-0123456789ab": {"user": "carol", "expires": "2020-01-01T00:00:00Z"}}"#,
    );
    let gateway = start("", &format!("keys_file = \"{}\"", path.display())).await;
    let ok = call(
        &gateway,
        "POST",
        "/v1/chat/completions",
        &[("X-API-Key", "sk-live-0123456789")],
    )
    .await;
    assert_eq!(ok.status, 200);
    for (key, word) in [
        ("sk-off-0123456789ab", "disabled"),
        ("sk-old-0123456789ab", "expired"),
    ] {
        let answer = call(
            &gateway,
            "POST",
            "/v1/chat/completions",
            &[("X-API-Key", key)],
        )
        .await;
        assert_eq!(answer.status, 401);
        let error = &answer.json()["error"];
        assert_eq!(error["code"], "invalid_api_key");
        let message = error["message"].as_str().unwrap();
        assert!(message.contains(word), "{message}");
        assert!(!message.contains(key), "the key stays masked: {message}");
        let answer = call(&gateway, "POST", "/api/chat", &[("X-API-Key", key)]).await;
        assert_eq!(answer.status, 401);
        assert!(answer.json()["error"].as_str().unwrap().contains(word));
    }
    // Disabled by an edit: refused within about a second, without a restart.
    std::fs::write(
        &path,
        r#"{"sk-live-0123456789": {"user": "alice", "disabled": true}}"#,
    )
    .unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    loop {
        let answer = call(
            &gateway,
            "POST",
            "/v1/chat/completions",
            &[("X-API-Key", "sk-live-0123456789")],
        )
        .await;
        if answer.status == 401 {
            assert!(answer.body.contains("disabled"));
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the edit was not picked up"
        );
        actix_web::rt::time::sleep(std::time::Duration::from_millis(200)).await;
    }
}

#[actix_web::test]
async fn a_key_uses_only_its_models_and_lists_only_them() {
    let path = keys_file(
        "models",
        r#"{"sk-narrow-0123456789": {"user": "friend", "models": ["oa/*", "echo"]},
            "sk-wide-0123456789ab": "owner"}"#,
    );
    let gateway = start("", &format!("keys_file = \"{}\"", path.display())).await;
    let narrow = [("X-API-Key", "sk-narrow-0123456789")];
    let ask = |model: &str, path: &str| {
        let body = if path.contains("embed") {
            json!({"model": model, "input": "hi"})
        } else {
            json!({"model": model, "stream": false, "messages": [{"role": "user", "content": "hi"}]})
        };
        let request = client()
            .post(format!("{}{path}", gateway.base))
            .insert_header(narrow[0]);
        async move { send(request, Some(&body.to_string())).await }
    };
    assert_eq!(
        ask("oa/mock-allowed", "/v1/chat/completions").await.status,
        200
    );
    assert_eq!(ask("echo", "/api/chat").await.status, 200);
    for path in [
        "/v1/chat/completions",
        "/api/chat",
        "/api/generate",
        "/v1/embeddings",
        "/api/embed",
    ] {
        let answer = ask("echo/other", path).await;
        assert_eq!(answer.status, 403, "{path}: {}", answer.body);
        let message = if path.starts_with("/v1") {
            let error = &answer.json()["error"];
            assert_eq!(error["type"], "permission_error");
            error["message"].as_str().unwrap().to_owned()
        } else {
            answer.json()["error"].as_str().unwrap().to_owned()
        };
        assert!(
            message.contains("echo/other") && message.contains("oa/*"),
            "{message}"
        );
    }
    let forbidden = ask("oa/mock-forbidden-check", "/v1/chat/completions").await;
    assert_eq!(forbidden.status, 200, "a glob over a prefix allows it");
    // A refused request never reached a backend.
    let refused = ask("ol/mock-never", "/api/chat").await;
    assert_eq!(refused.status, 403);
    assert!(gateway.mock.requests_for("mock-never").is_empty());
    let allowed_here = call(
        &gateway,
        "POST",
        "/api/chat",
        &[("X-API-Key", "sk-wide-0123456789ab")],
    )
    .await;
    assert_eq!(allowed_here.status, 200);
    // The listings hold only what the key may use.
    let listed = call(&gateway, "GET", "/v1/models", &narrow).await.json();
    let ids: Vec<&str> = listed["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["id"].as_str().unwrap())
        .collect();
    assert!(
        !ids.is_empty() && ids.iter().all(|id| id.starts_with("oa/")),
        "{ids:?}"
    );
    let tags = call(&gateway, "GET", "/api/tags", &narrow).await.json();
    assert!(tags["models"]
        .as_array()
        .unwrap()
        .iter()
        .all(|m| m["name"].as_str().unwrap().starts_with("oa/")));
    let all = call(
        &gateway,
        "GET",
        "/v1/models",
        &[("X-API-Key", "sk-wide-0123456789ab")],
    )
    .await
    .json();
    assert!(all["data"]
        .as_array()
        .unwrap()
        .iter()
        .any(|m| m["id"] == "echo/echo"));
    assert_eq!(
        call(&gateway, "GET", "/v1/models/echo/echo", &narrow)
            .await
            .status,
        403
    );
}

async fn preflight(gateway: &Harness, origin: &str) -> (StatusCode, HeaderMap) {
    client()
        .request(
            actix_web::http::Method::OPTIONS,
            format!("{}/v1/chat/completions", gateway.base),
        )
        .insert_header(("Origin", origin))
        .insert_header(("Access-Control-Request-Method", "POST"))
        .insert_header((
            "Access-Control-Request-Headers",
            "authorization, content-type",
        ))
        .send()
        .await
        .map(|response| (response.status(), response.headers().clone()))
        .unwrap()
}

#[actix_web::test]
async fn cors_answers_the_allowed_origins_only() {
    let keys = keys_file("cors", r#"{"sk-page-0123456789": "web"}"#);
    let gateway = start(
        "cors_allow_origins = [\"https://app.example.com\"]",
        &format!("keys_file = \"{}\"", keys.display()),
    )
    .await;
    // A preflight carries no key and is answered for the allowed origin.
    let (status, allowed) = preflight(&gateway, "https://app.example.com").await;
    assert!(status.is_success(), "{status}");
    let header =
        |headers: &HeaderMap, name: &str| headers.get(name).map(|v| v.to_str().unwrap().to_owned());
    assert_eq!(
        header(&allowed, "access-control-allow-origin").as_deref(),
        Some("https://app.example.com")
    );
    let allowed_headers = header(&allowed, "access-control-allow-headers")
        .unwrap()
        .to_lowercase();
    assert!(allowed_headers.contains("authorization") && allowed_headers.contains("content-type"));
    let (_, refused) = preflight(&gateway, "https://evil.example").await;
    assert!(header(&refused, "access-control-allow-origin").is_none());
    // The answer itself carries the header for the allowed origin.
    let answer = client()
        .post(format!("{}/v1/chat/completions", gateway.base))
        .insert_header(("Origin", "https://app.example.com"))
        .insert_header(("X-API-Key", "sk-page-0123456789"))
        .send_body(
            json!({"model": "echo", "messages": [{"role": "user", "content": "hi"}]}).to_string(),
        )
        .await
        .unwrap();
    assert_eq!(answer.status(), 200);
    assert_eq!(
        header(answer.headers(), "access-control-allow-origin").as_deref(),
        Some("https://app.example.com")
    );
    // Nothing is allowed by default.
    let plain = start("", "").await;
    let (_, none) = preflight(&plain, "https://app.example.com").await;
    assert!(header(&none, "access-control-allow-origin").is_none());
}

#[actix_web::test]
async fn a_key_over_its_rpm_gets_429_with_retry_after_in_its_dialect() {
    let path = keys_file(
        "rpm",
        r#"{"sk-rpm-0123456789ab": {"user": "batch", "rpm": 3}, "sk-free-0123456789a": "free"}"#,
    );
    let gateway = start("", &format!("keys_file = \"{}\"", path.display())).await;
    let ask = |path: &'static str, key: &'static str| {
        let body = json!({"model": "oa/mock-rpm", "stream": false, "messages": [{"role": "user", "content": "hi"}]});
        let request = client()
            .post(format!("{}{path}", gateway.base))
            .insert_header(("X-API-Key", key));
        async move {
            let mut response = request.send_body(body.to_string()).await.unwrap();
            let header = |name: &str| {
                response
                    .headers()
                    .get(name)
                    .map(|v| v.to_str().unwrap().to_owned())
            };
            let (limit, remaining, retry) = (
                header("x-ratelimit-limit-requests"),
                header("x-ratelimit-remaining-requests"),
                header("retry-after"),
            );
            let body: serde_json::Value =
                serde_json::from_slice(&response.body().await.unwrap()).unwrap();
            (response.status().as_u16(), limit, remaining, retry, body)
        }
    };
    let mut remaining = Vec::new();
    for path in ["/v1/chat/completions", "/api/chat", "/v1/chat/completions"] {
        let (status, limit, left, _, _) = ask(path, "sk-rpm-0123456789ab").await;
        assert_eq!(status, 200);
        assert_eq!(limit.as_deref(), Some("3"));
        remaining.push(left.unwrap());
    }
    assert_eq!(remaining, ["2", "1", "0"]);
    let (status, _, left, retry, body) = ask("/v1/chat/completions", "sk-rpm-0123456789ab").await;
    assert_eq!(status, 429);
    assert_eq!(left.as_deref(), Some("0"));
    let retry: u64 = retry.expect("Retry-After").parse().unwrap();
    assert!((1..=20).contains(&retry), "{retry}");
    assert_eq!(body["error"]["type"], "rate_limit_error");
    let (status, _, _, retry, body) = ask("/api/chat", "sk-rpm-0123456789ab").await;
    assert_eq!(status, 429);
    assert!(retry.is_some());
    assert!(body["error"]
        .as_str()
        .unwrap()
        .contains("3 requests per minute"));
    assert_eq!(
        gateway.mock.requests_for("mock-rpm").len(),
        3,
        "refused requests never went upstream"
    );
    // A key without limits carries no rate-limit headers.
    let (status, limit, _, _, _) = ask("/v1/chat/completions", "sk-free-0123456789a").await;
    assert_eq!((status, limit), (200, None));
}

#[actix_web::test]
async fn a_key_over_its_tpm_waits_until_its_tokens_age_out() {
    let path = keys_file(
        "tpm",
        r#"{"sk-tpm-whole-0123456": {"user": "w", "tpm": 30}, "sk-tpm-stream-012345": {"user": "s", "tpm": 30}}"#,
    );
    let gateway = start("", &format!("keys_file = \"{}\"", path.display())).await;
    // Echo counts a token per word: 20 words in, 20 out, 40 tokens in all.
    let words = vec!["word"; 20].join(" ");
    for (key, path, stream) in [
        ("sk-tpm-whole-0123456", "/v1/chat/completions", false),
        ("sk-tpm-stream-012345", "/api/chat", true),
    ] {
        let body = json!({"model": "echo", "stream": stream, "messages": [{"role": "user", "content": words}]}).to_string();
        let send_one = || {
            client()
                .post(format!("{}{path}", gateway.base))
                .insert_header(("X-API-Key", key))
                .send_body(body.clone())
        };
        let mut first = send_one().await.unwrap();
        assert_eq!(first.status(), 200);
        assert_eq!(
            first.headers().get("x-ratelimit-limit-tokens").unwrap(),
            "30"
        );
        assert_eq!(
            first.headers().get("x-ratelimit-remaining-tokens").unwrap(),
            "30"
        );
        // The answer (a stream: to its end) is what spends the tokens.
        first.body().await.unwrap();
        let mut second = send_one().await.unwrap();
        assert_eq!(second.status(), 429, "{key}");
        let retry: u64 = second
            .headers()
            .get("retry-after")
            .unwrap()
            .to_str()
            .unwrap()
            .parse()
            .unwrap();
        assert!((55..=60).contains(&retry), "{retry}");
        assert_eq!(
            second
                .headers()
                .get("x-ratelimit-remaining-tokens")
                .unwrap(),
            "0"
        );
        let text = String::from_utf8(second.body().await.unwrap().to_vec()).unwrap();
        assert!(
            text.contains("40 tokens") && text.contains("limit of 30"),
            "{text}"
        );
    }
}

//! The console at `/ui`: its page, and its JSON API's refusals (no key, a user key, a
//! relayed anonymous caller, a change that does not come from the console's page), its
//! validation, and keys added, disabled, enabled and removed through it as the public
//! API sees them at once.

use serde_json::{json, Value};

use crate::harness::{self, client, send, Answer, Harness};

const ADMIN: &str = "sk-console-admin-0001";
const FILE_ADMIN: &str = "sk-console-file-admin-0002";
const USER: &str = "sk-console-user-0003";

/// A gateway whose keys file holds a user key and an admin key, with one more admin key
/// in `auth.admin_keys`.
async fn start(name: &str) -> (Harness, std::path::PathBuf) {
    let dir =
        std::env::temp_dir().join(format!("switchyard-console-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("keys.json");
    std::fs::write(
        &path,
        json!({USER: "alice", FILE_ADMIN: {"user": "root", "admin": true}}).to_string(),
    )
    .unwrap();
    let gateway = harness::start(&format!(
        "[auth]\nkeys_file = {}\nadmin_keys = [\"{ADMIN}\"]\n",
        json!(path.display().to_string())
    ))
    .await;
    (gateway, path)
}

/// A console API call: `key` as a bearer key, `headers` added, `body` as it is.
async fn call(
    gateway: &Harness,
    method: &str,
    path: &str,
    key: Option<&str>,
    headers: &[(&str, &str)],
    body: Option<&str>,
) -> Answer {
    let url = format!("{}{path}", gateway.base);
    let mut request = match method {
        "GET" => client().get(&url),
        _ => client().post(&url),
    };
    if let Some(key) = key {
        request = request.insert_header(("Authorization", format!("Bearer {key}")));
    }
    for &(name, value) in headers {
        request = request.insert_header((name, value));
    }
    match body {
        // `send` would add its own content type; these tests choose theirs.
        Some(body) => {
            let mut response = request.send_body(body.to_owned()).await.unwrap();
            let bytes = response.body().await.unwrap();
            Answer {
                status: response.status().as_u16(),
                content_type: String::new(),
                headers: response.headers().clone(),
                body: String::from_utf8(bytes.to_vec()).unwrap(),
            }
        }
        None => send(request, None).await,
    }
}

/// A change as the console's page sends it.
async fn change(gateway: &Harness, path: &str, body: &Value) -> Answer {
    call(
        gateway,
        "POST",
        path,
        Some(ADMIN),
        &[
            ("Content-Type", "application/json"),
            ("X-Switchyard-Console", "1"),
        ],
        Some(&body.to_string()),
    )
    .await
}

async fn chat(gateway: &Harness, key: &str, model: &str) -> Answer {
    send(
        client()
            .post(format!("{}/v1/chat/completions", gateway.base))
            .insert_header(("Authorization", format!("Bearer {key}"))),
        Some(
            &json!({"model": model, "messages": [{"role": "user", "content": "hi there"}]})
                .to_string(),
        ),
    )
    .await
}

#[actix_web::test]
async fn the_page_is_served_at_ui_and_never_at_the_root() {
    let (gateway, _) = start("page").await;
    let page = gateway.get("/ui").await;
    assert_eq!(page.status, 200);
    assert!(
        page.content_type.starts_with("text/html"),
        "{}",
        page.content_type
    );
    assert!(page.body.contains("Admin key") && page.body.contains("/ui/console.js"));
    let policy = page
        .headers
        .get("content-security-policy")
        .unwrap()
        .to_str()
        .unwrap();
    assert!(policy.contains("default-src 'self'"), "{policy}");
    for (path, kind) in [
        ("/ui/console.js", "text/javascript"),
        ("/ui/console.css", "text/css"),
    ] {
        let asset = gateway.get(path).await;
        assert_eq!(asset.status, 200, "{path}");
        assert!(
            asset.content_type.starts_with(kind),
            "{path}: {}",
            asset.content_type
        );
    }
    // Nothing in the page is fetched from another host.
    let script = gateway.get("/ui/console.js").await.body;
    assert!(!page.body.contains("https://") && !script.contains("https://"));
    assert_eq!(gateway.get("/").await.body, "Ollama is running");
}

#[actix_web::test]
async fn only_admin_keys_reach_the_console_api() {
    let (gateway, _) = start("auth").await;
    let missing = call(&gateway, "GET", "/ui/api/session", None, &[], None).await;
    assert_eq!(missing.status, 401, "{}", missing.body);
    assert!(missing.json()["error"]["message"]
        .as_str()
        .unwrap()
        .contains("admin key"));
    let wrong = call(
        &gateway,
        "GET",
        "/ui/api/overview",
        Some("sk-nobody-at-all-99"),
        &[],
        None,
    )
    .await;
    assert_eq!(wrong.status, 401, "{}", wrong.body);
    let user = call(&gateway, "GET", "/ui/api/keys", Some(USER), &[], None).await;
    assert_eq!(user.status, 403, "{}", user.body);
    let message = user.json()["error"]["message"].as_str().unwrap().to_owned();
    assert!(
        message.contains("user key") && message.contains("alice"),
        "{message}"
    );
    assert!(!message.contains(USER), "the key stays masked: {message}");
    for admin in [ADMIN, FILE_ADMIN] {
        let session = call(&gateway, "GET", "/ui/api/session", Some(admin), &[], None).await;
        assert_eq!(session.status, 200, "{}", session.body);
        assert!(session.json()["key"].as_str().unwrap().starts_with("sk-…"));
    }
    // An unknown route under the API is refused to strangers too, not described.
    let hidden = call(&gateway, "GET", "/ui/api/nothing", None, &[], None).await;
    assert_eq!(hidden.status, 401);
    // The playground calls the public routes with the admin key.
    let answer = chat(&gateway, ADMIN, "echo/x").await;
    assert_eq!(answer.status, 200, "{}", answer.body);
}

#[actix_web::test]
async fn anonymous_callers_are_refused_even_where_the_gateway_serves_them() {
    let gateway = harness::start("").await;
    // Served anonymously on loopback: the API answers, the console still refuses.
    assert_eq!(chat(&gateway, "", "echo/x").await.status, 200);
    let local = call(&gateway, "GET", "/ui/api/session", None, &[], None).await;
    assert_eq!(local.status, 403, "{}", local.body);
    assert!(local.body.contains("admin key"), "{}", local.body);
    let relayed = call(
        &gateway,
        "GET",
        "/ui/api/overview",
        None,
        &[("X-Forwarded-For", "203.0.113.7")],
        None,
    )
    .await;
    assert_eq!(relayed.status, 401, "{}", relayed.body);
    assert!(relayed.body.contains("proxy or tunnel"), "{}", relayed.body);
}

#[actix_web::test]
async fn a_change_must_come_from_the_console_page() {
    let (gateway, path) = start("csrf").await;
    let body = json!({"user": "bob"}).to_string();
    let origin = gateway.base.clone();
    let refused: [(&str, Vec<(&str, &str)>); 4] = [
        (
            "no console header",
            vec![("Content-Type", "application/json")],
        ),
        (
            "a form's content type",
            vec![
                ("Content-Type", "application/x-www-form-urlencoded"),
                ("X-Switchyard-Console", "1"),
            ],
        ),
        (
            "text/plain",
            vec![
                ("Content-Type", "text/plain"),
                ("X-Switchyard-Console", "1"),
            ],
        ),
        (
            "another site's origin",
            vec![
                ("Content-Type", "application/json"),
                ("X-Switchyard-Console", "1"),
                ("Origin", "http://evil.example"),
            ],
        ),
    ];
    for (what, headers) in refused {
        let answer = call(
            &gateway,
            "POST",
            "/ui/api/keys",
            Some(ADMIN),
            &headers,
            Some(&body),
        )
        .await;
        assert_eq!(answer.status, 403, "{what}: {}", answer.body);
        assert_eq!(answer.json()["error"]["code"], "cross_site", "{what}");
    }
    assert_eq!(keys_in(&path), 2, "nothing was written");
    // The same call from the page itself (its own origin) goes through.
    let ours = call(
        &gateway,
        "POST",
        "/ui/api/keys",
        Some(ADMIN),
        &[
            ("Content-Type", "application/json; charset=utf-8"),
            ("X-Switchyard-Console", "1"),
            ("Origin", &origin),
        ],
        Some(&body),
    )
    .await;
    assert_eq!(ours.status, 201, "{}", ours.body);
    assert_eq!(keys_in(&path), 3);
    // Reads need no such header.
    let list = call(&gateway, "GET", "/ui/api/keys", Some(ADMIN), &[], None).await;
    assert_eq!(list.status, 200);
}

fn keys_in(path: &std::path::Path) -> usize {
    let text = std::fs::read_to_string(path).unwrap();
    serde_json::from_str::<serde_json::Map<String, Value>>(&text)
        .unwrap()
        .len()
}

#[actix_web::test]
async fn a_bad_key_is_refused_naming_the_field() {
    let (gateway, path) = start("validation").await;
    let cases = [
        (
            json!({"user": "bob", "models": ["ollama/*", "a["]}),
            "models",
        ),
        (json!({"user": "bob", "rpm": -1}), "rpm"),
        (
            json!({"user": "bob", "tokens_per_day": "lots"}),
            "tokens_per_day",
        ),
        (
            json!({"user": "bob", "max_concurrent": 0}),
            "max_concurrent",
        ),
        (json!({"user": "bob", "expires": "soon"}), "expires"),
        (json!({"user": "  "}), "user"),
        (json!({"user": "bob", "colour": "blue"}), "colour"),
    ];
    for (body, field) in cases {
        let answer = change(&gateway, "/ui/api/keys", &body).await;
        assert_eq!(answer.status, 400, "{body}: {}", answer.body);
        let error = answer.json()["error"].clone();
        assert!(
            error["message"].as_str().unwrap().contains(field),
            "{body}: {error}"
        );
        if field != "colour" {
            assert_eq!(error["field"], field, "{body}: {error}");
        }
    }
    assert_eq!(keys_in(&path), 2, "nothing was written");
}

#[actix_web::test]
async fn keys_added_disabled_enabled_and_removed_count_at_once() {
    let (gateway, path) = start("round-trip").await;
    let added = change(
        &gateway,
        "/ui/api/keys",
        &json!({"user": "bob", "models": ["echo/*"], "rpm": 100, "expires": "2999-01-31", "note": "laptop"}),
    )
    .await;
    assert_eq!(added.status, 201, "{}", added.body);
    let added = added.json();
    let key = added["key"].as_str().unwrap().to_owned();
    let id = added["id"].as_str().unwrap().to_owned();
    assert!(key.starts_with("sk-") && key.len() > 40, "{key}");
    // At once, and only for its models.
    assert_eq!(chat(&gateway, &key, "echo/x").await.status, 200);
    let other = chat(&gateway, &key, "oa/gpt-4o").await;
    assert_eq!(other.status, 403, "{}", other.body);
    // The listing shows it masked, with what was asked; the file holds it.
    let list = call(&gateway, "GET", "/ui/api/keys", Some(ADMIN), &[], None).await;
    assert!(
        !list.body.contains(&key) && !list.body.contains(USER),
        "keys stay masked"
    );
    let listed = list.json()["keys"]
        .as_array()
        .unwrap()
        .iter()
        .find(|k| k["id"] == id.as_str())
        .cloned()
        .unwrap();
    assert_eq!(listed["user"], "bob");
    assert_eq!(listed["models"], json!(["echo/*"]));
    assert_eq!(listed["rpm"], 100);
    assert_eq!(listed["note"], "laptop");
    assert_eq!(listed["expires"], "2999-01-31T00:00:00Z");
    assert_eq!(listed["disabled"], false);
    assert!(std::fs::read_to_string(&path).unwrap().contains(&key));

    let disabled = change(&gateway, &format!("/ui/api/keys/{id}/disable"), &json!({})).await;
    assert_eq!(disabled.status, 200, "{}", disabled.body);
    let refused = chat(&gateway, &key, "echo/x").await;
    assert_eq!(refused.status, 401, "{}", refused.body);
    assert!(refused.body.contains("disabled"), "{}", refused.body);
    let enabled = change(&gateway, &format!("/ui/api/keys/{id}/enable"), &json!({})).await;
    assert_eq!(enabled.status, 200, "{}", enabled.body);
    assert_eq!(chat(&gateway, &key, "echo/x").await.status, 200);
    let removed = change(&gateway, &format!("/ui/api/keys/{id}/remove"), &json!({})).await;
    assert_eq!(removed.status, 200, "{}", removed.body);
    assert_eq!(chat(&gateway, &key, "echo/x").await.status, 401);
    assert!(!std::fs::read_to_string(&path).unwrap().contains(&key));
    let again = change(&gateway, &format!("/ui/api/keys/{id}/remove"), &json!({})).await;
    assert_eq!(again.status, 404, "{}", again.body);
    // The other keys were left as they were.
    assert_eq!(keys_in(&path), 2);
    assert_eq!(chat(&gateway, USER, "echo/x").await.status, 200);
}

#[actix_web::test]
async fn the_overview_shows_every_backend_and_its_upstreams() {
    let (gateway, _) = start("overview").await;
    let overview = call(&gateway, "GET", "/ui/api/overview", Some(ADMIN), &[], None).await;
    assert_eq!(overview.status, 200, "{}", overview.body);
    let overview = overview.json();
    let backends = overview["backends"].as_array().unwrap();
    let names: Vec<&str> = backends
        .iter()
        .map(|b| b["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["oa", "ol", "echo"]);
    assert_eq!(backends[0]["kind"], "openai");
    let upstream = &backends[0]["upstreams"][0];
    assert!(
        upstream["url"].as_str().unwrap().ends_with("/v1"),
        "{upstream}"
    );
    assert_eq!(upstream["state"], "healthy");
    for backend in backends {
        assert_eq!(backend["in_flight"], 0, "{backend}");
        assert_eq!(backend["queued"], 0, "{backend}");
    }
}

#[actix_web::test]
async fn usage_and_the_overview_count_known_traffic() {
    let (_, path) = start("usage-keys").await;
    let dir = path.parent().unwrap().to_owned();
    let gateway = harness::start(&format!(
        "[auth]\nkeys_file = {}\nadmin_keys = [\"{ADMIN}\"]\n[ledger]\npath = {}\n[[backends]]\nname = \"dead\"\nkind = \"openai\"\nurl = \"http://127.0.0.1:1/v1\"\n",
        json!(path.display().to_string()),
        json!(dir.join("usage.db").display().to_string()),
    ))
    .await;
    let mut tokens = 0;
    for _ in 0..2 {
        let answer = chat(&gateway, USER, "echo/x").await;
        assert_eq!(answer.status, 200, "{}", answer.body);
        tokens += answer.json()["usage"]["total_tokens"].as_u64().unwrap();
    }
    let failed = chat(&gateway, USER, "dead/x").await;
    assert_eq!(failed.status, 502, "{}", failed.body);

    // The ledger writes in small batches: ask until the rows are in.
    let mut report = Value::Null;
    for _ in 0..50 {
        let answer = call(
            &gateway,
            "GET",
            "/ui/api/usage?since=1h",
            Some(ADMIN),
            &[],
            None,
        )
        .await;
        assert_eq!(answer.status, 200, "{}", answer.body);
        report = answer.json();
        if report["total"]["requests"] == 3 {
            break;
        }
        actix_web::rt::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert_eq!(report["total"]["requests"], 3, "{report}");
    assert_eq!(report["total"]["total_tokens"], tokens, "{report}");
    assert_eq!(report["total"]["errors"], 1, "{report}");
    assert_eq!(
        report["by_user"],
        json!([{"name": "alice", "requests": 3, "prompt_tokens": report["total"]["prompt_tokens"], "completion_tokens": report["total"]["completion_tokens"], "total_tokens": tokens, "errors": 1}])
    );
    let backends: Vec<(&str, u64)> = report["by_backend"]
        .as_array()
        .unwrap()
        .iter()
        .map(|row| {
            (
                row["name"].as_str().unwrap(),
                row["requests"].as_u64().unwrap(),
            )
        })
        .collect();
    assert_eq!(backends, [("dead", 1), ("echo", 2)]);
    assert_eq!(
        report["days_by_user"]["alice"][0]["total_tokens"], tokens,
        "{report}"
    );
    let bad = call(
        &gateway,
        "GET",
        "/ui/api/usage?since=yesterdayish",
        Some(ADMIN),
        &[],
        None,
    )
    .await;
    assert_eq!(bad.status, 400, "{}", bad.body);
    assert_eq!(bad.json()["error"]["field"], "since");

    let overview = call(&gateway, "GET", "/ui/api/overview", Some(ADMIN), &[], None)
        .await
        .json();
    let backend = |name: &str| {
        overview["backends"]
            .as_array()
            .unwrap()
            .iter()
            .find(|b| b["name"] == name)
            .cloned()
            .unwrap()
    };
    assert_eq!(
        backend("echo")["last_hour"],
        json!({"requests": 2, "errors": 0})
    );
    assert_eq!(
        backend("dead")["last_hour"],
        json!({"requests": 1, "errors": 1})
    );
    assert_eq!(
        backend("oa")["last_hour"],
        json!({"requests": 0, "errors": 0})
    );
    let recent = &overview["recent_errors"][0];
    assert_eq!(recent["backend"], "dead", "{overview}");
    assert_eq!(recent["kind"], "connect", "{overview}");

    // Each key's tokens today are in the listing.
    let keys = call(&gateway, "GET", "/ui/api/keys", Some(ADMIN), &[], None)
        .await
        .json();
    let alice = keys["keys"]
        .as_array()
        .unwrap()
        .iter()
        .find(|k| k["user"] == "alice")
        .cloned()
        .unwrap();
    assert_eq!(alice["tokens_today"], tokens, "{keys}");
}

//! What each request costs, as the metrics and the usage ledger see it: requests by
//! dialect, backend, model and status (with the model label capped), latency, tokens by
//! user and model, upstream errors by kind, refusals by reason; one ledger row per
//! request, a client that leaves mid-stream recorded with what it used, and a daily
//! token budget that holds across a restart.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::{json, Value};
use switchyard::metrics::Metrics;
use switchyard::{Config, Shared};

use crate::harness::{client, mock, send, Answer, Harness};

/// A scratch folder for one test's keys file and ledger.
fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("switchyard-usage-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

const KEYS: &str = r#"{
    "sk-alice-0123456789": "alice",
    "sk-bob-0123456789": {"user": "bob", "rpm": 1},
    "sk-friend-0123456789": {"user": "friend", "models": ["oa/*"], "tokens_per_day": 20}
}"#;

/// The harness's backends plus one whose server is not there, keys from `dir`, and the
/// ledger in `dir` (or none); `model_cap` distinct models get a label of their own.
async fn start(dir: &Path, ledger: bool, model_cap: usize) -> Harness {
    let (mock_server, mock_address, mock) = mock::start("127.0.0.1:0", true).unwrap();
    actix_web::rt::spawn(mock_server);
    let keys = dir.join("keys.json");
    if !keys.exists() {
        std::fs::write(&keys, KEYS).unwrap();
    }
    let toml = format!(
        r#"
[server]
listen = "127.0.0.1:0"
[auth]
keys_file = "{keys}"
[ledger]
enabled = {ledger}
path = "{db}"
[routing]
default_backend = "echo"
[[backends]]
name = "oa"
kind = "openai"
url = "http://{mock_address}/v1"
[[backends]]
name = "ol"
kind = "ollama"
url = "http://{mock_address}"
[[backends]]
name = "dead"
kind = "openai"
url = "http://127.0.0.1:1/v1"
[[backends]]
name = "echo"
kind = "echo"
"#,
        keys = keys.display(),
        db = dir.join("ledger/usage.db").display(),
    );
    let shared = Shared::prepare(Config::from_toml(&toml).unwrap())
        .unwrap()
        .with_metrics(Metrics::with_model_cap(model_cap));
    let (server, address) = switchyard::start(shared).unwrap();
    actix_web::rt::spawn(server);
    Harness {
        base: format!("http://{address}"),
        mock,
    }
}

async fn call(gateway: &Harness, key: &str, path: &str, body: Value) -> Answer {
    send(
        client()
            .post(format!("{}{path}", gateway.base))
            .insert_header(("X-API-Key", key)),
        Some(&body.to_string()),
    )
    .await
}

fn chat(model: &str, stream: bool) -> Value {
    json!({"model": model, "stream": stream, "messages": [{"role": "user", "content": "hi"}]})
}

/// The value of the sample of `name` whose labels include every one of `labels`
/// (`key="value"` each); `None` when there is none.
fn sample(metrics: &str, name: &str, labels: &[&str]) -> Option<f64> {
    metrics.lines().find_map(|line| {
        let rest = line.strip_prefix(name)?.strip_prefix('{')?;
        let (set, value) = rest.split_once("} ")?;
        let pairs: Vec<&str> = set.split(',').collect();
        labels
            .iter()
            .all(|label| pairs.contains(label))
            .then(|| value.parse().unwrap())
    })
}

#[actix_web::test]
async fn metrics_count_requests_tokens_errors_and_refusals() {
    let dir = scratch("metrics");
    let gateway = start(&dir, false, 3).await;
    let alice = "sk-alice-0123456789";
    for _ in 0..2 {
        let answer = call(
            &gateway,
            alice,
            "/v1/chat/completions",
            chat("oa/mock-model", false),
        )
        .await;
        assert_eq!(answer.status, 200, "{}", answer.body);
    }
    let streamed = call(&gateway, alice, "/api/chat", chat("ol/mock-model", true)).await;
    assert_eq!(streamed.status, 200);
    // A third and a fourth model: the cap of three leaves the fourth as "other".
    assert_eq!(
        call(&gateway, alice, "/v1/chat/completions", chat("echo", false))
            .await
            .status,
        200
    );
    assert_eq!(
        call(&gateway, alice, "/api/chat", chat("echo/other-name", false))
            .await
            .status,
        200
    );
    // Upstream failures of three kinds.
    assert_eq!(
        call(
            &gateway,
            alice,
            "/v1/chat/completions",
            chat("oa/mock-status500", false)
        )
        .await
        .status,
        500
    );
    assert_eq!(
        call(
            &gateway,
            alice,
            "/v1/chat/completions",
            chat("oa/mock-garbage", false)
        )
        .await
        .status,
        502
    );
    assert_eq!(
        call(
            &gateway,
            alice,
            "/v1/chat/completions",
            chat("dead/x", false)
        )
        .await
        .status,
        502
    );
    // Refused before reaching a backend: a wrong key, a model outside the key's list,
    // and a key over its rpm.
    assert_eq!(
        call(
            &gateway,
            "sk-wrong",
            "/v1/chat/completions",
            chat("oa/mock-model", false)
        )
        .await
        .status,
        401
    );
    let friend = "sk-friend-0123456789";
    assert_eq!(
        call(&gateway, friend, "/api/chat", chat("ol/mock-model", false))
            .await
            .status,
        403
    );
    let bob = "sk-bob-0123456789";
    assert_eq!(
        call(&gateway, bob, "/v1/chat/completions", chat("echo", false))
            .await
            .status,
        200
    );
    let refused = call(&gateway, bob, "/v1/chat/completions", chat("echo", false)).await;
    assert_eq!(refused.status, 429);
    // A body that does not parse: no model, no backend.
    let broken = send(
        client()
            .post(format!("{}/api/chat", gateway.base))
            .insert_header(("X-API-Key", alice)),
        Some("{not json"),
    )
    .await;
    assert_eq!(broken.status, 400);
    // Embeddings count too.
    let embedded = call(
        &gateway,
        alice,
        "/v1/embeddings",
        json!({"model": "oa/mock-model", "input": ["a", "b"]}),
    )
    .await;
    assert_eq!(embedded.status, 200, "{}", embedded.body);

    let metrics = gateway.get("/metrics").await.body;
    let requests = |labels: &[&str]| sample(&metrics, "switchyard_requests_total", labels);
    assert_eq!(
        requests(&[
            r#"dialect="openai""#,
            r#"backend="oa""#,
            r#"model="oa/mock-model""#,
            r#"status="200""#
        ]),
        Some(3.0),
        "{metrics}"
    );
    assert_eq!(
        requests(&[
            r#"dialect="ollama""#,
            r#"backend="ol""#,
            r#"model="ol/mock-model""#,
            r#"status="200""#
        ]),
        Some(1.0)
    );
    assert_eq!(requests(&[r#"model="echo""#, r#"status="200""#]), Some(2.0));
    assert_eq!(
        requests(&[
            r#"dialect="ollama""#,
            r#"backend="echo""#,
            r#"model="other""#
        ]),
        Some(1.0),
        "{metrics}"
    );
    assert_eq!(requests(&[r#"model="echo/other-name""#]), None);
    assert_eq!(requests(&[r#"backend="oa""#, r#"status="500""#]), Some(1.0));
    assert_eq!(
        requests(&[r#"backend="dead""#, r#"status="502""#]),
        Some(1.0)
    );
    assert_eq!(
        requests(&[r#"backend="none""#, r#"status="401""#, r#"model="""#]),
        Some(1.0),
        "{metrics}"
    );
    assert_eq!(
        requests(&[
            r#"dialect="ollama""#,
            r#"backend="none""#,
            r#"status="403""#
        ]),
        Some(1.0)
    );
    assert_eq!(
        requests(&[
            r#"dialect="ollama""#,
            r#"backend="none""#,
            r#"status="400""#
        ]),
        Some(1.0)
    );
    assert_eq!(
        requests(&[r#"backend="none""#, r#"status="429""#]),
        Some(1.0)
    );

    let tokens = |labels: &[&str]| sample(&metrics, "switchyard_tokens_total", labels);
    let prompt = mock::PROMPT_TOKENS as f64;
    assert_eq!(
        tokens(&[
            r#"user="alice""#,
            r#"backend="oa""#,
            r#"model="oa/mock-model""#,
            r#"kind="prompt""#
        ]),
        Some(2.0 * prompt + 2.0),
        "two chats and an embedding of two inputs: {metrics}"
    );
    assert_eq!(
        tokens(&[
            r#"user="alice""#,
            r#"backend="ol""#,
            r#"model="ol/mock-model""#,
            r#"kind="completion""#
        ]),
        Some(5.0)
    );
    let errors = |labels: &[&str]| sample(&metrics, "switchyard_upstream_errors_total", labels);
    assert_eq!(
        errors(&[r#"backend="oa""#, r#"kind="status""#]),
        Some(1.0),
        "{metrics}"
    );
    assert_eq!(errors(&[r#"backend="oa""#, r#"kind="garbage""#]), Some(1.0));
    assert_eq!(
        errors(&[r#"backend="dead""#, r#"kind="connect""#]),
        Some(1.0)
    );
    assert_eq!(
        sample(
            &metrics,
            "switchyard_rejections_total",
            &[r#"user="bob""#, r#"reason="rpm""#]
        ),
        Some(1.0)
    );
    let latency = |labels: &[&str]| {
        sample(
            &metrics,
            "switchyard_request_duration_seconds_count",
            labels,
        )
    };
    assert_eq!(
        latency(&[r#"dialect="openai""#, r#"backend="oa""#]),
        Some(5.0),
        "{metrics}"
    );
    let first = |labels: &[&str]| {
        sample(
            &metrics,
            "switchyard_time_to_first_token_seconds_count",
            labels,
        )
    };
    assert_eq!(
        first(&[r#"dialect="ollama""#, r#"backend="ol""#]),
        Some(1.0)
    );
    assert_eq!(
        first(&[r#"dialect="openai""#, r#"backend="oa""#]),
        None,
        "whole answers have none"
    );
    // Every HTTP answer, by route, under its own name.
    assert_eq!(
        sample(
            &metrics,
            "switchyard_http_requests_total",
            &[r#"route="/v1/chat/completions""#, r#"status="200""#]
        ),
        Some(4.0)
    );
    assert!(!metrics.contains("sk-"), "keys never appear");
    assert!(
        !dir.join("ledger").exists(),
        "ledger.enabled = false keeps none"
    );
}

/// The ledger's rows as (user, key_id, dialect, model, backend, upstream_model,
/// prompt, completion, status, ttft present, client_left), oldest first, once `count`
/// are there.
type Row = (
    String,
    Option<String>,
    String,
    String,
    Option<String>,
    Option<String>,
    i64,
    i64,
    i64,
    bool,
    bool,
);

async fn rows(dir: &Path, count: usize) -> Vec<Row> {
    let path = dir.join("ledger/usage.db");
    let mut found = Vec::new();
    for _ in 0..100 {
        if path.exists() {
            let connection = rusqlite::Connection::open(&path).unwrap();
            let mut statement = connection
                .prepare("SELECT user, key_id, dialect, model, backend, upstream_model, prompt_tokens, completion_tokens, status, ttft_ms IS NOT NULL, client_left FROM requests ORDER BY id")
                .unwrap();
            found = statement
                .query_map([], |r| {
                    Ok((
                        r.get(0)?,
                        r.get(1)?,
                        r.get(2)?,
                        r.get(3)?,
                        r.get(4)?,
                        r.get(5)?,
                        r.get(6)?,
                        r.get(7)?,
                        r.get(8)?,
                        r.get(9)?,
                        r.get(10)?,
                    ))
                })
                .unwrap()
                .collect::<Result<Vec<Row>, _>>()
                .unwrap();
            if found.len() >= count {
                return found;
            }
        }
        actix_web::rt::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("expected {count} ledger rows, found {found:?}");
}

#[actix_web::test]
async fn the_ledger_has_a_row_per_request_and_a_client_that_left_keeps_its_tokens() {
    let dir = scratch("rows");
    let gateway = start(&dir, true, 500).await;
    let alice = "sk-alice-0123456789";
    assert_eq!(
        call(
            &gateway,
            alice,
            "/v1/chat/completions",
            chat("oa/mock-model", false)
        )
        .await
        .status,
        200
    );
    assert_eq!(
        call(&gateway, alice, "/api/chat", chat("oa/mock-model", true))
            .await
            .status,
        200
    );
    assert_eq!(
        call(
            &gateway,
            alice,
            "/api/embed",
            json!({"model": "ol/mock-model", "input": ["a", "b", "c"]})
        )
        .await
        .status,
        200
    );
    assert_eq!(
        call(
            &gateway,
            "sk-bob-0123456789",
            "/v1/chat/completions",
            chat("ol/mock-status404", false)
        )
        .await
        .status,
        404
    );
    // A client that reads two pieces of a slow stream, then leaves.
    let mut response = client()
        .post(format!("{}/v1/chat/completions", gateway.base))
        .insert_header(("X-API-Key", alice))
        .insert_header(("content-type", "application/json"))
        .send_body(chat("oa/mock-slow", true).to_string())
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    use futures::StreamExt;
    let mut seen = String::new();
    while seen.matches("\"content\":\"s").count() < 2 {
        let chunk = response.next().await.expect("a chunk").unwrap();
        seen.push_str(std::str::from_utf8(&chunk).unwrap());
    }
    drop(response);

    let rows = rows(&dir, 5).await;
    let owned = |s: &str| Some(s.to_owned());
    let (user, key_id, dialect, model, backend, upstream, prompt, completion, status, ttft, left) =
        rows[0].clone();
    assert_eq!(
        (user.as_str(), dialect.as_str(), model.as_str()),
        ("alice", "openai", "oa/mock-model")
    );
    assert_eq!((backend, upstream), (owned("oa"), owned("mock-model")));
    assert_eq!(
        (prompt, completion, status, ttft, left),
        (7, 5, 200, false, false)
    );
    let key_id = key_id.expect("a key id");
    assert!(
        !key_id.contains("alice-0123456789"),
        "the id is not the key"
    );
    // The stream crossed dialects and reports its first event.
    assert_eq!(
        (rows[1].2.as_str(), rows[1].6, rows[1].7, rows[1].9),
        ("ollama", 7, 5, true)
    );
    // Embeddings: tokens of three inputs.
    assert_eq!(
        (
            rows[2].3.as_str(),
            rows[2].4.as_deref(),
            rows[2].6,
            rows[2].8
        ),
        ("ol/mock-model", Some("ol"), 3, 200)
    );
    assert_eq!((rows[3].0.as_str(), rows[3].8), ("bob", 404));
    // The client that left: 499, with the pieces it was sent counted as its tokens.
    let left = &rows[4];
    assert_eq!(
        (left.3.as_str(), left.8, left.10),
        ("oa/mock-slow", 499, true)
    );
    assert!(
        (2..50).contains(&left.7),
        "pieces relayed before it left: {left:?}"
    );
    assert!(rows
        .iter()
        .all(|row| row.1.as_deref() != Some("sk-alice-0123456789")));

    // A client that gives up on a whole answer before it comes.
    let impatient = awc::Client::builder()
        .timeout(Duration::from_millis(50))
        .finish()
        .post(format!("{}/v1/chat/completions", gateway.base))
        .insert_header(("X-API-Key", alice))
        .insert_header(("content-type", "application/json"))
        .send_body(chat("oa/mock-delay", false).to_string())
        .await;
    assert!(impatient.is_err());
    let all = self::rows(&dir, 6).await;
    let gone = &all[5];
    assert_eq!(
        (gone.3.as_str(), gone.4.as_deref(), gone.7, gone.8, gone.10),
        ("oa/mock-delay", Some("oa"), 0, 499, true)
    );
}

#[actix_web::test]
async fn a_daily_token_budget_refuses_and_holds_across_a_restart() {
    let dir = scratch("daily");
    let gateway = start(&dir, true, 500).await;
    let friend = "sk-friend-0123456789";
    // 12 tokens an answer: 12, then 24 of 20 (admitted while under), then refused.
    for (round, remaining) in [(0, "20"), (1, "8")] {
        let answer = call(
            &gateway,
            friend,
            "/v1/chat/completions",
            chat("oa/mock-model", false),
        )
        .await;
        assert_eq!(answer.status, 200, "round {round}: {}", answer.body);
        assert_eq!(
            answer.headers.get("x-ratelimit-limit-tokens").unwrap(),
            "20"
        );
        assert_eq!(
            answer.headers.get("x-ratelimit-remaining-tokens").unwrap(),
            remaining
        );
    }
    let check_refusal = |answer: Answer, path: &str| {
        assert_eq!(answer.status, 429, "{}", answer.body);
        let retry: u64 = answer
            .headers
            .get("retry-after")
            .unwrap()
            .to_str()
            .unwrap()
            .parse()
            .unwrap();
        assert!((1..=86_400).contains(&retry), "until midnight UTC: {retry}");
        assert_eq!(
            answer.headers.get("x-ratelimit-remaining-tokens").unwrap(),
            "0"
        );
        assert_eq!(
            answer.headers.get("x-ratelimit-limit-tokens").unwrap(),
            "20"
        );
        let body = answer.json();
        let message = if path.starts_with("/v1") {
            body["error"]["message"].as_str().unwrap().to_owned()
        } else {
            body["error"].as_str().unwrap().to_owned()
        };
        assert!(message.contains("today"), "{message}");
    };
    check_refusal(
        call(
            &gateway,
            friend,
            "/v1/chat/completions",
            chat("oa/mock-model", false),
        )
        .await,
        "/v1",
    );
    check_refusal(
        call(&gateway, friend, "/api/chat", chat("oa/mock-model", false)).await,
        "/api",
    );
    let metrics = gateway.get("/metrics").await.body;
    assert_eq!(
        sample(
            &metrics,
            "switchyard_rejections_total",
            &[r#"user="friend""#, r#"reason="tokens_per_day""#]
        ),
        Some(2.0),
        "{metrics}"
    );
    assert_eq!(
        gateway.mock.requests_for("mock-model").len(),
        2,
        "refusals never reach the upstream"
    );
    // Two answers and two refusals in the ledger; a gateway started afresh on it
    // refuses at once.
    rows(&dir, 4).await;
    let restarted = start(&dir, true, 500).await;
    check_refusal(
        call(
            &restarted,
            friend,
            "/v1/chat/completions",
            chat("oa/mock-model", false),
        )
        .await,
        "/v1",
    );
    assert!(restarted.mock.requests_for("mock-model").is_empty());
    // Other keys are not held back.
    let alice = call(
        &restarted,
        "sk-alice-0123456789",
        "/v1/chat/completions",
        chat("oa/mock-model", false),
    )
    .await;
    assert_eq!(alice.status, 200);
}

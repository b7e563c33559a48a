//! Starts the gateway in-process on 127.0.0.1:0 in front of the mock upstream (a real
//! HTTP server on 127.0.0.1), and speaks plain HTTP to it.

use std::sync::Arc;
use std::time::Duration;

use serde_json::Value;
use switchyard::{Config, Shared};

#[allow(dead_code)]
#[path = "../../src/bin/mock-upstream/mock.rs"]
pub mod mock;

pub use mock::MockState;

/// A running gateway and its mock upstream.
pub struct Harness {
    pub base: String,
    pub mock: Arc<MockState>,
}

/// Backends `oa` (OpenAI-compatible) and `ol` (Ollama) on the mock, and `echo` as the
/// default; `extra` is appended to the config (more backends, [auth] ...).
pub async fn start(extra: &str) -> Harness {
    start_with(extra, "").await
}

/// As [`start`], with `timeouts` added to both mock backends.
pub async fn start_with(extra: &str, timeouts: &str) -> Harness {
    start_config(&format!(
        r#"
[server]
listen = "127.0.0.1:0"
body_limit_bytes = 65536
shutdown_timeout_secs = 1
[routing]
default_backend = "echo"
[[backends]]
name = "oa"
kind = "openai"
url = "{{mock}}/v1"
{timeouts}
[[backends]]
name = "ol"
kind = "ollama"
url = "{{mock}}"
{timeouts}
[[backends]]
name = "echo"
kind = "echo"
{extra}
"#
    ))
    .await
}

/// Starts a gateway on the whole config `template`, where `{mock}` stands for the mock
/// upstream's root URL.
pub async fn start_config(template: &str) -> Harness {
    let (mock_server, mock_address, mock) = mock::start("127.0.0.1:0", true).expect("mock starts");
    actix_web::rt::spawn(mock_server);
    let mock_base = format!("http://{mock_address}");
    let toml = template.replace("{mock}", &mock_base);
    let mut config = Config::from_toml(&toml).expect("test config is valid");
    // No usage ledger in the repository: a test that wants one names its own path.
    if !toml.contains("[ledger]") {
        config.ledger.enabled = false;
    }
    let shared = Shared::prepare(config).expect("test config prepares");
    let (server, address) = switchyard::start(shared).expect("gateway starts");
    actix_web::rt::spawn(server);
    Harness {
        base: format!("http://{address}"),
        mock,
    }
}

/// An answer, read whole.
#[derive(Debug)]
pub struct Answer {
    pub status: u16,
    pub content_type: String,
    pub headers: awc::http::header::HeaderMap,
    pub body: String,
}

impl Answer {
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.body))
    }

    /// The `data:` payloads of an SSE body.
    pub fn sse(&self) -> Vec<String> {
        self.body
            .split("\n\n")
            .filter(|event| !event.is_empty())
            .map(|event| {
                event
                    .strip_prefix("data: ")
                    .unwrap_or_else(|| panic!("not an SSE data event: {event:?}"))
                    .to_owned()
            })
            .collect()
    }

    /// The lines of an NDJSON body, parsed.
    pub fn ndjson(&self) -> Vec<Value> {
        assert!(
            self.body.ends_with('\n'),
            "NDJSON ends with a newline: {:?}",
            self.body
        );
        self.body
            .split('\n')
            .filter(|line| !line.is_empty())
            .map(|line| {
                serde_json::from_str(line).unwrap_or_else(|e| panic!("line not JSON ({e}): {line}"))
            })
            .collect()
    }
}

pub fn client() -> awc::Client {
    awc::Client::builder()
        .timeout(Duration::from_secs(30))
        .finish()
}

/// Sends a request and reads the whole answer.
pub async fn send(request: awc::ClientRequest, body: Option<&str>) -> Answer {
    let sent = match body {
        Some(body) => {
            request
                .insert_header(("content-type", "application/json"))
                .send_body(body.to_owned())
                .await
        }
        None => request.send().await,
    };
    let mut response = sent.expect("the gateway answers");
    let bytes = response
        .body()
        .limit(64 * 1024 * 1024)
        .await
        .expect("the body is read");
    Answer {
        status: response.status().as_u16(),
        content_type: response
            .headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_owned(),
        headers: response.headers().clone(),
        body: String::from_utf8(bytes.to_vec()).expect("UTF-8 body"),
    }
}

impl Harness {
    pub async fn post(&self, path: &str, body: &Value) -> Answer {
        send(
            client().post(format!("{}{path}", self.base)),
            Some(&body.to_string()),
        )
        .await
    }

    pub async fn post_raw(&self, path: &str, body: &str) -> Answer {
        send(client().post(format!("{}{path}", self.base)), Some(body)).await
    }

    pub async fn get(&self, path: &str) -> Answer {
        send(client().get(format!("{}{path}", self.base)), None).await
    }

    /// Waits up to 4 s for the mock to have seen `count` upstream streams dropped
    /// before their end in all, then asserts it has: a client that left cancels its
    /// upstream request at once.
    pub async fn until_cancelled(&self, count: usize, what: &str) {
        let cancelled = || {
            self.mock
                .cancelled
                .load(std::sync::atomic::Ordering::SeqCst)
        };
        let mut waited = Duration::ZERO;
        while cancelled() < count && waited < Duration::from_secs(4) {
            actix_web::rt::time::sleep(Duration::from_millis(50)).await;
            waited += Duration::from_millis(50);
        }
        assert_eq!(cancelled(), count, "{what}");
    }
}

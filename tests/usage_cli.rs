//! `switchyard usage` against the ledger a real gateway process wrote: totals after known
//! traffic, while it runs and after it stopped, a daily token budget that a restarted
//! gateway still enforces, and the ledger in its default place under the working
//! directory.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use serde_json::Value;

const GATEWAY: &str = env!("CARGO_BIN_EXE_switchyard");
const MOCK: &str = env!("CARGO_BIN_EXE_mock-upstream");

/// Kills the child when the test ends, however it ends.
struct Running(Child);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!(
        "switchyard-usage-cli-{}-{name}",
        std::process::id()
    ));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn command(dir: &Path) -> Command {
    let mut command = Command::new(GATEWAY);
    command
        .current_dir(dir)
        .env_remove("SWITCHYARD_CONFIG")
        .env_remove("SWITCHYARD__LEDGER__PATH")
        .env("RUST_LOG", "info");
    command
}

/// Starts the gateway and waits until it listens.
fn serve(dir: &Path, config: &Path) -> Running {
    let mut child = command(dir)
        .arg("--config")
        .arg(config)
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let (sender, receiver) = mpsc::channel();
    std::thread::spawn(move || {
        let mut sent = false;
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if !sent && line.contains("listening on") {
                let _ = sender.send(());
                sent = true;
            }
        }
    });
    receiver
        .recv_timeout(Duration::from_secs(20))
        .expect("the gateway listens");
    Running(child)
}

/// SIGTERM, then the exit status.
fn stop(mut gateway: Running) -> Option<i32> {
    let pid = gateway.0.id().to_string();
    assert!(Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap()
        .success());
    gateway.0.wait().unwrap().code()
}

/// A chat with `key`; the answer's status.
fn chat(port: u16, path: &str, key: &str) -> u16 {
    let body =
        r#"{"model":"oa/mock-model","stream":false,"messages":[{"role":"user","content":"hi"}]}"#;
    let mut stream = TcpStream::connect(("127.0.0.1", port)).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    write!(
        stream,
        "POST {path} HTTP/1.1\r\nHost: localhost\r\nX-API-Key: {key}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut answer = String::new();
    stream.read_to_string(&mut answer).unwrap();
    answer.split(' ').nth(1).unwrap().parse().unwrap()
}

fn usage(dir: &Path, config: &Path, args: &[&str]) -> Output {
    command(dir)
        .arg("usage")
        .arg("--config")
        .arg(config)
        .args(args)
        .output()
        .unwrap()
}

fn usage_json(dir: &Path, config: &Path, args: &[&str]) -> Value {
    let output = usage(dir, config, &[args, &["--json"]].concat());
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_slice(&output.stdout).unwrap()
}

#[test]
fn usage_reports_what_a_gateway_recorded_and_a_restart_keeps_the_daily_budget() {
    let dir = scratch("restart");
    let mut mock = Command::new(MOCK).stdout(Stdio::piped()).spawn().unwrap();
    let mut first = String::new();
    BufReader::new(mock.stdout.take().unwrap())
        .read_line(&mut first)
        .unwrap();
    let _mock = Running(mock);
    let mock_url = first.trim().rsplit(' ').next().unwrap().to_owned();
    std::fs::write(
        dir.join("keys.json"),
        r#"{"sk-alice-0123456789": "alice", "sk-friend-0123456789": {"user": "friend", "models": ["oa/*"], "tokens_per_day": 20}}"#,
    )
    .unwrap();
    let port = free_port();
    let config = dir.join("switchyard.toml");
    std::fs::write(
        &config,
        format!("[server]\nlisten = \"127.0.0.1:{port}\"\n[auth]\nkeys_file = \"keys.json\"\n[[backends]]\nname = \"oa\"\nkind = \"openai\"\nurl = \"{mock_url}/v1\"\n"),
    )
    .unwrap();

    let gateway = serve(&dir, &config);
    let (alice, friend) = ("sk-alice-0123456789", "sk-friend-0123456789");
    assert_eq!(chat(port, "/v1/chat/completions", alice), 200);
    assert_eq!(chat(port, "/api/chat", alice), 200);
    assert_eq!(chat(port, "/v1/chat/completions", friend), 200);
    assert_eq!(chat(port, "/v1/chat/completions", friend), 200);
    // 24 of its 20 tokens a day are spent.
    assert_eq!(chat(port, "/v1/chat/completions", friend), 429);
    // The ledger is in its default place, under the working directory.
    assert!(dir.join("data/switchyard.db").exists());
    // Readable while the gateway runs; the writer catches up within moments.
    let mut running = Value::Null;
    for _ in 0..100 {
        running = usage_json(&dir, &config, &[]);
        if running["total"]["requests"] == 5 {
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(running["total"]["requests"], 5, "{running}");
    assert_eq!(stop(gateway), Some(0));

    let totals = usage_json(&dir, &config, &["--since", "1d"]);
    assert_eq!(totals["total"]["prompt_tokens"], 28, "{totals}");
    assert_eq!(totals["total"]["completion_tokens"], 20);
    assert_eq!(totals["total"]["total_tokens"], 48);
    assert_eq!(totals["total"]["errors"], 1);
    let by_user = usage(&dir, &config, &["--by", "user"]);
    assert!(by_user.status.success());
    let table = String::from_utf8(by_user.stdout).unwrap();
    let line = |name: &str| -> Vec<String> {
        table
            .lines()
            .find(|line| line.starts_with(name))
            .unwrap_or_else(|| panic!("no {name} line: {table}"))
            .split_whitespace()
            .map(str::to_owned)
            .collect()
    };
    assert_eq!(
        line("alice"),
        ["alice", "2", "14", "10", "24", "0"],
        "{table}"
    );
    assert_eq!(
        line("friend"),
        ["friend", "3", "14", "10", "24", "1"],
        "{table}"
    );
    assert_eq!(
        line("total"),
        ["total", "5", "28", "20", "48", "1"],
        "{table}"
    );
    let nothing = usage_json(&dir, &config, &["--since", "2099-01-01"]);
    assert_eq!(nothing["total"]["requests"], 0);

    // Started again: the day's tokens come back from the ledger.
    let gateway = serve(&dir, &config);
    assert_eq!(chat(port, "/v1/chat/completions", friend), 429);
    assert_eq!(chat(port, "/v1/chat/completions", alice), 200);
    assert_eq!(stop(gateway), Some(0));
    let alice_only = usage_json(&dir, &config, &["--user", "alice", "--by", "model"]);
    assert_eq!(alice_only["rows"][0]["model"], "oa/mock-model");
    assert_eq!(alice_only["rows"][0]["requests"], 3, "{alice_only}");
    let friend_only = usage_json(&dir, &config, &["--user", "friend"]);
    assert_eq!(friend_only["total"]["requests"], 4);
    assert_eq!(friend_only["total"]["errors"], 2);

    let check = command(&dir)
        .arg("check")
        .arg("--config")
        .arg(&config)
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&check.stdout).contains("usage ledger: data/switchyard.db"));
    let bad = usage(&dir, &config, &["--since", "yesterday"]);
    assert_eq!(bad.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&bad.stderr).contains("--since"));
    std::fs::write(&config, "[ledger]\nenabled = false\n").unwrap();
    let off = usage(&dir, &config, &[]);
    assert_eq!(off.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&off.stderr).contains("ledger.enabled = false"));
    std::fs::remove_dir_all(&dir).unwrap();
}

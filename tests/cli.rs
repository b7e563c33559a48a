//! The binary as a user runs it: built-in defaults, `check`, environment overrides,
//! the anonymous-serving rule and graceful shutdown.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc;
use std::time::Duration;

const GATEWAY: &str = env!("CARGO_BIN_EXE_switchyard");
const MOCK: &str = env!("CARGO_BIN_EXE_mock-upstream");

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A scratch directory with no `config/switchyard.toml`, so defaults apply.
fn scratch(name: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("switchyard-cli-{}-{name}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn gateway(dir: &std::path::Path) -> Command {
    let mut command = Command::new(GATEWAY);
    command
        .current_dir(dir)
        .env_remove("SWITCHYARD_CONFIG")
        .env("RUST_LOG", "info");
    command
}

/// Kills the child when the test ends, however it ends.
struct Running(Child);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Writes a config file into the test's directory.
fn write_config(dir: &std::path::Path, toml: &str) -> std::path::PathBuf {
    let path = dir.join("switchyard.toml");
    std::fs::write(&path, toml).unwrap();
    path
}

/// Runs `switchyard check --config PATH` with extra environment variables.
fn check(dir: &std::path::Path, path: &std::path::Path, env: &[(&str, &str)]) -> Output {
    gateway(dir)
        .args(["check", "--config"])
        .arg(path)
        .envs(env.iter().copied())
        .output()
        .unwrap()
}

/// Waits for a line containing `needle` on the child's stderr, then keeps draining it.
fn wait_for_line(child: &mut Child, needle: &str) -> String {
    let stderr = child.stderr.take().unwrap();
    let (sender, receiver) = mpsc::channel();
    let needle = needle.to_owned();
    std::thread::spawn(move || {
        let mut sent = false;
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if !sent && line.contains(&needle) {
                let _ = sender.send(line);
                sent = true;
            }
        }
    });
    receiver
        .recv_timeout(Duration::from_secs(20))
        .expect("the expected log line")
}

/// A plain HTTP/1.1 exchange with `Connection: close`; returns the raw answer.
fn http(port: u16, method: &str, path: &str, body: &str) -> String {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    write!(
        stream,
        "{method} {path} HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut answer = String::new();
    stream.read_to_string(&mut answer).unwrap();
    answer
}

#[test]
fn serves_echo_on_builtin_defaults_with_env_override() {
    let dir = scratch("defaults");
    let port = free_port();
    let mut child = gateway(&dir)
        .env("SWITCHYARD__SERVER__LISTEN", format!("127.0.0.1:{port}"))
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let line = wait_for_line(&mut child, "listening on");
    let _running = Running(child);
    assert!(
        line.contains(&format!("listening on http://127.0.0.1:{port}")),
        "{line}"
    );
    let answer = http(
        port,
        "POST",
        "/api/chat",
        r#"{"model":"echo","messages":[{"role":"user","content":"hi there"}]}"#,
    );
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(answer.contains("\"content\":\"hi \""), "{answer}");
    assert!(answer.contains("\"done\":true"));
    let answer = http(port, "GET", "/", "");
    assert!(answer.ends_with("Ollama is running"));
}

#[test]
fn check_prints_the_routing_of_a_valid_config() {
    let dir = scratch("check");
    let path = write_config(
        &dir,
        "[routing]\ndefault_backend = \"local\"\n[[backends]]\nname = \"ollama\"\nkind = \"ollama\"\nurl = \"http://127.0.0.1:11434\"\n[[backends]]\nname = \"local\"\nkind = \"openai\"\nurl = \"http://127.0.0.1:5857/v1\"\n",
    );
    let output = check(&dir, &path, &[]);
    assert!(output.status.success());
    let text = String::from_utf8(output.stdout).unwrap();
    assert!(text.contains("ollama/MODEL -> backend ollama"), "{text}");
    assert!(text.contains("any other name -> backend local"), "{text}");
    // And with no config at all: the built-in echo backend.
    let output = gateway(&dir).arg("check").output().unwrap();
    assert!(output.status.success());
    assert!(String::from_utf8(output.stdout)
        .unwrap()
        .contains("built-in defaults"));
}

#[test]
fn environment_overrides_reach_list_entries() {
    let dir = scratch("env");
    let path = write_config(
        &dir,
        "[[backends]]\nname = \"ollama\"\nkind = \"ollama\"\nurl = \"http://127.0.0.1:11434\"\n",
    );
    let output = check(
        &dir,
        &path,
        &[
            ("SWITCHYARD__BACKENDS__0__URL", "http://127.0.0.1:22222"),
            ("SWITCHYARD__SERVER__LISTEN", "127.0.0.1:9999"),
        ],
    );
    let text = String::from_utf8(output.stdout).unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(text.contains("http://127.0.0.1:22222"), "{text}");
    assert!(text.contains("listen: http://127.0.0.1:9999"), "{text}");
    let output = check(&dir, &path, &[("SWITCHYARD__BACKENDS__0__URLL", "x")]);
    assert_eq!(output.status.code(), Some(1));
    assert!(String::from_utf8(output.stderr)
        .unwrap()
        .contains("backends[0].urll"));
}

#[test]
fn check_names_the_offending_key_and_fails() {
    let dir = scratch("bad");
    let path = write_config(
        &dir,
        "[[backends]]\nname = \"o\"\nkind = \"ollama\"\nurl = \"localhost:11434\"\n",
    );
    let output = check(&dir, &path, &[]);
    assert_eq!(output.status.code(), Some(1));
    let text = String::from_utf8(output.stderr).unwrap();
    assert_eq!(text.trim().lines().count(), 1, "one clear line: {text}");
    assert!(text.contains("backends[0].url"), "{text}");
    // serve does the same check first.
    let output = gateway(&dir).arg("--config").arg(&path).output().unwrap();
    assert_eq!(output.status.code(), Some(1));
    // An unknown key is named too.
    let path = write_config(&dir, "[server]\nlisten = \"127.0.0.1:1\"\nlisen = 2\n");
    let output = check(&dir, &path, &[]);
    assert_eq!(output.status.code(), Some(1));
    assert!(String::from_utf8(output.stderr).unwrap().contains("lisen"));
}

#[test]
fn check_prints_what_provider_presets_resolve_to() {
    let dir = scratch("presets");
    let path = write_config(
        &dir,
        "[[backends]]\nname = \"groq\"\nkind = \"openai\"\npreset = \"groq\"\nresponse_timeout_secs = 30\n[[backends]]\nname = \"lm\"\nkind = \"openai\"\npreset = \"lmstudio\"\nurl = \"http://127.0.0.1:5999/v1\"\n[[backends]]\nname = \"pair\"\nkind = \"openai\"\npreset = \"openai\"\napi_key_envs = [\"SWITCHYARD_CLI_KEY_1\", \"SWITCHYARD_CLI_KEY_2\"]\n",
    );
    let env = [
        ("GROQ_API_KEY", "sk-groq-secret"),
        ("SWITCHYARD_CLI_KEY_1", "sk-one-secret"),
        ("SWITCHYARD_CLI_KEY_2", "sk-two-secret"),
    ];
    let output = check(&dir, &path, &env);
    let text = String::from_utf8(output.stdout).unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(text.contains("https://api.groq.com/openai/v1"), "{text}");
    assert!(text.contains("$GROQ_API_KEY"), "{text}");
    assert!(text.contains("response 30s"), "{text}");
    // An overriding url wins over the preset's.
    assert!(text.contains("http://127.0.0.1:5999/v1"), "{text}");
    assert!(!text.contains("127.0.0.1:1234"), "{text}");
    assert!(text.contains("https://api.openai.com/v1"), "{text}");
    assert!(
        text.contains("$SWITCHYARD_CLI_KEY_1, $SWITCHYARD_CLI_KEY_2"),
        "{text}"
    );
    assert!(!text.contains("secret"), "names, never values: {text}");
    // A hosted preset's key variable unset: the same error as an unset api_key_env.
    let output = gateway(&dir)
        .args(["check", "--config"])
        .arg(&path)
        .env_remove("GROQ_API_KEY")
        .envs(env[1..].iter().copied())
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(1));
    let text = String::from_utf8(output.stderr).unwrap();
    assert!(text.contains("backends[0].api_key_env"), "{text}");
    assert!(text.contains("$GROQ_API_KEY"), "{text}");
    // An unknown preset is named, with the known ones.
    let output = check(
        &dir,
        &path,
        &[
            env[0],
            env[1],
            env[2],
            ("SWITCHYARD__BACKENDS__1__PRESET", "lmstudo"),
        ],
    );
    assert_eq!(output.status.code(), Some(1));
    let text = String::from_utf8(output.stderr).unwrap();
    assert!(text.contains("backends[1].preset"), "{text}");
    assert!(text.contains("\"lmstudio\""), "{text}");
    assert!(text.contains("\"openrouter\""), "{text}");
}

#[test]
fn api_key_env_and_api_key_envs_together_are_refused() {
    let dir = scratch("both-keys");
    let path = write_config(
        &dir,
        "[[backends]]\nname = \"o\"\nkind = \"openai\"\nurl = \"http://127.0.0.1:1/v1\"\napi_key_env = \"SWITCHYARD_CLI_BOTH_A\"\napi_key_envs = [\"SWITCHYARD_CLI_BOTH_B\"]\n",
    );
    let output = check(
        &dir,
        &path,
        &[
            ("SWITCHYARD_CLI_BOTH_A", "a"),
            ("SWITCHYARD_CLI_BOTH_B", "b"),
        ],
    );
    assert_eq!(output.status.code(), Some(1));
    assert!(String::from_utf8(output.stderr)
        .unwrap()
        .contains("backends[0].api_key_envs"));
}

#[test]
fn refuses_anonymous_serving_off_loopback() {
    let dir = scratch("anon");
    let output = gateway(&dir)
        .env("SWITCHYARD__SERVER__LISTEN", "0.0.0.0:0")
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(1));
    assert!(String::from_utf8(output.stderr)
        .unwrap()
        .contains("allow_anonymous"));
}

#[test]
fn sigterm_lets_an_in_flight_stream_finish_then_exits_zero() {
    graceful_stop("-TERM");
}

#[test]
fn ctrl_c_lets_an_in_flight_stream_finish_then_exits_zero() {
    graceful_stop("-INT");
}

fn graceful_stop(signal: &str) {
    let dir = scratch(&format!("shutdown{signal}"));
    let mut mock = Command::new(MOCK).stdout(Stdio::piped()).spawn().unwrap();
    let mut first = String::new();
    BufReader::new(mock.stdout.take().unwrap())
        .read_line(&mut first)
        .unwrap();
    let _mock = Running(mock);
    let mock_url = first.trim().rsplit(' ').next().unwrap().to_owned();
    let config = write_config(
        &dir,
        &format!("[server]\nlisten = \"127.0.0.1:{}\"\n[[backends]]\nname = \"ol\"\nkind = \"ollama\"\nurl = \"{mock_url}\"\n", free_port()),
    );
    let mut child = gateway(&dir)
        .arg("--config")
        .arg(&config)
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let line = wait_for_line(&mut child, "listening on");
    let port: u16 = line.rsplit(':').next().unwrap().trim().parse().unwrap();
    // A five-second stream; SIGTERM arrives while it runs.
    let reader = std::thread::spawn(move || {
        http(
            port,
            "POST",
            "/api/chat",
            r#"{"model":"ol/mock-slow","messages":[{"role":"user","content":"x"}]}"#,
        )
    });
    std::thread::sleep(Duration::from_millis(700));
    let pid = child.id().to_string();
    assert!(Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap()
        .success());
    let answer = reader.join().unwrap();
    assert!(
        answer.contains("\"done\":true"),
        "the in-flight stream finished: {answer}"
    );
    let status = child.wait().unwrap();
    assert_eq!(status.code(), Some(0));
}

#[test]
fn health_exits_zero_for_a_serving_gateway_and_one_for_none() {
    let dir = scratch("health");
    let port = free_port();
    let listen = format!("127.0.0.1:{port}");
    let mut child = gateway(&dir)
        .env("SWITCHYARD__SERVER__LISTEN", &listen)
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    wait_for_line(&mut child, "listening on");
    let running = Running(child);
    // From the configured listen address, as a container's HEALTHCHECK runs it.
    let output = gateway(&dir)
        .arg("health")
        .env("SWITCHYARD__SERVER__LISTEN", &listen)
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(0), "{output:?}");
    assert!(String::from_utf8_lossy(&output.stdout).contains(": ok"));
    // From an explicit URL, with or without the route.
    for url in [
        format!("http://{listen}"),
        format!("http://{listen}/health"),
    ] {
        let output = gateway(&dir)
            .args(["health", "--url", &url])
            .output()
            .unwrap();
        assert_eq!(output.status.code(), Some(0), "{url}: {output:?}");
    }
    drop(running);
    let output = gateway(&dir)
        .args(["health", "--url", &format!("http://{listen}")])
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&output.stderr).contains("no answer"));
}

/// A request a trusted proxy relayed is logged with the address it relayed for; from
/// an untrusted peer, the forwarded header is not believed.
#[test]
fn logs_name_the_client_a_trusted_proxy_relayed_for() {
    for (trusted, expected) in [("[\"127.0.0.1/32\"]", "203.0.113.9"), ("[]", "127.0.0.1")] {
        let dir = scratch(&format!("proxies-{}", trusted.len()));
        std::fs::write(
            dir.join("keys.json"),
            r#"{"sk-proxied-0123456789": "alice"}"#,
        )
        .unwrap();
        let port = free_port();
        let config = write_config(
            &dir,
            &format!(
                "[server]\nlisten = \"127.0.0.1:{port}\"\ntrusted_proxies = {trusted}\n[auth]\nkeys_file = \"{}\"\n",
                dir.join("keys.json").display()
            ),
        );
        let mut child = gateway(&dir)
            .arg("--config")
            .arg(&config)
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let stderr = child.stderr.take().unwrap();
        let (sender, receiver) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                let _ = sender.send(line);
            }
        });
        let _running = Running(child);
        let started = receiver
            .iter()
            .find(|line| line.contains("listening on"))
            .is_some();
        assert!(started);
        let mut stream = TcpStream::connect(("127.0.0.1", port)).unwrap();
        write!(
            stream,
            "GET /v1/models HTTP/1.1\r\nHost: x\r\nX-Forwarded-For: 203.0.113.9\r\nX-API-Key: sk-wrong\r\nConnection: close\r\n\r\n"
        )
        .unwrap();
        let mut answer = String::new();
        stream.read_to_string(&mut answer).unwrap();
        assert!(answer.starts_with("HTTP/1.1 401"), "{answer}");
        let mut seen = Vec::new();
        while let Ok(line) = receiver.recv_timeout(Duration::from_secs(5)) {
            let done = line.contains("\"GET /v1/models HTTP/1.1\" 401");
            seen.push(line);
            if done {
                break;
            }
        }
        let refusal = seen
            .iter()
            .find(|l| l.contains("refused"))
            .expect("a refusal line");
        assert!(
            refusal.contains(&format!(" {expected} GET /v1/models")),
            "{refusal}"
        );
        let access = seen.last().unwrap();
        assert!(
            access.contains(&format!("{expected} \"GET /v1/models")),
            "{access}"
        );
        assert!(!access.contains("sk-wrong") && !refusal.contains("sk-wrong"));
    }
}

/// The README says to copy the example to config/switchyard.toml: so copied, it starts
/// with nothing installed and no upstream key, and answers the README's "echo" examples.
#[test]
fn the_copied_example_config_starts_and_answers_echo() {
    let dir = scratch("example");
    std::fs::create_dir_all(dir.join("config")).unwrap();
    std::fs::copy(
        concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/config/switchyard.example.toml"
        ),
        dir.join("config/switchyard.toml"),
    )
    .unwrap();
    let port = free_port();
    let mut child = gateway(&dir)
        .env_remove("OPENAI_API_KEY")
        .env("SWITCHYARD__SERVER__LISTEN", format!("127.0.0.1:{port}"))
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    wait_for_line(&mut child, "listening on");
    let _running = Running(child);
    let answer = http(
        port,
        "POST",
        "/v1/chat/completions",
        r#"{"model":"echo","messages":[{"role":"user","content":"Hello from switchyard"}]}"#,
    );
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(
        answer.contains("\"content\":\"Hello from switchyard\""),
        "{answer}"
    );
    let answer = http(
        port,
        "POST",
        "/api/generate",
        r#"{"model":"echo","prompt":"Why is the sky blue?","stream":false}"#,
    );
    assert!(
        answer.contains("\"response\":\"Why is the sky blue?\""),
        "{answer}"
    );
    assert!(http(port, "GET", "/v1/models/echo", "").starts_with("HTTP/1.1 200"));
}

/// `switchyard keys`: eight `add`s at once all land, a reader never sees half a file,
/// and disable, enable and remove edit the entries they name.
#[test]
fn keys_commands_edit_the_file_safely() {
    let dir = scratch("keys-cli");
    let keys = dir.join("keys.json");
    let _ = std::fs::remove_file(&keys);
    let config = write_config(
        &dir,
        &format!("[auth]\nkeys_file = \"{}\"\n", keys.display()),
    );
    let keys_cmd = |args: &[&str]| {
        let mut command = gateway(&dir);
        command.arg("--config").arg(&config).arg("keys").args(args);
        command
    };
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let reader = {
        let (keys, stop) = (keys.clone(), stop.clone());
        std::thread::spawn(move || {
            let mut reads = 0;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                if let Ok(text) = std::fs::read_to_string(&keys) {
                    serde_json::from_str::<serde_json::Value>(&text)
                        .unwrap_or_else(|e| panic!("a half-written file: {e}: {text}"));
                    reads += 1;
                }
            }
            reads
        })
    };
    let adds: Vec<Child> = (0..8)
        .map(|n| {
            keys_cmd(&["add", &format!("user{n}"), "--rpm", "60"])
                .stdout(Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    let mut printed = Vec::new();
    for add in adds {
        let output = add.wait_with_output().unwrap();
        assert!(output.status.success());
        printed.push(String::from_utf8(output.stdout).unwrap());
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    assert!(reader.join().unwrap() > 0);
    let list = keys_cmd(&["list", "--json"]).output().unwrap();
    let entries: Vec<serde_json::Value> = String::from_utf8(list.stdout)
        .unwrap()
        .lines()
        .map(|line| serde_json::from_str(line).unwrap())
        .collect();
    assert_eq!(entries.len(), 8);
    // Each generated key was printed once, and the listing masks it.
    let key = printed[0].lines().last().unwrap().to_owned();
    assert!(key.starts_with("sk-") && key.len() >= 32, "{key}");
    let table = String::from_utf8(keys_cmd(&["list"]).output().unwrap().stdout).unwrap();
    assert!(!table.contains(&key) && table.contains("rpm 60"), "{table}");
    assert!(keys_cmd(&["disable", "user3"]).status().unwrap().success());
    assert!(
        String::from_utf8(keys_cmd(&["list"]).output().unwrap().stdout)
            .unwrap()
            .lines()
            .any(|line| line.starts_with("user3") && line.contains("disabled"))
    );
    assert!(keys_cmd(&["enable", "user3"]).status().unwrap().success());
    assert!(keys_cmd(&["remove", &key]).status().unwrap().success());
    let missing = keys_cmd(&["remove", "nobody"]).output().unwrap();
    assert_eq!(missing.status.code(), Some(1));
    let left = std::fs::read_to_string(&keys).unwrap();
    assert!(!left.contains(&key) && !left.contains("disabled"));
    assert_eq!(left.matches("\"user\"").count(), 7);
}

#[test]
fn cors_star_needs_keys_and_origins_must_be_origins() {
    let dir = scratch("cors");
    for (toml, expected) in [
        ("[server]\ncors_allow_origins = [\"*\"]\n", "needs keys"),
        (
            "[server]\ncors_allow_origins = [\"https://app.example.com/\"]\n",
            "cors_allow_origins[0]",
        ),
        (
            "[server]\ncors_allow_origins = [\"app.example.com\"]\n",
            "cors_allow_origins[0]",
        ),
    ] {
        let path = write_config(&dir, toml);
        let output = check(&dir, &path, &[]);
        assert_eq!(output.status.code(), Some(1), "{toml}");
        let text = String::from_utf8(output.stderr).unwrap();
        assert!(text.contains(expected), "{toml}: {text}");
    }
    let path = write_config(
        &dir,
        "[server]\ncors_allow_origins = [\"*\"]\n[auth]\nadmin_keys = [\"sk-admin-0123456789\"]\n",
    );
    assert!(check(&dir, &path, &[]).status.success());
}

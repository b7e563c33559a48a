//! Load and soak: drives many concurrent streams through a running gateway (echo and a
//! mock upstream, both dialects, every crossing), checks every stream's text byte for
//! byte and its proper ending, and reports errors, peak memory and memory per stream.
//!
//! `scripts/soak` builds and starts everything; by hand:
//! `cargo bench --bench soak -- --url http://127.0.0.1:8787 --pid PID --streams 5000`

use std::cell::Cell;
use std::collections::BTreeMap;
use std::rc::Rc;
use std::time::{Duration, Instant};

use futures::StreamExt;
use serde_json::{json, Value};

struct Options {
    url: String,
    pid: Option<u32>,
    streams: usize,
    chunks: usize,
    gap_ms: u64,
}

fn options() -> Options {
    let mut options = Options {
        url: "http://127.0.0.1:8787".to_owned(),
        pid: None,
        streams: 5000,
        chunks: 20,
        gap_ms: 200,
    };
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        let mut value = || args.next().unwrap_or_default();
        match arg.as_str() {
            "--url" => options.url = value(),
            "--pid" => options.pid = value().parse().ok(),
            "--streams" => options.streams = value().parse().unwrap_or(options.streams),
            "--chunks" => options.chunks = value().parse().unwrap_or(options.chunks),
            "--gap-ms" => options.gap_ms = value().parse().unwrap_or(options.gap_ms),
            // `cargo bench` passes --bench; anything else is a mistake worth saying.
            "--bench" => {}
            other => {
                eprintln!("soak: unknown argument {other}");
                std::process::exit(2);
            }
        }
    }
    options
}

/// Resident memory of a process in kB, from /proc.
fn rss_kb(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// One kind of stream: which route, which model, how to read its text.
#[derive(Clone, Copy)]
struct Case {
    name: &'static str,
    path: &'static str,
    model: &'static str,
    openai: bool,
}

const CASES: [Case; 6] = [
    Case {
        name: "openai->openai",
        path: "/v1/chat/completions",
        model: "oa/mock-soak",
        openai: true,
    },
    Case {
        name: "openai->ollama",
        path: "/v1/chat/completions",
        model: "ol/mock-soak",
        openai: true,
    },
    Case {
        name: "ollama->openai",
        path: "/api/chat",
        model: "oa/mock-soak",
        openai: false,
    },
    Case {
        name: "ollama->ollama",
        path: "/api/chat",
        model: "ol/mock-soak",
        openai: false,
    },
    Case {
        name: "openai->echo",
        path: "/v1/chat/completions",
        model: "echo",
        openai: true,
    },
    Case {
        name: "ollama->echo",
        path: "/api/chat",
        model: "echo",
        openai: false,
    },
];

/// Reads a whole stream and returns its text, or what was wrong with it.
fn read_text(case: Case, body: &[u8]) -> Result<String, String> {
    let body = std::str::from_utf8(body).map_err(|e| format!("not UTF-8: {e}"))?;
    let mut text = String::new();
    if case.openai {
        let mut done = false;
        for event in body.split("\n\n").filter(|e| !e.is_empty()) {
            let data = event
                .strip_prefix("data: ")
                .ok_or_else(|| format!("not an SSE event: {event:?}"))?;
            if data == "[DONE]" {
                done = true;
                continue;
            }
            let chunk: Value = serde_json::from_str(data).map_err(|e| format!("bad chunk: {e}"))?;
            if chunk.get("error").is_some() {
                return Err(format!("error event: {data}"));
            }
            text.push_str(
                chunk["choices"][0]["delta"]["content"]
                    .as_str()
                    .unwrap_or(""),
            );
        }
        if !done {
            return Err("no [DONE]".to_owned());
        }
    } else {
        let mut done = false;
        for line in body.lines() {
            let line: Value = serde_json::from_str(line).map_err(|e| format!("bad line: {e}"))?;
            if line.get("error").is_some() {
                return Err(format!("error line: {line}"));
            }
            text.push_str(line["message"]["content"].as_str().unwrap_or(""));
            done |= line["done"] == true;
        }
        if !done {
            return Err("no done line".to_owned());
        }
    }
    Ok(text)
}

fn main() {
    let options = options();
    let expected: String = (0..options.chunks).map(|i| format!("w{i} ")).collect();
    let model_suffix = format!("-chunks{}-gap{}", options.chunks, options.gap_ms);
    actix_web::rt::System::new().block_on(async move {
        let client = awc::Client::builder()
            .connector(awc::Connector::new().limit(0).timeout(Duration::from_secs(30)))
            .timeout(Duration::from_secs(120))
            .finish();
        let idle_kb = options.pid.and_then(rss_kb);
        let peak_kb = Rc::new(Cell::new(idle_kb.unwrap_or(0)));
        let in_flight = Rc::new(Cell::new(0usize));
        let peak_in_flight = Rc::new(Cell::new(0usize));
        let running = Rc::new(Cell::new(true));
        if let Some(pid) = options.pid {
            let (peak_kb, running) = (peak_kb.clone(), running.clone());
            actix_web::rt::spawn(async move {
                while running.get() {
                    if let Some(kb) = rss_kb(pid) {
                        peak_kb.set(peak_kb.get().max(kb));
                    }
                    actix_web::rt::time::sleep(Duration::from_millis(20)).await;
                }
            });
        }
        let started = Instant::now();
        let streams = (0..options.streams).map(|index| {
            let case = CASES[index % CASES.len()];
            let client = client.clone();
            let (in_flight, peak_in_flight) = (in_flight.clone(), peak_in_flight.clone());
            let expected = expected.clone();
            let model = if case.model == "echo" { case.model.to_owned() } else { format!("{}{model_suffix}", case.model) };
            let url = format!("{}{}", options.url, case.path);
            async move {
                // Spread the connection burst a little: 500 new streams every 20 ms.
                actix_web::rt::time::sleep(Duration::from_millis((index / 500) as u64 * 20)).await;
                let body = json!({"model": model, "stream": true, "messages": [{"role": "user", "content": expected}]});
                in_flight.set(in_flight.get() + 1);
                peak_in_flight.set(peak_in_flight.get().max(in_flight.get()));
                let outcome = async {
                    let mut response = client
                        .post(&url)
                        .insert_header(("content-type", "application/json"))
                        .send_body(body.to_string())
                        .await
                        .map_err(|e| format!("request failed: {e}"))?;
                    if response.status() != 200 {
                        return Err(format!("status {}", response.status()));
                    }
                    let mut bytes = Vec::new();
                    while let Some(chunk) = response.next().await {
                        bytes.extend_from_slice(&chunk.map_err(|e| format!("body broke: {e}"))?);
                    }
                    let text = read_text(case, &bytes)?;
                    if text != expected {
                        return Err(format!("text differs: {text:?}"));
                    }
                    Ok(())
                }
                .await;
                in_flight.set(in_flight.get() - 1);
                (case.name, outcome)
            }
        });
        let results = futures::future::join_all(streams).await;
        running.set(false);
        let elapsed = started.elapsed();
        let mut per_case: BTreeMap<&str, (usize, usize)> = BTreeMap::new();
        let mut reasons: BTreeMap<String, usize> = BTreeMap::new();
        for (name, outcome) in &results {
            let entry = per_case.entry(name).or_default();
            entry.0 += 1;
            if let Err(reason) = outcome {
                entry.1 += 1;
                *reasons.entry(reason.chars().take(120).collect()).or_default() += 1;
            }
        }
        let errors: usize = per_case.values().map(|(_, e)| e).sum();
        println!("soak: {} streams, {} chunks each ({} ms apart), in {:.1} s", results.len(), options.chunks, options.gap_ms, elapsed.as_secs_f64());
        println!("{:<16} {:>8} {:>8}", "path", "streams", "errors");
        for (name, (count, failed)) in &per_case {
            println!("{name:<16} {count:>8} {failed:>8}");
        }
        for (reason, count) in &reasons {
            println!("  {count} x {reason}");
        }
        println!("errors: {errors}");
        println!("peak concurrent streams: {}", peak_in_flight.get());
        if let Some(idle) = idle_kb {
            let peak = peak_kb.get();
            let per_stream = (peak.saturating_sub(idle) as f64) / (peak_in_flight.get().max(1) as f64);
            println!("gateway memory: idle {:.1} MB, peak {:.1} MB, {:.1} KB per in-flight stream", idle as f64 / 1024.0, peak as f64 / 1024.0, per_stream);
        }
        if errors > 0 {
            std::process::exit(1);
        }
    });
}

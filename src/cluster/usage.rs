//! Every instance's usage records in one Redis stream, so that `switchyard usage
//! --cluster` totals the whole cluster: each record an instance writes to its own
//! ledger is also appended here (`XADD … MAXLEN ~ stream_maxlen`, so the stream stays
//! bounded). A record made while Redis is unreachable waits in this instance's memory
//! (at most `pending_max`, the oldest dropped first, with a count logged) and is sent,
//! in order, as soon as Redis answers again.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use redis::aio::ConnectionManager;

use super::{Cluster, ClusterSettings, RawCluster};
use crate::usage::ledger::{schema, unix_ms};
use crate::usage::report::{Query, Totals};
use crate::usage::Outcome;

/// One usage record: its fields as the stream keeps them.
pub type Record = Vec<(&'static str, String)>;

/// How many held records go in one pipelined call when Redis is back.
const FLUSH_BATCH: usize = 500;

impl Cluster {
    /// The stream every instance appends to.
    pub fn stream(&self) -> String {
        self.key(&["usage"])
    }
}

/// The stream's fields of one outcome: the ledger's columns, by name (absent where the
/// ledger's would be NULL), and the instance that served it.
pub fn record(cluster: &Cluster, outcome: &Outcome) -> Record {
    let mut fields: Record = vec![
        ("at_ms", unix_ms(outcome.at).to_string()),
        ("instance", cluster.instance.clone()),
        ("user", outcome.user.to_string()),
        ("dialect", outcome.dialect.to_owned()),
        ("model", outcome.model.clone()),
        ("prompt_tokens", outcome.prompt_tokens.to_string()),
        ("completion_tokens", outcome.completion_tokens.to_string()),
        ("status", outcome.status.to_string()),
        (
            "latency_ms",
            (outcome.latency.as_secs_f64() * 1000.0).to_string(),
        ),
        ("client_left", u8::from(outcome.client_left).to_string()),
    ];
    if let Some(key) = &outcome.key {
        fields.push(("key_id", key.key_id.to_string()));
    }
    if let Some(backend) = &outcome.backend {
        fields.push(("backend", backend.to_string()));
    }
    if let Some(model) = &outcome.upstream_model {
        fields.push(("upstream_model", model.clone()));
    }
    if let Some(first) = outcome.first_token {
        fields.push(("ttft_ms", (first.as_secs_f64() * 1000.0).to_string()));
    }
    fields
}

/// Sends one finished request to the cluster, off the request path: its tokens to its
/// key's shared `tpm` and day (`charge`), its record to the stream (held locally when
/// Redis does not answer).
pub fn note(cluster: &Arc<Cluster>, outcome: &Outcome, charge: bool) {
    let record = record(cluster, outcome);
    let charge = charge
        .then(|| outcome.key.clone())
        .flatten()
        .map(|key| (key, outcome.prompt_tokens + outcome.completion_tokens));
    let Ok(runtime) = tokio::runtime::Handle::try_current() else {
        hold(cluster, record);
        return;
    };
    let cluster = cluster.clone();
    runtime.spawn(async move {
        if let Some((key, tokens)) = charge {
            // Tokens Redis does not take stay in this instance's own window only.
            cluster.spend(&key, tokens).await;
        }
        send(&cluster, record).await;
    });
}

/// Appends `record` to the stream; held locally when Redis does not answer.
async fn send(cluster: &Arc<Cluster>, record: Record) {
    // Records held before this one go first, so the stream keeps their order.
    let behind = cluster
        .pending
        .lock()
        .map(|p| !p.is_empty())
        .unwrap_or(false);
    if behind || !cluster.is_up() {
        hold(cluster, record);
        return;
    }
    let stream = cluster.stream();
    let maxlen = cluster.settings.stream_maxlen;
    let fields = record.clone();
    let sent = cluster
        .run("usage record", |mut connection| async move {
            let mut command = xadd(&stream, maxlen);
            for (field, value) in &fields {
                command.arg(*field).arg(value);
            }
            command.query_async::<String>(&mut connection).await
        })
        .await;
    if sent.is_none() {
        hold(cluster, record);
    }
}

fn xadd(stream: &str, maxlen: u64) -> redis::Cmd {
    let mut command = redis::cmd("XADD");
    command
        .arg(stream)
        .arg("MAXLEN")
        .arg("~")
        .arg(maxlen)
        .arg("*");
    command
}

fn hold(cluster: &Cluster, record: Record) {
    let Ok(mut pending) = cluster.pending.lock() else {
        return;
    };
    if cluster.settings.pending_max == 0 {
        return;
    }
    if pending.len() >= cluster.settings.pending_max {
        pending.pop_front();
        let dropped = cluster
            .dropped
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        if dropped == 0 {
            log::warn!(
                "redis has been unreachable for {} usage records (cluster.pending_max): the oldest are dropped from the stream (each instance's own ledger still has them)",
                cluster.settings.pending_max
            );
        }
    }
    pending.push_back(record);
}

/// Sends the records held while Redis was unreachable, oldest first, a batch per call.
pub(super) async fn flush(cluster: &Cluster, connection: ConnectionManager) {
    loop {
        let batch: Vec<Record> = match cluster.pending.lock() {
            Ok(pending) => pending.iter().take(FLUSH_BATCH).cloned().collect(),
            Err(_) => return,
        };
        if batch.is_empty() {
            return;
        }
        let mut pipe = redis::pipe();
        for record in &batch {
            let mut command = xadd(&cluster.stream(), cluster.settings.stream_maxlen);
            for (field, value) in record {
                command.arg(*field).arg(value);
            }
            pipe.add_command(command).ignore();
        }
        let mut connection = connection.clone();
        let call = async move { pipe.query_async::<()>(&mut connection).await };
        if cluster
            .bounded(
                "sending held usage records",
                super::BACKGROUND_TIMEOUT,
                call,
            )
            .await
            .is_none()
        {
            return;
        }
        let sent = batch.len();
        if let Ok(mut pending) = cluster.pending.lock() {
            let sent = sent.min(pending.len());
            pending.drain(..sent);
            if pending.is_empty() {
                log::info!("usage records held while redis was unreachable are in the stream");
                cluster
                    .dropped
                    .store(0, std::sync::atomic::Ordering::Relaxed);
            }
        }
    }
}

/// How long `switchyard usage --cluster` waits for Redis.
const REPORT_TIMEOUT: Duration = Duration::from_secs(10);
/// Records read per `XRANGE`.
const READ_BATCH: usize = 10_000;

/// `switchyard usage --cluster`: every instance's records from the stream, put in an
/// in-memory ledger and totalled by the ledger's own query, so the two reports agree
/// on what they count.
pub fn totals(config: Option<&Path>, query: &Query) -> Result<Vec<Totals>, String> {
    let settings = configured(config)?;
    let stream = Cluster::new(settings.clone()).stream();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| e.to_string())?;
    let records = runtime
        .block_on(async { tokio::time::timeout(REPORT_TIMEOUT, read(&settings, &stream)).await })
        .map_err(|_| {
            format!(
                "redis {} did not answer within {} s",
                settings.shown_url(),
                REPORT_TIMEOUT.as_secs()
            )
        })?
        .map_err(|e| format!("redis {}: {e}", settings.shown_url()))?;
    let mut connection = rusqlite::Connection::open_in_memory().map_err(|e| e.to_string())?;
    connection
        .execute_batch(&schema())
        .map_err(|e| e.to_string())?;
    insert(&mut connection, &records).map_err(|e| e.to_string())?;
    crate::usage::report::totals(&connection, query).map_err(|e| e.to_string())
}

/// `[cluster]` of the config file (with no other part of it checked: a report needs no
/// upstream's key in this shell).
fn configured(config: Option<&Path>) -> Result<ClusterSettings, String> {
    let Some(path) = config else {
        return Err("--cluster needs the config file with [cluster] (--config PATH)".to_owned());
    };
    let raw = config::Config::builder()
        .add_source(config::File::from(path).format(config::FileFormat::Toml))
        .build()
        .and_then(|settings| settings.get::<RawCluster>("cluster"))
        .map_err(|e| match e {
            config::ConfigError::NotFound(_) => {
                format!("{} has no [cluster] section", path.display())
            }
            other => format!("{}: {other}", path.display()),
        })?;
    raw.check()
}

/// Every record in the stream, oldest first, as field maps.
async fn read(
    settings: &ClusterSettings,
    stream: &str,
) -> redis::RedisResult<Vec<std::collections::HashMap<String, String>>> {
    let client = settings.client()?;
    let mut connection = client.get_multiplexed_async_connection().await?;
    let mut records = Vec::new();
    let mut start = "-".to_owned();
    loop {
        let reply: redis::streams::StreamRangeReply = redis::cmd("XRANGE")
            .arg(stream)
            .arg(&start)
            .arg("+")
            .arg("COUNT")
            .arg(READ_BATCH)
            .query_async(&mut connection)
            .await?;
        let count = reply.ids.len();
        for entry in reply.ids {
            start = format!("({}", entry.id);
            let fields = entry
                .map
                .into_iter()
                .filter_map(|(field, value)| {
                    redis::from_redis_value::<String>(&value)
                        .ok()
                        .map(|value| (field, value))
                })
                .collect();
            records.push(fields);
        }
        if count < READ_BATCH {
            return Ok(records);
        }
    }
}

/// Puts the stream's records in the ledger's table, column by column; a record without
/// its time or user (not written by this gateway) is left out.
fn insert(
    connection: &mut rusqlite::Connection,
    records: &[std::collections::HashMap<String, String>],
) -> rusqlite::Result<()> {
    let transaction = connection.transaction()?;
    {
        let mut statement = transaction.prepare(
            "INSERT INTO requests (at_ms, user, key_id, dialect, model, backend, upstream_model, prompt_tokens, completion_tokens, status, latency_ms, ttft_ms, client_left) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13)",
        )?;
        for record in records {
            let text = |field: &str| record.get(field).cloned();
            let number = |field: &str| record.get(field).and_then(|v| v.parse::<i64>().ok());
            let real = |field: &str| record.get(field).and_then(|v| v.parse::<f64>().ok());
            let (Some(at_ms), Some(user)) = (number("at_ms"), text("user")) else {
                continue;
            };
            statement.execute(rusqlite::params![
                at_ms,
                user,
                text("key_id"),
                text("dialect").unwrap_or_default(),
                text("model").unwrap_or_default(),
                text("backend"),
                text("upstream_model"),
                number("prompt_tokens").unwrap_or(0),
                number("completion_tokens").unwrap_or(0),
                number("status").unwrap_or(0),
                real("latency_ms").unwrap_or(0.0),
                real("ttft_ms"),
                number("client_left").unwrap_or(0),
            ])?;
        }
    }
    transaction.commit()
}

//! Every instance's usage records in one Redis stream, so that `switchyard usage
//! --cluster` totals the whole cluster: each record an instance writes to its own
//! ledger is also appended here (`XADD … MAXLEN ~ stream_maxlen`, so the stream stays
//! bounded). Records are sent by `outbox`: with the next request's call to Redis or
//! within a moment, and, while Redis is unreachable, held in this instance's memory and
//! sent in order once it answers again.

use std::collections::HashSet;
use std::path::Path;
use std::time::Duration;

use super::outbox::Charge;
use super::{Cluster, ClusterSettings, RawCluster};
use crate::usage::ledger::{schema, unix_ms};
use crate::usage::report::{Query, Totals};
use crate::usage::Outcome;

/// One usage record, as the `XADD` that appends it to the stream: built once, when the
/// answer ends, with its numbers written straight into the command.
pub type Record = redis::Cmd;

/// The `XADD` of one outcome: the ledger's columns, by name (absent where the ledger's
/// would be NULL), the instance that served it and the record's own id.
pub fn record(cluster: &Cluster, outcome: &Outcome) -> Record {
    let mut command = redis::cmd("XADD");
    command
        .arg(cluster.stream())
        .arg("MAXLEN")
        .arg("~")
        .arg(cluster.settings.stream_maxlen)
        .arg("*")
        // Delivery is at least once: the report counts each id once.
        .arg("id")
        .arg(cluster.tagged(cluster.next_id()))
        .arg("at_ms")
        .arg(unix_ms(outcome.at))
        .arg("instance")
        .arg(&cluster.instance)
        .arg("user")
        .arg(&*outcome.user)
        .arg("dialect")
        .arg(outcome.dialect)
        .arg("model")
        .arg(&outcome.model)
        .arg("prompt_tokens")
        .arg(outcome.prompt_tokens)
        .arg("completion_tokens")
        .arg(outcome.completion_tokens)
        .arg("status")
        .arg(outcome.status)
        .arg("latency_ms")
        .arg(outcome.latency.as_secs_f64() * 1000.0)
        .arg("client_left")
        .arg(u8::from(outcome.client_left));
    if let Some(key) = &outcome.key {
        command.arg("key_id").arg(&*key.key_id);
    }
    if let Some(backend) = &outcome.backend {
        command.arg("backend").arg(&**backend);
    }
    if let Some(model) = &outcome.upstream_model {
        command.arg("upstream_model").arg(model);
    }
    if let Some(first) = outcome.first_token {
        command.arg("ttft_ms").arg(first.as_secs_f64() * 1000.0);
    }
    command
}

/// Owes the cluster one finished request: its tokens to its key's shared `tpm` and day
/// (while Redis answers; a refusal has none), its record to the stream. Neither waits for Redis
/// here: both ride with the next call (`outbox`).
pub fn note(cluster: &Cluster, outcome: &Outcome) {
    let tokens = outcome.prompt_tokens + outcome.completion_tokens;
    if let Some(key) = outcome.key.as_deref() {
        let (minute, day) = (key.tpm.is_some(), key.tokens_per_day.is_some());
        // Tokens Redis cannot take now stay in this instance's own window only.
        if tokens > 0 && (minute || day) && cluster.is_up() {
            let [_, tpm_key, day_key] = cluster.limit_keys(&key.key_id);
            cluster.outbox.charge(Charge {
                tpm_key,
                day_key,
                tokens,
                minute,
                day,
            });
        }
    }
    cluster
        .outbox
        .record(record(cluster, outcome), cluster.settings.pending_max);
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
    let stream = settings.key(&["usage"]);
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
    // A record sent twice (a call that was given up after it reached Redis) counts once.
    let mut seen = HashSet::new();
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
            let fields: std::collections::HashMap<String, String> = entry
                .map
                .into_iter()
                .filter_map(|(field, value)| {
                    redis::from_redis_value::<String>(&value)
                        .ok()
                        .map(|value| (field, value))
                })
                .collect();
            if let Some(id) = fields.get("id") {
                if !seen.insert(id.clone()) {
                    continue;
                }
            }
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

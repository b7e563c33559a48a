//! The usage ledger: one row per request in an embedded SQLite database (WAL mode, so
//! `switchyard usage` reads while the gateway writes).
//!
//! Requests never wait on the disk: each outcome goes into a bounded channel, and one
//! writer thread takes whatever has queued and writes it in one transaction. After the
//! first row of a batch the writer lets more gather (up to [`GATHER_STEPS`] ×
//! [`GATHER_STEP`]) before it writes: a busy gateway then wakes it a few times a second
//! instead of once per request (each wake-up a system call on the request's side, each
//! transaction a write of the log), and a quiet one still has each row on disk within
//! that pause. When the
//! channel is full (the disk cannot keep up) the row is dropped, counted in
//! `switchyard_ledger_dropped_total` and logged, rather than holding a request back. On
//! shutdown the writer is told to stop after the rows already queued, and waited for.

use std::collections::HashMap;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{sync_channel, Receiver, SyncSender, TrySendError};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{SystemTime, UNIX_EPOCH};

use rusqlite::{Connection, OpenFlags};

use super::rows::Statements;
use super::Outcome;
use crate::metrics::Metrics;

/// Rows that may wait for the writer; past this, rows are dropped. Emptied every
/// [`GATHER_STEP`] while a batch gathers, it carries some 160,000 requests a second.
const QUEUE: usize = 8192;
/// How long rows gather after the first of a batch, in steps. A transaction costs the
/// writer as much as several rows (its commit writes and checksums whole pages of the
/// log), so at a few requests a second a longer pause saves much of the ledger's cost;
/// a quarter of a second is still well within what `switchyard usage` and the console
/// can tell. After each step the queue is taken in, so that it never fills while the
/// batch gathers, and a batch of [`ENOUGH`] rows is written at once.
const GATHER_STEP: std::time::Duration = std::time::Duration::from_millis(50);
const GATHER_STEPS: usize = 5;
const ENOUGH: usize = QUEUE / 2;

/// The table and its index by time; created when missing.
const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS requests (
    id INTEGER PRIMARY KEY,
    at_ms INTEGER NOT NULL,
    user TEXT NOT NULL,
    key_id TEXT,
    dialect TEXT NOT NULL,
    model TEXT NOT NULL,
    backend TEXT,
    upstream_model TEXT,
    prompt_tokens INTEGER NOT NULL,
    completion_tokens INTEGER NOT NULL,
    status INTEGER NOT NULL,
    latency_ms REAL NOT NULL,
    ttft_ms REAL,
    client_left INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS requests_at ON requests (at_ms);
";

enum Message {
    Row(Outcome),
    /// Write what came before, then stop.
    Stop,
}

/// The open ledger: the writer's queue and thread.
pub struct Ledger {
    sender: SyncSender<Message>,
    writer: Mutex<Option<JoinHandle<()>>>,
    metrics: Arc<Metrics>,
    dropped: AtomicU64,
}

/// Milliseconds since the Unix epoch.
pub fn unix_ms(at: SystemTime) -> i64 {
    at.duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

/// The start of the UTC day `at` falls in, in Unix milliseconds.
pub fn day_start_ms(at_ms: i64) -> i64 {
    const DAY_MS: i64 = 86_400_000;
    at_ms.div_euclid(DAY_MS) * DAY_MS
}

/// Opens (creating it and its folder when missing) the ledger for writing.
pub fn open_for_writing(path: &Path) -> Result<Connection, String> {
    if let Some(folder) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(folder).map_err(|e| {
            format!(
                "ledger.path {}: cannot create its folder: {e}",
                path.display()
            )
        })?;
    }
    let connection = Connection::open(path)
        .map_err(|e| format!("ledger.path {}: cannot open: {e}", path.display()))?;
    prepare(&connection).map_err(|e| format!("ledger.path {}: {e}", path.display()))?;
    Ok(connection)
}

/// The ledger's schema, for tests that build one in memory.
pub fn schema() -> String {
    SCHEMA.to_owned()
}

fn prepare(connection: &Connection) -> rusqlite::Result<()> {
    connection.busy_timeout(std::time::Duration::from_secs(5))?;
    // WAL lets readers (`switchyard usage`) read while the writer writes; NORMAL syncs
    // at checkpoints only, which loses at most the last rows on a power cut.
    connection.pragma_update(None, "journal_mode", "WAL")?;
    connection.pragma_update(None, "synchronous", "NORMAL")?;
    connection.execute_batch(SCHEMA)
}

/// Opens an existing ledger for reading only, as `switchyard usage` does while the
/// gateway may be writing it.
pub fn open_for_reading(path: &Path) -> Result<Connection, String> {
    if !path.exists() {
        return Err(format!(
            "no usage ledger at {} (see ledger.path and ledger.enabled in the config)",
            path.display()
        ));
    }
    let connection = Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
    .map_err(|e| format!("{}: cannot open the usage ledger: {e}", path.display()))?;
    connection
        .busy_timeout(std::time::Duration::from_secs(5))
        .map_err(|e| format!("{}: {e}", path.display()))?;
    Ok(connection)
}

/// Writes rows in one transaction (for callers other than the writer, which keeps its
/// statements prepared for its whole life).
pub fn insert(connection: &mut Connection, rows: &[Outcome]) -> rusqlite::Result<()> {
    Statements::prepare(connection)?.insert(rows)
}

/// Each key's tokens since the start of the UTC day `now_ms` falls in.
pub fn tokens_today(
    connection: &Connection,
    now_ms: i64,
) -> rusqlite::Result<HashMap<Arc<str>, u64>> {
    let mut statement = connection.prepare(
        "SELECT key_id, SUM(prompt_tokens + completion_tokens) FROM requests WHERE at_ms >= ?1 AND key_id IS NOT NULL GROUP BY key_id",
    )?;
    let rows = statement.query_map([day_start_ms(now_ms)], |row| {
        Ok((row.get::<_, String>(0)?, row.get::<_, i64>(1)?))
    })?;
    let mut totals = HashMap::new();
    for row in rows {
        let (key_id, tokens) = row?;
        totals.insert(Arc::from(key_id), u64::try_from(tokens).unwrap_or(0));
    }
    Ok(totals)
}

impl Ledger {
    /// Opens the ledger at `path`, reads each key's tokens of today, and starts the
    /// writer.
    pub fn open(
        path: &Path,
        metrics: Arc<Metrics>,
    ) -> Result<(Ledger, HashMap<Arc<str>, u64>), String> {
        let connection = open_for_writing(path)?;
        let today = tokens_today(&connection, unix_ms(SystemTime::now()))
            .map_err(|e| format!("ledger.path {}: {e}", path.display()))?;
        let (sender, receiver) = sync_channel(QUEUE);
        let shown = path.display().to_string();
        let writer = std::thread::Builder::new()
            .name("usage-ledger".to_owned())
            .spawn(move || write_rows(&connection, &receiver, &shown))
            .map_err(|e| format!("cannot start the usage ledger's writer: {e}"))?;
        log::info!("usage ledger: {}", path.display());
        Ok((
            Ledger {
                sender,
                writer: Mutex::new(Some(writer)),
                metrics,
                dropped: AtomicU64::new(0),
            },
            today,
        ))
    }

    /// Queues a row without waiting; a full queue drops it (counted and logged).
    pub fn write(&self, outcome: Outcome) {
        match self.sender.try_send(Message::Row(outcome)) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) => {
                self.metrics.ledger_dropped();
                let dropped = self.dropped.fetch_add(1, Ordering::Relaxed) + 1;
                // Once, then every thousandth: the log must not become the next bottleneck.
                if dropped == 1 || dropped.is_multiple_of(1000) {
                    log::warn!("usage ledger: the writer is behind; {dropped} rows dropped so far");
                }
            }
            // Closed at shutdown: the requests that end after are counted, not stored.
            Err(TrySendError::Disconnected(_)) => {}
        }
    }

    /// Lets the writer store every row queued so far, then waits for it to stop.
    pub fn close(&self) {
        let Ok(mut writer) = self.writer.lock() else {
            return;
        };
        let Some(writer) = writer.take() else { return };
        if self.sender.send(Message::Stop).is_ok() && writer.join().is_err() {
            log::error!("usage ledger: the writer failed while stopping");
        }
    }
}

/// The writer's loop: waits for a row, lets more gather for a moment, takes every row
/// queued, writes them in one transaction.
fn write_rows(connection: &Connection, receiver: &Receiver<Message>, path: &str) {
    let mut statements = None;
    let mut batch: Vec<Outcome> = Vec::new();
    let mut stopping = false;
    while !stopping {
        match receiver.recv() {
            Ok(Message::Row(row)) => batch.push(row),
            Ok(Message::Stop) | Err(_) => stopping = true,
        }
        for _ in 0..GATHER_STEPS {
            if stopping || batch.len() >= ENOUGH {
                break;
            }
            std::thread::sleep(GATHER_STEP);
            stopping = take_queued(receiver, &mut batch);
        }
        if batch.is_empty() {
            continue;
        }
        // Prepared once; a failure to prepare is tried again with the next batch.
        if statements.is_none() {
            // Other tables of this file (the stored responses) may have been created
            // since this connection read the schema; a statement that reads it first
            // spares compiling the inserts twice (once stale, once at their first run).
            let _ = connection.execute_batch("SELECT 1 FROM requests LIMIT 0");
            statements = Statements::prepare(connection)
                .map_err(|e| {
                    log::error!("usage ledger {path}: {} rows not written: {e}", batch.len())
                })
                .ok();
        }
        if let Some(statements) = &statements {
            if let Err(e) = statements.insert(&batch) {
                log::error!("usage ledger {path}: {} rows not written: {e}", batch.len());
            }
        }
        batch.clear();
    }
}

/// Moves every row queued now into `batch`; true when a stop was among them (the rows
/// queued before it are taken, later ones are left).
fn take_queued(receiver: &Receiver<Message>, batch: &mut Vec<Outcome>) -> bool {
    loop {
        match receiver.try_recv() {
            Ok(Message::Row(row)) => batch.push(row),
            Ok(Message::Stop) => return true,
            Err(_) => return false,
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn outcome(user: &str, tokens: u64) -> Outcome {
        Outcome {
            at: SystemTime::now(),
            user: Arc::from(user),
            key: None,
            dialect: "ollama",
            model: "m".to_owned(),
            backend: Some(Arc::from("b")),
            upstream_model: None,
            prompt_tokens: tokens,
            completion_tokens: 0,
            status: 200,
            latency: Duration::from_millis(1),
            first_token: None,
            client_left: false,
        }
    }

    #[test]
    fn a_full_queue_drops_and_counts_rather_than_waits() {
        let metrics = Arc::new(Metrics::new());
        // A queue of one that nobody reads: the writer has fallen behind.
        let (sender, _receiver) = sync_channel(1);
        let ledger = Ledger {
            sender,
            writer: Mutex::new(None),
            metrics: metrics.clone(),
            dropped: AtomicU64::new(0),
        };
        for _ in 0..3 {
            ledger.write(outcome("a", 1));
        }
        let text = String::from_utf8(metrics.render()).unwrap();
        assert!(text.contains("switchyard_ledger_dropped_total 2"), "{text}");
    }

    #[test]
    fn closing_writes_every_queued_row_first() {
        let dir = std::env::temp_dir().join(format!("switchyard-ledger-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let path = dir.join("nested/usage.db");
        let (ledger, today) = Ledger::open(&path, Arc::new(Metrics::new())).unwrap();
        assert!(today.is_empty());
        for n in 0..500 {
            ledger.write(outcome("a", n));
        }
        ledger.close();
        let connection = open_for_reading(&path).unwrap();
        let (rows, tokens): (i64, i64) = connection
            .query_row(
                "SELECT COUNT(*), SUM(prompt_tokens) FROM requests",
                [],
                |row| Ok((row.get(0)?, row.get(1)?)),
            )
            .unwrap();
        assert_eq!((rows, tokens), (500, 499 * 500 / 2));
        // Rows after closing are not stored, and nothing waits for them.
        ledger.write(outcome("late", 1));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}

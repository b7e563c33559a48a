//! Stored responses kept in the usage ledger's SQLite database, so that a restarted
//! gateway still answers `GET /v1/responses/{id}` and continues a conversation by
//! `previous_response_id`.
//!
//! The table `responses` sits beside the ledger's `requests` in the same file, opened on
//! a connection of its own (WAL, as the ledger has it, so neither waits long on the
//! other). A request never waits on a write: a response goes into a `pending` map and
//! onto a channel, and one writer thread inserts it, prunes what is beyond the count
//! and age limits, and only then takes it out of `pending`. A read looks in `pending`
//! first, then in the table, so an answer is readable from the moment it was kept.
//!
//! Reads and deletes run on the request's own thread: they are one lookup by the
//! table's unique index on `id` in a table the limits keep small, far below a
//! millisecond, and `previous_response_id` needs the conversation before the request
//! can go anywhere, so handing the read to another thread would only add a hop.

use std::collections::HashMap;
use std::path::Path;
use std::sync::mpsc::{channel, Receiver, Sender};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{SystemTime, UNIX_EPOCH};

use rusqlite::{params, Connection, OptionalExtension};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::store::{StoreConfig, StoredResponse};
use crate::chat::{Image, Message, Part, Rare, Role, ToolCall};

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS responses (
    seq INTEGER PRIMARY KEY,
    id TEXT NOT NULL UNIQUE,
    owner TEXT NOT NULL,
    made_ms INTEGER NOT NULL,
    object TEXT NOT NULL,
    conversation TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS responses_made ON responses (made_ms);
";

/// A response on its way to the table.
struct Row {
    id: String,
    owner: Arc<str>,
    made_ms: i64,
    object: String,
    conversation: String,
}

enum Job {
    Put(Row),
    /// Write what came before, then stop.
    Stop,
}

/// What the requests and the writer share. Lock order: `connection`, then `pending`.
struct Tables {
    connection: Mutex<Connection>,
    /// Responses kept but not yet in the table, with the time they were made.
    pending: Mutex<HashMap<String, (StoredResponse, i64)>>,
    config: StoreConfig,
}

/// The stored responses in the database.
pub struct Database {
    tables: Arc<Tables>,
    sender: Mutex<Option<Sender<Job>>>,
    writer: Mutex<Option<JoinHandle<()>>>,
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

impl Tables {
    fn max_age_ms(&self) -> i64 {
        i64::try_from(self.config.store_max_age_secs.saturating_mul(1000)).unwrap_or(i64::MAX)
    }

    fn fresh(&self, made_ms: i64, now: i64) -> bool {
        now.saturating_sub(made_ms) <= self.max_age_ms()
    }

    /// Deletes what has aged out, then the oldest beyond the count.
    fn prune(&self, connection: &Connection) -> rusqlite::Result<()> {
        connection.execute(
            "DELETE FROM responses WHERE made_ms < ?1",
            [now_ms().saturating_sub(self.max_age_ms())],
        )?;
        let keep = i64::try_from(self.config.store_max).unwrap_or(i64::MAX);
        connection.execute(
            "DELETE FROM responses WHERE seq NOT IN (SELECT seq FROM responses ORDER BY seq DESC LIMIT ?1)",
            [keep],
        )?;
        Ok(())
    }

    fn write(&self, row: &Row) {
        let Ok(connection) = self.connection.lock() else {
            return;
        };
        // A response deleted while it waited is not written.
        let wanted = self
            .pending
            .lock()
            .is_ok_and(|pending| pending.contains_key(&row.id));
        if wanted {
            let written = connection
                .execute(
                    "INSERT OR REPLACE INTO responses (id, owner, made_ms, object, conversation) VALUES (?1, ?2, ?3, ?4, ?5)",
                    params![row.id, &*row.owner, row.made_ms, row.object, row.conversation],
                )
                .and_then(|_| self.prune(&connection));
            if let Err(e) = written {
                log::warn!("stored responses: cannot write {}: {e}", row.id);
            }
        }
        if let Ok(mut pending) = self.pending.lock() {
            pending.remove(&row.id);
        }
    }
}

impl Database {
    /// Opens (creating when missing) the `responses` table in the database at `path`
    /// and starts its writer.
    pub fn open(path: &Path, config: StoreConfig) -> Result<Database, String> {
        let shown = path.display();
        if let Some(folder) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
            std::fs::create_dir_all(folder)
                .map_err(|e| format!("ledger.path {shown}: cannot create its folder: {e}"))?;
        }
        let connection =
            Connection::open(path).map_err(|e| format!("ledger.path {shown}: cannot open: {e}"))?;
        let prepared = (|| {
            connection.busy_timeout(std::time::Duration::from_secs(5))?;
            connection.pragma_update(None, "journal_mode", "WAL")?;
            connection.pragma_update(None, "synchronous", "NORMAL")?;
            connection.execute_batch(SCHEMA)
        })();
        prepared.map_err(|e| format!("ledger.path {shown}: stored responses: {e}"))?;
        let tables = Arc::new(Tables {
            connection: Mutex::new(connection),
            pending: Mutex::new(HashMap::new()),
            config,
        });
        // Limits lowered since the last run apply at once.
        if let Ok(connection) = tables.connection.lock() {
            tables
                .prune(&connection)
                .map_err(|e| format!("ledger.path {shown}: stored responses: {e}"))?;
        }
        let (sender, receiver) = channel();
        let for_writer = tables.clone();
        let writer = std::thread::Builder::new()
            .name("stored-responses".to_owned())
            .spawn(move || write_rows(&for_writer, &receiver))
            .map_err(|e| format!("cannot start the stored responses' writer: {e}"))?;
        Ok(Database {
            tables,
            sender: Mutex::new(Some(sender)),
            writer: Mutex::new(Some(writer)),
        })
    }

    pub fn put(&self, id: String, response: StoredResponse) {
        let conversation = match serde_json::to_string(
            &response
                .conversation
                .iter()
                .map(SavedMessage::from)
                .collect::<Vec<_>>(),
        ) {
            Ok(conversation) => conversation,
            Err(e) => {
                log::warn!("stored responses: cannot encode {id}: {e}");
                return;
            }
        };
        let made_ms = now_ms();
        let row = Row {
            id: id.clone(),
            owner: response.owner.clone(),
            made_ms,
            object: response.object.to_string(),
            conversation,
        };
        if let Ok(mut pending) = self.tables.pending.lock() {
            pending.insert(id, (response, made_ms));
        }
        let sent = self
            .sender
            .lock()
            .ok()
            .and_then(|sender| sender.as_ref().map(|sender| sender.send(Job::Put(row))));
        if !matches!(sent, Some(Ok(()))) {
            log::warn!("stored responses: the writer has stopped; a response is not kept");
        }
    }

    pub fn get(&self, id: &str, owner: &str) -> Option<StoredResponse> {
        let now = now_ms();
        if let Some((response, made_ms)) = self.tables.pending.lock().ok()?.get(id) {
            return (&*response.owner == owner && self.tables.fresh(*made_ms, now))
                .then(|| response.clone());
        }
        let connection = self.tables.connection.lock().ok()?;
        let row = connection
            .query_row(
                "SELECT made_ms, object, conversation FROM responses WHERE id = ?1 AND owner = ?2",
                params![id, owner],
                |row| {
                    Ok((
                        row.get::<_, i64>(0)?,
                        row.get::<_, String>(1)?,
                        row.get::<_, String>(2)?,
                    ))
                },
            )
            .optional();
        drop(connection);
        let (made_ms, object, conversation) = match row {
            Ok(row) => row?,
            Err(e) => {
                log::warn!("stored responses: cannot read {id}: {e}");
                return None;
            }
        };
        if !self.tables.fresh(made_ms, now) {
            return None;
        }
        let decoded = serde_json::from_str::<Value>(&object).and_then(|object| {
            serde_json::from_str::<Vec<SavedMessage>>(&conversation)
                .map(|messages| (object, messages))
        });
        match decoded {
            Ok((object, messages)) => Some(StoredResponse {
                owner: Arc::from(owner),
                object,
                conversation: Arc::new(
                    messages
                        .into_iter()
                        .filter_map(SavedMessage::into_message)
                        .collect(),
                ),
            }),
            Err(e) => {
                log::warn!("stored responses: {id} cannot be read back: {e}");
                None
            }
        }
    }

    pub fn delete(&self, id: &str, owner: &str) -> bool {
        let now = now_ms();
        let Ok(connection) = self.tables.connection.lock() else {
            return false;
        };
        // Under the connection's lock the writer cannot move this id from `pending` to
        // the table meanwhile; taking it out of `pending` keeps the writer from writing it.
        if let Ok(mut pending) = self.tables.pending.lock() {
            if let Some((response, made_ms)) = pending.get(id) {
                let mine = &*response.owner == owner && self.tables.fresh(*made_ms, now);
                if mine {
                    pending.remove(id);
                }
                return mine;
            }
        }
        let deleted = connection.execute(
            "DELETE FROM responses WHERE id = ?1 AND owner = ?2 AND made_ms >= ?3",
            params![id, owner, now.saturating_sub(self.tables.max_age_ms())],
        );
        match deleted {
            Ok(rows) => rows > 0,
            Err(e) => {
                log::warn!("stored responses: cannot delete {id}: {e}");
                false
            }
        }
    }

    /// Writes what is queued, then stops the writer.
    pub fn close(&self) {
        if let Some(sender) = self.sender.lock().ok().and_then(|mut s| s.take()) {
            let _ = sender.send(Job::Stop);
        }
        if let Some(writer) = self.writer.lock().ok().and_then(|mut w| w.take()) {
            let _ = writer.join();
        }
    }
}

fn write_rows(tables: &Tables, receiver: &Receiver<Job>) {
    while let Ok(Job::Put(row)) = receiver.recv() {
        tables.write(&row);
    }
}

/// A message as the table keeps it.
#[derive(Serialize, Deserialize)]
struct SavedMessage {
    role: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    parts: Vec<SavedPart>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    thinking: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    thinking_signature: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    tool_calls: Vec<SavedCall>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    tool_call_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    tool_name: Option<String>,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    tool_error: bool,
}

#[derive(Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
enum SavedPart {
    Text { text: String },
    ImageUrl { url: String },
    ImageData { mime: Option<String>, data: String },
}

#[derive(Serialize, Deserialize)]
struct SavedCall {
    id: Option<String>,
    name: String,
    arguments: String,
}

impl From<&Message<'static>> for SavedMessage {
    fn from(message: &Message<'static>) -> SavedMessage {
        let own = |text: &Option<std::borrow::Cow<'_, str>>| text.as_ref().map(|t| t.to_string());
        SavedMessage {
            role: message.role.as_str().to_owned(),
            parts: message
                .parts
                .iter()
                .map(|part| match part {
                    Part::Image(Image::Url(url)) => SavedPart::ImageUrl {
                        url: url.to_string(),
                    },
                    Part::Image(Image::Base64 { mime, data }) => SavedPart::ImageData {
                        mime: own(mime),
                        data: data.to_string(),
                    },
                    text => SavedPart::Text {
                        text: text.text().map(|t| t.into_owned()).unwrap_or_default(),
                    },
                })
                .collect(),
            thinking: message.thinking().map(ToString::to_string),
            thinking_signature: message.thinking_signature().map(ToString::to_string),
            tool_calls: message
                .tool_calls
                .iter()
                .map(|call| SavedCall {
                    id: own(&call.id),
                    name: call.name.to_string(),
                    arguments: call.arguments.to_string(),
                })
                .collect(),
            tool_call_id: own(&message.tool_call_id),
            tool_name: message.tool_name().map(ToString::to_string),
            tool_error: message.tool_error(),
        }
    }
}

impl SavedMessage {
    /// The message back; `None` for a role this gateway does not know (a row written by
    /// another version), which the conversation then goes without.
    fn into_message(self) -> Option<Message<'static>> {
        Some(Message {
            role: Role::parse(&self.role)?,
            parts: self
                .parts
                .into_iter()
                .map(|part| match part {
                    SavedPart::Text { text } => Part::Text(text.into()),
                    SavedPart::ImageUrl { url } => Part::Image(Image::Url(url.into())),
                    SavedPart::ImageData { mime, data } => Part::Image(Image::Base64 {
                        mime: mime.map(Into::into),
                        data: data.into(),
                    }),
                })
                .collect(),
            tool_calls: self
                .tool_calls
                .into_iter()
                .map(|call| ToolCall {
                    id: call.id.map(Into::into),
                    name: call.name.into(),
                    arguments: call.arguments.into(),
                })
                .collect(),
            tool_call_id: self.tool_call_id.map(Into::into),
            rare: Rare {
                thinking: self.thinking.map(Into::into),
                thinking_signature: self.thinking_signature.map(Into::into),
                tool_name: self.tool_name.map(Into::into),
                tool_error: self.tool_error,
            }
            .boxed(),
        })
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn scratch(name: &str) -> std::path::PathBuf {
        let dir = std::env::temp_dir().join(format!(
            "switchyard-saved-responses-{}-{name}",
            std::process::id()
        ));
        let _ = std::fs::remove_dir_all(&dir);
        dir.join("db/switchyard.db")
    }

    fn conversation() -> Vec<Message<'static>> {
        vec![
            Message::text(Role::User, "look"),
            Message {
                parts: vec![
                    Part::Text("here".into()),
                    Part::Image(Image::Url("https://example.com/a.png".into())),
                    Part::Image(Image::Base64 {
                        mime: Some("image/png".into()),
                        data: "iVBORw0KGgo=".into(),
                    }),
                ],
                ..Message::text(Role::User, "")
            },
            Message {
                tool_calls: vec![ToolCall {
                    id: Some("call_1".into()),
                    name: "ls".into(),
                    arguments: "{\"dir\":\".\"}".into(),
                }],
                rare: Rare {
                    thinking: Some("hmm".into()),
                    thinking_signature: Some("sig".into()),
                    ..Rare::default()
                }
                .boxed(),
                ..Message::text(Role::Assistant, "")
            },
            Message {
                tool_call_id: Some("call_1".into()),
                rare: Rare {
                    tool_name: Some("ls".into()),
                    tool_error: true,
                    ..Rare::default()
                }
                .boxed(),
                ..Message::text(Role::Tool, "no such dir")
            },
        ]
    }

    fn response(owner: &str) -> StoredResponse {
        StoredResponse {
            owner: Arc::from(owner),
            object: json!({"id": "resp_1", "output": []}),
            conversation: Arc::new(conversation()),
        }
    }

    #[test]
    fn a_reopened_database_gives_back_what_was_kept() {
        let path = scratch("reopen");
        let first = Database::open(&path, StoreConfig::default()).unwrap();
        first.put("resp_1".into(), response("k"));
        // Readable at once, while the writer may not have written it yet.
        assert_eq!(first.get("resp_1", "k").unwrap().object["id"], "resp_1");
        first.close();
        let second = Database::open(&path, StoreConfig::default()).unwrap();
        let back = second.get("resp_1", "k").unwrap();
        assert_eq!(back.object, json!({"id": "resp_1", "output": []}));
        assert_eq!(*back.conversation, conversation());
        assert!(second.get("resp_1", "other").is_none());
        assert!(!second.delete("resp_1", "other"));
        assert!(second.delete("resp_1", "k"));
        assert!(second.get("resp_1", "k").is_none());
        second.close();
        let third = Database::open(&path, StoreConfig::default()).unwrap();
        assert!(third.get("resp_1", "k").is_none(), "a delete is kept too");
    }

    #[test]
    fn the_limits_hold_in_the_table() {
        let path = scratch("limits");
        let config = StoreConfig {
            store_max: 2,
            ..StoreConfig::default()
        };
        let store = Database::open(&path, config).unwrap();
        for id in ["r1", "r2", "r3"] {
            store.put(id.into(), response("k"));
        }
        store.close();
        let store = Database::open(&path, config).unwrap();
        assert!(store.get("r1", "k").is_none());
        assert!(store.get("r2", "k").is_some() && store.get("r3", "k").is_some());
        store.close();
        // A lower count on the next start applies at once.
        let one = StoreConfig {
            store_max: 1,
            ..config
        };
        let store = Database::open(&path, one).unwrap();
        assert!(store.get("r2", "k").is_none() && store.get("r3", "k").is_some());
        store.close();
        // And the age: nothing outlives a zero age.
        let aged = StoreConfig {
            store_max_age_secs: 0,
            ..config
        };
        let store = Database::open(&path, aged).unwrap();
        std::thread::sleep(std::time::Duration::from_millis(5));
        assert!(store.get("r3", "k").is_none());
        assert!(!store.delete("r3", "k"));
    }

    #[test]
    fn deleted_while_pending_is_never_written() {
        let path = scratch("pending");
        let store = Database::open(&path, StoreConfig::default()).unwrap();
        store.put("r".into(), response("k"));
        assert!(store.delete("r", "k"));
        store.close();
        let store = Database::open(&path, StoreConfig::default()).unwrap();
        assert!(store.get("r", "k").is_none());
    }
}

//! Stored responses of the OpenAI Responses API: what `store: true` keeps so that a later
//! request can continue the conversation by `previous_response_id`, and so that
//! `GET`/`DELETE /v1/responses/{id}` work.
//!
//! The store is shared by every worker, bounded by count and by age (the `[responses]`
//! section of the configuration): a gateway in front of small local models must not grow
//! without end because clients forget to delete. With the usage ledger on, it lives in
//! the ledger's SQLite database (`saved.rs`) and outlasts a restart; with it off, in
//! memory. [`ResponseStore`] is the one type the dialect sees either way. Each response belongs to
//! the key that made it; another key is told it does not exist, exactly as if it did not.
//!
//! A conversation is kept as canonical messages, not as wire items, so a continuation is
//! the same `ChatRequest` whatever backend answers it next.

use std::borrow::Cow;
use std::collections::{HashMap, VecDeque};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::Deserialize;
use serde_json::Value;

use super::saved::Database;
use crate::chat::{Image, Message, Part, Rare, ToolCall};

/// `[responses]`: how many stored responses are kept, and for how long.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StoreConfig {
    /// The most responses kept at once; the oldest goes first. 0 keeps none.
    #[serde(default = "default_store_max")]
    pub store_max: usize,
    /// How long a response is kept after it was made.
    #[serde(default = "default_store_max_age_secs")]
    pub store_max_age_secs: u64,
}

fn default_store_max() -> usize {
    1000
}
fn default_store_max_age_secs() -> u64 {
    86_400
}

impl Default for StoreConfig {
    fn default() -> Self {
        StoreConfig {
            store_max: default_store_max(),
            store_max_age_secs: default_store_max_age_secs(),
        }
    }
}

/// One stored response.
#[derive(Debug, Clone)]
pub struct StoredResponse {
    /// The key id of the caller that made it (`""` for anonymous callers).
    pub owner: Arc<str>,
    /// The response object as it was answered, for `GET`.
    pub object: Value,
    /// Every message of the conversation up to and including this response's output,
    /// without the instructions (which, as OpenAI has it, a continuation does not
    /// inherit).
    pub conversation: Arc<Vec<Message<'static>>>,
}

struct Entry {
    response: StoredResponse,
    made: Instant,
}

#[derive(Default)]
struct Inner {
    entries: HashMap<String, Entry>,
    /// Ids in the order they were stored, to drop the oldest first. Deleted ids stay
    /// here until their turn comes and are skipped then.
    order: VecDeque<String>,
}

/// The stored responses of every caller.
pub struct ResponseStore {
    config: StoreConfig,
    kept: Kept,
}

/// Where the responses are.
enum Kept {
    Memory(Mutex<Inner>),
    Database(Database),
}

impl ResponseStore {
    /// A store in memory, forgotten when the gateway stops.
    pub fn new(config: StoreConfig) -> ResponseStore {
        ResponseStore {
            config,
            kept: Kept::Memory(Mutex::new(Inner::default())),
        }
    }

    /// A store in the SQLite database at `database` when there is one (the usage
    /// ledger's file), in memory otherwise.
    pub fn open(config: StoreConfig, database: Option<&Path>) -> Result<ResponseStore, String> {
        Ok(match database {
            Some(path) => ResponseStore {
                config,
                kept: Kept::Database(Database::open(path, config)?),
            },
            None => ResponseStore::new(config),
        })
    }

    /// Writes what is waiting to be written; the store keeps nothing more after this.
    pub fn close(&self) {
        if let Kept::Database(database) = &self.kept {
            database.close();
        }
    }

    fn max_age(&self) -> Duration {
        Duration::from_secs(self.config.store_max_age_secs)
    }

    /// Keeps a response under `id`, dropping the oldest ones beyond the limits.
    pub fn put(&self, id: String, response: StoredResponse) {
        if self.config.store_max == 0 {
            return;
        }
        let inner = match &self.kept {
            Kept::Memory(inner) => inner,
            Kept::Database(database) => return database.put(id, response),
        };
        let Ok(mut inner) = inner.lock() else {
            return;
        };
        let now = Instant::now();
        let max_age = self.max_age();
        // Drop what is too old or too many, oldest first.
        while let Some(oldest) = inner.order.front().cloned() {
            let stale = inner
                .entries
                .get(&oldest)
                .is_none_or(|entry| now.duration_since(entry.made) > max_age);
            if !stale && inner.entries.len() < self.config.store_max {
                break;
            }
            inner.order.pop_front();
            inner.entries.remove(&oldest);
        }
        inner.order.push_back(id.clone());
        inner.entries.insert(
            id,
            Entry {
                response,
                made: now,
            },
        );
    }

    /// The response `id` if `owner` made it and it has not aged out.
    pub fn get(&self, id: &str, owner: &str) -> Option<StoredResponse> {
        let inner = match &self.kept {
            Kept::Memory(inner) => inner,
            Kept::Database(database) => return database.get(id, owner),
        };
        let inner = inner.lock().ok()?;
        let entry = inner.entries.get(id)?;
        (&*entry.response.owner == owner && entry.made.elapsed() <= self.max_age())
            .then(|| entry.response.clone())
    }

    /// Deletes the response `id` if `owner` made it; whether there was one to delete.
    pub fn delete(&self, id: &str, owner: &str) -> bool {
        let inner = match &self.kept {
            Kept::Memory(inner) => inner,
            Kept::Database(database) => return database.delete(id, owner),
        };
        let Ok(mut inner) = inner.lock() else {
            return false;
        };
        let max_age = self.max_age();
        let mine = inner.entries.get(id).is_some_and(|entry| {
            &*entry.response.owner == owner && entry.made.elapsed() <= max_age
        });
        if mine {
            inner.entries.remove(id);
        }
        mine
    }
}

/// A message that owns everything it holds, to outlive the request body it was read
/// from. A text kept as the client's JSON literal is decoded on the way.
pub fn owned_message(message: &Message<'_>) -> Message<'static> {
    let own = |text: &Cow<'_, str>| Cow::Owned(text.clone().into_owned());
    Message {
        role: message.role,
        parts: message
            .parts
            .iter()
            .map(|part| match part {
                Part::Image(Image::Url(url)) => Part::Image(Image::Url(own(url))),
                Part::Image(Image::Base64 { mime, data }) => Part::Image(Image::Base64 {
                    mime: mime.as_ref().map(own),
                    data: own(data),
                }),
                text => Part::Text(Cow::Owned(
                    text.text().map(Cow::into_owned).unwrap_or_default(),
                )),
            })
            .collect(),
        tool_calls: message
            .tool_calls
            .iter()
            .map(|call| ToolCall {
                id: call.id.as_ref().map(own),
                name: own(&call.name),
                arguments: own(&call.arguments),
            })
            .collect(),
        tool_call_id: message.tool_call_id.as_ref().map(own),
        rare: Rare {
            thinking: message.thinking().map(own),
            thinking_signature: message.thinking_signature().map(own),
            tool_name: message.tool_name().map(own),
            tool_error: message.tool_error(),
        }
        .boxed(),
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::chat::Role;

    fn response(owner: &str, text: &str) -> StoredResponse {
        StoredResponse {
            owner: Arc::from(owner),
            object: json!({"text": text}),
            conversation: Arc::new(vec![Message::text(Role::User, text.to_owned())]),
        }
    }

    #[test]
    fn only_the_owner_reads_or_deletes() {
        let store = ResponseStore::new(StoreConfig::default());
        store.put("resp_a".into(), response("key-a", "one"));
        assert!(store.get("resp_a", "key-b").is_none());
        assert!(store.get("resp_a", "").is_none());
        assert!(!store.delete("resp_a", "key-b"));
        assert_eq!(store.get("resp_a", "key-a").unwrap().object["text"], "one");
        assert!(store.delete("resp_a", "key-a"));
        assert!(store.get("resp_a", "key-a").is_none());
        assert!(!store.delete("resp_a", "key-a"));
    }

    #[test]
    fn the_oldest_go_first_beyond_the_count() {
        let store = ResponseStore::new(StoreConfig {
            store_max: 2,
            ..StoreConfig::default()
        });
        for id in ["r1", "r2", "r3"] {
            store.put(id.into(), response("k", id));
        }
        assert!(store.get("r1", "k").is_none());
        assert!(store.get("r2", "k").is_some() && store.get("r3", "k").is_some());
        // A deleted id frees its place.
        assert!(store.delete("r2", "k"));
        store.put("r4".into(), response("k", "r4"));
        assert!(store.get("r3", "k").is_some() && store.get("r4", "k").is_some());
        let none = ResponseStore::new(StoreConfig {
            store_max: 0,
            ..StoreConfig::default()
        });
        none.put("r".into(), response("k", "r"));
        assert!(none.get("r", "k").is_none());
    }

    #[test]
    fn aged_responses_are_gone() {
        let store = ResponseStore::new(StoreConfig {
            store_max_age_secs: 0,
            ..StoreConfig::default()
        });
        store.put("r".into(), response("k", "r"));
        std::thread::sleep(Duration::from_millis(5));
        assert!(store.get("r", "k").is_none());
        assert!(!store.delete("r", "k"));
    }

    #[test]
    fn the_limits_come_from_the_responses_section() {
        let config = crate::config::Config::from_toml(
            "[responses]\nstore_max = 5\nstore_max_age_secs = 60\n",
        )
        .unwrap();
        assert_eq!(
            config.responses,
            StoreConfig {
                store_max: 5,
                store_max_age_secs: 60
            }
        );
        assert_eq!(
            crate::config::Config::from_toml("").unwrap().responses,
            StoreConfig::default()
        );
        let misspelt = crate::config::Config::from_toml("[responses]\nstore_maximum = 5\n");
        assert!(misspelt.unwrap_err().0.contains("store_maximum"));
    }

    #[test]
    fn owned_messages_decode_literals() {
        let literal: &serde_json::value::RawValue = serde_json::from_str(r#""a\nb""#).unwrap();
        let message = Message {
            parts: vec![Part::from_literal(literal).unwrap()],
            ..Message::text(Role::User, "")
        };
        let owned = owned_message(&message);
        assert_eq!(owned.parts, vec![Part::Text("a\nb".into())]);
        assert!(matches!(owned.parts[0], Part::Text(Cow::Owned(_))));
    }
}

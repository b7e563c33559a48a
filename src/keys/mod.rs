//! The keys file: who may come in, and what each key may do.
//!
//! The file is a JSON object from API key to entry. An entry is a user name (the
//! original form, `{"sk-abc": "alice"}`) or an object that adds permissions and limits:
//! `{"user": "alice", "models": ["ollama/*"], "rpm": 60, "tpm": 200000,
//! "max_concurrent": 2, "tokens_per_day": 1000000, "expires": "2027-01-31T00:00:00Z",
//! "disabled": false, "note": "laptop", "admin": false}`. Every field but `user` is
//! optional. [`KeyEntry`] is the entry as written; [`KeyPolicy`] is the same entry
//! checked once into what the request path needs (compiled globs, a timestamp).
//!
//! Reading and atomic editing live in `file`, the `switchyard keys` command in `cli`;
//! the gateway's key store (`auth`) builds on [`parse`].

pub mod cli;
pub mod file;

use std::fmt;
use std::sync::Arc;

use globset::{Glob, GlobSet, GlobSetBuilder};
use indexmap::IndexMap;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// One entry as the keys file writes it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeyEntry {
    /// Who the key belongs to: what metrics, logs and the usage ledger record.
    pub user: String,
    /// `*` globs over the model name the client sends (before aliases resolve); none
    /// means every model.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub models: Vec<String>,
    /// Requests per minute.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rpm: Option<u64>,
    /// Tokens per minute, counted from the usage backends report.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tpm: Option<u64>,
    /// Requests in flight at once.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_concurrent: Option<u64>,
    /// Tokens per UTC day, counted from the usage ledger.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tokens_per_day: Option<u64>,
    /// RFC 3339 time after which the key no longer works.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires: Option<String>,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub disabled: bool,
    /// Free text for whoever manages the keys ("laptop", "Tom's scripts").
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
    /// May use the operational routes and the console.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub admin: bool,
}

impl KeyEntry {
    /// An entry with nothing but its user, written back in the original short form.
    pub fn is_plain(&self) -> bool {
        *self
            == KeyEntry {
                user: self.user.clone(),
                ..KeyEntry::default()
            }
    }
}

/// An entry in either form, as read from the file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
enum WrittenEntry {
    User(String),
    Entry(KeyEntry),
}

/// The whole file, in the order it was written.
pub type KeyEntries = IndexMap<String, KeyEntry>;

/// A `models` glob that needs no glob engine. globset's `*` matches any run of
/// characters, `/` included (its default), so a glob with one `*` at its end and no
/// other special character matches exactly the names that start with what comes before.
#[derive(Debug, Clone, PartialEq, Eq)]
enum SimpleGlob {
    Exactly(String),
    StartsWith(String),
}

impl SimpleGlob {
    /// The glob as a plain comparison, when it is one.
    fn of(pattern: &str) -> Option<SimpleGlob> {
        let special = |text: &str| text.contains(['*', '?', '[', ']', '{', '}', '\\']);
        match pattern.strip_suffix('*') {
            Some(start) if !special(start) => Some(SimpleGlob::StartsWith(start.to_owned())),
            Some(_) => None,
            None if !special(pattern) => Some(SimpleGlob::Exactly(pattern.to_owned())),
            None => None,
        }
    }

    fn matches(&self, model: &str) -> bool {
        match self {
            SimpleGlob::Exactly(name) => model == name,
            SimpleGlob::StartsWith(start) => model.starts_with(start.as_str()),
        }
    }
}

/// A key's entry checked into what the request path uses.
#[derive(Debug, Clone)]
pub struct KeyPolicy {
    pub user: Arc<str>,
    /// A short digest of the key: names it in the ledger and logs without giving it away.
    pub key_id: Arc<str>,
    /// The key as `sk-…a1b2`, for messages and listings.
    pub masked: String,
    models: Option<GlobSet>,
    /// The same globs when each is a plain name or a name's start then one `*` (what
    /// keys nearly always hold): matched by comparing strings, at a fraction of the
    /// glob engine's cost on every request. `None` when any glob needs the engine.
    simple_models: Option<Vec<SimpleGlob>>,
    /// The globs as written, for messages.
    patterns: Vec<String>,
    pub rpm: Option<u64>,
    pub tpm: Option<u64>,
    pub max_concurrent: Option<u64>,
    pub tokens_per_day: Option<u64>,
    pub expires: Option<jiff::Timestamp>,
    pub disabled: bool,
    pub admin: bool,
    /// The key's rate-limit counts, once the limits have looked them up.
    pub counts: crate::limits::CountsCache,
}

impl KeyPolicy {
    /// Whether the key may ask for `model` (the name as the client sent it).
    pub fn allows_model(&self, model: &str) -> bool {
        match (&self.models, &self.simple_models) {
            (None, _) => true,
            (Some(_), Some(simple)) => simple.iter().any(|glob| glob.matches(model)),
            (Some(set), None) => set.is_match(model),
        }
    }

    /// The `models` globs as written (empty: every model).
    pub fn model_patterns(&self) -> &[String] {
        &self.patterns
    }

    /// Whether the key has any per-key limit, so answers carry rate-limit headers.
    pub fn is_limited(&self) -> bool {
        self.rpm.is_some() || self.tpm.is_some() || self.tokens_per_day.is_some()
    }

    /// Why the key cannot be used at `now`, if it cannot.
    pub fn refusal(&self, now: jiff::Timestamp) -> Option<String> {
        if self.disabled {
            return Some(format!("API key {} is disabled", self.masked));
        }
        match self.expires {
            Some(expires) if expires <= now => {
                Some(format!("API key {} expired at {expires}", self.masked))
            }
            _ => None,
        }
    }
}

/// A keys-file problem, naming the entry by its user.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeysError(pub String);

impl fmt::Display for KeysError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for KeysError {}

/// Reads the file's text into entries, in order, each checked.
pub fn parse(text: &str) -> Result<KeyEntries, KeysError> {
    let written: IndexMap<String, serde_json::Value> = serde_json::from_str(text)
        .map_err(|e| KeysError(format!("not a JSON object of key to entry: {e}")))?;
    let mut entries = KeyEntries::with_capacity(written.len());
    for (key, value) in written {
        let entry = match value {
            serde_json::Value::String(user) => KeyEntry {
                user,
                ..KeyEntry::default()
            },
            serde_json::Value::Object(_) => {
                // Named before the fields are read, so that any problem can say whose.
                let user = value
                    .get("user")
                    .and_then(serde_json::Value::as_str)
                    .map(str::to_owned);
                let who = match &user {
                    Some(user) => format!("the entry of user \"{user}\""),
                    None => format!("the entry of key {}", mask(&key)),
                };
                let entry: KeyEntry = serde_path_to_error::deserialize(value)
                    .map_err(|e| KeysError(format!("{who}: {}: {}", e.path(), e.inner())))?;
                entry
            }
            _ => {
                return Err(KeysError(format!(
                    "the entry of key {} must be a user name or an object with \"user\"",
                    mask(&key)
                )))
            }
        };
        policy(&key, &entry)?;
        entries.insert(key, entry);
    }
    Ok(entries)
}

/// Writes entries back as the file's text: short form where an entry is only a user,
/// one entry per line so that a diff shows which key changed.
pub fn render(entries: &KeyEntries) -> String {
    let mut text = String::from("{\n");
    for (at, (key, entry)) in entries.iter().enumerate() {
        let written = if entry.is_plain() {
            WrittenEntry::User(entry.user.clone())
        } else {
            WrittenEntry::Entry(entry.clone())
        };
        // Strings and plain structs always serialise.
        let key = serde_json::to_string(key).unwrap_or_default();
        let value = serde_json::to_string(&written).unwrap_or_default();
        text.push_str(&format!("  {key}: {value}"));
        text.push_str(if at + 1 < entries.len() { ",\n" } else { "\n" });
    }
    text.push_str("}\n");
    text
}

/// Checks one entry into its policy.
pub fn policy(key: &str, entry: &KeyEntry) -> Result<KeyPolicy, KeysError> {
    let who = || format!("the entry of user \"{}\"", entry.user);
    if key.trim().is_empty() || key.trim() != key {
        return Err(KeysError(format!(
            "{}: the key must be non-empty, without surrounding spaces",
            who()
        )));
    }
    if entry.user.trim().is_empty() {
        return Err(KeysError(format!(
            "the entry of key {}: user must not be empty",
            mask(key)
        )));
    }
    let models = if entry.models.is_empty() {
        None
    } else {
        let mut set = GlobSetBuilder::new();
        for pattern in &entry.models {
            let glob = Glob::new(pattern)
                .map_err(|e| KeysError(format!("{}: models: \"{pattern}\": {e}", who())))?;
            set.add(glob);
        }
        Some(
            set.build()
                .map_err(|e| KeysError(format!("{}: models: {e}", who())))?,
        )
    };
    let expires = entry
        .expires
        .as_deref()
        .map(parse_time)
        .transpose()
        .map_err(|e| KeysError(format!("{}: expires: {e}", who())))?;
    if entry.max_concurrent == Some(0) {
        return Err(KeysError(format!(
            "{}: max_concurrent must be at least 1 (set disabled to stop a key)",
            who()
        )));
    }
    Ok(KeyPolicy {
        user: Arc::from(entry.user.as_str()),
        key_id: Arc::from(key_id(key).as_str()),
        masked: mask(key),
        simple_models: models.as_ref().and_then(|_| {
            entry
                .models
                .iter()
                .map(|pattern| SimpleGlob::of(pattern))
                .collect()
        }),
        models,
        patterns: entry.models.clone(),
        rpm: entry.rpm,
        tpm: entry.tpm,
        max_concurrent: entry.max_concurrent,
        tokens_per_day: entry.tokens_per_day,
        expires,
        disabled: entry.disabled,
        admin: entry.admin,
        counts: crate::limits::CountsCache::new(),
    })
}

/// An RFC 3339 time (`2027-01-31T00:00:00Z`), or a date (`2027-01-31`, its UTC midnight).
pub fn parse_time(text: &str) -> Result<jiff::Timestamp, String> {
    if let Ok(time) = text.parse::<jiff::Timestamp>() {
        return Ok(time);
    }
    text.parse::<jiff::civil::Date>()
        .ok()
        .and_then(|date| format!("{date}T00:00:00Z").parse::<jiff::Timestamp>().ok())
        .ok_or_else(|| {
            format!("\"{text}\" is not a time like 2027-01-31T00:00:00Z or a date like 2027-01-31")
        })
}

/// The key as `sk-…a1b2`: its prefix and last four characters, enough to tell keys
/// apart in a listing, too little to use.
pub fn mask(key: &str) -> String {
    let chars: Vec<char> = key.chars().collect();
    if chars.len() < 12 {
        let tail: String = chars[chars.len().saturating_sub(2)..].iter().collect();
        return format!("…{tail}");
    }
    let prefix: String = match key.find('-') {
        Some(dash) if dash <= 5 => key[..=dash].to_owned(),
        _ => String::new(),
    };
    let tail: String = chars[chars.len() - 4..].iter().collect();
    format!("{prefix}…{tail}")
}

/// A short digest of the key (12 hex digits of its SHA-256): names the key in the
/// ledger and the logs without revealing it.
pub fn key_id(key: &str) -> String {
    let digest = Sha256::digest(key.as_bytes());
    digest[..6].iter().map(|b| format!("{b:02x}")).collect()
}

/// A new key: `sk-` and 43 characters of base64url from 32 bytes of the operating
/// system's random source.
pub fn generate() -> Result<String, KeysError> {
    use base64::Engine;
    let mut bytes = [0u8; 32];
    getrandom::fill(&mut bytes)
        .map_err(|e| KeysError(format!("the system's random source failed: {e}")))?;
    Ok(format!(
        "sk-{}",
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn simple_globs_match_what_the_glob_engine_matches() {
        let names = [
            "",
            "chat",
            "chat2",
            "oa/",
            "oa/mock-model",
            "oa/a/b",
            "OA/x",
            "ollama/llama3",
            "ollama/llama3.1:8b",
            "x",
            "a.b",
            "a.bc",
            "oa",
            "*",
        ];
        let simple = ["oa/*", "chat", "*", "ollama/llama3*", "a.b*", "x", "oa"];
        let engine_only = ["oa/*-mini", "{oa,ol}/*", "m?del", "[ab]*", "oa/**", "a\\*"];
        for pattern in simple.iter().chain(&engine_only) {
            let glob = Glob::new(pattern).unwrap().compile_matcher();
            let policy = policy(
                "sk-glob-0123456789",
                &KeyEntry {
                    user: "g".into(),
                    models: vec![(*pattern).to_owned()],
                    ..KeyEntry::default()
                },
            )
            .unwrap();
            assert_eq!(
                policy.simple_models.is_some(),
                simple.contains(pattern),
                "{pattern}"
            );
            for name in names {
                assert_eq!(
                    policy.allows_model(name),
                    glob.is_match(name),
                    "{pattern} against {name}"
                );
            }
        }
    }

    #[test]
    fn both_forms_read_in_order_and_write_back_the_same() {
        let text = r#"{"sk-old-style-key-1": "alice", "sk-rich-entry-key-2": {"user": "bob", "models": ["ollama/*", "chat"], "rpm": 60, "tpm": 200000, "max_concurrent": 2, "tokens_per_day": 1000000, "expires": "2027-01-31T00:00:00Z", "disabled": false, "note": "laptop"}}"#;
        let entries = parse(text).unwrap();
        let users: Vec<&str> = entries.values().map(|e| e.user.as_str()).collect();
        assert_eq!(users, ["alice", "bob"]);
        let bob = &entries["sk-rich-entry-key-2"];
        assert_eq!(bob.rpm, Some(60));
        assert_eq!(bob.note.as_deref(), Some("laptop"));
        let written = render(&entries);
        assert!(
            written.contains(r#""sk-old-style-key-1": "alice""#),
            "{written}"
        );
        assert_eq!(parse(&written).unwrap(), entries);
    }

    #[test]
    fn problems_name_the_entry_by_its_user() {
        let cases = [
            (
                r#"{"k-123456789": {"user": "bob", "rpmm": 1}}"#,
                "\"bob\": rpmm",
            ),
            (
                r#"{"k-123456789": {"user": "bob", "rpm": -1}}"#,
                "\"bob\": rpm",
            ),
            (
                r#"{"k-123456789": {"user": "bob", "models": ["a[" ]}}"#,
                "\"bob\": models",
            ),
            (
                r#"{"k-123456789": {"user": "bob", "expires": "soon"}}"#,
                "\"bob\": expires",
            ),
            (
                r#"{"k-123456789": {"user": "bob", "max_concurrent": 0}}"#,
                "\"bob\": max_concurrent",
            ),
            (r#"{"k-123456789": {"models": []}}"#, "user"),
            (r#"{"k-123456789": 7}"#, "user name or an object"),
        ];
        for (text, expected) in cases {
            let error = parse(text).unwrap_err().to_string();
            assert!(error.contains(expected), "{text}: {error}");
            assert!(
                !error.contains("k-123456789"),
                "the key stays masked: {error}"
            );
        }
    }

    #[test]
    fn globs_match_the_name_the_client_sent() {
        let entry = KeyEntry {
            user: "alice".into(),
            models: vec!["ollama/*".into(), "chat".into()],
            ..KeyEntry::default()
        };
        let policy = policy("sk-0123456789abcdef", &entry).unwrap();
        assert!(policy.allows_model("ollama/llama3:instruct"));
        assert!(policy.allows_model("ollama/hf.co/x/y:q4"));
        assert!(policy.allows_model("chat"));
        assert!(!policy.allows_model("openai/gpt-4o"));
        assert!(!policy.allows_model("chatter"));
        let open = super::policy("sk-0123456789abcdef", &KeyEntry::default());
        assert!(open.is_err(), "a user is required");
    }

    #[test]
    fn disabled_and_expired_keys_say_which() {
        let now: jiff::Timestamp = "2026-12-03T00:00:00Z".parse().unwrap();
        let mut entry = KeyEntry {
            user: "alice".into(),
            expires: Some("2026-12-02".into()),
            ..KeyEntry::default()
        };
        let expired = policy("sk-0123456789abcdef", &entry).unwrap();
        assert!(expired.refusal(now).unwrap().contains("expired"));
        entry.expires = Some("2027-01-31T00:00:00Z".into());
        assert!(policy("sk-0123456789abcdef", &entry)
            .unwrap()
            .refusal(now)
            .is_none());
        entry.disabled = true;
        let disabled = policy("sk-0123456789abcdef", &entry).unwrap();
        assert_eq!(
            disabled.refusal(now).unwrap(),
            "API key sk-…cdef is disabled"
        );
    }

    #[test]
    fn masks_ids_and_generated_keys() {
        assert_eq!(mask("sk-abcdefghijkla1b2"), "sk-…a1b2");
        assert_eq!(mask("short"), "…rt");
        assert_eq!(mask("nodashatallinthiskey"), "…skey");
        assert_eq!(key_id("sk-x").len(), 12);
        let a = generate().unwrap();
        let b = generate().unwrap();
        assert_ne!(a, b);
        assert!(a.starts_with("sk-") && a.len() == 46, "{a}");
    }
}

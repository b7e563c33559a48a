//! `switchyard keys`: list, add, disable, enable and remove keys in the configured keys
//! file. The running gateway picks every change up within about a second.

use std::path::Path;

use clap::Subcommand;

use super::{file, generate, mask, parse_time, policy, KeyEntries, KeyEntry, KeysError};

/// What `switchyard keys` can do.
#[derive(Debug, Subcommand)]
pub enum KeysCommand {
    /// List every key: user, masked key, models, limits, state, expiry, note.
    List {
        /// One JSON object per key instead of a table (keys stay masked).
        #[arg(long)]
        json: bool,
    },
    /// Add a key for USER; a strong random key is generated (and printed once) unless
    /// --key gives one.
    Add {
        user: String,
        /// A model the key may use: a name or a `*` glob (`ollama/*`); repeat for more.
        /// Without any, every model.
        #[arg(long = "models", value_name = "GLOB")]
        models: Vec<String>,
        /// Requests per minute.
        #[arg(long, value_name = "N")]
        rpm: Option<u64>,
        /// Tokens per minute.
        #[arg(long, value_name = "N")]
        tpm: Option<u64>,
        /// Requests in flight at once.
        #[arg(long, value_name = "N")]
        max_concurrent: Option<u64>,
        /// Tokens per UTC day.
        #[arg(long, value_name = "N")]
        tokens_per_day: Option<u64>,
        /// When the key stops working: 2027-01-31 or 2027-01-31T00:00:00Z.
        #[arg(long, value_name = "DATE")]
        expires: Option<String>,
        /// Free text shown in listings ("laptop").
        #[arg(long, value_name = "TEXT")]
        note: Option<String>,
        /// May use the operational routes (/metrics, /health detail) and the console.
        #[arg(long)]
        admin: bool,
        /// Use this key instead of generating one.
        #[arg(long, value_name = "KEY")]
        key: Option<String>,
    },
    /// Stop a key (or every key of a user) from working, keeping its entry.
    Disable { key_or_user: String },
    /// Let a disabled key (or every key of a user) work again.
    Enable { key_or_user: String },
    /// Remove a key (or every key of a user).
    Remove { key_or_user: String },
}

/// Runs one `keys` command against the keys file that `config` names; what it prints
/// goes to standard output, problems come back as errors.
pub fn run(config: Option<&Path>, command: KeysCommand) -> Result<String, KeysError> {
    let path = file::configured_path(config)?;
    match command {
        KeysCommand::List { json } => {
            let entries = file::load(&path)?;
            Ok(if json {
                list_json(&entries)
            } else {
                list_table(&entries)
            })
        }
        KeysCommand::Add {
            user,
            models,
            rpm,
            tpm,
            max_concurrent,
            tokens_per_day,
            expires,
            note,
            admin,
            key,
        } => {
            let new = NewKey {
                user,
                models,
                rpm,
                tpm,
                max_concurrent,
                tokens_per_day,
                expires,
                note,
                admin,
                key,
            };
            let user = new.user.clone();
            let added = add(&path, new).map_err(|e| match e {
                AddError::Expires(e) => KeysError(format!("--expires: {e}")),
                AddError::Other(e) => e,
            })?;
            Ok(if added.generated {
                format!(
                    "added a key for {user} to {}; it is shown only this once:\n{}\n",
                    path.display(),
                    added.key
                )
            } else {
                format!(
                    "added key {} for {user} to {}\n",
                    mask(&added.key),
                    path.display()
                )
            })
        }
        KeysCommand::Disable { key_or_user } => done(
            set_disabled(&path, Select::KeyOrUser(&key_or_user), true)?,
            "disabled",
        ),
        KeysCommand::Enable { key_or_user } => done(
            set_disabled(&path, Select::KeyOrUser(&key_or_user), false)?,
            "enabled",
        ),
        KeysCommand::Remove { key_or_user } => {
            done(remove(&path, Select::KeyOrUser(&key_or_user))?, "removed")
        }
    }
}

fn done(touched: Vec<String>, what: &str) -> Result<String, KeysError> {
    Ok(touched
        .iter()
        .map(|key| format!("{what} {key}\n"))
        .collect())
}

/// A key to add, as `keys add` and the console take it.
#[derive(Debug, Clone, Default)]
pub struct NewKey {
    pub user: String,
    pub models: Vec<String>,
    pub rpm: Option<u64>,
    pub tpm: Option<u64>,
    pub max_concurrent: Option<u64>,
    pub tokens_per_day: Option<u64>,
    /// A date or an RFC 3339 time; written back as a time.
    pub expires: Option<String>,
    pub note: Option<String>,
    pub admin: bool,
    /// The key itself; generated when absent.
    pub key: Option<String>,
}

/// A key that was added.
#[derive(Debug, Clone)]
pub struct Added {
    pub key: String,
    /// Whether the key was generated (and so must be shown, once).
    pub generated: bool,
}

/// Why a key was not added: its expiry does not read as a time (each caller names that
/// field its own way), or anything else the entry's checks or the file said.
#[derive(Debug, Clone)]
pub enum AddError {
    Expires(String),
    Other(KeysError),
}

impl From<KeysError> for AddError {
    fn from(e: KeysError) -> Self {
        AddError::Other(e)
    }
}

/// Checks a new key's entry as the gateway will and adds it under the file's lock: the
/// one way both `keys add` and the console add a key.
pub fn add(path: &Path, new: NewKey) -> Result<Added, AddError> {
    let generated = new.key.is_none();
    let key = match new.key {
        Some(key) => key,
        None => generate()?,
    };
    let expires = match new.expires {
        Some(text) => Some(parse_time(&text).map_err(AddError::Expires)?.to_string()),
        None => None,
    };
    let entry = KeyEntry {
        user: new.user,
        models: new.models,
        rpm: new.rpm,
        tpm: new.tpm,
        max_concurrent: new.max_concurrent,
        tokens_per_day: new.tokens_per_day,
        expires,
        disabled: false,
        note: new.note,
        admin: new.admin,
    };
    policy(&key, &entry)?;
    file::edit(path, |entries| {
        if entries.contains_key(&key) {
            return Err(KeysError(format!(
                "key {} is already in {}",
                mask(&key),
                path.display()
            )));
        }
        entries.insert(key.clone(), entry);
        Ok(())
    })?;
    Ok(Added { key, generated })
}

/// Which keys an operation applies to.
#[derive(Debug, Clone, Copy)]
pub enum Select<'a> {
    /// The key itself, or else every key of the user so named (`keys disable alice`).
    KeyOrUser(&'a str),
    /// The key whose short digest ([`super::key_id`]) this is: how the console names a
    /// key without holding it.
    KeyId(&'a str),
}

/// Disables (or enables again) the keys selected; each comes back masked, with its user.
pub fn set_disabled(
    path: &Path,
    select: Select<'_>,
    disabled: bool,
) -> Result<Vec<String>, KeysError> {
    change(path, select, |entry| {
        entry.disabled = disabled;
        true
    })
}

/// Removes the keys selected; each comes back masked, with its user.
pub fn remove(path: &Path, select: Select<'_>) -> Result<Vec<String>, KeysError> {
    change(path, select, |_| false)
}

/// Applies `apply` to the keys selected; an entry for which it answers false is removed.
fn change(
    path: &Path,
    select: Select<'_>,
    apply: impl Fn(&mut KeyEntry) -> bool,
) -> Result<Vec<String>, KeysError> {
    file::edit(path, |entries| {
        let chosen: Vec<String> = match select {
            Select::KeyOrUser(key_or_user) if entries.contains_key(key_or_user) => {
                vec![key_or_user.to_owned()]
            }
            Select::KeyOrUser(user) => entries
                .iter()
                .filter(|(_, entry)| entry.user == user)
                .map(|(key, _)| key.clone())
                .collect(),
            Select::KeyId(id) => entries
                .keys()
                .filter(|key| super::key_id(key) == id)
                .cloned()
                .collect(),
        };
        let key_or_user = match select {
            Select::KeyOrUser(name) | Select::KeyId(name) => name,
        };
        if chosen.is_empty() {
            return Err(KeysError(format!(
                "no key or user \"{}\" in {}",
                // A mistyped key is still a secret.
                if key_or_user.len() >= 12 && matches!(select, Select::KeyOrUser(_)) {
                    mask(key_or_user)
                } else {
                    key_or_user.to_owned()
                },
                path.display()
            )));
        }
        let mut touched = Vec::with_capacity(chosen.len());
        for key in chosen {
            let user = entries
                .get(&key)
                .map(|e| e.user.clone())
                .unwrap_or_default();
            let keep = entries.get_mut(&key).map(&apply).unwrap_or(true);
            if !keep {
                entries.shift_remove(&key);
            }
            touched.push(format!("{} ({user})", mask(&key)));
        }
        Ok(touched)
    })
}

fn limits(entry: &KeyEntry) -> String {
    let limits: Vec<String> = [
        ("rpm", entry.rpm),
        ("tpm", entry.tpm),
        ("concurrent", entry.max_concurrent),
        ("per day", entry.tokens_per_day),
    ]
    .iter()
    .filter_map(|(name, value)| value.map(|value| format!("{name} {value}")))
    .collect();
    if limits.is_empty() {
        "-".to_owned()
    } else {
        limits.join(", ")
    }
}

fn list_table(entries: &KeyEntries) -> String {
    let header = [
        "USER", "KEY", "MODELS", "LIMITS", "STATE", "EXPIRES", "NOTE",
    ]
    .map(String::from);
    let mut rows = vec![header];
    for (key, entry) in entries {
        rows.push([
            entry.user.clone(),
            mask(key),
            if entry.models.is_empty() {
                "*".to_owned()
            } else {
                entry.models.join(" ")
            },
            limits(entry),
            match (entry.disabled, entry.admin) {
                (true, _) => "disabled".to_owned(),
                (false, true) => "admin".to_owned(),
                (false, false) => "active".to_owned(),
            },
            entry.expires.clone().unwrap_or_else(|| "-".to_owned()),
            entry.note.clone().unwrap_or_default(),
        ]);
    }
    let widths: Vec<usize> = (0..7)
        .map(|column| {
            rows.iter()
                .map(|row| row[column].chars().count())
                .max()
                .unwrap_or(0)
        })
        .collect();
    let mut out = String::new();
    for row in &rows {
        let cells: Vec<String> = row
            .iter()
            .zip(&widths)
            .map(|(cell, width)| format!("{cell:<width$}"))
            .collect();
        out.push_str(cells.join("  ").trim_end());
        out.push('\n');
    }
    out
}

fn list_json(entries: &KeyEntries) -> String {
    entries
        .iter()
        .map(|(key, entry)| {
            let mut value = serde_json::to_value(entry).unwrap_or_default();
            value["key"] = serde_json::Value::from(mask(key));
            format!("{value}\n")
        })
        .collect()
}

//! API keys: the key store (re-read when its file changes) and the check each dialect's
//! scope makes before its routes.
//!
//! Keys are kept only as SHA-256 digests and every presented key is compared against
//! all of them in constant time, so neither timing nor a memory dump gives a key away.
//! Keys never reach a log line.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant, SystemTime};

use actix_web::dev::ServiceRequest;
use actix_web::{web, HttpMessage};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::error::GatewayError;

/// How often the keys file is looked at for changes.
const RELOAD_CHECK_INTERVAL: Duration = Duration::from_secs(1);

/// The user a request was authenticated as (absent when serving anonymously).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct User(pub Arc<str>);

/// SHA-256 digests of the keys, each with its user.
type Digests = Vec<([u8; 32], Arc<str>)>;
/// A file's modification time and length: what tells that it changed.
type Stamp = Option<(SystemTime, u64)>;

struct KeySet {
    digests: Digests,
    /// The file's stamp when it was read.
    stamp: Stamp,
    checked_at: Instant,
}

/// The configured keys, shared by all workers.
pub struct KeyStore {
    path: Option<PathBuf>,
    keys: RwLock<KeySet>,
    /// Whether requests may go unauthenticated when no key is configured: only on a
    /// loopback address or with `auth.allow_anonymous`. Checked on every request, so a
    /// keys file emptied while serving on a public address locks the door, not opens it.
    anonymous_allowed: bool,
}

fn digest(key: &str) -> [u8; 32] {
    Sha256::digest(key.as_bytes()).into()
}

fn read_keys(path: &PathBuf) -> Result<(Digests, Stamp), String> {
    let stamp = std::fs::metadata(path)
        .ok()
        .and_then(|m| Some((m.modified().ok()?, m.len())));
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("auth.keys_file {} cannot be read: {e}", path.display()))?;
    let map: HashMap<String, String> = serde_json::from_str(&text).map_err(|e| {
        format!(
            "auth.keys_file {} is not a JSON object of key to user name: {e}",
            path.display()
        )
    })?;
    if map.keys().any(String::is_empty) {
        return Err(format!(
            "auth.keys_file {} holds an empty key",
            path.display()
        ));
    }
    let digests = map
        .into_iter()
        .map(|(key, user)| (digest(&key), Arc::from(user)))
        .collect();
    Ok((digests, stamp))
}

impl KeyStore {
    /// Reads the keys file, if one is configured; a broken file at start is an error.
    pub fn load(path: Option<PathBuf>, anonymous_allowed: bool) -> Result<KeyStore, String> {
        let (digests, stamp) = match &path {
            Some(path) => read_keys(path)?,
            None => (Vec::new(), None),
        };
        Ok(KeyStore {
            path,
            keys: RwLock::new(KeySet {
                digests,
                stamp,
                checked_at: Instant::now(),
            }),
            anonymous_allowed,
        })
    }

    /// Whether any key is configured right now.
    pub fn is_empty(&self) -> bool {
        self.refresh();
        self.keys
            .read()
            .map(|k| k.digests.is_empty())
            .unwrap_or(true)
    }

    /// Re-reads the file when it changed; a broken edit keeps the last good keys.
    fn refresh(&self) {
        let Some(path) = &self.path else { return };
        {
            let Ok(keys) = self.keys.read() else { return };
            if keys.checked_at.elapsed() < RELOAD_CHECK_INTERVAL {
                return;
            }
        }
        let Ok(mut keys) = self.keys.write() else {
            return;
        };
        if keys.checked_at.elapsed() < RELOAD_CHECK_INTERVAL {
            return;
        }
        keys.checked_at = Instant::now();
        let stamp = std::fs::metadata(path)
            .ok()
            .and_then(|m| Some((m.modified().ok()?, m.len())));
        if stamp == keys.stamp {
            return;
        }
        match read_keys(path) {
            Ok((digests, stamp)) => {
                if digests.is_empty() && !self.anonymous_allowed {
                    log::error!("the keys file now holds no keys; every request is refused until it has one (anonymous serving is off on this address)");
                } else {
                    log::info!("keys file reloaded: {} keys", digests.len());
                }
                keys.digests = digests;
                keys.stamp = stamp;
            }
            Err(problem) => {
                // Remember the broken stamp so the error is logged once per edit.
                keys.stamp = stamp;
                log::error!(
                    "{problem}; keeping the {} keys read before",
                    keys.digests.len()
                );
            }
        }
    }

    /// Checks a presented key. `Ok(None)` means no keys are configured (anonymous).
    pub fn authenticate(&self, presented: Option<&str>) -> Result<Option<User>, GatewayError> {
        self.refresh();
        let keys = self
            .keys
            .read()
            .map_err(|_| GatewayError::Unauthorized { missing: false })?;
        if keys.digests.is_empty() {
            return match self.anonymous_allowed {
                true => Ok(None),
                false => Err(GatewayError::Unauthorized {
                    missing: presented.is_none(),
                }),
            };
        }
        let Some(presented) = presented else {
            return Err(GatewayError::Unauthorized { missing: true });
        };
        let presented = digest(presented);
        let mut found: Option<&Arc<str>> = None;
        // Every digest is compared, so the time taken says nothing about which matched.
        for (stored, user) in &keys.digests {
            if bool::from(stored.ct_eq(&presented)) {
                found = Some(user);
            }
        }
        found
            .map(|user| Some(User(user.clone())))
            .ok_or(GatewayError::Unauthorized { missing: false })
    }
}

/// The key a request carries: `X-API-Key`, else `Authorization: Bearer`.
fn presented_key(request: &ServiceRequest) -> Option<&str> {
    let headers = request.headers();
    if let Some(key) = headers.get("x-api-key").and_then(|v| v.to_str().ok()) {
        return Some(key.trim());
    }
    let authorization = headers.get("authorization")?.to_str().ok()?;
    let (scheme, token) = authorization.trim().split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
}

/// Decides whether a request to a dialect's scope may pass (when keys are configured);
/// the open routes (`/health`, `/`, `/metrics`) are mounted outside every scope and
/// never come here. A known key's user is noted on the request; a refusal says why.
pub fn admit(request: &ServiceRequest) -> Result<(), GatewayError> {
    let Some(store) = request.app_data::<web::Data<KeyStore>>() else {
        return Ok(());
    };
    match store.authenticate(presented_key(request)) {
        Ok(user) => {
            if let Some(user) = user {
                request.extensions_mut().insert(user);
            }
            Ok(())
        }
        Err(error) => {
            log::info!("{} {} refused: {error}", request.method(), request.path());
            Err(error)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_match_only_exactly_and_reload_keeps_last_good() {
        let dir = std::env::temp_dir().join(format!("switchyard-keys-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("keys.json");
        std::fs::write(&path, r#"{"sk-abc123":"alice","sk-xyz789":"bob"}"#).unwrap();
        let store = KeyStore::load(Some(path.clone()), false).unwrap();
        assert_eq!(
            store.authenticate(Some("sk-xyz789")).unwrap(),
            Some(User(Arc::from("bob")))
        );
        assert_eq!(
            store.authenticate(Some("sk-xyz78")),
            Err(GatewayError::Unauthorized { missing: false })
        );
        assert_eq!(
            store.authenticate(None),
            Err(GatewayError::Unauthorized { missing: true })
        );
        std::fs::write(&path, "{broken").unwrap();
        store.keys.write().unwrap().checked_at -= RELOAD_CHECK_INTERVAL;
        assert!(store.authenticate(Some("sk-abc123")).is_ok());
        // Emptied on an address where anonymous serving is off: nobody gets in.
        std::fs::write(&path, "{}").unwrap();
        store.keys.write().unwrap().checked_at -= RELOAD_CHECK_INTERVAL;
        assert!(store.authenticate(Some("sk-abc123")).is_err());
        assert!(store.authenticate(None).is_err());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn no_keys_file_is_anonymous() {
        let store = KeyStore::load(None, true).unwrap();
        assert_eq!(store.authenticate(None).unwrap(), None);
    }
}

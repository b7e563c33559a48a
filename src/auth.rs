//! API keys: the key store (re-read when its file changes) and the check in front of
//! every dialect's routes and of the operational routes.
//!
//! Keys are kept only as SHA-256 digests and every presented key is compared against
//! all of them in constant time, so neither timing nor a memory dump gives a key away.
//! Keys never reach a log line. What each key may do (its models, limits, expiry) comes
//! from the keys file's entry, checked once per reload into a [`KeyPolicy`].

use std::path::PathBuf;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant, SystemTime};

use actix_web::dev::ServiceRequest;
use actix_web::http::header::HeaderMap;
use actix_web::{web, HttpMessage};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::config::{Config, MetricsAccess};
use crate::error::GatewayError;
use crate::keys::{self, KeyEntry, KeyPolicy};
use crate::limits::{Budgets, RateLimits, Refusal, RequestBudget};
use crate::metrics::Metrics;
use crate::peer;

/// How often the keys file is looked at for changes.
const RELOAD_CHECK_INTERVAL: Duration = Duration::from_secs(1);

/// The user a request was authenticated as (absent when serving anonymously).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct User(pub Arc<str>);

/// The key a request was admitted with, and what it may do.
#[derive(Debug, Clone)]
pub struct Key(pub Arc<KeyPolicy>);

/// When requests may go without a key, by the contract's rule.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Anonymous {
    /// Never: keys are needed (a public address without `auth.allow_anonymous`).
    Never,
    /// Only for callers on this machine that no proxy relayed (a loopback address).
    LocalOnly,
    /// Always: `auth.allow_anonymous = true`, said on purpose.
    Always,
}

impl Anonymous {
    /// The rule for a configuration.
    pub fn for_config(config: &Config) -> Anonymous {
        if config.allow_anonymous {
            Anonymous::Always
        } else if config.listen.ip().is_loopback() {
            Anonymous::LocalOnly
        } else {
            Anonymous::Never
        }
    }
}

/// Digests of the keys, each with its policy.
type Digests = Vec<([u8; 32], Arc<KeyPolicy>)>;
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
    /// `auth.admin_keys`: fixed for the life of the process.
    admin: Digests,
    /// Each limited key's request rate, kept across reloads of the file.
    limits: RateLimits,
    /// Checked on every request, so a keys file emptied while serving on a public
    /// address locks the door, not opens it.
    anonymous: Anonymous,
    /// Where the limits are counted for every instance at once (`[cluster]`).
    cluster: Option<Arc<crate::cluster::Cluster>>,
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
    let entries =
        keys::parse(&text).map_err(|e| format!("auth.keys_file {}: {e}", path.display()))?;
    let mut digests = Vec::with_capacity(entries.len());
    for (key, entry) in &entries {
        // Each entry was checked by `parse`; this cannot fail.
        let policy = keys::policy(key, entry).map_err(|e| e.to_string())?;
        digests.push((digest(key), Arc::new(policy)));
    }
    Ok((digests, stamp))
}

impl KeyStore {
    /// Reads the keys file, if one is configured; a broken file at start is an error.
    pub fn load(
        path: Option<PathBuf>,
        admin_keys: &[String],
        anonymous: Anonymous,
    ) -> Result<KeyStore, String> {
        let (digests, stamp) = match &path {
            Some(path) => read_keys(path)?,
            None => (Vec::new(), None),
        };
        let mut admin = Vec::with_capacity(admin_keys.len());
        for key in admin_keys {
            let entry = KeyEntry {
                user: "admin".to_owned(),
                admin: true,
                ..KeyEntry::default()
            };
            let policy = keys::policy(key, &entry).map_err(|e| format!("auth.admin_keys: {e}"))?;
            admin.push((digest(key), Arc::new(policy)));
        }
        Ok(KeyStore {
            path,
            keys: RwLock::new(KeySet {
                digests,
                stamp,
                checked_at: Instant::now(),
            }),
            admin,
            limits: RateLimits::default(),
            anonymous,
            cluster: None,
        })
    }

    /// Counts the keys' limits in the cluster's Redis too.
    pub fn share_with(&mut self, cluster: Option<Arc<crate::cluster::Cluster>>) {
        self.cluster = cluster;
    }

    /// The cluster the limits are shared with, if any.
    pub fn cluster(&self) -> Option<&Arc<crate::cluster::Cluster>> {
        self.cluster.as_ref()
    }

    /// The limiters of limited keys, to note the tokens an answer used.
    pub fn limits(&self) -> &RateLimits {
        &self.limits
    }

    /// Whether no key is configured right now (neither in the file nor as admin keys).
    pub fn is_empty(&self) -> bool {
        self.refresh();
        self.admin.is_empty()
            && self
                .keys
                .read()
                .map(|k| k.digests.is_empty())
                .unwrap_or(true)
    }

    /// Looks at the keys file now rather than within the second: the console calls it
    /// after each edit, so that a key it added or disabled counts on the very next
    /// request.
    pub fn reload_now(&self) {
        if let (Ok(mut keys), Some(past)) = (
            self.keys.write(),
            Instant::now().checked_sub(RELOAD_CHECK_INTERVAL),
        ) {
            keys.checked_at = past;
        }
        self.refresh();
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
                if digests.is_empty() && self.admin.is_empty() && self.anonymous == Anonymous::Never
                {
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

    /// Checks a presented key. `Ok(None)` means the request is served anonymously (no
    /// keys configured, and the anonymous rule lets this caller in). `local` says the
    /// caller is on this machine and no proxy relayed it.
    pub fn authenticate(
        &self,
        presented: Option<&str>,
        local: bool,
    ) -> Result<Option<Arc<KeyPolicy>>, GatewayError> {
        self.refresh();
        let keys = self
            .keys
            .read()
            .map_err(|_| GatewayError::Unauthorized { missing: false })?;
        if keys.digests.is_empty() && self.admin.is_empty() {
            return match (self.anonymous, local) {
                (Anonymous::Always, _) | (Anonymous::LocalOnly, true) => Ok(None),
                (Anonymous::LocalOnly, false) => Err(GatewayError::KeyRefused {
                    message: "this request came through a proxy or tunnel, and a relayed request is never served without a key: add one with `switchyard keys add NAME` (or set auth.keys_file), or set auth.allow_anonymous = true to serve relayed requests anonymously on purpose".to_owned(),
                }),
                (Anonymous::Never, _) => Err(GatewayError::Unauthorized {
                    missing: presented.is_none(),
                }),
            };
        }
        let Some(presented) = presented else {
            return Err(GatewayError::Unauthorized { missing: true });
        };
        let presented = digest(presented);
        let mut found: Option<&Arc<KeyPolicy>> = None;
        // Every digest is compared, so the time taken says nothing about which matched.
        for (stored, policy) in keys.digests.iter().chain(&self.admin) {
            if bool::from(stored.ct_eq(&presented)) {
                found = Some(policy);
            }
        }
        let policy = found.ok_or(GatewayError::Unauthorized { missing: false })?;
        if let Some(message) = policy.refusal(jiff::Timestamp::now()) {
            return Err(GatewayError::KeyRefused { message });
        }
        Ok(Some(policy.clone()))
    }
}

/// The key a request carries: `X-API-Key`, else `Authorization: Bearer`.
pub fn presented_key(headers: &HeaderMap) -> Option<&str> {
    if let Some(key) = headers.get("x-api-key").and_then(|v| v.to_str().ok()) {
        return Some(key.trim());
    }
    let authorization = headers.get("authorization")?.to_str().ok()?;
    let (scheme, token) = authorization.trim().split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
}

/// Decides whether a request to a dialect's scope may pass; the open routes (`/health`,
/// `/`, `/metrics`) are mounted outside every scope and never come here. A known key's
/// user and policy are noted on the request, and its request is counted against its
/// `rpm`; a refusal says why. The key's request budget comes back either way, for the
/// `x-ratelimit-*` headers of a limited key.
pub async fn admit(request: &ServiceRequest) -> (Result<(), GatewayError>, Budgets) {
    let Some(store) = request.app_data::<web::Data<KeyStore>>() else {
        return (Ok(()), Budgets::default());
    };
    let local = peer::is_local(request.peer_addr().map(|a| a.ip()), request.headers());
    let (outcome, budget) = match store.authenticate(presented_key(request.headers()), local) {
        Ok(Some(policy)) => {
            let counted = match &store.cluster {
                // Counted for every instance at once; one call to Redis, bounded.
                Some(cluster) if policy.is_limited() => cluster.count(&policy, &store.limits).await,
                _ => store.limits.admit(&policy),
            };
            let mut extensions = request.extensions_mut();
            extensions.insert(User(policy.user.clone()));
            extensions.insert(Key(policy.clone()));
            match counted {
                Ok(budgets) => (Ok(()), budgets),
                Err(refusal) => {
                    let Refusal { error, reason } = *refusal;
                    if let Some(metrics) = request.app_data::<web::Data<Metrics>>() {
                        metrics.rejected(&policy.user, reason);
                    }
                    // The limit that refused is reported as spent.
                    let spent = |limit: Option<u64>| {
                        limit.map(|limit| RequestBudget {
                            limit,
                            remaining: 0,
                        })
                    };
                    let budgets = match reason {
                        "tpm" => Budgets {
                            requests: None,
                            tokens: spent(policy.tpm),
                        },
                        "tokens_per_day" => Budgets {
                            requests: None,
                            tokens: spent(policy.tokens_per_day),
                        },
                        _ => Budgets {
                            requests: spent(policy.rpm),
                            tokens: None,
                        },
                    };
                    (Err(error), budgets)
                }
            }
        }
        Ok(None) => (Ok(()), Budgets::default()),
        Err(refusal) => (Err(refusal), Budgets::default()),
    };
    if let Err(error) = &outcome {
        log::info!(
            "{} {} {} refused: {error}",
            peer::client_of(request),
            request.method(),
            request.path()
        );
    }
    (outcome, budget)
}

/// Whether the request's key may use `model` (the name as the client sent it, before
/// aliases resolve): a key with a `models` list is refused any other with 403, before
/// anything reaches a backend. Anonymous callers and keys without a list may use any.
pub fn may_use(request: &actix_web::HttpRequest, model: &str) -> Result<(), GatewayError> {
    let extensions = request.extensions();
    let Some(Key(policy)) = extensions.get::<Key>() else {
        return Ok(());
    };
    if policy.allows_model(model) {
        Ok(())
    } else {
        Err(GatewayError::Forbidden {
            message: format!(
                "API key {} ({}) may not use model '{model}'; its models are: {}",
                policy.masked,
                policy.user,
                policy.model_patterns().join(", ")
            ),
            code: "model_not_allowed",
        })
    }
}

/// Whether a caller may see the operational detail (`/metrics`, `/health` per backend),
/// by `server.metrics`: anyone (`public`), callers on this machine that no proxy relayed
/// (`loopback`), or callers with an admin key (`key`).
pub fn may_see_operations(request: &actix_web::HttpRequest) -> Result<(), GatewayError> {
    let access = request
        .app_data::<web::Data<MetricsAccess>>()
        .map_or(MetricsAccess::Loopback, |access| *access.get_ref());
    match access {
        MetricsAccess::Public => Ok(()),
        MetricsAccess::Loopback => {
            if peer::is_local(request.peer_addr().map(|a| a.ip()), request.headers()) {
                Ok(())
            } else {
                Err(GatewayError::Forbidden {
                    message: "the operational routes answer callers on this machine only (server.metrics = \"loopback\"); a relayed request is not local".to_owned(),
                    code: "loopback_only",
                })
            }
        }
        MetricsAccess::Key => {
            let store = request
                .app_data::<web::Data<KeyStore>>()
                .ok_or(GatewayError::Unauthorized { missing: false })?;
            let presented = presented_key(request.headers());
            let digest = digest(presented.ok_or(GatewayError::Unauthorized { missing: true })?);
            let mut admin = false;
            let keys = store
                .keys
                .read()
                .map_err(|_| GatewayError::Unauthorized { missing: false })?;
            // Constant time over every key, as for the API.
            for (stored, policy) in keys.digests.iter().chain(&store.admin) {
                if bool::from(stored.ct_eq(&digest))
                    && policy.admin
                    && policy.refusal(jiff::Timestamp::now()).is_none()
                {
                    admin = true;
                }
            }
            if admin {
                Ok(())
            } else {
                Err(GatewayError::Forbidden {
                    message: "the operational routes need an admin key (auth.admin_keys, or \"admin\": true in the keys file) with server.metrics = \"key\"".to_owned(),
                    code: "admin_key_required",
                })
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn user(outcome: Result<Option<Arc<KeyPolicy>>, GatewayError>) -> Option<String> {
        outcome.unwrap().map(|policy| policy.user.to_string())
    }

    #[test]
    fn keys_match_only_exactly_and_reload_keeps_last_good() {
        let dir = std::env::temp_dir().join(format!("switchyard-keys-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("keys.json");
        std::fs::write(&path, r#"{"sk-abc123":"alice","sk-xyz789":"bob"}"#).unwrap();
        let store = KeyStore::load(Some(path.clone()), &[], Anonymous::Never).unwrap();
        assert_eq!(
            user(store.authenticate(Some("sk-xyz789"), true)).as_deref(),
            Some("bob")
        );
        assert_eq!(
            store.authenticate(Some("sk-xyz78"), true).err(),
            Some(GatewayError::Unauthorized { missing: false })
        );
        assert_eq!(
            store.authenticate(None, true).err(),
            Some(GatewayError::Unauthorized { missing: true })
        );
        std::fs::write(&path, "{broken").unwrap();
        store.keys.write().unwrap().checked_at -= RELOAD_CHECK_INTERVAL;
        assert!(store.authenticate(Some("sk-abc123"), true).is_ok());
        // Emptied on an address where anonymous serving is off: nobody gets in.
        std::fs::write(&path, "{}").unwrap();
        store.keys.write().unwrap().checked_at -= RELOAD_CHECK_INTERVAL;
        assert!(store.authenticate(Some("sk-abc123"), true).is_err());
        assert!(store.authenticate(None, true).is_err());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn relayed_callers_are_never_anonymous_unless_said_on_purpose() {
        let local_only = KeyStore::load(None, &[], Anonymous::LocalOnly).unwrap();
        assert_eq!(
            local_only.authenticate(None, true).unwrap().map(|_| ()),
            None
        );
        let refused = local_only.authenticate(None, false).unwrap_err();
        assert!(refused.to_string().contains("proxy or tunnel"), "{refused}");
        let always = KeyStore::load(None, &[], Anonymous::Always).unwrap();
        assert!(always.authenticate(None, false).unwrap().is_none());
    }

    #[test]
    fn admin_keys_are_keys_and_disabled_ones_say_so() {
        let dir = std::env::temp_dir().join(format!("switchyard-keys2-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("keys.json");
        std::fs::write(
            &path,
            r#"{"sk-off-0123456789": {"user": "carol", "disabled": true}}"#,
        )
        .unwrap();
        let store = KeyStore::load(
            Some(path),
            &["sk-admin-0123456789".to_owned()],
            Anonymous::LocalOnly,
        )
        .unwrap();
        let admin = store
            .authenticate(Some("sk-admin-0123456789"), false)
            .unwrap()
            .unwrap();
        assert!(admin.admin);
        let refused = store
            .authenticate(Some("sk-off-0123456789"), true)
            .unwrap_err();
        assert!(refused.to_string().contains("disabled"), "{refused}");
        // Keys are configured, so even a local caller needs one.
        assert!(store.authenticate(None, true).is_err());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}

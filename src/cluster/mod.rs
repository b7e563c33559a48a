//! Several instances behind one load balancer, sharing what must hold across all of them
//! through one Redis: a key's `rpm` / `tpm` / `tokens_per_day` (`limits`), a backend's or
//! a key's `max_concurrent` as a cluster-wide budget of leased slots (`slots`), and the
//! usage records of every instance in one stream (`usage`); what an answer owes Redis
//! waits in `outbox` and rides with the next request's check.
//!
//! Without `[cluster]` nothing here exists: no connection, no task, and the request path
//! is exactly the single instance's. With it, every call to Redis is bounded by
//! `timeout_ms`; a call that fails or runs late marks Redis unreachable (logged once),
//! and until a background probe finds it again each instance enforces its own share of
//! every limit (`1 / instances`), keeps its usage records locally (bounded) and sends
//! them once Redis answers. A request never waits on Redis for longer than the timeout.

pub mod limits;
pub mod outbox;
pub mod slots;
pub mod usage;

use std::cell::RefCell;
use std::collections::HashMap;
use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::{IntoConnectionInfo, RedisError, RedisResult};
use serde::Deserialize;

/// `[cluster]` as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawCluster {
    redis_url: String,
    redis_password_env: Option<String>,
    #[serde(default = "default_timeout_ms")]
    timeout_ms: u64,
    #[serde(default = "default_lease_secs")]
    lease_secs: f64,
    #[serde(default = "default_poll_ms")]
    poll_ms: u64,
    #[serde(default = "default_instances")]
    instances: u64,
    #[serde(default = "default_prefix")]
    prefix: String,
    #[serde(default = "default_stream_maxlen")]
    stream_maxlen: u64,
    #[serde(default = "default_pending_max")]
    pending_max: usize,
}

fn default_timeout_ms() -> u64 {
    50
}
fn default_lease_secs() -> f64 {
    5.0
}
fn default_poll_ms() -> u64 {
    50
}
fn default_instances() -> u64 {
    1
}
fn default_prefix() -> String {
    "switchyard".to_owned()
}
fn default_stream_maxlen() -> u64 {
    1_000_000
}
fn default_pending_max() -> usize {
    100_000
}

/// `[cluster]`, checked.
#[derive(Clone, PartialEq)]
pub struct ClusterSettings {
    /// `redis_url` as written (it may hold a password: never printed whole).
    url: String,
    /// From `redis_password_env`, read when the configuration was loaded.
    password: Option<String>,
    /// The longest a request waits on Redis.
    pub timeout: Duration,
    /// How long a slot's lease lasts without renewal: a crashed holder's slot is free
    /// after at most this long.
    pub lease: Duration,
    /// How often a request waiting for a cluster-wide slot asks again.
    pub poll: Duration,
    /// How many instances share the limits: while Redis is unreachable each enforces
    /// `1 / instances` of every limit.
    pub instances: u64,
    /// What every Redis key of this gateway starts with.
    pub prefix: String,
    /// About how many usage records the stream keeps (`XADD MAXLEN ~`).
    pub stream_maxlen: u64,
    /// How many usage records an instance keeps while Redis is unreachable.
    pub pending_max: usize,
}

impl std::fmt::Debug for ClusterSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClusterSettings")
            .field("redis", &self.shown_url())
            .field("password", &self.password.as_ref().map(|_| "<set>"))
            .field("timeout", &self.timeout)
            .field("lease", &self.lease)
            .field("instances", &self.instances)
            .finish_non_exhaustive()
    }
}

impl RawCluster {
    /// Checks the section; a password variable that is named but unset is an error, as
    /// an instance that silently connected without it would only fail later.
    pub fn check(self) -> Result<ClusterSettings, String> {
        let scheme = self.redis_url.split("://").next().unwrap_or_default();
        if !matches!(scheme, "redis" | "rediss") || !self.redis_url.contains("://") {
            return Err(format!(
                "cluster.redis_url must be redis://HOST:PORT/DB or rediss://HOST:PORT/DB (it starts with \"{scheme}\")"
            ));
        }
        self.redis_url
            .as_str()
            .into_connection_info()
            .map_err(|e| format!("cluster.redis_url is not a Redis URL: {e}"))?;
        let password = match &self.redis_password_env {
            Some(name) => Some(std::env::var(name).map_err(|_| {
                format!("cluster.redis_password_env names ${name}, which is not set")
            })?),
            None => None,
        };
        if self.timeout_ms == 0 {
            return Err("cluster.timeout_ms must be at least 1".to_owned());
        }
        if !(self.lease_secs.is_finite() && self.lease_secs >= 0.3) {
            return Err(format!(
                "cluster.lease_secs must be at least 0.3 seconds (it is {})",
                self.lease_secs
            ));
        }
        if self.poll_ms == 0 {
            return Err("cluster.poll_ms must be at least 1".to_owned());
        }
        if self.instances == 0 {
            return Err("cluster.instances must be at least 1".to_owned());
        }
        if self.prefix.is_empty() {
            return Err("cluster.prefix must not be empty".to_owned());
        }
        Ok(ClusterSettings {
            url: self.redis_url,
            password,
            timeout: Duration::from_millis(self.timeout_ms),
            lease: Duration::from_secs_f64(self.lease_secs),
            poll: Duration::from_millis(self.poll_ms),
            instances: self.instances,
            prefix: self.prefix,
            stream_maxlen: self.stream_maxlen.max(1),
            pending_max: self.pending_max,
        })
    }
}

impl ClusterSettings {
    /// The URL without any password in it, for logs and `check`.
    pub fn shown_url(&self) -> String {
        match url::Url::parse(&self.url) {
            Ok(mut url) => {
                if url.password().is_some() {
                    let _ = url.set_password(Some("***"));
                }
                url.to_string()
            }
            Err(_) => "(unparsable)".to_owned(),
        }
    }

    /// One line for `switchyard check`.
    pub fn describe(&self) -> String {
        format!(
            "cluster: limits, slots and usage shared through {}{} (timeout {} ms, lease {} s; 1/{} of each limit while it is unreachable)",
            self.shown_url(),
            if self.password.is_some() { " with a password" } else { "" },
            self.timeout.as_millis(),
            self.lease.as_secs_f64(),
            self.instances
        )
    }

    /// A Redis key of this gateway: the prefix and `parts`, joined by colons.
    pub fn key(&self, parts: &[&str]) -> String {
        let mut key = self.prefix.clone();
        for part in parts {
            key.push(':');
            key.push_str(part);
        }
        key
    }

    /// This instance's share of a limit while Redis is unreachable: at least 1.
    pub fn share(&self, limit: u64) -> u64 {
        limit.div_ceil(self.instances).max(1)
    }

    pub(crate) fn client(&self) -> RedisResult<redis::Client> {
        let mut info = self.url.as_str().into_connection_info()?;
        if let Some(password) = &self.password {
            info.redis.password = Some(password.clone());
        }
        redis::Client::open(info)
    }
}

/// The longest a background call (probe, renewal, sending held records) may take.
const BACKGROUND_TIMEOUT: Duration = Duration::from_secs(1);

/// One instance's link to the cluster: the connection, whether Redis answers, the slot
/// leases it holds and the usage records waiting to be sent.
pub struct Cluster {
    pub settings: ClusterSettings,
    /// This process, in every lease it holds and every record it sends.
    pub instance: String,
    /// Tells this link apart from others in the same process.
    id: u64,
    /// `PREFIX:usage`, made once: every record names it.
    stream: String,
    /// How many times Redis came back: threads' own connections made before are
    /// replaced.
    generation: AtomicU64,
    connection: RwLock<Option<ConnectionManager>>,
    up: AtomicBool,
    next_id: AtomicU64,
    /// Leases held in Redis, by id: the sorted sets each is in, renewed by `keep`.
    leases: Mutex<HashMap<u64, Vec<String>>>,
    /// Slots taken on local shares while Redis was unreachable, by sorted-set name.
    local: Mutex<HashMap<String, u64>>,
    /// Token charges and usage records not yet in Redis.
    outbox: outbox::Outbox,
}

impl Cluster {
    pub fn new(settings: ClusterSettings) -> Arc<Cluster> {
        let instance = format!(
            "{}-{}-{:08x}",
            hostname(),
            std::process::id(),
            fastrand::u32(..)
        );
        let stream = settings.key(&["usage"]);
        Arc::new(Cluster {
            stream,
            settings,
            instance,
            id: NEXT_CLUSTER.fetch_add(1, Ordering::Relaxed),
            generation: AtomicU64::new(0),
            connection: RwLock::new(None),
            up: AtomicBool::new(false),
            next_id: AtomicU64::new(0),
            leases: Mutex::new(HashMap::new()),
            local: Mutex::new(HashMap::new()),
            outbox: outbox::Outbox::default(),
        })
    }

    /// Starts the task that connects, probes an unreachable Redis, renews the leases
    /// and sends held records, and the one that sends what no request carried (see
    /// `outbox`); they run on the calling runtime for the process's life.
    pub fn launch(self: &Arc<Self>) {
        let cluster = self.clone();
        actix_web::rt::spawn(async move { cluster.keep().await });
        actix_web::rt::spawn(outbox::deliver(self.clone()));
    }

    /// Whether Redis answered the last call.
    pub fn is_up(&self) -> bool {
        self.up.load(Ordering::Relaxed)
    }

    /// `/health`'s word on Redis.
    pub fn health(&self) -> &'static str {
        if self.is_up() {
            "ok"
        } else {
            "unreachable"
        }
    }

    /// The stream every instance appends its usage records to.
    pub fn stream(&self) -> &str {
        &self.stream
    }

    /// A Redis key of this gateway.
    pub fn key(&self, parts: &[&str]) -> String {
        self.settings.key(parts)
    }

    pub(crate) fn next_id(&self) -> u64 {
        self.next_id.fetch_add(1, Ordering::Relaxed)
    }

    /// Runs one call against Redis within the timeout: `None` when Redis is known
    /// unreachable (no call is made: the probe finds it again), fails or runs late
    /// (then it is marked unreachable).
    pub async fn run<T, F, Fut>(&self, what: &str, call: F) -> Option<T>
    where
        F: FnOnce(ConnectionManager) -> Fut,
        Fut: Future<Output = RedisResult<T>>,
    {
        if !self.is_up() {
            return None;
        }
        let connection = self.own_connection().or_else(|| self.connection())?;
        self.bounded(what, self.settings.timeout, call(connection))
            .await
    }

    async fn bounded<T>(
        &self,
        what: &str,
        limit: Duration,
        call: impl Future<Output = RedisResult<T>>,
    ) -> Option<T> {
        match tokio::time::timeout(limit, call).await {
            Ok(Ok(value)) => Some(value),
            Ok(Err(error)) => {
                self.failed(what, &error);
                None
            }
            Err(_) => {
                self.down(&format!(
                    "{what}: no answer within {} ms",
                    limit.as_millis()
                ));
                None
            }
        }
    }

    fn failed(&self, what: &str, error: &RedisError) {
        if error.is_io_error()
            || error.is_timeout()
            || error.is_connection_dropped()
            || error.is_connection_refusal()
            || error.is_unrecoverable_error()
        {
            self.down(&format!("{what}: {error}"));
        } else {
            // Redis answered, with an error of its own: this call falls back to the
            // local limits, the next one tries again.
            log::warn!("redis refused {what}: {error}");
        }
    }

    pub(super) fn connection(&self) -> Option<ConnectionManager> {
        self.connection.read().ok()?.clone()
    }

    /// This thread's own connection, once it has one; the first call on a thread starts
    /// connecting one there. A call on the shared connection is driven by the task that
    /// made it, on another thread: two thread switches per call, which on a busy
    /// instance cost more than Redis's answer. A worker's own connection is driven on
    /// the worker's own runtime.
    fn own_connection(&self) -> Option<ConnectionManager> {
        let state = OWN_CONNECTIONS.with(|links| {
            let mut links = links.borrow_mut();
            let generation = self.generation.load(Ordering::Relaxed);
            match links.get(&self.id) {
                // Made before Redis last went away: its socket may be dead, so it is
                // made again rather than failing the next request.
                Some(OwnConnection::Ready(made, _)) if *made != generation => {
                    links.insert(self.id, OwnConnection::Connecting);
                    OwnConnection::Absent
                }
                Some(state) => state.clone(),
                None => {
                    links.insert(self.id, OwnConnection::Connecting);
                    OwnConnection::Absent
                }
            }
        });
        match state {
            OwnConnection::Ready(_, connection) => Some(connection),
            OwnConnection::Connecting => None,
            OwnConnection::Absent => {
                let id = self.id;
                let generation = self.generation.load(Ordering::Relaxed);
                let client = self.settings.client();
                let connect = async move {
                    let made = match client {
                        Ok(client) => tokio::time::timeout(
                            BACKGROUND_TIMEOUT * 2,
                            ConnectionManager::new_with_config(client, manager_config()),
                        )
                        .await
                        .ok()
                        .and_then(Result::ok),
                        Err(_) => None,
                    };
                    OWN_CONNECTIONS.with(|links| {
                        let mut links = links.borrow_mut();
                        match made {
                            Some(connection) => {
                                links.insert(id, OwnConnection::Ready(generation, connection));
                            }
                            // The next call on this thread tries again.
                            None => {
                                links.remove(&id);
                            }
                        }
                    });
                };
                // On an actix worker (a runtime of one thread) the task runs on this
                // thread. On a runtime of several it may land on another: that thread
                // then has its own and this one keeps using the shared one, no worse.
                if tokio::runtime::Handle::try_current().is_ok() {
                    tokio::spawn(connect);
                } else {
                    OWN_CONNECTIONS.with(|links| links.borrow_mut().remove(&id));
                }
                None
            }
        }
    }

    /// Marks Redis unreachable; the change is logged once, not per request.
    fn down(&self, why: &str) {
        self.outbox.drop_charges();
        if self.up.swap(false, Ordering::Relaxed) {
            log::warn!(
                "redis {} unreachable ({why}): serving on local limits (1/{} of each) until it answers again",
                self.settings.shown_url(),
                self.settings.instances
            );
        }
    }

    fn back(&self) {
        if !self.up.swap(true, Ordering::Relaxed) {
            self.generation.fetch_add(1, Ordering::Relaxed);
            log::info!(
                "redis {} answers: limits, slots and usage are shared again",
                self.settings.shown_url()
            );
        }
    }

    /// The background task: connect, then every third of a lease renew the leases (or
    /// probe an unreachable Redis) and send held records.
    async fn keep(self: Arc<Self>) {
        let tick =
            (self.settings.lease / 3).clamp(Duration::from_millis(100), Duration::from_secs(1));
        let mut logged_first_failure = false;
        loop {
            match self.connection() {
                None => match self.connect().await {
                    Ok(manager) => {
                        if let Ok(mut slot) = self.connection.write() {
                            *slot = Some(manager);
                        }
                        self.back();
                    }
                    Err(problem) => {
                        if !logged_first_failure {
                            logged_first_failure = true;
                            log::warn!(
                                "redis {} unreachable ({problem}): serving on local limits (1/{} of each) until it answers",
                                self.settings.shown_url(),
                                self.settings.instances
                            );
                        }
                    }
                },
                Some(manager) => {
                    // Asked every tick, idle or not, so that /health tells the truth
                    // even when no request has tried Redis lately.
                    let mut probe = manager.clone();
                    let ping =
                        async move { redis::cmd("PING").query_async::<String>(&mut probe).await };
                    if self
                        .bounded("ping", BACKGROUND_TIMEOUT, ping)
                        .await
                        .is_some()
                    {
                        self.back();
                    }
                    if self.is_up() {
                        slots::renew(&self, manager.clone()).await;
                        if self.outbox.held() {
                            self.send_owed(&manager).await;
                        }
                    }
                }
            }
            tokio::time::sleep(tick).await;
        }
    }

    async fn connect(&self) -> Result<ConnectionManager, String> {
        let client = self.settings.client().map_err(|e| e.to_string())?;
        match tokio::time::timeout(
            BACKGROUND_TIMEOUT * 2,
            ConnectionManager::new_with_config(client, manager_config()),
        )
        .await
        {
            Ok(Ok(manager)) => {
                // Loaded now, so that no request pays for a NOSCRIPT and a reload.
                let mut loader = manager.clone();
                for script in [&*slots::ACQUIRE, &*limits::ADMIT, &*outbox::CHARGE] {
                    if let Err(error) = script.prepare_invoke().load_async(&mut loader).await {
                        return Err(error.to_string());
                    }
                }
                Ok(manager)
            }
            Ok(Err(error)) => Err(error.to_string()),
            Err(_) => Err("no connection within 2 s".to_owned()),
        }
    }
}

fn manager_config() -> ConnectionManagerConfig {
    ConnectionManagerConfig::new()
        .set_connection_timeout(BACKGROUND_TIMEOUT)
        .set_response_timeout(BACKGROUND_TIMEOUT)
        .set_number_of_retries(1)
        .set_max_delay(500)
}

/// Tells clusters apart in `OWN_CONNECTIONS` (tests run several in one process).
static NEXT_CLUSTER: AtomicU64 = AtomicU64::new(0);

/// A thread's own connection to one cluster's Redis.
#[derive(Clone)]
enum OwnConnection {
    Absent,
    Connecting,
    /// Made while `Cluster::generation` was the first.
    Ready(u64, ConnectionManager),
}

thread_local! {
    /// Each thread's own connections, by cluster id.
    static OWN_CONNECTIONS: RefCell<HashMap<u64, OwnConnection>> = RefCell::new(HashMap::new());
}

fn hostname() -> String {
    std::env::var("HOSTNAME")
        .ok()
        .filter(|name| !name.is_empty())
        .or_else(|| {
            std::fs::read_to_string("/etc/hostname")
                .ok()
                .map(|name| name.trim().to_owned())
                .filter(|name| !name.is_empty())
        })
        .unwrap_or_else(|| "switchyard".to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn raw(extra: &str) -> Result<ClusterSettings, String> {
        let text = format!("redis_url = \"redis://:secret@127.0.0.1:6379/2\"\n{extra}");
        let raw: RawCluster = toml_like(&text);
        raw.check()
    }

    fn toml_like(text: &str) -> RawCluster {
        config::Config::builder()
            .add_source(config::File::from_str(text, config::FileFormat::Toml))
            .build()
            .unwrap()
            .try_deserialize()
            .unwrap()
    }

    #[test]
    fn settings_are_checked_and_the_password_never_shown() {
        let settings = raw("instances = 3").unwrap();
        assert_eq!(settings.timeout, Duration::from_millis(50));
        assert_eq!(settings.share(12), 4);
        assert_eq!(settings.share(2), 1);
        let shown = format!("{settings:?}");
        assert!(!shown.contains("secret"), "{shown}");
        assert!(shown.contains("127.0.0.1:6379"), "{shown}");
        for (extra, field) in [
            ("instances = 0", "cluster.instances"),
            ("timeout_ms = 0", "cluster.timeout_ms"),
            ("lease_secs = 0.1", "cluster.lease_secs"),
            (
                "redis_password_env = \"SWITCHYARD_TEST_UNSET_VARIABLE\"",
                "cluster.redis_password_env",
            ),
        ] {
            let error = raw(extra).unwrap_err();
            assert!(error.starts_with(field), "{error}");
        }
        let http: RawCluster = toml_like("redis_url = \"http://h:6379\"");
        assert!(http.check().unwrap_err().contains("redis://"));
        let tls: RawCluster = toml_like("redis_url = \"rediss://h:6380/0\"");
        assert!(tls.check().is_ok());
    }
}

//! `max_concurrent` as a budget of the whole cluster: a slot is a lease in Redis, a
//! member of a sorted set (one per limited backend, one per capped key) scored by when
//! it expires. Taking one drops the expired members first, so a slot whose holder died
//! (SIGKILL, a lost machine) is free again within one lease time; the holder's
//! background task renews every lease it holds each third of a lease, for as long as
//! the answer runs.
//!
//! A request first wins its instance's own slot and place in line (`crate::queue`,
//! round-robin between users); only then does it ask for the cluster's, every
//! `poll_ms` until one frees or its backend's `queue_timeout_secs` runs out. Polling
//! rather than pub/sub: a waiter asks at most every `poll_ms`, nothing needs a second
//! connection, and a release that a message would have missed costs one interval.
//!
//! While Redis is unreachable a slot is taken from this instance's share
//! (`max_concurrent / instances`, at least one) instead.

use std::sync::Arc;
use std::sync::LazyLock;

use redis::aio::ConnectionManager;
use redis::Script;
use tokio::time::Instant;

use super::Cluster;
use crate::error::GatewayError;
use crate::queue::{KeyCap, Slot};

/// KEYS: the sorted sets; ARGV[1]: the holder; ARGV[2]: the lease in ms; ARGV[2 + i]:
/// the budget of KEYS[i]. Takes a slot of every set or of none. Redis's own clock
/// scores the leases, so instances' clocks need not agree.
pub(super) static ACQUIRE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local lease = tonumber(ARGV[2])
for i, key in ipairs(KEYS) do
  redis.call('ZREMRANGEBYSCORE', key, '-inf', now)
  if redis.call('ZCARD', key) >= tonumber(ARGV[2 + i]) then
    return 0
  end
end
for i, key in ipairs(KEYS) do
  redis.call('ZADD', key, now + lease, ARGV[1])
  redis.call('PEXPIRE', key, lease * 2)
end
return 1
",
    )
});

/// KEYS: sorted sets; ARGV[1]: the lease in ms; ARGV[1 + i]: the holder in KEYS[i].
/// A lease that is gone (Redis restarted empty) is put back: its request still runs.
static RENEW: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local lease = tonumber(ARGV[1])
for i, key in ipairs(KEYS) do
  redis.call('ZADD', key, now + lease, ARGV[1 + i])
  redis.call('PEXPIRE', key, lease * 2)
end
return #KEYS
",
    )
});

/// A cluster-wide slot, given back when dropped.
pub struct Lease {
    cluster: Arc<Cluster>,
    id: u64,
    /// The sorted sets it is in.
    sets: Vec<String>,
    /// Taken from this instance's share while Redis was unreachable.
    local: bool,
}

impl Cluster {
    /// This instance and one of its sequence numbers: a lease's holder, an entry of a
    /// key's `rpm` window, a usage record's id, each unique across the cluster.
    pub(super) fn tagged(&self, id: u64) -> String {
        format!("{}:{id}", self.instance)
    }

    /// One try at a slot of each `(set, budget)` in Redis: `None` when Redis did not
    /// answer in time.
    async fn try_shared(self: &Arc<Self>, wants: &[(String, u64)]) -> Option<Option<Lease>> {
        let id = self.next_id();
        let holder = self.tagged(id);
        let lease_ms = self.settings.lease.as_millis() as u64;
        let got: i64 = self
            .run("slot", |mut connection| async move {
                let mut invocation = ACQUIRE.prepare_invoke();
                for (set, _) in wants {
                    invocation.key(set);
                }
                invocation.arg(&holder).arg(lease_ms);
                for (_, budget) in wants {
                    invocation.arg(*budget);
                }
                invocation.invoke_async(&mut connection).await
            })
            .await?;
        if got != 1 {
            return Some(None);
        }
        let sets: Vec<String> = wants.iter().map(|(set, _)| set.clone()).collect();
        if let Ok(mut leases) = self.leases.lock() {
            leases.insert(id, sets.clone());
        }
        Some(Some(Lease {
            cluster: self.clone(),
            id,
            sets,
            local: false,
        }))
    }

    /// A slot of this instance's share of each budget, while Redis is unreachable.
    fn try_local(self: &Arc<Self>, wants: &[(String, u64)]) -> Option<Lease> {
        let mut local = self.local.lock().ok()?;
        let free = wants.iter().all(|(set, budget)| {
            local.get(set).copied().unwrap_or(0) < self.settings.share(*budget)
        });
        if !free {
            return None;
        }
        for (set, _) in wants {
            *local.entry(set.clone()).or_insert(0) += 1;
        }
        Some(Lease {
            cluster: self.clone(),
            id: self.next_id(),
            sets: wants.iter().map(|(set, _)| set.clone()).collect(),
            local: true,
        })
    }

    /// Waits (asking every `poll_ms`) for a slot of each `(set, budget)` until
    /// `deadline`: Redis's while it answers, this instance's share while it does not.
    async fn lease(self: &Arc<Self>, wants: &[(String, u64)], deadline: Instant) -> Option<Lease> {
        loop {
            match self.try_shared(wants).await {
                Some(Some(lease)) => return Some(lease),
                Some(None) => {}
                None => {
                    if let Some(lease) = self.try_local(wants) {
                        return Some(lease);
                    }
                }
            }
            if Instant::now() >= deadline {
                return None;
            }
            // A little jitter, so that instances waiting on one backend do not ask in step.
            let poll = self.settings.poll.mul_f64(0.75 + fastrand::f64() / 2.0);
            tokio::time::sleep_until((Instant::now() + poll).min(deadline)).await;
        }
    }
}

/// Holds `slot` (this instance's slot of a backend and/or of `key`) across the cluster
/// too: waits for a leased slot of the backend's and the key's cluster-wide budgets,
/// up to the backend's `queue_timeout_secs` (a capped key without a limited backend is
/// asked for once), then a 429.
pub async fn share(
    cluster: &Arc<Cluster>,
    slot: &mut Slot,
    key: Option<&KeyCap>,
) -> Result<(), GatewayError> {
    let mut wants = Vec::with_capacity(2);
    // A capped key with no backend line to wait in is refused at once, as on one
    // instance; a backend's slot is waited for up to its queue_timeout_secs.
    let mut wait = std::time::Duration::ZERO;
    let mut backend_name = None;
    if let Some((backend, max_concurrent, timeout)) = slot.limit() {
        wants.push((
            cluster.key(&["slots", "backend", backend]),
            max_concurrent as u64,
        ));
        wait = timeout;
        backend_name = Some(backend.to_owned());
    }
    if let Some(cap) = key {
        wants.push((cluster.key(&["slots", "key", &cap.key_id]), cap.max));
    }
    if wants.is_empty() {
        return Ok(());
    }
    let started = Instant::now();
    match cluster.lease(&wants, started + wait).await {
        Some(lease) => {
            slot.hold(lease);
            Ok(())
        }
        None => Err(GatewayError::RateLimited {
            message: match backend_name {
                Some(backend) => format!(
                    "waited {} s for one of backend '{backend}''s slots, which every instance of this gateway shares (max_concurrent), and none came free; retry later",
                    wait.as_secs_f64()
                ),
                None => "this key already has as many requests in flight across the gateway's instances as its max_concurrent; retry when one has finished".to_owned(),
            },
            retry_after_secs: 1,
            tokens: false,
        }),
    }
}

/// Renews every lease this instance holds, in one call.
pub(super) async fn renew(cluster: &Cluster, mut connection: ConnectionManager) {
    let held: Vec<(String, String)> = match cluster.leases.lock() {
        Ok(leases) => leases
            .iter()
            .flat_map(|(id, sets)| {
                let holder = cluster.tagged(*id);
                sets.iter().map(move |set| (set.clone(), holder.clone()))
            })
            .collect(),
        Err(_) => return,
    };
    if held.is_empty() {
        return;
    }
    let lease_ms = cluster.settings.lease.as_millis() as u64;
    let call = async move {
        let mut invocation = RENEW.prepare_invoke();
        invocation.arg(lease_ms);
        for (set, holder) in &held {
            invocation.key(set).arg(holder);
        }
        invocation.invoke_async::<i64>(&mut connection).await
    };
    cluster
        .bounded("lease renewal", super::BACKGROUND_TIMEOUT, call)
        .await;
}

impl Drop for Lease {
    fn drop(&mut self) {
        if self.local {
            if let Ok(mut local) = self.cluster.local.lock() {
                for set in &self.sets {
                    if let Some(count) = local.get_mut(set) {
                        *count = count.saturating_sub(1);
                    }
                }
            }
            return;
        }
        if let Ok(mut leases) = self.cluster.leases.lock() {
            leases.remove(&self.id);
        }
        // Given back at once where a runtime is at hand; otherwise it lapses within
        // one lease time, unrenewed.
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let cluster = self.cluster.clone();
        let sets = std::mem::take(&mut self.sets);
        let holder = cluster.tagged(self.id);
        runtime.spawn(async move {
            let mut pipe = redis::pipe();
            for set in &sets {
                pipe.zrem(set, &holder).ignore();
            }
            let release = |mut connection: ConnectionManager| async move {
                pipe.query_async::<()>(&mut connection).await
            };
            cluster.run("slot release", release).await;
        });
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::cluster::{Cluster, RawCluster};

    /// A cluster whose Redis never answered: every slot comes from the local share.
    pub(crate) fn unreachable(instances: u64) -> Arc<Cluster> {
        let raw: RawCluster = config::Config::builder()
            .add_source(config::File::from_str(
                &format!(
                    "redis_url = \"redis://127.0.0.1:1/0\"\ninstances = {instances}\npoll_ms = 5"
                ),
                config::FileFormat::Toml,
            ))
            .build()
            .unwrap()
            .try_deserialize()
            .unwrap();
        Cluster::new(raw.check().unwrap())
    }

    #[tokio::test]
    async fn without_redis_an_instance_takes_its_share_of_the_slots() {
        let cluster = unreachable(3);
        let wants = vec![("gpu".to_owned(), 6), ("key".to_owned(), 9)];
        let soon = || Instant::now() + std::time::Duration::from_millis(30);
        let first = cluster.lease(&wants, soon()).await.expect("one of two");
        let second = cluster.lease(&wants, soon()).await.expect("two of two");
        assert!(first.local && second.local);
        // 6 / 3 instances: the third waits, then gives up at its deadline.
        assert!(cluster.lease(&wants, soon()).await.is_none());
        drop(first);
        let third = cluster.lease(&wants, soon()).await;
        assert!(third.is_some(), "the freed share is taken again");
        assert_eq!(cluster.local.lock().unwrap().get("key"), Some(&2));
        assert_eq!(cluster.health(), "unreachable");
    }
}

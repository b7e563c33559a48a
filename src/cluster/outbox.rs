//! What an instance owes Redis after an answer: the tokens it used, charged to its key's
//! shared `tpm` and day, and its usage record, for the stream. Both wait here and ride
//! along with the next call this instance makes anyway: the next request's limit check
//! carries them in the same pipeline (`Cluster::admit`), so a limited key costs one
//! round trip per request in all, the check, instead of three. What no request takes
//! within `RIDE_WAIT` is sent by a background task, all of it in one pipeline, so a
//! quiet instance's charges reach the other instances within about that long.
//!
//! While Redis is unreachable, records wait (at most `pending_max`, the oldest dropped
//! first, with a count logged once) and go, in order, as soon as it answers. Charges
//! made meanwhile are not kept: each instance's own window already counted them, and
//! charging a minute's tokens minutes later would refuse the wrong requests.
//!
//! Delivery is at least once: a call that runs past the timeout may have reached Redis
//! before it was given up, and what it carried is sent again. Each record carries its
//! own `id` (instance and sequence), by which `switchyard usage --cluster` counts it
//! once.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use std::sync::LazyLock;

use redis::aio::ConnectionManager;
use redis::{Pipeline, Script};
use tokio::sync::Notify;

use super::usage::Record;
use super::{Cluster, BACKGROUND_TIMEOUT};

/// How long what is owed waits for a request to carry it before it is sent alone.
pub const RIDE_WAIT: Duration = Duration::from_millis(100);
/// The most records one request's check carries, so that a backlog never makes a
/// request's own call large.
pub const RIDE_RECORDS: usize = 16;
/// The most records one background call sends.
const SEND_BATCH: usize = 500;

/// `tpm` and `tokens_per_day` of one key, charged after an answer: Redis's clock picks
/// the second's bucket, so instances' clocks need not agree. KEYS: tpm buckets, the
/// day's counter. ARGV: tokens, then whether to charge each (1/0).
pub(super) static CHARGE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
local t = redis.call('TIME')
local tokens = tonumber(ARGV[1])
if ARGV[2] == '1' then
  redis.call('HINCRBY', KEYS[1], t[1], tokens)
  redis.call('EXPIRE', KEYS[1], 61)
end
if ARGV[3] == '1' then
  redis.call('INCRBY', KEYS[2], tokens)
  redis.call('EXPIRE', KEYS[2], 172800)
end
return 1
",
    )
});

/// The tokens of one answer, for its key's shared counts.
pub struct Charge {
    pub tpm_key: String,
    pub day_key: String,
    pub tokens: u64,
    pub minute: bool,
    pub day: bool,
}

/// What one call carries.
#[derive(Default)]
pub struct Batch {
    charges: Vec<Charge>,
    records: Vec<Record>,
}

impl Batch {
    pub fn is_empty(&self) -> bool {
        self.charges.is_empty() && self.records.is_empty()
    }

    /// Adds the batch's commands to `pipe`, their replies ignored. Charges go first so
    /// that a check later in the same pipeline already sees them.
    pub fn add_to(&self, pipe: &mut Pipeline) {
        self.add_charges_to(pipe);
        for record in &self.records {
            pipe.add_command(record.clone()).ignore();
        }
    }

    /// Adds the charges alone: a Redis that restarted has lost its scripts and refuses
    /// them with `NOSCRIPT` while the records beside them go in, so after loading the
    /// script again only these are sent again.
    pub fn add_charges_to(&self, pipe: &mut Pipeline) {
        for charge in &self.charges {
            let mut invocation = CHARGE.prepare_invoke();
            invocation
                .key(&charge.tpm_key)
                .key(&charge.day_key)
                .arg(charge.tokens)
                .arg(u8::from(charge.minute))
                .arg(u8::from(charge.day));
            pipe.invoke_script(&invocation).ignore();
        }
    }
}

/// Loads the scripts a pipeline uses, after a `NOSCRIPT`.
pub(super) async fn reload(connection: &mut ConnectionManager) -> redis::RedisResult<()> {
    CHARGE.prepare_invoke().load_async(connection).await?;
    super::limits::ADMIT
        .prepare_invoke()
        .load_async(connection)
        .await?;
    Ok(())
}

#[derive(Default)]
struct Owed {
    charges: Vec<Charge>,
    records: VecDeque<Record>,
    /// Since when something has waited: the background sends once this is
    /// `RIDE_WAIT` old, so under a steady flow of requests it never needs to.
    since: Option<Instant>,
}

impl Owed {
    fn owes(&mut self) {
        self.since.get_or_insert_with(Instant::now);
    }
}

/// One instance's debts to Redis.
#[derive(Default)]
pub struct Outbox {
    owed: Mutex<Owed>,
    /// Rung when something is owed, for the background sender.
    wake: Notify,
    /// Records dropped since Redis went away (`pending_max`), for logging once.
    dropped: AtomicU64,
    /// Whether records waited for an unreachable Redis, for logging their arrival.
    held: AtomicBool,
}

impl Outbox {
    /// Owes `charge`.
    pub fn charge(&self, charge: Charge) {
        if let Ok(mut owed) = self.owed.lock() {
            owed.charges.push(charge);
            owed.owes();
        }
        self.wake.notify_one();
    }

    /// Owes `record`; beyond `most` waiting records the oldest is dropped.
    pub fn record(&self, record: Record, most: usize) {
        if most == 0 {
            return;
        }
        if let Ok(mut owed) = self.owed.lock() {
            if owed.records.len() >= most {
                owed.records.pop_front();
                if self.dropped.fetch_add(1, Ordering::Relaxed) == 0 {
                    log::warn!(
                        "redis has been unreachable for {most} usage records (cluster.pending_max): the oldest are dropped from the stream (each instance's own ledger still has them)"
                    );
                }
            }
            owed.records.push_back(record);
            owed.owes();
        }
        self.wake.notify_one();
    }

    /// Takes every charge and the oldest `most_records` records.
    pub fn take(&self, most_records: usize) -> Batch {
        let Ok(mut owed) = self.owed.lock() else {
            return Batch::default();
        };
        let count = most_records.min(owed.records.len());
        let batch = Batch {
            charges: std::mem::take(&mut owed.charges),
            records: owed.records.drain(..count).collect(),
        };
        if owed.records.is_empty() {
            owed.since = None;
        }
        batch
    }

    /// Puts back what a call failed to deliver: the records ahead of any owed since,
    /// so the stream keeps their order; the charges are dropped (see the module's note).
    pub fn give_back(&self, batch: Batch) {
        if batch.records.is_empty() {
            return;
        }
        self.held.store(true, Ordering::Relaxed);
        if let Ok(mut owed) = self.owed.lock() {
            for record in batch.records.into_iter().rev() {
                owed.records.push_front(record);
            }
            owed.owes();
        }
    }

    /// Drops the charges not yet sent: Redis has gone away, and tokens charged minutes
    /// late would refuse the wrong requests (each instance's own window has them).
    pub fn drop_charges(&self) {
        if let Ok(mut owed) = self.owed.lock() {
            owed.charges.clear();
            if owed.records.is_empty() {
                owed.since = None;
            }
        }
    }

    /// How long until what waits longest has waited `RIDE_WAIT`; `None` when nothing
    /// waits.
    fn due_in(&self) -> Option<Duration> {
        let since = self.owed.lock().ok()?.since?;
        Some(RIDE_WAIT.saturating_sub(since.elapsed()))
    }

    /// Whether records wait that Redis failed to take.
    pub fn held(&self) -> bool {
        self.held.load(Ordering::Relaxed)
    }

    fn is_empty(&self) -> bool {
        self.owed
            .lock()
            .map(|owed| owed.charges.is_empty() && owed.records.is_empty())
            .unwrap_or(true)
    }

    #[cfg(test)]
    pub fn records(&self) -> usize {
        self.owed.lock().map(|owed| owed.records.len()).unwrap_or(0)
    }
}

impl Cluster {
    /// Sends everything owed, a batch per call, while Redis answers.
    pub(super) async fn send_owed(&self, connection: &ConnectionManager) {
        while self.is_up() {
            let batch = self.outbox.take(SEND_BATCH);
            if batch.is_empty() {
                break;
            }
            let mut pipe = redis::pipe();
            batch.add_to(&mut pipe);
            let mut connection = connection.clone();
            let charges = &batch;
            let call = async move {
                match pipe.query_async::<()>(&mut connection).await {
                    // The records went in; the charges met a Redis that lost its
                    // scripts (see `Batch::add_charges_to`) and go again.
                    Err(error) if error.kind() == redis::ErrorKind::NoScriptError => {
                        reload(&mut connection).await?;
                        let mut again = redis::pipe();
                        charges.add_charges_to(&mut again);
                        again.query_async::<()>(&mut connection).await
                    }
                    done => done,
                }
            };
            if self
                .bounded("sending usage records", BACKGROUND_TIMEOUT, call)
                .await
                .is_none()
            {
                self.outbox.give_back(batch);
                return;
            }
        }
        if self.outbox.is_empty() && self.outbox.held.swap(false, Ordering::Relaxed) {
            log::info!("usage records held while redis was unreachable are in the stream");
            self.outbox.dropped.store(0, Ordering::Relaxed);
        }
    }
}

/// The background sender: sends what has waited `RIDE_WAIT` for a request to carry it.
/// What it fails to send waits for `Cluster::keep` to find Redis again.
pub(super) async fn deliver(cluster: Arc<Cluster>) {
    loop {
        cluster.outbox.wake.notified().await;
        while let Some(due_in) = cluster.outbox.due_in() {
            if !due_in.is_zero() {
                tokio::time::sleep(due_in).await;
                continue;
            }
            match cluster.connection() {
                Some(connection) if cluster.is_up() => cluster.send_owed(&connection).await,
                // Held until `keep` finds Redis again.
                _ => cluster.outbox.held.store(true, Ordering::Relaxed),
            }
            if cluster.outbox.held() {
                break;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(n: u64) -> Record {
        let mut command = redis::cmd("XADD");
        command.arg(n);
        command
    }

    fn ids(batch: &Batch) -> Vec<String> {
        batch
            .records
            .iter()
            .map(|record| match record.args_iter().nth(1) {
                Some(redis::Arg::Simple(id)) => String::from_utf8_lossy(id).into_owned(),
                _ => String::new(),
            })
            .collect()
    }

    #[test]
    fn records_keep_their_order_through_a_failed_call_and_the_oldest_go_first_when_full() {
        let outbox = Outbox::default();
        for n in 0..5 {
            outbox.record(record(n), 4);
        }
        // The fifth pushed the first out.
        let failed = outbox.take(2);
        assert_eq!(ids(&failed), ["1", "2"]);
        outbox.record(record(5), 4);
        outbox.give_back(failed);
        assert_eq!(ids(&outbox.take(10)), ["1", "2", "3", "4", "5"]);
        assert!(outbox.is_empty());
    }

    #[test]
    fn charges_all_ride_and_failed_ones_are_not_kept() {
        let outbox = Outbox::default();
        for tokens in [3, 4] {
            outbox.charge(Charge {
                tpm_key: "t".into(),
                day_key: "d".into(),
                tokens,
                minute: true,
                day: false,
            });
        }
        outbox.record(record(0), 10);
        let batch = outbox.take(0);
        assert_eq!(batch.charges.len(), 2);
        assert!(batch.records.is_empty());
        let mut pipe = redis::pipe();
        batch.add_to(&mut pipe);
        assert_eq!(pipe.cmd_iter().count(), 2);
        outbox.give_back(batch);
        assert!(outbox.take(10).charges.is_empty());
    }
}

//! Per-key request rate (`rpm` in the keys file), counted by `governor`'s GCRA limiter:
//! a key may send `rpm` requests at once, then one more each `60 / rpm` seconds, which
//! keeps any minute at about `rpm`. A refusal says when the next request fits.
//!
//! The limiters live apart from the key store's policies, which are rebuilt on every
//! reload of the keys file: an edit to some other key does not hand this one a fresh
//! minute.
//!
//! Tokens per minute (`tpm`) are known only after an answer (from the usage the backend
//! reports; a stream's when it ends), so no limiter can take them up front: each key
//! keeps the tokens of its last minute's answers, a request is admitted while that sum
//! is under `tpm`, and a refusal waits until enough of them are a minute old. governor
//! has no way to charge a cost after the fact, hence the small window here.
//!
//! Tokens per day (`tokens_per_day`) count per UTC day: a key's tokens since the last
//! UTC midnight, seeded at start from the usage ledger (so a restart does not hand out
//! a fresh budget) and counted here after. A refusal waits until the next midnight.

use std::collections::{HashMap, VecDeque};
use std::num::NonZeroU32;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use governor::clock::{Clock, DefaultClock};
use governor::middleware::StateInformationMiddleware;
use governor::state::{InMemoryState, NotKeyed};
use governor::{Quota, RateLimiter};

/// A direct limiter that reports how much of its burst is left.
type KeyLimiter = RateLimiter<NotKeyed, InMemoryState, DefaultClock, StateInformationMiddleware>;

use crate::error::GatewayError;
use crate::keys::KeyPolicy;

/// A key's limiter with the `rpm` it was made for.
type Limiter = (u64, Arc<KeyLimiter>);

/// The tokens of one key's answers in the last minute: (when, tokens) oldest first, and
/// their sum. Answers within one [`SLICE`] of each other share an entry, so a busy key
/// keeps a few hundred entries rather than one per answer, and admitting a request
/// costs the same however busy it is; its tokens age out up to a slice early.
#[derive(Default)]
struct Spent {
    slices: VecDeque<(Instant, u64)>,
    total: u64,
}

/// Answers this close together share an entry of a key's minute.
const SLICE: Duration = Duration::from_millis(250);

/// What a limited key has left, for the `x-ratelimit-*` headers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RequestBudget {
    pub limit: u64,
    pub remaining: u64,
}

/// What a limited key has left of each of its limits.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Budgets {
    pub requests: Option<RequestBudget>,
    pub tokens: Option<RequestBudget>,
}

/// The window over which `tpm` counts.
const MINUTE: Duration = Duration::from_secs(60);

/// Milliseconds in a day, for `tokens_per_day`.
const DAY_MS: i64 = 86_400_000;

/// Each key's tokens of one UTC day.
#[derive(Default)]
struct Today {
    /// The day, as days since the Unix epoch.
    day: i64,
    by_key: HashMap<Arc<str>, u64>,
}

/// Why a request was refused: the 429 to answer, and the limit's name for the
/// rejection metric (`rpm`, `tpm`, `tokens_per_day`).
#[derive(Debug, Clone, PartialEq)]
pub struct Refusal {
    pub error: GatewayError,
    pub reason: &'static str,
}

/// Every limited key's request limiter and recent token spending, by key id.
#[derive(Default)]
pub struct RateLimits {
    limiters: Mutex<HashMap<Arc<str>, Limiter>>,
    spent: Mutex<HashMap<Arc<str>, Spent>>,
    today: Mutex<Today>,
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

impl RateLimits {
    /// Admits one request of `policy`'s key against its `tpm`, `tokens_per_day` and
    /// `rpm`: what it has left, or a 429 saying when the next request fits. A request
    /// refused for its tokens is not counted against `rpm`.
    pub fn admit(&self, policy: &KeyPolicy) -> Result<Budgets, Box<Refusal>> {
        // Boxed: a refusal is rare, and the error is large to carry back on every admission.
        let refused = |reason| move |error| Box::new(Refusal { error, reason });
        let minute = self.tokens_left(policy).map_err(refused("tpm"))?;
        let day = self
            .day_tokens_left(policy, now_ms())
            .map_err(refused("tokens_per_day"))?;
        let requests = self.count_request(policy).map_err(refused("rpm"))?;
        // The headers carry one token budget: the one with less left.
        let tokens = match (minute, day) {
            (Some(minute), Some(day)) if day.remaining < minute.remaining => Some(day),
            (minute, day) => minute.or(day),
        };
        Ok(Budgets { requests, tokens })
    }

    /// Notes the tokens an answer to `policy`'s key used: for its `tpm` (keys with one),
    /// and for its day (every key, so a `tokens_per_day` added by an edit of the keys
    /// file knows the day so far).
    pub fn spend(&self, policy: &KeyPolicy, tokens: u64) {
        if tokens == 0 {
            return;
        }
        if policy.tpm.is_some() {
            if let Ok(mut spent) = self.spent.lock() {
                let now = Instant::now();
                let window = spent.entry(policy.key_id.clone()).or_default();
                window.total += tokens;
                match window.slices.back_mut() {
                    Some((at, joined)) if now.duration_since(*at) < SLICE => *joined += tokens,
                    _ => window.slices.push_back((now, tokens)),
                }
            }
        }
        let day = now_ms().div_euclid(DAY_MS);
        if let Ok(mut today) = self.today.lock() {
            if today.day != day {
                today.day = day;
                today.by_key.clear();
            }
            match today.by_key.get_mut(&policy.key_id) {
                Some(spent) => *spent += tokens,
                None => {
                    today.by_key.insert(policy.key_id.clone(), tokens);
                }
            }
        }
    }

    /// Sets each key's tokens of today, as the usage ledger has them (at start).
    pub fn seed_day(&self, tokens: HashMap<Arc<str>, u64>) {
        if let Ok(mut today) = self.today.lock() {
            *today = Today {
                day: now_ms().div_euclid(DAY_MS),
                by_key: tokens,
            };
        }
    }

    /// The key's tokens left today (UTC), or a 429 until the next UTC midnight.
    fn day_tokens_left(
        &self,
        policy: &KeyPolicy,
        now_ms: i64,
    ) -> Result<Option<RequestBudget>, GatewayError> {
        let Some(limit) = policy.tokens_per_day else {
            return Ok(None);
        };
        let day = now_ms.div_euclid(DAY_MS);
        let used = match self.today.lock() {
            Ok(today) if today.day == day => today.by_key.get(&policy.key_id).copied().unwrap_or(0),
            _ => 0,
        };
        if used < limit {
            return Ok(Some(RequestBudget {
                limit,
                remaining: limit - used,
            }));
        }
        let wait_ms = (day + 1) * DAY_MS - now_ms;
        let retry_after_secs = u64::try_from((wait_ms + 999) / 1000).unwrap_or(1).max(1);
        Err(GatewayError::RateLimited {
            message: format!(
                "API key {} ({}) used {used} tokens today (UTC), over its limit of {limit} a day; retry in {retry_after_secs} s, after midnight UTC",
                policy.masked, policy.user
            ),
            retry_after_secs,
            tokens: true,
        })
    }

    /// The key's tokens left this minute, or a 429 when none are.
    fn tokens_left(&self, policy: &KeyPolicy) -> Result<Option<RequestBudget>, GatewayError> {
        let Some(tpm) = policy.tpm else {
            return Ok(None);
        };
        let now = Instant::now();
        let mut spent = self
            .spent
            .lock()
            .map_err(|_| GatewayError::Unauthorized { missing: false })?;
        let window = spent.entry(policy.key_id.clone()).or_default();
        while let Some(&(at, tokens)) = window.slices.front() {
            if now.duration_since(at) < MINUTE {
                break;
            }
            window.slices.pop_front();
            window.total -= tokens;
        }
        let used = window.total;
        if used < tpm {
            return Ok(Some(RequestBudget {
                limit: tpm,
                remaining: tpm - used,
            }));
        }
        // Wait until enough of the minute's tokens have aged out to be under the limit.
        let mut over = used - tpm;
        let mut frees_at = now + MINUTE;
        for (at, tokens) in window.slices.iter() {
            frees_at = *at + MINUTE;
            if *tokens > over {
                break;
            }
            over -= tokens;
        }
        let wait = frees_at.saturating_duration_since(now);
        let retry_after_secs = (wait.as_secs() + u64::from(wait.subsec_nanos() > 0)).max(1);
        Err(GatewayError::RateLimited {
            message: format!(
                "API key {} ({}) used {used} tokens in the last minute, over its limit of {tpm}; retry in {retry_after_secs} s",
                policy.masked, policy.user
            ),
            retry_after_secs,
            tokens: true,
        })
    }

    /// Counts one request against the key's `rpm`.
    fn count_request(&self, policy: &KeyPolicy) -> Result<Option<RequestBudget>, GatewayError> {
        let Some(rpm) = policy.rpm else {
            return Ok(None);
        };
        let Some(per_minute) = NonZeroU32::new(u32::try_from(rpm).unwrap_or(u32::MAX)) else {
            return Err(GatewayError::RateLimited {
                message: format!("API key {} may send no requests (rpm = 0)", policy.masked),
                retry_after_secs: 60,
                tokens: false,
            });
        };
        let limiter = {
            let mut limiters = self
                .limiters
                .lock()
                .map_err(|_| GatewayError::Unauthorized { missing: false })?;
            let entry = limiters
                .entry(policy.key_id.clone())
                .or_insert_with(|| (rpm, Arc::new(limiter(per_minute))));
            if entry.0 != rpm {
                // The limit changed in the keys file: a fresh minute at the new rate.
                *entry = (rpm, Arc::new(limiter(per_minute)));
            }
            entry.1.clone()
        };
        match limiter.check() {
            Ok(snapshot) => Ok(Some(RequestBudget {
                limit: rpm,
                remaining: u64::from(snapshot.remaining_burst_capacity()),
            })),
            Err(not_until) => {
                let wait = not_until.wait_time_from(DefaultClock::default().now());
                // Whole seconds, rounded up: a client that waits that long gets in.
                let retry_after_secs = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
                Err(GatewayError::RateLimited {
                    message: format!(
                        "API key {} ({}) is over its limit of {rpm} requests per minute; retry in {retry_after_secs} s",
                        policy.masked, policy.user
                    ),
                    retry_after_secs: retry_after_secs.max(1),
                    tokens: false,
                })
            }
        }
    }
}

fn limiter(per_minute: NonZeroU32) -> KeyLimiter {
    let quota = Quota::with_period(Duration::from_secs(60) / per_minute.get())
        .unwrap_or_else(|| Quota::per_minute(per_minute))
        .allow_burst(per_minute);
    RateLimiter::direct(quota).with_middleware::<StateInformationMiddleware>()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::keys::{policy, KeyEntry};

    #[test]
    fn a_key_gets_its_rpm_then_a_retry_after() {
        let entry = KeyEntry {
            user: "alice".into(),
            rpm: Some(3),
            ..KeyEntry::default()
        };
        let key = policy("sk-limited-0123456789", &entry).unwrap();
        let limits = RateLimits::default();
        let remaining: Vec<u64> = (0..3)
            .map(|_| limits.admit(&key).unwrap().requests.unwrap().remaining)
            .collect();
        assert_eq!(remaining, [2, 1, 0]);
        match limits.admit(&key).map_err(|refusal| *refusal) {
            Err(Refusal {
                error:
                    GatewayError::RateLimited {
                        retry_after_secs, ..
                    },
                reason: "rpm",
            }) => assert!((1..=20).contains(&retry_after_secs), "{retry_after_secs}"),
            other => panic!("expected a 429, got {other:?}"),
        }
        let open = policy(
            "sk-open-0123456789",
            &KeyEntry {
                user: "bob".into(),
                ..KeyEntry::default()
            },
        )
        .unwrap();
        assert_eq!(limits.admit(&open).unwrap(), Budgets::default());
    }

    #[test]
    fn tokens_spent_in_the_last_minute_hold_a_key_back() {
        let entry = KeyEntry {
            user: "alice".into(),
            tpm: Some(100),
            ..KeyEntry::default()
        };
        let key = policy("sk-tokens-0123456789", &entry).unwrap();
        let limits = RateLimits::default();
        assert_eq!(limits.admit(&key).unwrap().tokens.unwrap().remaining, 100);
        limits.spend(&key, 60);
        assert_eq!(limits.admit(&key).unwrap().tokens.unwrap().remaining, 40);
        limits.spend(&key, 50);
        match limits.admit(&key).map_err(|refusal| *refusal) {
            Err(Refusal {
                error:
                    GatewayError::RateLimited {
                        retry_after_secs, ..
                    },
                reason: "tpm",
            }) => assert!((59..=60).contains(&retry_after_secs), "{retry_after_secs}"),
            other => panic!("expected a 429, got {other:?}"),
        }
    }

    #[test]
    fn a_busy_key_keeps_a_few_entries_not_one_per_answer() {
        let entry = KeyEntry {
            user: "busy".into(),
            tpm: Some(1_000_000),
            ..KeyEntry::default()
        };
        let key = policy("sk-busy-0123456789", &entry).unwrap();
        let limits = RateLimits::default();
        for _ in 0..10_000 {
            limits.spend(&key, 12);
        }
        assert_eq!(
            limits.admit(&key).unwrap().tokens.unwrap().remaining,
            1_000_000 - 120_000
        );
        let spent = limits.spent.lock().unwrap();
        assert!(spent[&key.key_id].slices.len() <= 3);
    }

    #[test]
    fn a_day_budget_counts_from_the_ledger_and_frees_at_utc_midnight() {
        let entry = KeyEntry {
            user: "alice".into(),
            tpm: Some(1000),
            tokens_per_day: Some(100),
            ..KeyEntry::default()
        };
        let key = policy("sk-daily-0123456789", &entry).unwrap();
        let limits = RateLimits::default();
        limits.seed_day(HashMap::from([(key.key_id.clone(), 70)]));
        // The tighter of the two token budgets goes in the headers.
        assert_eq!(
            limits.admit(&key).unwrap().tokens,
            Some(RequestBudget {
                limit: 100,
                remaining: 30
            })
        );
        limits.spend(&key, 30);
        match limits.admit(&key).map_err(|refusal| *refusal) {
            Err(Refusal {
                error: GatewayError::RateLimited { tokens: true, .. },
                reason: "tokens_per_day",
            }) => {}
            other => panic!("expected a 429, got {other:?}"),
        }
        // One hour before midnight UTC, the wait is an hour.
        let eleven_pm = 20_000 * DAY_MS + 23 * 3_600_000;
        limits.seed_day(HashMap::from([(key.key_id.clone(), 100)]));
        limits.today.lock().unwrap().day = 20_000;
        match limits.day_tokens_left(&key, eleven_pm) {
            Err(GatewayError::RateLimited {
                retry_after_secs, ..
            }) => assert_eq!(retry_after_secs, 3600),
            other => panic!("expected a 429, got {other:?}"),
        }
        // The next day starts empty.
        assert_eq!(
            limits
                .day_tokens_left(&key, eleven_pm + 3_600_000)
                .unwrap()
                .unwrap()
                .remaining,
            100
        );
    }
}

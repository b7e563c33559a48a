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
use std::hash::{BuildHasherDefault, Hasher};
use std::num::NonZeroU32;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use actix_web::http::header::{HeaderMap, HeaderName, HeaderValue};
use governor::clock::{Clock, DefaultClock};
use governor::middleware::StateInformationMiddleware;
use governor::state::{InMemoryState, NotKeyed};
use governor::{Quota, RateLimiter};

/// A direct limiter that reports how much of its burst is left.
type KeyLimiter = RateLimiter<NotKeyed, InMemoryState, DefaultClock, StateInformationMiddleware>;

use crate::error::GatewayError;
use crate::keys::KeyPolicy;

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

/// Everything counted for one key: its request limiter with the `rpm` it was made for,
/// its tokens of the last minute, and its tokens of one UTC day. Kept together so that
/// admitting a request, and noting what its answer used, each find the key once.
#[derive(Default)]
struct Counts {
    requests: Option<(u64, KeyLimiter)>,
    minute: Spent,
    /// The day `day_tokens` are of, as days since the Unix epoch.
    day: i64,
    day_tokens: u64,
}

impl Counts {
    /// The tokens of the UTC day `day`.
    fn tokens_on(&self, day: i64) -> u64 {
        if self.day == day {
            self.day_tokens
        } else {
            0
        }
    }
}

/// FNV-1a, for the map of key ids. The ids come from the keys file (a short hex digest
/// of each configured key), never from a client, so the map needs no defence against
/// chosen collisions, and SipHash cost more than the rest of a limit check.
#[derive(Default)]
struct KeyIdHasher(u64);

impl Hasher for KeyIdHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        let mut hash = if self.0 == 0 {
            0xcbf2_9ce4_8422_2325
        } else {
            self.0
        };
        for byte in bytes {
            hash = (hash ^ u64::from(*byte)).wrapping_mul(0x0100_0000_01b3);
        }
        self.0 = hash;
    }
}

/// One key's counts, shared by every policy made for the key (a reload of the keys file
/// makes new ones), so an edit to some other key does not hand this one a fresh minute.
#[derive(Default)]
pub struct KeyCounts(Mutex<Counts>);

impl std::fmt::Debug for KeyCounts {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("KeyCounts")
    }
}

/// Where a key's policy keeps its counts once found (with the [`RateLimits`] they are
/// of), so that each request of the key finds them without the map and its lock.
pub type CountsCache = OnceLock<(u64, Arc<KeyCounts>)>;

type ByKey = HashMap<Arc<str>, Arc<KeyCounts>, BuildHasherDefault<KeyIdHasher>>;

/// Why a request was refused: the 429 to answer, and the limit's name for the
/// rejection metric (`rpm`, `tpm`, `tokens_per_day`).
#[derive(Debug, Clone, PartialEq)]
pub struct Refusal {
    pub error: GatewayError,
    pub reason: &'static str,
}

/// Every key's counts, by key id.
pub struct RateLimits {
    /// Tells these counts from another instance's in a policy's cache.
    id: u64,
    keys: Mutex<ByKey>,
}

impl Default for RateLimits {
    fn default() -> Self {
        static NEXT: AtomicU64 = AtomicU64::new(0);
        RateLimits {
            id: NEXT.fetch_add(1, Ordering::Relaxed),
            keys: Mutex::default(),
        }
    }
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

impl RateLimits {
    /// Runs `f` on the key's counts (made when it has none yet): from the policy's
    /// cache, else from the map, and then cached in the policy. `None` only when a lock
    /// was poisoned.
    fn with_counts<R>(&self, policy: &KeyPolicy, f: impl FnOnce(&mut Counts) -> R) -> Option<R> {
        let found;
        let counts = match policy.counts.get() {
            Some((owner, counts)) if *owner == self.id => counts,
            _ => {
                found = self
                    .keys
                    .lock()
                    .ok()?
                    .entry(policy.key_id.clone())
                    .or_default()
                    .clone();
                // A policy already caching another instance's counts keeps them, and
                // finds these through the map each time.
                let _ = policy.counts.set((self.id, found.clone()));
                &found
            }
        };
        let mut counts = counts.0.lock().ok()?;
        Some(f(&mut counts))
    }

    /// Admits one request of `policy`'s key against its `tpm`, `tokens_per_day` and
    /// `rpm`: what it has left, or a 429 saying when the next request fits. A request
    /// refused for its tokens is not counted against `rpm`.
    pub fn admit(&self, policy: &KeyPolicy) -> Result<Budgets, Box<Refusal>> {
        if !policy.is_limited() {
            return Ok(Budgets::default());
        }
        // Boxed: a refusal is rare, and the error is large to carry back on every admission.
        let refused = |reason| move |error| Box::new(Refusal { error, reason });
        self.with_counts(policy, |counts| {
            let minute = tokens_left(counts, policy).map_err(refused("tpm"))?;
            let day = match policy.tokens_per_day {
                Some(_) => {
                    day_tokens_left(counts, policy, now_ms()).map_err(refused("tokens_per_day"))?
                }
                None => None,
            };
            let requests = count_request(counts, policy).map_err(refused("rpm"))?;
            Ok(Budgets {
                requests,
                tokens: tighter(minute, day),
            })
        })
        .unwrap_or_else(|| {
            Err(refused("rpm")(GatewayError::Unauthorized {
                missing: false,
            }))
        })
    }

    /// Notes the tokens an answer to `policy`'s key used: for its `tpm` (keys with one),
    /// and for its day (every key, so a `tokens_per_day` added by an edit of the keys
    /// file knows the day so far).
    pub fn spend(&self, policy: &KeyPolicy, tokens: u64) {
        if tokens == 0 {
            return;
        }
        let day = now_ms().div_euclid(DAY_MS);
        self.with_counts(policy, |counts| {
            if policy.tpm.is_some() {
                let now = Instant::now();
                let window = &mut counts.minute;
                window.total += tokens;
                match window.slices.back_mut() {
                    Some((at, joined)) if now.duration_since(*at) < SLICE => *joined += tokens,
                    _ => window.slices.push_back((now, tokens)),
                }
            }
            counts.day_tokens = counts.tokens_on(day) + tokens;
            counts.day = day;
        });
    }

    /// Sets each key's tokens of today, as the usage ledger has them (at start); keys
    /// it does not name have none today.
    pub fn seed_day(&self, tokens: HashMap<Arc<str>, u64>) {
        let day = now_ms().div_euclid(DAY_MS);
        let Ok(mut keys) = self.keys.lock() else {
            return;
        };
        let set = |counts: &KeyCounts, tokens: u64| {
            if let Ok(mut counts) = counts.0.lock() {
                counts.day = day;
                counts.day_tokens = tokens;
            }
        };
        for counts in keys.values() {
            set(counts, 0);
        }
        for (key_id, tokens) in tokens {
            set(keys.entry(key_id).or_default(), tokens);
        }
    }
}

/// The key's tokens left today (UTC), or a 429 until the next UTC midnight.
fn day_tokens_left(
    counts: &Counts,
    policy: &KeyPolicy,
    now_ms: i64,
) -> Result<Option<RequestBudget>, GatewayError> {
    let Some(limit) = policy.tokens_per_day else {
        return Ok(None);
    };
    let day = now_ms.div_euclid(DAY_MS);
    let used = counts.tokens_on(day);
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
fn tokens_left(
    counts: &mut Counts,
    policy: &KeyPolicy,
) -> Result<Option<RequestBudget>, GatewayError> {
    let Some(tpm) = policy.tpm else {
        return Ok(None);
    };
    let now = Instant::now();
    let window = &mut counts.minute;
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
fn count_request(
    counts: &mut Counts,
    policy: &KeyPolicy,
) -> Result<Option<RequestBudget>, GatewayError> {
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
    let limiter = match &mut counts.requests {
        Some((made_for, limiter)) if *made_for == rpm => limiter,
        // New, or the limit changed in the keys file: a fresh minute at the new rate.
        slot => &slot.insert((rpm, limiter(per_minute))).1,
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

// Built at compile time: `from_static` checks its name on every call otherwise.
const LIMIT_REQUESTS: HeaderName = HeaderName::from_static("x-ratelimit-limit-requests");
const REMAINING_REQUESTS: HeaderName = HeaderName::from_static("x-ratelimit-remaining-requests");
const LIMIT_TOKENS: HeaderName = HeaderName::from_static("x-ratelimit-limit-tokens");
const REMAINING_TOKENS: HeaderName = HeaderName::from_static("x-ratelimit-remaining-tokens");

/// The headers carry one token budget, the one a client must heed: of the minute's and
/// the day's, the one with less left.
pub fn tighter(minute: Option<RequestBudget>, day: Option<RequestBudget>) -> Option<RequestBudget> {
    match (minute, day) {
        (Some(minute), Some(day)) if day.remaining < minute.remaining => Some(day),
        (minute, day) => minute.or(day),
    }
}

/// Sets the `x-ratelimit-*` headers of a limited key's answer: a limit and what is left
/// of it, for requests and for tokens (none for a key without limits).
pub fn write_headers(headers: &mut HeaderMap, budgets: &Budgets) {
    for (budget, limit, remaining) in [
        (budgets.requests, LIMIT_REQUESTS, REMAINING_REQUESTS),
        (budgets.tokens, LIMIT_TOKENS, REMAINING_TOKENS),
    ] {
        if let Some(budget) = budget {
            headers.insert(limit, limit_value(budget.limit));
            headers.insert(remaining, number(budget.remaining));
        }
    }
}

/// A number as a header value, copied once from its digits (`HeaderValue::from(u64)`
/// grows a buffer for it instead).
fn number(n: u64) -> HeaderValue {
    let mut digits = itoa::Buffer::new();
    HeaderValue::from_str(digits.format(n)).unwrap_or_else(|_| HeaderValue::from(n))
}

/// How many limits' header values each worker keeps made.
const KEPT: usize = 4;
/// The next place to fill, and the limits made, each with its value.
type MadeLimits = (usize, [Option<(u64, HeaderValue)>; KEPT]);

/// A key's limit as a header value. Limits are few and the same on every answer of a
/// key, so each worker keeps the last few it made and hands out a shared copy (a
/// reference count) instead of formatting and allocating the same digits again.
fn limit_value(limit: u64) -> HeaderValue {
    thread_local! {
        static MADE: std::cell::RefCell<MadeLimits> =
            const { std::cell::RefCell::new((0, [const { None }; KEPT])) };
    }
    MADE.with(|made| {
        let Ok(mut made) = made.try_borrow_mut() else {
            return number(limit);
        };
        let (next, kept) = &mut *made;
        if let Some((_, value)) = kept.iter().flatten().find(|(n, _)| *n == limit) {
            return value.clone();
        }
        let value = number(limit);
        kept[*next] = Some((limit, value.clone()));
        *next = (*next + 1) % KEPT;
        value
    })
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
    fn a_reloaded_key_keeps_its_minute_and_each_instance_counts_its_own() {
        let entry = KeyEntry {
            user: "alice".into(),
            rpm: Some(3),
            ..KeyEntry::default()
        };
        let limits = RateLimits::default();
        let before = policy("sk-reload-0123456789", &entry).unwrap();
        let remaining = |limits: &RateLimits, key: &KeyPolicy| {
            limits.admit(key).unwrap().requests.unwrap().remaining
        };
        assert_eq!(remaining(&limits, &before), 2);
        assert_eq!(remaining(&limits, &before), 1);
        // The keys file read again: a new policy for the same key finds the same counts.
        let after = policy("sk-reload-0123456789", &entry).unwrap();
        assert_eq!(remaining(&limits, &after), 0);
        assert!(limits.admit(&before).is_err());
        // Another instance (its policy cache taken by the first) counts from scratch.
        let other = RateLimits::default();
        assert_eq!(remaining(&other, &before), 2);
        assert_eq!(remaining(&other, &after), 1);
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
        let keys = limits.keys.lock().unwrap();
        assert!(keys[&key.key_id].0.lock().unwrap().minute.slices.len() <= 3);
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
        let keys = limits.keys.lock().unwrap();
        let mut counts = keys[&key.key_id].0.lock().unwrap();
        counts.day = 20_000;
        match day_tokens_left(&counts, &key, eleven_pm) {
            Err(GatewayError::RateLimited {
                retry_after_secs, ..
            }) => assert_eq!(retry_after_secs, 3600),
            other => panic!("expected a 429, got {other:?}"),
        }
        // The next day starts empty.
        assert_eq!(
            day_tokens_left(&counts, &key, eleven_pm + 3_600_000)
                .unwrap()
                .unwrap()
                .remaining,
            100
        );
    }

    #[test]
    fn the_headers_say_each_limit_and_what_is_left_of_it() {
        let header = |headers: &HeaderMap, name: &str| {
            headers
                .get(name)
                .map(|value| value.to_str().unwrap().to_owned())
        };
        // More distinct limits than a worker keeps made, twice over: each answer still
        // carries its own.
        for round in 0..2 {
            for n in 0..10u64 {
                let mut headers = HeaderMap::new();
                write_headers(
                    &mut headers,
                    &Budgets {
                        requests: Some(RequestBudget {
                            limit: 60 + n,
                            remaining: n,
                        }),
                        tokens: (n % 2 == 0).then_some(RequestBudget {
                            limit: 200_000 + n,
                            remaining: 199_000 - round,
                        }),
                    },
                );
                let expected_tokens = (n % 2 == 0).then(|| (200_000 + n).to_string());
                assert_eq!(
                    header(&headers, "x-ratelimit-limit-requests"),
                    Some((60 + n).to_string())
                );
                assert_eq!(
                    header(&headers, "x-ratelimit-remaining-requests"),
                    Some(n.to_string())
                );
                assert_eq!(
                    header(&headers, "x-ratelimit-limit-tokens"),
                    expected_tokens
                );
                assert_eq!(
                    header(&headers, "x-ratelimit-remaining-tokens"),
                    (n % 2 == 0).then(|| (199_000 - round).to_string())
                );
            }
        }
        let mut headers = HeaderMap::new();
        write_headers(&mut headers, &Budgets::default());
        assert!(headers.is_empty());
    }
}

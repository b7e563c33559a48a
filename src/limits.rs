//! Per-key request rate (`rpm` in the keys file), counted by `governor`'s GCRA limiter:
//! a key may send `rpm` requests at once, then one more each `60 / rpm` seconds, which
//! keeps any minute at about `rpm`. A refusal says when the next request fits.
//!
//! The limiters live apart from the key store's policies, which are rebuilt on every
//! reload of the keys file: an edit to some other key does not hand this one a fresh
//! minute. Token budgets (`tpm`, `tokens_per_day`) are not enforced here yet.

use std::collections::HashMap;
use std::num::NonZeroU32;
use std::sync::{Arc, Mutex};
use std::time::Duration;

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

/// What a limited key has left, for the `x-ratelimit-*` headers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RequestBudget {
    pub limit: u64,
    pub remaining: u64,
}

/// Every limited key's request limiter, by key id.
#[derive(Default)]
pub struct RateLimits {
    limiters: Mutex<HashMap<Arc<str>, Limiter>>,
}

impl RateLimits {
    /// Counts one request of `policy`'s key: its budget after this request, or a 429
    /// saying when the next one fits. `None` for a key without `rpm`.
    pub fn admit(&self, policy: &KeyPolicy) -> Result<Option<RequestBudget>, GatewayError> {
        let Some(rpm) = policy.rpm else {
            return Ok(None);
        };
        let Some(per_minute) = NonZeroU32::new(u32::try_from(rpm).unwrap_or(u32::MAX)) else {
            return Err(GatewayError::RateLimited {
                message: format!("API key {} may send no requests (rpm = 0)", policy.masked),
                retry_after_secs: 60,
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
            .map(|_| limits.admit(&key).unwrap().unwrap().remaining)
            .collect();
        assert_eq!(remaining, [2, 1, 0]);
        match limits.admit(&key) {
            Err(GatewayError::RateLimited {
                retry_after_secs, ..
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
        assert_eq!(limits.admit(&open).unwrap(), None);
    }
}

//! A key's `rpm`, `tpm` and `tokens_per_day` counted in Redis for every instance at
//! once, so that three instances together admit what one would.
//!
//! One Lua script checks all of a key's limits and counts the request (one `EVALSHA`,
//! one round trip, atomic: no two instances can both take the last request of a
//! minute). `rpm` is a sliding window of the last 60 s (a sorted set of admitted
//! requests scored by Redis's clock): at most `rpm` in any minute, and a refusal's
//! `Retry-After` is when the oldest of them turns a minute old. `tpm` keeps the tokens
//! of the last minute's answers in per-second buckets (a hash), `tokens_per_day` one
//! counter per key and UTC day; both are charged after an answer, off the request path,
//! riding with the next check (`outbox`).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::LazyLock;

use redis::Script;

use super::outbox::{reload, Batch, RIDE_RECORDS};
use super::Cluster;
use crate::error::GatewayError;
use crate::keys::KeyPolicy;
use crate::limits::{tighter, Budgets, RateLimits, Refusal, RequestBudget};

/// KEYS: rpm window, tpm buckets, today's tokens. ARGV: rpm, tpm, tokens per day (0:
/// none), this request's member in the window, ms left in the UTC day.
/// Returns {admitted, which refused (1 rpm, 2 tpm, 3 day), retry ms, rpm left, tpm
/// left, day left} with -1 for a limit the key does not have.
pub(super) static ADMIT: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local rpm, tpm, day = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local tpm_left, day_left, rpm_left = -1, -1, -1
if tpm > 0 then
  local second = math.floor(now / 1000)
  local buckets = redis.call('HGETALL', KEYS[2])
  local used, kept = 0, {}
  for i = 1, #buckets, 2 do
    local at, tokens = tonumber(buckets[i]), tonumber(buckets[i + 1])
    if at <= second - 60 then
      redis.call('HDEL', KEYS[2], buckets[i])
    else
      used = used + tokens
      table.insert(kept, {at, tokens})
    end
  end
  if used >= tpm then
    table.sort(kept, function(a, b) return a[1] < b[1] end)
    local over, frees = used - tpm, (second + 60) * 1000
    for _, bucket in ipairs(kept) do
      frees = (bucket[1] + 60) * 1000
      if bucket[2] > over then break end
      over = over - bucket[2]
    end
    return {0, 2, frees - now, -1, 0, -1}
  end
  tpm_left = tpm - used
end
if day > 0 then
  local used = tonumber(redis.call('GET', KEYS[3]) or '0')
  if used >= day then
    return {0, 3, tonumber(ARGV[5]), -1, tpm_left, 0}
  end
  day_left = day - used
end
if rpm > 0 then
  redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - 60000)
  local count = redis.call('ZCARD', KEYS[1])
  if count >= rpm then
    local oldest = redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')
    return {0, 1, tonumber(oldest[2]) + 60000 - now, 0, tpm_left, day_left}
  end
  redis.call('ZADD', KEYS[1], now, ARGV[4])
  redis.call('PEXPIRE', KEYS[1], 61000)
  rpm_left = rpm - count - 1
end
return {1, 0, 0, rpm_left, tpm_left, day_left}
",
    )
});

/// The limit that refused a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Limit {
    Rpm,
    Tpm,
    TokensPerDay,
}

/// What the shared counts said.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Counted {
    /// Admitted, with what is left of each limit the key has.
    Admitted {
        requests: Option<RequestBudget>,
        tokens: Option<RequestBudget>,
        day: Option<RequestBudget>,
    },
    /// Refused by `limit`, which frees in `retry_after_secs`.
    Refused { limit: Limit, retry_after_secs: u64 },
}

/// Milliseconds in a day.
const DAY_MS: i64 = 86_400_000;

fn now_ms() -> i64 {
    jiff::Timestamp::now().as_millisecond()
}

impl Cluster {
    pub(super) fn limit_keys(&self, key_id: &str) -> [String; 3] {
        let day = now_ms().div_euclid(DAY_MS).to_string();
        [
            self.key(&["rpm", key_id]),
            self.key(&["tpm", key_id]),
            self.key(&["day", key_id, &day]),
        ]
    }

    /// Checks and counts one request of `policy`'s key in Redis: `None` when Redis did
    /// not answer within the timeout (the caller then counts locally).
    pub async fn admit(&self, policy: &KeyPolicy) -> Option<Counted> {
        let [rpm_key, tpm_key, day_key] = self.limit_keys(&policy.key_id);
        let member = self.tagged(self.next_id());
        let left_today = DAY_MS - now_ms().rem_euclid(DAY_MS);
        let (rpm, tpm, day) = (
            policy.rpm.unwrap_or(0),
            policy.tpm.unwrap_or(0),
            policy.tokens_per_day.unwrap_or(0),
        );
        if rpm == 0 && policy.rpm.is_some() {
            // rpm = 0 admits nothing; the local limiter says so without Redis.
            return None;
        }
        let mut invocation = ADMIT.prepare_invoke();
        invocation
            .key(&rpm_key)
            .key(&tpm_key)
            .key(&day_key)
            .arg(rpm)
            .arg(tpm)
            .arg(day)
            .arg(&member)
            .arg(left_today);
        // What earlier answers owe Redis rides in the same pipeline, ahead of the check.
        let owed = if self.is_up() {
            self.outbox.take(RIDE_RECORDS)
        } else {
            Batch::default()
        };
        let delivered = AtomicBool::new(false);
        let reply: Option<Vec<i64>> = self
            .run("rate limits", |mut connection| {
                let (owed, delivered, invocation) = (&owed, &delivered, &invocation);
                async move {
                    let mut pipe = redis::pipe();
                    owed.add_to(&mut pipe);
                    pipe.invoke_script(invocation);
                    match pipe.query_async::<(Vec<i64>,)>(&mut connection).await {
                        Ok((reply,)) => Ok(reply),
                        // A Redis that restarted has lost the loaded scripts: the
                        // records that rode along went in, the charges and the check
                        // go again once the scripts are loaded.
                        Err(error) if error.kind() == redis::ErrorKind::NoScriptError => {
                            delivered.store(true, Ordering::Relaxed);
                            reload(&mut connection).await?;
                            let mut again = redis::pipe();
                            owed.add_charges_to(&mut again);
                            again.invoke_script(invocation);
                            again
                                .query_async::<(Vec<i64>,)>(&mut connection)
                                .await
                                .map(|(reply,)| reply)
                        }
                        Err(error) => Err(error),
                    }
                }
            })
            .await;
        if reply.is_none() && !delivered.load(Ordering::Relaxed) {
            self.outbox.give_back(owed);
        }
        let reply = reply?;
        let [admitted, which, retry_ms, rpm_left, tpm_left, day_left] = reply[..] else {
            log::warn!("redis's rate-limit script answered {reply:?}");
            return None;
        };
        if admitted != 1 {
            let retry = u64::try_from(retry_ms).unwrap_or(0);
            return Some(Counted::Refused {
                limit: match which {
                    1 => Limit::Rpm,
                    2 => Limit::Tpm,
                    _ => Limit::TokensPerDay,
                },
                retry_after_secs: retry.div_ceil(1000).max(1),
            });
        }
        let budget = |limit: Option<u64>, left: i64| {
            limit.map(|limit| RequestBudget {
                limit,
                remaining: u64::try_from(left).unwrap_or(0),
            })
        };
        Some(Counted::Admitted {
            requests: budget(policy.rpm, rpm_left),
            tokens: budget(policy.tpm, tpm_left),
            day: budget(policy.tokens_per_day, day_left),
        })
    }
}

impl Cluster {
    /// Admits one request of `policy`'s key on the shared counts, or, while Redis does
    /// not answer, on `local` with this instance's share of each limit.
    pub async fn count(
        &self,
        policy: &KeyPolicy,
        local: &RateLimits,
    ) -> Result<Budgets, Box<Refusal>> {
        match self.admit(policy).await {
            Some(Counted::Admitted {
                requests,
                tokens,
                day,
            }) => Ok(Budgets {
                requests,
                tokens: tighter(tokens, day),
            }),
            Some(Counted::Refused {
                limit,
                retry_after_secs,
            }) => Err(Box::new(Refusal {
                reason: match limit {
                    Limit::Rpm => "rpm",
                    Limit::Tpm => "tpm",
                    Limit::TokensPerDay => "tokens_per_day",
                },
                error: GatewayError::RateLimited {
                message: format!(
                    "API key {} ({}) is over its {} across all of this gateway's instances; retry in {retry_after_secs} s",
                    policy.masked,
                    policy.user,
                    match limit {
                        Limit::Rpm => "limit of requests per minute (rpm)",
                        Limit::Tpm => "limit of tokens per minute (tpm)",
                        Limit::TokensPerDay => "tokens for today (tokens_per_day)",
                    }
                ),
                retry_after_secs,
                tokens: limit != Limit::Rpm,
            }})),
            None => local.admit(&self.local_share(policy)),
        }
    }

    /// `policy` with each limit cut to this instance's share.
    fn local_share(&self, policy: &KeyPolicy) -> KeyPolicy {
        let mut share = policy.clone();
        let cut = |limit: Option<u64>| {
            limit.map(|limit| {
                if limit == 0 {
                    0
                } else {
                    self.settings.share(limit)
                }
            })
        };
        share.rpm = cut(policy.rpm);
        share.tpm = cut(policy.tpm);
        share.tokens_per_day = cut(policy.tokens_per_day);
        share
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::keys::{policy, KeyEntry};

    #[tokio::test]
    async fn without_redis_a_key_gets_this_instances_share() {
        let cluster = crate::cluster::slots::tests::unreachable(3);
        let entry = KeyEntry {
            user: "carol".into(),
            rpm: Some(12),
            ..KeyEntry::default()
        };
        let key = policy("sk-shared-0123456789", &entry).unwrap();
        let local = RateLimits::default();
        let mut admitted = 0;
        for _ in 0..12 {
            match cluster.count(&key, &local).await {
                Ok(budgets) => {
                    admitted += 1;
                    assert_eq!(budgets.requests.unwrap().limit, 4);
                }
                Err(refusal) => assert_eq!(refusal.reason, "rpm"),
            }
        }
        assert_eq!(admitted, 4, "12 rpm over 3 instances");
    }
}

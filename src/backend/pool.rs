//! Several upstream servers behind one backend: each request goes to the member with the
//! fewest requests in flight; a member that fails several times in a row is taken out
//! for a cool-down, then probed, and only a good probe lets it take requests again.
//!
//! The state is shared by all workers (atomics and one small lock per member), so an
//! ejection seen by one worker holds for all. The backend's upstream keys take turns
//! and rest here too ([`KeyRing`]), for the same reason.

use std::sync::atomic::{AtomicBool, AtomicU32, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use super::keys::KeyRing;

/// Every backend's pool by backend name, built once at start and shared by workers.
#[derive(Debug, Default)]
pub struct Pools(std::collections::HashMap<String, Arc<Pool>>);

impl Pools {
    /// One pool per backend that has upstream servers.
    pub fn for_config(config: &crate::config::Config) -> Pools {
        Pools(
            config
                .backends
                .iter()
                .filter_map(|backend| {
                    let upstream = backend.kind.upstream()?;
                    Some((backend.name.clone(), Arc::new(Pool::for_config(upstream))))
                })
                .collect(),
        )
    }

    /// The pool of a backend, if it has upstream servers.
    pub fn get(&self, backend: &str) -> Option<Arc<Pool>> {
        self.0.get(backend).cloned()
    }
}

/// The shared health and load of a backend's upstream servers.
#[derive(Debug)]
pub struct Pool {
    members: Vec<Member>,
    /// Rotates the starting point so ties in load are spread round-robin.
    next: AtomicUsize,
    max_failures: u32,
    cooldown: Duration,
    /// The backend's upstream keys, by their variables' names.
    keys: KeyRing,
}

#[derive(Debug)]
struct Member {
    url: String,
    in_flight: AtomicUsize,
    consecutive_failures: AtomicU32,
    /// Set while the member is out; cleared by a good probe.
    ejected_until: Mutex<Option<Instant>>,
    probing: AtomicBool,
}

/// Where a member stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Health {
    Healthy,
    /// Out until the cool-down ends.
    Ejected,
    /// Cool-down over; waiting for a probe to succeed.
    Probation,
}

impl Health {
    fn name(self) -> &'static str {
        match self {
            Health::Healthy => "healthy",
            Health::Ejected => "ejected",
            Health::Probation => "probing",
        }
    }
}

/// Holds one request's place in a member's in-flight count until dropped.
#[derive(Debug)]
pub struct InFlight {
    pool: Arc<Pool>,
    index: usize,
}

impl InFlight {
    /// The member this request went to.
    pub fn index(&self) -> usize {
        self.index
    }

    /// Notes that the request failed at this member.
    pub fn failed(&self) {
        self.pool.failed(self.index);
    }

    /// Notes that this member answered.
    pub fn succeeded(&self) {
        self.pool.succeeded(self.index);
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.pool.members[self.index]
            .in_flight
            .fetch_sub(1, Ordering::Relaxed);
    }
}

impl Pool {
    /// A pool of these base URLs.
    pub fn new(urls: &[String], max_failures: u32, cooldown: Duration) -> Pool {
        Pool {
            members: urls
                .iter()
                .map(|url| Member {
                    url: url.clone(),
                    in_flight: AtomicUsize::new(0),
                    consecutive_failures: AtomicU32::new(0),
                    ejected_until: Mutex::new(None),
                    probing: AtomicBool::new(false),
                })
                .collect(),
            next: AtomicUsize::new(0),
            max_failures: max_failures.max(1),
            cooldown,
            keys: KeyRing::default(),
        }
    }

    /// The pool of a backend's configured servers and keys.
    pub fn for_config(config: &super::UpstreamConfig) -> Pool {
        let urls: Vec<String> = config
            .base_urls
            .iter()
            .map(|url| url.as_str().to_owned())
            .collect();
        Pool {
            keys: KeyRing::new(config.keys.iter().map(|key| key.env.as_str())),
            ..Pool::new(&urls, config.max_failures, config.cooldown)
        }
    }

    /// The backend's upstream keys: whose turn it is and which rest.
    pub fn keys(&self) -> &KeyRing {
        &self.keys
    }

    /// Each key by its variable's name and how long it still rests, for `/health`'s
    /// admin detail; None for a backend that sends no key.
    pub fn key_report(&self) -> Option<Vec<Value>> {
        (!self.keys.is_empty()).then(|| self.keys.report())
    }

    /// The base URL of a member.
    pub fn url(&self, index: usize) -> &str {
        &self.members[index].url
    }

    /// How many members there are.
    pub fn len(&self) -> usize {
        self.members.len()
    }

    /// Whether the pool has no members (never, once configured).
    pub fn is_empty(&self) -> bool {
        self.members.is_empty()
    }

    fn health(&self, index: usize, now: Instant) -> Health {
        let until = self.members[index]
            .ejected_until
            .lock()
            .map(|u| *u)
            .unwrap_or(None);
        match until {
            None => Health::Healthy,
            Some(until) if now < until => Health::Ejected,
            Some(_) => Health::Probation,
        }
    }

    /// Picks the healthy member with the fewest requests in flight, skipping `tried`.
    /// When no member is healthy, every untried member is a candidate: a backend that
    /// is wholly down is still tried rather than refused without a word. Returns the
    /// place in flight and the members that are due for a probe.
    pub fn pick(self: &Arc<Self>, tried: &[usize]) -> (Option<InFlight>, Vec<usize>) {
        let now = Instant::now();
        let count = self.members.len();
        let start = self.next.fetch_add(1, Ordering::Relaxed);
        let mut due = Vec::new();
        let mut best: Option<(usize, usize)> = None;
        let mut fallback: Option<(usize, usize)> = None;
        for offset in 0..count {
            let index = (start + offset) % count;
            if tried.contains(&index) {
                continue;
            }
            let load = self.members[index].in_flight.load(Ordering::Relaxed);
            let candidate = Some((index, load));
            match self.health(index, now) {
                Health::Healthy => {
                    if best.is_none_or(|(_, l)| load < l) {
                        best = candidate;
                    }
                }
                health => {
                    if health == Health::Probation
                        && !self.members[index].probing.swap(true, Ordering::AcqRel)
                    {
                        due.push(index);
                    }
                    if fallback.is_none_or(|(_, l)| load < l) {
                        fallback = candidate;
                    }
                }
            }
        }
        let chosen = best.or(fallback).map(|(index, _)| {
            self.members[index]
                .in_flight
                .fetch_add(1, Ordering::Relaxed);
            InFlight {
                pool: self.clone(),
                index,
            }
        });
        (chosen, due)
    }

    /// Notes an answer from a member: its run of failures is over.
    pub fn succeeded(&self, index: usize) {
        self.members[index]
            .consecutive_failures
            .store(0, Ordering::Relaxed);
    }

    /// Notes a failure (refused, reset, 5xx, timeout); ejects the member once it has
    /// failed `max_failures` times in a row.
    pub fn failed(&self, index: usize) {
        let member = &self.members[index];
        let failures = member.consecutive_failures.fetch_add(1, Ordering::Relaxed) + 1;
        if failures >= self.max_failures {
            if let Ok(mut until) = member.ejected_until.lock() {
                if until.is_none() {
                    log::warn!(
                        "upstream {} failed {failures} times in a row; out for {}s",
                        member.url,
                        self.cooldown.as_secs_f64()
                    );
                }
                *until = Some(Instant::now() + self.cooldown);
            }
        }
    }

    /// Records a probe's outcome: a good one returns the member to service, a bad one
    /// starts another cool-down.
    pub fn probed(&self, index: usize, ok: bool) {
        let member = &self.members[index];
        if let Ok(mut until) = member.ejected_until.lock() {
            if ok {
                log::info!(
                    "upstream {} answered its probe; back in service",
                    member.url
                );
                *until = None;
                member.consecutive_failures.store(0, Ordering::Relaxed);
            } else {
                *until = Some(Instant::now() + self.cooldown);
            }
        }
        member.probing.store(false, Ordering::Release);
    }

    /// Each member's state, for `/health`.
    pub fn report(&self) -> Vec<Value> {
        let now = Instant::now();
        (0..self.members.len())
            .map(|index| {
                let member = &self.members[index];
                json!({
                    "url": without_credentials(&member.url),
                    "state": self.health(index, now).name(),
                    "in_flight": member.in_flight.load(Ordering::Relaxed),
                    "consecutive_failures": member.consecutive_failures.load(Ordering::Relaxed),
                })
            })
            .collect()
    }

    /// Whether at least one member takes requests.
    pub fn any_healthy(&self) -> bool {
        let now = Instant::now();
        (0..self.members.len()).any(|index| self.health(index, now) == Health::Healthy)
    }
}

/// A URL fit for an open page: any `user:password@` removed.
pub(super) fn without_credentials(url: &str) -> String {
    match url::Url::parse(url) {
        Ok(mut parsed) if !parsed.username().is_empty() || parsed.password().is_some() => {
            let _ = parsed.set_username("");
            let _ = parsed.set_password(None);
            parsed.to_string().trim_end_matches('/').to_owned()
        }
        _ => url.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pool(n: usize) -> Arc<Pool> {
        let urls: Vec<String> = (0..n).map(|i| format!("http://u{i}")).collect();
        Arc::new(Pool::new(&urls, 2, Duration::from_millis(50)))
    }

    #[test]
    fn least_in_flight_wins_and_places_are_released() {
        let pool = pool(2);
        let (first, _) = pool.pick(&[]);
        let first = first.unwrap();
        let (second, _) = pool.pick(&[]);
        let second = second.unwrap();
        assert_ne!(
            first.index(),
            second.index(),
            "the busy member is passed over"
        );
        let busy = first.index();
        drop(second);
        let (third, _) = pool.pick(&[]);
        assert_ne!(third.unwrap().index(), busy);
    }

    #[test]
    fn repeated_failures_eject_until_a_probe_succeeds() {
        let pool = pool(2);
        pool.failed(0);
        assert!(
            pool.report()[0]["state"] == "healthy",
            "one failure is not enough"
        );
        pool.failed(0);
        assert_eq!(pool.report()[0]["state"], "ejected");
        for _ in 0..4 {
            assert_eq!(
                pool.pick(&[]).0.unwrap().index(),
                1,
                "no requests to an ejected member"
            );
        }
        std::thread::sleep(Duration::from_millis(60));
        let (_, due) = pool.pick(&[]);
        assert_eq!(due, vec![0], "cool-down over: probe it");
        let (_, due) = pool.pick(&[]);
        assert!(due.is_empty(), "one probe at a time");
        assert_eq!(
            pool.pick(&[]).0.unwrap().index(),
            1,
            "no traffic before the probe answers"
        );
        pool.probed(0, true);
        assert_eq!(pool.report()[0]["state"], "healthy");
    }

    #[test]
    fn health_never_shows_credentials() {
        let pool = Pool::new(
            &["https://user:token@example.com/v1".to_owned()],
            3,
            Duration::from_secs(1),
        );
        assert_eq!(pool.report()[0]["url"], "https://example.com/v1");
    }

    #[test]
    fn a_wholly_failed_pool_is_still_tried() {
        let pool = pool(1);
        pool.failed(0);
        pool.failed(0);
        assert!(!pool.any_healthy());
        assert_eq!(pool.pick(&[]).0.unwrap().index(), 0);
        assert!(
            pool.pick(&[0]).0.is_none(),
            "tried members are not picked again"
        );
    }
}

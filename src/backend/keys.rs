//! Several upstream keys behind one backend, used in turn: each request takes the next
//! key that is not resting. A key the upstream refuses (401 or 403: revoked or out of
//! credit) or throttles (429) rests for the upstream's `Retry-After` when it gives one,
//! else for [`REFUSED_REST`] or [`RATE_LIMIT_REST`]; the request that met the refusal
//! is sent once more with another key before the client sees anything (see
//! `Upstream::dispatch`).
//!
//! The ring lives in the backend's [`Pool`](super::Pool), shared by all workers, so a
//! key resting on one worker rests on all. It knows keys only by their variable's name
//! and their place: the keys themselves stay in the checked configuration.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

/// How long a key answered with 429 rests when the upstream gives no `Retry-After`:
/// providers' per-minute limits reset within a minute.
pub const RATE_LIMIT_REST: Duration = Duration::from_secs(60);
/// How long a key answered with 401 or 403 rests when the upstream gives no
/// `Retry-After`: such a key rarely mends by itself, but an operator may top it up, so
/// it is tried again now and then rather than dropped for good.
pub const REFUSED_REST: Duration = Duration::from_secs(300);
/// The longest rest any `Retry-After` can ask for, so that one odd header cannot take a
/// key out for days.
pub const MAX_REST: Duration = Duration::from_secs(3600);

/// The shared turn and rest of a backend's keys.
#[derive(Debug, Default)]
pub struct KeyRing {
    keys: Vec<KeyState>,
    /// Whose turn it is next; taken with a fetch-add, so workers share one rotation.
    next: AtomicUsize,
}

#[derive(Debug)]
struct KeyState {
    /// The variable the key was read from: all a report shows of it.
    env: String,
    /// Set while the key rests.
    resting_until: Mutex<Option<Instant>>,
}

impl KeyRing {
    /// A ring of the keys read from these variables, in this order.
    pub fn new<'a>(envs: impl IntoIterator<Item = &'a str>) -> KeyRing {
        KeyRing {
            keys: envs
                .into_iter()
                .map(|env| KeyState {
                    env: env.to_owned(),
                    resting_until: Mutex::new(None),
                })
                .collect(),
            next: AtomicUsize::new(0),
        }
    }

    /// How many keys there are.
    pub fn len(&self) -> usize {
        self.keys.len()
    }

    /// Whether the backend sends no key.
    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    fn resting_until(&self, index: usize, now: Instant) -> Option<Instant> {
        let until = self.keys[index]
            .resting_until
            .lock()
            .map(|until| *until)
            .unwrap_or(None);
        until.filter(|until| *until > now)
    }

    /// The key for the next request: the next in turn that is not resting; when all
    /// rest, the one whose rest ends first (a request is still sent rather than refused
    /// by the gateway itself). None when there are no keys.
    pub fn pick(&self) -> Option<usize> {
        let count = self.keys.len();
        if count == 0 {
            return None;
        }
        let start = self.next.fetch_add(1, Ordering::Relaxed);
        let now = Instant::now();
        let mut soonest: Option<(usize, Instant)> = None;
        for offset in 0..count {
            let index = (start + offset) % count;
            match self.resting_until(index, now) {
                None => return Some(index),
                Some(until) => {
                    if soonest.is_none_or(|(_, best)| until < best) {
                        soonest = Some((index, until));
                    }
                }
            }
        }
        soonest.map(|(index, _)| index)
    }

    /// Another key than `refused` that is not resting, the next after it in turn: the
    /// one a refused request is sent again with. None when every other key rests.
    pub fn other_ready(&self, refused: usize) -> Option<usize> {
        let count = self.keys.len();
        let now = Instant::now();
        (1..count)
            .map(|offset| (refused + offset) % count)
            .find(|&index| self.resting_until(index, now).is_none())
    }

    /// Puts a key to rest for `rest` from now.
    pub fn rest(&self, index: usize, rest: Duration) {
        if let Ok(mut until) = self.keys[index].resting_until.lock() {
            *until = Some(Instant::now() + rest);
        }
    }

    /// The variable a key was read from.
    pub fn env(&self, index: usize) -> &str {
        &self.keys[index].env
    }

    /// Each key by its variable's name, whether it rests and for how many more seconds
    /// (rounded up, so a resting key never shows 0), for `/health`'s admin detail.
    pub fn report(&self) -> Vec<Value> {
        let now = Instant::now();
        (0..self.keys.len())
            .map(|index| {
                let left = self
                    .resting_until(index, now)
                    .map_or(Duration::ZERO, |until| until - now);
                json!({
                    "env": self.keys[index].env,
                    "resting": !left.is_zero(),
                    "resting_secs": left.as_secs_f64().ceil() as u64,
                })
            })
            .collect()
    }
}

/// How long a key rests after the upstream answered `status` with this `Retry-After`
/// (seconds; the HTTP-date form is not worth parsing for a rest this coarse), or None
/// when the status says nothing about the key.
pub fn rest_for(status: u16, retry_after: Option<&str>) -> Option<Duration> {
    let default = match status {
        429 => RATE_LIMIT_REST,
        401 | 403 => REFUSED_REST,
        _ => return None,
    };
    let asked = retry_after
        .and_then(|value| value.trim().parse::<f64>().ok())
        .filter(|secs| secs.is_finite() && *secs >= 0.0)
        .map(|secs| Duration::from_secs_f64(secs.min(MAX_REST.as_secs_f64())));
    Some(asked.unwrap_or(default))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_take_turns_and_a_resting_one_is_skipped() {
        let ring = KeyRing::new(["A", "B", "C"]);
        let turns: Vec<_> = (0..4).map(|_| ring.pick().unwrap()).collect();
        assert_eq!(turns, vec![0, 1, 2, 0]);
        ring.rest(1, Duration::from_secs(60));
        let turns: Vec<_> = (0..3).map(|_| ring.pick().unwrap()).collect();
        assert_eq!(turns, vec![2, 2, 0], "B's turn goes to the next ready key");
        assert_eq!(ring.other_ready(0), Some(2));
        assert_eq!(ring.other_ready(2), Some(0));
        let report = ring.report();
        assert_eq!(report[1]["env"], "B");
        assert_eq!(report[1]["resting"], true);
        assert_eq!(report[1]["resting_secs"], 60);
        assert_eq!(report[0]["resting_secs"], 0);
    }

    #[test]
    fn when_all_rest_the_soonest_back_is_used_and_none_is_offered_for_a_retry() {
        let ring = KeyRing::new(["A", "B"]);
        ring.rest(0, Duration::from_secs(30));
        ring.rest(1, Duration::from_secs(5));
        assert_eq!(ring.pick(), Some(1));
        assert_eq!(ring.pick(), Some(1));
        assert_eq!(ring.other_ready(1), None);
        assert_eq!(KeyRing::new([]).pick(), None);
    }

    #[test]
    fn a_rest_ends() {
        let ring = KeyRing::new(["A", "B"]);
        ring.rest(0, Duration::from_millis(20));
        assert_eq!(ring.other_ready(1), None);
        std::thread::sleep(Duration::from_millis(30));
        assert_eq!(ring.other_ready(1), Some(0));
        assert_eq!(ring.report()[0]["resting"], false);
    }

    #[test]
    fn the_rest_follows_retry_after_or_the_status() {
        assert_eq!(rest_for(429, None), Some(RATE_LIMIT_REST));
        assert_eq!(rest_for(401, None), Some(REFUSED_REST));
        assert_eq!(rest_for(403, Some("soon")), Some(REFUSED_REST));
        assert_eq!(rest_for(429, Some(" 2 ")), Some(Duration::from_secs(2)));
        assert_eq!(rest_for(429, Some("99999999")), Some(MAX_REST));
        assert_eq!(rest_for(500, Some("2")), None);
        assert_eq!(rest_for(404, None), None);
    }
}

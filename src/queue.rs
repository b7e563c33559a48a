//! Admission to a busy backend: `max_concurrent` slots per backend, a bounded line of
//! requests waiting for them, and a key's own `max_concurrent` across all backends.
//!
//! One GPU serves a household or a class; without a limit the upstream slows down for
//! everyone, and with a plain first-come line one user's batch of twenty starves the
//! others. So waiting requests are served round-robin between users and first-come
//! within a user: each free slot goes to the next user in the ring that has a request
//! it may start (a request whose key is at its own cap is passed over), and that user
//! moves to the back of the ring.
//!
//! A slot is a [`Slot`], held from the upstream call to the answer's last byte and
//! given back (and handed to the next in line) when dropped. A request that has to wait
//! holds a [`Ticket`]; dropping it (the client left) takes it out of the line at once.
//! Backends without `max_concurrent` and keys without one never reach the lock: their
//! admission is one comparison.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio::sync::{oneshot, watch};
use tokio::time::Instant;

use crate::error::GatewayError;
use crate::metrics::Metrics;

/// How many requests may wait for a backend's slots when `max_queue` is not written.
pub const DEFAULT_MAX_QUEUE: u64 = 100;
/// How long a request may wait for a slot when `queue_timeout_secs` is not written.
pub const DEFAULT_QUEUE_TIMEOUT_SECS: f64 = 120.0;
/// The longest `Retry-After` an estimate gives: beyond it, the estimate means nothing.
const LONGEST_RETRY_SECS: u64 = 3600;

/// A backend's concurrency limit, checked.
#[derive(Debug, Clone, PartialEq)]
pub struct QueueSettings {
    /// Requests served at once.
    pub max_concurrent: usize,
    /// Requests that may wait for a slot; one more is refused at once.
    pub max_queue: usize,
    /// The longest a request waits before it is refused.
    pub timeout: Duration,
}

impl QueueSettings {
    /// Checks the three keys of the backend at `key` (`backends[2]`) as written: no
    /// `max_concurrent` means no limit, and then the other two have nothing to limit.
    pub fn check(
        key: &str,
        max_concurrent: Option<i64>,
        max_queue: Option<i64>,
        queue_timeout_secs: Option<f64>,
    ) -> Result<Option<QueueSettings>, String> {
        let count = |field: &str, value: i64| {
            usize::try_from(value)
                .ok()
                .filter(|n| *n > 0)
                .ok_or_else(|| format!("{key}.{field} must be at least 1 (it is {value})"))
        };
        let Some(max_concurrent) = max_concurrent else {
            if let Some(field) = [
                max_queue.map(|_| "max_queue"),
                queue_timeout_secs.map(|_| "queue_timeout_secs"),
            ]
            .into_iter()
            .flatten()
            .next()
            {
                return Err(format!(
                    "{key}.{field} limits the line for a backend's slots, but there is no max_concurrent: add max_concurrent or remove {field}"
                ));
            }
            return Ok(None);
        };
        let timeout = queue_timeout_secs.unwrap_or(DEFAULT_QUEUE_TIMEOUT_SECS);
        if !(timeout.is_finite() && timeout > 0.0) {
            return Err(format!(
                "{key}.queue_timeout_secs must be a positive number of seconds (it is {timeout})"
            ));
        }
        Ok(Some(QueueSettings {
            max_concurrent: count("max_concurrent", max_concurrent)?,
            max_queue: count("max_queue", max_queue.unwrap_or(DEFAULT_MAX_QUEUE as i64))?,
            timeout: Duration::from_secs_f64(timeout),
        }))
    }
}

/// A key with its own `max_concurrent`: its id, counted across every backend.
#[derive(Debug, Clone)]
pub struct KeyCap {
    pub key_id: Arc<str>,
    pub max: u64,
}

/// Every backend's slots and line, and the keys' counts; one per server, shared by all
/// workers.
pub struct Admission {
    /// Backend names with a limit, in the order of `settings`, `changed` and the lines.
    names: Vec<Box<str>>,
    settings: Vec<QueueSettings>,
    /// Bumped whenever a line changes, for waiters that show their place.
    changed: Vec<watch::Sender<u64>>,
    state: Mutex<State>,
    metrics: Arc<Metrics>,
    /// Where the slots are also leased cluster-wide (`[cluster]`).
    cluster: Option<Arc<crate::cluster::Cluster>>,
}

#[derive(Default)]
struct State {
    lines: Vec<Line>,
    /// Requests in flight per key that has a cap; a key with none is not listed.
    keys: HashMap<Arc<str>, u64>,
    next_id: u64,
}

/// One backend's slots and the requests waiting for them.
#[derive(Default)]
struct Line {
    running: usize,
    waiting: usize,
    /// The ring of users with requests waiting; the front is served next.
    users: VecDeque<UserLine>,
    /// How long a slot is held, on average lately: what `Retry-After` is estimated from.
    average_hold: Option<Duration>,
}

struct UserLine {
    user: Arc<str>,
    waiters: VecDeque<Waiter>,
}

struct Waiter {
    id: u64,
    key: Option<KeyCap>,
    grant: oneshot::Sender<()>,
}

/// What asking for a slot gives.
pub enum Admit {
    /// Go ahead, holding this (nothing, where nothing is limited).
    Go(Option<Slot>),
    /// Wait in line.
    Wait(Ticket),
}

/// A slot of a backend and of a key, given back when dropped.
pub struct Slot {
    admission: Arc<Admission>,
    line: Option<usize>,
    key: Option<Arc<str>>,
    since: Instant,
    /// The cluster-wide slot held with this one, given back first.
    lease: Option<crate::cluster::slots::Lease>,
}

/// A place in a backend's line; dropped, it leaves the line (or gives back the slot it
/// was just given).
pub struct Ticket {
    admission: Arc<Admission>,
    line: usize,
    id: u64,
    user: Arc<str>,
    key: Option<Arc<str>>,
    granted: oneshot::Receiver<()>,
    deadline: Instant,
    changes: Option<watch::Receiver<u64>>,
    /// Turned into a slot or refused: nothing left to undo.
    done: bool,
}

/// What a wait came to.
pub enum Progress {
    /// The line changed; the place may have too.
    Moved,
    Granted(Slot),
}

impl Admission {
    /// The limits of every backend that has one.
    pub fn new(backends: &[(String, Option<QueueSettings>)], metrics: Arc<Metrics>) -> Admission {
        let limited: Vec<(&String, &QueueSettings)> = backends
            .iter()
            .filter_map(|(name, settings)| settings.as_ref().map(|s| (name, s)))
            .collect();
        for (name, _) in &limited {
            metrics.queue_depth(name, 0);
            metrics.in_flight(name, 0);
        }
        Admission {
            names: limited
                .iter()
                .map(|(name, _)| (*name).as_str().into())
                .collect(),
            settings: limited.iter().map(|(_, s)| (*s).clone()).collect(),
            changed: limited.iter().map(|_| watch::channel(0).0).collect(),
            state: Mutex::new(State {
                lines: limited.iter().map(|_| Line::default()).collect(),
                ..State::default()
            }),
            metrics,
            cluster: None,
        }
    }

    /// Leases every slot cluster-wide too, through `cluster`.
    pub fn with_cluster(mut self, cluster: Option<Arc<crate::cluster::Cluster>>) -> Admission {
        self.cluster = cluster;
        self
    }

    /// The cluster the slots are shared with, if any.
    pub fn cluster(&self) -> Option<&Arc<crate::cluster::Cluster>> {
        self.cluster.as_ref()
    }

    /// A limited backend's requests holding a slot, waiting in line, and its
    /// `max_concurrent`, for the console; `None` for a backend without a limit.
    pub fn load(&self, backend: &str) -> Option<(usize, usize, usize)> {
        let index = self.names.iter().position(|name| &**name == backend)?;
        let state = self.lock();
        let line = state.lines.get(index)?;
        Some((
            line.running,
            line.waiting,
            self.settings[index].max_concurrent,
        ))
    }

    /// Whether any backend is limited.
    pub fn limits_backends(&self) -> bool {
        !self.names.is_empty()
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock leaves counts that are still whole numbers:
        // serving on is better than refusing everyone.
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Asks for a slot of `backend` for `user`, whose key may have its own cap: a slot
    /// now, a place in line, or a 429 (line full; a capped key with no line to wait in).
    pub fn admit(
        self: &Arc<Self>,
        backend: &str,
        user: &Arc<str>,
        key: Option<&KeyCap>,
    ) -> Result<Admit, GatewayError> {
        let line = self.names.iter().position(|name| &**name == backend);
        if line.is_none() && key.is_none() {
            return Ok(Admit::Go(None));
        }
        let mut state = self.lock();
        let key_free = key.is_none_or(|cap| state.key_free(cap));
        let Some(index) = line else {
            if !key_free {
                drop(state);
                self.metrics.rejected(user, "max_concurrent");
                return Err(key_at_cap(key));
            }
            state.take_key(key);
            return Ok(Admit::Go(Some(self.slot(None, key))));
        };
        let settings = &self.settings[index];
        let entry = &mut state.lines[index];
        if key_free && entry.running < settings.max_concurrent {
            // Anyone still waiting here waits for their key, not for this slot.
            entry.running += 1;
            state.take_key(key);
            self.gauges(index, &state.lines[index]);
            return Ok(Admit::Go(Some(self.slot(Some(index), key))));
        }
        if entry.waiting >= settings.max_queue {
            let retry = estimate(entry, settings, entry.waiting);
            let message = format!(
                "backend '{backend}' is busy: {} requests running and {} waiting, as many as its queue holds (max_queue); retry in about {retry} s",
                entry.running, entry.waiting
            );
            drop(state);
            self.metrics.rejected(user, "queue_full");
            return Err(refusal(message, retry));
        }
        let (grant, granted) = oneshot::channel();
        state.next_id += 1;
        let id = state.next_id;
        let entry = &mut state.lines[index];
        entry.waiting += 1;
        let waiter = Waiter {
            id,
            key: key.cloned(),
            grant,
        };
        match entry.users.iter_mut().find(|line| line.user == *user) {
            Some(line) => line.waiters.push_back(waiter),
            None => entry.users.push_back(UserLine {
                user: user.clone(),
                waiters: VecDeque::from([waiter]),
            }),
        }
        self.gauges(index, &state.lines[index]);
        drop(state);
        self.changed[index].send_modify(|generation| *generation += 1);
        Ok(Admit::Wait(Ticket {
            admission: self.clone(),
            line: index,
            id,
            user: user.clone(),
            key: key.map(|cap| cap.key_id.clone()),
            granted,
            deadline: Instant::now() + settings.timeout,
            changes: None,
            done: false,
        }))
    }

    fn slot(self: &Arc<Self>, line: Option<usize>, key: Option<&KeyCap>) -> Slot {
        Slot {
            admission: self.clone(),
            line,
            key: key.map(|cap| cap.key_id.clone()),
            since: Instant::now(),
            lease: None,
        }
    }

    fn gauges(&self, index: usize, line: &Line) {
        self.metrics.queue_depth(&self.names[index], line.waiting);
        self.metrics.in_flight(&self.names[index], line.running);
    }

    /// Gives a slot back and hands out what it frees.
    fn release(&self, line: Option<usize>, key: Option<&Arc<str>>, held: Option<Duration>) {
        let mut state = self.lock();
        if let Some(key) = key {
            state.give_key(key);
        }
        if let Some(index) = line {
            let entry = &mut state.lines[index];
            entry.running = entry.running.saturating_sub(1);
            if let Some(held) = held {
                // An average of the last dozen or so holds: recent enough to follow a
                // change of model or load, steady enough for one long answer not to
                // swing it.
                entry.average_hold = Some(match entry.average_hold {
                    None => held,
                    Some(average) => average.mul_f64(0.9) + held.mul_f64(0.1),
                });
            }
        }
        // A key's slot frees requests of that key waiting on any backend.
        for index in 0..state.lines.len() {
            if key.is_none() && Some(index) != line {
                continue;
            }
            let changed = self.dispatch(&mut state, index);
            if changed || Some(index) == line {
                self.gauges(index, &state.lines[index]);
            }
            if changed {
                self.changed[index].send_modify(|generation| *generation += 1);
            }
        }
    }

    /// Gives a line's free slots to the next users in the ring; whether anyone moved.
    fn dispatch(&self, state: &mut State, index: usize) -> bool {
        let limit = self.settings[index].max_concurrent;
        let mut moved = false;
        while state.lines[index].running < limit {
            let Some((at, position)) = next_eligible(&state.lines[index], &state.keys) else {
                break;
            };
            let entry = &mut state.lines[index];
            let Some(mut user) = entry.users.remove(at) else {
                break;
            };
            let Some(waiter) = user.waiters.remove(position) else {
                break;
            };
            if !user.waiters.is_empty() {
                entry.users.push_back(user);
            }
            entry.waiting -= 1;
            moved = true;
            if waiter.grant.send(()).is_ok() {
                entry.running += 1;
                state.take_key(waiter.key.as_ref());
            }
        }
        moved
    }

    /// Takes a waiter out of its line; false when it is no longer there (it was given
    /// a slot).
    fn leave(&self, index: usize, id: u64) -> bool {
        let mut state = self.lock();
        let entry = &mut state.lines[index];
        let Some(at) = entry
            .users
            .iter()
            .position(|line| line.waiters.iter().any(|w| w.id == id))
        else {
            return false;
        };
        let user = &mut entry.users[at];
        user.waiters.retain(|w| w.id != id);
        if user.waiters.is_empty() {
            entry.users.remove(at);
        }
        entry.waiting -= 1;
        self.gauges(index, &state.lines[index]);
        drop(state);
        self.changed[index].send_modify(|generation| *generation += 1);
        true
    }

    /// The place of waiter `id` in its line, 1 being next, as the ring would serve it if
    /// nobody else came.
    fn position(&self, index: usize, id: u64) -> Option<usize> {
        let state = self.lock();
        position_in(&state.lines[index], id)
    }
}

impl State {
    fn key_free(&self, cap: &KeyCap) -> bool {
        self.keys.get(&cap.key_id).copied().unwrap_or(0) < cap.max
    }

    fn take_key(&mut self, key: Option<&KeyCap>) {
        if let Some(cap) = key {
            *self.keys.entry(cap.key_id.clone()).or_insert(0) += 1;
        }
    }

    fn give_key(&mut self, key: &Arc<str>) {
        if let Some(count) = self.keys.get_mut(key) {
            *count -= 1;
            if *count == 0 {
                self.keys.remove(key);
            }
        }
    }
}

/// The ring index of the first user with a request that may start (its key below its
/// cap), and that request's index in the user's own line.
fn next_eligible(line: &Line, keys: &HashMap<Arc<str>, u64>) -> Option<(usize, usize)> {
    line.users.iter().enumerate().find_map(|(at, user)| {
        user.waiters
            .iter()
            .position(|waiter| {
                waiter
                    .key
                    .as_ref()
                    .is_none_or(|cap| keys.get(&cap.key_id).copied().unwrap_or(0) < cap.max)
            })
            .map(|position| (at, position))
    })
}

/// Round robin's order: the `k`-th waiter of the user at ring place `r` comes after
/// every user's first `k` waiters and after the `k+1`-th of the users before `r`.
fn position_in(line: &Line, id: u64) -> Option<usize> {
    let (ring, round) = line.users.iter().enumerate().find_map(|(at, user)| {
        user.waiters
            .iter()
            .position(|w| w.id == id)
            .map(|round| (at, round))
    })?;
    let ahead: usize = line
        .users
        .iter()
        .enumerate()
        .map(|(at, user)| {
            user.waiters.len().min(round) + usize::from(at < ring && user.waiters.len() > round)
        })
        .sum();
    Some(ahead + 1)
}

/// Seconds until `ahead` requests before this one would have had their turn, from how
/// long slots are held lately; 1 while nothing is known yet.
fn estimate(line: &Line, settings: &QueueSettings, ahead: usize) -> u64 {
    let Some(hold) = line.average_hold else {
        return 1;
    };
    let secs = hold.as_secs_f64() * (ahead + 1) as f64 / settings.max_concurrent as f64;
    (secs.ceil() as u64).clamp(1, LONGEST_RETRY_SECS)
}

/// A 429 with its `Retry-After`.
fn refusal(message: String, retry_after_secs: u64) -> GatewayError {
    GatewayError::RateLimited {
        message,
        retry_after_secs,
        tokens: false,
    }
}

fn key_at_cap(key: Option<&KeyCap>) -> GatewayError {
    let max = key.map_or(0, |cap| cap.max);
    refusal(
        format!("this key already has {max} requests in flight, its max_concurrent; retry when one has finished"),
        1,
    )
}

impl Ticket {
    /// The place in line now, 1 being next.
    pub fn position(&self) -> Option<usize> {
        self.admission.position(self.line, self.id)
    }

    /// Waits for the slot (a 429 once the wait is over).
    pub async fn granted(mut self) -> Result<Slot, GatewayError> {
        loop {
            if let Progress::Granted(slot) = self.next(false).await? {
                return Ok(slot);
            }
        }
    }

    /// Waits for the slot or, with `watch`, for the line to change.
    pub async fn next(&mut self, watch: bool) -> Result<Progress, GatewayError> {
        if watch && self.changes.is_none() {
            let mut changes = self.admission.changed[self.line].subscribe();
            changes.mark_unchanged();
            self.changes = Some(changes);
            // Whatever changed before watching began: the caller looks again.
            return Ok(Progress::Moved);
        }
        let changed = async {
            match (&mut self.changes, watch) {
                (Some(changes), true) => {
                    if changes.changed().await.is_err() {
                        futures::future::pending::<()>().await;
                    }
                }
                _ => futures::future::pending::<()>().await,
            }
        };
        tokio::select! {
            // A slot that came wins over news of the line: no place is shown then.
            biased;
            granted = &mut self.granted => match granted {
                Ok(()) => Ok(Progress::Granted(self.take())),
                // The admission is gone with its server; nothing will be served.
                Err(_) => self.expired(),
            },
            () = tokio::time::sleep_until(self.deadline) => self.expired(),
            () = changed => Ok(Progress::Moved),
        }
    }

    fn take(&mut self) -> Slot {
        self.done = true;
        Slot {
            admission: self.admission.clone(),
            line: Some(self.line),
            key: self.key.clone(),
            since: Instant::now(),
            lease: None,
        }
    }

    /// The wait is over: out of the line with a 429, unless the slot came just now.
    fn expired(&mut self) -> Result<Progress, GatewayError> {
        let admission = self.admission.clone();
        let ahead = self.position().map_or(0, |place| place - 1);
        if !admission.leave(self.line, self.id) && self.granted.try_recv().is_ok() {
            // Given a slot as the time ran out: it is this request's.
            return Ok(Progress::Granted(self.take()));
        }
        self.done = true;
        admission.metrics.rejected(&self.user, "queue_timeout");
        let state = admission.lock();
        let line = &state.lines[self.line];
        let settings = &admission.settings[self.line];
        let retry = estimate(line, settings, ahead);
        let message = format!(
            "waited {} s for a free slot of backend '{}' (queue_timeout_secs) with {} requests running and {} waiting; retry in about {retry} s",
            settings.timeout.as_secs_f64(),
            admission.names[self.line],
            line.running,
            line.waiting
        );
        Err(refusal(message, retry))
    }
}

impl Drop for Ticket {
    fn drop(&mut self) {
        if self.done {
            return;
        }
        if !self.admission.leave(self.line, self.id) && self.granted.try_recv().is_ok() {
            // The slot came as the client left: it goes to the next in line.
            drop(self.take());
        }
    }
}

impl Slot {
    /// The backend this slot is of, with its `max_concurrent` and `queue_timeout_secs`.
    pub fn limit(&self) -> Option<(&str, usize, Duration)> {
        let line = self.line?;
        let settings = &self.admission.settings[line];
        Some((
            &self.admission.names[line],
            settings.max_concurrent,
            settings.timeout,
        ))
    }

    /// Holds a cluster-wide slot with this one.
    pub fn hold(&mut self, lease: crate::cluster::slots::Lease) {
        self.lease = Some(lease);
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        // The cluster's slot first: a request of another instance may be waiting on it.
        drop(self.lease.take());
        let held = self.line.map(|_| self.since.elapsed());
        self.admission.release(self.line, self.key.as_ref(), held);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(max_concurrent: usize, max_queue: usize) -> QueueSettings {
        QueueSettings {
            max_concurrent,
            max_queue,
            timeout: Duration::from_secs(60),
        }
    }

    fn admission(max_concurrent: usize, max_queue: usize) -> Arc<Admission> {
        Arc::new(Admission::new(
            &[
                ("gpu".to_owned(), Some(settings(max_concurrent, max_queue))),
                ("free".to_owned(), None),
            ],
            Arc::new(Metrics::new()),
        ))
    }

    fn user(name: &str) -> Arc<str> {
        Arc::from(name)
    }

    fn go(admit: Result<Admit, GatewayError>) -> Slot {
        match admit {
            Ok(Admit::Go(Some(slot))) => slot,
            _ => panic!("expected a slot now"),
        }
    }

    fn wait(admit: Result<Admit, GatewayError>) -> Ticket {
        match admit {
            Ok(Admit::Wait(ticket)) => ticket,
            _ => panic!("expected to wait"),
        }
    }

    /// The ticket's slot, if it has been given one, without waiting.
    fn granted(ticket: &mut Ticket) -> Option<Slot> {
        ticket.granted.try_recv().ok().map(|()| ticket.take())
    }

    /// Whether the ticket has been given its slot; the slot is given back at once.
    fn served(ticket: &mut Ticket) -> bool {
        granted(ticket).is_some()
    }

    #[test]
    fn unlimited_backends_and_keys_take_no_slot() {
        let admission = admission(1, 4);
        assert!(matches!(
            admission.admit("free", &user("a"), None),
            Ok(Admit::Go(None))
        ));
    }

    #[test]
    fn bob_is_served_within_two_slots_of_alices_twenty() {
        let admission = admission(1, 100);
        let alice = user("alice");
        let bob = user("bob");
        let running = go(admission.admit("gpu", &alice, None));
        let mut alices: Vec<Ticket> = (0..20)
            .map(|_| wait(admission.admit("gpu", &alice, None)))
            .collect();
        let mut bobs = wait(admission.admit("gpu", &bob, None));
        assert_eq!(bobs.position(), Some(2));
        assert_eq!(alices[0].position(), Some(1));
        assert_eq!(alices[1].position(), Some(3));
        drop(running);
        // The first free slot: alice's first; the second: bob's.
        let first = granted(&mut alices[0]).expect("alice's first");
        assert!(granted(&mut bobs).is_none());
        assert_eq!(bobs.position(), Some(1));
        drop(first);
        let second = granted(&mut bobs).expect("bob's, second");
        assert!(granted(&mut alices[1]).is_none());
        drop(second);
        for (index, ticket) in alices.iter_mut().enumerate().skip(1) {
            assert!(served(ticket), "alice's {index} in order");
        }
        let state = admission.lock();
        assert_eq!((state.lines[0].running, state.lines[0].waiting), (0, 0));
    }

    #[test]
    fn first_come_within_a_user_and_round_robin_between_three() {
        let admission = admission(1, 100);
        let running = go(admission.admit("gpu", &user("x"), None));
        let order = ["a", "a", "a", "b", "c", "c"];
        let mut tickets: Vec<(&str, Ticket)> = order
            .iter()
            .map(|name| (*name, wait(admission.admit("gpu", &user(name), None))))
            .collect();
        let positions: Vec<usize> = tickets.iter().map(|(_, t)| t.position().unwrap()).collect();
        // a1 b c1 a2 c2 a3
        assert_eq!(positions, vec![1, 4, 6, 2, 3, 5]);
        drop(running);
        let mut served_order = Vec::new();
        for _ in 0..order.len() {
            let next = tickets
                .iter_mut()
                .position(|(_, ticket)| served(ticket))
                .expect("one is served per freed slot");
            served_order.push(tickets.remove(next).0);
        }
        assert_eq!(served_order, vec!["a", "b", "c", "a", "c", "a"]);
    }

    #[test]
    fn a_full_line_and_a_capped_key_without_a_line_are_refused() {
        let admission = admission(1, 1);
        let _running = go(admission.admit("gpu", &user("a"), None));
        let _waiting = wait(admission.admit("gpu", &user("a"), None));
        match admission.admit("gpu", &user("b"), None) {
            Err(GatewayError::RateLimited {
                retry_after_secs, ..
            }) => assert!(retry_after_secs >= 1),
            _ => panic!("a full line refuses"),
        }
        let key = KeyCap {
            key_id: Arc::from("k1"),
            max: 1,
        };
        let first = go(admission.admit("free", &user("c"), Some(&key)));
        assert!(matches!(
            admission.admit("free", &user("c"), Some(&key)),
            Err(GatewayError::RateLimited {
                retry_after_secs: 1,
                ..
            })
        ));
        drop(first);
        let _again = go(admission.admit("free", &user("c"), Some(&key)));
    }

    #[test]
    fn a_capped_key_waits_and_is_passed_over_until_its_request_ends() {
        let admission = admission(2, 10);
        let key = KeyCap {
            key_id: Arc::from("k1"),
            max: 1,
        };
        let alice = user("alice");
        // Alice's key runs one request elsewhere; her next waits even with a slot free.
        let elsewhere = go(admission.admit("free", &alice, Some(&key)));
        let mut capped = wait(admission.admit("gpu", &alice, Some(&key)));
        let bob = go(admission.admit("gpu", &user("bob"), None));
        let carol = go(admission.admit("gpu", &user("carol"), None));
        let mut dave = wait(admission.admit("gpu", &user("dave"), None));
        drop(bob);
        // The free slot passes alice's capped request over.
        assert!(!served(&mut capped));
        assert!(served(&mut dave));
        drop(carol);
        assert!(!served(&mut capped), "still capped");
        drop(elsewhere);
        assert!(served(&mut capped), "its key freed");
    }

    #[test]
    fn a_ticket_dropped_leaves_the_line_and_a_granted_one_gives_its_slot_on() {
        let admission = admission(1, 10);
        let running = go(admission.admit("gpu", &user("a"), None));
        let first = wait(admission.admit("gpu", &user("b"), None));
        let second = wait(admission.admit("gpu", &user("c"), None));
        assert_eq!(second.position(), Some(2));
        drop(first);
        assert_eq!(second.position(), Some(1));
        assert_eq!(admission.lock().lines[0].waiting, 1);
        drop(running);
        // Granted, but dropped before it was taken: the slot is free again.
        drop(second);
        let state = admission.lock();
        assert_eq!((state.lines[0].running, state.lines[0].waiting), (0, 0));
    }

    #[tokio::test]
    async fn a_wait_runs_out_with_a_retry_estimate() {
        let short = QueueSettings {
            timeout: Duration::from_millis(30),
            ..settings(1, 10)
        };
        let admission = Arc::new(Admission::new(
            &[("gpu".to_owned(), Some(short))],
            Arc::new(Metrics::new()),
        ));
        let running = go(admission.admit("gpu", &user("a"), None));
        let ticket = wait(admission.admit("gpu", &user("b"), None));
        match ticket.granted().await {
            Err(GatewayError::RateLimited {
                retry_after_secs: 1,
                message,
                ..
            }) => assert!(message.contains("queue_timeout_secs"), "{message}"),
            _ => panic!("the wait runs out"),
        }
        assert_eq!(admission.lock().lines[0].waiting, 0);
        drop(running);
        let mut state = admission.lock();
        assert!(state.lines[0].average_hold.is_some());
        assert_eq!(state.lines[0].running, 0);
        // Two ahead and one slot of about 90 s each: about 270 s.
        state.lines[0].average_hold = Some(Duration::from_secs(90));
        assert_eq!(estimate(&state.lines[0], &admission.settings[0], 2), 270);
    }

    #[test]
    fn every_kind_takes_the_keys_and_errors_name_them() {
        let config = crate::Config::from_toml(
            "[[backends]]\nname = \"e\"\nkind = \"echo\"\nmax_concurrent = 2\nmax_queue = 5\nqueue_timeout_secs = 1.5\n[[backends]]\nname = \"o\"\nkind = \"ollama\"\nurl = \"http://h\"\nmax_concurrent = 1\n[[backends]]\nname = \"n\"\nkind = \"openai\"\nurl = \"http://h/v1\"\n[[backends]]\nname = \"w\"\nkind = \"echo\"\nmax_concurrent = 1\nqueue_timeout_secs = 3\n",
        )
        .unwrap();
        assert_eq!(
            config.backends[0].queue,
            Some(QueueSettings {
                max_concurrent: 2,
                max_queue: 5,
                timeout: Duration::from_millis(1500),
            })
        );
        let ollama = config.backends[1].queue.clone().unwrap();
        assert_eq!(ollama.max_queue, DEFAULT_MAX_QUEUE as usize);
        assert_eq!(ollama.timeout.as_secs_f64(), DEFAULT_QUEUE_TIMEOUT_SECS);
        assert_eq!(config.backends[2].queue, None);
        let whole = config.backends[3].queue.clone().unwrap();
        assert_eq!(whole.timeout, Duration::from_secs(3), "whole seconds too");
        for (field, value) in [
            ("max_concurrent", "0"),
            ("max_concurrent", "-2"),
            ("max_queue", "0"),
            ("queue_timeout_secs", "-1"),
            ("max_concurrent", "\"many\""),
        ] {
            let extra = if field == "max_concurrent" {
                ""
            } else {
                "max_concurrent = 1\n"
            };
            let error = crate::Config::from_toml(&format!(
                "[[backends]]\nname = \"a\"\nkind = \"echo\"\n[[backends]]\nname = \"b\"\nkind = \"echo\"\n{extra}{field} = {value}\n"
            ))
            .unwrap_err()
            .to_string();
            assert!(error.contains(&format!("backends[1].{field}")), "{error}");
        }
    }

    #[test]
    fn settings_are_checked() {
        assert_eq!(QueueSettings::check("b", None, None, None), Ok(None));
        let set = QueueSettings::check("b", Some(2), None, None)
            .unwrap()
            .unwrap();
        assert_eq!(set.max_queue, DEFAULT_MAX_QUEUE as usize);
        for (concurrent, queue, timeout, field) in [
            (Some(0), None, None, "b.max_concurrent"),
            (Some(-1), None, None, "b.max_concurrent"),
            (Some(1), Some(0), None, "b.max_queue"),
            (Some(1), None, Some(0.0), "b.queue_timeout_secs"),
            (Some(1), None, Some(-3.0), "b.queue_timeout_secs"),
            (None, Some(3), None, "b.max_queue"),
        ] {
            let error = QueueSettings::check("b", concurrent, queue, timeout).unwrap_err();
            assert!(error.starts_with(field), "{error}");
        }
    }
}

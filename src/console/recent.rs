//! The last few upstream failures, kept in memory for the console's overview: what went
//! wrong lately, and where, without reading the logs. Bounded, so a failing upstream
//! costs a fixed amount of memory however long it fails.

use std::collections::VecDeque;
use std::sync::Mutex;

use serde::Serialize;

/// How many failures are kept; older ones give way.
const KEPT: usize = 50;

/// One upstream failure.
#[derive(Debug, Clone, Serialize)]
pub struct RecentError {
    /// RFC 3339, UTC.
    pub at: String,
    pub backend: String,
    /// connect, reset, timeout, status or garbage.
    pub kind: String,
    /// The error as the gateway logs it (never a key: upstream URLs are shown without
    /// credentials, and error bodies are the upstream's).
    pub message: String,
}

/// The ring of recent failures; one per server, shared by every worker.
#[derive(Debug, Default)]
pub struct RecentErrors(Mutex<VecDeque<RecentError>>);

impl RecentErrors {
    /// Notes a failure, dropping the oldest when full.
    pub fn note(&self, backend: &str, kind: &str, message: String) {
        let entry = RecentError {
            at: {
                let now = jiff::Timestamp::now();
                jiff::Timestamp::from_second(now.as_second())
                    .unwrap_or(now)
                    .to_string()
            },
            backend: backend.to_owned(),
            kind: kind.to_owned(),
            message,
        };
        let mut ring = self
            .0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if ring.len() == KEPT {
            ring.pop_front();
        }
        ring.push_back(entry);
    }

    /// The failures kept, newest first.
    pub fn newest_first(&self) -> Vec<RecentError> {
        let ring = self
            .0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        ring.iter().rev().cloned().collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_the_newest_and_no_more() {
        let ring = RecentErrors::default();
        for n in 0..KEPT + 5 {
            ring.note("oa", "status", format!("failure {n}"));
        }
        let kept = ring.newest_first();
        assert_eq!(kept.len(), KEPT);
        assert_eq!(kept[0].message, format!("failure {}", KEPT + 4));
        assert_eq!(kept[KEPT - 1].message, "failure 5");
    }
}

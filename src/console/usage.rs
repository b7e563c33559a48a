//! What the console reads about usage: the recent upstream failures kept in memory and,
//! once the usage ledger is there, its totals.

use std::collections::HashMap;
use std::future::{ready, Ready};

use actix_web::dev::Payload;
use actix_web::{web, FromRequest, HttpRequest};

use super::recent::{RecentError, RecentErrors};
use crate::config::Config;

/// The server's sources of usage, taken from the request's app data.
pub struct Source {
    recent: Option<web::Data<RecentErrors>>,
}

impl FromRequest for Source {
    type Error = actix_web::Error;
    type Future = Ready<Result<Source, actix_web::Error>>;

    fn from_request(request: &HttpRequest, _: &mut Payload) -> Self::Future {
        ready(Ok(Source {
            recent: request.app_data::<web::Data<RecentErrors>>().cloned(),
        }))
    }
}

impl Source {
    /// Requests and errors of the last hour by backend; `None` without a ledger.
    pub async fn last_hour(&self, _config: &Config) -> Option<HashMap<String, (u64, u64)>> {
        None
    }

    /// Each key's tokens today, by key id; `None` without a ledger.
    pub async fn tokens_today(&self, _config: &Config) -> Option<HashMap<String, u64>> {
        None
    }

    /// The recent upstream failures, newest first.
    pub fn recent_errors(&self) -> Vec<RecentError> {
        self.recent
            .as_ref()
            .map(|ring| ring.newest_first())
            .unwrap_or_default()
    }
}

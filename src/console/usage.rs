//! What the console reads about usage: the usage ledger's totals (through the same
//! queries as `switchyard usage`) and the recent upstream failures the recorder keeps.

use std::collections::HashMap;
use std::future::{ready, Ready};
use std::path::PathBuf;
use std::sync::Arc;

use actix_web::dev::Payload;
use actix_web::http::StatusCode;
use actix_web::{web, FromRequest, HttpRequest, HttpResponse};
use rusqlite::Connection;
use serde::Deserialize;
use serde_json::{json, Value};

use super::recent::RecentError;
use crate::config::Config;
use crate::usage::ledger::{self, unix_ms};
use crate::usage::report::{self, By, Query};
use crate::usage::Recorder;

const HOUR_MS: i64 = 3_600_000;

/// The server's sources of usage, taken from the request's app data.
pub struct Source {
    recorder: Option<web::Data<Recorder>>,
    /// The ledger's file, when the ledger is on.
    ledger: Option<PathBuf>,
}

impl FromRequest for Source {
    type Error = actix_web::Error;
    type Future = Ready<Result<Source, actix_web::Error>>;

    fn from_request(request: &HttpRequest, _: &mut Payload) -> Self::Future {
        let ledger = request
            .app_data::<web::Data<Config>>()
            .filter(|config| config.ledger.enabled)
            .map(|config| config.ledger.path.clone());
        ready(Ok(Source {
            recorder: request.app_data::<web::Data<Recorder>>().cloned(),
            ledger,
        }))
    }
}

impl Source {
    /// Runs `query` on the ledger, opened read-only off the worker's thread; `None`
    /// when the ledger is off.
    async fn read<T: Send + 'static>(
        &self,
        query: impl FnOnce(&Connection) -> rusqlite::Result<T> + Send + 'static,
    ) -> Option<Result<T, String>> {
        let path = self.ledger.clone()?;
        let outcome = web::block(move || {
            let connection = ledger::open_for_reading(&path)?;
            query(&connection).map_err(|e| format!("the usage ledger: {e}"))
        })
        .await;
        Some(outcome.unwrap_or_else(|e| Err(e.to_string())))
    }

    /// Requests and errors of the last hour by backend; `None` without a ledger.
    pub async fn last_hour(&self) -> Option<HashMap<String, (u64, u64)>> {
        let now_ms = unix_ms(std::time::SystemTime::now());
        let rows = self
            .read(move |connection| {
                report::totals(
                    connection,
                    &Query {
                        since_ms: Some(now_ms - HOUR_MS),
                        until_ms: now_ms + 1,
                        by: Some(By::Backend),
                        user: None,
                    },
                )
            })
            .await?;
        match rows {
            Ok(rows) => Some(
                rows.into_iter()
                    .map(|t| (t.name.unwrap_or_default(), (t.requests, t.errors)))
                    .collect(),
            ),
            Err(problem) => {
                log::warn!("console: {problem}");
                None
            }
        }
    }

    /// Each key's tokens today, by key id; `None` without a ledger.
    pub async fn tokens_today(&self) -> Option<HashMap<Arc<str>, u64>> {
        let now_ms = unix_ms(std::time::SystemTime::now());
        match self
            .read(move |connection| ledger::tokens_today(connection, now_ms))
            .await?
        {
            Ok(today) => Some(today),
            Err(problem) => {
                log::warn!("console: {problem}");
                None
            }
        }
    }

    /// The recent upstream failures, newest first.
    pub fn recent_errors(&self) -> Vec<RecentError> {
        self.recorder
            .as_ref()
            .map(|recorder| recorder.recent_errors().newest_first())
            .unwrap_or_default()
    }
}

/// The period the usage page asks for, as `switchyard usage --since --until` reads it.
#[derive(Deserialize)]
pub struct Period {
    since: Option<String>,
    until: Option<String>,
}

/// Totals over the period: overall, by user, model, backend and day, and each user's
/// days for the stacked chart; all through `switchyard usage`'s query.
pub async fn usage(source: Source, period: web::Query<Period>) -> HttpResponse {
    let now_ms = unix_ms(std::time::SystemTime::now());
    let since = period.since.as_deref().unwrap_or("7d");
    let since_ms = match report::parse_when(since, now_ms, false) {
        Ok(ms) => ms,
        Err(problem) => return field_error("since", &problem),
    };
    let until_ms = match period.until.as_deref().filter(|t| !t.is_empty()) {
        Some(text) => match report::parse_when(text, now_ms, true) {
            Ok(ms) => ms,
            Err(problem) => return field_error("until", &problem),
        },
        None => now_ms + 1,
    };
    let read = source
        .read(move |connection| {
            let query = |by: Option<By>, user: Option<String>| {
                report::totals(
                    connection,
                    &Query {
                        since_ms: Some(since_ms),
                        until_ms,
                        by,
                        user,
                    },
                )
            };
            let total = query(None, None)?.pop().unwrap_or_default();
            let by_user = query(Some(By::User), None)?;
            let mut days_by_user = serde_json::Map::new();
            for user in &by_user {
                let name = user.name.clone().unwrap_or_default();
                let days = query(Some(By::Day), Some(name.clone()))?;
                days_by_user.insert(name, json!(days));
            }
            Ok(json!({
                "since_ms": since_ms,
                "until_ms": until_ms,
                "total": total,
                "by_user": by_user,
                "by_model": query(Some(By::Model), None)?,
                "by_backend": query(Some(By::Backend), None)?,
                "by_day": query(Some(By::Day), None)?,
                "days_by_user": Value::Object(days_by_user),
            }))
        })
        .await;
    match read {
        Some(Ok(report)) => HttpResponse::Ok().json(report),
        Some(Err(problem)) => HttpResponse::InternalServerError()
            .json(json!({"error": {"message": problem, "code": "ledger"}})),
        None => HttpResponse::build(StatusCode::CONFLICT).json(json!({"error": {
            "message": "the usage ledger is off (ledger.enabled = false), so there is no usage to show",
            "code": "no_ledger",
        }})),
    }
}

fn field_error(field: &str, problem: &str) -> HttpResponse {
    HttpResponse::BadRequest().json(json!({"error": {
        "message": format!("{field}: {problem}"), "code": "invalid_field", "field": field,
    }}))
}

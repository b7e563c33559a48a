//! `switchyard usage`: totals from the usage ledger (requests, prompt, completion and
//! total tokens, errors) over a span of time, overall or by user, model, backend or UTC
//! day, as an aligned table or as JSON for scripts. It opens the ledger read-only, so it
//! works while the gateway writes (WAL).

use std::path::{Path, PathBuf};

use clap::{Args, ValueEnum};
use rusqlite::Connection;
use serde::Serialize;

use super::ledger::{open_for_reading, unix_ms};
use super::{LedgerConfig, DEFAULT_LEDGER_PATH};

/// `switchyard usage`'s options.
#[derive(Debug, Args)]
pub struct UsageArgs {
    /// From when: a span back from now (30m, 12h, 7d, 2w), a UTC date (2026-12-01) or
    /// a time (2026-12-01T08:00:00Z). Default: the ledger's first row.
    #[arg(long, value_name = "WHEN")]
    pub since: Option<String>,
    /// Until when, in the same forms; a date counts whole (until its end). Default: now.
    #[arg(long, value_name = "WHEN")]
    pub until: Option<String>,
    /// One row per user, model (as clients named it), backend or UTC day.
    #[arg(long, value_enum)]
    pub by: Option<By>,
    /// Only this user's requests.
    #[arg(long, value_name = "NAME")]
    pub user: Option<String>,
    /// JSON instead of a table.
    #[arg(long)]
    pub json: bool,
    /// Every instance's records, from the Redis stream of `[cluster]`, instead of this
    /// instance's ledger.
    #[arg(long)]
    pub cluster: bool,
}

/// What the rows are grouped by.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum By {
    User,
    Model,
    Backend,
    Day,
}

impl By {
    fn name(self) -> &'static str {
        match self {
            By::User => "user",
            By::Model => "model",
            By::Backend => "backend",
            By::Day => "day",
        }
    }

    /// The SQL expression rows are grouped by.
    fn column(self) -> &'static str {
        match self {
            By::User => "user",
            By::Model => "model",
            By::Backend => "COALESCE(backend, 'none')",
            By::Day => "strftime('%Y-%m-%d', at_ms / 1000, 'unixepoch')",
        }
    }
}

/// One line of the report.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Totals {
    /// The group's value (a user, a model ...); absent for the overall total.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    pub requests: u64,
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
    pub total_tokens: u64,
    /// Answers with an error status (4xx, 5xx), not counting clients that left.
    pub errors: u64,
}

impl Totals {
    fn add(&mut self, other: &Totals) {
        self.requests += other.requests;
        self.prompt_tokens += other.prompt_tokens;
        self.completion_tokens += other.completion_tokens;
        self.total_tokens += other.total_tokens;
        self.errors += other.errors;
    }
}

/// Which rows to add up.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Query {
    /// Unix milliseconds, inclusive.
    pub since_ms: Option<i64>,
    /// Unix milliseconds, exclusive.
    pub until_ms: i64,
    pub by: Option<By>,
    pub user: Option<String>,
}

/// Reads a `--since` / `--until` value as Unix milliseconds. A span counts back from
/// `now_ms`; a date is its UTC midnight, or with `end` the midnight after it.
pub fn parse_when(text: &str, now_ms: i64, end: bool) -> Result<i64, String> {
    let text = text.trim();
    let unit_ms = match text.chars().last() {
        Some('m') => Some(60_000),
        Some('h') => Some(3_600_000),
        Some('d') => Some(86_400_000),
        Some('w') => Some(7 * 86_400_000),
        _ => None,
    };
    if let Some(unit_ms) = unit_ms {
        let number = &text[..text.len() - 1];
        if let Ok(count) = number.parse::<i64>() {
            if count >= 0 {
                return Ok(now_ms.saturating_sub(count.saturating_mul(unit_ms)));
            }
        }
    }
    if let Ok(date) = text.parse::<jiff::civil::Date>() {
        let midnight = crate::keys::parse_time(&date.to_string())?.as_millisecond();
        return Ok(if end { midnight + 86_400_000 } else { midnight });
    }
    if let Ok(time) = text.parse::<jiff::Timestamp>() {
        return Ok(time.as_millisecond());
    }
    Err(format!(
        "'{text}' is not a span (30m, 12h, 7d, 2w), a date (2026-12-01) or a time (2026-12-01T08:00:00Z)"
    ))
}

/// The totals of the rows `query` selects, one per group, in the group's order.
pub fn totals(connection: &Connection, query: &Query) -> rusqlite::Result<Vec<Totals>> {
    let group = query.by.map_or("NULL", By::column);
    let sql = format!(
        "SELECT {group}, COUNT(*), COALESCE(SUM(prompt_tokens), 0), COALESCE(SUM(completion_tokens), 0), \
         COALESCE(SUM(CASE WHEN status >= 400 AND client_left = 0 THEN 1 ELSE 0 END), 0) \
         FROM requests WHERE at_ms >= ?1 AND at_ms < ?2 AND (?3 IS NULL OR user = ?3) \
         GROUP BY 1 ORDER BY 1"
    );
    let mut statement = connection.prepare(&sql)?;
    let count = |n: i64| u64::try_from(n).unwrap_or(0);
    let rows = statement.query_map(
        rusqlite::params![
            query.since_ms.unwrap_or(i64::MIN),
            query.until_ms,
            query.user
        ],
        |row| {
            let prompt = count(row.get(2)?);
            let completion = count(row.get(3)?);
            Ok(Totals {
                name: row.get::<_, Option<String>>(0)?,
                requests: count(row.get(1)?),
                prompt_tokens: prompt,
                completion_tokens: completion,
                total_tokens: prompt + completion,
                errors: count(row.get(4)?),
            })
        },
    )?;
    let mut totals: Vec<Totals> = rows.collect::<rusqlite::Result<_>>()?;
    // An empty span has no group at all; the overall line still says zero.
    if query.by.is_none() && totals.is_empty() {
        totals.push(Totals::default());
    }
    Ok(totals)
}

/// The ledger's path as `serve` would use it: `$SWITCHYARD__LEDGER__PATH`, else the
/// config file's `[ledger]`, else the default; an error when the config turns it off.
pub fn configured_path(config: Option<&Path>) -> Result<PathBuf, String> {
    if let Some(path) = std::env::var_os("SWITCHYARD__LEDGER__PATH").filter(|p| !p.is_empty()) {
        return Ok(PathBuf::from(path));
    }
    let ledger = match config {
        Some(config) => config::Config::builder()
            .add_source(config::File::from(config).format(config::FileFormat::Toml))
            .build()
            .and_then(|settings| match settings.get::<LedgerConfig>("ledger") {
                Err(config::ConfigError::NotFound(_)) => Ok(LedgerConfig::default()),
                other => other,
            })
            .map_err(|e| format!("{}: {e}", config.display()))?,
        None => LedgerConfig::default(),
    };
    if !ledger.enabled {
        return Err(format!(
            "the usage ledger is off (ledger.enabled = false in {})",
            config.map_or(DEFAULT_LEDGER_PATH.into(), |c| c.display().to_string())
        ));
    }
    Ok(ledger.path)
}

/// Runs `switchyard usage`: what it prints, or the problem.
pub fn run(config: Option<&Path>, args: &UsageArgs) -> Result<String, String> {
    let now_ms = unix_ms(std::time::SystemTime::now());
    let query = Query {
        since_ms: args
            .since
            .as_deref()
            .map(|since| parse_when(since, now_ms, false))
            .transpose()
            .map_err(|e| format!("--since {e}"))?,
        until_ms: args
            .until
            .as_deref()
            .map(|until| parse_when(until, now_ms, true))
            .transpose()
            .map_err(|e| format!("--until {e}"))?
            .unwrap_or(now_ms + 1),
        by: args.by,
        user: args.user.clone(),
    };
    let rows = if args.cluster {
        crate::cluster::usage::totals(config, &query)?
    } else {
        let path = configured_path(config)?;
        let connection = open_for_reading(&path)?;
        totals(&connection, &query).map_err(|e| format!("{}: {e}", path.display()))?
    };
    Ok(if args.json {
        json(&query, &rows)
    } else {
        table(&query, &rows)
    })
}

fn rfc3339(ms: i64) -> String {
    jiff::Timestamp::from_millisecond(ms)
        .map(|t| t.to_string())
        .unwrap_or_default()
}

/// The report as one JSON object: the span, the grouping, each group and the total.
pub fn json(query: &Query, rows: &[Totals]) -> String {
    let mut total = Totals::default();
    rows.iter().for_each(|row| total.add(row));
    let rows: Vec<serde_json::Value> = rows
        .iter()
        .map(|row| {
            let mut value = serde_json::to_value(Totals {
                name: None,
                ..row.clone()
            })
            .unwrap_or_default();
            if let (Some(by), Some(object)) = (query.by, value.as_object_mut()) {
                object.insert(
                    by.name().to_owned(),
                    serde_json::Value::from(row.name.clone()),
                );
            }
            value
        })
        .collect();
    let report = serde_json::json!({
        "since": query.since_ms.map(rfc3339),
        "until": rfc3339(query.until_ms),
        "by": query.by.map(By::name),
        "rows": if query.by.is_some() { serde_json::Value::from(rows) } else { serde_json::Value::Null },
        "total": total,
    });
    let mut out = report.to_string();
    out.push('\n');
    out
}

/// The report as an aligned table: a line per group (when grouped), then the total.
pub fn table(query: &Query, rows: &[Totals]) -> String {
    let mut total = Totals::default();
    rows.iter().for_each(|row| total.add(row));
    let first = query.by.map_or("", By::name).to_uppercase();
    let header = [
        first.as_str(),
        "REQUESTS",
        "PROMPT",
        "COMPLETION",
        "TOTAL",
        "ERRORS",
    ];
    let line = |name: String, t: &Totals| {
        [
            name,
            t.requests.to_string(),
            t.prompt_tokens.to_string(),
            t.completion_tokens.to_string(),
            t.total_tokens.to_string(),
            t.errors.to_string(),
        ]
    };
    let mut lines: Vec<[String; 6]> = vec![header.map(str::to_owned)];
    if query.by.is_some() {
        for row in rows {
            lines.push(line(row.name.clone().unwrap_or_default(), row));
        }
    }
    lines.push(line("total".to_owned(), &total));
    let mut widths = [0usize; 6];
    for line in &lines {
        for (width, cell) in widths.iter_mut().zip(line) {
            *width = (*width).max(cell.chars().count());
        }
    }
    let mut out = format!(
        "usage {} to {} (UTC)\n",
        query
            .since_ms
            .map_or("since the first request".to_owned(), |ms| format!(
                "from {}",
                rfc3339(ms)
            )),
        rfc3339(query.until_ms)
    );
    for line in &lines {
        let mut text = format!("{:<width$}", line[0], width = widths[0]);
        for (cell, width) in line.iter().zip(widths).skip(1) {
            text.push_str(&format!("  {cell:>width$}"));
        }
        out.push_str(text.trim_end());
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::{Duration, UNIX_EPOCH};

    use super::*;
    use crate::usage::ledger::insert;
    use crate::usage::Outcome;

    const NOW: i64 = 1_796_000_000_000;

    #[test]
    fn when_reads_spans_dates_and_times() {
        assert_eq!(parse_when("7d", NOW, false), Ok(NOW - 7 * 86_400_000));
        assert_eq!(parse_when("12h", NOW, false), Ok(NOW - 12 * 3_600_000));
        assert_eq!(parse_when("30m", NOW, false), Ok(NOW - 1_800_000));
        assert_eq!(parse_when("2w", NOW, false), Ok(NOW - 14 * 86_400_000));
        let december = 1_796_083_200_000; // 2026-12-01T00:00:00Z
        assert_eq!(parse_when("2026-12-01", NOW, false), Ok(december));
        assert_eq!(
            parse_when("2026-12-01", NOW, true),
            Ok(december + 86_400_000)
        );
        assert_eq!(
            parse_when("2026-12-01T08:00:00Z", NOW, false),
            Ok(december + 8 * 3_600_000)
        );
        for wrong in ["7", "d", "-3d", "2026-13-01", "yesterday", ""] {
            assert!(parse_when(wrong, NOW, false).is_err(), "{wrong}");
        }
    }

    fn row(at_ms: i64, user: &str, model: &str, tokens: (u64, u64), status: u16) -> Outcome {
        Outcome {
            at: UNIX_EPOCH + Duration::from_millis(u64::try_from(at_ms).unwrap()),
            user: Arc::from(user),
            key: None,
            dialect: "openai",
            model: model.to_owned(),
            backend: (status != 401).then(|| Arc::from("oa")),
            upstream_model: Some(model.to_owned()),
            prompt_tokens: tokens.0,
            completion_tokens: tokens.1,
            status,
            latency: Duration::from_millis(5),
            first_token: None,
            client_left: status == 499,
        }
    }

    #[test]
    fn totals_add_up_by_each_grouping() {
        let mut connection = Connection::open_in_memory().unwrap();
        connection
            .execute_batch(&super::super::ledger::schema())
            .unwrap();
        let day = 86_400_000;
        insert(
            &mut connection,
            &[
                row(NOW - 2 * day, "alice", "m1", (10, 5), 200),
                row(NOW - day, "alice", "m2", (20, 7), 200),
                row(NOW - day, "bob", "m1", (3, 1), 502),
                row(NOW - 10, "bob", "m1", (4, 2), 499),
                row(NOW - 5, "carol", "", (0, 0), 401),
            ],
        )
        .unwrap();
        let query = |since: Option<i64>, by: Option<By>, user: Option<&str>| Query {
            since_ms: since,
            until_ms: NOW,
            by,
            user: user.map(str::to_owned),
        };
        let all = totals(&connection, &query(None, None, None)).unwrap();
        assert_eq!(
            all,
            [Totals {
                name: None,
                requests: 5,
                prompt_tokens: 37,
                completion_tokens: 15,
                total_tokens: 52,
                errors: 2,
            }]
        );
        let by_user = totals(&connection, &query(None, Some(By::User), None)).unwrap();
        let names: Vec<_> = by_user.iter().map(|t| t.name.clone().unwrap()).collect();
        assert_eq!(names, ["alice", "bob", "carol"]);
        assert_eq!(by_user[0].total_tokens, 42);
        assert_eq!((by_user[1].requests, by_user[1].errors), (2, 1));
        let by_model = totals(&connection, &query(None, Some(By::Model), None)).unwrap();
        assert_eq!(by_model[1].name.as_deref(), Some("m1"));
        assert_eq!(by_model[1].prompt_tokens, 17);
        let by_backend = totals(&connection, &query(None, Some(By::Backend), None)).unwrap();
        let names: Vec<_> = by_backend.iter().map(|t| t.name.clone().unwrap()).collect();
        assert_eq!(names, ["none", "oa"]);
        let by_day = totals(&connection, &query(None, Some(By::Day), None)).unwrap();
        assert_eq!(by_day.len(), 3);
        assert_eq!(by_day[0].name.as_deref(), Some("2026-11-28"));
        // The span and the user narrow it.
        let recent = totals(&connection, &query(Some(NOW - day), None, Some("bob"))).unwrap();
        assert_eq!((recent[0].requests, recent[0].total_tokens), (2, 10));
        let empty = totals(&connection, &query(Some(NOW), None, None)).unwrap();
        assert_eq!(empty, [Totals::default()]);
        // Both renderings carry the same numbers.
        let q = query(None, Some(By::User), None);
        let table = table(&q, &by_user);
        let total_line = table.lines().last().unwrap();
        assert_eq!(
            total_line.split_whitespace().collect::<Vec<_>>(),
            ["total", "5", "37", "15", "52", "2"]
        );
        let widths: Vec<usize> = table.lines().skip(1).map(str::len).collect();
        assert!(widths.windows(2).all(|w| w[0] == w[1]), "{table}");
        let json: serde_json::Value = serde_json::from_str(&json(&q, &by_user)).unwrap();
        assert_eq!(json["total"]["total_tokens"], 52);
        assert_eq!(json["rows"][1]["user"], "bob");
        assert_eq!(json["rows"][1]["errors"], 1);
    }
}

//! Writing ledger rows through SQLite's C API, because the row is the one piece of work
//! the ledger adds to every request and the safe statement API made it dearer than it
//! needs to be.
//!
//! Measured per row (callgrind), rusqlite's `execute(params![…])` spent as much again as
//! SQLite's own insert around it: every text value is bound `SQLITE_TRANSIENT` (SQLite
//! allocates and copies it), each parameter goes through `ToSql`, and the transaction's
//! `BEGIN` and `COMMIT` are parsed anew for every batch. Here the statements are
//! prepared once for the writer's life (`BEGIN`, `COMMIT`, `ROLLBACK`, and the insert of
//! one row and of [`MANY`] rows, so a batch costs one statement per [`MANY`] rows), and
//! text is bound `SQLITE_STATIC`: SQLite reads it in place from the rows, which outlive
//! the statement's run.
//!
//! A statement keeps its last bindings after a run, and those point into rows that are
//! gone once the batch is written. SQLite reads a binding only while a statement steps
//! (no trace or profile hook is set on the writer's connection), resetting and
//! finalizing a statement release a static binding without reading it, and every run
//! binds all of its statement's parameters before it steps, so a stale pointer is
//! never read. Clearing them after each run instead cost a tenth of the row.

use std::ffi::{c_char, c_int, CStr};
use std::marker::PhantomData;
use std::ptr::NonNull;

use rusqlite::{ffi, Connection};

use super::ledger::unix_ms;
use super::Outcome;

/// Rows one insert statement carries; a batch's rest goes a row at a time.
const MANY: usize = 16;
/// The columns of a row, each one parameter.
const COLUMNS: usize = 13;
/// `OR ROLLBACK`: a row that broke a constraint would end the whole transaction rather
/// than only its statement, which the writer does for any failure anyway (the batch is
/// rolled back and logged); it spares SQLite a statement journal for every insert of
/// several rows.
const INSERT: &str = "INSERT OR ROLLBACK INTO requests (at_ms, user, key_id, dialect, model, backend, upstream_model, prompt_tokens, completion_tokens, status, latency_ms, ttft_ms, client_left) VALUES ";

/// One prepared statement, finalized when dropped; it cannot outlive its connection.
struct Prepared<'c> {
    statement: NonNull<ffi::sqlite3_stmt>,
    /// How many parameters it has: a run must bind them all.
    parameters: usize,
    database: *mut ffi::sqlite3,
    connection: PhantomData<&'c Connection>,
}

impl Drop for Prepared<'_> {
    fn drop(&mut self) {
        // SAFETY: the statement was prepared on a connection that outlives `'c`, and is
        // finalized exactly once, here.
        unsafe {
            ffi::sqlite3_finalize(self.statement.as_ptr());
        }
    }
}

/// The error SQLite reports for `code` on `database`.
fn failure(database: *mut ffi::sqlite3, code: c_int) -> rusqlite::Error {
    // SAFETY: `database` is an open connection; the message is copied before any other
    // call on it.
    let message = unsafe {
        let text = ffi::sqlite3_errmsg(database);
        (!text.is_null()).then(|| CStr::from_ptr(text).to_string_lossy().into_owned())
    };
    rusqlite::Error::SqliteFailure(ffi::Error::new(code), message)
}

impl<'c> Prepared<'c> {
    fn new(connection: &'c Connection, sql: &str) -> rusqlite::Result<Prepared<'c>> {
        let length = c_int::try_from(sql.len()).map_err(|_| {
            rusqlite::Error::SqliteFailure(ffi::Error::new(ffi::SQLITE_TOOBIG), None)
        })?;
        // SAFETY: the handle is the connection's own, used on this thread only while
        // `connection` is borrowed; the SQL is passed with its length.
        unsafe {
            let database = connection.handle();
            let mut statement = std::ptr::null_mut();
            let code = ffi::sqlite3_prepare_v3(
                database,
                sql.as_ptr().cast::<c_char>(),
                length,
                ffi::SQLITE_PREPARE_PERSISTENT,
                &mut statement,
                std::ptr::null_mut(),
            );
            match NonNull::new(statement) {
                Some(statement) if code == ffi::SQLITE_OK => Ok(Prepared {
                    statement,
                    parameters: usize::try_from(ffi::sqlite3_bind_parameter_count(
                        statement.as_ptr(),
                    ))
                    .unwrap_or(usize::MAX),
                    database,
                    connection: PhantomData,
                }),
                Some(statement) => {
                    ffi::sqlite3_finalize(statement.as_ptr());
                    Err(failure(database, code))
                }
                None => Err(failure(database, code)),
            }
        }
    }

    /// Binds `rows` from parameter 1 on (every parameter the statement has), and runs
    /// the statement to its end.
    fn run(&self, rows: &[Outcome]) -> rusqlite::Result<()> {
        if rows.len() * COLUMNS != self.parameters {
            return Err(rusqlite::Error::SqliteFailure(
                ffi::Error::new(ffi::SQLITE_MISUSE),
                Some(format!(
                    "{} rows for a statement of {} parameters",
                    rows.len(),
                    self.parameters
                )),
            ));
        }
        let statement = self.statement.as_ptr();
        let mut bound = Ok(());
        for (n, row) in rows.iter().enumerate() {
            bound = bind(statement, n * COLUMNS, row);
            if bound.is_err() {
                break;
            }
        }
        // SAFETY: the statement is this connection's, and every pointer bound above is
        // into `rows`, borrowed until this function returns; it steps only when every
        // parameter was bound from `rows` (see the module's note on stale bindings).
        let code = unsafe {
            let code = match bound {
                Ok(()) => ffi::sqlite3_step(statement),
                Err(code) => code,
            };
            ffi::sqlite3_reset(statement);
            code
        };
        if code == ffi::SQLITE_DONE || code == ffi::SQLITE_OK {
            Ok(())
        } else {
            Err(failure(self.database, code))
        }
    }
}

/// Binds one row's columns at parameters `base + 1 ..= base + COLUMNS`.
fn bind(statement: *mut ffi::sqlite3_stmt, base: usize, row: &Outcome) -> Result<(), c_int> {
    let index = |column: usize| c_int::try_from(base + column).unwrap_or(c_int::MAX);
    let count = |n: u64| i64::try_from(n).unwrap_or(i64::MAX);
    // SAFETY: `statement` is a live prepared statement; text is bound SQLITE_STATIC from
    // `row`, which the caller keeps alive while the statement steps.
    let codes = unsafe {
        let text = |column: usize, value: Option<&str>| match value {
            // An empty value points at a static "": a row's empty String has no buffer.
            Some(value) => {
                let pointer = if value.is_empty() { "" } else { value };
                ffi::sqlite3_bind_text64(
                    statement,
                    index(column),
                    pointer.as_ptr().cast::<c_char>(),
                    value.len() as ffi::sqlite3_uint64,
                    ffi::SQLITE_STATIC(),
                    ffi::SQLITE_UTF8 as u8,
                )
            }
            None => ffi::sqlite3_bind_null(statement, index(column)),
        };
        let integer =
            |column: usize, value: i64| ffi::sqlite3_bind_int64(statement, index(column), value);
        let real = |column: usize, value: Option<f64>| match value {
            Some(value) => ffi::sqlite3_bind_double(statement, index(column), value),
            None => ffi::sqlite3_bind_null(statement, index(column)),
        };
        [
            integer(1, unix_ms(row.at)),
            text(2, Some(&row.user)),
            text(3, row.key.as_ref().map(|key| &*key.key_id)),
            text(4, Some(row.dialect)),
            text(5, Some(&row.model)),
            text(6, row.backend.as_deref()),
            text(7, row.upstream_model.as_deref()),
            integer(8, count(row.prompt_tokens)),
            integer(9, count(row.completion_tokens)),
            integer(10, i64::from(row.status)),
            real(11, Some(row.latency.as_secs_f64() * 1000.0)),
            real(12, row.first_token.map(|d| d.as_secs_f64() * 1000.0)),
            integer(13, i64::from(row.client_left)),
        ]
    };
    match codes.into_iter().find(|&code| code != ffi::SQLITE_OK) {
        Some(code) => Err(code),
        None => Ok(()),
    }
}

/// The writer's statements on one connection.
pub struct Statements<'c> {
    begin: Prepared<'c>,
    commit: Prepared<'c>,
    rollback: Prepared<'c>,
    one: Prepared<'c>,
    many: Prepared<'c>,
}

impl<'c> Statements<'c> {
    /// Prepares them on `connection`, whose schema must be in place.
    pub fn prepare(connection: &'c Connection) -> rusqlite::Result<Statements<'c>> {
        let values = |rows: usize| {
            let mut sql = String::from(INSERT);
            for row in 0..rows {
                sql.push_str(if row == 0 { "(" } else { ", (" });
                for column in 0..COLUMNS {
                    if column > 0 {
                        sql.push_str(", ");
                    }
                    sql.push_str(&format!("?{}", row * COLUMNS + column + 1));
                }
                sql.push(')');
            }
            sql
        };
        Ok(Statements {
            // IMMEDIATE: the write lock is taken (or waited for, by the busy timeout)
            // up front, so an insert never finds the file taken halfway through.
            begin: Prepared::new(connection, "BEGIN IMMEDIATE")?,
            commit: Prepared::new(connection, "COMMIT")?,
            rollback: Prepared::new(connection, "ROLLBACK")?,
            one: Prepared::new(connection, &values(1))?,
            many: Prepared::new(connection, &values(MANY))?,
        })
    }

    /// Writes `rows` in one transaction; on a failure none of them is kept.
    pub fn insert(&self, rows: &[Outcome]) -> rusqlite::Result<()> {
        self.begin.run(&[])?;
        let written = self.insert_rows(rows).and_then(|()| self.commit.run(&[]));
        if written.is_err() {
            // Leaves the connection ready for the next batch; the first error is the one
            // worth telling.
            let _ = self.rollback.run(&[]);
        }
        written
    }

    fn insert_rows(&self, rows: &[Outcome]) -> rusqlite::Result<()> {
        let mut groups = rows.chunks_exact(MANY);
        for group in &mut groups {
            self.many.run(group)?;
        }
        for row in groups.remainder() {
            self.one.run(std::slice::from_ref(row))?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::{Duration, UNIX_EPOCH};

    use super::*;
    use crate::keys::{policy, KeyEntry};

    /// A row as stored, in two parts (tuples compare up to twelve fields).
    type Stored = (
        (
            i64,
            String,
            Option<String>,
            String,
            String,
            Option<String>,
            Option<String>,
        ),
        (i64, i64, i64, f64, Option<f64>, bool),
    );

    fn outcome(n: u64) -> Outcome {
        let key = policy(
            "sk-rows-0123456789",
            &KeyEntry {
                user: "alice".into(),
                ..KeyEntry::default()
            },
        )
        .unwrap();
        // Odd rows carry every optional column, even ones none (and an empty model).
        let full = n % 2 == 1;
        Outcome {
            at: UNIX_EPOCH + Duration::from_millis(1_790_000_000_000 + n),
            user: Arc::from(format!("user{n}").as_str()),
            key: full.then(|| Arc::new(key)),
            dialect: "openai",
            model: if full {
                format!("oa/model-{n}")
            } else {
                String::new()
            },
            backend: full.then(|| Arc::from("oa")),
            upstream_model: full.then(|| format!("model-{n}")),
            prompt_tokens: n,
            completion_tokens: u64::MAX,
            status: 200 + u16::try_from(n).unwrap(),
            latency: Duration::from_micros(1500 + n),
            first_token: full.then(|| Duration::from_micros(250)),
            client_left: full,
        }
    }

    fn stored(connection: &Connection) -> Vec<Stored> {
        let mut statement = connection
            .prepare("SELECT at_ms, user, key_id, dialect, model, backend, upstream_model, prompt_tokens, completion_tokens, status, latency_ms, ttft_ms, client_left FROM requests ORDER BY id")
            .unwrap();
        statement
            .query_map([], |r| {
                Ok((
                    (
                        r.get(0)?,
                        r.get(1)?,
                        r.get(2)?,
                        r.get(3)?,
                        r.get(4)?,
                        r.get(5)?,
                        r.get(6)?,
                    ),
                    (
                        r.get(7)?,
                        r.get(8)?,
                        r.get(9)?,
                        r.get(10)?,
                        r.get(11)?,
                        r.get(12)?,
                    ),
                ))
            })
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap()
    }

    /// A ledger in memory, with the gateway's schema and no rows.
    fn empty_ledger() -> Connection {
        let connection = Connection::open_in_memory().unwrap();
        connection
            .execute_batch(&super::super::ledger::schema())
            .unwrap();
        connection
    }

    #[test]
    fn every_column_is_stored_as_given_in_groups_and_one_by_one() {
        let connection = empty_ledger();
        let statements = Statements::prepare(&connection).unwrap();
        // Two groups of MANY and a rest of three, then a batch of one.
        let rows: Vec<Outcome> = (0..2 * MANY as u64 + 3).map(outcome).collect();
        statements.insert(&rows).unwrap();
        statements.insert(&[outcome(99)]).unwrap();
        let expected: Vec<Stored> = rows
            .iter()
            .chain([&outcome(99)])
            .map(|row| {
                (
                    (
                        unix_ms(row.at),
                        row.user.to_string(),
                        row.key.as_ref().map(|key| key.key_id.to_string()),
                        row.dialect.to_owned(),
                        row.model.clone(),
                        row.backend.as_deref().map(str::to_owned),
                        row.upstream_model.clone(),
                    ),
                    (
                        i64::try_from(row.prompt_tokens).unwrap(),
                        i64::MAX,
                        i64::from(row.status),
                        row.latency.as_secs_f64() * 1000.0,
                        row.first_token.map(|d| d.as_secs_f64() * 1000.0),
                        row.client_left,
                    ),
                )
            })
            .collect();
        assert_eq!(stored(&connection), expected);
    }

    #[test]
    fn a_failed_batch_keeps_none_of_its_rows_and_the_next_one_still_lands() {
        let connection = empty_ledger();
        // A trigger that refuses the last row (after a whole group went in) stands in
        // for a disk that fails mid-batch.
        connection
            .execute_batch("CREATE TRIGGER refuse BEFORE INSERT ON requests WHEN NEW.user = 'user17' BEGIN SELECT RAISE(ABORT, 'refused'); END;")
            .unwrap();
        let statements = Statements::prepare(&connection).unwrap();
        let rows: Vec<Outcome> = (0..MANY as u64 + 2).map(outcome).collect();
        let error = statements.insert(&rows).unwrap_err();
        assert!(error.to_string().contains("refused"), "{error}");
        assert!(stored(&connection).is_empty());
        statements.insert(&[outcome(1), outcome(2)]).unwrap();
        assert_eq!(stored(&connection).len(), 2);
    }
}

//! The gateway's cost, visible per request: a `Server-Timing` header on every answer
//! with the gateway's own time before the upstream call and the upstream's time to its
//! response headers, and the same two figures on a debug log line, so a user can tell a
//! slow model from a slow gateway.

use std::cell::Cell;
use std::rc::Rc;
use std::time::{Duration, Instant};

use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::http::header::{HeaderName, HeaderValue};
use actix_web::http::{Method, StatusCode};
use actix_web::HttpMessage;

/// When a request arrived and when its upstream call went out and came back.
#[derive(Debug, Clone)]
pub struct Stopwatch(Rc<Marks>);

#[derive(Debug)]
struct Marks {
    arrived: Instant,
    upstream_called: Cell<Option<Instant>>,
    upstream_answered: Cell<Option<Instant>>,
}

impl Stopwatch {
    fn start() -> Stopwatch {
        Stopwatch(Rc::new(Marks {
            arrived: Instant::now(),
            upstream_called: Cell::new(None),
            upstream_answered: Cell::new(None),
        }))
    }

    /// When the request arrived.
    pub fn arrived(&self) -> Instant {
        self.0.arrived
    }

    /// Notes that the request is being handed to a backend (the last one tried counts).
    pub fn upstream_called(&self) {
        self.0.upstream_called.set(Some(Instant::now()));
        self.0.upstream_answered.set(None);
    }

    /// Notes that the backend's response headers (or first event) arrived.
    pub fn upstream_answered(&self) {
        self.0.upstream_answered.set(Some(Instant::now()));
    }

    /// (gateway, upstream): the time before the upstream call (all of it when there was
    /// none), and the upstream's time to answer, if it was called.
    fn spans(&self) -> (Duration, Option<Duration>) {
        let now = Instant::now();
        match (self.0.upstream_called.get(), self.0.upstream_answered.get()) {
            (Some(called), answered) => (
                called - self.0.arrived,
                Some(answered.unwrap_or(now) - called),
            ),
            (None, _) => (now - self.0.arrived, None),
        }
    }
}

/// A duration as milliseconds with three decimals ("212.407"), from integer
/// microseconds. Written digit by digit: formatting an f64, or even `core::fmt`'s zero
/// padding (`{:03}`), cost more than the rest of the header together.
struct Millis(Duration);

impl std::fmt::Display for Millis {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        use std::fmt::Write;
        let micros = u64::try_from(self.0.as_micros()).unwrap_or(u64::MAX);
        f.write_str(itoa::Buffer::new().format(micros / 1000))?;
        f.write_char('.')?;
        let fraction = micros % 1000;
        for digit in [fraction / 100, fraction / 10 % 10, fraction % 10] {
            f.write_char(char::from(b'0' + digit as u8))?;
        }
        Ok(())
    }
}

/// The header's value: `gateway;dur=0.051, upstream;dur=212.407`.
fn header_value(gateway: Duration, upstream: Option<Duration>) -> String {
    use std::fmt::Write;
    let mut value = String::with_capacity(48);
    let _ = write!(value, "gateway;dur={}", Millis(gateway));
    if let Some(upstream) = upstream {
        let _ = write!(value, ", upstream;dur={}", Millis(upstream));
    }
    value
}

/// Starts a request's stopwatch and leaves it on the request for the handler.
pub fn start(request: &ServiceRequest) -> Stopwatch {
    let stopwatch = Stopwatch::start();
    request.extensions_mut().insert(stopwatch.clone());
    stopwatch
}

/// Writes `Server-Timing` on the answer.
pub fn stamp<B>(response: &mut ServiceResponse<B>, stopwatch: &Stopwatch) {
    let (gateway, upstream) = stopwatch.spans();
    if let Ok(value) = HeaderValue::try_from(header_value(gateway, upstream)) {
        response
            .headers_mut()
            .insert(HeaderName::from_static("server-timing"), value);
    }
}

/// Writes the request's debug log line with its outcome: when the answer is sent for a
/// whole one, at the stream's end for a stream.
pub fn log_outcome(method: &Method, path: &str, status: StatusCode, stopwatch: &Stopwatch) {
    if !log::log_enabled!(log::Level::Debug) {
        return;
    }
    let (gateway, upstream) = stopwatch.spans();
    log::debug!(
        "{method} {path} {}: gateway {} ms, upstream {}",
        status.as_u16(),
        Millis(gateway),
        upstream.map_or("not called".to_owned(), |u| format!("{} ms", Millis(u)))
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_value_has_three_decimals() {
        assert_eq!(
            header_value(
                Duration::from_micros(51),
                Some(Duration::from_micros(212_407))
            ),
            "gateway;dur=0.051, upstream;dur=212.407"
        );
        assert_eq!(
            header_value(Duration::from_millis(3), None),
            "gateway;dur=3.000"
        );
        assert_eq!(
            header_value(Duration::from_micros(1_234_005), Some(Duration::ZERO)),
            "gateway;dur=1234.005, upstream;dur=0.000"
        );
        for (micros, text) in [
            (70, "0.070"),
            (999, "0.999"),
            (1000, "1.000"),
            (10_010, "10.010"),
        ] {
            assert_eq!(Millis(Duration::from_micros(micros)).to_string(), text);
        }
    }
}

//! The HTTP side of a backend: one awc client per backend and worker, the three timeouts,
//! and the mapping of every transport failure onto [`GatewayError`].
//!
//! Requests are built from scratch: no header of the client's is copied, so its gateway
//! key, cookies and forwarding headers never reach the upstream. Only a configured
//! upstream key is sent; with several, they take turns, and one the upstream refuses
//! (401, 403, 429) rests while the request is sent again with another.

use std::cell::RefCell;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll};
use std::time::Duration;

use awc::error::{ConnectError, SendRequestError};
use awc::http::Uri;
use bytes::Bytes;
use futures::Stream;
use pin_project_lite::pin_project;
use serde::de::DeserializeOwned;
use serde::Deserialize;

use super::error_body::{self, UpstreamMessage};
use super::pieces::Encoded;
use super::pool::{InFlight, Pool};
use super::UpstreamConfig;
use crate::error::GatewayError;

/// The most of an upstream's error body that is read to find its message.
const ERROR_BODY_LIMIT: usize = 64 * 1024;
/// The most of a non-streamed upstream answer (model lists, embeddings) that is read.
const JSON_BODY_LIMIT: usize = 256 * 1024 * 1024;

/// One backend's upstream servers, as seen from one worker.
pub struct Upstream {
    pub backend: String,
    pub config: UpstreamConfig,
    pool: Arc<Pool>,
    /// A cheap GET that tells a server is up again after a cool-down.
    probe_path: &'static str,
    client: awc::Client,
    /// Each server's address joined with each path asked of it, parsed once: joining
    /// and parsing for every request showed in profiles, and there are only a few.
    addresses: RefCell<Vec<(usize, &'static str, Uri)>>,
}

/// An upstream response whose status was a success, ready to be streamed.
pub type UpstreamBody = Pin<Box<dyn Stream<Item = Result<Bytes, GatewayError>>>>;

/// A response and its place in the chosen server's in-flight count.
type Placed = (awc::ClientResponse, InFlight);

fn tls_config() -> Arc<rustls::ClientConfig> {
    static TLS: OnceLock<Arc<rustls::ClientConfig>> = OnceLock::new();
    TLS.get_or_init(|| {
        let roots =
            rustls::RootCertStore::from_iter(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
        let config = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .expect("ring supports the default TLS versions")
        .with_root_certificates(roots)
        .with_no_client_auth();
        Arc::new(config)
    })
    .clone()
}

/// How long an idle upstream connection is kept for the next request: under the 5 s
/// after which common servers close theirs.
const IDLE_CONNECTION_KEPT: std::time::Duration = std::time::Duration::from_secs(4);

impl Upstream {
    /// Builds the client for one backend; called once per worker. The pool is shared
    /// by all workers.
    pub fn new(
        backend: &str,
        config: &UpstreamConfig,
        pool: Arc<Pool>,
        probe_path: &'static str,
    ) -> Upstream {
        let connector = awc::Connector::new()
            // awc queues requests beyond 100 connections per host by default; a
            // stream holds its connection for minutes, so that cap would stall users.
            .limit(0)
            // awc keeps an idle connection 15 s, but many servers (actix-web, uvicorn,
            // Node) close theirs after 5 s: a request sent on such a connection fails
            // with a broken pipe. Give idle connections up before the servers do.
            .conn_keep_alive(IDLE_CONNECTION_KEPT)
            .timeout(config.connect_timeout)
            .handshake_timeout(config.connect_timeout)
            .rustls_0_23(tls_config());
        let client = awc::Client::builder()
            .connector(connector)
            // awc's own timeout would also cut the body; ours are applied per phase.
            .disable_timeout()
            // A gateway passes the upstream's answer on; following a redirect would
            // also re-send the body and the upstream key to wherever it points.
            .disable_redirects()
            .add_default_header((
                "user-agent",
                concat!("switchyard/", env!("CARGO_PKG_VERSION")),
            ))
            .finish();
        Upstream {
            backend: backend.to_owned(),
            config: config.clone(),
            pool,
            probe_path,
            client,
            addresses: RefCell::default(),
        }
    }

    /// The first server's base URL (they all serve the same API).
    pub fn first_url(&self) -> &super::BaseUrl {
        &self.config.base_urls[0]
    }

    /// A request to `path` on server number `server`, carrying key number `key` (the
    /// first key when none is chosen: probes do not take a turn).
    fn request(
        &self,
        method: awc::http::Method,
        server: usize,
        path: &'static str,
        key: Option<usize>,
    ) -> awc::ClientRequest {
        let request = match self.address(server, path) {
            Ok(uri) => self.client.request(method, uri),
            // awc reports the address it cannot parse when the request is sent.
            Err(unparsed) => self.client.request(method, unparsed),
        };
        let request = self.config.headers.iter().fold(request, |request, header| {
            request.insert_header(header.clone())
        });
        let auth = match key {
            Some(key) => self.config.keys.get(key),
            None => self.config.auth.as_ref(),
        };
        match auth {
            Some(auth) => request.insert_header((auth.name.clone(), auth.value.clone())),
            None => request,
        }
    }

    /// `path` on server number `server`, parsed; as written when it does not parse.
    fn address(&self, server: usize, path: &'static str) -> Result<Uri, String> {
        let mut addresses = self.addresses.borrow_mut();
        if let Some((_, _, uri)) = addresses
            .iter()
            .find(|(known, known_path, _)| *known == server && *known_path == path)
        {
            return Ok(uri.clone());
        }
        let joined = format!("{}{path}", self.pool.url(server));
        let Ok(uri) = Uri::try_from(joined.as_str()) else {
            return Err(joined);
        };
        addresses.push((server, path, uri.clone()));
        Ok(uri)
    }

    /// Sends with the next key in turn. An answer of 401, 403 or 429 puts that key to
    /// rest, and the request is sent once more with another key that is not resting,
    /// if there is one: nothing has reached the client yet, and the upstream refused
    /// the request before doing any work for it. Otherwise the refusal is the answer.
    async fn dispatch(
        &self,
        method: awc::http::Method,
        path: &'static str,
        body: Option<&Encoded>,
    ) -> Result<Placed, GatewayError> {
        let keys = self.pool.keys();
        let mut key = keys.pick();
        let mut retried = false;
        loop {
            let placed = self.dispatch_with(method.clone(), path, body, key).await?;
            let Some(used) = key else {
                return Ok(placed);
            };
            let response = &placed.0;
            let retry_after = response
                .headers()
                .get("retry-after")
                .and_then(|value| value.to_str().ok());
            let Some(rest) = super::keys::rest_for(response.status().as_u16(), retry_after) else {
                return Ok(placed);
            };
            keys.rest(used, rest);
            let next = if retried {
                None
            } else {
                keys.other_ready(used)
            };
            log::warn!(
                "backend {}: the upstream answered {} to the key in ${}; it rests {:.0}s{}",
                self.backend,
                response.status().as_u16(),
                keys.env(used),
                rest.as_secs_f64(),
                match next {
                    Some(next) => format!(", trying the key in ${}", keys.env(next)),
                    None => String::new(),
                }
            );
            let Some(next) = next else {
                return Ok(placed);
            };
            // The refusal's body is small; reading it keeps the connection for reuse.
            let (response, _place) = placed;
            super::drain(response).await;
            key = Some(next);
            retried = true;
        }
    }

    /// Sends to the least busy healthy server with key number `key`. A server that
    /// cannot be connected to has seen nothing of the request, so the next one is
    /// tried; any other failure is final. Each outcome counts towards the server's
    /// health.
    async fn dispatch_with(
        &self,
        method: awc::http::Method,
        path: &'static str,
        body: Option<&Encoded>,
        key: Option<usize>,
    ) -> Result<Placed, GatewayError> {
        let mut tried = Vec::new();
        let mut last_error = None;
        loop {
            let (place, due) = self.pool.pick(&tried);
            self.probe(due);
            let Some(place) = place else {
                return Err(last_error.unwrap_or_else(|| {
                    self.unreachable("no upstream server is configured".to_owned())
                }));
            };
            tried.push(place.index());
            let request = self.request(method.clone(), place.index(), path, key);
            let sent = match body {
                Some(body) => {
                    let request = request.content_type("application/json");
                    self.send(request.send_body(body.sending())).await
                }
                None => self.send(request.send()).await,
            };
            match sent {
                Ok(response) => {
                    if response.status().is_server_error() {
                        place.failed();
                    } else {
                        place.succeeded();
                    }
                    return Ok((response, place));
                }
                Err((error, nothing_sent)) => {
                    place.failed();
                    if !nothing_sent || tried.len() >= self.pool.len() {
                        return Err(error);
                    }
                    log::warn!("backend {}: {error}; trying another server", self.backend);
                    last_error = Some(error);
                }
            }
        }
    }

    /// Starts a probe of each server whose cool-down is over.
    fn probe(&self, due: Vec<usize>) {
        for index in due {
            let request = self.request(awc::http::Method::GET, index, self.probe_path, None);
            let url = request.get_uri().to_string();
            let pool = self.pool.clone();
            let limit = self.config.connect_timeout + Duration::from_secs(5);
            actix_web::rt::spawn(async move {
                let ok = matches!(
                    tokio::time::timeout(limit, request.send()).await,
                    Ok(Ok(response)) if !response.status().is_server_error()
                );
                log::debug!("probe of {url}: {}", if ok { "up" } else { "still down" });
                pool.probed(index, ok);
            });
        }
    }

    /// POSTs a JSON body and returns the response body as a stream, once the status says
    /// success. An error status becomes [`GatewayError::UpstreamStatus`] with the
    /// upstream's message.
    pub async fn post_stream(
        &self,
        path: &'static str,
        body: Encoded,
    ) -> Result<UpstreamBody, GatewayError> {
        let (response, place) = self
            .dispatch(awc::http::Method::POST, path, Some(&body))
            .await?;
        let response = self.check_status(response).await?;
        Ok(Box::pin(IdleTimeout::new(
            response,
            self.config.idle_timeout,
            self.backend.clone(),
            place,
        )))
    }

    /// GETs and decodes a JSON answer (model listings).
    pub async fn get_json<T: DeserializeOwned>(
        &self,
        path: &'static str,
    ) -> Result<T, GatewayError> {
        let (response, _place) = self.dispatch(awc::http::Method::GET, path, None).await?;
        self.read_json(path, response).await
    }

    /// POSTs JSON and decodes a JSON answer (embeddings, model details).
    pub async fn post_json<T: DeserializeOwned>(
        &self,
        path: &'static str,
        body: Encoded,
    ) -> Result<T, GatewayError> {
        let body = self.post_for_body(path, body).await?;
        self.parse_json(path, &body)
    }

    /// POSTs JSON and returns the whole answer's body, for a decoder that reads it
    /// borrowed.
    pub async fn post_for_body(
        &self,
        path: &'static str,
        body: Encoded,
    ) -> Result<Bytes, GatewayError> {
        let (response, _place) = self
            .dispatch(awc::http::Method::POST, path, Some(&body))
            .await?;
        self.read_body(response).await
    }

    /// Decodes the answer of `path`, naming it when it is not the expected JSON.
    fn parse_json<'a, T: Deserialize<'a>>(
        &self,
        path: &'static str,
        body: &'a [u8],
    ) -> Result<T, GatewayError> {
        serde_json::from_slice(body).map_err(|e| GatewayError::UpstreamProtocol {
            backend: self.backend.clone(),
            detail: format!("{path} did not answer with the expected JSON: {e}"),
        })
    }

    async fn read_json<T, S>(
        &self,
        path: &'static str,
        response: awc::ClientResponse<S>,
    ) -> Result<T, GatewayError>
    where
        T: DeserializeOwned,
        S: Stream<Item = Result<Bytes, awc::error::PayloadError>> + Unpin,
    {
        let body = self.read_body(response).await?;
        self.parse_json(path, &body)
    }

    /// The whole body of a successful answer, once the status says success.
    async fn read_body<S>(&self, response: awc::ClientResponse<S>) -> Result<Bytes, GatewayError>
    where
        S: Stream<Item = Result<Bytes, awc::error::PayloadError>> + Unpin,
    {
        let mut response = self.check_status(response).await?;
        tokio::time::timeout(
            self.config.idle_timeout,
            response.body().limit(JSON_BODY_LIMIT),
        )
        .await
        .map_err(|_| self.timeout("the body stalled"))?
        .map_err(|e| self.unreachable(format!("reading the body failed: {e}")))
    }

    /// Sends with the response timeout; on failure, also says whether nothing reached
    /// the server (a connect failure), which makes trying another server safe.
    async fn send<F, R>(&self, sending: F) -> Result<R, (GatewayError, bool)>
    where
        F: Future<Output = Result<R, SendRequestError>>,
    {
        match tokio::time::timeout(self.config.response_timeout, sending).await {
            Err(_) => Err((
                self.timeout(&format!(
                    "no response within {}s",
                    self.config.response_timeout.as_secs_f64()
                )),
                false,
            )),
            Ok(Err(SendRequestError::Connect(ConnectError::Timeout))) => Err((
                self.timeout(&format!(
                    "could not connect within {}s",
                    self.config.connect_timeout.as_secs_f64()
                )),
                true,
            )),
            Ok(Err(SendRequestError::Connect(e))) => Err((self.unreachable(e.to_string()), true)),
            Ok(Err(SendRequestError::Timeout)) => Err((self.timeout("no response in time"), false)),
            Ok(Err(e)) => Err((self.unreachable(e.to_string()), false)),
            Ok(Ok(response)) => Ok(response),
        }
    }

    async fn check_status<S>(
        &self,
        mut response: awc::ClientResponse<S>,
    ) -> Result<awc::ClientResponse<S>, GatewayError>
    where
        S: Stream<Item = Result<Bytes, awc::error::PayloadError>> + Unpin,
    {
        let status = response.status();
        if status.is_success() {
            return Ok(response);
        }
        if status.is_redirection() {
            // Said to the client, so without any `user:password@` it may carry.
            let location = response
                .headers()
                .get("location")
                .and_then(|v| v.to_str().ok())
                .map_or_else(|| "nowhere".to_owned(), super::pool::without_credentials);
            return Err(GatewayError::UpstreamProtocol {
                backend: self.backend.clone(),
                detail: format!(
                    "answered {status} pointing to {location}; redirects are not followed, so set the backend's url to the address it should use"
                ),
            });
        }
        let retry_after = response
            .headers()
            .get("retry-after")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        let body = tokio::time::timeout(
            Duration::from_secs(10).min(self.config.idle_timeout),
            response.body().limit(ERROR_BODY_LIMIT),
        )
        .await
        .ok()
        .and_then(Result::ok)
        .unwrap_or_default();
        let UpstreamMessage {
            message,
            kind,
            code,
        } = error_body::parse_body(&body).unwrap_or_else(|| {
            let text = String::from_utf8_lossy(&body).trim().to_owned();
            let message = if text.is_empty() {
                format!("backend '{}' answered {status}", self.backend)
            } else {
                text
            };
            UpstreamMessage {
                message,
                kind: None,
                code: None,
            }
        });
        Err(GatewayError::UpstreamStatus {
            backend: self.backend.clone(),
            status: status.as_u16(),
            message,
            kind,
            code,
            retry_after,
        })
    }

    fn timeout(&self, detail: &str) -> GatewayError {
        GatewayError::UpstreamTimeout {
            backend: self.backend.clone(),
            detail: detail.to_owned(),
        }
    }

    fn unreachable(&self, detail: String) -> GatewayError {
        GatewayError::UpstreamUnreachable {
            backend: self.backend.clone(),
            detail,
        }
    }
}

pin_project! {
    /// Ends a body with a timeout error when it falls silent for longer than `idle`.
    struct IdleTimeout<S> {
        #[pin]
        inner: S,
        #[pin]
        deadline: tokio::time::Sleep,
        idle: Duration,
        backend: String,
        // Keeps the request counted as in flight at its server until the body ends.
        place: InFlight,
        finished: bool,
    }
}

impl<S> IdleTimeout<S> {
    fn new(inner: S, idle: Duration, backend: String, place: InFlight) -> Self {
        IdleTimeout {
            inner,
            deadline: tokio::time::sleep(idle),
            idle,
            backend,
            place,
            finished: false,
        }
    }
}

impl<S> Stream for IdleTimeout<S>
where
    S: Stream<Item = Result<Bytes, awc::error::PayloadError>>,
{
    type Item = Result<Bytes, GatewayError>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = self.project();
        if *this.finished {
            return Poll::Ready(None);
        }
        match this.inner.poll_next(cx) {
            Poll::Ready(Some(Ok(bytes))) => {
                let next = tokio::time::Instant::now() + *this.idle;
                this.deadline.reset(next);
                Poll::Ready(Some(Ok(bytes)))
            }
            Poll::Ready(Some(Err(e))) => {
                *this.finished = true;
                this.place.failed();
                Poll::Ready(Some(Err(GatewayError::UpstreamUnreachable {
                    backend: this.backend.clone(),
                    detail: format!("the connection broke mid-answer: {e}"),
                })))
            }
            Poll::Ready(None) => {
                *this.finished = true;
                Poll::Ready(None)
            }
            Poll::Pending => match this.deadline.poll(cx) {
                Poll::Ready(()) => {
                    *this.finished = true;
                    this.place.failed();
                    Poll::Ready(Some(Err(GatewayError::UpstreamTimeout {
                        backend: this.backend.clone(),
                        detail: format!(
                            "the answer stalled for more than {}s",
                            this.idle.as_secs_f64()
                        ),
                    })))
                }
                Poll::Pending => Poll::Pending,
            },
        }
    }
}

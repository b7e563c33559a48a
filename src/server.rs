//! The HTTP server: builds the actix app (routes, per-worker backends) and
//! starts it, so that `main` and the tests start exactly the same thing.

use std::net::SocketAddr;
use std::sync::Arc;

use actix_web::body::MessageBody;
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::middleware::{from_fn, Condition, Logger, Next};
use actix_web::{web, App, HttpServer};

use crate::auth::{Anonymous, KeyStore};
use crate::backend::Pools;
use crate::config::Config;
use crate::dialect::ollama::Ollama;
use crate::dialect::responses::store::ResponseStore;
use crate::metrics::{CountedAtEnd, Metrics};
use crate::peer::TrustedProxies;
use crate::pipeline::BodyLimit;
use crate::queue::Admission;
use crate::router::Router;
use crate::routes;
use crate::timing;
use crate::usage::Recorder;

/// What every worker shares: the checked configuration and the key store.
pub struct Shared {
    pub config: Arc<Config>,
    pub keys: Arc<KeyStore>,
    pub metrics: Arc<Metrics>,
    /// Upstream servers' health and load, shared by every worker.
    pub pools: Arc<Pools>,
    /// The backends' slots and lines and the keys' counts (`max_concurrent`).
    pub admission: Arc<Admission>,
    /// Where every request's outcome goes: metrics, token budgets, the usage ledger.
    pub usage: Arc<Recorder>,
    /// The stored responses of the Responses API, opened by [`start`] (in the ledger's
    /// database when there is one) and closed by [`serve`] after the last answer.
    pub responses: Arc<std::sync::OnceLock<Arc<ResponseStore>>>,
}

impl Shared {
    /// Loads the keys and applies the contract's rule on anonymous serving.
    pub fn prepare(config: Config) -> Result<Shared, String> {
        let anonymous = Anonymous::for_config(&config);
        let mut keys = KeyStore::load(config.keys_file.clone(), &config.admin_keys.0, anonymous)?;
        let cluster = config.cluster.clone().map(crate::cluster::Cluster::new);
        keys.share_with(cluster.clone());
        if keys.is_empty() && anonymous == Anonymous::Never {
            return Err(format!(
                "server.listen {} is not a loopback address and no API keys are configured: set auth.keys_file, or auth.allow_anonymous = true to serve without keys",
                config.listen
            ));
        }
        let keys = Arc::new(keys);
        let metrics = Arc::new(Metrics::new());
        let backends: Vec<String> = config.backends.iter().map(|b| b.name.clone()).collect();
        Ok(Shared {
            pools: Arc::new(Pools::for_config(&config)),
            admission: admission_for(&config, metrics.clone(), cluster),
            config: Arc::new(config),
            usage: Arc::new(Recorder::new(metrics.clone(), keys.clone(), &backends)),
            keys,
            metrics,
            responses: Arc::default(),
        })
    }

    /// The same, counting into `metrics` (tests give it a smaller cap on model labels).
    pub fn with_metrics(mut self, metrics: Metrics) -> Shared {
        let backends: Vec<String> = self
            .config
            .backends
            .iter()
            .map(|b| b.name.clone())
            .collect();
        self.metrics = Arc::new(metrics);
        self.admission = admission_for(
            &self.config,
            self.metrics.clone(),
            self.keys.cluster().cloned(),
        );
        self.usage = Arc::new(Recorder::new(
            self.metrics.clone(),
            self.keys.clone(),
            &backends,
        ));
        self
    }
}

/// The backends' slots and lines, counting into `metrics`, leased cluster-wide too
/// where `[cluster]` shares them.
fn admission_for(
    config: &Config,
    metrics: Arc<Metrics>,
    cluster: Option<Arc<crate::cluster::Cluster>>,
) -> Arc<Admission> {
    let limits: Vec<_> = config
        .backends
        .iter()
        .map(|backend| (backend.name.clone(), backend.queue.clone()))
        .collect();
    Arc::new(Admission::new(&limits, metrics).with_cluster(cluster))
}

/// Opens the usage ledger, binds the listener and returns the server (not yet awaited)
/// and its address.
pub fn start(shared: Shared) -> std::io::Result<(actix_web::dev::Server, SocketAddr)> {
    shared
        .usage
        .open_ledger(&shared.config.ledger)
        .map_err(std::io::Error::other)?;
    let usage = web::Data::from(shared.usage.clone());
    let config = shared.config.clone();
    if let Some(cluster) = shared.keys.cluster() {
        cluster.launch();
    }
    let keys = web::Data::from(shared.keys.clone());
    let metrics = web::Data::from(shared.metrics.clone());
    let admission = web::Data::from(shared.admission.clone());
    let factory_config = config.clone();
    let pools = shared.pools.clone();
    // Stored responses are shared by every worker, as a continuation may land on any.
    // With the usage ledger on, they are kept in its database and outlast a restart.
    let store = match shared.responses.get() {
        Some(store) => store.clone(),
        None => {
            let database = config
                .ledger
                .enabled
                .then_some(config.ledger.path.as_path());
            let store = Arc::new(
                ResponseStore::open(config.responses, database).map_err(std::io::Error::other)?,
            );
            let _ = shared.responses.set(store.clone());
            store
        }
    };
    let responses = web::Data::from(store);
    // actix's Logger formats its line (and reads the peer address) for every request
    // even when its level is filtered out; leave it out of the chain then.
    let access_log = log::log_enabled!(target: "actix_web::middleware::logger", log::Level::Info);
    let server = HttpServer::new(move || {
        let config = factory_config.clone();
        App::new()
            .app_data(keys.clone())
            .app_data(metrics.clone())
            .app_data(admission.clone())
            .app_data(responses.clone())
            .app_data(usage.clone())
            .app_data(web::Data::new(Router::new(&config, &pools)))
            .app_data(web::Data::from(config.clone()))
            .app_data(web::Data::new(BodyLimit(config.body_limit)))
            .app_data(web::Data::new(config.metrics_access))
            .app_data(web::Data::new(TrustedProxies(
                config.trusted_proxies.clone(),
            )))
            .app_data(web::Data::new(routes::ListingCache::default()))
            .configure(routes::configure)
            .default_service(web::to(routes::not_found::<Ollama>))
            .wrap(from_fn(front_door))
            // Outside the scopes' key checks, so that a browser's preflight (which
            // carries no key) is answered for the allowed origins only.
            .wrap(Condition::new(
                !config.cors_allow_origins.is_empty(),
                cors(&config.cors_allow_origins),
            ))
            // The client (the address a trusted proxy relayed for, else the peer),
            // method, path, status, size and time only: no headers, so no keys.
            .wrap(Condition::new(
                access_log,
                Logger::new("%{client}xi \"%r\" %s %b %Dms")
                    .custom_request_replace("client", crate::peer::client_of),
            ))
    })
    .on_connect(crate::hangup::remember_socket)
    // A stream is many small writes; with Nagle's algorithm each would wait for the
    // client's (delayed) acknowledgement of the one before.
    .tcp_nodelay(true)
    .disable_signals()
    .shutdown_timeout(config.shutdown_timeout.as_secs())
    .bind(config.listen)?;
    let address = server.addrs().first().copied().unwrap_or(config.listen);
    Ok((server.run(), address))
}

/// The CORS policy for `server.cors_allow_origins`: the API's methods and the headers
/// clients send (a key, a JSON body, Anthropic's version), and the answer headers a
/// page may read.
fn cors(origins: &[String]) -> actix_cors::Cors {
    let mut cors = actix_cors::Cors::default()
        .allowed_methods(["GET", "POST", "DELETE", "HEAD", "OPTIONS"])
        .allowed_headers([
            "authorization",
            "x-api-key",
            "content-type",
            "anthropic-version",
            "anthropic-beta",
        ])
        .expose_headers(["server-timing", "retry-after"])
        .max_age(3600);
    for origin in origins {
        cors = if origin == "*" {
            cors.allow_any_origin()
        } else {
            cors.allowed_origin(origin)
        };
    }
    cors
}

/// Serves until SIGTERM or Ctrl-C, then lets in-flight requests finish (bounded).
pub async fn serve(shared: Shared) -> std::io::Result<()> {
    let usage = shared.usage.clone();
    let responses = shared.responses.clone();
    let (server, address) = start(shared)?;
    log::info!("listening on http://{address}");
    // actix stops at once on Ctrl-C; both signals must let in-flight answers finish.
    let handle = server.handle();
    actix_web::rt::spawn(async move {
        let mut terminate =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(signal) => signal,
                Err(e) => {
                    log::error!("cannot listen for SIGTERM: {e}");
                    return;
                }
            };
        let which = tokio::select! {
            _ = tokio::signal::ctrl_c() => "Ctrl-C",
            _ = terminate.recv() => "SIGTERM",
        };
        log::info!("{which}: no new connections; letting requests in flight finish");
        handle.stop(true).await;
    });
    let served = server.await;
    // Every answer has ended: the ledger's writer stores what is queued, then stops.
    usage.close();
    if let Some(store) = responses.get() {
        store.close();
    }
    served
}

/// What every request passes through, in one middleware rather than two (each layer
/// boxes the request's future once more): the stopwatch behind `Server-Timing` and the
/// count by route pattern and status, with the request's log line. The key check belongs to each dialect's scope,
/// which answers a refusal in its dialect.
async fn front_door(
    request: ServiceRequest,
    next: Next<impl MessageBody>,
) -> Result<ServiceResponse<impl MessageBody>, actix_web::Error> {
    let stopwatch = timing::start(&request);
    let metrics = request.app_data::<web::Data<Metrics>>().cloned();
    let mut response = next.call(request).await?;
    timing::stamp(&mut response, &stopwatch);
    // A stream counts itself when it ends, with its real outcome (`pipeline`).
    if response
        .response()
        .extensions()
        .get::<CountedAtEnd>()
        .is_some()
    {
        return Ok(response);
    }
    if let Some(metrics) = metrics {
        let route = response.request().match_pattern();
        metrics.request(route.as_deref().unwrap_or("unmatched"), response.status());
    }
    let request = response.request();
    timing::log_outcome(
        request.method(),
        request.path(),
        response.status(),
        &stopwatch,
    );
    Ok(response)
}

//! Model listings (`/v1/models`, `/api/tags`) and `/health`. Every backend is asked at
//! once with a short limit; one that is down is logged and left out, never failing the
//! whole list.

use std::cell::RefCell;
use std::rc::Rc;
use std::time::{Duration, Instant};

use actix_web::{web, HttpRequest, HttpResponse};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

use crate::auth::may_use;
use crate::backend::ModelEntry;
use crate::dialect::anthropic;
use crate::dialect::ollama::{self, json_utf8, timestamp};
use crate::dialect::openai::{self, model_object};
use crate::dialect::unix_now;
use crate::error::GatewayError;
use crate::pipeline::RequestBody;
use crate::router::Router;

/// How long a listing waits for any one backend.
const LISTING_TIMEOUT: Duration = Duration::from_secs(5);

/// How long a listing is reused: front-ends refresh their model list often, and
/// asking every upstream each time would put their latency on every refresh.
const LISTING_TTL: Duration = Duration::from_secs(10);

/// Every backend's models, each named `backend/model`.
type Listing = Rc<Vec<(String, ModelEntry)>>;

/// The last listing of this worker, reused for [`LISTING_TTL`].
#[derive(Default)]
pub struct ListingCache(RefCell<Option<(Instant, Listing)>>);

/// Every backend's models, named `backend/model`, from the cache when it is fresh.
async fn all_models(router: &Router, cache: &ListingCache) -> Listing {
    if let Some((at, models)) = cache.0.borrow().as_ref() {
        if at.elapsed() < LISTING_TTL {
            return models.clone();
        }
    }
    let models = Rc::new(fetch_models(router).await);
    *cache.0.borrow_mut() = Some((Instant::now(), models.clone()));
    models
}

/// Every backend's models, named `backend/model`, in configuration order.
async fn fetch_models(router: &Router) -> Vec<(String, ModelEntry)> {
    let listings = router.backends().map(|(name, backend)| async move {
        match tokio::time::timeout(LISTING_TIMEOUT, backend.models()).await {
            Ok(Ok(models)) => models
                .into_iter()
                .map(|model| (format!("{name}/{}", model.id), model))
                .collect(),
            Ok(Err(error)) => {
                log::warn!("listing models: backend '{name}' left out: {error}");
                Vec::new()
            }
            Err(_) => {
                log::warn!(
                    "listing models: backend '{name}' left out: no answer within {}s",
                    LISTING_TIMEOUT.as_secs()
                );
                Vec::new()
            }
        }
    });
    let mut models: Vec<(String, ModelEntry)> = futures::future::join_all(listings)
        .await
        .into_iter()
        .flatten()
        .collect();
    // Aliases are models too, as far as clients can tell; a pattern (`claude-*`) names
    // no one model, so it is not listed.
    for alias in router
        .aliases()
        .iter()
        .filter(|alias| alias.pattern.is_none())
    {
        let entry = ModelEntry {
            id: alias.name.clone(),
            owned_by: Some("switchyard".to_owned()),
            ..ModelEntry::default()
        };
        models.push((alias.name.clone(), entry));
    }
    models
}

fn openai_entry(id: &str, model: &ModelEntry, now: u64) -> Value {
    model_object(
        id,
        model.created.unwrap_or(now),
        model.owned_by.as_deref().unwrap_or("switchyard"),
    )
}

/// Whether a request comes from an Anthropic client (its SDKs and Claude Code send
/// `anthropic-version` on every call), which reads listings in Anthropic's shape.
fn wants_anthropic(request: &HttpRequest) -> bool {
    request.headers().contains_key("anthropic-version")
}

/// Whether a request is for `/v1/models` or `/v1/models/{id}` from an Anthropic client:
/// the one place where a scope's key check answers in another dialect than its own, as
/// these two routes are shared by OpenAI's and Anthropic's clients.
pub fn anthropic_listing(request: &HttpRequest) -> bool {
    let path = request.path();
    (path == "/v1/models" || path.starts_with("/v1/models/")) && wants_anthropic(request)
}

pub async fn openai_models(
    request: HttpRequest,
    router: web::Data<Router>,
    cache: web::Data<ListingCache>,
) -> HttpResponse {
    let now = unix_now();
    let models = all_models(&router, &cache).await;
    let allowed = models
        .iter()
        .filter(|(id, _)| may_use(&request, id).is_ok());
    if wants_anthropic(&request) {
        let data = allowed
            .map(|(id, model)| anthropic::model_object(id, model.created.unwrap_or(now)))
            .collect();
        return HttpResponse::Ok().json(anthropic::model_list(data));
    }
    let data: Vec<Value> = allowed
        .map(|(id, model)| openai_entry(id, model, now))
        .collect();
    HttpResponse::Ok().json(json!({"object": "list", "data": data}))
}

/// `GET /v1/models/{id}`, in OpenAI's shape or, for an Anthropic client, Anthropic's.
pub async fn openai_model(
    request: HttpRequest,
    id: web::Path<String>,
    router: web::Data<Router>,
    cache: web::Data<ListingCache>,
) -> HttpResponse {
    let found = find_model(&request, id.into_inner(), &router, &cache).await;
    match (found, wants_anthropic(&request)) {
        (Ok((id, model)), false) => HttpResponse::Ok().json(openai_entry(&id, &model, unix_now())),
        (Ok((id, model)), true) => HttpResponse::Ok().json(anthropic::model_object(
            &id,
            model.created.unwrap_or_else(unix_now),
        )),
        (Err(error), false) => openai::render_error(&error),
        (Err(error), true) => anthropic::render_error(&error),
    }
}

/// A listed model; or a name that routes to one (an unprefixed name the default
/// backend lists, so `"model": "llama3"` and `/v1/models/llama3` agree), or to the echo
/// backend, which answers any name: a chat with such a name works, so its entry exists
/// too.
async fn find_model(
    request: &HttpRequest,
    id: String,
    router: &Router,
    cache: &ListingCache,
) -> Result<(String, ModelEntry), GatewayError> {
    may_use(request, &id)?;
    let models = all_models(router, cache).await;
    let listed = |name: &str| models.iter().find(|(listed, _)| *listed == name);
    if let Some((name, model)) = listed(&id) {
        return Ok((name.clone(), model.clone()));
    }
    if router.aliases().iter().any(|alias| alias.matches(&id)) {
        let entry = ModelEntry {
            owned_by: Some("switchyard".to_owned()),
            ..ModelEntry::default()
        };
        return Ok((id, entry));
    }
    let route = router.route(&id)?;
    if let Some((_, model)) = listed(&format!("{}/{}", route.name, route.model)) {
        return Ok((id, model.clone()));
    }
    if route.backend.kind_name() == "echo" {
        let entry = ModelEntry {
            owned_by: Some(route.name.to_owned()),
            ..ModelEntry::default()
        };
        return Ok((id, entry));
    }
    Err(GatewayError::ModelNotFound(id))
}

pub async fn ollama_tags(
    request: HttpRequest,
    router: web::Data<Router>,
    cache: web::Data<ListingCache>,
) -> HttpResponse {
    let now = timestamp();
    let models: Vec<Value> = all_models(&router, &cache)
        .await
        .iter()
        .filter(|(id, _)| may_use(&request, id).is_ok())
        .map(|(id, model)| {
            let model = model.clone();
            // Clients group models by digest, so each name gets its own.
            let digest: String = Sha256::digest(id.as_bytes())
                .iter()
                .map(|b| format!("{b:02x}"))
                .collect();
            json!({
                "name": id,
                "model": id,
                "modified_at": model.modified_at.unwrap_or_else(|| now.clone()),
                "size": model.size.unwrap_or(0),
                "digest": digest,
                "details": model.details.unwrap_or_else(|| json!({
                    "parent_model": "", "format": "", "family": "", "families": [],
                    "parameter_size": "", "quantization_level": ""
                })),
            })
        })
        .collect();
    HttpResponse::Ok().json(json!({ "models": models }))
}

#[derive(serde::Deserialize)]
pub struct ShowRequest {
    model: Option<String>,
    /// The legacy key for the model.
    name: Option<String>,
}

/// `POST /api/show`: Ollama's own description where the backend is Ollama, what the
/// gateway knows otherwise.
pub async fn ollama_show(
    http: HttpRequest,
    body: RequestBody,
    router: web::Data<Router>,
) -> HttpResponse {
    let answer = async {
        let request: ShowRequest = crate::dialect::parse_body(&body.bytes()?)?;
        let model = request
            .model
            .or(request.name)
            .filter(|m| !m.is_empty())
            .ok_or_else(|| GatewayError::bad_field("model", "model is required"))?;
        may_use(&http, &model)?;
        // An alias is described by its first target.
        let routes = router.resolve(&model)?;
        let Some(route) = routes.first() else {
            return Err(GatewayError::ModelNotFound(model));
        };
        let mut shown = route.backend.show(route.model).await?;
        if let Some(object) = shown.as_object_mut() {
            object
                .entry("modified_at")
                .or_insert_with(|| Value::from(timestamp()));
        }
        Ok(json_utf8(&shown))
    };
    answer
        .await
        .unwrap_or_else(|error| ollama::render_error(&error))
}

/// `GET /api/ps`: the models Ollama backends have loaded, named `backend/model`.
pub async fn ollama_ps(router: web::Data<Router>) -> HttpResponse {
    let lists = router.backends().map(|(name, backend)| async move {
        match tokio::time::timeout(LISTING_TIMEOUT, backend.running()).await {
            Ok(Ok(models)) => models
                .into_iter()
                .map(|mut model| {
                    for key in ["name", "model"] {
                        if let Some(id) = model.get(key).and_then(Value::as_str) {
                            model[key] = Value::from(format!("{name}/{id}"));
                        }
                    }
                    model
                })
                .collect(),
            Ok(Err(error)) => {
                log::warn!("listing running models: backend '{name}' left out: {error}");
                Vec::new()
            }
            Err(_) => {
                log::warn!("listing running models: backend '{name}' left out: no answer in time");
                Vec::new()
            }
        }
    });
    let models: Vec<Value> = futures::future::join_all(lists)
        .await
        .into_iter()
        .flatten()
        .collect();
    HttpResponse::Ok().json(json!({ "models": models }))
}

/// `/health`: the status for anyone (probes carry no key), each backend's detail only
/// for callers that may see the metrics.
pub async fn health(request: HttpRequest, router: web::Data<Router>) -> HttpResponse {
    let backends = router.health();
    let degraded = backends.iter().any(|b| b["available"] == false);
    let status = if degraded { "degraded" } else { "ok" };
    let cluster = request
        .app_data::<web::Data<crate::auth::KeyStore>>()
        .and_then(|keys| keys.cluster().map(|cluster| cluster.health()));
    let mut health = json!({ "status": status });
    if let Some(redis) = cluster {
        health["redis"] = json!(redis);
    }
    if crate::auth::may_see_operations(&request).is_ok() {
        health["backends"] = json!(backends);
    }
    HttpResponse::Ok().json(health)
}

//! Model listings (`/v1/models`, `/api/tags`) and `/health`. Every backend is asked at
//! once with a short limit; one that is down is logged and left out, never failing the
//! whole list.

use std::time::Duration;

use actix_web::{web, HttpResponse};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

use crate::backend::ModelEntry;
use crate::dialect::ollama::timestamp;
use crate::dialect::openai::model_object;
use crate::dialect::unix_now;
use crate::router::Router;

/// How long a listing waits for any one backend.
const LISTING_TIMEOUT: Duration = Duration::from_secs(5);

/// Every backend's models, named `backend/model`, in configuration order.
async fn all_models(router: &Router) -> Vec<(String, ModelEntry)> {
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
    futures::future::join_all(listings)
        .await
        .into_iter()
        .flatten()
        .collect()
}

pub async fn openai_models(router: web::Data<Router>) -> HttpResponse {
    let now = unix_now();
    let data: Vec<Value> = all_models(&router)
        .await
        .into_iter()
        .map(|(id, model)| {
            model_object(
                &id,
                model.created.unwrap_or(now),
                model.owned_by.as_deref().unwrap_or("switchyard"),
            )
        })
        .collect();
    HttpResponse::Ok().json(json!({"object": "list", "data": data}))
}

pub async fn ollama_tags(router: web::Data<Router>) -> HttpResponse {
    let now = timestamp();
    let models: Vec<Value> = all_models(&router)
        .await
        .into_iter()
        .map(|(id, model)| {
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

pub async fn health(router: web::Data<Router>) -> HttpResponse {
    let backends: Vec<Value> = router
        .backends()
        .map(|(name, backend)| json!({"name": name, "kind": backend.kind_name()}))
        .collect();
    HttpResponse::Ok().json(json!({"status": "ok", "backends": backends}))
}

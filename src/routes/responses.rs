//! `POST /v1/responses`, `GET /v1/responses/{id}` and `DELETE /v1/responses/{id}`: the
//! Responses dialect made for each request with the shared store and the caller's key
//! id (so a key sees only its own responses), then the one chat pipeline.

use std::sync::Arc;

use actix_web::{web, HttpMessage, HttpRequest, HttpResponse};
use serde_json::json;

use crate::auth::Key;
use crate::dialect::openai::render_error;
use crate::dialect::responses::store::ResponseStore;
use crate::dialect::responses::{not_found, Responses};
use crate::pipeline::{serve_chat, Caller, RequestBody};
use crate::router::Router;

/// Whose responses a request may see: its key's id, or `""` for anonymous callers,
/// who share one owner.
fn owner(request: &HttpRequest) -> Arc<str> {
    request
        .extensions()
        .get::<Key>()
        .map_or_else(|| Arc::from(""), |Key(policy)| policy.key_id.clone())
}

fn store(request: &HttpRequest) -> Option<Arc<ResponseStore>> {
    request
        .app_data::<web::Data<ResponseStore>>()
        .map(|store| store.clone().into_inner())
}

pub async fn create(
    request: HttpRequest,
    body: RequestBody,
    router: web::Data<Router>,
    caller: Caller,
) -> HttpResponse {
    let dialect = Responses {
        store: store(&request),
        owner: owner(&request),
    };
    serve_chat(dialect, body, router, caller).await
}

pub async fn retrieve(request: HttpRequest, id: web::Path<String>) -> HttpResponse {
    match store(&request).and_then(|store| store.get(&id, &owner(&request))) {
        Some(stored) => HttpResponse::Ok().json(stored.object),
        None => render_error(&not_found(&id, None)),
    }
}

pub async fn delete(request: HttpRequest, id: web::Path<String>) -> HttpResponse {
    if store(&request).is_some_and(|store| store.delete(&id, &owner(&request))) {
        HttpResponse::Ok().json(json!({"id": *id, "object": "response", "deleted": true}))
    } else {
        render_error(&not_found(&id, None))
    }
}

//! `POST /v1/messages/count_tokens`: the request read as a chat, checked as one (the
//! key may use the model, the model routes), and its input tokens counted by the
//! model's (first) backend where that kind can count without generating (Anthropic's),
//! estimated otherwise.

use actix_web::{web, HttpResponse};

use crate::dialect::anthropic::{self, Anthropic};
use crate::dialect::Dialect;
use crate::error::GatewayError;
use crate::pipeline::{Caller, RequestBody};
use crate::router::Router;

pub async fn count_tokens(
    body: RequestBody,
    router: web::Data<Router>,
    caller: Caller,
) -> HttpResponse {
    let answer = async {
        let body = body.bytes()?;
        let parsed = anthropic::parse(&body, false)?;
        caller.may_use(&parsed.model)?;
        let routes = router.resolve(&parsed.model)?;
        let counted = match routes.first() {
            Some(route) => {
                route
                    .backend
                    .count_tokens(route.model, &parsed.request)
                    .await?
            }
            None => None,
        };
        let tokens = counted.unwrap_or_else(|| anthropic::estimate_tokens(&parsed.request));
        Ok::<_, GatewayError>(HttpResponse::Ok().json(anthropic::token_count(tokens)))
    };
    answer
        .await
        .unwrap_or_else(|error| Anthropic::render_error(&error))
}

//! The web console at `/ui`: a few static pages for whoever runs the gateway, to see the
//! backends, try a model, hand out keys and read the usage, without curl.
//!
//! The page itself (HTML, CSS, JavaScript) is compiled into the binary and served as
//! is: nothing is fetched from elsewhere, so it works on a machine with no internet.
//! It is never mounted at `/`, which Ollama's clients probe. Everything the page knows
//! comes from the JSON API under `/ui/api/` (`api`), which only admin keys may use, or
//! from the gateway's own public routes, called with the same admin key.

mod api;
mod recent;
mod usage;

use actix_web::http::header::{self, HeaderValue};
use actix_web::{web, HttpResponse};

pub use recent::RecentErrors;

/// The page and its two companions, as they are in the repository.
const INDEX: &str = include_str!("assets/index.html");
const SCRIPT: &str = include_str!("assets/console.js");
const STYLE: &str = include_str!("assets/console.css");

/// Mounts the page and its API; called once from the route table.
pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.service(api::scope())
        .route("/ui", web::get().to(index))
        .route("/ui/", web::get().to(index))
        .route("/ui/console.js", web::get().to(script))
        .route("/ui/console.css", web::get().to(style));
}

/// One embedded file. The page may load only itself: no other origin, no inline
/// script, and no framing by another site (clickjacking).
fn asset(content_type: &'static str, body: &'static str) -> HttpResponse {
    HttpResponse::Ok()
        .content_type(content_type)
        .insert_header((
            header::CONTENT_SECURITY_POLICY,
            HeaderValue::from_static(
                "default-src 'self'; img-src 'self' data:; style-src 'self'; script-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'",
            ),
        ))
        .insert_header((header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY")))
        .insert_header((
            header::X_CONTENT_TYPE_OPTIONS,
            HeaderValue::from_static("nosniff"),
        ))
        .insert_header((header::REFERRER_POLICY, HeaderValue::from_static("no-referrer")))
        .insert_header((header::CACHE_CONTROL, HeaderValue::from_static("no-cache")))
        .body(body)
}

async fn index() -> HttpResponse {
    asset("text/html; charset=utf-8", INDEX)
}

async fn script() -> HttpResponse {
    asset("text/javascript; charset=utf-8", SCRIPT)
}

async fn style() -> HttpResponse {
    asset("text/css; charset=utf-8", STYLE)
}

//! The console's JSON API under `/ui/api/`: for admin keys only, and for the console's
//! own page only when it changes something.
//!
//! Who: every call carries the admin key in `Authorization: Bearer` (the page keeps it
//! in `sessionStorage`, never in a URL), checked by the key store exactly as the public
//! routes check keys (constant-time, over every key); a user key is refused with 403, no
//! key or a wrong one with 401, and an anonymous caller (even a local one, where the
//! gateway serves without keys) with 401 or 403.
//!
//! Cross-site requests: the key travels in a header, not a cookie, so a page of another
//! site cannot make a browser send it: a forged form or `fetch` reaches us without a
//! key and is refused. As a second lock, a call that changes something must also be a
//! `POST` with `Content-Type: application/json` and `X-Switchyard-Console: 1` (neither
//! can be sent cross-site without a CORS preflight, which the gateway never grants for
//! that header), and its `Origin`, when the browser sends one, must be this host.

use std::path::PathBuf;
use std::sync::Arc;

use actix_web::body::{EitherBody, MessageBody};
use actix_web::dev::{HttpServiceFactory, ServiceRequest, ServiceResponse};
use actix_web::http::{header, Method, StatusCode};
use actix_web::middleware::{from_fn, Next};
use actix_web::{web, HttpMessage, HttpRequest, HttpResponse};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use crate::auth::KeyStore;
use crate::config::Config;
use crate::error::GatewayError;
use crate::keys::cli::{self, AddError, NewKey, Select};
use crate::keys::{self, KeyPolicy};
use crate::peer;
use crate::queue::Admission;
use crate::router::Router;

/// The header the console's page sends on every call that changes something.
pub const CONSOLE_HEADER: &str = "x-switchyard-console";

/// The admin a call was admitted as.
#[derive(Clone)]
struct Admin(Arc<KeyPolicy>);

/// The API's routes, behind the admin check.
pub fn scope() -> impl HttpServiceFactory {
    web::scope("/ui/api")
        .route("/session", web::get().to(session))
        .route("/overview", web::get().to(overview))
        .route("/keys", web::get().to(list_keys))
        .route("/keys", web::post().to(add_key))
        .route("/keys/{id}/{action}", web::post().to(change_key))
        .route("/usage", web::get().to(super::usage::usage))
        .default_service(web::to(not_found))
        .wrap(from_fn(admin_only))
}

/// Why a call is not answered: what `{"error": {"message", "code", "field"?}}` says.
pub(super) struct Refusal {
    status: StatusCode,
    code: &'static str,
    message: String,
    field: Option<String>,
}

impl Refusal {
    fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Refusal {
        Refusal {
            status,
            code,
            message: message.into(),
            field: None,
        }
    }

    /// A problem with one field of what was sent: 400 naming it.
    pub(super) fn field(field: &str, message: impl std::fmt::Display) -> Refusal {
        Refusal {
            status: StatusCode::BAD_REQUEST,
            code: "invalid_field",
            message: format!("{field}: {message}"),
            field: Some(field.to_owned()),
        }
    }

    pub(super) fn answer(&self) -> HttpResponse {
        let mut error = json!({"message": self.message, "code": self.code});
        if let Some(field) = &self.field {
            error["field"] = json!(field);
        }
        HttpResponse::build(self.status).json(json!({ "error": error }))
    }
}

/// An API error, answered at once.
fn refuse(status: StatusCode, code: &'static str, message: impl Into<String>) -> HttpResponse {
    Refusal::new(status, code, message).answer()
}

/// Admits admin keys only, then checks that a call that changes something comes from
/// the console's page.
async fn admin_only(
    request: ServiceRequest,
    next: Next<impl MessageBody>,
) -> Result<ServiceResponse<EitherBody<impl MessageBody>>, actix_web::Error> {
    let refusal = match admin(&request) {
        Ok(policy) => {
            request.extensions_mut().insert(Admin(policy));
            same_site(&request).err()
        }
        Err(refusal) => Some(refusal),
    };
    match refusal.map(|refusal| refusal.answer()) {
        None => Ok(next.call(request).await?.map_into_left_body()),
        Some(answer) => {
            log::info!(
                "{} {} {} refused: {}",
                peer::client_of(&request),
                request.method(),
                request.path(),
                answer.status()
            );
            Ok(request.into_response(answer).map_into_right_body())
        }
    }
}

/// The caller's admin key, or the answer that refuses it.
fn admin(request: &ServiceRequest) -> Result<Arc<KeyPolicy>, Refusal> {
    let Some(store) = request.app_data::<web::Data<KeyStore>>() else {
        return Err(Refusal::new(
            StatusCode::FORBIDDEN,
            "admin_key_required",
            "the console needs an admin key",
        ));
    };
    let local = peer::is_local(request.peer_addr().map(|a| a.ip()), request.headers());
    let presented = crate::auth::presented_key(request.headers());
    match store.authenticate(presented, local) {
        Ok(Some(policy)) if policy.admin => Ok(policy),
        Ok(Some(policy)) => Err(Refusal::new(
            StatusCode::FORBIDDEN,
            "admin_key_required",
            format!(
                "{} is a user key (of {}): the console needs an admin key (auth.admin_keys, or \"admin\": true in the keys file)",
                policy.masked, policy.user
            ),
        )),
        // Served anonymously: the console still needs to know an admin is at the door.
        Ok(None) => Err(Refusal::new(
            StatusCode::FORBIDDEN,
            "admin_key_required",
            "the console needs an admin key, and this gateway has none: add one to auth.admin_keys, or `switchyard keys add NAME --admin`",
        )),
        Err(GatewayError::Unauthorized { missing: true }) => Err(Refusal::new(
            StatusCode::UNAUTHORIZED,
            "missing_key",
            "sign in with an admin key (sent as Authorization: Bearer)",
        )),
        Err(GatewayError::Unauthorized { missing: false }) => Err(Refusal::new(
            StatusCode::UNAUTHORIZED,
            "invalid_key",
            "this key is not known to the gateway",
        )),
        Err(other) => Err(Refusal::new(other.status(), "key_refused", other.to_string())),
    }
}

/// The second lock against cross-site requests, on every call but a read.
fn same_site(request: &ServiceRequest) -> Result<(), Refusal> {
    if matches!(*request.method(), Method::GET | Method::HEAD) {
        return Ok(());
    }
    let forbidden = |message: &str| Refusal::new(StatusCode::FORBIDDEN, "cross_site", message);
    let json = request
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .is_some_and(|v| v.trim().eq_ignore_ascii_case("application/json"));
    if !json {
        return Err(forbidden(
            "a change must be sent as Content-Type: application/json",
        ));
    }
    if request
        .headers()
        .get(CONSOLE_HEADER)
        .and_then(|v| v.to_str().ok())
        != Some("1")
    {
        return Err(forbidden(
            "a change must carry X-Switchyard-Console: 1 (it comes from the console's page)",
        ));
    }
    if let Some(origin) = request.headers().get(header::ORIGIN) {
        let host = request
            .headers()
            .get(header::HOST)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default();
        let origin = origin.to_str().unwrap_or_default();
        let ours = origin
            .strip_prefix("http://")
            .or_else(|| origin.strip_prefix("https://"))
            .is_some_and(|rest| !host.is_empty() && rest.eq_ignore_ascii_case(host));
        if !ours {
            return Err(forbidden(&format!(
                "a change must come from this gateway's own page, not from {origin}"
            )));
        }
    }
    Ok(())
}

async fn not_found(request: HttpRequest) -> HttpResponse {
    refuse(
        StatusCode::NOT_FOUND,
        "not_found",
        format!("no console route {} {}", request.method(), request.path()),
    )
}

fn admin_of(request: &HttpRequest) -> Option<Arc<KeyPolicy>> {
    request.extensions().get::<Admin>().map(|a| a.0.clone())
}

/// Who is signed in: what the page checks a key with before keeping it.
async fn session(request: HttpRequest) -> HttpResponse {
    match admin_of(&request) {
        Some(policy) => HttpResponse::Ok().json(json!({
            "user": &*policy.user,
            "key": policy.masked,
        })),
        None => refuse(StatusCode::FORBIDDEN, "admin_key_required", "not signed in"),
    }
}

/// Each backend's upstreams, load, last hour and the recent upstream failures.
async fn overview(
    router: web::Data<Router>,
    admission: Option<web::Data<Admission>>,
    usage: super::usage::Source,
) -> HttpResponse {
    let last_hour = usage.last_hour().await;
    let backends: Vec<Value> = router
        .health()
        .into_iter()
        .map(|mut backend| {
            let name = backend["name"].as_str().unwrap_or_default().to_owned();
            let upstream_in_flight: u64 = backend["upstreams"]
                .as_array()
                .map(|list| list.iter().filter_map(|u| u["in_flight"].as_u64()).sum())
                .unwrap_or(0);
            let load = admission.as_ref().and_then(|a| a.load(&name));
            match load {
                Some((running, waiting, limit)) => {
                    backend["in_flight"] = json!(running);
                    backend["queued"] = json!(waiting);
                    backend["max_concurrent"] = json!(limit);
                }
                None => {
                    backend["in_flight"] = json!(upstream_in_flight);
                    backend["queued"] = json!(0);
                }
            }
            if let Some(hour) = &last_hour {
                let totals = hour.get(&name).cloned().unwrap_or_default();
                backend["last_hour"] = json!({"requests": totals.0, "errors": totals.1});
            }
            backend
        })
        .collect();
    HttpResponse::Ok().json(json!({
        "backends": backends,
        "recent_errors": usage.recent_errors(),
        "ledger": last_hour.is_some(),
    }))
}

/// One key as the console lists it: never the key itself.
#[derive(Serialize)]
struct Listed {
    id: String,
    key: String,
    user: String,
    models: Vec<String>,
    rpm: Option<u64>,
    tpm: Option<u64>,
    max_concurrent: Option<u64>,
    tokens_per_day: Option<u64>,
    expires: Option<String>,
    expired: bool,
    disabled: bool,
    admin: bool,
    note: Option<String>,
    tokens_today: Option<u64>,
}

fn keys_file(config: &Config) -> Result<PathBuf, Refusal> {
    config.keys_file.clone().ok_or_else(|| {
        Refusal::new(
            StatusCode::CONFLICT,
            "no_keys_file",
            "this gateway has no auth.keys_file: add [auth] keys_file = \"config/keys.json\" to its config to manage keys here",
        )
    })
}

/// The keys file's keys, masked, with each one's tokens today.
async fn list_keys(config: web::Data<Config>, usage: super::usage::Source) -> HttpResponse {
    let Some(path) = config.keys_file.clone() else {
        return HttpResponse::Ok().json(json!({"keys_file": null, "keys": []}));
    };
    let read = web::block(move || keys::file::load(&path)).await;
    let entries = match read {
        Ok(Ok(entries)) => entries,
        Ok(Err(problem)) => {
            return refuse(
                StatusCode::INTERNAL_SERVER_ERROR,
                "keys_file",
                problem.to_string(),
            )
        }
        Err(e) => return refuse(StatusCode::INTERNAL_SERVER_ERROR, "internal", e.to_string()),
    };
    let today = usage.tokens_today().await;
    let now = jiff::Timestamp::now();
    let listed: Vec<Listed> = entries
        .iter()
        .map(|(key, entry)| {
            let id = keys::key_id(key);
            Listed {
                tokens_today: today
                    .as_ref()
                    .map(|t| t.get(id.as_str()).copied().unwrap_or(0)),
                key: keys::mask(key),
                id,
                user: entry.user.clone(),
                models: entry.models.clone(),
                rpm: entry.rpm,
                tpm: entry.tpm,
                max_concurrent: entry.max_concurrent,
                tokens_per_day: entry.tokens_per_day,
                expired: entry
                    .expires
                    .as_deref()
                    .and_then(|t| keys::parse_time(t).ok())
                    .is_some_and(|t| t <= now),
                expires: entry.expires.clone(),
                disabled: entry.disabled,
                admin: entry.admin,
                note: entry.note.clone(),
            }
        })
        .collect();
    HttpResponse::Ok().json(json!({
        "keys_file": config.keys_file.as_ref().map(|p| p.display().to_string()),
        "keys": listed,
    }))
}

/// What the page sends to add a key; every field but `user` may be left out.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct AddBody {
    user: String,
    #[serde(default)]
    models: Vec<String>,
    rpm: Option<u64>,
    tpm: Option<u64>,
    max_concurrent: Option<u64>,
    tokens_per_day: Option<u64>,
    expires: Option<String>,
    note: Option<String>,
    #[serde(default)]
    admin: bool,
}

/// Reads a JSON body, naming the field at fault when a value has the wrong type (a
/// negative limit, text for a number).
fn read_body<T: serde::de::DeserializeOwned>(body: &[u8]) -> Result<T, Refusal> {
    let mut reader = serde_json::Deserializer::from_slice(body);
    serde_path_to_error::deserialize(&mut reader).map_err(|e| {
        let field = e.path().to_string();
        let field = field
            .split(['[', '.'])
            .next()
            .unwrap_or_default()
            .to_owned();
        if field.is_empty() || field == "?" {
            Refusal::new(
                StatusCode::BAD_REQUEST,
                "invalid_body",
                format!("the body is not the JSON object expected: {}", e.inner()),
            )
        } else {
            Refusal::field(&field, e.inner())
        }
    })
}

/// The field a key-file check names (`…: models: "a[": …`), for the page to point at.
fn field_of(message: &str) -> Option<&'static str> {
    [
        "models",
        "expires",
        "max_concurrent",
        "user",
        "tokens_per_day",
        "rpm",
        "tpm",
        "note",
    ]
    .into_iter()
    .find(|field| message.contains(&format!("{field}:")) || message.contains(&format!("{field} ")))
}

/// Adds a key through the same function as `switchyard keys add`; the new key comes
/// back this once.
async fn add_key(
    config: web::Data<Config>,
    keys: web::Data<KeyStore>,
    body: web::Bytes,
) -> HttpResponse {
    let path = match keys_file(&config) {
        Ok(path) => path,
        Err(refusal) => return refusal.answer(),
    };
    let body: AddBody = match read_body(&body) {
        Ok(body) => body,
        Err(refusal) => return refusal.answer(),
    };
    let empty_to_none = |text: Option<String>| text.filter(|t| !t.trim().is_empty());
    let new = NewKey {
        user: body.user.trim().to_owned(),
        models: body
            .models
            .into_iter()
            .map(|m| m.trim().to_owned())
            .filter(|m| !m.is_empty())
            .collect(),
        rpm: body.rpm,
        tpm: body.tpm,
        max_concurrent: body.max_concurrent,
        tokens_per_day: body.tokens_per_day,
        expires: empty_to_none(body.expires),
        note: empty_to_none(body.note),
        admin: body.admin,
        key: None,
    };
    let user = new.user.clone();
    let added = web::block(move || cli::add(&path, new)).await;
    match added {
        Ok(Ok(added)) => {
            keys.reload_now();
            log::info!("console: added key {} for {user}", keys::mask(&added.key));
            HttpResponse::Created().json(json!({
                "id": keys::key_id(&added.key),
                "key": added.key,
                "masked": keys::mask(&added.key),
                "user": user,
            }))
        }
        Ok(Err(AddError::Expires(problem))) => Refusal::field("expires", problem).answer(),
        Ok(Err(AddError::Other(problem))) => {
            let message = problem.to_string();
            match field_of(&message) {
                Some(field) => HttpResponse::BadRequest().json(json!({"error": {
                    "message": message, "code": "invalid_field", "field": field,
                }})),
                None => refuse(StatusCode::BAD_REQUEST, "invalid_key", message),
            }
        }
        Err(e) => refuse(StatusCode::INTERNAL_SERVER_ERROR, "internal", e.to_string()),
    }
}

/// Disables, enables or removes the key with the short digest `id`, through the same
/// functions as `switchyard keys disable|enable|remove`.
async fn change_key(
    config: web::Data<Config>,
    keys: web::Data<KeyStore>,
    path_parts: web::Path<(String, String)>,
) -> HttpResponse {
    let path = match keys_file(&config) {
        Ok(path) => path,
        Err(refusal) => return refusal.answer(),
    };
    let (id, action) = path_parts.into_inner();
    let action = match action.as_str() {
        "disable" | "enable" | "remove" => action,
        other => {
            return refuse(
                StatusCode::NOT_FOUND,
                "not_found",
                format!("no action '{other}': disable, enable or remove"),
            )
        }
    };
    let done = {
        let action = action.clone();
        web::block(move || match action.as_str() {
            "disable" => cli::set_disabled(&path, Select::KeyId(&id), true),
            "enable" => cli::set_disabled(&path, Select::KeyId(&id), false),
            _ => cli::remove(&path, Select::KeyId(&id)),
        })
        .await
    };
    match done {
        Ok(Ok(touched)) => {
            keys.reload_now();
            log::info!("console: {action}d {}", touched.join(", "));
            HttpResponse::Ok().json(json!({"done": action, "keys": touched}))
        }
        Ok(Err(problem)) => refuse(StatusCode::NOT_FOUND, "no_such_key", problem.to_string()),
        Err(e) => refuse(StatusCode::INTERNAL_SERVER_ERROR, "internal", e.to_string()),
    }
}

//! One error type for everything a request can run into, and the one place that decides
//! its HTTP status and whether another target is worth trying. How an error is written
//! is each dialect's job (`crate::dialect`).
//!
//! Where an error came from picks its status, as a proxy must: the client's fault is a
//! 4xx, an upstream that cannot be reached is 502, one that is too slow is 504, and an
//! upstream's own error status is passed on with its message translated.

use actix_web::http::StatusCode;

/// Everything that can go wrong with a request.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum GatewayError {
    /// The request is malformed or asks for something impossible.
    #[error("{message}")]
    BadRequest {
        message: String,
        /// The request field at fault, when one is.
        param: Option<String>,
    },
    /// No key, or a key that is not in the keys file.
    #[error("{}", if *.missing { "missing API key: send it as `X-API-Key: KEY` or `Authorization: Bearer KEY`" } else { "Incorrect API key provided" })]
    Unauthorized { missing: bool },
    /// A known key that cannot be used now (disabled, expired), or a relayed request
    /// with no key where only local callers may go without one.
    #[error("{message}")]
    KeyRefused { message: String },
    /// The caller may not do this: a model outside its key's list, or operational
    /// detail it is not admitted to. `code` says which, for OpenAI clients.
    #[error("{message}")]
    Forbidden { message: String, code: &'static str },
    /// The key is over one of its limits; `retry_after_secs` says when it fits again.
    #[error("{message}")]
    RateLimited {
        message: String,
        retry_after_secs: u64,
        /// Which of the key's limits refused: its tokens (`tpm`) or its requests.
        tokens: bool,
    },
    /// The model name routes to no backend.
    #[error("model '{0}' not found: no backend serves it (name it as BACKEND/MODEL, or configure routing.default_backend)")]
    ModelNotFound(String),
    /// No such route.
    #[error("{method} {path} is not a route of this server")]
    RouteNotFound { method: String, path: String },
    /// The body is over the configured limit.
    #[error("request body is larger than the limit of {limit} bytes")]
    PayloadTooLarge { limit: usize },
    /// The upstream could not be reached or dropped the connection.
    #[error("backend '{backend}' is unreachable: {detail}")]
    UpstreamUnreachable { backend: String, detail: String },
    /// The upstream did not connect or answer in time.
    #[error("backend '{backend}' timed out: {detail}")]
    UpstreamTimeout { backend: String, detail: String },
    /// The upstream answered with an error status or an in-stream error.
    #[error("{message}")]
    UpstreamStatus {
        backend: String,
        status: u16,
        message: String,
        /// OpenAI-style `type`, when the upstream gave one.
        kind: Option<String>,
        /// OpenAI-style string `code`, when the upstream gave one.
        code: Option<String>,
        /// The upstream's `Retry-After`, passed on so clients back off as it asked.
        retry_after: Option<String>,
    },
    /// The client hung up before the answer started; nobody reads this.
    #[error("the client closed the connection before the answer started")]
    ClientGone,
    /// The upstream answered with something that is not its protocol, or stopped early.
    #[error("backend '{backend}' sent an invalid response: {detail}")]
    UpstreamProtocol { backend: String, detail: String },
}

impl GatewayError {
    /// A 400 naming the problem.
    pub fn bad_request(message: impl Into<String>) -> GatewayError {
        GatewayError::BadRequest {
            message: message.into(),
            param: None,
        }
    }

    /// A 400 naming the problem and the field at fault.
    pub fn bad_field(param: &str, message: impl Into<String>) -> GatewayError {
        GatewayError::BadRequest {
            message: message.into(),
            param: Some(param.to_owned()),
        }
    }

    /// Whether a fallback target should be tried after this error: the upstream could
    /// not be reached, was too slow, refused for load (429) or failed (5xx).
    pub fn worth_another_target(&self) -> bool {
        match self {
            GatewayError::UpstreamUnreachable { .. }
            | GatewayError::UpstreamTimeout { .. }
            | GatewayError::UpstreamProtocol { .. } => true,
            GatewayError::UpstreamStatus { status, .. } => *status == 429 || *status >= 500,
            _ => false,
        }
    }

    /// The HTTP status this error is answered with.
    pub fn status(&self) -> StatusCode {
        match self {
            GatewayError::BadRequest { .. } => StatusCode::BAD_REQUEST,
            GatewayError::Unauthorized { .. } | GatewayError::KeyRefused { .. } => {
                StatusCode::UNAUTHORIZED
            }
            GatewayError::Forbidden { .. } => StatusCode::FORBIDDEN,
            GatewayError::RateLimited { .. } => StatusCode::TOO_MANY_REQUESTS,
            GatewayError::ModelNotFound(_) | GatewayError::RouteNotFound { .. } => {
                StatusCode::NOT_FOUND
            }
            GatewayError::PayloadTooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            GatewayError::UpstreamUnreachable { .. } | GatewayError::UpstreamProtocol { .. } => {
                StatusCode::BAD_GATEWAY
            }
            GatewayError::UpstreamTimeout { .. } => StatusCode::GATEWAY_TIMEOUT,
            // nginx's "client closed request": for logs and metrics only.
            GatewayError::ClientGone => {
                StatusCode::from_u16(499).unwrap_or(StatusCode::BAD_REQUEST)
            }
            GatewayError::UpstreamStatus { status, .. } => {
                StatusCode::from_u16(*status).unwrap_or(StatusCode::BAD_GATEWAY)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_follow_the_origin_of_the_error() {
        let unreachable = GatewayError::UpstreamUnreachable {
            backend: "b".into(),
            detail: "refused".into(),
        };
        assert_eq!(unreachable.status(), StatusCode::BAD_GATEWAY);
        assert_eq!(
            GatewayError::ModelNotFound("x".into()).status(),
            StatusCode::NOT_FOUND
        );
        let upstream = GatewayError::UpstreamStatus {
            backend: "b".into(),
            status: 429,
            message: "slow down".into(),
            kind: None,
            code: None,
            retry_after: None,
        };
        assert_eq!(upstream.status(), StatusCode::TOO_MANY_REQUESTS);
        assert!(upstream.worth_another_target());
    }
}

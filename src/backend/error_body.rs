//! Reading what an upstream says went wrong: the body of an error status, or an
//! `"error"` inside a stream, in either API's shape.
//!
//! OpenAI-compatible servers write `{"error": {"message", "type", "code"}}`; Ollama
//! writes `{"error": "text"}`, and when Ollama runs llama-server underneath, that text
//! may itself be llama-server's JSON error. The fields are read borrowed from the bytes
//! that carried them; only the message, type and code that go into
//! [`GatewayError::UpstreamStatus`] are copied. How the error is shown to the client is
//! the dialect's business, whether it is worth another target `error.rs`'s.

use std::borrow::Cow;

use serde::de::IgnoredAny;
use serde::Deserialize;

use crate::error::GatewayError;

/// A body that may hold an `"error"` member.
#[derive(Deserialize)]
struct ErrorBody<'a> {
    #[serde(borrow)]
    error: Option<ErrorField<'a>>,
}

/// An `"error"` member, as either API writes it.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum ErrorField<'a> {
    /// Ollama's message.
    Text(#[serde(borrow)] Cow<'a, str>),
    /// OpenAI's object.
    Object(#[serde(borrow)] ErrorObject<'a>),
    /// A shape neither API writes; it still says that something failed.
    Other(IgnoredAny),
}

/// OpenAI's error object. Each member is read leniently: a member of an unexpected
/// type is as good as absent, so that the rest of the object is still understood.
#[derive(Debug, Deserialize)]
pub struct ErrorObject<'a> {
    #[serde(borrow)]
    message: Option<Member<'a>>,
    #[serde(borrow, rename = "type")]
    kind: Option<Member<'a>>,
    #[serde(borrow)]
    code: Option<Member<'a>>,
}

/// One member of an error object: text, a number (llama-server's HTTP status in
/// `code`), or something else.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum Member<'a> {
    Text(#[serde(borrow)] Cow<'a, str>),
    Number(u64),
    Other(IgnoredAny),
}

impl Member<'_> {
    fn text<'m>(member: &'m Option<Member<'_>>) -> Option<&'m str> {
        match member {
            Some(Member::Text(text)) => Some(text),
            _ => None,
        }
    }
}

/// What an upstream said: its message, and OpenAI's `type` and string `code` when it
/// gave them.
#[derive(Debug, Clone, PartialEq)]
pub struct UpstreamMessage {
    pub message: String,
    pub kind: Option<String>,
    pub code: Option<String>,
}

impl ErrorField<'_> {
    /// What the member says; `None` for a shape neither API writes.
    pub fn describe(&self) -> Option<UpstreamMessage> {
        match self {
            ErrorField::Text(text) => {
                // llama-server's JSON error, passed on as Ollama's message text.
                if let Some(inner) = error_member(text.as_bytes()) {
                    return inner.describe();
                }
                Some(UpstreamMessage {
                    message: text.clone().into_owned(),
                    kind: None,
                    code: None,
                })
            }
            ErrorField::Object(object) => {
                let kind = Member::text(&object.kind).map(str::to_owned);
                // llama-server puts the HTTP status in an integer `code`; only OpenAI's
                // string codes mean anything to OpenAI clients.
                let code = match Member::text(&object.code) {
                    Some(code) => Some(code.to_owned()),
                    None if kind.as_deref() == Some("exceed_context_size_error") => {
                        Some("context_length_exceeded".to_owned())
                    }
                    None => None,
                };
                Some(UpstreamMessage {
                    message: Member::text(&object.message)
                        .unwrap_or("upstream error")
                        .to_owned(),
                    kind,
                    code,
                })
            }
            ErrorField::Other(_) => None,
        }
    }

    /// The error status an object's integer `code` names (llama-server's), if any.
    fn status(&self) -> Option<u16> {
        match self {
            ErrorField::Object(ErrorObject {
                code: Some(Member::Number(code)),
                ..
            }) if (400..600).contains(code) => u16::try_from(*code).ok(),
            _ => None,
        }
    }

    /// The error this member reports inside an answer already under way: the status
    /// it names where it names one, 502 otherwise.
    pub fn into_error(self, backend: &str) -> GatewayError {
        let status = self.status().unwrap_or(502);
        let UpstreamMessage {
            message,
            kind,
            code,
        } = self.describe().unwrap_or_else(|| UpstreamMessage {
            message: "upstream error".to_owned(),
            kind: None,
            code: None,
        });
        GatewayError::UpstreamStatus {
            backend: backend.to_owned(),
            status,
            message,
            kind,
            code,
            retry_after: None,
        }
    }
}

/// Reads an error body of either API; `None` when it is not a JSON object with an
/// `"error"` member either API would write.
pub fn parse_body(body: &[u8]) -> Option<UpstreamMessage> {
    error_member(body)?.describe()
}

/// The `"error"` member of a JSON object, borrowed from it.
fn error_member(body: &[u8]) -> Option<ErrorField<'_>> {
    // Only an object has members; serde would also read a struct from an array.
    if body.trim_ascii_start().first() != Some(&b'{') {
        return None;
    }
    let body: ErrorBody<'_> = serde_json::from_slice(body).ok()?;
    body.error
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parsed(body: &str) -> Option<(String, Option<String>, Option<String>)> {
        parse_body(body.as_bytes()).map(|m| (m.message, m.kind, m.code))
    }

    #[test]
    fn llama_server_error_inside_ollama_string_is_unwrapped() {
        let body = br#"{"error":"{\"error\":{\"code\":400,\"message\":\"too long\",\"type\":\"exceed_context_size_error\"}}"}"#;
        let message = parse_body(body).unwrap();
        assert_eq!(message.message, "too long");
        assert_eq!(message.kind.as_deref(), Some("exceed_context_size_error"));
        assert_eq!(message.code.as_deref(), Some("context_length_exceeded"));
    }

    #[test]
    fn both_shapes_and_odd_members_are_read() {
        assert_eq!(
            parsed(r#"{"error":"model not found"}"#),
            Some(("model not found".into(), None, None))
        );
        assert_eq!(
            parsed(
                r#"{"error":{"message":"slow down","type":"rate_limit_error","code":"rate_limited"}}"#
            ),
            Some((
                "slow down".into(),
                Some("rate_limit_error".into()),
                Some("rate_limited".into())
            ))
        );
        assert_eq!(
            parsed(r#"{"error":{"message":7,"type":["x"]}}"#),
            Some(("upstream error".into(), None, None))
        );
        assert_eq!(
            parsed(r#"{"error":"a \"quoted\" word"}"#),
            Some(("a \"quoted\" word".into(), None, None))
        );
        assert_eq!(parsed(r#"{"error":3}"#), None);
        assert_eq!(parsed(r#"{"detail":"x"}"#), None);
        assert_eq!(parsed(r#"["oops"]"#), None);
        assert_eq!(parsed("not json"), None);
    }

    #[test]
    fn an_in_stream_error_keeps_a_status_it_names() {
        let field: ErrorField<'_> =
            serde_json::from_str(r#"{"code":503,"message":"loading"}"#).unwrap();
        match field.into_error("b") {
            GatewayError::UpstreamStatus {
                status, message, ..
            } => assert_eq!((status, message.as_str()), (503, "loading")),
            other => panic!("{other:?}"),
        }
        let field: ErrorField<'_> = serde_json::from_str("42").unwrap();
        assert!(matches!(
            field.into_error("b"),
            GatewayError::UpstreamStatus { status: 502, .. }
        ));
    }
}

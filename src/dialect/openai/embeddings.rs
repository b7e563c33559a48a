//! `/v1/embeddings` in OpenAI's shape. The official SDKs ask for base64 by default and
//! decode it, so `encoding_format` is honoured whatever the backend returned.

use base64::Engine;
use serde::Deserialize;
use serde_json::{json, Value};

use crate::embed::{input_texts, EmbedRequest, Embeddings};
use crate::error::GatewayError;

/// A parsed `/v1/embeddings` request.
#[derive(Debug)]
pub struct ParsedEmbeddings {
    /// The model as the client named it.
    pub model: String,
    pub base64: bool,
    pub request: EmbedRequest,
}

#[derive(Deserialize)]
struct WireRequest {
    model: String,
    input: Value,
    encoding_format: Option<String>,
    dimensions: Option<u32>,
}

/// Parses the request: `input` is a string or an array of strings.
pub fn parse(body: &[u8]) -> Result<ParsedEmbeddings, GatewayError> {
    let wire: WireRequest = crate::dialect::parse_body(body)?;
    if wire.input.as_array().is_some_and(Vec::is_empty) {
        return Err(GatewayError::bad_field(
            "input",
            "input must not be an empty array",
        ));
    }
    let inputs = input_texts(wire.input).ok_or_else(|| {
        GatewayError::bad_field(
            "input",
            "input must be a string or an array of strings; token arrays are not supported",
        )
    })?;
    let base64 = match wire
        .encoding_format
        .as_deref()
        .map(str::to_ascii_lowercase)
        .as_deref()
    {
        None | Some("float") => false,
        Some("base64") => true,
        Some(other) => {
            return Err(GatewayError::bad_field(
                "encoding_format",
                format!("encoding_format \"{other}\" is not \"float\" or \"base64\""),
            ))
        }
    };
    Ok(ParsedEmbeddings {
        model: wire.model,
        base64,
        request: EmbedRequest {
            inputs,
            dimensions: wire.dimensions,
            ollama_extras: Default::default(),
        },
    })
}

/// Renders the vectors, as floats or as base64 of little-endian float32 bytes.
pub fn render(model: &str, embeddings: &Embeddings, base64: bool) -> Value {
    let data: Vec<Value> = embeddings
        .vectors
        .iter()
        .enumerate()
        .map(|(index, vector)| {
            let embedding = if base64 {
                let bytes: Vec<u8> = vector.iter().flat_map(|x| x.to_le_bytes()).collect();
                Value::from(base64::engine::general_purpose::STANDARD.encode(bytes))
            } else {
                Value::from(vector.clone())
            };
            json!({"object": "embedding", "index": index, "embedding": embedding})
        })
        .collect();
    json!({
        "object": "list",
        "data": data,
        "model": model,
        "usage": {"prompt_tokens": embeddings.prompt_tokens, "total_tokens": embeddings.prompt_tokens},
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_is_little_endian_float32() {
        let embeddings = Embeddings {
            vectors: vec![vec![1.0, -0.5]],
            prompt_tokens: 1,
        };
        let rendered = render("m", &embeddings, true);
        let text = rendered["data"][0]["embedding"].as_str().unwrap();
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(text)
            .unwrap();
        assert_eq!(
            bytes,
            [1.0f32.to_le_bytes(), (-0.5f32).to_le_bytes()].concat()
        );
    }

    #[test]
    fn token_arrays_and_bad_formats_are_refused() {
        assert!(parse(br#"{"model":"m","input":[[1,2]]}"#).is_err());
        assert!(parse(br#"{"model":"m","input":[]}"#).is_err());
        assert!(parse(br#"{"model":"m","input":"x","encoding_format":"int8"}"#).is_err());
        assert!(
            parse(br#"{"model":"m","input":"x","encoding_format":"BASE64"}"#)
                .unwrap()
                .base64
        );
    }
}

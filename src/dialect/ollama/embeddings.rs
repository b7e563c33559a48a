//! `/api/embed` and the legacy `/api/embeddings` in Ollama's shapes.

use serde::Deserialize;
use serde_json::{json, Map, Value};

use crate::embed::{input_texts, EmbedRequest, Embeddings};
use crate::error::GatewayError;

/// A parsed embedding request; `request.inputs` empty means "only load the model".
#[derive(Debug)]
pub struct ParsedEmbed {
    /// The model as the client named it.
    pub model: String,
    pub request: EmbedRequest,
}

#[derive(Deserialize)]
struct WireEmbed {
    model: String,
    #[serde(default)]
    input: Value,
    dimensions: Option<u32>,
    truncate: Option<bool>,
    options: Option<Value>,
    keep_alive: Option<Value>,
}

#[derive(Deserialize)]
struct WireLegacy {
    model: String,
    #[serde(default)]
    prompt: String,
    options: Option<Value>,
    keep_alive: Option<Value>,
}

fn extras(pairs: [(&str, Option<Value>); 3]) -> Map<String, Value> {
    pairs
        .into_iter()
        .filter_map(|(key, value)| Some((key.to_owned(), value?)))
        .collect()
}

/// Parses `/api/embed`: `input` is a string or an array of strings.
pub fn parse_embed(body: &[u8]) -> Result<ParsedEmbed, GatewayError> {
    let wire: WireEmbed = crate::dialect::parse_body(body)?;
    let inputs = match wire.input {
        // Nothing to embed: Ollama only loads the model.
        Value::Null => Vec::new(),
        Value::String(text) if text.is_empty() => Vec::new(),
        input => input_texts(input).ok_or_else(|| {
            GatewayError::bad_field(
                "input",
                "invalid input type: input must be a string or an array of strings",
            )
        })?,
    };
    Ok(ParsedEmbed {
        model: wire.model,
        request: EmbedRequest {
            inputs,
            dimensions: wire.dimensions,
            ollama_extras: extras([
                ("truncate", wire.truncate.map(Value::Bool)),
                ("options", wire.options),
                ("keep_alive", wire.keep_alive),
            ]),
        },
    })
}

/// Parses the legacy `/api/embeddings`: one `prompt`.
pub fn parse_legacy(body: &[u8]) -> Result<ParsedEmbed, GatewayError> {
    let wire: WireLegacy = crate::dialect::parse_body(body)?;
    Ok(ParsedEmbed {
        model: wire.model,
        request: EmbedRequest {
            inputs: if wire.prompt.is_empty() {
                Vec::new()
            } else {
                vec![wire.prompt]
            },
            dimensions: None,
            ollama_extras: extras([
                ("options", wire.options),
                ("keep_alive", wire.keep_alive),
                ("truncate", None),
            ]),
        },
    })
}

/// Renders `/api/embed`'s answer.
pub fn render_embed(model: &str, embeddings: &Embeddings, total_ns: u64) -> Value {
    json!({
        "model": model,
        "embeddings": embeddings.vectors,
        "total_duration": total_ns,
        "load_duration": 0,
        "prompt_eval_count": embeddings.prompt_tokens,
    })
}

/// Renders the legacy answer: one vector, no metrics.
pub fn render_legacy(embeddings: &Embeddings) -> Value {
    let vector = embeddings.vectors.first().cloned().unwrap_or_default();
    json!({ "embedding": vector })
}

//! The canonical embeddings request and answer, between the dialects' embedding routes
//! (`/v1/embeddings`, `/api/embed`, `/api/embeddings`) and the backends.

use serde_json::{Map, Value};

/// Texts to embed, whichever route they came in by. Like a chat request it names no
/// model: each backend is handed the upstream's name beside it.
#[derive(Debug, Clone, PartialEq)]
pub struct EmbedRequest {
    pub inputs: Vec<String>,
    /// Truncate vectors to this many dimensions, where the upstream supports it.
    pub dimensions: Option<u32>,
    /// Ollama's `truncate`, `keep_alive` and `options`, passed to Ollama backends only.
    pub ollama_extras: Map<String, Value>,
}

/// One vector per input, in input order.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Embeddings {
    pub vectors: Vec<Vec<f32>>,
    pub prompt_tokens: u64,
}

/// The texts of an `input` that is a string or an array of strings; `None` for any other
/// shape (token arrays included). Each dialect adds its own rule for empty input.
pub fn input_texts(input: Value) -> Option<Vec<String>> {
    match input {
        Value::String(text) => Some(vec![text]),
        Value::Array(items) => items
            .into_iter()
            .map(|item| match item {
                Value::String(text) => Some(text),
                _ => None,
            })
            .collect(),
        _ => None,
    }
}

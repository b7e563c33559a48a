//! The canonical embeddings request and answer, between the dialects' embedding routes
//! (`/v1/embeddings`, `/api/embed`, `/api/embeddings`) and the backends.

use serde_json::{Map, Value};

/// Texts to embed, whichever route they came in by.
#[derive(Debug, Clone, PartialEq)]
pub struct EmbedRequest {
    /// The model as the upstream knows it (routing has removed the prefix).
    pub model: String,
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

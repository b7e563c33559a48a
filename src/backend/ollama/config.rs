//! How an `ollama` backend is configured: a native Ollama server, reached at its root
//! URL (without `/api`).

use serde::Deserialize;

use super::super::upstream_config::{with_path, UpstreamConfig, UpstreamFields};

/// An `ollama` backend as written: the upstream settings every kind with a server
/// takes; a setting of its own would join them here.
#[derive(Debug, Deserialize)]
#[serde(transparent)]
pub struct OllamaConfig {
    #[serde(deserialize_with = "with_path")]
    upstream: UpstreamFields,
}

impl OllamaConfig {
    /// Checks it once, at start; the error names the field at fault.
    pub fn check(self, key: &str) -> Result<UpstreamConfig, String> {
        self.upstream.check(key, "ollama")
    }
}

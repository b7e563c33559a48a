//! How an `openai` backend is configured: any OpenAI-compatible server (OpenAI itself,
//! llama-server, vLLM, Ollama's `/v1`), reached at its `/v1` base URL.

use serde::Deserialize;

use super::super::upstream_config::{with_path, UpstreamConfig, UpstreamFields};

/// An `openai` backend as written: the upstream settings every kind with a server
/// takes; a setting of its own would join them here.
#[derive(Debug, Deserialize)]
#[serde(transparent)]
pub struct OpenAiConfig {
    #[serde(deserialize_with = "with_path")]
    upstream: UpstreamFields,
}

impl OpenAiConfig {
    /// Checks it once, at start; the error names the field at fault.
    pub fn check(self, key: &str) -> Result<UpstreamConfig, String> {
        self.upstream.check(key, "openai")
    }
}

//! How an `openai` backend is configured: any OpenAI-compatible server (OpenAI itself,
//! llama-server, vLLM, Ollama's `/v1`), reached at its `/v1` base URL, or named by a
//! provider preset (`preset = "groq"`) that fills the URL and the key's variable.

use serde::Deserialize;

use super::super::upstream_config::{with_path, UpstreamConfig, UpstreamFields};
use super::presets;

/// An `openai` backend as written: the upstream settings every kind with a server
/// takes, of which `preset` is only read here.
#[derive(Debug, Deserialize)]
#[serde(transparent)]
pub struct OpenAiConfig {
    #[serde(deserialize_with = "with_path")]
    upstream: UpstreamFields,
}

impl OpenAiConfig {
    /// Checks it once, at start; the error names the field at fault. A preset fills
    /// what is not written beside it.
    pub fn check(mut self, key: &str) -> Result<UpstreamConfig, String> {
        let Some(name) = self.upstream.take_preset() else {
            return self.upstream.check(key, "openai");
        };
        let Some(preset) = presets::find(&name) else {
            return Err(format!(
                "{key}.preset \"{name}\" is not a known provider; write one of {} (or give url instead)",
                presets::names()
            ));
        };
        self.upstream.fill_from_preset(preset);
        let mut config = self.upstream.check(key, "openai")?;
        config.preset = Some(preset.name);
        Ok(config)
    }
}

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

#[cfg(test)]
mod tests {
    use crate::config::Config;

    fn upstream(toml: &str) -> Result<crate::backend::UpstreamConfig, String> {
        let config = Config::from_toml(toml).map_err(|e| e.0)?;
        Ok(config.backends[0].kind.upstream().unwrap().clone())
    }

    #[test]
    fn a_preset_fills_what_is_not_written_beside_it() {
        std::env::set_var("SWITCHYARD_TEST_PRESET_MISTRAL", "sk-m");
        std::env::set_var("MISTRAL_API_KEY", "sk-default");
        let filled =
            upstream("[[backends]]\nname = \"m\"\nkind = \"openai\"\npreset = \"mistral\"\n")
                .unwrap();
        assert_eq!(filled.base_urls[0].as_str(), "https://api.mistral.ai/v1");
        assert_eq!(filled.keys[0].env, "MISTRAL_API_KEY");
        assert_eq!(filled.preset, Some("mistral"));
        let overridden = upstream("[[backends]]\nname = \"m\"\nkind = \"openai\"\npreset = \"mistral\"\nurls = [\"http://a/v1\", \"http://b/v1\"]\napi_key_env = \"SWITCHYARD_TEST_PRESET_MISTRAL\"\n").unwrap();
        assert_eq!(overridden.base_urls.len(), 2);
        assert_eq!(overridden.keys.len(), 1);
        assert_eq!(overridden.keys[0].env, "SWITCHYARD_TEST_PRESET_MISTRAL");
        let local =
            upstream("[[backends]]\nname = \"v\"\nkind = \"openai\"\npreset = \"vllm\"\n").unwrap();
        assert_eq!(local.base_urls[0].as_str(), "http://127.0.0.1:8000/v1");
        assert!(local.keys.is_empty() && local.auth.is_none());
    }

    #[test]
    fn several_keys_are_read_in_order_and_each_problem_is_named() {
        std::env::set_var("SWITCHYARD_TEST_MANY_1", "sk-1");
        std::env::set_var("SWITCHYARD_TEST_MANY_2", "sk-2");
        let many = upstream("[[backends]]\nname = \"a\"\nkind = \"openai\"\nurl = \"http://h/v1\"\napi_key_envs = [\"SWITCHYARD_TEST_MANY_1\", \"SWITCHYARD_TEST_MANY_2\"]\n").unwrap();
        let envs: Vec<&str> = many.keys.iter().map(|key| key.env.as_str()).collect();
        assert_eq!(envs, ["SWITCHYARD_TEST_MANY_1", "SWITCHYARD_TEST_MANY_2"]);
        assert!(
            many.auth.as_ref() == many.keys.first(),
            "auth is the first key"
        );
        assert!(!format!("{many:?}").contains("sk-"), "{many:?}");
        let unset = upstream("[[backends]]\nname = \"a\"\nkind = \"openai\"\nurl = \"http://h/v1\"\napi_key_envs = [\"SWITCHYARD_TEST_MANY_1\", \"SWITCHYARD_TEST_SURELY_UNSET\"]\n").unwrap_err();
        assert!(unset.contains("backends[0].api_key_envs[1]"), "{unset}");
        let twice = upstream("[[backends]]\nname = \"a\"\nkind = \"openai\"\nurl = \"http://h/v1\"\napi_key_envs = [\"SWITCHYARD_TEST_MANY_1\", \"SWITCHYARD_TEST_MANY_1\"]\n").unwrap_err();
        assert!(twice.contains("backends[0].api_key_envs[1]"), "{twice}");
        let empty = upstream("[[backends]]\nname = \"a\"\nkind = \"openai\"\nurl = \"http://h/v1\"\napi_key_envs = []\n").unwrap_err();
        assert!(empty.contains("backends[0].api_key_envs"), "{empty}");
        let ollama =
            upstream("[[backends]]\nname = \"o\"\nkind = \"ollama\"\npreset = \"openai\"\n")
                .unwrap_err();
        assert!(ollama.contains("backends[0].preset"), "{ollama}");
    }
}

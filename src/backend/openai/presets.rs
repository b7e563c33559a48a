//! Known OpenAI-compatible providers by name, so that `preset = "groq"` is all a backend
//! needs: each preset fills the base URL and the variable its provider's documentation
//! tells users to keep the key in. Hosted services need a key; servers run on the same
//! machine (llama-server, vLLM, LM Studio) listen on their usual port and take none.
//!
//! A `url`, `urls`, `api_key_env` or `api_key_envs` written beside a preset wins over
//! what the preset fills; `docs/providers.md` lists this table for users.

/// One provider's usual settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Preset {
    /// What `preset = "..."` says.
    pub name: &'static str,
    /// The base URL the OpenAI paths (`/chat/completions`, `/models`) are joined to.
    pub url: &'static str,
    /// The variable the key is usually kept in; none for a local server.
    pub key_env: Option<&'static str>,
}

const fn hosted(name: &'static str, url: &'static str, key_env: &'static str) -> Preset {
    Preset {
        name,
        url,
        key_env: Some(key_env),
    }
}

const fn local(name: &'static str, url: &'static str) -> Preset {
    Preset {
        name,
        url,
        key_env: None,
    }
}

/// Every preset, in the order the docs and the error message list them.
pub const PRESETS: &[Preset] = &[
    hosted("openai", "https://api.openai.com/v1", "OPENAI_API_KEY"),
    hosted(
        "openrouter",
        "https://openrouter.ai/api/v1",
        "OPENROUTER_API_KEY",
    ),
    hosted("groq", "https://api.groq.com/openai/v1", "GROQ_API_KEY"),
    hosted(
        "deepseek",
        "https://api.deepseek.com/v1",
        "DEEPSEEK_API_KEY",
    ),
    hosted("mistral", "https://api.mistral.ai/v1", "MISTRAL_API_KEY"),
    hosted(
        "together",
        "https://api.together.xyz/v1",
        "TOGETHER_API_KEY",
    ),
    hosted(
        "fireworks",
        "https://api.fireworks.ai/inference/v1",
        "FIREWORKS_API_KEY",
    ),
    hosted("xai", "https://api.x.ai/v1", "XAI_API_KEY"),
    hosted(
        "gemini",
        "https://generativelanguage.googleapis.com/v1beta/openai",
        "GEMINI_API_KEY",
    ),
    hosted("cerebras", "https://api.cerebras.ai/v1", "CEREBRAS_API_KEY"),
    hosted(
        "perplexity",
        "https://api.perplexity.ai",
        "PERPLEXITY_API_KEY",
    ),
    local("llama-server", "http://127.0.0.1:8080/v1"),
    local("vllm", "http://127.0.0.1:8000/v1"),
    local("lmstudio", "http://127.0.0.1:1234/v1"),
];

/// The preset called `name`, if there is one.
pub fn find(name: &str) -> Option<&'static Preset> {
    PRESETS.iter().find(|preset| preset.name == name)
}

/// The presets' names, quoted and comma-separated, for the message that lists them.
pub fn names() -> String {
    PRESETS
        .iter()
        .map(|preset| format!("\"{}\"", preset.name))
        .collect::<Vec<_>>()
        .join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_preset_is_a_valid_url_with_a_unique_name() {
        for (index, preset) in PRESETS.iter().enumerate() {
            let url = url::Url::parse(preset.url).unwrap();
            assert!(matches!(url.scheme(), "http" | "https"), "{preset:?}");
            assert!(!preset.url.ends_with('/'), "{preset:?}");
            assert_eq!(
                url.scheme() == "https",
                preset.key_env.is_some(),
                "hosted presets need a key, local ones none: {preset:?}"
            );
            assert!(
                PRESETS[..index].iter().all(|p| p.name != preset.name),
                "{preset:?}"
            );
        }
        assert_eq!(find("groq").unwrap().key_env, Some("GROQ_API_KEY"));
        assert!(find("nope").is_none());
        assert!(names().contains("\"llama-server\""));
    }
}

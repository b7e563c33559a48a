//! How an `anthropic` backend is configured: Anthropic's API or any server speaking its
//! Messages API (llama-server's `/v1/messages`), reached at its `/v1` base URL. It takes
//! the upstream settings every kind with a server takes, its key travelling in
//! `x-api-key` unless `api_key_header` says otherwise, plus `default_max_tokens`: the
//! Messages API requires `max_tokens`, which OpenAI and Ollama clients often leave out.

use actix_web::http::header::{HeaderName, HeaderValue};
use serde::{Deserialize, Deserializer};
use serde_json::{Map, Value};

use super::super::upstream_config::{with_path, UpstreamConfig, UpstreamFields};

/// The `anthropic-version` every request carries: the one version of the Messages API.
pub const ANTHROPIC_VERSION: &str = "2023-06-01";

/// `max_tokens` for a request that names none, unless configured.
pub const DEFAULT_MAX_TOKENS: u64 = 4096;

/// An `anthropic` backend as written.
#[derive(Debug)]
pub struct AnthropicConfig {
    upstream: UpstreamFields,
    default_max_tokens: Option<u64>,
}

impl<'de> Deserialize<'de> for AnthropicConfig {
    /// The upstream settings refuse fields they do not know, so this kind's own field is
    /// taken out before they are read.
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        use serde::de::Error;
        let mut fields = Map::<String, Value>::deserialize(deserializer)?;
        let default_max_tokens = match fields.remove("default_max_tokens") {
            None => None,
            Some(Value::Number(number)) => Some(number.as_u64().ok_or_else(|| {
                D::Error::custom("default_max_tokens: must be a whole number of tokens")
            })?),
            // The config layers read numbers from the environment as text.
            Some(Value::String(text)) => Some(text.trim().parse().map_err(|_| {
                D::Error::custom("default_max_tokens: must be a whole number of tokens")
            })?),
            Some(_) => {
                return Err(D::Error::custom(
                    "default_max_tokens: must be a whole number of tokens",
                ))
            }
        };
        let upstream: UpstreamFields =
            with_path(Value::Object(fields)).map_err(|e| D::Error::custom(e.to_string()))?;
        Ok(AnthropicConfig {
            upstream,
            default_max_tokens,
        })
    }
}

/// A checked `anthropic` backend.
#[derive(Debug, Clone, PartialEq)]
pub struct AnthropicSettings {
    pub upstream: UpstreamConfig,
    pub default_max_tokens: u64,
}

impl AnthropicConfig {
    /// Checks it once, at start; the error names the field at fault.
    pub fn check(mut self, key: &str) -> Result<AnthropicSettings, String> {
        self.upstream.default_key_header("x-api-key");
        let mut upstream = self.upstream.check(key, "anthropic")?;
        upstream.headers.push((
            HeaderName::from_static("anthropic-version"),
            HeaderValue::from_static(ANTHROPIC_VERSION),
        ));
        let default_max_tokens = self.default_max_tokens.unwrap_or(DEFAULT_MAX_TOKENS);
        if default_max_tokens == 0 {
            return Err(format!("{key}.default_max_tokens must be at least 1"));
        }
        Ok(AnthropicSettings {
            upstream,
            default_max_tokens,
        })
    }
}

#[cfg(test)]
mod tests {
    use crate::backend::BackendKind;
    use crate::config::Config;

    fn settings(toml: &str) -> Result<super::AnthropicSettings, String> {
        let config = Config::from_toml(toml).map_err(|e| e.0)?;
        match &config.backends[0].kind {
            BackendKind::Anthropic(settings) => Ok(settings.clone()),
            other => panic!("not anthropic: {other:?}"),
        }
    }

    #[test]
    fn the_key_goes_in_x_api_key_and_the_version_on_every_request() {
        std::env::set_var("SWITCHYARD_TEST_ANTHROPIC_KEY", "sk-ant");
        let checked = settings("[[backends]]\nname = \"claude\"\nkind = \"anthropic\"\nurl = \"https://api.anthropic.com/v1\"\napi_key_env = \"SWITCHYARD_TEST_ANTHROPIC_KEY\"\n").unwrap();
        let auth = checked.upstream.auth.unwrap();
        assert_eq!(auth.name.as_str(), "x-api-key");
        assert_eq!(auth.value, "sk-ant");
        assert_eq!(checked.upstream.headers.len(), 1);
        assert_eq!(checked.upstream.headers[0].0.as_str(), "anthropic-version");
        assert_eq!(checked.default_max_tokens, super::DEFAULT_MAX_TOKENS);
        let bearer = settings("[[backends]]\nname = \"c\"\nkind = \"anthropic\"\nurl = \"http://h/v1\"\napi_key_env = \"SWITCHYARD_TEST_ANTHROPIC_KEY\"\napi_key_header = \"authorization\"\ndefault_max_tokens = 512\n").unwrap();
        assert_eq!(bearer.upstream.auth.unwrap().name.as_str(), "authorization");
        assert_eq!(bearer.default_max_tokens, 512);
        let open =
            settings("[[backends]]\nname = \"c\"\nkind = \"anthropic\"\nurl = \"http://h/v1\"\n")
                .unwrap();
        assert!(open.upstream.auth.is_none(), "no key, no header");
        for (extra, field) in [
            ("default_max_tokens = 0", "default_max_tokens"),
            ("default_max_tokens = \"many\"", "default_max_tokens"),
            ("surely_unknown = 1", "surely_unknown"),
            ("connect_timeout_secs = -1", "connect_timeout_secs"),
        ] {
            let refused = settings(&format!(
                "[[backends]]\nname = \"c\"\nkind = \"anthropic\"\nurl = \"http://h/v1\"\n{extra}\n"
            ))
            .unwrap_err();
            assert!(refused.contains(field), "{extra}: {refused}");
        }
        let missing = settings("[[backends]]\nname = \"c\"\nkind = \"anthropic\"\n").unwrap_err();
        assert!(missing.contains("backends[0].url"), "{missing}");
    }
}

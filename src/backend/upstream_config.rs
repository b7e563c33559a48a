//! What every backend with an upstream is configured with: its servers' addresses, the
//! upstream key (or several, used in turn) and the header they travel in, the three
//! timeouts and the health limits.
//!
//! The fields are read as written ([`UpstreamFields`], straight from serde, inside each
//! kind's own config struct) and checked once, at start, into [`UpstreamConfig`]: URLs
//! parsed, durations made, the key read from the environment and shaped into its header.
//! Nothing on the request path parses a string of the configuration again.

use std::fmt;
use std::time::Duration;

use actix_web::http::header::{HeaderName, HeaderValue, AUTHORIZATION};
use serde::Deserialize;
use url::Url;

/// The upstream settings every kind with an upstream takes, as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpstreamFields {
    /// Upstream base URL (`.../v1` for `openai`, the server root for `ollama`).
    url: Option<String>,
    /// Several upstream servers serving the same models, instead of `url`.
    urls: Option<Vec<String>>,
    /// Failures in a row (refused, reset, 5xx, timeout) that take a server out.
    #[serde(default = "default_max_failures", deserialize_with = "number")]
    max_failures: u32,
    /// How long a failed server stays out before it is probed.
    #[serde(default = "default_cooldown_secs", deserialize_with = "number")]
    cooldown_secs: f64,
    /// A provider's name (`openai` backends only), filling `url` and `api_key_env`
    /// where they are not written; see `openai::presets`.
    preset: Option<String>,
    /// Environment variable holding the upstream key.
    api_key_env: Option<String>,
    /// Several variables, each holding a key, used in turn; instead of `api_key_env`.
    api_key_envs: Option<Vec<String>>,
    /// The preset `api_key_env` was filled from, so that an unset variable's message
    /// says where its name came from.
    #[serde(skip)]
    key_from_preset: Option<&'static str>,
    /// The header the key travels in, as the key alone; absent means
    /// `Authorization: Bearer KEY`.
    api_key_header: Option<String>,
    /// TCP and TLS connect limit.
    #[serde(default = "default_connect_secs", deserialize_with = "number")]
    connect_timeout_secs: f64,
    /// From sending the request to the response's headers (covers a model loading).
    #[serde(default = "default_response_secs", deserialize_with = "number")]
    response_timeout_secs: f64,
    /// Longest silence between two pieces of a streamed body.
    #[serde(default = "default_idle_secs", deserialize_with = "number")]
    idle_timeout_secs: f64,
}

/// Reads a kind's settings keeping the path of any error inside them (`urls[1]`,
/// `connect_timeout_secs`) at the front of its message: serde reads a backend whole
/// before its `kind` picks the type, which loses the path the config check names.
pub fn with_path<'de, D, T>(deserializer: D) -> Result<T, D::Error>
where
    D: serde::Deserializer<'de>,
    T: Deserialize<'de>,
{
    serde_path_to_error::deserialize(deserializer).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner();
        if path == "." || path.is_empty() {
            inner
        } else {
            serde::de::Error::custom(format!("{path}: {inner}"))
        }
    })
}

/// A number, also when written as text (`"10"`): the config layers read numbers that
/// way everywhere else, and a kind's settings are read whole before serde knows their
/// types, which would otherwise make `"10"` an error here alone.
fn number<'de, D, T>(deserializer: D) -> Result<T, D::Error>
where
    D: serde::Deserializer<'de>,
    T: Deserialize<'de> + std::str::FromStr,
{
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum NumberOrText<T> {
        Number(T),
        Text(String),
    }
    match NumberOrText::<T>::deserialize(deserializer) {
        Ok(NumberOrText::Number(number)) => Ok(number),
        Ok(NumberOrText::Text(text)) => text.trim().parse().map_err(|_| {
            serde::de::Error::custom(format!("invalid type: string {text:?}, expected a number"))
        }),
        Err(_) => Err(serde::de::Error::custom("invalid type: expected a number")),
    }
}

fn default_connect_secs() -> f64 {
    10.0
}
fn default_response_secs() -> f64 {
    600.0
}
fn default_idle_secs() -> f64 {
    300.0
}
fn default_max_failures() -> u32 {
    3
}
fn default_cooldown_secs() -> f64 {
    10.0
}

/// One upstream server's base address: as written (without a trailing slash), which
/// is what paths are joined to and what reports show, and parsed, for what needs its
/// parts.
#[derive(Debug, Clone, PartialEq)]
pub struct BaseUrl {
    written: String,
    parsed: Url,
}

impl BaseUrl {
    /// The address as configured, without a trailing slash.
    pub fn as_str(&self) -> &str {
        &self.written
    }

    /// The host name or address.
    pub fn host(&self) -> Option<&str> {
        self.parsed.host_str()
    }
}

/// The header that carries one upstream key, ready to send.
#[derive(Clone, PartialEq)]
pub struct UpstreamAuth {
    pub name: HeaderName,
    /// Marked sensitive, so that no debug output of awc's shows it.
    pub value: HeaderValue,
    /// The variable the key was read from: what reports show instead of the key.
    pub env: String,
}

/// How to reach one upstream, checked.
#[derive(Clone, PartialEq)]
pub struct UpstreamConfig {
    /// One per upstream server.
    pub base_urls: Vec<BaseUrl>,
    /// The first key, read from the environment at start, in the header it travels
    /// in: what a request that does not rotate keys (a health probe) sends.
    pub auth: Option<UpstreamAuth>,
    /// Every key in the order they are used in turn (`auth` first); empty without one.
    pub keys: Vec<UpstreamAuth>,
    /// The provider preset the addresses and key variable came from, if any.
    pub preset: Option<&'static str>,
    pub connect_timeout: Duration,
    pub response_timeout: Duration,
    pub idle_timeout: Duration,
    pub max_failures: u32,
    pub cooldown: Duration,
    /// Headers every request carries, set by the kind (Anthropic's `anthropic-version`).
    pub headers: Vec<(HeaderName, HeaderValue)>,
}

impl fmt::Debug for UpstreamConfig {
    // Hand-written so that the upstream key never reaches a log or a panic message.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("UpstreamConfig")
            .field("base_urls", &self.base_urls)
            .field(
                "keys",
                &self
                    .keys
                    .iter()
                    .map(|auth| (auth.name.as_str(), auth.env.as_str(), "<set>"))
                    .collect::<Vec<_>>(),
            )
            .field("preset", &self.preset)
            .field("connect_timeout", &self.connect_timeout)
            .field("response_timeout", &self.response_timeout)
            .field("idle_timeout", &self.idle_timeout)
            .field("max_failures", &self.max_failures)
            .field("cooldown", &self.cooldown)
            .field("headers", &self.headers)
            .finish()
    }
}

impl UpstreamFields {
    /// Takes the preset's name out, for the kind that knows presets to apply it; a
    /// preset left in is refused by [`UpstreamFields::check`].
    pub(super) fn take_preset(&mut self) -> Option<String> {
        self.preset.take()
    }

    /// Fills the address and the key variable from a preset where they are not
    /// written: what is written beside a preset overrides it.
    pub(super) fn fill_from_preset(&mut self, preset: &super::openai::presets::Preset) {
        if self.url.is_none() && self.urls.is_none() {
            self.url = Some(preset.url.to_owned());
        }
        if self.api_key_env.is_none() && self.api_key_envs.is_none() {
            self.api_key_env = preset.key_env.map(str::to_owned);
            self.key_from_preset = preset.key_env.map(|_| preset.name);
        }
    }

    /// The header a key travels in unless `api_key_header` names one: a kind whose
    /// servers do not read `Authorization: Bearer` (Anthropic's `x-api-key`).
    pub(super) fn default_key_header(&mut self, header: &str) {
        if self.api_key_env.is_some() || self.api_key_envs.is_some() {
            self.api_key_header.get_or_insert_with(|| header.to_owned());
        }
    }

    /// Checks the fields of the backend at `key` (`backends[2]`), a backend of `kind`;
    /// the error names the field at fault and what to write instead.
    pub fn check(self, key: &str, kind: &str) -> Result<UpstreamConfig, String> {
        if self.preset.is_some() {
            return Err(format!(
                "{key}.preset: presets name OpenAI-compatible providers, so only a kind = \"openai\" backend takes one; give url instead"
            ));
        }
        let urls: Vec<(String, &String)> = match (&self.url, &self.urls) {
            (Some(url), None) => vec![(format!("{key}.url"), url)],
            (None, Some(urls)) if !urls.is_empty() => urls
                .iter()
                .enumerate()
                .map(|(index, url)| (format!("{key}.urls[{index}]"), url))
                .collect(),
            (None, _) => {
                return Err(format!(
                    "{key}.url is missing: a {kind} backend needs the upstream's address (url, or urls for several{})",
                    if kind == "openai" { ", or preset = \"NAME\" for a known provider" } else { "" }
                ))
            }
            (Some(_), Some(_)) => return Err(format!("{key}.urls: give url or urls, not both")),
        };
        let mut base_urls = Vec::with_capacity(urls.len());
        for (field, url) in urls {
            match Url::parse(url) {
                Ok(parsed)
                    if matches!(parsed.scheme(), "http" | "https") && parsed.host().is_some() =>
                {
                    base_urls.push(BaseUrl {
                        written: url.trim_end_matches('/').to_owned(),
                        parsed,
                    });
                }
                _ => {
                    return Err(format!(
                    "{field} \"{url}\" is not an http:// or https:// URL; write e.g. \"http://{}\"",
                    url.trim_start_matches("//")
                ))
                }
            }
        }
        let keys = self.keys(key)?;
        let duration = |field: &str, secs: f64| {
            if secs.is_finite() && secs > 0.0 {
                Ok(Duration::from_secs_f64(secs))
            } else {
                Err(format!(
                    "{key}.{field} must be a positive number of seconds"
                ))
            }
        };
        if self.max_failures == 0 {
            return Err(format!("{key}.max_failures must be at least 1"));
        }
        Ok(UpstreamConfig {
            base_urls,
            auth: keys.first().cloned(),
            keys,
            preset: None,
            connect_timeout: duration("connect_timeout_secs", self.connect_timeout_secs)?,
            response_timeout: duration("response_timeout_secs", self.response_timeout_secs)?,
            idle_timeout: duration("idle_timeout_secs", self.idle_timeout_secs)?,
            max_failures: self.max_failures,
            cooldown: duration("cooldown_secs", self.cooldown_secs)?,
            headers: Vec::new(),
        })
    }

    /// Reads each key from its variable and shapes it into its header:
    /// `Authorization: Bearer KEY` unless `api_key_header` names another header, which
    /// gets the key alone.
    fn keys(&self, key: &str) -> Result<Vec<UpstreamAuth>, String> {
        let name = match &self.api_key_header {
            None => None,
            Some(header) => match HeaderName::try_from(header.as_str()) {
                Ok(name) => Some(name),
                Err(_) => {
                    return Err(format!(
                        "{key}.api_key_header \"{header}\" is not an HTTP header name; write e.g. \"x-api-key\""
                    ))
                }
            },
        };
        let vars: Vec<(String, &String)> = match (&self.api_key_env, &self.api_key_envs) {
            (Some(_), Some(_)) => {
                return Err(format!(
                    "{key}.api_key_envs: give api_key_env (one key) or api_key_envs (several), not both"
                ))
            }
            (Some(var), None) => vec![(format!("{key}.api_key_env"), var)],
            (None, Some(vars)) if vars.is_empty() => {
                return Err(format!(
                    "{key}.api_key_envs is empty; name at least one variable, or remove it"
                ))
            }
            (None, Some(vars)) => vars
                .iter()
                .enumerate()
                .map(|(index, var)| (format!("{key}.api_key_envs[{index}]"), var))
                .collect(),
            (None, None) => {
                if name.is_some() {
                    return Err(format!(
                        "{key}.api_key_header names the header for a key, but there is no api_key_env to read the key from; add one or remove api_key_header"
                    ));
                }
                return Ok(Vec::new());
            }
        };
        let mut keys = Vec::with_capacity(vars.len());
        for (field, var) in vars {
            if keys.iter().any(|known: &UpstreamAuth| &known.env == var) {
                return Err(format!(
                    "{field} names ${var} a second time; name each variable once"
                ));
            }
            let secret = match std::env::var(var) {
                Ok(value) if !value.is_empty() => value,
                _ => {
                    return Err(match self.key_from_preset {
                        Some(preset) => format!(
                            "{field} names ${var}, which is not set; export it (preset {preset} reads its key from ${var}) or set api_key_env to the variable that holds the key"
                        ),
                        None if self.api_key_envs.is_some() => format!(
                            "{field} names ${var}, which is not set; export it or remove it from api_key_envs"
                        ),
                        None => format!(
                            "{field} names ${var}, which is not set; export it or remove api_key_env"
                        ),
                    })
                }
            };
            let (name, value) = match &name {
                None => (
                    AUTHORIZATION,
                    HeaderValue::try_from(format!("Bearer {secret}")),
                ),
                Some(name) => (name.clone(), HeaderValue::try_from(secret)),
            };
            let Ok(mut value) = value else {
                return Err(format!(
                    "{field} names ${var}, which holds a character an HTTP header cannot carry (a line break?); set it to the key alone"
                ));
            };
            value.set_sensitive(true);
            keys.push(UpstreamAuth {
                name,
                value,
                env: var.clone(),
            });
        }
        Ok(keys)
    }
}

//! Typed configuration: read once at start from a TOML file and `SWITCHYARD__...`
//! environment overrides, checked once into types that cannot be wrong later.
//!
//! Parsing ([`RawConfig`], straight from serde) and checking ([`Config`]) are separate
//! steps, so that every problem is reported as one line naming the offending key.

use std::net::{SocketAddr, ToSocketAddrs};
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use crate::backend::BackendSettings;
pub use crate::backend::{BackendConfig, BackendKind, UpstreamConfig};
pub use crate::usage::LedgerConfig;

/// Where the listen address is when nothing says otherwise.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:8787";
/// The config file read when neither `--config` nor `$SWITCHYARD_CONFIG` names one.
pub const DEFAULT_CONFIG_PATH: &str = "config/switchyard.toml";

/// A configuration problem, naming the key at fault.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{0}")]
pub struct ConfigError(pub String);

fn err<T>(message: impl Into<String>) -> Result<T, ConfigError> {
    Err(ConfigError(message.into()))
}

/// The file's shape, exactly as written.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    #[serde(default)]
    server: RawServer,
    #[serde(default)]
    auth: RawAuth,
    #[serde(default)]
    routing: RawRouting,
    /// Absent means the built-in `echo` backend alone.
    backends: Option<Vec<RawBackend>>,
    /// Model aliases with fallback targets.
    #[serde(default)]
    models: Vec<RawAlias>,
    /// Stored responses of the Responses API.
    #[serde(default)]
    responses: crate::dialect::responses::store::StoreConfig,
    /// The usage ledger.
    #[serde(default)]
    ledger: LedgerConfig,
    /// `[cluster]`: limits, slots and usage shared with other instances through Redis.
    cluster: Option<crate::cluster::RawCluster>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAlias {
    /// The name clients use.
    name: String,
    /// Model names tried in order until one answers.
    targets: Vec<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawServer {
    /// `HOST:PORT` to listen on.
    #[serde(default = "default_listen")]
    listen: String,
    /// Largest request body accepted, in bytes; larger bodies get 413.
    #[serde(default = "default_body_limit")]
    body_limit_bytes: usize,
    /// How long in-flight requests may run on after SIGTERM or Ctrl-C.
    #[serde(default = "default_shutdown_secs")]
    shutdown_timeout_secs: u64,
    /// Proxies whose forwarded client address is believed (CIDR blocks or addresses).
    #[serde(default)]
    trusted_proxies: Vec<String>,
    /// Who may read `/metrics` and `/health`'s detail.
    #[serde(default)]
    metrics: MetricsAccess,
    /// Web origins whose pages may call the gateway (CORS); none by default.
    #[serde(default)]
    cors_allow_origins: Vec<String>,
}

impl Default for RawServer {
    fn default() -> Self {
        RawServer {
            listen: default_listen(),
            body_limit_bytes: default_body_limit(),
            shutdown_timeout_secs: default_shutdown_secs(),
            trusted_proxies: Vec::new(),
            metrics: MetricsAccess::default(),
            cors_allow_origins: Vec::new(),
        }
    }
}

/// Who may read the operational routes' detail (`/metrics`, `/health` per backend).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum MetricsAccess {
    /// Anyone who can reach the gateway.
    Public,
    /// Callers on this machine that no proxy relayed.
    #[default]
    Loopback,
    /// Callers with an admin key.
    Key,
}

fn default_listen() -> String {
    DEFAULT_LISTEN.to_owned()
}
fn default_body_limit() -> usize {
    16 * 1024 * 1024
}
fn default_shutdown_secs() -> u64 {
    30
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAuth {
    /// JSON object of key to user name; re-read when it changes.
    keys_file: Option<PathBuf>,
    /// Serve without keys on a non-loopback address.
    #[serde(default)]
    allow_anonymous: bool,
    /// Keys that may read the operational routes (and use the API, as user `admin`).
    #[serde(default)]
    admin_keys: Vec<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRouting {
    /// Backend for model names without a known prefix.
    default_backend: Option<String>,
}

/// One backend as written: its name, and its kind's own settings (which reject any
/// field that kind does not know, so this struct cannot say `deny_unknown_fields`).
#[derive(Debug, Deserialize)]
struct RawBackend {
    /// Unique; also the model-name prefix that routes to this backend.
    name: String,
    /// Requests served at once; absent means no limit (`crate::queue`).
    max_concurrent: Option<i64>,
    /// Requests that may wait for a slot.
    max_queue: Option<i64>,
    /// The longest a request waits for a slot.
    queue_timeout_secs: Option<f64>,
    /// The most output tokens a request may ask of this backend
    /// (`crate::pipeline::output_cap`).
    max_output_tokens: Option<i64>,
    /// `kind` and the settings that kind takes.
    #[serde(flatten)]
    settings: BackendSettings,
}

/// The checked configuration.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    pub listen: SocketAddr,
    pub body_limit: usize,
    pub shutdown_timeout: Duration,
    pub keys_file: Option<PathBuf>,
    pub allow_anonymous: bool,
    /// `auth.admin_keys`, kept out of every debug print.
    pub admin_keys: AdminKeys,
    pub trusted_proxies: Vec<ipnet::IpNet>,
    pub metrics_access: MetricsAccess,
    /// `server.cors_allow_origins`, checked: `*` or `scheme://host[:port]` each.
    pub cors_allow_origins: Vec<String>,
    pub default_backend: Option<String>,
    pub backends: Vec<BackendConfig>,
    pub aliases: Vec<Alias>,
    /// `[responses]`: the limits of the stored responses.
    pub responses: crate::dialect::responses::store::StoreConfig,
    /// `[ledger]`: the usage ledger's file, or none.
    pub ledger: LedgerConfig,
    /// `[cluster]`, checked; `None`: this instance shares nothing and connects nowhere.
    pub cluster: Option<crate::cluster::ClusterSettings>,
}

/// Admin keys from the configuration: secrets, so their `Debug` says only how many.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct AdminKeys(pub Vec<String>);

impl std::fmt::Debug for AdminKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "AdminKeys(<{} set>)", self.0.len())
    }
}

/// A model name that stands for several targets, tried in order: the first that answers
/// serves the request.
#[derive(Debug, Clone)]
pub struct Alias {
    pub name: String,
    pub targets: Vec<String>,
    /// For a name with `*`, `?` or `[`: the names it stands for (e.g. `claude-*`, the
    /// names a coding agent asks for, all served by one local model).
    pub pattern: Option<globset::GlobMatcher>,
}

impl Alias {
    /// Whether the client's model name is this alias's: its name, or one its pattern
    /// matches.
    pub fn matches(&self, model: &str) -> bool {
        match &self.pattern {
            Some(pattern) => pattern.is_match(model),
            None => self.name == model,
        }
    }
}

impl PartialEq for Alias {
    fn eq(&self, other: &Alias) -> bool {
        self.name == other.name && self.targets == other.targets
    }
}

impl Config {
    /// Finds the config file as the contract says: the explicit path, else
    /// `$SWITCHYARD_CONFIG`, else `config/switchyard.toml` if it exists, else none.
    pub fn locate(explicit: Option<&Path>) -> Option<PathBuf> {
        if let Some(path) = explicit {
            return Some(path.to_owned());
        }
        if let Some(path) = std::env::var_os("SWITCHYARD_CONFIG").filter(|p| !p.is_empty()) {
            return Some(PathBuf::from(path));
        }
        let default = Path::new(DEFAULT_CONFIG_PATH);
        default.exists().then(|| default.to_owned())
    }

    /// Loads the file (if any) with environment overrides on top, then checks it.
    pub fn load(path: Option<&Path>) -> Result<Config, ConfigError> {
        let mut builder = config::Config::builder();
        if let Some(path) = path {
            if !path.exists() {
                return err(format!("config file {} does not exist", path.display()));
            }
            builder = builder.add_source(
                config::File::from(path)
                    .format(config::FileFormat::Toml)
                    .required(true),
            );
        }
        builder = apply_environment(builder)?;
        deserialize(builder)?.check()
    }

    /// Parses TOML text (no environment), for tests and `check`.
    pub fn from_toml(text: &str) -> Result<Config, ConfigError> {
        let builder = config::Config::builder()
            .add_source(config::File::from_str(text, config::FileFormat::Toml));
        deserialize(builder)?.check()
    }

    /// The built-in defaults: loopback, one `echo` backend as the default.
    pub fn builtin() -> Config {
        RawConfig::default()
            .check()
            .expect("the built-in defaults are valid")
    }

    /// A human-readable account of the backends and routing, for `switchyard check`.
    pub fn describe(&self) -> String {
        use std::fmt::Write;
        let mut out = String::new();
        let _ = writeln!(out, "listen: http://{}", self.listen);
        let _ = writeln!(
            out,
            "auth: {}",
            match &self.keys_file {
                Some(path) => format!("keys from {}", path.display()),
                None => "none (anonymous)".to_owned(),
            }
        );
        let _ = if self.ledger.enabled {
            writeln!(out, "usage ledger: {}", self.ledger.path.display())
        } else {
            writeln!(out, "usage ledger: off")
        };
        if let Some(cluster) = &self.cluster {
            let _ = writeln!(out, "{}", cluster.describe());
        }
        let _ = writeln!(out, "backends:");
        for backend in &self.backends {
            match backend.kind.upstream() {
                Some(upstream) => {
                    let _ = writeln!(
                        out,
                        "  {:<12} {:<7} {}{}",
                        backend.name,
                        backend.kind.name(),
                        upstream
                            .base_urls
                            .iter()
                            .map(|url| url.as_str())
                            .collect::<Vec<_>>()
                            .join(" "),
                        if upstream.auth.is_some() {
                            " (with key)"
                        } else {
                            ""
                        }
                    );
                    let _ = writeln!(out, "  {:<20} {}", "", resolved(upstream));
                }
                None => {
                    let _ = writeln!(out, "  {:<12} {:<7} built in", backend.name, "echo");
                }
            }
            if let Some(queue) = &backend.queue {
                let _ = writeln!(
                    out,
                    "  {:<20} max_concurrent {}: up to {} more wait, each up to {}s",
                    "",
                    queue.max_concurrent,
                    queue.max_queue,
                    queue.timeout.as_secs_f64()
                );
            }
            if let Some(tokens) = backend.max_output_tokens {
                let _ = writeln!(
                    out,
                    "  {:<20} max_output_tokens {tokens}: a larger max_tokens is lowered to it",
                    ""
                );
            }
        }
        let _ = writeln!(out, "routing:");
        for backend in &self.backends {
            let _ = writeln!(
                out,
                "  {}/MODEL -> backend {}, model MODEL",
                backend.name, backend.name
            );
        }
        for alias in &self.aliases {
            let _ = writeln!(
                out,
                "  {} -> first to answer of: {}",
                alias.name,
                alias.targets.join(", ")
            );
        }
        let _ = match &self.default_backend {
            Some(name) => writeln!(out, "  any other name -> backend {name}, name unchanged"),
            None => writeln!(out, "  any other name -> 404 (no default_backend)"),
        };
        out
    }
}

/// What a backend with an upstream resolved to, beyond its addresses: the preset it
/// came from, the variables its keys are read from (names only: `check` output is
/// pasted into issues) and its timeouts.
fn resolved(upstream: &crate::backend::UpstreamConfig) -> String {
    let mut parts = Vec::new();
    if let Some(preset) = upstream.preset {
        parts.push(format!("preset {preset}"));
    }
    let vars: Vec<String> = upstream
        .keys
        .iter()
        .map(|key| format!("${}", key.env))
        .collect();
    parts.push(match vars.len() {
        0 => "no key".to_owned(),
        1 => format!("key from {}", vars[0]),
        _ => format!("keys in turn from {}", vars.join(", ")),
    });
    parts.push(format!(
        "timeouts connect {}s, response {}s, idle {}s",
        upstream.connect_timeout.as_secs_f64(),
        upstream.response_timeout.as_secs_f64(),
        upstream.idle_timeout.as_secs_f64()
    ));
    parts.join("; ")
}

impl RawConfig {
    fn check(self) -> Result<Config, ConfigError> {
        let listen = parse_listen(&self.server.listen)?;
        if self.server.body_limit_bytes == 0 {
            return err("server.body_limit_bytes must be greater than 0");
        }
        let (backends, default_backend) = match self.backends {
            None => (
                vec![BackendConfig {
                    name: "echo".to_owned(),
                    kind: BackendKind::Echo,
                    queue: None,
                    max_output_tokens: None,
                }],
                Some(
                    self.routing
                        .default_backend
                        .unwrap_or_else(|| "echo".to_owned()),
                ),
            ),
            Some(raw) => {
                let mut backends: Vec<BackendConfig> = Vec::with_capacity(raw.len());
                for (index, backend) in raw.into_iter().enumerate() {
                    let checked = backend.check(index)?;
                    if backends.iter().any(|b| b.name == checked.name) {
                        return err(format!(
                            "backends[{index}].name \"{}\" is used by an earlier backend; names must be unique",
                            checked.name
                        ));
                    }
                    backends.push(checked);
                }
                (backends, self.routing.default_backend)
            }
        };
        if let Some(name) = &default_backend {
            if !backends.iter().any(|b| &b.name == name) {
                return err(format!(
                    "routing.default_backend \"{name}\" names no backend; the backends are: {}",
                    backends
                        .iter()
                        .map(|b| b.name.as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                ));
            }
        }
        let aliases = check_aliases(self.models, &backends, default_backend.is_some())?;
        let trusted_proxies = self
            .server
            .trusted_proxies
            .iter()
            .enumerate()
            .map(|(index, text)| {
                crate::peer::parse_network(text)
                    .map_err(|e| ConfigError(format!("server.trusted_proxies[{index}]: {e}")))
            })
            .collect::<Result<Vec<_>, _>>()?;
        for (index, key) in self.auth.admin_keys.iter().enumerate() {
            if key.trim().is_empty() || key.trim() != key {
                return err(format!(
                    "auth.admin_keys[{index}] must be a non-empty key without surrounding spaces"
                ));
            }
        }
        for (index, origin) in self.server.cors_allow_origins.iter().enumerate() {
            check_origin(origin).map_err(|problem| {
                ConfigError(format!(
                    "server.cors_allow_origins[{index}] \"{origin}\" {problem}"
                ))
            })?;
        }
        let keys_required = (self.auth.keys_file.is_some() || !self.auth.admin_keys.is_empty())
            && !self.auth.allow_anonymous;
        if self.server.cors_allow_origins.iter().any(|o| o == "*") && !keys_required {
            return err("server.cors_allow_origins \"*\" lets every web page call the gateway, so it needs keys: set auth.keys_file (and leave auth.allow_anonymous off), or name the origins");
        }
        if self.ledger.enabled && self.ledger.path.as_os_str().is_empty() {
            return err(
                "ledger.path must not be empty; set ledger.enabled = false to keep no ledger",
            );
        }
        Ok(Config {
            ledger: self.ledger,
            cors_allow_origins: self.server.cors_allow_origins,
            admin_keys: AdminKeys(self.auth.admin_keys),
            trusted_proxies,
            metrics_access: self.server.metrics,
            aliases,
            listen,
            body_limit: self.server.body_limit_bytes,
            shutdown_timeout: Duration::from_secs(self.server.shutdown_timeout_secs),
            keys_file: self.auth.keys_file,
            allow_anonymous: self.auth.allow_anonymous,
            default_backend,
            backends,
            responses: self.responses,
            cluster: self
                .cluster
                .map(|raw| raw.check().map_err(ConfigError))
                .transpose()?,
        })
    }
}

/// Applies `SWITCHYARD__A__B=value` overrides. They are set as paths rather than added
/// as a source so that a number names an entry of a list: `SWITCHYARD__BACKENDS__0__URL`
/// changes the first backend's `url`.
fn apply_environment(
    mut builder: config::ConfigBuilder<config::builder::DefaultState>,
) -> Result<config::ConfigBuilder<config::builder::DefaultState>, ConfigError> {
    use config::Source;
    let overrides = config::Environment::with_prefix("SWITCHYARD")
        .prefix_separator("__")
        .separator("__")
        .try_parsing(true)
        .collect()
        .map_err(|e| ConfigError(one_line(&e.to_string())))?;
    for (key, value) in overrides {
        let path = key
            .split('.')
            .map(|segment| match segment.parse::<usize>() {
                Ok(index) => format!("[{index}]"),
                Err(_) => format!(".{segment}"),
            })
            .collect::<String>();
        let path = path.trim_start_matches('.').to_owned();
        builder = builder.set_override(path.as_str(), value).map_err(|e| {
            ConfigError(format!(
                "environment override {path}: {}",
                one_line(&e.to_string())
            ))
        })?;
    }
    Ok(builder)
}

/// Reads the merged sources into [`RawConfig`], naming the full path of any key at fault
/// (`backends[1].timeout`, not just `timeout`).
fn deserialize(
    builder: config::ConfigBuilder<config::builder::DefaultState>,
) -> Result<RawConfig, ConfigError> {
    let merged = builder
        .build()
        .map_err(|e| ConfigError(one_line(&e.to_string())))?;
    serde_path_to_error::deserialize(merged).map_err(|e| {
        let path = e.path().to_string();
        let inner = one_line(&e.into_inner().to_string());
        if path == "." || path.is_empty() {
            ConfigError(inner)
        } else {
            ConfigError(name_the_key(path, inner))
        }
    })
}

/// Says which key is at fault where serde could not: a backend's settings are read
/// whole before its `kind` picks their type, so an error inside them arrives with the
/// backend's path (`backends[0]`) and, where the kind's settings could tell, the
/// field's path at the front of the message (`url: invalid type ...`).
fn name_the_key(path: String, message: String) -> String {
    let field = |prefix: &str| {
        message
            .strip_prefix(prefix)
            .and_then(|rest| rest.split('`').next())
            .map(str::to_owned)
    };
    if let Some(kind) = field("unknown variant `") {
        return format!(
            "{path}.kind \"{kind}\" is not a backend kind; use {}",
            crate::backend::KIND_NAMES
        );
    }
    if message.starts_with("missing field `kind`") {
        return format!("{path}.kind is missing; use {}", crate::backend::KIND_NAMES);
    }
    if let Some((inner, rest)) = message.split_once(": ") {
        if !inner.is_empty() && !inner.contains([' ', '`', '"']) {
            let joiner = if inner.starts_with('[') { "" } else { "." };
            return format!("{path}{joiner}{inner}: {rest}");
        }
    }
    match field("unknown field `") {
        // Echo's settings: it has no upstream to give an address, key or timeout.
        Some(name) if message.ends_with("there are no fields") => {
            format!("{path}.{name}: this kind of backend takes no settings; remove {name}")
        }
        Some(name) if !path.ends_with(&format!(".{name}")) => {
            format!("{path}.{name}: {message}")
        }
        _ => format!("{path}: {message}"),
    }
}

/// An allowed CORS origin: `*`, or `scheme://host[:port]` with nothing after it, as
/// browsers send `Origin`.
fn check_origin(origin: &str) -> Result<(), &'static str> {
    if origin == "*" {
        return Ok(());
    }
    let url =
        url::Url::parse(origin).map_err(|_| "is not an origin like https://app.example.com")?;
    if !matches!(url.scheme(), "http" | "https") || url.host_str().is_none() {
        return Err("is not an http(s) origin like https://app.example.com");
    }
    if url.origin().ascii_serialization() != origin {
        return Err("must be only scheme://host[:port], with no path or trailing slash");
    }
    Ok(())
}

/// Folds a multi-line message (TOML syntax errors draw the line) into one line.
fn one_line(message: &str) -> String {
    message.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// Checks that alias names are unique and not a backend's prefix, and that every
/// target routes somewhere.
fn check_aliases(
    raw: Vec<RawAlias>,
    backends: &[BackendConfig],
    has_default: bool,
) -> Result<Vec<Alias>, ConfigError> {
    let mut aliases: Vec<Alias> = Vec::with_capacity(raw.len());
    for (index, alias) in raw.into_iter().enumerate() {
        let key = format!("models[{index}]");
        if alias.name.is_empty() {
            return err(format!("{key}.name must not be empty"));
        }
        if let Some((prefix, _)) = alias.name.split_once('/') {
            if backends.iter().any(|b| b.name == prefix) {
                return err(format!(
                    "{key}.name \"{}\" starts with backend {prefix}'s prefix; an alias needs a name of its own",
                    alias.name
                ));
            }
        }
        if aliases.iter().any(|a| a.name == alias.name) {
            return err(format!(
                "{key}.name \"{}\" is used by an earlier alias",
                alias.name
            ));
        }
        if alias.targets.is_empty() {
            return err(format!("{key}.targets must name at least one model"));
        }
        for (at, target) in alias.targets.iter().enumerate() {
            let routed = target.split_once('/').is_some_and(|(prefix, rest)| {
                !rest.is_empty() && backends.iter().any(|b| b.name == prefix)
            });
            if !routed && !has_default {
                return err(format!(
                    "{key}.targets[{at}] \"{target}\" names no backend (write BACKEND/MODEL) and there is no routing.default_backend"
                ));
            }
        }
        let pattern = if alias.name.contains(['*', '?', '[']) {
            let glob = globset::Glob::new(&alias.name)
                .map_err(|e| ConfigError(format!("{key}.name \"{}\": {e}", alias.name)))?;
            Some(glob.compile_matcher())
        } else {
            None
        };
        aliases.push(Alias {
            name: alias.name,
            targets: alias.targets,
            pattern,
        });
    }
    Ok(aliases)
}

fn parse_listen(listen: &str) -> Result<SocketAddr, ConfigError> {
    if let Ok(addr) = listen.parse() {
        return Ok(addr);
    }
    match listen.to_socket_addrs().map(|mut addrs| addrs.next()) {
        Ok(Some(addr)) => Ok(addr),
        _ => err(format!(
            "server.listen \"{listen}\" is not HOST:PORT; write e.g. \"{DEFAULT_LISTEN}\""
        )),
    }
}

impl RawBackend {
    fn check(self, index: usize) -> Result<BackendConfig, ConfigError> {
        let key = format!("backends[{index}]");
        if self.name.is_empty()
            || !self
                .name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'))
        {
            return err(format!(
                "{key}.name \"{}\" must be non-empty and use only A-Z a-z 0-9 _ . -",
                self.name
            ));
        }
        let kind = self.settings.check(&key).map_err(ConfigError)?;
        let queue = crate::queue::QueueSettings::check(
            &key,
            self.max_concurrent,
            self.max_queue,
            self.queue_timeout_secs,
        )
        .map_err(ConfigError)?;
        let max_output_tokens = match self.max_output_tokens {
            None => None,
            Some(tokens) if tokens > 0 => Some(tokens.unsigned_abs()),
            Some(tokens) => {
                return err(format!(
                    "{key}.max_output_tokens must be a positive number of tokens (it is {tokens})"
                ))
            }
        };
        Ok(BackendConfig {
            name: self.name,
            kind,
            queue,
            max_output_tokens,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builtin_is_echo_on_loopback() {
        let config = Config::builtin();
        assert_eq!(config.listen.to_string(), DEFAULT_LISTEN);
        assert_eq!(config.backends[0].kind, BackendKind::Echo);
        assert_eq!(config.default_backend.as_deref(), Some("echo"));
    }

    #[test]
    fn timeouts_default_as_the_contract_says() {
        let config = Config::from_toml(
            "[[backends]]\nname = \"o\"\nkind = \"ollama\"\nurl = \"http://127.0.0.1:11434/\"\n",
        )
        .unwrap();
        let upstream = config.backends[0].kind.upstream().unwrap();
        assert_eq!(upstream.base_urls[0].as_str(), "http://127.0.0.1:11434");
        assert_eq!(upstream.connect_timeout, Duration::from_secs(10));
        assert_eq!(upstream.response_timeout, Duration::from_secs(600));
        assert_eq!(upstream.idle_timeout, Duration::from_secs(300));
        assert_eq!(config.default_backend, None);
    }

    #[test]
    fn the_upstream_key_goes_in_the_configured_header() {
        std::env::set_var("SWITCHYARD_TEST_HEADER_KEY", "sk-xyz");
        let config = Config::from_toml(
            "[[backends]]\nname = \"a\"\nkind = \"openai\"\nurl = \"http://h/v1\"\napi_key_env = \"SWITCHYARD_TEST_HEADER_KEY\"\n[[backends]]\nname = \"b\"\nkind = \"openai\"\nurl = \"http://h/v1\"\napi_key_env = \"SWITCHYARD_TEST_HEADER_KEY\"\napi_key_header = \"X-Api-Key\"\n",
        )
        .unwrap();
        let auth = |index: usize| {
            let auth = config.backends[index].kind.upstream().unwrap().auth.clone();
            let auth = auth.unwrap();
            (
                auth.name.to_string(),
                auth.value.to_str().unwrap().to_owned(),
            )
        };
        assert_eq!(auth(0), ("authorization".into(), "Bearer sk-xyz".into()));
        assert_eq!(auth(1), ("x-api-key".into(), "sk-xyz".into()));
        let debug = format!("{:?}", config.backends[1]);
        assert!(!debug.contains("sk-xyz"), "{debug}");
    }

    fn error_of(toml: &str) -> String {
        Config::from_toml(toml).unwrap_err().0
    }

    #[test]
    fn max_output_tokens_is_read_for_any_kind_and_must_be_positive() {
        let config = Config::from_toml(
            "[[backends]]\nname = \"e\"\nkind = \"echo\"\nmax_output_tokens = 4096\n[[backends]]\nname = \"o\"\nkind = \"openai\"\nurl = \"http://h/v1\"\n",
        )
        .unwrap();
        assert_eq!(config.backends[0].max_output_tokens, Some(4096));
        assert_eq!(config.backends[1].max_output_tokens, None);
        assert!(config.describe().contains("max_output_tokens 4096"));
        for bad in ["0", "-5"] {
            let error = error_of(&format!(
                "[[backends]]\nname = \"e\"\nkind = \"echo\"\nmax_output_tokens = {bad}\n"
            ));
            assert!(error.contains("backends[0].max_output_tokens"), "{error}");
        }
    }

    #[test]
    fn each_problem_names_its_key() {
        assert!(error_of("[server]\nlisten = \"nope\"").contains("server.listen"));
        assert!(
            error_of("[[backends]]\nname = \"a b\"\nkind = \"echo\"").contains("backends[0].name")
        );
        assert!(
            error_of("[[backends]]\nname = \"a\"\nkind = \"grpc\"").contains("backends[0].kind")
        );
        let no_scheme =
            error_of("[[backends]]\nname = \"a\"\nkind = \"ollama\"\nurl = \"localhost:11434\"");
        assert!(no_scheme.contains("backends[0].url"), "{no_scheme}");
        assert!(no_scheme.contains("http://localhost:11434"), "{no_scheme}");
        assert!(error_of(
            "[[backends]]\nname = \"a\"\nkind = \"echo\"\n[[backends]]\nname = \"a\"\nkind = \"echo\""
        )
        .contains("backends[1].name"));
        assert!(error_of(
            "[routing]\ndefault_backend = \"x\"\n[[backends]]\nname = \"a\"\nkind = \"echo\""
        )
        .contains("routing.default_backend"));
        assert!(error_of(
            "[[backends]]\nname = \"a\"\nkind = \"openai\"\nurl = \"http://h/v1\"\napi_key_env = \"SWITCHYARD_TEST_SURELY_UNSET\""
        )
        .contains("backends[0].api_key_env"));
        std::env::set_var("SWITCHYARD_TEST_KEY_WITH_NEWLINE", "sk-abc\nInjected: yes");
        let broken_key = error_of(
            "[[backends]]\nname = \"a\"\nkind = \"openai\"\nurl = \"http://h/v1\"\napi_key_env = \"SWITCHYARD_TEST_KEY_WITH_NEWLINE\"",
        );
        assert!(
            broken_key.contains("backends[0].api_key_env"),
            "{broken_key}"
        );
        assert!(!broken_key.contains("sk-abc"), "{broken_key}");
        let unknown = error_of("[server]\nlisten = \"127.0.0.1:1\"\nport = 3");
        assert!(unknown.contains("server.port"), "{unknown}");
        let nested = error_of("[[backends]]\nname = \"a\"\nkind = \"echo\"\ntimeout = 3");
        assert!(nested.contains("backends[0].timeout"), "{nested}");
        let prefixed = error_of("[[models]]\nname = \"a/x\"\ntargets = [\"a/y\"]\n[[backends]]\nname = \"a\"\nkind = \"echo\"");
        assert!(prefixed.contains("models[0].name"), "{prefixed}");
        let nowhere = error_of("[[models]]\nname = \"m\"\ntargets = [\"y\"]\n[[backends]]\nname = \"a\"\nkind = \"echo\"");
        assert!(nowhere.contains("models[0].targets[0]"), "{nowhere}");
        let echo_url = error_of("[[backends]]\nname = \"a\"\nkind = \"echo\"\nurl = \"http://h\"");
        assert!(echo_url.contains("backends[0].url"), "{echo_url}");
        assert!(echo_url.contains("remove url"), "{echo_url}");
        let no_kind = error_of("[[backends]]\nname = \"a\"\nurl = \"http://h\"");
        assert!(no_kind.contains("backends[0].kind"), "{no_kind}");
        let typed = error_of("[[backends]]\nname = \"a\"\nkind = \"ollama\"\nurl = \"http://h\"\napi_key_header = \"x api key\"\napi_key_env = \"PATH\"");
        assert!(typed.contains("backends[0].api_key_header"), "{typed}");
        let orphan = error_of("[[backends]]\nname = \"a\"\nkind = \"openai\"\nurl = \"http://h/v1\"\napi_key_header = \"x-api-key\"");
        assert!(orphan.contains("backends[0].api_key_header"), "{orphan}");
        let mistyped = error_of("[[backends]]\nname = \"a\"\nkind = \"ollama\"\nurl = \"http://h\"\nidle_timeout_secs = \"long\"");
        assert!(
            mistyped.contains("backends[0].idle_timeout_secs"),
            "{mistyped}"
        );
        let in_list =
            error_of("[[backends]]\nname = \"a\"\nkind = \"ollama\"\nurls = [\"http://h\", 3]");
        assert!(in_list.contains("backends[0].urls[1]"), "{in_list}");
        let syntax = error_of("[server\nlisten = 1");
        assert_eq!(syntax.lines().count(), 1, "{syntax}");
    }
}

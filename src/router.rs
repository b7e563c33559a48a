//! Model name to backend: `P/REST` goes to backend `P` as model `REST`; any other name
//! goes whole to the default backend, if one is configured.

use std::sync::Arc;

use crate::backend::{Backend, Pool, Pools};
use crate::config::{Alias, Config};
use crate::error::GatewayError;

/// Where a model name leads.
pub struct Route<'r, 'm> {
    /// The backend's configured name.
    pub name: &'r str,
    pub backend: &'r Backend,
    /// The model as the upstream knows it.
    pub model: &'m str,
    /// The backend's `max_output_tokens`.
    pub max_output_tokens: Option<u64>,
}

/// The running backends of one worker, and how names reach them.
pub struct Router {
    backends: Vec<(String, Backend)>,
    /// Each backend's server pool (shared by workers), for `/health`.
    pools: Vec<Option<Arc<Pool>>>,
    /// Each backend's `max_output_tokens`, in the same order.
    output_caps: Vec<Option<u64>>,
    default: Option<usize>,
    aliases: Vec<Alias>,
}

impl Router {
    /// Builds every backend once; called once per worker, with the pools all workers
    /// share.
    pub fn new(config: &Config, pools: &Pools) -> Router {
        let pools: Vec<Option<Arc<Pool>>> = config
            .backends
            .iter()
            .map(|backend| pools.get(&backend.name))
            .collect();
        let backends: Vec<(String, Backend)> = config
            .backends
            .iter()
            .zip(&pools)
            .map(|(backend, pool)| (backend.name.clone(), Backend::new(backend, pool.clone())))
            .collect();
        let default = config
            .default_backend
            .as_ref()
            .and_then(|name| backends.iter().position(|(n, _)| n == name));
        Router {
            backends,
            pools,
            output_caps: config
                .backends
                .iter()
                .map(|b| b.max_output_tokens)
                .collect(),
            default,
            aliases: config.aliases.clone(),
        }
    }

    /// The backend for a model name, and the name the upstream knows the model by.
    pub fn route<'r, 'm>(&'r self, model: &'m str) -> Result<Route<'r, 'm>, GatewayError> {
        let route = |index: usize, model: &'m str| {
            let (name, backend) = &self.backends[index];
            Route {
                name: name.as_str(),
                backend,
                model,
                max_output_tokens: self.output_caps.get(index).copied().flatten(),
            }
        };
        if let Some((prefix, rest)) = model.split_once('/') {
            if let Some(index) = self.backends.iter().position(|(name, _)| name == prefix) {
                if rest.is_empty() {
                    return Err(GatewayError::ModelNotFound(model.to_owned()));
                }
                return Ok(route(index, rest));
            }
        }
        match self.default {
            Some(index) => Ok(route(index, model)),
            None => Err(GatewayError::ModelNotFound(model.to_owned())),
        }
    }

    /// Where a model name leads: an alias's targets in order, or the one route. An alias
    /// named exactly so comes first, then the first pattern alias (`claude-*`) that
    /// matches, in configuration order.
    pub fn resolve<'r, 'm>(&'r self, model: &'m str) -> Result<Vec<Route<'r, 'm>>, GatewayError>
    where
        'r: 'm,
    {
        let alias = self
            .aliases
            .iter()
            .find(|alias| alias.name == model)
            .or_else(|| self.aliases.iter().find(|alias| alias.matches(model)));
        match alias {
            Some(alias) => alias
                .targets
                .iter()
                .map(|target| self.route(target))
                .collect(),
            None => Ok(vec![self.route(model)?]),
        }
    }

    /// The configured aliases, for the model listings.
    pub fn aliases(&self) -> &[Alias] {
        &self.aliases
    }

    /// Each backend's name, kind, upstream servers' states and, where it has keys,
    /// which rest (by variable name, never the key), for `/health`.
    pub fn health(&self) -> Vec<serde_json::Value> {
        self.backends
            .iter()
            .zip(&self.pools)
            .map(|((name, backend), pool)| {
                let mut entry = serde_json::json!({"name": name, "kind": backend.kind_name()});
                if let Some(pool) = pool {
                    entry["upstreams"] = serde_json::Value::from(pool.report());
                    entry["available"] = serde_json::Value::from(pool.any_healthy());
                    if let Some(keys) = pool.key_report() {
                        entry["keys"] = serde_json::Value::from(keys);
                    }
                }
                entry
            })
            .collect()
    }

    /// Every backend with its name, in configuration order.
    pub fn backends(&self) -> impl Iterator<Item = (&str, &Backend)> {
        self.backends
            .iter()
            .map(|(name, backend)| (name.as_str(), backend))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn router(default: Option<&str>) -> Router {
        let mut toml = String::new();
        if let Some(name) = default {
            toml.push_str(&format!("[routing]\ndefault_backend = \"{name}\"\n"));
        }
        toml.push_str(
            "[[backends]]\nname = \"ollama\"\nkind = \"ollama\"\nurl = \"http://127.0.0.1:1\"\n",
        );
        toml.push_str("[[backends]]\nname = \"local\"\nkind = \"echo\"\n");
        let config = Config::from_toml(&toml).unwrap();
        Router::new(&config, &Pools::for_config(&config))
    }

    #[test]
    fn prefix_picks_the_backend_and_is_removed() {
        let router = router(Some("local"));
        let route = router.route("ollama/hf.co/x/y:q4").unwrap();
        assert_eq!(
            (route.name, route.backend.kind_name()),
            ("ollama", "ollama")
        );
        assert_eq!(route.model, "hf.co/x/y:q4");
        let route = router.route("gpt-4o-mini").unwrap();
        assert_eq!((route.name, route.backend.kind_name()), ("local", "echo"));
        assert_eq!(route.model, "gpt-4o-mini");
        // An unknown prefix is part of the name.
        assert_eq!(router.route("hf.co/x/y").unwrap().model, "hf.co/x/y");
    }

    #[test]
    fn an_alias_resolves_to_its_targets_in_order() {
        let toml = "[[models]]\nname = \"chat\"\ntargets = [\"local/a\", \"ollama/b\"]\n[[backends]]\nname = \"ollama\"\nkind = \"ollama\"\nurl = \"http://127.0.0.1:1\"\n[[backends]]\nname = \"local\"\nkind = \"echo\"\n";
        let config = Config::from_toml(toml).unwrap();
        let router = Router::new(&config, &Pools::for_config(&config));
        let routes = router.resolve("chat").unwrap();
        let names: Vec<(&str, &str)> = routes.iter().map(|r| (r.name, r.model)).collect();
        assert_eq!(names, vec![("local", "a"), ("ollama", "b")]);
        assert_eq!(router.resolve("local/x").unwrap().len(), 1);
    }

    #[test]
    fn a_pattern_alias_takes_the_names_it_matches_after_exact_names() {
        let toml = "[[models]]\nname = \"claude-*\"\ntargets = [\"local/small\"]\n[[models]]\nname = \"claude-opus-9\"\ntargets = [\"ollama/big\"]\n[[backends]]\nname = \"ollama\"\nkind = \"ollama\"\nurl = \"http://127.0.0.1:1\"\n[[backends]]\nname = \"local\"\nkind = \"echo\"\n";
        let config = Config::from_toml(toml).unwrap();
        let router = Router::new(&config, &Pools::for_config(&config));
        let first = |name: &str| {
            let routes = router.resolve(name).unwrap();
            (routes[0].name.to_owned(), routes[0].model.to_owned())
        };
        assert_eq!(
            first("claude-haiku-4-5-20251001"),
            ("local".into(), "small".into())
        );
        assert_eq!(first("claude-opus-9"), ("ollama".into(), "big".into()));
        assert!(router.resolve("gpt-4o").is_err());
        assert!(Config::from_toml("[[models]]\nname = \"a[\"\ntargets = [\"local/x\"]\n[[backends]]\nname = \"local\"\nkind = \"echo\"\n")
            .unwrap_err()
            .to_string()
            .contains("models[0].name"));
    }

    #[test]
    fn no_default_means_not_found() {
        let router = router(None);
        assert_eq!(
            router.route("llama3").err(),
            Some(GatewayError::ModelNotFound("llama3".into()))
        );
        assert!(router.route("ollama/").is_err());
    }
}

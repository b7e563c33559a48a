//! switchyard: one front door for local and cloud LLMs. It serves the OpenAI and Ollama
//! APIs, routes each request by model-name prefix to an OpenAI-compatible, Ollama or
//! built-in echo backend, and translates requests, answers and streams between them.
//!
//! The library builds the whole server so that tests start exactly what the binary runs.

pub mod auth;
pub mod backend;
pub mod chat;
pub mod cluster;
pub mod config;
pub mod console;
pub mod dialect;
pub mod embed;
pub mod error;
pub mod framing;
mod hangup;
pub mod keys;
pub mod limits;
pub mod metrics;
pub mod peer;
pub mod pipeline;
pub mod queue;
pub mod router;
mod routes;
pub mod server;
pub mod timing;
pub mod usage;

pub use config::Config;
pub use server::{serve, start, Shared};

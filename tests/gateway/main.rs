//! Black-box tests of the gateway over real HTTP on loopback, with a mock upstream that
//! is a real server too. One test binary, so the suite links once.

mod harness;

mod access;
mod agents;
mod anthropic;
mod anthropic_backend;
mod auth;
mod console;
mod errors;
mod failover;
mod long_bodies;
mod matrix;
mod providers;
mod queue;
mod responses;
mod routes;
mod streams;
mod translation;
mod usage;

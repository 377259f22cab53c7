//! A small Spin-compatible host for tests, built on wasmtime.
//!
//! It loads the real `.wasm` components named in `spin.toml`, routes HTTP by the manifest,
//! resolves variables, enforces `allowed_outbound_hosts`, and implements exactly the Spin
//! interfaces flashclaim imports (Redis, Postgres, variables, the cron export) with Spin's
//! semantics, for WASIp2 components (a fresh instance per request) and WASIp3 components
//! (instances reused as Spin 4 reuses them). It is test infrastructure and a local runner,
//! not a product runtime.

mod app;
mod bindings;
pub mod client;
pub mod cron;
pub mod manifest;
pub mod outbound;
mod pg_host;
mod redis_host;
pub mod router;
pub mod server;
mod state;
pub mod variables;

pub use app::{
    component_imports, App, AppConfig, HttpWorld, DEFAULT_MAX_INSTANCE_CONCURRENT_REUSE_COUNT,
    DEFAULT_MAX_INSTANCE_REUSE_COUNT, IDLE_INSTANCE_TIMEOUT,
};
pub use redis_host::{flatten as flatten_redis_reply, Flat};
pub use server::RunningServer;

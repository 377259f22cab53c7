//! flashclaim's domain logic, shared by every component: validation, JWT, Redis key naming,
//! Lua script arguments and reply decoding, response bodies and error mapping.
//!
//! No I/O and no spin-sdk: components own the connections and hand this crate the bytes.
//! Each use case follows parse → apply → encode, where only `apply` (in the component)
//! talks to Redis or Postgres.

pub mod activity;
pub mod admin;
pub mod auth;
pub mod buckets;
pub mod captcha;
pub mod claim;
pub mod claim_cache;
pub mod client_addr;
pub mod cluster;
pub mod codes;
pub mod cors;
pub mod drain;
pub mod drain_token;
pub mod error;
pub mod http;
pub mod ids;
pub mod jwt;
pub mod keys;
pub mod listing;
pub mod log;
pub mod login;
pub mod metrics;
pub mod qr;
pub mod rotation;
pub mod scripts;
pub mod shards;
pub mod throttle;
pub mod ticket;
pub mod ticket_type;
pub mod time;
pub mod topology;

pub use error::ApiError;
pub use http::HttpResponse;

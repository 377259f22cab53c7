//! What the test host's test files share: the addresses of the stores `scripts/services.sh`
//! started, and small helpers for reading the fixtures' answers.
#![allow(dead_code)]

use std::collections::HashMap;
use std::path::PathBuf;

/// `services.env` of the test stores (`FLASHCLAIM_DATA`, else `.data/test`).
pub fn services() -> HashMap<String, String> {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..");
    let env = std::fs::read_to_string(
        std::env::var_os("FLASHCLAIM_DATA")
            .map_or_else(|| root.join(".data/test"), PathBuf::from)
            .join("services.env"),
    )
    .expect(
        "no .data/test/services.env: run the tests through `make test` (it starts Redis and Postgres)",
    );
    env.lines()
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

/// wit-bindgen prefixes variants with their type in `Debug` (`RedisResult::Int64(1)`);
/// the assertions leave it out.
pub fn bare(text: &str) -> String {
    [
        "RedisResult::",
        "DbDataType::",
        "DbValue::",
        "QueryError::",
        "ErrorCode::",
        "Error::",
    ]
    .iter()
    .fold(text.to_string(), |t, prefix| t.replace(prefix, ""))
}

/// A name no other run of the tests uses.
pub fn unique(prefix: &str) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    format!("{prefix}{nanos}")
}

//! Embeds each Lua script of `lua/` with its SHA1, computed here once so components never
//! hash at run time (every request is a fresh instance in Spin).

use sha1::{Digest, Sha1};
use std::fmt::Write as _;

const SCRIPTS: &[&str] = &[
    "claim",
    "publish",
    "drain_read",
    "drain_ack",
    "return",
    "redeem",
    "pass",
    "pool",
    "view",
    "stocks",
    "login",
    "metrics",
    "tally",
    "lend",
    "credit",
];

fn main() {
    let lua_dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../lua");
    let mut out = String::new();
    for name in SCRIPTS {
        let path = lua_dir.join(format!("{name}.lua"));
        println!("cargo:rerun-if-changed={}", path.display());
        let source =
            std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        let sha: String = Sha1::digest(source.as_bytes())
            .iter()
            .fold(String::new(), |mut s, b| {
                let _ = write!(s, "{b:02x}");
                s
            });
        let upper = name.to_uppercase();
        writeln!(
            out,
            "pub const {upper}: Script = Script {{ name: {name:?}, source: include_str!({path:?}), sha1: {sha:?} }};",
            path = path.display().to_string()
        )
        .unwrap();
    }
    let dest = std::path::Path::new(&std::env::var("OUT_DIR").unwrap()).join("scripts.rs");
    std::fs::write(dest, out).unwrap();
}

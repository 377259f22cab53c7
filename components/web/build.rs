//! Embeds the pages and assets under `assets/` in the component.
//!
//! Every asset is served under `/assets/<version>/`, where the version is a hash of all of
//! them: any change gives every asset a new address, so browsers may keep them forever
//! (`immutable`) while JavaScript modules keep importing each other by plain relative
//! names. The two pages (`h5.html`, `console.html`) are served with `no-cache` and get the
//! versioned prefix written into them here, in place of `{{assets}}`. Cargo only: no npm,
//! no bundler.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

/// FNV-1a, 64 bits: a stable fingerprint with no dependency (not a security hash).
fn fnv(bytes: &[u8], mut h: u64) -> u64 {
    for b in bytes {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x100_0000_01b3);
    }
    h
}
const FNV_START: u64 = 0xcbf2_9ce4_8422_2325;

fn content_type(path: &Path) -> Option<&'static str> {
    Some(match path.extension()?.to_str()? {
        "html" => "text/html; charset=utf-8",
        "js" => "text/javascript; charset=utf-8",
        "css" => "text/css; charset=utf-8",
        "svg" => "image/svg+xml",
        "png" => "image/png",
        "json" => "application/json",
        _ => return None,
    })
}

fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
    let mut entries: Vec<_> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .collect();
    entries.sort();
    for path in entries {
        if path.is_dir() {
            walk(&path, out);
        } else if content_type(&path).is_some() {
            out.push(path);
        }
    }
}

fn main() {
    let root = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").unwrap()).join("assets");
    let out_dir = PathBuf::from(std::env::var("OUT_DIR").unwrap());
    println!("cargo:rerun-if-changed={}", root.display());
    let mut files = Vec::new();
    walk(&root, &mut files);

    let mut version = FNV_START;
    let mut assets = Vec::new();
    let mut pages = Vec::new();
    for path in &files {
        println!("cargo:rerun-if-changed={}", path.display());
        let name = path
            .strip_prefix(&root)
            .unwrap()
            .to_str()
            .expect("asset names are UTF-8")
            .replace('\\', "/");
        let bytes = std::fs::read(path).unwrap();
        if path.parent() == Some(root.as_path()) && name.ends_with(".html") {
            pages.push((name, bytes));
        } else {
            version = fnv(&bytes, fnv(name.as_bytes(), version));
            assets.push((name, path.clone(), bytes));
        }
    }
    let version = format!("{:012x}", version >> 16);

    let mut code = String::new();
    writeln!(code, "pub const VERSION: &str = {version:?};").unwrap();
    writeln!(code, "pub static ASSETS: &[Embedded] = &[").unwrap();
    for (name, path, bytes) in &assets {
        writeln!(
            code,
            "    Embedded {{ name: {name:?}, content_type: {:?}, etag: \"\\\"{:016x}\\\"\", body: include_bytes!({:?}) }},",
            content_type(path).unwrap(),
            fnv(bytes, FNV_START),
            path.display().to_string()
        )
        .unwrap();
    }
    writeln!(code, "];").unwrap();
    writeln!(code, "pub static PAGES: &[Embedded] = &[").unwrap();
    for (name, bytes) in &pages {
        let text = String::from_utf8(bytes.clone()).expect("pages are UTF-8");
        let text = text.replace("{{assets}}", &format!("/assets/{version}"));
        let generated = out_dir.join(name);
        std::fs::write(&generated, &text).unwrap();
        writeln!(
            code,
            "    Embedded {{ name: {name:?}, content_type: \"text/html; charset=utf-8\", etag: \"\\\"{:016x}\\\"\", body: include_bytes!({:?}) }},",
            fnv(text.as_bytes(), FNV_START),
            generated.display().to_string()
        )
        .unwrap();
    }
    writeln!(code, "];").unwrap();
    std::fs::write(out_dir.join("embedded.rs"), code).unwrap();
}

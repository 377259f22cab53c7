//! An edge cache in front of flashclaim, measured (`make bench-edge`; needs nginx, Debian's
//! `nginx-light` is enough): 2,000 clients refresh one activity's detail for 10 s during a
//! claim storm on the same activity, once straight at the app and once through nginx's
//! `proxy_cache` (honouring the app's `Cache-Control: public, max-age=...`). It reports
//! what the origin sees (detail requests/s) and the claims/s, and asserts that the cache
//! takes the detail load off the origin and that no claim is ever answered by the cache.

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use flashclaim_tests::edge::{start_nginx, Nginx};
use flashclaim_tests::*;
use spin_test_host::client::HttpClient;

const READERS: usize = 2_000;
const CLAIMERS: usize = 64;
const SECONDS: u64 = 10;

/// nginx as an edge cache in front of `origin` (`host:port`), logging for every request
/// whether the origin was asked.
async fn start_cache(origin: &str) -> Nginx {
    start_nginx(
        "edge",
        origin,
        "proxy_cache_path {dir}/cache keys_zone=edge:10m max_size=100m inactive=60s use_temp_path=off;",
        r#"
        location / {
            proxy_pass http://origin;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            # The app's Cache-Control decides what is kept and for how long; nginx keeps
            # nothing else (POST is never cached: proxy_cache_methods is GET HEAD).
            proxy_cache edge;
            # One origin request per expiry, not one per waiting client.
            proxy_cache_lock on;
            proxy_cache_use_stale updating;
        }"#,
    )
    .await
}

struct Phase {
    details: u64,
    claims: u64,
    /// Claims that got no answer within the client's 10 s, or an error status (counted
    /// apart: an overloaded runtime may answer 5xx itself).
    timeouts: u64,
    errors: u64,
    claim_ids: Vec<String>,
}

/// READERS clients refresh the detail and CLAIMERS clients claim as fresh users, all at
/// `base`, for SECONDS.
async fn storm(base: &str, id: i64, tag: &str, readers_count: usize) -> Phase {
    let stop = Arc::new(AtomicBool::new(false));
    let details = Arc::new(AtomicU64::new(0));
    let mut readers = Vec::new();
    for _ in 0..readers_count {
        let (stop, details) = (stop.clone(), details.clone());
        let client = HttpClient::new(base).with_timeout(Duration::from_secs(10));
        readers.push(tokio::spawn(async move {
            let path = format!("/api/activities/{id}");
            while !stop.load(Ordering::Relaxed) {
                if let Ok(r) = client.get(&path).await {
                    if r.status == 200 {
                        details.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
        }));
    }
    let mut claimers = Vec::new();
    for c in 0..CLAIMERS {
        let stop = stop.clone();
        let client = HttpClient::new(base).with_timeout(Duration::from_secs(10));
        let tag = tag.to_string();
        claimers.push(tokio::spawn(async move {
            let (mut ids, mut timeouts, mut errors) = (Vec::new(), 0u64, 0u64);
            let mut n = 0;
            while !stop.load(Ordering::Relaxed) {
                let auth = bearer(&token(&format!("{tag}-{c}-{n}"), None));
                n += 1;
                let path = format!("/api/activities/{id}/claims");
                let headers = [
                    ("authorization", auth.as_str()),
                    ("content-type", "application/json"),
                ];
                match client.send("POST", &path, &headers, "").await {
                    Ok(r) if r.status == 201 => {
                        ids.push(r.json()["claim_id"].as_str().unwrap().to_string());
                    }
                    Ok(r) => {
                        assert!(r.status >= 500, "{}: {}", r.status, r.text());
                        errors += 1;
                    }
                    Err(_) => timeouts += 1,
                }
            }
            (ids, timeouts, errors)
        }));
    }
    tokio::time::sleep(Duration::from_secs(SECONDS)).await;
    stop.store(true, Ordering::Relaxed);
    let (mut claim_ids, mut timeouts, mut errors) = (Vec::new(), 0, 0);
    for c in claimers {
        let (ids, lost, failed) = c.await.unwrap();
        claim_ids.extend(ids);
        timeouts += lost;
        errors += failed;
    }
    for r in readers {
        r.await.unwrap();
    }
    Phase {
        details: details.load(Ordering::Relaxed),
        claims: claim_ids.len() as u64,
        timeouts,
        errors,
        claim_ids,
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn an_edge_cache_takes_the_detail_load_off_the_origin_and_never_caches_a_claim() {
    let t = TestApp::start().await;
    let id = t.create_activity(10_000_000, "").await;
    t.publish(id).await;
    let detail = t.detail(id, None).await;
    let cache_control = detail.header("cache-control").unwrap_or("").to_string();
    assert!(
        cache_control.starts_with("public, max-age="),
        "the detail must be cacheable by an edge: {cache_control:?}"
    );
    let origin = t
        .client
        .base_url()
        .trim_start_matches("http://")
        .to_string();

    // The claim storm alone, for scale; then with the refreshes and no cache: every
    // refresh reaches the origin.
    let alone = storm(t.client.base_url(), id, "alone", 0).await;
    let direct = storm(t.client.base_url(), id, "direct", READERS).await;

    // Through the edge cache: the origin sees what nginx forwards.
    let edge = start_cache(&origin).await;
    let cached = storm(&edge.base, id, "edge", READERS).await;
    let log = std::fs::read_to_string(edge.dir.join("access.log")).unwrap();
    let detail_path = format!("/api/activities/{id}");
    let claims_path = format!("/api/activities/{id}/claims");
    let (mut origin_details, mut edge_details, mut forwarded_claims) = (0u64, 0u64, 0u64);
    for line in log.lines() {
        let f: Vec<&str> = line.split(' ').collect();
        let (method, uri, cache, upstream) = (f[0], f[1], f[3], f[4]);
        if method == "GET" && uri == detail_path {
            edge_details += 1;
            origin_details += u64::from(upstream != "-");
        } else if method == "POST" && uri == claims_path {
            // Never answered from the cache: every claim went to the origin, uncached.
            assert_ne!(upstream, "-", "a claim answered without the origin: {line}");
            assert!(
                cache == "-" || cache == "BYPASS",
                "claim cache status: {line}"
            );
            forwarded_claims += 1;
        }
    }
    let distinct: HashSet<&String> = cached.claim_ids.iter().collect();
    assert_eq!(
        distinct.len() as u64,
        cached.claims,
        "a claim answer was repeated"
    );
    assert!(forwarded_claims >= cached.claims);

    let per_sec = |n: u64| n as f64 / SECONDS as f64;
    println!(
        "edge cache, {READERS} clients refreshing the detail + {CLAIMERS} claiming for \
         {SECONDS} s ({cache_control}):\n\
         | | detail answers/s to clients | detail requests/s at the origin | claims/s | claims without an answer in 10 s / answered 5xx |\n\
         |---|---|---|---|---|\n\
         | claims alone, no readers | – | – | {:.0} | {} / {} |\n\
         | no cache | {:.0} | {:.0} | {:.0} | {} / {} |\n\
         | nginx proxy_cache | {:.0} | {:.1} | {:.0} | {} / {} |",
        per_sec(alone.claims),
        alone.timeouts,
        alone.errors,
        per_sec(direct.details),
        per_sec(direct.details),
        per_sec(direct.claims),
        direct.timeouts,
        direct.errors,
        per_sec(edge_details),
        per_sec(origin_details),
        per_sec(cached.claims),
        cached.timeouts,
        cached.errors,
    );
    assert!(direct.details > 0 && cached.details > 0);
    assert!(
        origin_details * 20 < direct.details,
        "the cache left the origin {origin_details} detail requests against {} without it",
        direct.details
    );
    assert!(
        cached.claims * 10 >= direct.claims * 9,
        "claims/s fell behind the cache: {} against {} without",
        cached.claims,
        direct.claims
    );
}

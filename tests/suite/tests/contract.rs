//! The API document (`docs/openapi.json`, OpenAPI 3.1) against the service: every route in
//! spin.toml is documented, every documented path is routed, and every status and problem
//! code the components can answer appears in it. Needs no services.

use std::collections::BTreeSet;

use flashclaim_core::ApiError;

fn document() -> serde_json::Value {
    let text = std::fs::read_to_string(flashclaim_tests::root().join("docs/openapi.json")).unwrap();
    serde_json::from_str(&text).expect("docs/openapi.json is JSON")
}

/// spin.toml's API routes, `:param` written as OpenAPI's `{param}`. The `web` component's
/// routes serve pages, not API: the browser tier (tests/browser) is their contract.
fn manifest_routes() -> Vec<String> {
    let manifest: toml::Value = toml::from_str(
        &std::fs::read_to_string(flashclaim_tests::root().join("spin.toml")).unwrap(),
    )
    .unwrap();
    manifest["trigger"]["http"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|t| t["component"].as_str() != Some("web"))
        .map(|t| {
            t["route"]
                .as_str()
                .unwrap()
                .split('/')
                .map(|s| match s.strip_prefix(':') {
                    Some(p) => format!("{{{p}}}"),
                    None => s.to_string(),
                })
                .collect::<Vec<_>>()
                .join("/")
        })
        .collect()
}

fn documented_paths() -> Vec<String> {
    document()["paths"]
        .as_object()
        .unwrap()
        .keys()
        .cloned()
        .collect()
}

#[test]
fn the_document_is_openapi_3_1() {
    assert_eq!(document()["openapi"], "3.1.0");
}

#[test]
fn every_route_in_the_manifest_is_documented() {
    let paths = documented_paths();
    for route in manifest_routes() {
        let covered = match route.strip_suffix("/...") {
            Some(prefix) => paths
                .iter()
                .any(|p| p.starts_with(&format!("{prefix}/")) || *p == prefix),
            None => paths.contains(&route),
        };
        assert!(
            covered,
            "route {route} of spin.toml is not in docs/openapi.json"
        );
    }
}

#[test]
fn every_documented_path_is_routed_by_the_manifest() {
    let routes = manifest_routes();
    for path in documented_paths() {
        let routed = routes.iter().any(|r| match r.strip_suffix("/...") {
            Some(prefix) => path.starts_with(&format!("{prefix}/")) || path == prefix,
            None => *r == path,
        });
        assert!(
            routed,
            "{path} is documented but no component is routed for it"
        );
    }
}

#[test]
fn every_status_and_code_the_service_answers_is_documented() {
    let doc = document();
    let codes: BTreeSet<&str> = doc["components"]["schemas"]["Problem"]["properties"]["code"]
        ["enum"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c.as_str().unwrap())
        .collect();
    let mut statuses = BTreeSet::new();
    for item in doc["paths"].as_object().unwrap().values() {
        for operation in item.as_object().unwrap().values() {
            for status in operation["responses"].as_object().unwrap().keys() {
                statuses.insert(status.clone());
            }
        }
    }
    for e in ApiError::examples() {
        assert!(
            codes.contains(e.code()),
            "code {} is not in the Problem schema",
            e.code()
        );
        assert!(
            statuses.contains(&e.status().to_string()),
            "status {} is never documented",
            e.status()
        );
        // And the documented text says which operations answer it.
        assert!(
            doc.to_string().contains(&format!("`{}`", e.code())),
            "no operation names `{}`",
            e.code()
        );
    }
    assert_eq!(
        codes.len(),
        ApiError::examples()
            .iter()
            .map(ApiError::code)
            .collect::<BTreeSet<_>>()
            .len(),
        "no stale codes"
    );
}

/// spin.toml is spin.wasip3.toml for every Spin: the same app in every respect but the
/// sources of the components that have a WASIp3 build, the flavour the drain reports, and
/// without the cron trigger and
/// the component it runs (a Spin without the cron plugin refuses a manifest naming it), so
/// the two can never drift apart.
#[test]
fn the_default_manifest_is_the_wasip3_one_with_wasip2_builds_and_no_cron_trigger() {
    let read = |name: &str| -> toml::Value {
        toml::from_str(&std::fs::read_to_string(flashclaim_tests::root().join(name)).unwrap())
            .unwrap()
    };
    let mut p3 = read("spin.wasip3.toml");
    let mut p2 = read("spin.toml");
    let source = |m: &toml::Value, id: &str| m["component"][id]["source"].clone();
    for (id, wasip3, wasip2) in [
        ("claim", "flashclaim_claim_p3.wasm", "flashclaim_claim.wasm"),
        (
            "sessions",
            "flashclaim_sessions_p3.wasm",
            "flashclaim_auth.wasm",
        ),
    ] {
        let path = |file: &str| format!("target/wasm32-wasip2/release/{file}");
        assert_eq!(source(&p3, id).as_str(), Some(path(wasip3).as_str()));
        assert_eq!(source(&p2, id).as_str(), Some(path(wasip2).as_str()));
        p2["component"][id]["source"] = source(&p3, id);
    }
    // The drain names its manifest's flavour for /metrics (flashclaim_build_info).
    let flavour = |m: &toml::Value| m["component"]["drain"]["variables"]["manifest"].clone();
    assert_eq!(flavour(&p3).as_str(), Some("wasip3"));
    assert_eq!(flavour(&p2).as_str(), Some("wasip2"));
    p2["component"]["drain"]["variables"]["manifest"] = flavour(&p3);
    let p3_triggers = p3["trigger"].as_table_mut().unwrap();
    assert!(
        p3_triggers.remove("cron").is_some(),
        "spin.wasip3.toml drains on the cron trigger"
    );
    assert!(
        p3["component"]
            .as_table_mut()
            .unwrap()
            .remove("drain-cron")
            .is_some(),
        "spin.wasip3.toml has the drain's cron component"
    );
    assert_eq!(
        p2["trigger"].as_table().unwrap().keys().collect::<Vec<_>>(),
        ["http"],
        "spin.toml names the HTTP trigger only, which every Spin has built in"
    );
    assert_eq!(
        p2, p3,
        "spin.toml differs from spin.wasip3.toml beyond the claim and sessions sources and the cron trigger"
    );
}

//! deploy/ against spin.toml, so the two cannot drift: every Kubernetes manifest parses,
//! the SpinApp supplies every required variable and only declared ones, every Secret key
//! it or a Job reads exists in the Secret template, the image pushed is the image run,
//! the Redis StatefulSet is what `redis_address` lists, the manifest pushed to SpinKube
//! keeps every component but the cron one, and the `spin up` host's environment supplies
//! every required variable. Kubernetes manifests are JSON (kubectl applies JSON as it
//! does YAML), so no YAML parser is needed.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use flashclaim_tests::root;
use serde_json::Value;

struct Manifest {
    /// Variable name → required.
    variables: BTreeMap<String, bool>,
    components: BTreeSet<String>,
    http_routes: BTreeSet<(String, String)>,
    cron: usize,
}

fn manifest(text: &str) -> Manifest {
    let doc: toml::Value = toml::from_str(text).unwrap();
    let variables = doc["variables"]
        .as_table()
        .unwrap()
        .iter()
        .map(|(name, v)| {
            let required = v.get("required").and_then(toml::Value::as_bool) == Some(true);
            (name.clone(), required)
        })
        .collect();
    let components = doc["component"]
        .as_table()
        .unwrap()
        .keys()
        .cloned()
        .collect();
    let trigger = doc["trigger"].as_table().unwrap();
    let http_routes = trigger["http"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| {
            (
                t["route"].as_str().unwrap().to_string(),
                t["component"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    let cron = trigger
        .get("cron")
        .and_then(toml::Value::as_array)
        .map_or(0, Vec::len);
    Manifest {
        variables,
        components,
        http_routes,
        cron,
    }
}

fn spin_toml() -> Manifest {
    manifest(&std::fs::read_to_string(root().join("spin.toml")).unwrap())
}

fn files(dir: &Path, ext: &str, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            files(&path, ext, out);
        } else if path.extension().is_some_and(|e| e == ext) {
            out.push(path);
        }
    }
}

/// Every Kubernetes object under deploy/, `List`s flattened.
fn objects() -> Vec<(PathBuf, Value)> {
    let mut paths = Vec::new();
    files(&root().join("deploy"), "json", &mut paths);
    assert!(!paths.is_empty(), "no manifests in deploy/");
    let mut out = Vec::new();
    for path in paths {
        let doc: Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap())
            .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        let items = if doc["kind"] == "List" {
            doc["items"].as_array().unwrap().clone()
        } else {
            vec![doc]
        };
        for item in items {
            for field in ["apiVersion", "kind"] {
                assert!(item[field].is_string(), "{}: no {field}", path.display());
            }
            assert!(
                item["metadata"]["name"].is_string(),
                "{}: a {} without a name",
                path.display(),
                item["kind"]
            );
            out.push((path.clone(), item));
        }
    }
    out
}

fn one<'a>(objects: &'a [(PathBuf, Value)], kind: &str) -> &'a Value {
    let found: Vec<_> = objects.iter().filter(|(_, o)| o["kind"] == kind).collect();
    assert_eq!(found.len(), 1, "exactly one {kind} in deploy/");
    &found[0].1
}

/// Every `secretKeyRef` anywhere in a value.
fn secret_refs(v: &Value, out: &mut Vec<(String, String)>) {
    match v {
        Value::Object(map) => {
            if let Some(r) = map.get("secretKeyRef") {
                out.push((
                    r["name"].as_str().unwrap().to_string(),
                    r["key"].as_str().unwrap().to_string(),
                ));
            }
            map.values().for_each(|v| secret_refs(v, out));
        }
        Value::Array(items) => items.iter().for_each(|v| secret_refs(v, out)),
        _ => {}
    }
}

#[test]
fn the_spinapp_supplies_every_required_variable_and_only_declared_ones() {
    let spin = spin_toml();
    let objects = objects();
    let app = one(&objects, "SpinApp");
    assert_eq!(app["apiVersion"], "core.spinkube.dev/v1alpha1");
    assert!(app["spec"]["replicas"].as_i64().unwrap() >= 2, "replicas");
    assert!(app["spec"]["resources"]["requests"]["cpu"].is_string());
    assert!(app["spec"]["resources"]["limits"]["memory"].is_string());
    let mut given = BTreeSet::new();
    for var in app["spec"]["variables"].as_array().unwrap() {
        let name = var["name"].as_str().unwrap().to_string();
        assert!(
            spin.variables.contains_key(&name),
            "the SpinApp sets `{name}`, which spin.toml does not declare"
        );
        assert!(
            var["value"].is_string() != var["valueFrom"].is_object(),
            "`{name}`: a value or a valueFrom"
        );
        assert!(given.insert(name.clone()), "`{name}` set twice");
    }
    for (name, required) in &spin.variables {
        if *required {
            assert!(
                given.contains(name),
                "required variable `{name}` not supplied"
            );
        }
    }
    // Secrets come from the Secret, never as literals.
    for name in ["jwt_secret", "ticket_secret", "pg_address"] {
        let var = app["spec"]["variables"]
            .as_array()
            .unwrap()
            .iter()
            .find(|v| v["name"] == name)
            .unwrap();
        assert!(
            var["valueFrom"]["secretKeyRef"].is_object(),
            "`{name}` must come from a Secret"
        );
    }
}

#[test]
fn every_secret_key_read_exists_in_the_secret_template() {
    let objects = objects();
    let secrets: BTreeMap<String, BTreeSet<String>> = objects
        .iter()
        .filter(|(_, o)| o["kind"] == "Secret")
        .map(|(_, o)| {
            let keys = o["stringData"]
                .as_object()
                .unwrap()
                .keys()
                .cloned()
                .collect();
            (o["metadata"]["name"].as_str().unwrap().to_string(), keys)
        })
        .collect();
    let mut checked = 0;
    for (path, object) in &objects {
        let mut refs = Vec::new();
        secret_refs(object, &mut refs);
        for (name, key) in refs {
            let keys = secrets
                .get(&name)
                .unwrap_or_else(|| panic!("{}: no Secret `{name}` in deploy/", path.display()));
            assert!(
                keys.contains(&key),
                "{}: Secret `{name}` has no key `{key}`",
                path.display()
            );
            checked += 1;
        }
    }
    assert!(checked >= 5, "only {checked} secret references found");
}

#[test]
fn the_image_run_is_the_image_pushed_and_the_pushed_manifest_keeps_every_http_component() {
    let push = root().join("deploy/kubernetes/push.sh");
    let script = std::fs::read_to_string(&push).unwrap();
    let image = script
        .lines()
        .find_map(|l| l.strip_prefix("IMAGE=${IMAGE:-"))
        .and_then(|l| l.strip_suffix('}'))
        .expect("push.sh names its default image as IMAGE=${IMAGE:-...}");
    let objects = objects();
    assert_eq!(one(&objects, "SpinApp")["spec"]["image"], image);

    let out = std::process::Command::new("bash")
        .arg(&push)
        .arg("--print-manifest")
        .output()
        .unwrap();
    assert!(out.status.success());
    let pushed = manifest(&String::from_utf8(out.stdout).unwrap());
    let spin = spin_toml();
    // containerd-shim-spin refuses an app with a cron trigger; the ticker drains instead.
    assert_eq!(pushed.cron, 0);
    assert!(
        spin.cron > 0,
        "spin.toml has the cron trigger the push removes"
    );
    let mut expected = spin.components.clone();
    assert!(expected.remove("drain-cron"));
    assert_eq!(pushed.components, expected);
    assert_eq!(pushed.http_routes, spin.http_routes);
    assert_eq!(pushed.variables, spin.variables);
    assert!(
        pushed.http_routes.iter().any(|(r, _)| r == "/admin/drain"),
        "the ticker needs POST /admin/drain"
    );
}

#[test]
fn redis_address_lists_exactly_the_statefulset_primaries_with_aof_always() {
    let objects = objects();
    let set = one(&objects, "StatefulSet");
    let name = set["metadata"]["name"].as_str().unwrap();
    let service = set["spec"]["serviceName"].as_str().unwrap();
    let namespace = set["metadata"]["namespace"].as_str().unwrap();
    let replicas = set["spec"]["replicas"].as_i64().unwrap();
    let headless = objects
        .iter()
        .find(|(_, o)| o["kind"] == "Service" && o["metadata"]["name"] == service)
        .map(|(_, o)| o)
        .expect("the StatefulSet's service");
    assert_eq!(headless["spec"]["clusterIP"], "None");
    assert!(set["spec"]["volumeClaimTemplates"][0]["metadata"]["name"].is_string());

    let app = one(&objects, "SpinApp");
    let address = app["spec"]["variables"]
        .as_array()
        .unwrap()
        .iter()
        .find(|v| v["name"] == "redis_address")
        .and_then(|v| v["value"].as_str())
        .unwrap();
    let expected: Vec<String> = (0..replicas)
        .map(|i| format!("redis://{name}-{i}.{service}.{namespace}.svc.cluster.local:6379"))
        .collect();
    assert_eq!(address.split(',').collect::<Vec<_>>(), expected);

    let config = objects
        .iter()
        .find(|(_, o)| o["kind"] == "ConfigMap" && o["data"]["redis.conf"].is_string())
        .map(|(_, o)| o["data"]["redis.conf"].as_str().unwrap())
        .expect("redis.conf");
    for line in [
        "appendonly yes",
        "appendfsync always",
        "maxmemory-policy noeviction",
    ] {
        assert!(config.lines().any(|l| l == line), "redis.conf: {line}");
    }
}

#[test]
fn the_drain_ticker_calls_the_spinapp_service() {
    let objects = objects();
    let app = one(&objects, "SpinApp");
    let url = format!(
        "http://{}.{}.svc.cluster.local",
        app["metadata"]["name"].as_str().unwrap(),
        app["metadata"]["namespace"].as_str().unwrap()
    );
    let ticker = objects
        .iter()
        .find(|(_, o)| o["metadata"]["name"] == "flashclaim-drain-ticker")
        .map(|(_, o)| o)
        .unwrap();
    let container = &ticker["spec"]["template"]["spec"]["containers"][0];
    let app_env = container["env"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["name"] == "APP")
        .unwrap();
    assert_eq!(app_env["value"], url);
    let loop_text = container["args"][0].as_str().unwrap();
    assert!(loop_text.contains("/admin/drain") && loop_text.contains("sleep 1"));
}

#[test]
fn the_spin_up_host_environment_supplies_every_required_variable() {
    let spin = spin_toml();
    let env =
        std::fs::read_to_string(root().join("deploy/spin-up/flashclaim.env.example")).unwrap();
    let set: BTreeSet<String> = env
        .lines()
        .filter_map(|l| l.strip_prefix("SPIN_VARIABLE_"))
        .filter_map(|l| l.split_once('='))
        .map(|(name, _)| name.to_lowercase())
        .collect();
    for name in &set {
        assert!(
            spin.variables.contains_key(name),
            "`{name}` is not declared"
        );
    }
    for (name, required) in &spin.variables {
        if *required {
            assert!(set.contains(name), "required `{name}` missing");
        }
    }
    let unit = std::fs::read_to_string(root().join("deploy/spin-up/flashclaim.service")).unwrap();
    assert!(unit.contains("EnvironmentFile=/etc/flashclaim/flashclaim.env"));
    assert!(unit.contains("spin up --from /opt/flashclaim/spin.toml"));
}

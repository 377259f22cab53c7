//! deploy/ against the manifests, so they cannot drift: every Kubernetes manifest parses;
//! each SpinApp (containerd-shim-spin with spin.toml, the Spin 4.1 Spintainer executor with
//! spin.wasip3.toml) supplies every required variable of its manifest and only declared
//! ones, secrets from the Secret; every Secret key read exists in the Secret template; the
//! image pushed is the image run, and the manifest pushed is the one its runtime can run;
//! the Redis StatefulSet is what `redis_address` lists; the ticker, the CronJob, Akamai's
//! cron and the `spin up` host's drain unit call the drain with the drain token, never a
//! password; Akamai and the `spin up` host get every required variable. Kubernetes
//! manifests are JSON (kubectl applies JSON as it does YAML), so no YAML parser is needed.

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

fn read_manifest(name: &str) -> Manifest {
    manifest(&std::fs::read_to_string(root().join(name)).unwrap())
}

fn spin_toml() -> Manifest {
    read_manifest("spin.toml")
}

/// The flashclaim manifest a SpinApp runs: spin.toml on containerd-shim-spin (Spin 3.6,
/// WASIp2 and HTTP only); spin.wasip3.toml on an executor that runs a Spin image of its own.
fn manifest_of(objects: &[(PathBuf, Value)], app: &Value) -> &'static str {
    let executor = app["spec"]["executor"].as_str().unwrap();
    if executor == "containerd-shim-spin" {
        return "spin.toml";
    }
    let found = objects
        .iter()
        .find(|(_, o)| o["kind"] == "SpinAppExecutor" && o["metadata"]["name"] == executor)
        .unwrap_or_else(|| panic!("no SpinAppExecutor `{executor}` in deploy/"));
    let config = &found.1["spec"]["deploymentConfig"];
    assert!(
        config["spinImage"].is_string() && config["runtimeClassName"].is_null(),
        "`{executor}` runs a Spin image (Spintainer)"
    );
    "spin.wasip3.toml"
}

fn all<'a>(objects: &'a [(PathBuf, Value)], kind: &str) -> Vec<&'a Value> {
    let found: Vec<&Value> = objects
        .iter()
        .filter(|(_, o)| o["kind"] == kind)
        .map(|(_, o)| o)
        .collect();
    assert!(!found.is_empty(), "no {kind} in deploy/");
    found
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
fn each_spinapp_supplies_every_required_variable_of_its_manifest_and_only_declared_ones() {
    let objects = objects();
    let apps = all(&objects, "SpinApp");
    assert_eq!(apps.len(), 2, "the shim's SpinApp and the Spin 4.1 one");
    let mut manifests = BTreeSet::new();
    for app in apps {
        let name = manifest_of(&objects, app);
        manifests.insert(name);
        let spin = read_manifest(name);
        assert_eq!(app["apiVersion"], "core.spinkube.dev/v1alpha1");
        assert!(app["spec"]["replicas"].as_i64().unwrap() >= 2, "replicas");
        assert!(app["spec"]["resources"]["requests"]["cpu"].is_string());
        assert!(app["spec"]["resources"]["limits"]["memory"].is_string());
        let mut given = BTreeSet::new();
        for var in app["spec"]["variables"].as_array().unwrap() {
            let var_name = var["name"].as_str().unwrap().to_string();
            assert!(
                spin.variables.contains_key(&var_name),
                "the SpinApp sets `{var_name}`, which {name} does not declare"
            );
            assert!(
                var["value"].is_string() != var["valueFrom"].is_object(),
                "`{var_name}`: a value or a valueFrom"
            );
            assert!(given.insert(var_name.clone()), "`{var_name}` set twice");
        }
        for (var_name, required) in &spin.variables {
            if *required {
                assert!(
                    given.contains(var_name),
                    "required variable `{var_name}` of {name} not supplied"
                );
            }
        }
        // Secrets come from the Secret, never as literals.
        for secret in ["jwt_secret", "ticket_secret", "pg_address", "drain_token"] {
            let var = app["spec"]["variables"]
                .as_array()
                .unwrap()
                .iter()
                .find(|v| v["name"] == secret)
                .unwrap_or_else(|| panic!("the SpinApp of {name} sets no `{secret}`"));
            assert!(
                var["valueFrom"]["secretKeyRef"].is_object(),
                "`{secret}` must come from a Secret"
            );
        }
    }
    assert_eq!(
        manifests,
        BTreeSet::from(["spin.toml", "spin.wasip3.toml"]),
        "one SpinApp for each manifest"
    );
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
fn each_image_run_is_the_image_pushed_with_the_manifest_its_runtime_runs() {
    let objects = objects();
    for (dir, expected_manifest) in [
        ("deploy/kubernetes", "spin.toml"),
        ("deploy/kubernetes-spin41", "spin.wasip3.toml"),
    ] {
        let push = root().join(dir).join("push.sh");
        let script = std::fs::read_to_string(&push).unwrap();
        let image = script
            .lines()
            .find_map(|l| l.strip_prefix("IMAGE=${IMAGE:-"))
            .and_then(|l| l.strip_suffix('}'))
            .expect("push.sh names its default image as IMAGE=${IMAGE:-...}");
        let app = objects
            .iter()
            .find(|(path, o)| o["kind"] == "SpinApp" && path.starts_with(root().join(dir)))
            .map(|(_, o)| o)
            .unwrap_or_else(|| panic!("no SpinApp in {dir}"));
        assert_eq!(app["spec"]["image"], image, "{dir}");
        assert_eq!(manifest_of(&objects, app), expected_manifest, "{dir}");

        let out = std::process::Command::new("bash")
            .arg(&push)
            .arg("--print-manifest")
            .output()
            .unwrap();
        assert!(out.status.success());
        let pushed = String::from_utf8(out.stdout).unwrap();
        assert_eq!(
            pushed,
            std::fs::read_to_string(root().join(expected_manifest)).unwrap(),
            "{dir}/push.sh pushes {expected_manifest} as it is"
        );
        let pushed = manifest(&pushed);
        assert!(
            pushed.http_routes.iter().any(|(r, _)| r == "/admin/drain"),
            "the schedulers need POST /admin/drain"
        );
        if expected_manifest == "spin.toml" {
            // containerd-shim-spin refuses an app with a cron trigger; the ticker or the
            // CronJob drains instead.
            assert_eq!(pushed.cron, 0);
            assert!(!pushed.components.contains("drain-cron"));
        } else {
            // The Spin image has the cron plugin, and the app its cron component.
            assert!(pushed.cron > 0 && pushed.components.contains("drain-cron"));
            let dockerfile = std::fs::read_to_string(root().join(dir).join("Dockerfile")).unwrap();
            assert!(dockerfile.contains("spin plugins install trigger-cron --yes"));
        }
    }
}

#[test]
fn redis_address_names_the_statefulsets_sentinel_group_with_aof_always_and_min_replicas() {
    let objects = objects();
    let set = one(&objects, "StatefulSet");
    let name = set["metadata"]["name"].as_str().unwrap();
    let service = set["spec"]["serviceName"].as_str().unwrap();
    let namespace = set["metadata"]["namespace"].as_str().unwrap();
    let replicas = set["spec"]["replicas"].as_i64().unwrap();
    assert_eq!(
        replicas, 3,
        "a primary, two replicas, three sentinels (quorum 2)"
    );
    let headless = objects
        .iter()
        .find(|(_, o)| o["kind"] == "Service" && o["metadata"]["name"] == service)
        .map(|(_, o)| o)
        .expect("the StatefulSet's service");
    assert_eq!(headless["spec"]["clusterIP"], "None");
    let ports: BTreeSet<i64> = headless["spec"]["ports"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["port"].as_i64().unwrap())
        .collect();
    assert_eq!(ports, BTreeSet::from([6379, 26379]));
    assert!(set["spec"]["volumeClaimTemplates"][0]["metadata"]["name"].is_string());
    let containers: Vec<&str> = set["spec"]["template"]["spec"]["containers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["name"].as_str().unwrap())
        .collect();
    assert_eq!(
        containers,
        ["redis", "sentinel"],
        "each pod: Redis and a Sentinel"
    );

    let sentinels: Vec<String> = (0..replicas)
        .map(|i| format!("{name}-{i}.{service}.{namespace}.svc.cluster.local:26379"))
        .collect();
    let config = objects
        .iter()
        .find(|(_, o)| o["kind"] == "ConfigMap" && o["data"]["redis.conf"].is_string())
        .map(|(_, o)| &o["data"])
        .expect("redis.conf");
    let group = config["start-sentinel.sh"]
        .as_str()
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("sentinel monitor "))
        .and_then(|l| l.split_whitespace().next())
        .expect("the sentinels monitor a group");
    let expected = format!("redis-sentinel://{}#{group}", sentinels.join(","));
    for app in all(&objects, "SpinApp") {
        let value = |var: &str| {
            app["spec"]["variables"]
                .as_array()
                .unwrap()
                .iter()
                .find(|v| v["name"] == var)
                .and_then(|v| v["value"].as_str())
                .unwrap()
                .to_string()
        };
        assert_eq!(value("redis_address"), expected);
        // Components may reach the sentinels and whichever pod is primary.
        assert_eq!(
            value("redis_host"),
            format!("*.{service}.{namespace}.svc.cluster.local:*")
        );
    }
    let redis_conf = config["redis.conf"].as_str().unwrap();
    for line in [
        "appendonly yes",
        "appendfsync always",
        "maxmemory-policy noeviction",
        "min-replicas-to-write 1",
    ] {
        assert!(redis_conf.lines().any(|l| l == line), "redis.conf: {line}");
    }
}

/// The container that calls the drain in a ticker or CronJob: it calls the SpinApp's
/// service with the drain token from the Secret, and holds no password.
fn assert_calls_the_drain_with_the_token(container: &Value, app_url: &str) -> String {
    let env = container["env"].as_array().unwrap();
    let app_env = env.iter().find(|e| e["name"] == "APP").unwrap();
    assert_eq!(app_env["value"], app_url);
    let token = env.iter().find(|e| e["name"] == "DRAIN_TOKEN").unwrap();
    assert_eq!(
        token["valueFrom"]["secretKeyRef"]["key"], "drain_token",
        "the drain token comes from the Secret"
    );
    assert_eq!(env.len(), 2, "APP and DRAIN_TOKEN only: {env:?}");
    let script = container["args"][0].as_str().unwrap().to_string();
    assert!(script.contains("-X POST") && script.contains("\"$APP/admin/drain\""));
    assert!(script.contains("authorization: Bearer $DRAIN_TOKEN"));
    assert!(!script.contains("/api/sessions"), "no log-in: {script}");
    script
}

#[test]
fn the_drain_ticker_and_cronjob_call_the_spinapp_service_with_the_drain_token() {
    let objects = objects();
    let app = objects
        .iter()
        .find(|(path, o)| {
            o["kind"] == "SpinApp" && path.starts_with(root().join("deploy/kubernetes/"))
        })
        .map(|(_, o)| o)
        .unwrap();
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
    let script = assert_calls_the_drain_with_the_token(
        &ticker["spec"]["template"]["spec"]["containers"][0],
        &url,
    );
    assert!(script.contains("sleep 1"), "every second: {script}");

    let cronjob = one(&objects, "CronJob");
    assert_eq!(cronjob["spec"]["schedule"], "* * * * *");
    assert_eq!(cronjob["spec"]["concurrencyPolicy"], "Forbid");
    let job = &cronjob["spec"]["jobTemplate"]["spec"];
    assert!(job["activeDeadlineSeconds"].as_i64().unwrap() < 60);
    let script =
        assert_calls_the_drain_with_the_token(&job["template"]["spec"]["containers"][0], &url);
    // A call drains for at most 20 s (drain::RUN_BOUND_MS) and must be let finish.
    assert!(script.contains("-m 30"), "{script}");
}

#[test]
fn akamai_gets_every_required_variable_and_its_cron_calls_the_drain_with_the_token() {
    let spin = spin_toml();
    let script_path = root().join("deploy/akamai/deploy.sh");
    let out = std::process::Command::new("bash")
        .arg(&script_path)
        .arg("--print-variables")
        .output()
        .unwrap();
    assert!(out.status.success());
    let passed: BTreeSet<String> = String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(str::to_string)
        .collect();
    for name in &passed {
        assert!(
            spin.variables.contains_key(name),
            "`{name}` is not declared"
        );
    }
    for (name, required) in &spin.variables {
        if *required {
            assert!(passed.contains(name), "required `{name}` not passed");
        }
    }
    assert!(passed.contains("drain_token"));
    // No custom triggers on Akamai: spin.toml, which has none.
    let script = std::fs::read_to_string(&script_path).unwrap();
    assert!(script.contains("MANIFEST=spin.toml"));
    assert_eq!(spin.cron, 0);
    assert!(spin.http_routes.iter().any(|(r, _)| r == "/admin/drain"));
    assert!(script.contains("DRAIN_PATH=/admin/drain"));
    assert!(script.contains("--path-and-query \"$DRAIN_PATH?token=$FLASHCLAIM_DRAIN_TOKEN\""));
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
    assert!(
        set.contains("drain_token"),
        "the drain unit needs the drain token"
    );
    let unit = std::fs::read_to_string(root().join("deploy/spin-up/flashclaim.service")).unwrap();
    assert!(unit.contains("EnvironmentFile=/etc/flashclaim/flashclaim.env"));
    assert!(unit.contains("spin up --from /opt/flashclaim/spin.toml"));
    // spin.toml has no cron trigger: the drain unit drains every second with the token.
    assert_eq!(spin.cron, 0);
    let drain =
        std::fs::read_to_string(root().join("deploy/spin-up/flashclaim-drain.service")).unwrap();
    assert!(drain.contains("EnvironmentFile=/etc/flashclaim/flashclaim.env"));
    assert!(drain.contains("authorization: Bearer $SPIN_VARIABLE_DRAIN_TOKEN"));
    assert!(drain.contains("http://127.0.0.1:3000/admin/drain") && drain.contains("sleep 1"));
}

/// The ServiceMonitor scrapes GET /metrics of a SpinApp of deploy/ through the Service
/// SpinKube creates for it, with the same metrics_token every SpinApp reads, and the
/// manifests route /metrics (to the drain) and declare metrics_token.
#[test]
fn the_service_monitor_scrapes_metrics_of_the_spinapp_with_its_metrics_token() {
    let objects = objects();
    let monitor = one(&objects, "ServiceMonitor");
    assert_eq!(monitor["apiVersion"], "monitoring.coreos.com/v1");
    let endpoint = &monitor["spec"]["endpoints"][0];
    assert_eq!(endpoint["path"], "/metrics");
    assert_eq!(
        endpoint["targetPort"], "http-app",
        "SpinKube's container port"
    );
    let app = monitor["spec"]["selector"]["matchLabels"]["core.spinkube.dev/app-name"]
        .as_str()
        .expect("selects SpinKube's Service by its app-name label");
    let namespace = &monitor["metadata"]["namespace"];
    assert!(all(&objects, "SpinApp")
        .iter()
        .any(|a| a["metadata"]["name"] == app && a["metadata"]["namespace"] == *namespace));
    let credentials = &endpoint["authorization"]["credentials"];
    let (secret, key) = (credentials["name"].as_str(), credentials["key"].as_str());
    for app in all(&objects, "SpinApp") {
        let var = app["spec"]["variables"]
            .as_array()
            .unwrap()
            .iter()
            .find(|v| v["name"] == "metrics_token")
            .expect("every SpinApp sets metrics_token");
        let from = &var["valueFrom"]["secretKeyRef"];
        assert_eq!((from["name"].as_str(), from["key"].as_str()), (secret, key));
    }
    for name in ["spin.toml", "spin.wasip3.toml"] {
        let spin = read_manifest(name);
        assert_eq!(spin.variables.get("metrics_token"), Some(&false), "{name}");
        assert!(spin
            .http_routes
            .contains(&("/metrics".to_string(), "drain".to_string())));
    }
}

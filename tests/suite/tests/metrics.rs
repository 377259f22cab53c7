//! A real Prometheus (Debian's `prometheus`) scraping the app under test every second with
//! the metrics token, evaluating deploy/prometheus/alerts.yml: after a claim storm and a
//! drain, what Prometheus stored equals what Postgres holds and what the test saw; with
//! Postgres stopped the drain alert fires, and with Postgres back it resolves.
//!
//! Its own test binary (`make test-metrics`): it stops the shared Postgres, so nothing else
//! may run beside it, as tests/suite/tests/outage.rs.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use flashclaim_tests::{dies_with_the_test, free_port, root, PostgresOutage, TestApp};
use spin_test_host::client::HttpClient;

const METRICS_TOKEN: &str = "prometheus-scrape-7f3a";

/// A Prometheus on loopback with its own storage, killed when dropped.
struct Prometheus {
    child: Child,
    client: HttpClient,
    dir: PathBuf,
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// alerts.yml with every `for:` cut to nothing, so a test waits for a condition, not for
/// an hour-scale pause; every expression is the shipped one, unchanged.
fn alerts_for_the_test() -> String {
    let shipped = std::fs::read_to_string(root().join("deploy/prometheus/alerts.yml")).unwrap();
    let copy: Vec<String> = shipped
        .lines()
        .map(|l| match l.trim_start().strip_prefix("for:") {
            Some(_) => format!("{}for: 0s", &l[..l.len() - l.trim_start().len()]),
            None => l.to_string(),
        })
        .collect();
    let copy = copy.join("\n");
    assert_eq!(
        expressions(&copy),
        expressions(&shipped),
        "the test's copy keeps every expression"
    );
    copy
}

fn expressions(rules: &str) -> Vec<String> {
    rules
        .lines()
        .filter(|l| !l.trim_start().starts_with("for:"))
        .map(str::to_string)
        .collect()
}

impl Prometheus {
    async fn start(app_base: &str) -> Prometheus {
        let dir = std::env::temp_dir().join(format!("flashclaim-prometheus-{}", free_port()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("alerts.yml"), alerts_for_the_test()).unwrap();
        let target = app_base.trim_start_matches("http://");
        let config = format!(
            "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n\
             rule_files:\n  - {rules}\n\
             scrape_configs:\n  - job_name: flashclaim\n    scrape_interval: 1s\n    scrape_timeout: 1s\n\
             \x20   metrics_path: /metrics\n    authorization:\n      credentials: {METRICS_TOKEN}\n\
             \x20   static_configs:\n      - targets: ['{target}']\n",
            rules = dir.join("alerts.yml").display(),
        );
        std::fs::write(dir.join("prometheus.yml"), config).unwrap();
        let port = free_port();
        let mut command = Command::new("prometheus");
        command
            .arg(format!(
                "--config.file={}",
                dir.join("prometheus.yml").display()
            ))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.join("data").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .arg("--log.level=warn")
            .stdout(Stdio::null())
            .stderr(Stdio::inherit());
        dies_with_the_test(&mut command);
        let child = command
            .spawn()
            .expect("prometheus runs (Debian's `prometheus` package; scripts/deps.sh installs it)");
        let client = HttpClient::new(format!("http://127.0.0.1:{port}"))
            .with_timeout(Duration::from_secs(5));
        let prometheus = Prometheus { child, client, dir };
        prometheus
            .wait_for(
                "Prometheus to be ready",
                Duration::from_secs(30),
                || async {
                    matches!(prometheus.client.get("/-/ready").await, Ok(r) if r.status == 200)
                },
            )
            .await;
        prometheus
    }

    /// Polls `done` every 250 ms until it holds, failing with `what` after `limit`.
    async fn wait_for<F, Fut>(&self, what: &str, limit: Duration, mut done: F)
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = bool>,
    {
        let started = Instant::now();
        while !done().await {
            assert!(
                started.elapsed() < limit,
                "waited {limit:?} for {what} in vain"
            );
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }

    /// An instant query's samples as label set → value.
    async fn query(&self, promql: &str) -> BTreeMap<String, f64> {
        let r = self
            .client
            .get(&format!("/api/v1/query?query={}", percent_encode(promql)))
            .await
            .unwrap();
        assert_eq!(r.status, 200, "{promql}: {}", r.text());
        let body = r.json();
        body["data"]["result"]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| {
                let value = s["value"][1].as_str().unwrap().parse().unwrap();
                (s["metric"].to_string(), value)
            })
            .collect()
    }

    /// One number: the sum of the query's samples (0 when it has none).
    async fn value(&self, promql: &str) -> f64 {
        self.query(promql).await.values().sum()
    }

    /// The state of each active alert named `name` (pending or firing).
    async fn alert_states(&self, name: &str) -> Vec<String> {
        let r = self.client.get("/api/v1/alerts").await.unwrap();
        assert_eq!(r.status, 200, "{}", r.text());
        r.json()["data"]["alerts"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|a| a["labels"]["alertname"] == name)
            .map(|a| a["state"].as_str().unwrap_or("").to_string())
            .collect()
    }

    async fn firing(&self, name: &str) -> bool {
        self.alert_states(name).await.iter().any(|s| s == "firing")
    }
}

fn percent_encode(text: &str) -> String {
    text.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn prometheus_sees_the_sale_as_postgres_does_and_the_drain_alert_follows_a_postgres_outage() {
    const STOCK: i64 = 150;
    let t = Arc::new(TestApp::start_with(&[("SPIN_VARIABLE_METRICS_TOKEN", METRICS_TOKEN)]).await);
    let id = t.create_activity(STOCK, r#","per_user_limit":2"#).await;
    t.publish(id).await;
    let prometheus = Prometheus::start(t.client.base_url()).await;

    // A scheduler calls the drain every half second all along, as a ticker would.
    let stop = Arc::new(AtomicBool::new(false));
    let ticker = {
        let (t, stop) = (t.clone(), stop.clone());
        tokio::spawn(async move {
            while !stop.load(Ordering::SeqCst) {
                let _ = t.send("POST", "/admin/drain", Some(&t.admin), "").await;
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        })
    };

    // The storm: 200 users, 32 at a time, each asking twice for one ticket (per-user limit
    // 2), so the answers are claimed, then sold_out; the test counts each code it saw.
    let semaphore = Arc::new(tokio::sync::Semaphore::new(32));
    let mut tasks = Vec::new();
    for n in 0..400 {
        let (t, semaphore) = (t.clone(), semaphore.clone());
        tasks.push(tokio::spawn(async move {
            let _permit = semaphore.acquire().await.unwrap();
            let r = t.claim(id, &format!("user-{}", n % 200), "").await;
            match r.status {
                201 => "claimed".to_string(),
                _ => r.json()["code"].as_str().unwrap_or("?").to_string(),
            }
        }));
    }
    let mut seen: BTreeMap<String, f64> = BTreeMap::new();
    for task in tasks {
        *seen.entry(task.await.unwrap()).or_default() += 1.0;
    }
    assert_eq!(seen.get("claimed"), Some(&(STOCK as f64)), "{seen:?}");

    // Everything drained, then Prometheus has scraped the final counts.
    let tickets = || async { t.count("SELECT count(*) FROM tickets").await };
    prometheus
        .wait_for(
            "the drain to write every ticket",
            Duration::from_secs(30),
            || async { tickets().await == STOCK },
        )
        .await;
    let answers = format!(r#"flashclaim_claim_answers_total{{activity="{id}"}}"#);
    prometheus
        .wait_for(
            "a scrape of every answer",
            Duration::from_secs(20),
            || async {
                prometheus.value(&answers).await == 400.0
                    && prometheus
                        .value("sum(flashclaim_drain_backlog_entries)")
                        .await
                        == 0.0
            },
        )
        .await;
    let by_outcome = prometheus
        .query(&format!("sum by (outcome) ({answers} > 0)"))
        .await;
    let stored: BTreeMap<String, f64> = by_outcome
        .into_iter()
        .map(|(labels, v)| {
            let labels: serde_json::Value = serde_json::from_str(&labels).unwrap();
            (labels["outcome"].as_str().unwrap().to_string(), v)
        })
        .collect();
    assert_eq!(stored, seen, "Prometheus counted each answer the test saw");
    assert_eq!(
        prometheus
            .value(&format!(
                r#"flashclaim_claim_answers_total{{activity="{id}",outcome="claimed"}}"#
            ))
            .await,
        tickets().await as f64,
        "claimed equals the tickets in Postgres"
    );
    assert_eq!(
        prometheus
            .value(&format!(
                r#"flashclaim_tickets_issued_total{{activity="{id}"}}"#
            ))
            .await,
        STOCK as f64
    );
    prometheus
        .wait_for("the sold-out alert", Duration::from_secs(10), || async {
            prometheus.firing("FlashclaimSoldOut").await
        })
        .await;
    assert!(prometheus
        .alert_states("FlashclaimDrainBehind")
        .await
        .is_empty());

    // Postgres stops; claims of a second sale go on into the log, which nobody can drain.
    let second = t.create_activity(10, "").await;
    t.publish(second).await;
    let outage = PostgresOutage::start();
    const LATE: i64 = 3;
    for n in 0..LATE {
        let r = t.claim(second, &format!("late-{n}"), "").await;
        assert_eq!(r.status, 201, "claims need only Redis: {}", r.text());
    }
    prometheus
        .wait_for(
            "the Postgres-down alert",
            Duration::from_secs(20),
            || async { prometheus.firing("FlashclaimPostgresDown").await },
        )
        .await;
    prometheus
        .wait_for(
            "the drain alert to fire",
            Duration::from_secs(60),
            || async { prometheus.firing("FlashclaimDrainBehind").await },
        )
        .await;
    assert!(
        prometheus
            .value("sum(flashclaim_drain_failures_total)")
            .await
            > 0.0
    );

    drop(outage);
    prometheus
        .wait_for(
            "the drain alert to resolve",
            Duration::from_secs(60),
            || async {
                prometheus
                    .alert_states("FlashclaimDrainBehind")
                    .await
                    .is_empty()
            },
        )
        .await;
    stop.store(true, Ordering::SeqCst);
    ticker.await.unwrap();
    assert_eq!(
        tickets().await,
        STOCK + LATE,
        "what was claimed during the outage is in Postgres"
    );
}

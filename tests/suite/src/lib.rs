//! Shared harness for flashclaim's tests: the private Redis and Postgres started by
//! `scripts/services.sh`, a fresh database and Redis keyspace per test, the app on the
//! test host, and helpers that act as an operator or a user would.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;

use flashclaim_core::jwt::{self, Claims};
use flashclaim_core::scripts::{Arg, RedisCommands, RedisFailure, Reply};
use spin_test_host::client::{HttpClient, Response};
use spin_test_host::{App, AppConfig, Flat, RunningServer};

pub const JWT_SECRET: &str = "test-jwt-secret-0123456789";
pub const TICKET_SECRET: &str = "test-ticket-secret-0123456789";

pub fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

pub mod bucket_capacity;
pub mod cluster;
pub mod edge;
pub mod sentinel;
pub mod storm;

/// A local port free just now, for a server a test starts in another process (Spin, nginx,
/// a private Redis) and so cannot hand a bound listener.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free local port")
        .port()
}

/// The directory `scripts/services.sh` keeps the test stores in: `FLASHCLAIM_DATA`, else
/// `.data/test` (a served app keeps its own in `.data`).
pub fn data_dir() -> PathBuf {
    std::env::var_os("FLASHCLAIM_DATA")
        .map(PathBuf::from)
        .unwrap_or_else(|| root().join(".data/test"))
}

/// A test binary killed by a time-out runs no destructors: a server it started (Spin,
/// Prometheus) gets SIGTERM from the kernel then, so no orphan keeps a port, a store or CI's
/// output pipe.
pub fn dies_with_the_test(cmd: &mut std::process::Command) {
    use std::os::unix::process::CommandExt;
    // SAFETY: prctl is async-signal-safe, and nothing else runs between fork and exec.
    unsafe {
        cmd.pre_exec(|| {
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM);
            Ok(())
        });
    }
}

/// Runs `scripts/services.sh <action>` (e.g. `pg-stop`), failing the test if it fails.
pub fn services_sh(action: &str) {
    let status = std::process::Command::new(root().join("scripts/services.sh"))
        .arg(action)
        .status()
        .unwrap();
    assert!(status.success(), "services.sh {action}");
}

/// The shared Postgres stopped until this is dropped: it comes back even when an assertion
/// fails meanwhile, so the tests after still have it. Only for a test binary of its own
/// (every other test needs Postgres).
pub struct PostgresOutage(());

impl PostgresOutage {
    pub fn start() -> PostgresOutage {
        services_sh("pg-stop");
        PostgresOutage(())
    }
}

impl Drop for PostgresOutage {
    fn drop(&mut self) {
        services_sh("pg-start");
    }
}

/// Addresses from `services.env` in [`data_dir`].
pub struct Services {
    pub redis_port: u16,
    pub pg_port: u16,
    pub pg_data: String,
    pub pg_bin: String,
    pub pg_user: String,
}

pub fn services() -> Services {
    let env = std::fs::read_to_string(data_dir().join("services.env")).expect(
        "no .data/test/services.env: run the tests through `make test` (it starts Redis and Postgres)",
    );
    let map: HashMap<&str, &str> = env.lines().filter_map(|l| l.split_once('=')).collect();
    Services {
        redis_port: map["REDIS_PORT"].parse().unwrap(),
        pg_port: map["PG_PORT"].parse().unwrap(),
        pg_data: map["PG_DATA"].to_string(),
        pg_bin: map["PG_BIN"].to_string(),
        pg_user: map["PG_USER"].to_string(),
    }
}

impl Services {
    pub fn pg_url(&self, db: &str) -> String {
        format!("postgres://postgres@127.0.0.1:{}/{db}", self.pg_port)
    }
    pub fn redis_url(&self, db: u32) -> String {
        format!("redis://127.0.0.1:{}/{db}", self.redis_port)
    }
}

static NEXT_DB: AtomicU32 = AtomicU32::new(1);

/// A Redis logical database of this test's own, emptied first (test binaries reuse numbers).
pub async fn fresh_redis_db() -> (String, redis::aio::MultiplexedConnection) {
    let n = NEXT_DB.fetch_add(1, Ordering::SeqCst);
    assert!(n < 256, "more tests than Redis databases");
    let url = services().redis_url(n);
    let mut conn = redis_conn(&url).await;
    let () = redis::cmd("FLUSHDB").query_async(&mut conn).await.unwrap();
    (url, conn)
}

pub async fn redis_conn(url: &str) -> redis::aio::MultiplexedConnection {
    redis::Client::open(url)
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap()
}

/// A database copied from the migrated template, private to one test.
pub async fn fresh_pg_db() -> String {
    let s = services();
    let name = format!(
        "t_{}_{}",
        std::process::id(),
        NEXT_DB.fetch_add(1, Ordering::SeqCst)
    );
    let admin = pg_conn(&s.pg_url("postgres")).await;
    for sql in [
        format!("DROP DATABASE IF EXISTS {name}"),
        format!("CREATE DATABASE {name} TEMPLATE flashclaim_template"),
    ] {
        admin.batch_execute(&sql).await.unwrap();
    }
    s.pg_url(&name)
}

pub async fn pg_conn(url: &str) -> tokio_postgres::Client {
    let (client, connection) = tokio_postgres::connect(url, tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(async move {
        let _ = connection.await;
    });
    client
}

/// Runs commands the way a component on Spin sees them: replies flattened.
pub struct NativeRedis {
    conn: redis::aio::MultiplexedConnection,
    runtime: tokio::runtime::Handle,
}

impl NativeRedis {
    pub fn new(conn: redis::aio::MultiplexedConnection) -> Self {
        NativeRedis {
            conn,
            runtime: tokio::runtime::Handle::current(),
        }
    }
}

impl RedisCommands for NativeRedis {
    fn execute(&self, command: &str, args: &[Arg]) -> Result<Vec<Reply>, RedisFailure> {
        let mut cmd = redis::cmd(command);
        for a in args {
            match a {
                Arg::Int(n) => cmd.arg(*n),
                Arg::Bytes(b) => cmd.arg(b.as_slice()),
            };
        }
        let mut conn = self.conn.clone();
        let value: redis::Value =
            tokio::task::block_in_place(|| self.runtime.block_on(cmd.query_async(&mut conn)))
                .map_err(|e| RedisFailure::Command(e.to_string()))?;
        let flat = spin_test_host::flatten_redis_reply(&value)
            .map_err(|e| RedisFailure::Command(e.to_string()))?;
        Ok(flat
            .into_iter()
            .map(|f| match f {
                Flat::Nil => Reply::Nil,
                Flat::Status(s) => Reply::Status(s),
                Flat::Int(n) => Reply::Int(n),
                Flat::Bytes(b) => Reply::Bytes(b),
            })
            .collect())
    }
}

/// CPU seconds used so far by what `clock` names (`libc::CLOCK_THREAD_CPUTIME_ID`: the
/// calling thread; `CLOCK_PROCESS_CPUTIME_ID`: this process), for the benchmarks.
pub fn cpu_secs(clock: libc::clockid_t) -> f64 {
    let mut t = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `t` is a valid timespec the call writes; both clocks exist on Linux.
    unsafe { libc::clock_gettime(clock, &mut t) };
    t.tv_sec as f64 + t.tv_nsec as f64 / 1e9
}

/// The wall clock in ms since the epoch, as the app reads it.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}

pub fn token(user: &str, role: Option<&str>) -> String {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    jwt::sign(
        &Claims {
            sub: user.into(),
            exp: now + 3600,
            nbf: None,
            iat: Some(now),
            role: role.map(str::to_string),
        },
        JWT_SECRET.as_bytes(),
    )
}

pub fn bearer(token: &str) -> String {
    format!("Bearer {token}")
}

/// Where the app under test runs. The end-to-end suites run once on each: the test host
/// always, real Spin when `make test` finds a `spin` binary (it sets
/// `FLASHCLAIM_E2E_RUNTIME=spin` and `FLASHCLAIM_SPIN=<path>`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Runtime {
    TestHost,
    /// `spin up` naming the HTTP components (`-c`), as on a Spin without the cron
    /// trigger plugin: the drain runs through `POST /admin/drain`.
    Spin,
    /// `spin up` of the whole manifest, the cron trigger plugin included: the drain also
    /// runs every second on its own.
    SpinWithCron,
}

impl Runtime {
    /// The runtime the environment asks for (the test host unless told otherwise).
    pub fn from_env() -> Runtime {
        match std::env::var("FLASHCLAIM_E2E_RUNTIME").as_deref() {
            Ok("spin") => Runtime::Spin,
            Ok("spin-cron") => Runtime::SpinWithCron,
            Ok("host") | Err(_) => Runtime::TestHost,
            Ok(other) => panic!("FLASHCLAIM_E2E_RUNTIME={other}: expected host, spin or spin-cron"),
        }
    }
}

/// The manifest under test: `FLASHCLAIM_MANIFEST` (relative to the repository), else
/// spin.wasip3.toml, the one with every component (WASIp3 claim and log-in, and the drain's
/// cron component); `FLASHCLAIM_MANIFEST=spin.toml` runs the WASIp2 builds, HTTP only.
pub fn manifest() -> PathBuf {
    root().join(std::env::var("FLASHCLAIM_MANIFEST").unwrap_or_else(|_| "spin.wasip3.toml".into()))
}

/// Whether the manifest under test runs the WASIp3 claim, which keeps what it learnt.
pub fn wasip3_claim() -> bool {
    let text = std::fs::read_to_string(manifest()).unwrap();
    let doc: toml::Value = toml::from_str(&text).unwrap();
    doc["component"]["claim"]["source"]
        .as_str()
        .unwrap()
        .ends_with("_p3.wasm")
}

/// Whether the manifest under test has the drain's cron component (spin.wasip3.toml does;
/// spin.toml, for Spins without the cron plugin, does not).
pub fn manifest_has_cron() -> bool {
    std::fs::read_to_string(manifest())
        .expect("read the manifest under test")
        .contains("[component.drain-cron]")
}

/// `text`, a manifest derived from `original`, written under target/test-manifests/ as
/// `name`: every relative `source` made absolute (relative to `original`'s directory), so
/// the copy runs from where it is. Each writer writes a file of its own and renames it into
/// place, so tests of one or several processes writing the same copy at once never read
/// half of it nor move each other's file away.
pub fn write_manifest_copy(original: &Path, text: &str, name: &str) -> PathBuf {
    let base = original.parent().unwrap_or(Path::new("."));
    let text: String = text
        .lines()
        .map(|line| match line.strip_prefix("source = \"") {
            Some(rest) if !rest.starts_with('/') => {
                format!("source = \"{}/{rest}\n", base.display())
            }
            _ => format!("{line}\n"),
        })
        .collect();
    let dir = root().join("target/test-manifests");
    std::fs::create_dir_all(&dir).expect("target/test-manifests");
    let path = dir.join(name);
    static WRITES: AtomicU32 = AtomicU32::new(0);
    let partial = dir.join(format!(
        "{name}.{}.{}",
        std::process::id(),
        WRITES.fetch_add(1, Ordering::Relaxed)
    ));
    std::fs::write(&partial, text).expect("write the manifest copy");
    std::fs::rename(&partial, &path).expect("move the manifest copy into place");
    path
}

/// The drain's test hooks: variables the deployed manifests leave out (on Spin every
/// application variable costs each fresh WASIp2 instance that connects out, BENCHMARKS.md,
/// and a testing hook is no setting of the product). `drain_failpoint` makes a drain run
/// die at a point of its cycle (`after_read`, `after_commit`) so the recovery tests can
/// prove nothing is lost or doubled; `drain_run_bound_ms` shortens a run's time bound so a
/// test can see a run stop at it.
pub const DRAIN_TEST_HOOKS: [&str; 2] = ["drain_failpoint", "drain_run_bound_ms"];

/// A copy of `manifest` that declares the [`DRAIN_TEST_HOOKS`] (empty by default) and hands
/// them to both drain components.
pub fn with_test_hooks(manifest: &Path) -> PathBuf {
    let text = std::fs::read_to_string(manifest).expect("read the manifest");
    let mut out = String::new();
    for line in text.lines() {
        out.push_str(line);
        out.push('\n');
        for hook in DRAIN_TEST_HOOKS {
            match line {
                "[variables]" => out.push_str(&format!("{hook} = {{ default = \"\" }}\n")),
                "[component.drain.variables]" | "[component.drain-cron.variables]" => {
                    out.push_str(&format!("{hook} = \"{{{{ {hook} }}}}\"\n"))
                }
                _ => {}
            }
        }
    }
    assert!(
        out.matches("drain_failpoint").count() >= 3,
        "{} has no [variables] table or no [component.drain.variables] table",
        manifest.display()
    );
    let stem = manifest
        .file_stem()
        .and_then(|s| s.to_str())
        .unwrap_or("spin");
    write_manifest_copy(manifest, &out, &format!("{stem}.hooks.toml"))
}

/// The HTTP components of both manifests: what `spin up -c` names when there is no cron plugin.
pub const HTTP_COMPONENTS: [&str; 8] = [
    "activity", "claim", "auth", "sessions", "ticket", "admin", "drain", "web",
];

/// The `spin` binary the Spin runs use: `FLASHCLAIM_SPIN`, else `spin` on PATH.
pub fn spin_binary() -> Option<PathBuf> {
    if let Ok(path) = std::env::var("FLASHCLAIM_SPIN") {
        return Some(PathBuf::from(path));
    }
    std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|dir| dir.join("spin"))
            .find(|p| p.is_file())
    })
}

/// A `spin up` of flashclaim, stopped (killed and reaped) when dropped.
pub struct SpinProcess {
    child: std::process::Child,
    pub base_url: String,
    state_dir: PathBuf,
}

impl Drop for SpinProcess {
    /// `spin up` runs each trigger as a child process (`spin trigger http`, the cron
    /// plugin) and stops them on SIGTERM; SIGKILL would orphan them. So: SIGTERM, a grace
    /// period, then SIGKILL to the whole process group.
    fn drop(&mut self) {
        let pid = self.child.id() as libc::pid_t;
        unsafe { libc::kill(pid, libc::SIGTERM) };
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        while std::time::Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        unsafe { libc::kill(-pid, libc::SIGKILL) };
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.state_dir);
    }
}

impl SpinProcess {
    /// Starts `spin up` on a free port with `env` as its `SPIN_VARIABLE_*` settings (and
    /// none inherited), and waits until it answers HTTP.
    pub async fn start(runtime: Runtime, env: &HashMap<String, String>) -> SpinProcess {
        Self::start_from(runtime, &manifest(), env).await
    }

    /// [`SpinProcess::start`] with another flashclaim manifest (spin.toml or
    /// spin.wasip3.toml), whatever `FLASHCLAIM_MANIFEST` says.
    pub async fn start_from(
        runtime: Runtime,
        manifest: &Path,
        env: &HashMap<String, String>,
    ) -> SpinProcess {
        let components: &[&str] = match runtime {
            Runtime::Spin => &HTTP_COMPONENTS,
            _ => &[],
        };
        Self::launch(manifest, components, env).await
    }

    /// `spin up` of any manifest with every component (e.g. the benchmark's fixture app,
    /// tests/bench-fixtures/spin.toml, which has HTTP triggers only).
    pub async fn start_manifest(manifest: &Path, env: &HashMap<String, String>) -> SpinProcess {
        Self::launch(manifest, &[], env).await
    }

    /// The id of the `spin up` process; it runs the HTTP trigger as a child process
    /// (`spin trigger http`), which is where requests are served (what `perf -p` wants).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// `spin up --from manifest`, naming `components` with `-c` when there are any (then as
    /// a Spin without plugins: the cron trigger's components are left out).
    async fn launch(
        manifest: &Path,
        components: &[&str],
        env: &HashMap<String, String>,
    ) -> SpinProcess {
        let spin = spin_binary().expect("a Spin runtime was asked for but no spin binary found");
        let port = free_port();
        let state_dir = std::env::temp_dir().join(format!(
            "flashclaim-spin-{}-{}",
            std::process::id(),
            NEXT_DB.fetch_add(1, Ordering::SeqCst)
        ));
        let mut cmd = std::process::Command::new(&spin);
        cmd.arg("up")
            .arg("--from")
            .arg(manifest)
            .arg("--listen")
            .arg(format!("127.0.0.1:{port}"))
            .arg("--state-dir")
            .arg(&state_dir);
        if let Some(n) = max_instance_reuse_count() {
            cmd.arg("--max-instance-reuse-count").arg(n.to_string());
        }
        if !components.is_empty() {
            for c in components {
                cmd.args(["-c", c]);
            }
            // As a Spin without the cron trigger plugin: an empty plugin directory proves
            // that the HTTP components start without it.
            cmd.env("XDG_DATA_HOME", state_dir.join("no-plugins"));
        }
        for (k, _) in std::env::vars_os() {
            if k.to_string_lossy().starts_with("SPIN_VARIABLE_") {
                cmd.env_remove(k);
            }
        }
        cmd.envs(env)
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null());
        // SIGTERM on the test's death, which Spin passes on to its trigger processes. Its own
        // process group lets Drop kill every process it started.
        use std::os::unix::process::CommandExt;
        cmd.process_group(0);
        dies_with_the_test(&mut cmd);
        let child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("starting {}: {e}", spin.display()));
        let mut process = SpinProcess {
            child,
            base_url: format!("http://127.0.0.1:{port}"),
            state_dir,
        };
        process.wait_ready().await;
        process
    }

    /// Spin compiles every component before it listens (seconds on a cold cache).
    async fn wait_ready(&mut self) {
        let probe =
            HttpClient::new(self.base_url.clone()).with_timeout(std::time::Duration::from_secs(2));
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(120);
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                panic!("spin up exited before serving: {status}");
            }
            if probe.get("/healthz").await.is_ok() {
                return;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "spin up did not answer on {} within 120 s",
                self.base_url
            );
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
    }
}

/// `FLASHCLAIM_MAX_INSTANCE_REUSE_COUNT`: the runtime's `--max-instance-reuse-count` (requests
/// one WASIp3 instance serves; unset: the runtime's default, 128), for measuring what a
/// longer-lived instance does for the claim cache (BENCHMARKS.md, "The storm").
pub fn max_instance_reuse_count() -> Option<usize> {
    std::env::var("FLASHCLAIM_MAX_INSTANCE_REUSE_COUNT")
        .ok()?
        .trim()
        .parse()
        .ok()
        .filter(|n| *n > 0)
}

/// What serves the app under test.
pub enum Backend {
    Host {
        app: Arc<App>,
        _server: RunningServer,
    },
    Spin(SpinProcess),
}

/// `manifest` on the test host, served on a free local port: the backend and its base URL.
async fn host_backend(manifest: &Path, env: HashMap<String, String>) -> (Backend, String) {
    let defaults = AppConfig::default();
    let app = App::load(AppConfig {
        manifest: manifest.to_path_buf(),
        env,
        process_env: false,
        max_instance_reuse_count: max_instance_reuse_count()
            .unwrap_or(defaults.max_instance_reuse_count),
        ..defaults
    })
    .await
    .unwrap_or_else(|e| {
        panic!(
            "{} loads on the test host (was `make wasm` run?): {e:#}",
            manifest.display()
        )
    });
    let server = spin_test_host::server::start(app.clone(), "127.0.0.1:0")
        .await
        .unwrap();
    let base = server.base_url();
    (
        Backend::Host {
            app,
            _server: server,
        },
        base,
    )
}

/// Any Spin app, a manifest and its `SPIN_VARIABLE_*` settings, on the test host or real
/// Spin (every component; no cron plugin is involved when the manifest has HTTP triggers
/// only): the benchmark's fixture app (tests/bench-fixtures/spin.toml) beside flashclaim.
pub struct ManifestApp {
    pub backend: Backend,
    pub client: HttpClient,
}

impl ManifestApp {
    pub async fn start(
        runtime: Runtime,
        manifest: &Path,
        env: &HashMap<String, String>,
    ) -> ManifestApp {
        let (backend, base_url) = match runtime {
            Runtime::TestHost => host_backend(manifest, env.clone()).await,
            Runtime::Spin | Runtime::SpinWithCron => {
                let spin = SpinProcess::start_manifest(manifest, env).await;
                let base = spin.base_url.clone();
                (Backend::Spin(spin), base)
            }
        };
        ManifestApp {
            backend,
            client: HttpClient::new(base_url),
        }
    }
}

/// The `SPIN_VARIABLE_*` settings of flashclaim under test on these stores: the test
/// secrets, the shared services' hosts, and no per-user claim rate limit.
pub fn app_env(redis_url: &str, pg_url: &str) -> HashMap<String, String> {
    let s = services();
    [
        ("SPIN_VARIABLE_REDIS_ADDRESS", redis_url.to_string()),
        (
            "SPIN_VARIABLE_REDIS_HOST",
            format!("127.0.0.1:{}", s.redis_port),
        ),
        ("SPIN_VARIABLE_PG_ADDRESS", pg_url.to_string()),
        ("SPIN_VARIABLE_PG_HOST", format!("127.0.0.1:{}", s.pg_port)),
        ("SPIN_VARIABLE_JWT_SECRET", JWT_SECRET.to_string()),
        ("SPIN_VARIABLE_TICKET_SECRET", TICKET_SECRET.to_string()),
        ("SPIN_VARIABLE_CLAIM_RATE_LIMIT", "0".to_string()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect()
}

/// flashclaim on the test host or real Spin, with its own Postgres database and Redis
/// keyspace.
pub struct TestApp {
    pub backend: Backend,
    pub runtime: Runtime,
    pub client: HttpClient,
    pub pg_url: String,
    pub redis_url: String,
    pub admin: String,
}

impl TestApp {
    pub async fn start() -> TestApp {
        Self::start_with(&[]).await
    }

    pub async fn start_with(extra: &[(&str, &str)]) -> TestApp {
        let (redis_url, _) = fresh_redis_db().await;
        let pg_url = fresh_pg_db().await;
        Self::start_on(&redis_url, &pg_url, extra).await
    }

    /// The app on given stores: a second app on the same data (a restarted or differently
    /// configured deployment), or one on a private Redis.
    pub async fn start_on(redis_url: &str, pg_url: &str, extra: &[(&str, &str)]) -> TestApp {
        Self::start_on_runtime(Runtime::from_env(), redis_url, pg_url, extra).await
    }

    pub async fn start_on_runtime(
        runtime: Runtime,
        redis_url: &str,
        pg_url: &str,
        extra: &[(&str, &str)],
    ) -> TestApp {
        Self::start_manifest_on_runtime(runtime, &manifest(), redis_url, pg_url, extra).await
    }

    /// [`TestApp::start_on_runtime`] with a given flashclaim manifest (spin.toml or
    /// spin.wasip3.toml), so one process can run both side by side (the benchmark).
    pub async fn start_manifest_on_runtime(
        runtime: Runtime,
        manifest: &Path,
        redis_url: &str,
        pg_url: &str,
        extra: &[(&str, &str)],
    ) -> TestApp {
        // Only the tests' copy of a manifest declares the drain's test hooks.
        let hooks_copy;
        let manifest = if extra.iter().any(|(k, _)| {
            DRAIN_TEST_HOOKS
                .iter()
                .any(|h| k.eq_ignore_ascii_case(&format!("SPIN_VARIABLE_{h}")))
        }) {
            hooks_copy = with_test_hooks(manifest);
            &hooks_copy
        } else {
            manifest
        };
        let (redis_url, pg_url) = (redis_url.to_string(), pg_url.to_string());
        let mut env = app_env(&redis_url, &pg_url);
        for (k, v) in extra {
            env.insert(k.to_string(), v.to_string());
        }
        let (backend, base_url) = match runtime {
            Runtime::TestHost => host_backend(manifest, env).await,
            Runtime::Spin | Runtime::SpinWithCron => {
                let spin = SpinProcess::start_from(runtime, manifest, &env).await;
                let base = spin.base_url.clone();
                (Backend::Spin(spin), base)
            }
        };
        TestApp {
            backend,
            runtime,
            client: HttpClient::new(base_url),
            pg_url,
            redis_url,
            admin: bearer(&token("operator", Some("admin"))),
        }
    }

    /// The test host's app, for tests of what only the test host can do (fire a cron tick,
    /// inject faults); `None` on real Spin.
    pub fn host_app(&self) -> Option<&Arc<App>> {
        match &self.backend {
            Backend::Host { app, .. } => Some(app),
            Backend::Spin(_) => None,
        }
    }

    /// Like [`TestApp::host_app`], for test files that only ever run on the test host.
    pub fn app(&self) -> &Arc<App> {
        self.host_app()
            .expect("this test needs the test host (fault injection or a fired cron tick)")
    }

    pub async fn pg(&self) -> tokio_postgres::Client {
        pg_conn(&self.pg_url).await
    }

    pub async fn redis(&self) -> redis::aio::MultiplexedConnection {
        redis_conn(&self.redis_url).await
    }

    pub async fn send(&self, method: &str, path: &str, auth: Option<&str>, body: &str) -> Response {
        let mut headers = vec![("content-type", "application/json")];
        if let Some(a) = auth {
            headers.push(("authorization", a));
        }
        self.client
            .send(method, path, &headers, body.to_string())
            .await
            .unwrap()
    }

    /// Creates an activity as the operator; `overrides` are extra JSON fields.
    pub async fn create_activity(&self, stock: i64, overrides: &str) -> i64 {
        let now = now_ms();
        let body = format!(
            r#"{{"name":"Free ride","starts_at":"{}","ends_at":"{}","stock_total":{stock}{overrides}}}"#,
            flashclaim_core::time::Millis(now - 60_000),
            flashclaim_core::time::Millis(now + 3_600_000),
        );
        let r = self
            .send("POST", "/admin/activities", Some(&self.admin), &body)
            .await;
        assert_eq!(r.status, 201, "create: {}", r.text());
        r.json()["id"].as_i64().unwrap()
    }

    pub async fn publish(&self, id: i64) -> Response {
        let r = self
            .send(
                "POST",
                &format!("/admin/activities/{id}/publish"),
                Some(&self.admin),
                "",
            )
            .await;
        assert_eq!(r.status, 200, "publish: {}", r.text());
        r
    }

    pub async fn claim(&self, id: i64, user: &str, body: &str) -> Response {
        self.send(
            "POST",
            &format!("/api/activities/{id}/claims"),
            Some(&bearer(&token(user, None))),
            body,
        )
        .await
    }

    /// `GET /api/activities/{id}`, anonymous or as `user` (whose claims it then shows).
    pub async fn detail(&self, id: i64, user: Option<&str>) -> Response {
        let auth = user.map(|u| bearer(&token(u, None)));
        self.send("GET", &format!("/api/activities/{id}"), auth.as_deref(), "")
            .await
    }

    /// Runs the drain through its HTTP route and returns its report.
    pub async fn drain(&self) -> serde_json::Value {
        let r = self
            .send("POST", "/admin/drain", Some(&self.admin), "")
            .await;
        assert_eq!(r.status, 200, "drain: {}", r.text());
        r.json()
    }

    /// Registers `dora` (with `taken`, a second time too, refused as taken), then logs in
    /// with a wrong and the right password, asserting each answer: the log-in scripts and
    /// the global counters they move.
    pub async fn register_and_log_in(&self, taken: bool) {
        let correct = r#"{"username":"dora","password":"correct horse"}"#;
        let wrong = r#"{"username":"dora","password":"wrong horse"}"#;
        let mut steps = vec![("/api/users", correct, 201)];
        if taken {
            steps.push(("/api/users", correct, 409));
        }
        steps.extend([
            ("/api/sessions", wrong, 401),
            ("/api/sessions", correct, 200),
        ]);
        for (path, body, status) in steps {
            let r = self.send("POST", path, None, body).await;
            assert_eq!(r.status, status, "{path}: {}", r.text());
        }
    }

    /// Drains until a run moves nothing and reports no backlog (at most 200 runs, 50 ms
    /// apart: a log that never empties fails the test).
    pub async fn drain_to_empty(&self) {
        for _ in 0..200 {
            let report = self.drain().await;
            if report["entries"] == 0 && report["backlog"] == 0 {
                return;
            }
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
        panic!("the drain never emptied the log");
    }

    /// The ids of the claims of `activity` that Postgres holds, as stored (a double would
    /// show twice).
    pub async fn claim_ids(&self, activity: i64) -> Vec<String> {
        self.pg()
            .await
            .query("SELECT id FROM claims WHERE activity_id = $1", &[&activity])
            .await
            .unwrap()
            .iter()
            .map(|r| r.get(0))
            .collect()
    }

    pub async fn count(&self, sql: &str) -> i64 {
        self.pg()
            .await
            .query_one(sql, &[])
            .await
            .unwrap()
            .get::<_, i64>(0)
    }
}

/// Asserts an RFC 9457 problem with the given status and stable code.
pub fn problem(r: &Response, status: u16, code: &str) {
    assert_eq!(r.status, status, "{}", r.text());
    assert_eq!(
        r.header("content-type"),
        Some("application/problem+json"),
        "{}",
        r.text()
    );
    assert_eq!(r.json()["code"], code, "{}", r.text());
}

impl TestApp {
    /// A request as `user` (a token signed with the test secret).
    pub async fn as_user(&self, user: &str, method: &str, path: &str, body: &str) -> Response {
        self.send(method, path, Some(&bearer(&token(user, None))), body)
            .await
    }

    pub async fn as_admin(&self, method: &str, path: &str, body: &str) -> Response {
        self.send(method, path, Some(&self.admin), body).await
    }

    /// A request with an explicit content type (uploads).
    pub async fn send_typed(
        &self,
        method: &str,
        path: &str,
        auth: &str,
        content_type: &str,
        body: String,
    ) -> Response {
        self.client
            .send(
                method,
                path,
                &[("content-type", content_type), ("authorization", auth)],
                body,
            )
            .await
            .unwrap()
    }
}

/// How [`FakeRedis`] answers a script (`EVALSHA` / `EVAL`).
#[derive(Debug, Clone)]
pub enum FakeScriptReply {
    /// An error line, e.g. `LOADING Redis is loading the dataset in memory`.
    Error(&'static str),
    /// Read the whole command, then close the connection without a reply: the script may
    /// have run, and the client cannot know.
    CloseAfterReading,
}

/// A Redis stand-in on a local port that speaks just enough RESP for a component to open
/// a connection (every other command gets `+OK`) and answers every script as told: the
/// replies a real Redis gives while loading, as a replica, or dying mid-command, on demand.
pub struct FakeRedis {
    pub port: u16,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for FakeRedis {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl FakeRedis {
    pub async fn start(script: FakeScriptReply) -> FakeRedis {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let task = tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                tokio::spawn(Self::serve(stream, script.clone()));
            }
        });
        FakeRedis { port, task }
    }

    async fn serve(stream: tokio::net::TcpStream, script: FakeScriptReply) {
        use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
        let (read, mut write) = stream.into_split();
        let mut read = BufReader::new(read);
        loop {
            // A command is an array of bulk strings: *N, then N × ($len, bytes).
            let mut line = String::new();
            if read.read_line(&mut line).await.unwrap_or(0) == 0 {
                return;
            }
            let Some(n) = line
                .trim_end()
                .strip_prefix('*')
                .and_then(|n| n.parse().ok())
            else {
                return;
            };
            let mut args: Vec<Vec<u8>> = Vec::with_capacity(n);
            for _ in 0..n {
                line.clear();
                if read.read_line(&mut line).await.unwrap_or(0) == 0 {
                    return;
                }
                let len: usize = line.trim_end().trim_start_matches('$').parse().unwrap_or(0);
                let mut arg = vec![0; len + 2];
                if read.read_exact(&mut arg).await.is_err() {
                    return;
                }
                arg.truncate(len);
                args.push(arg);
            }
            let name = args
                .first()
                .map(|a| String::from_utf8_lossy(a).to_uppercase())
                .unwrap_or_default();
            let reply = match (name.as_str(), &script) {
                ("EVALSHA" | "EVAL", FakeScriptReply::Error(e)) => format!("-{e}\r\n"),
                ("EVALSHA" | "EVAL", FakeScriptReply::CloseAfterReading) => return,
                _ => "+OK\r\n".to_string(),
            };
            if write.write_all(reply.as_bytes()).await.is_err() {
                return;
            }
        }
    }
}

//! Loading a Spin app and running its components: compile once, pre-instantiate once, then
//! instantiate as Spin 4 does. A WASIp2 component (it exports
//! `wasi:http/incoming-handler@0.2`) gets a fresh instance per request or cron tick. A
//! WASIp3 component (it exports `wasi:http/handler@0.3`) is reused: one instance serves up
//! to `max_instance_reuse_count` requests (Spin: 128), up to
//! `max_instance_concurrent_reuse_count` at once (Spin: 16), and is dropped after it has been
//! idle for a second or when it traps; the next request then gets a fresh one.

use std::collections::HashMap;
use std::future::Future;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::task::{Context as TaskContext, Poll};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{anyhow, bail, Context, Result};
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::header::{HeaderName, HeaderValue};
use wasmtime::component::{Component, GuestTaskId, HasSelf, InstancePre, Linker};
use wasmtime::{Config, Engine, Store, StoreContextMut};
use wasmtime_wasi_http::handler::{
    HandlerState, Instance, Proxy, ProxyHandler, ShouldAccept, WorkerExpiration, WorkerState,
    WorkerStatus,
};
use wasmtime_wasi_http::p2::bindings::http::types::Scheme;
use wasmtime_wasi_http::p2::bindings::ProxyPre;
use wasmtime_wasi_http::p2::body::HyperOutgoingBody;
use wasmtime_wasi_http::p3::bindings::ServicePre;
use wasmtime_wasi_http::{WasiHttpCtxView, WasiHttpView};

use crate::bindings::cron::{fermyon::spin_cron::cron_types::Metadata, SpinCronPre};
use crate::cron::CronSchedule;
use crate::manifest::{CronTrigger, Manifest};
use crate::outbound::AllowedHosts;
use crate::router::Router;
use crate::state::{ComponentRuntime, HostState};
use crate::variables::ResolvedVariables;

/// Spin 4's default for `spin up --max-instance-reuse-count`.
pub const DEFAULT_MAX_INSTANCE_REUSE_COUNT: usize = 128;
/// Spin 4's default for `spin up --max-instance-concurrent-reuse-count`.
pub const DEFAULT_MAX_INSTANCE_CONCURRENT_REUSE_COUNT: usize = 16;
/// How long Spin 4 keeps an idle WASIp3 instance for reuse.
pub const IDLE_INSTANCE_TIMEOUT: Duration = Duration::from_secs(1);

/// How to start an app.
#[derive(Debug, Clone)]
pub struct AppConfig {
    pub manifest: PathBuf,
    /// Environment entries (`SPIN_VARIABLE_*`) consulted before the process environment,
    /// so tests can run several apps side by side with different settings.
    pub env: HashMap<String, String>,
    /// Whether the process environment is consulted too (true for the CLI).
    pub process_env: bool,
    /// Requests one WASIp3 instance serves before it is dropped (`spin up
    /// --max-instance-reuse-count`). WASIp2 instances always serve one.
    pub max_instance_reuse_count: usize,
    /// Requests one WASIp3 instance serves at once (`spin up
    /// --max-instance-concurrent-reuse-count`).
    pub max_instance_concurrent_reuse_count: usize,
}

impl Default for AppConfig {
    fn default() -> Self {
        Self {
            manifest: PathBuf::from("spin.toml"),
            env: HashMap::new(),
            process_env: false,
            max_instance_reuse_count: DEFAULT_MAX_INSTANCE_REUSE_COUNT,
            max_instance_concurrent_reuse_count: DEFAULT_MAX_INSTANCE_CONCURRENT_REUSE_COUNT,
        }
    }
}

/// How a component serves HTTP, decided by what it exports.
enum HttpEntry {
    /// `wasi:http/incoming-handler@0.2.x`: a fresh instance per request.
    P2(ProxyPre<HostState>),
    /// `wasi:http/handler@0.3.x`: instances reused within Spin's limits.
    P3(ProxyHandler<P3Instances>),
}

/// Which WASI HTTP world a component's handler is in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HttpWorld {
    Wasip2,
    Wasip3,
}

struct LoadedComponent {
    runtime: Arc<ComponentRuntime>,
    http: Option<HttpEntry>,
    cron: Option<SpinCronPre<HostState>>,
    instances: Arc<AtomicU64>,
}

pub struct App {
    engine: Engine,
    router: Router,
    components: HashMap<String, LoadedComponent>,
    cron_triggers: Vec<(CronTrigger, CronSchedule)>,
}

/// One engine per process, so compiled components can be shared between apps.
fn engine() -> &'static Engine {
    static ENGINE: OnceLock<Engine> = OnceLock::new();
    ENGINE.get_or_init(|| {
        let mut config = Config::new();
        config.wasm_component_model(true);
        // WASIp3 components: async functions, streams and futures, as Spin 4 enables them.
        config.wasm_component_model_async(true);
        // `FLASHCLAIM_HOST_PERFMAP=1`: name the compiled guest functions for `perf report`
        // (/tmp/perf-<pid>.map), to find where a component's CPU goes.
        if std::env::var_os("FLASHCLAIM_HOST_PERFMAP").is_some() {
            config.profiler(wasmtime::ProfilingStrategy::PerfMap);
        }
        Engine::new(&config).expect("wasmtime engine configuration is valid")
    })
}

/// The interfaces a component file imports (`wasi:http/types@0.2.6`, `fermyon:spin/...`),
/// named as the component names them: what a runtime must provide for it to link. Spin
/// 4.0.x and 3.x provide no final `@0.3.0` WASI interface, so a manifest meant for them
/// must not name a component that imports one.
pub fn component_imports(path: &Path) -> Result<Vec<String>> {
    let component = compile(path)?;
    let engine = engine();
    Ok(component
        .component_type()
        .imports(engine)
        .map(|(name, _)| name.to_string())
        .collect())
}

/// Compiling is the slow part of loading; a component file that has not changed since it
/// was last compiled in this process is reused.
fn compile(path: &Path) -> Result<Component> {
    type Key = (PathBuf, SystemTime, u64);
    static CACHE: OnceLock<Mutex<HashMap<Key, Component>>> = OnceLock::new();
    let meta = std::fs::metadata(path)
        .with_context(|| format!("component source {} (was it built?)", path.display()))?;
    let key = (path.to_path_buf(), meta.modified()?, meta.len());
    let cache = CACHE.get_or_init(Default::default);
    if let Some(c) = cache.lock().unwrap().get(&key) {
        return Ok(c.clone());
    }
    let component = Component::from_file(engine(), path)
        .map_err(anyhow::Error::from)
        .with_context(|| format!("compiling {}", path.display()))?;
    cache.lock().unwrap().insert(key, component.clone());
    Ok(component)
}

/// One linker for both worlds: a component only links what it imports.
fn linker() -> Result<Linker<HostState>> {
    let mut linker = Linker::new(engine());
    // WASIp2 (spin-sdk 5).
    wasmtime_wasi::p2::add_to_linker_async(&mut linker)?;
    wasmtime_wasi_http::p2::add_only_http_to_linker_async(&mut linker)?;
    use crate::bindings::{fermyon::spin, spin::postgres4_0_0::postgres};
    spin::redis::add_to_linker::<_, HasSelf<_>>(&mut linker, |s| s)?;
    spin::variables::add_to_linker::<_, HasSelf<_>>(&mut linker, |s| s)?;
    postgres::add_to_linker::<_, HasSelf<_>>(&mut linker, |s| s)?;
    // WASIp3 (spin-sdk 7): WASI 0.3 (sockets denied by the WASI context, as in Spin without
    // allowed hosts), wasi:http@0.3.0 (outbound requests denied by the same hooks as
    // WASIp2), async Redis, variables and Postgres.
    wasmtime_wasi::p3::add_to_linker(&mut linker)?;
    wasmtime_wasi_http::p3::add_to_linker(&mut linker)?;
    use crate::bindings::p3::spin as spin3;
    spin3::redis::redis::add_to_linker::<_, HasSelf<_>>(&mut linker, |s| s)?;
    spin3::variables::variables::add_to_linker::<_, HasSelf<_>>(&mut linker, |s| s)?;
    spin3::postgres4_2_0::postgres::add_to_linker::<_, HasSelf<_>>(&mut linker, |s| s)?;
    Ok(linker)
}

/// Creates the instances of one WASIp3 component for wasmtime-wasi-http's
/// [`ProxyHandler`], which dispatches requests to them (as Spin 4's HTTP trigger does).
struct P3Instances {
    engine: Engine,
    pre: ServicePre<HostState>,
    runtime: Arc<ComponentRuntime>,
    max_reuse: usize,
    max_concurrent: usize,
    instances: Arc<AtomicU64>,
}

fn http_view(state: &mut HostState) -> WasiHttpCtxView<'_> {
    state.http()
}

impl HandlerState for P3Instances {
    type StoreData = HostState;
    type WorkerExpiration = IdleExpiration;
    type WorkerState = ReuseLimits;

    async fn instantiate(
        &self,
    ) -> wasmtime::Result<Instance<HostState, IdleExpiration, ReuseLimits>> {
        let mut store = Store::new(&self.engine, HostState::new(self.runtime.clone()));
        let service = self.pre.instantiate_async(&mut store).await?;
        self.instances.fetch_add(1, Ordering::SeqCst);
        Ok(Instance {
            store,
            proxy: Proxy::P3(service),
            view: http_view,
            expiration: IdleExpiration::new(IDLE_INSTANCE_TIMEOUT),
            state: ReuseLimits {
                component: self.runtime.id.clone(),
                max_reuse: self.max_reuse,
                max_concurrent: self.max_concurrent,
            },
        })
    }
}

/// Spin's reuse limits for one instance.
struct ReuseLimits {
    component: String,
    max_reuse: usize,
    max_concurrent: usize,
}

impl WorkerState for ReuseLimits {
    type StoreData = HostState;
    type RequestData = ();

    fn should_accept_request(&self, concurrent: usize, total: usize) -> ShouldAccept {
        if total >= self.max_reuse {
            ShouldAccept::Never
        } else if concurrent >= self.max_concurrent {
            ShouldAccept::No
        } else {
            ShouldAccept::Yes
        }
    }

    /// No request timeout, as in Spin by default: the request never expires.
    fn on_request_start(
        &self,
        _store: StoreContextMut<'_, HostState>,
        _data: (),
        _task: GuestTaskId,
    ) -> Pin<Box<dyn Future<Output = ()> + Send + Sync>> {
        Box::pin(std::future::pending())
    }

    fn drop(&self, _store: Store<HostState>, result: wasmtime::Result<()>) {
        match result {
            Ok(()) => {}
            // wasmtime-wasi-http reports a worker whose task was dropped (its server stopped,
            // its runtime shut down) as "worker panicked"; only a real panic unwinds.
            Err(e) if e.to_string() == "worker panicked" && !std::thread::panicking() => {}
            Err(e) => eprintln!(
                "spin-test-host: component `{}`: instance dropped after an error: {e:?}",
                self.component
            ),
        }
    }
}

/// Drops an instance that has been idle (no request, no background work) for `idle`.
struct IdleExpiration {
    idle: Duration,
    timer: Pin<Box<tokio::time::Sleep>>,
    armed_for: Option<Instant>,
}

impl IdleExpiration {
    fn new(idle: Duration) -> Self {
        Self {
            idle,
            timer: Box::pin(tokio::time::sleep(idle)),
            armed_for: None,
        }
    }
}

impl WorkerExpiration for IdleExpiration {
    fn poll(
        mut self: Pin<&mut Self>,
        cx: &mut TaskContext<'_>,
        status: WorkerStatus,
        since: Instant,
    ) -> Poll<()> {
        if status != WorkerStatus::Idle {
            return Poll::Pending;
        }
        let deadline = since + self.idle;
        if self.armed_for != Some(deadline) {
            self.timer
                .as_mut()
                .reset(tokio::time::Instant::from_std(deadline));
            self.armed_for = Some(deadline);
        }
        self.timer.as_mut().poll(cx)
    }
}

impl App {
    pub async fn load(config: AppConfig) -> Result<Arc<App>> {
        let (manifest, base) = Manifest::load(&config.manifest)?;
        let env = |key: &str| {
            config.env.get(key).cloned().or_else(|| {
                config
                    .process_env
                    .then(|| std::env::var(key).ok())
                    .flatten()
            })
        };
        let resolved = ResolvedVariables::resolve(&manifest.variables, env)?;
        let router = Router::new(&manifest.trigger.http)?;
        let linker = linker()?;
        if config.max_instance_reuse_count == 0 || config.max_instance_concurrent_reuse_count == 0 {
            bail!("the instance reuse counts must be at least 1");
        }

        let mut components = HashMap::new();
        for (id, c) in &manifest.component {
            let hosts = c
                .allowed_outbound_hosts
                .iter()
                .map(|h| resolved.render(h))
                .collect::<Result<Vec<_>>>()
                .with_context(|| format!("component.{id}.allowed_outbound_hosts"))?;
            let allowed_hosts = AllowedHosts::parse(&hosts)
                .with_context(|| format!("component.{id}.allowed_outbound_hosts"))?;
            let variables = c
                .variables
                .iter()
                .map(|(k, t)| (k.clone(), resolved.render(t).map_err(|e| e.to_string())))
                .collect();
            let source = base.join(&c.source);
            let component = tokio::task::block_in_place(|| compile(&source))
                .with_context(|| format!("component.{id}.source"))?;
            let pre: InstancePre<HostState> = linker
                .instantiate_pre(&component)
                .map_err(anyhow::Error::from)
                .with_context(|| {
                    format!("component `{id}` imports something this host does not provide")
                })?;
            let runtime = Arc::new(ComponentRuntime {
                id: id.clone(),
                allowed_hosts,
                variables,
            });
            let instances = Arc::new(AtomicU64::new(0));
            // WASIp3 if it exports wasi:http/handler@0.3, else WASIp2 if it exports
            // wasi:http/incoming-handler@0.2 (as `wasmtime serve` and Spin decide).
            let http = match ServicePre::new(pre.clone()) {
                Ok(p3) => Some(HttpEntry::P3(ProxyHandler::new(P3Instances {
                    engine: engine().clone(),
                    pre: p3,
                    runtime: runtime.clone(),
                    max_reuse: config.max_instance_reuse_count,
                    max_concurrent: config.max_instance_concurrent_reuse_count,
                    instances: instances.clone(),
                }))),
                Err(_) => ProxyPre::new(pre.clone()).ok().map(HttpEntry::P2),
            };
            components.insert(
                id.clone(),
                LoadedComponent {
                    runtime,
                    http,
                    cron: SpinCronPre::new(pre).ok(),
                    instances,
                },
            );
        }
        for t in &manifest.trigger.http {
            if components[&t.component].http.is_none() {
                bail!(
                    "component `{}` (route `{}`) exports neither wasi:http/incoming-handler@0.2 \
                     nor wasi:http/handler@0.3",
                    t.component,
                    t.route
                );
            }
        }
        let mut cron_triggers = Vec::new();
        for t in &manifest.trigger.cron {
            if components[&t.component].cron.is_none() {
                bail!(
                    "component `{}` is on a cron trigger but does not export handle-cron-event",
                    t.component
                );
            }
            cron_triggers.push((t.clone(), CronSchedule::parse(&t.cron_expression)?));
        }
        Ok(Arc::new(App {
            engine: engine().clone(),
            router,
            components,
            cron_triggers,
        }))
    }

    fn store(&self, component: &LoadedComponent) -> Store<HostState> {
        component.instances.fetch_add(1, Ordering::SeqCst);
        Store::new(&self.engine, HostState::new(component.runtime.clone()))
    }

    /// How many instances of `component` have been created so far (HTTP and cron).
    pub fn instances_created(&self, component: &str) -> Option<u64> {
        self.components
            .get(component)
            .map(|c| c.instances.load(Ordering::SeqCst))
    }

    /// The WASI HTTP world of `component`'s handler, if it has one.
    pub fn http_world(&self, component: &str) -> Option<HttpWorld> {
        match self.components.get(component)?.http.as_ref()? {
            HttpEntry::P2(_) => Some(HttpWorld::Wasip2),
            HttpEntry::P3(_) => Some(HttpWorld::Wasip3),
        }
    }

    /// Serves one HTTP request. Never fails: an unknown route is a 404, and a trap is a 500
    /// for the requests its instance was serving (one for WASIp2; for WASIp3, those in
    /// flight on the trapped instance, which is dropped as Spin drops it).
    pub async fn handle(
        self: &Arc<Self>,
        mut req: hyper::Request<hyper::body::Incoming>,
        client: SocketAddr,
    ) -> hyper::Response<HyperOutgoingBody> {
        let path = req.uri().path().to_string();
        let Some(matched) = self.router.route(&path) else {
            return plain(404, "Not Found");
        };
        let component = &self.components[&matched.component];
        let Some(http) = component.http.as_ref() else {
            return plain(500, "component has no HTTP handler");
        };

        let host = req
            .headers()
            .get(hyper::header::HOST)
            .and_then(|h| h.to_str().ok())
            .unwrap_or("localhost")
            .to_string();
        let path_and_query = req
            .uri()
            .path_and_query()
            .map(|p| p.as_str().to_string())
            .unwrap_or_else(|| path.clone());
        let spin_headers = [
            ("spin-full-url", format!("http://{host}{path_and_query}")),
            ("spin-path-info", matched.path_info.clone()),
            ("spin-matched-route", matched.raw_route.clone()),
            ("spin-raw-component-route", matched.raw_route.clone()),
            ("spin-component-route", matched.component_route.clone()),
            ("spin-base-path", "/".to_string()),
            ("spin-client-addr", client.to_string()),
        ];
        for (name, value) in spin_headers {
            if let Ok(value) = HeaderValue::from_str(&value) {
                req.headers_mut()
                    .insert(HeaderName::from_static(name), value);
            }
        }
        // wasi:http wants an absolute URI's authority to build the incoming request.
        if req.uri().authority().is_none() {
            if let Ok(uri) = format!("http://{host}{path_and_query}").parse() {
                *req.uri_mut() = uri;
            }
        }

        match http {
            HttpEntry::P2(pre) => self.handle_p2(component, pre.clone(), req).await,
            HttpEntry::P3(handler) => {
                let req =
                    req.map(|body| body.map_err(wasmtime_wasi_http::Error::from).boxed_unsync());
                // Waits for the guest's response; its body may still be streaming after.
                match handler.handle((), req).await {
                    Ok(response) => response,
                    Err(e) => {
                        let id = &component.runtime.id;
                        eprintln!("spin-test-host: component `{id}` failed: {e:?}");
                        plain(500, "Internal Server Error")
                    }
                }
            }
        }
    }

    /// A WASIp2 request: a fresh instance, dropped when the handler returns.
    async fn handle_p2(
        &self,
        component: &LoadedComponent,
        proxy: ProxyPre<HostState>,
        req: hyper::Request<hyper::body::Incoming>,
    ) -> hyper::Response<HyperOutgoingBody> {
        let mut store = self.store(component);
        let (sender, receiver) = tokio::sync::oneshot::channel();
        let resources = (|| -> Result<_> {
            let req = store
                .data_mut()
                .http()
                .new_incoming_request(Scheme::Http, req)?;
            let out = store.data_mut().http().new_response_outparam(sender)?;
            Ok((req, out))
        })();
        let (wasi_req, out) = match resources {
            Ok(r) => r,
            Err(e) => return plain(400, &format!("bad request: {e}")),
        };
        let id = component.runtime.id.clone();
        let task = tokio::spawn(async move {
            let proxy = proxy.instantiate_async(&mut store).await?;
            proxy
                .wasi_http_incoming_handler()
                .call_handle(&mut store, wasi_req, out)
                .await
        });
        match receiver.await {
            Ok(Ok(response)) => {
                // The body may still be streaming; a trap from here on ends the body.
                tokio::spawn(async move {
                    if let Ok(Err(e)) = task.await {
                        eprintln!(
                            "spin-test-host: component `{id}` failed after responding: {e:?}"
                        );
                    }
                });
                response
            }
            Ok(Err(code)) => {
                eprintln!("spin-test-host: component `{id}` answered with error {code:?}");
                plain(500, "Internal Server Error")
            }
            Err(_) => {
                match task.await {
                    Ok(Err(e)) => eprintln!("spin-test-host: component `{id}` trapped: {e:?}"),
                    Err(e) => eprintln!("spin-test-host: component `{id}` task failed: {e}"),
                    Ok(Ok(())) => {
                        eprintln!("spin-test-host: component `{id}` never set a response")
                    }
                }
                plain(500, "Internal Server Error")
            }
        }
    }

    /// Runs one tick of a cron component now and returns what its handler returned.
    pub async fn fire_cron(&self, component: &str) -> Result<Result<(), String>> {
        let c = self
            .components
            .get(component)
            .ok_or_else(|| anyhow!("no component `{component}`"))?;
        let pre = c
            .cron
            .as_ref()
            .ok_or_else(|| anyhow!("component `{component}` does not export handle-cron-event"))?;
        let mut store = self.store(c);
        let instance = pre.instantiate_async(&mut store).await?;
        let metadata = Metadata {
            timestamp: SystemTime::now().duration_since(UNIX_EPOCH)?.as_secs(),
        };
        let result = instance
            .call_handle_cron_event(&mut store, metadata)
            .await?;
        Ok(result.map_err(|e| format!("{e:?}")))
    }

    /// The cron triggers of the manifest, as `(component, expression)`.
    pub fn cron_triggers(&self) -> Vec<(String, String)> {
        self.cron_triggers
            .iter()
            .map(|(t, _)| (t.component.clone(), t.cron_expression.clone()))
            .collect()
    }

    /// Starts one scheduler per cron trigger. Each tick runs in its own task, so a slow run
    /// can overlap the next one, as with Spin's cron trigger.
    pub fn spawn_cron_schedulers(self: &Arc<Self>) -> Vec<tokio::task::JoinHandle<()>> {
        self.cron_triggers
            .iter()
            .map(|(trigger, schedule)| {
                let app = self.clone();
                let component = trigger.component.clone();
                let schedule = schedule.clone();
                tokio::spawn(async move {
                    while let Some(next) = schedule.next_after(chrono::Utc::now()) {
                        let wait = (next - chrono::Utc::now()).to_std().unwrap_or_default();
                        tokio::time::sleep(wait).await;
                        let app = app.clone();
                        let component = component.clone();
                        tokio::spawn(async move {
                            match app.fire_cron(&component).await {
                                Ok(Ok(())) => {}
                                Ok(Err(e)) => {
                                    eprintln!("spin-test-host: cron `{component}` returned {e}")
                                }
                                Err(e) => {
                                    eprintln!("spin-test-host: cron `{component}` trapped: {e:?}")
                                }
                            }
                        });
                    }
                })
            })
            .collect()
    }
}

fn plain(status: u16, text: &str) -> hyper::Response<HyperOutgoingBody> {
    let body = Full::new(Bytes::from(text.to_string()))
        .map_err(|never: std::convert::Infallible| -> wasmtime_wasi_http::Error { match never {} })
        .boxed_unsync();
    hyper::Response::builder()
        .status(status)
        .header("content-type", "text/plain")
        .body(body)
        .expect("static response parts are valid")
}

//! Loading a Spin app and running its components: compile once, pre-instantiate once,
//! instantiate per request (or per cron tick), as Spin does.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::{anyhow, bail, Context, Result};
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::header::{HeaderName, HeaderValue};
use wasmtime::component::{Component, HasSelf, InstancePre, Linker};
use wasmtime::{Config, Engine, Store};
use wasmtime_wasi_http::p2::bindings::http::types::Scheme;
use wasmtime_wasi_http::p2::bindings::ProxyPre;
use wasmtime_wasi_http::p2::body::HyperOutgoingBody;
use wasmtime_wasi_http::WasiHttpView;

use crate::bindings::cron::{fermyon::spin_cron::cron_types::Metadata, SpinCronPre};
use crate::cron::CronSchedule;
use crate::manifest::{CronTrigger, Manifest};
use crate::outbound::AllowedHosts;
use crate::router::Router;
use crate::state::{ComponentRuntime, HostState};
use crate::variables::ResolvedVariables;

/// How to start an app.
#[derive(Debug, Clone, Default)]
pub struct AppConfig {
    pub manifest: PathBuf,
    /// Environment entries (`SPIN_VARIABLE_*`) consulted before the process environment,
    /// so tests can run several apps side by side with different settings.
    pub env: HashMap<String, String>,
    /// Whether the process environment is consulted too (true for the CLI).
    pub process_env: bool,
}

struct LoadedComponent {
    runtime: Arc<ComponentRuntime>,
    http: Option<ProxyPre<HostState>>,
    cron: Option<SpinCronPre<HostState>>,
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
        Engine::new(&config).expect("wasmtime engine configuration is valid")
    })
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

fn linker() -> Result<Linker<HostState>> {
    let mut linker = Linker::new(engine());
    wasmtime_wasi::p2::add_to_linker_async(&mut linker)?;
    wasmtime_wasi_http::p2::add_only_http_to_linker_async(&mut linker)?;
    use crate::bindings::{fermyon::spin, spin::postgres::postgres};
    spin::redis::add_to_linker::<_, HasSelf<_>>(&mut linker, |s| s)?;
    spin::variables::add_to_linker::<_, HasSelf<_>>(&mut linker, |s| s)?;
    postgres::add_to_linker::<_, HasSelf<_>>(&mut linker, |s| s)?;
    Ok(linker)
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
            components.insert(
                id.clone(),
                LoadedComponent {
                    runtime: Arc::new(ComponentRuntime {
                        id: id.clone(),
                        allowed_hosts,
                        variables,
                    }),
                    http: ProxyPre::new(pre.clone()).ok(),
                    cron: SpinCronPre::new(pre).ok(),
                },
            );
        }
        for t in &manifest.trigger.http {
            if components[&t.component].http.is_none() {
                bail!(
                    "component `{}` (route `{}`) does not export wasi:http/incoming-handler",
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
        Store::new(&self.engine, HostState::new(component.runtime.clone()))
    }

    /// Serves one HTTP request. Never fails: an unknown route is a 404 and a trap in the
    /// component is a 500 for this request only.
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
        let Some(proxy) = component.http.clone() else {
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
        let id = matched.component.clone();
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

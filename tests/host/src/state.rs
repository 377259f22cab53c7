//! Per-instance state: one `Store` per instance. A WASIp2 instance serves one request (or
//! cron tick); a WASIp3 instance serves up to Spin's reuse limits, so whatever a guest keeps
//! in its table (an open Redis connection) outlives a request. Holds WASI, WASI-HTTP and the
//! component's own outbound and variable view.

use std::collections::HashMap;

use std::future::Future;
use wasmtime::component::{Accessor, HasSelf, ResourceTable};
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};

use wasmtime_wasi_http::{
    Error as HttpError, RequestOptions, WasiBody, WasiHttpCtx, WasiHttpCtxView, WasiHttpHooks,
    WasiHttpView,
};

use crate::bindings::fermyon::spin::variables as variables2;
use crate::bindings::p3::spin::variables::variables as variables3;
use crate::outbound::AllowedHosts;

/// What the host knows about one component of the app, fixed at start-up.
pub struct ComponentRuntime {
    pub id: String,
    pub allowed_hosts: AllowedHosts,
    /// `[component.X.variables]` expanded; an expansion that failed keeps its reason.
    pub variables: HashMap<String, Result<String, String>>,
}

impl ComponentRuntime {
    /// Spin refuses the connection and says why on the host's log; the guest only sees
    /// the error value. Addresses logged here never carry credentials.
    pub fn deny(&self, target: &str) {
        eprintln!(
            "spin-test-host: component `{}` tried to connect to {target}, which is not in its \
             allowed_outbound_hosts: destination not allowed",
            self.id
        );
    }
}

/// Outbound HTTP is refused: flashclaim's components have no HTTP hosts in
/// `allowed_outbound_hosts`, and Spin answers such requests with `HTTP-request-denied`.
struct DenyOutboundHttp;

impl WasiHttpHooks for DenyOutboundHttp {
    #[allow(clippy::type_complexity)]
    fn send_request(
        &mut self,
        _request: hyper::Request<WasiBody>,
        _options: Option<RequestOptions>,
        _io: Box<dyn Future<Output = Result<(), HttpError>> + Send>,
    ) -> Box<
        dyn Future<
                Output = Result<
                    (
                        hyper::Response<WasiBody>,
                        Box<dyn Future<Output = Result<(), HttpError>> + Send>,
                    ),
                    HttpError,
                >,
            > + Send,
    > {
        Box::new(async { Err(HttpError::HttpRequestDenied) })
    }
}

pub struct HostState {
    pub(crate) wasi: WasiCtx,
    pub(crate) http: WasiHttpCtx,
    hooks: DenyOutboundHttp,
    pub(crate) table: ResourceTable,
    pub(crate) component: std::sync::Arc<ComponentRuntime>,
}

impl HostState {
    pub fn new(component: std::sync::Arc<ComponentRuntime>) -> Self {
        let wasi = WasiCtx::builder().inherit_stdout().inherit_stderr().build();
        Self {
            wasi,
            http: WasiHttpCtx::new(),
            table: ResourceTable::new(),
            hooks: DenyOutboundHttp,
            component,
        }
    }
}

impl WasiView for HostState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

impl WasiHttpView for HostState {
    fn http(&mut self) -> WasiHttpCtxView<'_> {
        WasiHttpCtxView {
            ctx: &mut self.http,
            table: &mut self.table,
            hooks: &mut self.hooks,
        }
    }
}

/// Why a variable look-up failed; both WIT versions have these cases.
enum VariableFailure {
    InvalidName(String),
    Undefined(String),
    Provider(String),
}

impl ComponentRuntime {
    /// A `[component.X.variables]` entry as Spin answers `get`.
    fn variable(&self, name: String) -> Result<String, VariableFailure> {
        if crate::manifest::check_variable_name(&name).is_err() {
            return Err(VariableFailure::InvalidName(name));
        }
        match self.variables.get(&name) {
            None => Err(VariableFailure::Undefined(format!(
                "no variable for \"{}\".\"{name}\"",
                self.id
            ))),
            Some(Ok(value)) => Ok(value.clone()),
            Some(Err(reason)) => Err(VariableFailure::Provider(reason.clone())),
        }
    }
}

macro_rules! variable_error {
    ($wit:ident) => {
        impl From<VariableFailure> for $wit::Error {
            fn from(f: VariableFailure) -> Self {
                match f {
                    VariableFailure::InvalidName(n) => $wit::Error::InvalidName(n),
                    VariableFailure::Undefined(n) => $wit::Error::Undefined(n),
                    VariableFailure::Provider(n) => $wit::Error::Provider(n),
                }
            }
        }
    };
}

variable_error!(variables2);
variable_error!(variables3);

impl variables2::Host for HostState {
    async fn get(&mut self, name: String) -> Result<String, variables2::Error> {
        Ok(self.component.variable(name)?)
    }
}

impl variables3::Host for HostState {}

impl<T> variables3::HostWithStore<T> for HasSelf<HostState> {
    async fn get(accessor: &Accessor<T, Self>, name: String) -> Result<String, variables3::Error> {
        let component = accessor.with(|mut access| access.get().component.clone());
        Ok(component.variable(name)?)
    }
}

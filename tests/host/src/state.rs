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

/// Outbound HTTP as Spin does it: only to `allowed_outbound_hosts` (else
/// `HTTP-request-denied`, logged), then sent. Plain `http://` only: the test host carries no
/// TLS stack, and its tests talk to local servers (the captcha verifier's stand-in).
struct OutboundHttp {
    component: std::sync::Arc<ComponentRuntime>,
}

type SendResult = Result<
    (
        hyper::Response<WasiBody>,
        Box<dyn Future<Output = Result<(), HttpError>> + Send>,
    ),
    HttpError,
>;

impl WasiHttpHooks for OutboundHttp {
    fn send_request(
        &mut self,
        mut request: hyper::Request<WasiBody>,
        _options: Option<RequestOptions>,
        _io: Box<dyn Future<Output = Result<(), HttpError>> + Send>,
    ) -> Box<dyn Future<Output = SendResult> + Send> {
        let uri = request.uri().clone();
        let scheme = uri.scheme_str().unwrap_or("https").to_string();
        let host = uri.host().unwrap_or_default().to_string();
        let port = uri
            .port_u16()
            .unwrap_or(if scheme == "http" { 80 } else { 443 });
        if !self.component.allowed_hosts.allows(&scheme, &host, port) {
            self.component.deny(&format!("{scheme}://{host}:{port}"));
            return Box::new(async { Err(HttpError::HttpRequestDenied) });
        }
        if scheme != "http" {
            eprintln!(
                "spin-test-host: {scheme}:// is not supported by the test host (plain http only)"
            );
            return Box::new(async { Err(HttpError::HttpRequestDenied) });
        }
        Box::new(async move {
            use http_body_util::BodyExt;
            let stream = tokio::net::TcpStream::connect((host.as_str(), port))
                .await
                .map_err(|_| HttpError::ConnectionRefused)?;
            let (mut sender, conn) =
                hyper::client::conn::http1::handshake(wasmtime_wasi_http::io::TokioIo::new(stream))
                    .await
                    .map_err(|_| HttpError::ConnectionTerminated)?;
            tokio::spawn(conn);
            // The request line carries the path only; the authority goes in `Host`.
            if let Some(authority) = uri.authority() {
                let value = hyper::header::HeaderValue::from_str(authority.as_str())
                    .map_err(|_| HttpError::HttpRequestUriInvalid)?;
                request.headers_mut().insert(hyper::header::HOST, value);
            }
            *request.uri_mut() = uri
                .path_and_query()
                .map_or("/", |p| p.as_str())
                .parse()
                .map_err(|_| HttpError::HttpRequestUriInvalid)?;
            let response = sender
                .send_request(request)
                .await
                .map_err(|_| HttpError::HttpResponseIncomplete)?;
            let response = response.map(|body| {
                body.map_err(|_| HttpError::HttpResponseIncomplete)
                    .boxed_unsync()
            });
            let done: Box<dyn Future<Output = Result<(), HttpError>> + Send> =
                Box::new(async { Ok(()) });
            Ok((response, done))
        })
    }
}

pub struct HostState {
    pub(crate) wasi: WasiCtx,
    pub(crate) http: WasiHttpCtx,
    hooks: OutboundHttp,
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
            hooks: OutboundHttp {
                component: component.clone(),
            },
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

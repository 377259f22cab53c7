//! The web component: the H5 claim app at `/` and the operator console at `/console/`,
//! with their scripts, styles and vendored libraries under `/assets/<version>/`. Every byte
//! is compiled in (see build.rs); the pages talk to the API routes of the other components.

mod site;

use spin_sdk::http::{Method, Request, Response};

#[spin_sdk::http_component]
fn handle(req: Request) -> Response {
    let method = match req.method() {
        Method::Get => site::Method::Get,
        Method::Head => site::Method::Head,
        _ => site::Method::Other,
    };
    let reply = site::answer(&site::WebRequest {
        method,
        path: req.path(),
        if_none_match: req.header("if-none-match").and_then(|v| v.as_str()),
    });
    let mut builder = Response::builder();
    builder.status(reply.status);
    for (name, value) in reply.headers {
        builder.header(name, value);
    }
    builder.body(reply.body).build()
}

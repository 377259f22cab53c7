//! The admin component: everything under `/admin` (role `admin` in the JWT), except
//! `/admin/drain`, which the drain component serves.
//!
//! The handler is the async form only so the claims export can stream its body; every
//! other route answers a whole response.

use flashclaim_spin as glue;

mod activities;
mod listing;
mod operations;
mod reports;

use flashclaim_core::{ApiError, HttpResponse};
use spin_sdk::http::{Fields, Method, OutgoingResponse, Request, ResponseOutparam};

#[spin_sdk::http_component]
async fn handle(req: Request, out: ResponseOutparam) {
    // A preflight carries no token: answer it before the role check.
    let facts = glue::request_facts(&req);
    if let Some(answer) = glue::preflight(&facts) {
        return send(out, answer).await;
    }
    let response = match route(&req) {
        Ok(Route::Done(response)) => response,
        Ok(Route::ExportClaims(id)) => {
            let headers = glue::finish(&facts, HttpResponse::empty(200)).headers;
            return reports::export_claims(id, headers, out).await;
        }
        Err(e) => e.to_response(),
    };
    send(out, glue::finish(&facts, response)).await;
}

enum Route {
    Done(HttpResponse),
    ExportClaims(flashclaim_core::ids::ActivityId),
}

fn route(req: &Request) -> Result<Route, ApiError> {
    let segments = glue::path_segments(req);
    // Every admin route needs the role; check it before revealing what exists.
    glue::admin(req)?;
    let done = match (req.method(), segments.as_slice()) {
        (Method::Get, ["admin", "activities"]) => listing::activities(req.query()),
        (Method::Get, ["admin", "activities", id]) => listing::activity(id),
        (Method::Get, ["admin", "blacklist"]) => listing::blacklist(req.query()),
        (Method::Post, ["admin", "activities"]) => activities::create(req),
        (Method::Patch, ["admin", "activities", id]) => activities::update(req, id),
        (Method::Post, ["admin", "activities", id, "publish"]) => activities::publish(id),
        (Method::Post, ["admin", "activities", id, "close"]) => activities::close(id),
        (Method::Post, ["admin", "activities", id, "codes"]) => {
            activities::upload_codes(req, id, None)
        }
        (Method::Post, ["admin", "activities", id, "ticket_types", key, "codes"]) => {
            activities::upload_codes(req, id, Some(key))
        }
        (Method::Get, ["admin", "activities", id, "stats"]) => reports::stats(id),
        (Method::Get, ["admin", "activities", id, "reconcile"]) => reports::reconcile(id),
        (Method::Get, ["admin", "activities", id, "claims.csv"]) => {
            return reports::check_export(id).map(Route::ExportClaims)
        }
        (Method::Put, ["admin", "blacklist", user]) => operations::blacklist(req, user),
        (Method::Delete, ["admin", "blacklist", user]) => operations::unblacklist(user),
        (Method::Post, ["admin", "tickets", code, "redeem"]) => operations::redeem(req, code),
        (
            _,
            ["admin", "activities"]
            | ["admin", "activities", _]
            | ["admin", "activities", _, "publish" | "close" | "codes" | "stats" | "reconcile" | "claims.csv"]
            | ["admin", "activities", _, "ticket_types", _, "codes"]
            | ["admin", "blacklist"]
            | ["admin", "blacklist", _]
            | ["admin", "tickets", _, "redeem"],
        ) => Err(ApiError::MethodNotAllowed),
        _ => Err(ApiError::NotFound),
    };
    done.map(Route::Done)
}

/// Writes a whole response through the streaming interface.
async fn send(out: ResponseOutparam, response: HttpResponse) {
    let headers: Vec<(String, Vec<u8>)> = response
        .headers
        .iter()
        .map(|(name, value)| (name.to_string(), value.as_bytes().to_vec()))
        .collect();
    let outgoing =
        OutgoingResponse::new(Fields::from_list(&headers).unwrap_or_else(|_| Fields::new()));
    let _ = outgoing.set_status_code(response.status);
    if let Err(e) = out.set_with_body(outgoing, response.body).await {
        eprintln!("flashclaim: admin: writing the response failed: {e:?}");
    }
}

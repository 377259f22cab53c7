//! `POST /api/activities/:id/passes`: the claim pass of an anti-bot activity (pass.lua: one
//! per user, at most stock × `claim_pass_factor`, limited per client address with the claims'
//! bucket, behind the optional human check).
//!
//! Served here, not by the claim component: a pass is taken once per user and activity, a
//! claim thousands of times a second, and the human check's HTTP client made every WASIp2
//! claim instance bigger and slower (84 % against 75 % of the minimal claim component in
//! paired runs) for a route that never uses it.

use flashclaim_core::claim::{self, ClaimSettings};
use flashclaim_core::client_addr;
use flashclaim_core::ids::ActivityId;
use flashclaim_core::scripts::{self, PASS};
use flashclaim_core::{ApiError, HttpResponse};
use spin_sdk::http::Request;

use crate::glue;

pub fn post(req: &Request, id: &str) -> Result<HttpResponse, ApiError> {
    let activity = ActivityId::parse(id)?;
    let principal = glue::principal(req)?;
    let settings = ClaimSettings::from_variables(glue::var("jwt_secret")?, None, None)
        .and_then(|s| {
            s.with_per_address(glue::optional_var("claim_rate_limit_per_address").as_deref())
        })
        .map_err(|e| {
            eprintln!("flashclaim: {e}");
            ApiError::Internal
        })?;
    glue::human_check(req)?;
    let client = client_addr::stored(glue::client_addr(req), settings.jwt_secret.as_bytes());
    let factor = claim::pass_factor(glue::optional_var("claim_pass_factor").as_deref());
    let (keys, argv) = claim::pass_command(
        activity,
        &principal.user,
        glue::now(),
        factor,
        &client,
        settings.per_address,
    );
    let reply = glue::redis_for(activity, "pass")?
        .run_confirmed(&PASS, &keys, &argv, scripts::status_is_success)
        .map_err(|e| glue::redis_unavailable("pass", e))?;
    claim::decode_pass(activity, &reply)
}

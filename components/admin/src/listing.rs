//! What the operator console lists: every activity whatever its status, drafts included
//! (`GET /admin/activities`, `GET /admin/activities/{id}`), and the blacklist
//! (`GET /admin/blacklist`). Postgres holds the definitions; the stock is live from Redis
//! for activities that were published.

use flashclaim_core::activity::{Activity, Status, TypeStocks};
use flashclaim_core::ids::ActivityId;
use flashclaim_core::listing::{self, AdminActivityQuery, BlacklistQuery};
use flashclaim_core::{ApiError, HttpResponse};
use spin_sdk::pg4::ParameterValue;

use crate::glue;

/// A page of activities, newest first, optionally of one status.
pub fn activities(query: &str) -> Result<HttpResponse, ApiError> {
    let query = AdminActivityQuery::parse(query)?;
    // One row of arrays, even for an empty page (glue::list_rows); the arrays are in id
    // order, so the page is read back to front.
    let rows = glue::pg_open()?
        .query(
            &format!(
                "SELECT {} FROM (SELECT * FROM activities \
                   WHERE ($1 = '' OR status = $1) AND ($2::int8 = 0 OR id < $2::int8) \
                   ORDER BY id DESC LIMIT $3) AS activities",
                glue::ACTIVITY_ARRAYS
            ),
            &[
                glue::str_param(query.status.map_or("", Status::as_str)),
                ParameterValue::Int64(query.before),
                ParameterValue::Int64(query.limit + 1),
            ],
        )
        .map_err(|e| glue::pg_internal("admin list activities", e))?;
    let mut page = Vec::new();
    for row in glue::list_rows(rows, "admin list activities")?.iter().rev() {
        page.push(glue::activity_row(row).ok_or_else(|| {
            eprintln!("flashclaim: admin list activities: an unreadable row");
            ApiError::Internal
        })?);
    }
    let more = page.len() as i64 > query.limit;
    page.truncate(query.limit as usize);
    let next_cursor = more
        .then(|| page.last().map(|a| a.id.to_string()))
        .flatten();
    let stocks = live_stocks(&page)?;
    let activities: Vec<serde_json::Value> = page
        .iter()
        .zip(stocks)
        .map(|(a, stock)| a.view_with(|key| stock.get(key).copied()))
        .collect();
    Ok(HttpResponse::json(
        200,
        &serde_json::json!({ "activities": activities, "next_cursor": next_cursor }),
    ))
}

/// One activity whatever its status.
pub fn activity(id: &str) -> Result<HttpResponse, ApiError> {
    let id = ActivityId::parse(id)?;
    let activity = glue::load_activity(&glue::pg_open()?, id)?.ok_or(ApiError::NotFound)?;
    let stocks = live_stocks(std::slice::from_ref(&activity))?;
    let stock = stocks.first().cloned().unwrap_or_default();
    Ok(HttpResponse::json(
        200,
        &activity.view_with(|key| stock.get(key).copied()),
    ))
}

/// The stock Redis holds for each ticket type of each published or closed activity (one
/// EVALSHA per endpoint, glue::type_stocks); none for drafts.
fn live_stocks(activities: &[Activity]) -> Result<Vec<TypeStocks>, ApiError> {
    let loaded: Vec<(usize, (ActivityId, i64))> = activities
        .iter()
        .enumerate()
        .filter(|(_, a)| a.status != Status::Draft)
        .map(|(i, a)| (i, (a.id, a.stock_buckets)))
        .collect();
    let ids: Vec<(ActivityId, i64)> = loaded.iter().map(|(_, id)| *id).collect();
    let mut stocks = vec![TypeStocks::default(); activities.len()];
    for ((i, _), s) in loaded
        .iter()
        .zip(glue::type_stocks(&ids, "admin list activities")?)
    {
        stocks[*i] = s;
    }
    Ok(stocks)
}

/// A page of blacklisted users with their reasons, by user id.
pub fn blacklist(query: &str) -> Result<HttpResponse, ApiError> {
    let query = BlacklistQuery::parse(query)?;
    // One row of arrays, even for an empty blacklist (glue::list_rows).
    let rows = glue::pg_open()?
        .query(
            "SELECT array_agg(user_id ORDER BY user_id), array_agg(reason ORDER BY user_id), \
                    array_agg((extract(epoch FROM created_at) * 1000)::int8 ORDER BY user_id) \
             FROM (SELECT * FROM blacklist WHERE user_id > $1 \
                   ORDER BY user_id LIMIT $2) AS page",
            &[
                glue::str_param(&query.after),
                ParameterValue::Int64(query.limit + 1),
            ],
        )
        .map_err(|e| glue::pg_internal("list blacklist", e))?;
    let mut users = Vec::new();
    for row in glue::list_rows(rows, "list blacklist")? {
        let (Some(user_id), Some(reason), Some(since)) =
            (glue::text(&row[0]), glue::text(&row[1]), glue::int(&row[2]))
        else {
            eprintln!("flashclaim: list blacklist: an unreadable row");
            return Err(ApiError::Internal);
        };
        users.push((user_id, reason, since));
    }
    let more = users.len() as i64 > query.limit;
    users.truncate(query.limit as usize);
    let next_cursor = more
        .then(|| {
            users
                .last()
                .map(|(user, _, _)| listing::blacklist_cursor(user))
        })
        .flatten();
    let users: Vec<serde_json::Value> = users
        .into_iter()
        .map(|(user_id, reason, since)| {
            serde_json::json!({
                "user_id": user_id,
                "reason": reason,
                "created_at": flashclaim_core::time::Millis(since),
            })
        })
        .collect();
    Ok(HttpResponse::json(
        200,
        &serde_json::json!({ "users": users, "next_cursor": next_cursor }),
    ))
}

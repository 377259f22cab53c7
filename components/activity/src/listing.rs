//! `GET /api/activities`: published activities that have not ended, oldest id first, a
//! page at a time. Pages are cached briefly in Redis (on the first endpoint) so a crowd
//! refreshing the list reads Postgres once per page per TTL; stock is always live.

use flashclaim_core::activity::{self, ListQuery, LIST_TTL_MS};
use flashclaim_core::ids::ActivityId;
use flashclaim_core::keys;
use flashclaim_core::scripts::{Arg, RedisCommands, Reply};
use flashclaim_core::ApiError;
use spin_sdk::pg4::ParameterValue;

use crate::glue::{self, SpinRedis};

pub fn list(query: &str) -> Result<serde_json::Value, ApiError> {
    let query = ListQuery::parse(query)?;
    let shards = glue::redis_shards()?;
    let unavailable = |e| glue::redis_unavailable("list activities", e);
    let home = SpinRedis::open(&shards.all()[0]).map_err(unavailable)?;
    let page_key = keys::list_page(query.after, query.limit);
    let cached = home
        .execute("GET", &[Arg::from(page_key.as_str())])
        .map_err(unavailable)?;
    let mut page: serde_json::Value = match cached.first().and_then(Reply::as_text) {
        Some(text) => serde_json::from_str(text).map_err(|_| ApiError::Internal)?,
        None => {
            let page = read_page(query)?;
            let _ = home.execute(
                "SET",
                &[
                    Arg::from(page_key),
                    Arg::from(page.to_string()),
                    Arg::from("PX"),
                    Arg::Int(LIST_TTL_MS),
                ],
            );
            page
        }
    };
    // Live stock of every type: one EVALSHA of stocks.lua per Redis endpoint holding
    // activities of the page.
    let items = page["activities"]
        .as_array_mut()
        .ok_or(ApiError::Internal)?;
    let ids = items
        .iter()
        .map(|item| {
            let n = item["stock_buckets"].as_i64().unwrap_or(1);
            item["id"].as_i64().map(|id| (ActivityId::from_db(id), n))
        })
        .collect::<Option<Vec<_>>>()
        .ok_or(ApiError::Internal)?;
    for (item, stocks) in items
        .iter_mut()
        .zip(glue::type_stocks(&ids, "list activities")?)
    {
        activity::lay_stocks_over(item, &stocks);
    }
    Ok(page)
}

fn read_page(query: ListQuery) -> Result<serde_json::Value, ApiError> {
    // One row of arrays, even for an empty page (glue::list_rows).
    let rows = glue::pg_open()?
        .query(
            &format!(
                "SELECT {} FROM (SELECT * FROM activities \
                   WHERE status = 'published' AND ends_at > now() AND id > $1 \
                   ORDER BY id LIMIT $2) AS activities",
                glue::ACTIVITY_ARRAYS
            ),
            &[
                ParameterValue::Int64(query.after),
                ParameterValue::Int64(query.limit + 1),
            ],
        )
        .map_err(|e| glue::pg_internal("list activities", e))?;
    let mut activities: Vec<serde_json::Value> = glue::list_rows(rows, "list activities")?
        .iter()
        .filter_map(|r| glue::activity_row(r))
        .map(|a| a.view())
        .collect();
    let more = activities.len() as i64 > query.limit;
    activities.truncate(query.limit as usize);
    let next_cursor = more
        .then(|| activities.last().and_then(|a| a["id"].as_i64()))
        .flatten()
        .map(|id| id.to_string());
    Ok(serde_json::json!({ "activities": activities, "next_cursor": next_cursor }))
}

//! Activity definitions: create, change, publish, close, and their code pools. Postgres is
//! the source of truth; Redis gets what claims need, by idempotent scripts, so a step that
//! failed half-way is completed by running it again.

use flashclaim_core::activity::{self, Activity, Kind, NewActivity, Status, TypeStocks};
use flashclaim_core::admin::apply_patch;
use flashclaim_core::codes;
use flashclaim_core::ids::ActivityId;
use flashclaim_core::keys::{ActivityKeys, ACTIVITY_INDEX};
use flashclaim_core::scripts::{self, Arg, RedisCommands, Reply, POOL, PUBLISH};
use flashclaim_core::ticket::TicketRecord;
use flashclaim_core::ticket_type::{TicketType, TypeKey};
use flashclaim_core::time::Millis;
use flashclaim_core::{ApiError, HttpResponse};
use spin_sdk::http::Request;
use spin_sdk::pg4::{Connection, ParameterValue};

use crate::glue::{self, SpinRedis};

pub fn create(req: &Request) -> Result<HttpResponse, ApiError> {
    let new = NewActivity::parse(req.body())?;
    let created = new.into_activity(ActivityId::from_db(0), Status::Draft);
    let pg = glue::pg_open()?;
    // The activity and its types in one statement: atomic without a transaction.
    let rows = pg
        .query(
            &format!(
                "WITH a AS (INSERT INTO activities \
                   (name, description, image_url, starts_at, ends_at, stock_total, per_user_limit, kind, require_pass, stock_buckets) \
                 VALUES ($1, $2, $3, to_timestamp($4::int8 / 1000.0), to_timestamp($5::int8 / 1000.0), \
                         $6::int8, $7::int8, $8, $9, $18::int8) \
                 RETURNING id), \
                 t AS (INSERT INTO ticket_types {TYPE_COLUMNS} SELECT a.id, {TYPE_VALUES} FROM a, {TYPE_ROWS}) \
                 SELECT id FROM a"
            ),
            &[
                definition_params(&created),
                vec![ParameterValue::Int64(created.stock_buckets)],
            ]
            .concat(),
        )
        .map_err(|e| glue::pg_internal("create activity", e))?;
    let id = rows
        .rows
        .first()
        .and_then(|r| glue::int(&r[0]))
        .ok_or(ApiError::Internal)?;
    let created = Activity {
        id: ActivityId::from_db(id),
        ..created
    };
    let mut response = HttpResponse::json(201, &created.view());
    response
        .headers
        .push(("location", format!("/api/activities/{id}")));
    Ok(response)
}

/// The ticket_types columns every write names, the values for one row of [`TYPE_ROWS`],
/// and the rows: `$10`..`$17` of [`definition_params`], one array per column, unnested in
/// the operator's order.
const TYPE_COLUMNS: &str = "(activity_id, key, position, name, description, stock_total, \
     per_user_limit, kind, starts_at, ends_at)";
const TYPE_VALUES: &str = "t.key, t.pos - 1, t.name, t.description, t.stock, t.lim, t.kind, \
     to_timestamp(t.opens / 1000.0), to_timestamp(t.closes / 1000.0)";
const TYPE_ROWS: &str = "unnest($10::text[], $11::text[], $12::text[], $13::int8[], $14::int8[], \
     $15::text[], $16::int8[], $17::int8[]) WITH ORDINALITY \
     AS t(key, name, description, stock, lim, kind, opens, closes, pos)";

/// The activity's columns, `$1`..`$9`, then its types as `$10`..`$17` ([`TYPE_ROWS`]), in
/// the order create and update use them. The activity row keeps the summary older readers
/// know: the stock of all types, their kind (or `mixed`), the limit over all types.
fn definition_params(a: &Activity) -> Vec<ParameterValue> {
    let types = &a.ticket_types;
    let texts = |f: &dyn Fn(&TicketType) -> &str| {
        ParameterValue::ArrayStr(types.iter().map(|t| Some(f(t).to_string())).collect())
    };
    let ints = |f: &dyn Fn(&TicketType) -> Option<i64>| {
        ParameterValue::ArrayInt64(types.iter().map(f).collect())
    };
    vec![
        glue::str_param(&a.name),
        glue::str_param(&a.description),
        a.image_url
            .as_deref()
            .map_or(ParameterValue::DbNull, glue::str_param),
        ParameterValue::Int64(a.starts_at.0),
        ParameterValue::Int64(a.ends_at.0),
        ParameterValue::Int64(a.stock_total()),
        a.per_user_limit
            .map_or(ParameterValue::DbNull, ParameterValue::Int64),
        glue::str_param(a.kind_label()),
        ParameterValue::Boolean(a.require_pass),
        texts(&|t| t.key.as_str()),
        texts(&|t| &t.name),
        texts(&|t| &t.description),
        ints(&|t| Some(t.stock_total)),
        ints(&|t| Some(t.per_user_limit)),
        texts(&|t| t.kind.as_str()),
        ints(&|t| t.starts_at.map(|m| m.0)),
        ints(&|t| t.ends_at.map(|m| m.0)),
    ]
}

/// `PATCH`: anything while draft, only the display fields once published (the types'
/// names and descriptions among them). A published activity's cached view is dropped so
/// readers see the change at once.
pub fn update(req: &Request, id: &str) -> Result<HttpResponse, ApiError> {
    let id = ActivityId::parse(id)?;
    let pg = glue::pg_open()?;
    let current = glue::load_activity(&pg, id)?.ok_or(ApiError::NotFound)?;
    let changed = apply_patch(&current, req.body())?;
    refuse_dropping_types_with_codes(&pg, &changed)?;
    let mut params = definition_params(&changed);
    params.push(ParameterValue::Int64(id.get()));
    params.push(glue::str_param(current.status.as_str()));
    params.push(ParameterValue::Int64(changed.stock_buckets));
    // One statement: the activity, types left out removed, the others written over. The
    // status guard makes a concurrent publish win: then this update changes nothing.
    let updated = pg
        .query(
            &format!(
                "WITH a AS (UPDATE activities SET name = $1, description = $2, image_url = $3, \
                   starts_at = to_timestamp($4::int8 / 1000.0), ends_at = to_timestamp($5::int8 / 1000.0), \
                   stock_total = $6::int8, per_user_limit = $7::int8, kind = $8, require_pass = $9, \
                   stock_buckets = $20::int8, updated_at = now() \
                 WHERE id = $18 AND status = $19 RETURNING id), \
                 gone AS (DELETE FROM ticket_types WHERE activity_id IN (SELECT id FROM a) \
                   AND key <> ALL($10::text[])), \
                 t AS (INSERT INTO ticket_types {TYPE_COLUMNS} SELECT a.id, {TYPE_VALUES} FROM a, {TYPE_ROWS} \
                   ON CONFLICT (activity_id, key) DO UPDATE SET position = EXCLUDED.position, \
                     name = EXCLUDED.name, description = EXCLUDED.description, \
                     stock_total = EXCLUDED.stock_total, per_user_limit = EXCLUDED.per_user_limit, \
                     kind = EXCLUDED.kind, starts_at = EXCLUDED.starts_at, ends_at = EXCLUDED.ends_at) \
                 SELECT count(*)::int8 FROM a"
            ),
            &params,
        )
        .map_err(|e| match glue::pg_constraint(&e) {
            Some("ticket_codes_activity_id_ticket_type_fkey") => ApiError::Conflict(
                "a ticket type with uploaded codes cannot be removed".into(),
            ),
            _ => glue::pg_internal("update activity", e),
        })?
        .rows
        .first()
        .and_then(|r| glue::int(&r[0]))
        .unwrap_or(0);
    if updated == 0 {
        return Err(ApiError::Conflict(
            "the activity changed status meanwhile; read it and try again".into(),
        ));
    }
    if current.status == Status::Draft {
        return Ok(HttpResponse::json(200, &changed.view()));
    }
    let redis = glue::redis_for(id, "update activity")?;
    redis
        .execute("DEL", &[Arg::from(ActivityKeys::new(id).view())])
        .map_err(|e| glue::redis_unavailable("update activity", e))?;
    let stocks = glue::type_stocks(&[(id, changed.stock_buckets)], "update activity")?;
    let stock = stocks.first().cloned().unwrap_or_default();
    Ok(HttpResponse::json(
        200,
        &changed.view_with(|key| stock.get(key).copied()),
    ))
}

/// A type that holds uploaded codes stays: dropping it would lose them. Checked first
/// because not every host passes the foreign key's name on (the statement's own refusal
/// below covers an upload that lands in between).
fn refuse_dropping_types_with_codes(pg: &Connection, changed: &Activity) -> Result<(), ApiError> {
    let kept: Vec<String> = changed
        .ticket_types
        .iter()
        .map(|t| t.key.to_string())
        .collect();
    // count(*): one row whatever the codes.
    let holding = pg
        .query(
            "SELECT count(*)::int8 FROM ticket_codes WHERE activity_id = $1 AND ticket_type <> ALL($2::text[])",
            &[ParameterValue::Int64(changed.id.get()), glue::str_array(&kept)],
        )
        .map_err(|e| glue::pg_internal("update activity", e))?
        .rows
        .first()
        .and_then(|r| glue::int(&r[0]))
        .unwrap_or(0);
    if holding > 0 {
        return Err(ApiError::Conflict(
            "a ticket type with uploaded codes cannot be removed".into(),
        ));
    }
    Ok(())
}

pub fn publish(id: &str) -> Result<HttpResponse, ApiError> {
    let id = ActivityId::parse(id)?;
    let pg = glue::pg_open()?;
    let mut activity = glue::load_activity(&pg, id)?.ok_or(ApiError::NotFound)?;
    if activity.status == Status::Closed {
        return Err(ApiError::Conflict(
            "a closed activity cannot be published again".into(),
        ));
    }
    pg.execute(
        "UPDATE activities SET status = 'published', published_at = COALESCE(published_at, now()), \
         updated_at = now() WHERE id = $1 AND status IN ('draft', 'published')",
        &[ParameterValue::Int64(id.get())],
    )
    .map_err(|e| glue::pg_internal("publish activity", e))?;
    activity.status = Status::Published;
    load_into_redis(&pg, &activity)?;
    live_view(&activity)
}

/// The activity with each type's stock as Redis holds it now.
fn live_view(activity: &Activity) -> Result<HttpResponse, ApiError> {
    let stocks = glue::type_stocks(&[(activity.id, activity.stock_buckets)], "load activity")?;
    let stock = stocks.first().cloned().unwrap_or_default();
    Ok(HttpResponse::json(
        200,
        &activity.view_with(|key| stock.get(key).copied()),
    ))
}

/// Closing is final: claims answer `ended` from then on. A draft that never reached Redis
/// is closed in Postgres only.
pub fn close(id: &str) -> Result<HttpResponse, ApiError> {
    let id = ActivityId::parse(id)?;
    let pg = glue::pg_open()?;
    let mut activity = glue::load_activity(&pg, id)?.ok_or(ApiError::NotFound)?;
    pg.execute(
        "UPDATE activities SET status = 'closed', updated_at = now() WHERE id = $1",
        &[ParameterValue::Int64(id.get())],
    )
    .map_err(|e| glue::pg_internal("close activity", e))?;
    let was_loaded = activity.status != Status::Draft;
    activity.status = Status::Closed;
    if !was_loaded {
        return Ok(HttpResponse::json(200, &activity.view()));
    }
    load_into_redis(&pg, &activity)?;
    live_view(&activity)
}

/// Loads the activity's settings (and, the first time, its types' stocks and code pools)
/// into Redis, indexes it for the drain and the blacklist, and copies the blacklist into
/// its deny set.
///
/// "The first time" is also the first time after Redis lost its data: then each type's
/// stock is what Postgres has not seen issued of it, and the users' counts and tickets are
/// rebuilt from Postgres, so nothing drained is handed out twice and nobody exceeds a limit.
fn load_into_redis(pg: &Connection, activity: &Activity) -> Result<(), ApiError> {
    // Refused when the endpoint list changed: the stock would land on the wrong shard.
    glue::claim_shard_markers()?;
    let redis = glue::redis_for(activity.id, "load activity")?;
    let unavailable = |e| glue::redis_unavailable("load activity", e);
    let id_param = [ParameterValue::Int64(activity.id.get())];
    // Only the counts per type here, one JSON object in one row whatever the tickets: the
    // rows are read only in the rare case they must be restored.
    let issued = pg
        .query(
            "SELECT coalesce(json_object_agg(ticket_type, n), '{}')::text FROM \
               (SELECT ticket_type, count(*)::int8 AS n FROM tickets \
                WHERE activity_id = $1 AND status <> 'returned' GROUP BY ticket_type) AS per_type",
            &id_param,
        )
        .map_err(|e| glue::pg_internal("count issued tickets", e))?
        .rows
        .first()
        .and_then(|r| glue::text(&r[0]))
        .and_then(|json| serde_json::from_str::<TypeStocks>(&json).ok())
        .ok_or(ApiError::Internal)?;
    // Every stock bucket (flashclaim_core::buckets); bucket 0 says whether this is a load.
    let n = activity.stock_buckets;
    let mut loaded = false;
    for b in (0..n).rev() {
        let (keys, argv) =
            activity.publish_bucket_command((b, n), |key| issued.get(key).copied().unwrap_or(0));
        let reply = redis.run(&PUBLISH, &keys, &argv).map_err(unavailable)?;
        loaded = activity::decode_publish(&reply)?.0;
    }
    if loaded && issued.values().any(|n| *n > 0) {
        // One row of arrays (glue::list_rows): returns since the count may have left none.
        let rows = pg
            .query(
                "SELECT array_agg(code ORDER BY id), array_agg(user_id ORDER BY id), \
                        array_agg(claim_id ORDER BY id), array_agg(status ORDER BY id), \
                        array_agg((extract(epoch FROM claimed_at) * 1000)::int8 ORDER BY id), \
                        array_agg(ticket_type ORDER BY id) \
                 FROM tickets WHERE activity_id = $1 AND status <> 'returned'",
                &id_param,
            )
            .map_err(|e| glue::pg_internal("load issued tickets", e))?;
        let rows = glue::list_rows(rows, "load issued tickets")?;
        restore_issued(&redis, activity.id, n, &rows).map_err(unavailable)?;
    }
    // Indexed before the blacklist is read: a user blacklisted meanwhile is either read
    // here or finds this activity in the index (operations::blacklist).
    redis
        .execute(
            "SADD",
            &[Arg::from(ACTIVITY_INDEX), Arg::Int(activity.id.get())],
        )
        .map_err(unavailable)?;
    // One row even for an empty blacklist (glue::list_rows).
    let denied = pg
        .query("SELECT array_agg(user_id) FROM blacklist", &[])
        .map_err(|e| glue::pg_internal("load blacklist", e))?;
    let denied: Vec<Arg> = glue::list_rows(denied, "load blacklist")?
        .iter()
        .filter_map(|r| glue::text(&r[0]))
        .map(Arg::from)
        .collect();
    for b in 0..n {
        if denied.is_empty() {
            break;
        }
        let deny = ActivityKeys::in_bucket(activity.id, b, n).deny();
        let sadd = [vec![Arg::from(deny)], denied.clone()].concat();
        redis.execute("SADD", &sadd).map_err(unavailable)?;
    }
    let keys = ActivityKeys::new(activity.id);
    for pooled in activity
        .ticket_types
        .iter()
        .filter(|t| t.kind == Kind::Codes)
    {
        // Codes already issued (after a Redis data loss) never go back into the pool.
        // One row even when no code is left (glue::list_rows).
        let codes = pg
            .query(
                "SELECT array_agg(code ORDER BY uploaded_at, code) FROM ticket_codes c \
                 WHERE activity_id = $1 AND ticket_type = $2 AND NOT EXISTS \
                   (SELECT 1 FROM tickets t WHERE t.activity_id = c.activity_id AND t.code = c.code \
                      AND t.status <> 'returned')",
                &[
                    ParameterValue::Int64(activity.id.get()),
                    glue::str_param(pooled.key.as_str()),
                ],
            )
            .map_err(|e| glue::pg_internal("load codes", e))?;
        let mut argv = vec![Arg::from("load"), Arg::from(pooled.key.as_str())];
        argv.extend(
            glue::list_rows(codes, "load codes")?
                .iter()
                .filter_map(|r| glue::text(&r[0]))
                .map(Arg::from),
        );
        redis
            .run(&POOL, &[keys.meta(), keys.pools()], &argv)
            .map_err(unavailable)?;
    }
    // Published is said only once the replicas hold it all (one WAIT covers every write of
    // this connection): a failover must not bring back an activity without its stock.
    redis.confirm().map_err(unavailable)?;
    Ok(())
}

/// Puts drained tickets back into a freshly loaded activity of `n` stock buckets: the
/// users' counts, over the activity and per type, in each user's home bucket, and the
/// ticket records in the bucket each code names (so returns, redeems and ticket reads keep
/// working).
fn restore_issued(
    redis: &SpinRedis,
    id: ActivityId,
    n: i64,
    rows: &[Vec<spin_sdk::pg4::DbValue>],
) -> Result<(), flashclaim_core::scripts::RedisFailure> {
    use flashclaim_core::buckets;
    use std::collections::BTreeMap;
    let mut counts: BTreeMap<(i64, String), i64> = Default::default();
    let mut records: BTreeMap<i64, Vec<Arg>> = Default::default();
    for row in rows {
        let (Some(code), Some(user), Some(claim_id), Some(status), Some(at), Some(ticket_type)) = (
            glue::text(&row[0]),
            glue::text(&row[1]),
            glue::text(&row[2]),
            glue::text(&row[3]),
            glue::int(&row[4]),
            glue::text(&row[5]),
        ) else {
            continue;
        };
        let home = flashclaim_core::ids::UserId::parse(&user).map_or(0, |u| buckets::home(&u, n));
        *counts.entry((home, user.clone())).or_default() += 1;
        *counts
            .entry((home, format!("{user}|{ticket_type}")))
            .or_default() += 1;
        let fields = records.entry(buckets::code_bucket(&code, n)).or_default();
        let record = TicketRecord {
            user,
            claim_id,
            status,
            claimed_at: Millis(at),
            ticket_type,
        };
        fields.push(Arg::from(code));
        fields.push(Arg::from(record.to_text()));
    }
    let mut hsets: BTreeMap<i64, Vec<Arg>> = Default::default();
    for ((home, field), count) in counts {
        let hset = hsets
            .entry(home)
            .or_insert_with(|| vec![Arg::from(ActivityKeys::in_bucket(id, home, n).claimed())]);
        hset.push(Arg::from(field));
        hset.push(Arg::Int(count));
    }
    for (home, hset) in hsets {
        redis.execute("HSET", &hset)?;
        // Who has claimed changed: claim caches that learned the activity ask again.
        let meta = ActivityKeys::in_bucket(id, home, n).meta();
        redis.execute("HINCRBY", &[Arg::from(meta), Arg::from("gen"), Arg::Int(1)])?;
    }
    for (b, fields) in records {
        let tickets = Arg::from(ActivityKeys::in_bucket(id, b, n).tickets());
        redis.execute("HSET", &[vec![tickets], fields].concat())?;
    }
    Ok(())
}

/// `POST .../ticket_types/{key}/codes`, or `POST .../codes` for the activity's only type
/// of kind `codes`: all or nothing. The codes are inserted in one transaction; when the
/// activity is already published they are also appended to the type's Redis pool before
/// the commit, and a Redis failure rolls the insert back. Codes are unique per activity
/// (a code names its ticket), whatever their type.
pub fn upload_codes(
    req: &Request,
    id: &str,
    type_key: Option<&str>,
) -> Result<HttpResponse, ApiError> {
    let id = ActivityId::parse(id)?;
    let type_key = type_key
        .map(TypeKey::parse)
        .transpose()
        .map_err(|_| ApiError::NotFound)?;
    let content_type = req.header("content-type").and_then(|h| h.as_str());
    let uploaded = codes::parse_upload(content_type, req.body())?;
    let pg = glue::pg_open()?;
    let activity = glue::load_activity(&pg, id)?.ok_or(ApiError::NotFound)?;
    let ticket_type = match &type_key {
        Some(key) => activity
            .ticket_type(key.as_str())
            .ok_or(ApiError::NotFound)?,
        None => {
            let mut pooled = activity
                .ticket_types
                .iter()
                .filter(|t| t.kind == Kind::Codes);
            match (pooled.next(), pooled.next()) {
                (Some(only), None) => only,
                (Some(_), Some(_)) => {
                    return Err(ApiError::invalid(format!(
                        "this activity has several ticket types of kind `codes`; upload to \
                         /admin/activities/{id}/ticket_types/{{key}}/codes"
                    )))
                }
                (None, _) => {
                    return Err(ApiError::Conflict(
                        "only ticket types of kind `codes` take uploaded codes".into(),
                    ))
                }
            }
        }
    };
    if ticket_type.kind != Kind::Codes {
        return Err(ApiError::Conflict(
            "only ticket types of kind `codes` take uploaded codes".into(),
        ));
    }
    if activity.status == Status::Closed {
        return Err(ApiError::Conflict("the activity is closed".into()));
    }
    // One row even when no code is a duplicate (glue::list_rows).
    let existing = pg
        .query(
            "SELECT array_agg(code) FROM ticket_codes \
             WHERE activity_id = $1 AND code = ANY($2::text[])",
            &[ParameterValue::Int64(id.get()), glue::str_array(&uploaded)],
        )
        .map_err(|e| glue::pg_internal("check codes", e))?;
    let duplicates: Vec<String> = glue::list_rows(existing, "check codes")?
        .iter()
        .filter_map(|r| glue::text(&r[0]))
        .collect();
    if !duplicates.is_empty() {
        return Err(ApiError::CodesRejected {
            bad: Vec::new(),
            duplicates,
        });
    }
    pg.execute("BEGIN", &[])
        .map_err(|e| glue::pg_internal("upload codes", e))?;
    let result = insert_and_push(&pg, &activity, ticket_type, &uploaded);
    let result = result.and_then(|total| {
        pg.execute("COMMIT", &[])
            .map(|_| total)
            .map_err(|e| glue::pg_internal("upload codes", e))
    });
    if result.is_err() {
        let _ = pg.execute("ROLLBACK", &[]);
    }
    let (total, pool_left) = result?;
    Ok(HttpResponse::json(
        201,
        &serde_json::json!({
            "activity_id": id,
            "ticket_type": ticket_type.key,
            "accepted": uploaded.len(),
            "total_codes": total,
            "pool_left": pool_left,
        }),
    ))
}

/// Inside the upload's transaction: the insert, then (for a published activity) the
/// Redis append. Returns the type's code count and its Redis pool's length.
fn insert_and_push(
    pg: &Connection,
    activity: &Activity,
    ticket_type: &TicketType,
    uploaded: &[String],
) -> Result<(i64, Option<i64>), ApiError> {
    let type_params = [
        ParameterValue::Int64(activity.id.get()),
        glue::str_param(ticket_type.key.as_str()),
    ];
    pg.execute(
        "INSERT INTO ticket_codes (activity_id, ticket_type, code) SELECT $1, $2, unnest($3::text[])",
        &[
            type_params[0].clone(),
            type_params[1].clone(),
            glue::str_array(uploaded),
        ],
    )
    .map_err(|e| match glue::pg_constraint(&e) {
        Some("ticket_codes_pkey") => {
            ApiError::Conflict("another upload added some of these codes meanwhile".into())
        }
        _ => glue::pg_internal("insert codes", e),
    })?;
    let total = pg
        .query(
            "SELECT count(*)::int8 FROM ticket_codes WHERE activity_id = $1 AND ticket_type = $2",
            &type_params,
        )
        .map_err(|e| glue::pg_internal("count codes", e))?
        .rows
        .first()
        .and_then(|r| glue::int(&r[0]))
        .unwrap_or(0);
    if activity.status != Status::Published {
        return Ok((total, None));
    }
    let keys = ActivityKeys::new(activity.id);
    let mut argv = vec![Arg::from("add"), Arg::from(ticket_type.key.as_str())];
    argv.extend(uploaded.iter().map(|c| Arg::from(c.as_str())));
    let reply = glue::redis_for(activity.id, "upload codes")?
        .run_confirmed(&POOL, &[keys.meta(), keys.pools()], &argv, scripts::always)
        .map_err(|e| glue::redis_unavailable("upload codes", e))?;
    Ok((total, reply.get(1).and_then(Reply::as_int)))
}

//! Activity definitions: create, change, publish, close, and their code pools. Postgres is
//! the source of truth; Redis gets what claims need, by idempotent scripts, so a step that
//! failed half-way is completed by running it again.

use flashclaim_core::activity::{self, Activity, Kind, NewActivity, Status};
use flashclaim_core::admin::apply_patch;
use flashclaim_core::codes;
use flashclaim_core::ids::ActivityId;
use flashclaim_core::keys::{ActivityKeys, ACTIVITY_INDEX};
use flashclaim_core::scripts::{Arg, RedisCommands, Reply, POOL, PUBLISH};
use flashclaim_core::{ApiError, HttpResponse};
use spin_sdk::http::Request;
use spin_sdk::pg4::{Connection, ParameterValue};

use crate::glue::{self, SpinRedis};

pub fn create(req: &Request) -> Result<HttpResponse, ApiError> {
    let new = NewActivity::parse(req.body())?;
    let pg = glue::pg_open()?;
    let rows = pg
        .query(
            "INSERT INTO activities \
               (name, description, image_url, starts_at, ends_at, stock_total, per_user_limit, kind, require_pass) \
             VALUES ($1, $2, $3, to_timestamp($4::int8 / 1000.0), to_timestamp($5::int8 / 1000.0), \
                     $6::int8, $7::int8, $8, $9) \
             RETURNING id",
            &definition_params(&new.name, &new.description, new.image_url.as_deref(), &new),
        )
        .map_err(|e| glue::pg_internal("create activity", e))?;
    let id = rows
        .rows
        .first()
        .and_then(|r| glue::int(&r[0]))
        .ok_or(ApiError::Internal)?;
    let created = Activity {
        id: ActivityId::from_db(id),
        name: new.name,
        description: new.description,
        image_url: new.image_url,
        starts_at: new.starts_at,
        ends_at: new.ends_at,
        status: Status::Draft,
        stock_total: new.stock_total,
        per_user_limit: new.per_user_limit,
        kind: new.kind,
        require_pass: new.require_pass,
    };
    let mut response = HttpResponse::json(201, &created.view(created.stock_total));
    response
        .headers
        .push(("location", format!("/api/activities/{id}")));
    Ok(response)
}

/// The nine definition columns, `$1`..`$9`, in the order create and update use them.
fn definition_params(
    name: &str,
    description: &str,
    image_url: Option<&str>,
    a: &NewActivity,
) -> Vec<ParameterValue> {
    vec![
        glue::str_param(name),
        glue::str_param(description),
        image_url.map_or(ParameterValue::DbNull, glue::str_param),
        ParameterValue::Int64(a.starts_at.0),
        ParameterValue::Int64(a.ends_at.0),
        ParameterValue::Int64(a.stock_total),
        ParameterValue::Int64(a.per_user_limit),
        glue::str_param(a.kind.as_str()),
        ParameterValue::Boolean(a.require_pass),
    ]
}

/// `PATCH`: anything while draft, only the display fields once published. A published
/// activity's cached view is dropped so readers see the change at once.
pub fn update(req: &Request, id: &str) -> Result<HttpResponse, ApiError> {
    let id = ActivityId::parse(id)?;
    let pg = glue::pg_open()?;
    let current = glue::load_activity(&pg, id)?.ok_or(ApiError::NotFound)?;
    let changed = apply_patch(&current, req.body())?;
    let definition = NewActivity {
        name: changed.name.clone(),
        description: changed.description.clone(),
        image_url: changed.image_url.clone(),
        starts_at: changed.starts_at,
        ends_at: changed.ends_at,
        stock_total: changed.stock_total,
        per_user_limit: changed.per_user_limit,
        kind: changed.kind,
        require_pass: changed.require_pass,
    };
    let mut params = definition_params(
        &definition.name,
        &definition.description,
        definition.image_url.as_deref(),
        &definition,
    );
    params.push(ParameterValue::Int64(id.get()));
    params.push(glue::str_param(current.status.as_str()));
    // The status guard makes a concurrent publish win: then this update changes nothing.
    let updated = pg
        .execute(
            "UPDATE activities SET name = $1, description = $2, image_url = $3, \
               starts_at = to_timestamp($4::int8 / 1000.0), ends_at = to_timestamp($5::int8 / 1000.0), \
               stock_total = $6::int8, per_user_limit = $7::int8, kind = $8, require_pass = $9, \
               updated_at = now() \
             WHERE id = $10 AND status = $11",
            &params,
        )
        .map_err(|e| glue::pg_internal("update activity", e))?;
    if updated == 0 {
        return Err(ApiError::Conflict(
            "the activity changed status meanwhile; read it and try again".into(),
        ));
    }
    let stock_left = if current.status == Status::Draft {
        changed.stock_total
    } else {
        let redis = glue::redis_for(id, "update activity")?;
        let keys = ActivityKeys::new(id);
        let reply = redis
            .execute("DEL", &[Arg::from(keys.view())])
            .and_then(|_| redis.execute("GET", &[Arg::from(keys.stock())]))
            .map_err(|e| glue::redis_unavailable("update activity", e))?;
        reply.first().and_then(Reply::as_int).unwrap_or(0)
    };
    Ok(HttpResponse::json(200, &changed.view(stock_left)))
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
    let stock_left = load_into_redis(&pg, &activity)?;
    Ok(HttpResponse::json(200, &activity.view(stock_left)))
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
    let stock_left = if was_loaded {
        load_into_redis(&pg, &activity)?
    } else {
        activity.stock_total
    };
    Ok(HttpResponse::json(200, &activity.view(stock_left)))
}

/// Loads the activity's settings (and, the first time, its stock and code pool) into
/// Redis, indexes it for the drain and the blacklist, and copies the blacklist into its
/// deny set; returns the live stock.
///
/// "The first time" is also the first time after Redis lost its data: then the stock is
/// what Postgres has not seen issued, and the users' counts and tickets are rebuilt from
/// Postgres, so nothing drained is handed out twice and nobody exceeds their limit.
fn load_into_redis(pg: &Connection, activity: &Activity) -> Result<i64, ApiError> {
    // Refused when the endpoint list changed: the stock would land on the wrong shard.
    glue::claim_shard_markers()?;
    let redis = glue::redis_for(activity.id, "load activity")?;
    let unavailable = |e| glue::redis_unavailable("load activity", e);
    let id_param = [ParameterValue::Int64(activity.id.get())];
    // Only the count here: the rows are read only in the rare case they must be restored.
    let issued = pg
        .query(
            "SELECT count(*)::int8 FROM tickets WHERE activity_id = $1 AND status <> 'returned'",
            &id_param,
        )
        .map_err(|e| glue::pg_internal("count issued tickets", e))?
        .rows
        .first()
        .and_then(|r| glue::int(&r[0]))
        .unwrap_or(0);
    let (keys, argv) = activity.publish_command(issued);
    let reply = redis.run(&PUBLISH, &keys, &argv).map_err(unavailable)?;
    let (loaded, stock_left) = activity::decode_publish(&reply)?;
    if loaded && issued > 0 {
        // One row of arrays (glue::list_rows): returns since the count may have left none.
        let rows = pg
            .query(
                "SELECT array_agg(code ORDER BY id), array_agg(user_id ORDER BY id), \
                        array_agg(claim_id ORDER BY id), array_agg(status ORDER BY id), \
                        array_agg((extract(epoch FROM claimed_at) * 1000)::int8 ORDER BY id) \
                 FROM tickets WHERE activity_id = $1 AND status <> 'returned'",
                &id_param,
            )
            .map_err(|e| glue::pg_internal("load issued tickets", e))?;
        let rows = glue::list_rows(rows, "load issued tickets")?;
        restore_issued(&redis, activity.id, &rows).map_err(unavailable)?;
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
    let keys = ActivityKeys::new(activity.id);
    let mut sadd = vec![Arg::from(keys.deny())];
    sadd.extend(
        glue::list_rows(denied, "load blacklist")?
            .iter()
            .filter_map(|r| glue::text(&r[0]))
            .map(Arg::from),
    );
    if sadd.len() > 1 {
        redis.execute("SADD", &sadd).map_err(unavailable)?;
    }
    if activity.kind == Kind::Codes {
        // Codes already issued (after a Redis data loss) never go back into the pool.
        // One row even when no code is left (glue::list_rows).
        let codes = pg
            .query(
                "SELECT array_agg(code ORDER BY uploaded_at, code) FROM ticket_codes c \
                 WHERE activity_id = $1 AND NOT EXISTS \
                   (SELECT 1 FROM tickets t WHERE t.activity_id = c.activity_id AND t.code = c.code \
                      AND t.status <> 'returned')",
                &[ParameterValue::Int64(activity.id.get())],
            )
            .map_err(|e| glue::pg_internal("load codes", e))?;
        let mut argv = vec![Arg::from("load")];
        argv.extend(
            glue::list_rows(codes, "load codes")?
                .iter()
                .filter_map(|r| glue::text(&r[0]))
                .map(Arg::from),
        );
        redis
            .run(&POOL, &[keys.meta(), keys.pool()], &argv)
            .map_err(unavailable)?;
    }
    Ok(stock_left)
}

/// Puts drained tickets back into a freshly loaded activity: the users' counts and the
/// ticket records (so returns, redeems and ticket reads keep working).
fn restore_issued(
    redis: &SpinRedis,
    id: ActivityId,
    rows: &[Vec<spin_sdk::pg4::DbValue>],
) -> Result<(), flashclaim_core::scripts::RedisFailure> {
    let keys = ActivityKeys::new(id);
    let mut per_user: std::collections::BTreeMap<String, i64> = Default::default();
    let mut records = vec![Arg::from(keys.tickets())];
    for row in rows {
        let (Some(code), Some(user), Some(claim), Some(status), Some(at)) = (
            glue::text(&row[0]),
            glue::text(&row[1]),
            glue::text(&row[2]),
            glue::text(&row[3]),
            glue::int(&row[4]),
        ) else {
            continue;
        };
        *per_user.entry(user.clone()).or_default() += 1;
        records.push(Arg::from(code));
        records.push(Arg::from(format!("{user}|{claim}|{status}|{at}")));
    }
    let mut counts = vec![Arg::from(keys.claimed())];
    for (user, n) in per_user {
        counts.push(Arg::from(user));
        counts.push(Arg::Int(n));
    }
    redis.execute("HSET", &counts)?;
    redis.execute("HSET", &records)?;
    Ok(())
}

/// `POST .../codes`: all or nothing. The codes are inserted in one transaction; when the
/// activity is already published they are also appended to its Redis pool before the
/// commit, and a Redis failure rolls the insert back.
pub fn upload_codes(req: &Request, id: &str) -> Result<HttpResponse, ApiError> {
    let id = ActivityId::parse(id)?;
    let content_type = req.header("content-type").and_then(|h| h.as_str());
    let uploaded = codes::parse_upload(content_type, req.body())?;
    let pg = glue::pg_open()?;
    let activity = glue::load_activity(&pg, id)?.ok_or(ApiError::NotFound)?;
    if activity.kind != Kind::Codes {
        return Err(ApiError::Conflict(
            "only activities of kind `codes` take uploaded codes".into(),
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
    let result = insert_and_push(&pg, &activity, &uploaded);
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
            "accepted": uploaded.len(),
            "total_codes": total,
            "pool_left": pool_left,
        }),
    ))
}

/// Inside the upload's transaction: the insert, then (for a published activity) the
/// Redis append. Returns the activity's code count and the Redis pool's length.
fn insert_and_push(
    pg: &Connection,
    activity: &Activity,
    uploaded: &[String],
) -> Result<(i64, Option<i64>), ApiError> {
    pg.execute(
        "INSERT INTO ticket_codes (activity_id, code) SELECT $1, unnest($2::text[])",
        &[
            ParameterValue::Int64(activity.id.get()),
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
            "SELECT count(*)::int8 FROM ticket_codes WHERE activity_id = $1",
            &[ParameterValue::Int64(activity.id.get())],
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
    let mut argv = vec![Arg::from("add")];
    argv.extend(uploaded.iter().map(|c| Arg::from(c.as_str())));
    let reply = glue::redis_for(activity.id, "upload codes")?
        .run(&POOL, &[keys.meta(), keys.pool()], &argv)
        .map_err(|e| glue::redis_unavailable("upload codes", e))?;
    Ok((total, reply.get(1).and_then(Reply::as_int)))
}

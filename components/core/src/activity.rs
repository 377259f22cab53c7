//! Activities: the admin's create request, validated, and the public view served to clients.

use serde::{Deserialize, Serialize};

use crate::error::ApiError;
use crate::ids::ActivityId;
use crate::keys::{ActivityKeys, DRAIN_GROUP};
use crate::scripts::{Arg, Reply};
use crate::ticket_type::TicketType;
use crate::time::Millis;

pub const MAX_ACTIVITY_BODY: usize = 16 * 1024;
pub const MAX_STOCK: i64 = 10_000_000;
pub const MAX_PER_USER_LIMIT: i64 = 100;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    Counter,
    Codes,
}

impl Kind {
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Counter => "counter",
            Kind::Codes => "codes",
        }
    }

    pub fn parse(text: &str) -> Option<Kind> {
        match text {
            "counter" => Some(Kind::Counter),
            "codes" => Some(Kind::Codes),
            _ => None,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    Draft,
    Published,
    Closed,
}

impl Status {
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Draft => "draft",
            Status::Published => "published",
            Status::Closed => "closed",
        }
    }

    pub fn parse(text: &str) -> Option<Status> {
        match text {
            "draft" => Some(Status::Draft),
            "published" => Some(Status::Published),
            "closed" => Some(Status::Closed),
            _ => None,
        }
    }
}

/// Tickets one user may hold over all types together, when the activity sets such a limit.
pub const MAX_ACTIVITY_LIMIT: i64 = MAX_PER_USER_LIMIT * crate::ticket_type::MAX_TYPES as i64;

/// `POST /admin/activities`, validated. Either one stock (`stock_total`, `per_user_limit`,
/// `kind`), which becomes the one type `default`, or `ticket_types`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewActivity {
    pub name: String,
    pub description: String,
    pub image_url: Option<String>,
    pub starts_at: Millis,
    pub ends_at: Millis,
    /// Over all types together; `None`: no limit beyond each type's own.
    pub per_user_limit: Option<i64>,
    pub require_pass: bool,
    pub ticket_types: Vec<TicketType>,
    /// Redis Cluster slots one activity's stock is spread over (`crate::buckets`).
    pub stock_buckets: i64,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NewActivityBody {
    name: String,
    #[serde(default)]
    description: Option<String>,
    #[serde(default)]
    image_url: Option<String>,
    starts_at: String,
    ends_at: String,
    #[serde(default)]
    stock_total: Option<i64>,
    #[serde(default)]
    per_user_limit: Option<i64>,
    #[serde(default)]
    kind: Option<Kind>,
    #[serde(default)]
    require_pass: Option<bool>,
    #[serde(default)]
    ticket_types: Option<serde_json::Value>,
    #[serde(default)]
    stock_buckets: Option<i64>,
}

impl NewActivity {
    pub fn parse(body: &[u8]) -> Result<Self, ApiError> {
        let b: NewActivityBody = crate::http::json_body(body, MAX_ACTIVITY_BODY)?;
        let name = b.name.trim().to_string();
        if name.is_empty() || name.chars().count() > 200 {
            return Err(ApiError::invalid("name must be 1-200 characters"));
        }
        let description = b.description.unwrap_or_default();
        if description.chars().count() > 5000 {
            return Err(ApiError::invalid(
                "description must be at most 5000 characters",
            ));
        }
        if let Some(url) = &b.image_url {
            let ok = url.len() <= 2048
                && (url.starts_with("https://") || url.starts_with("http://"))
                && !url.chars().any(|c| c.is_whitespace() || c.is_control());
            if !ok {
                return Err(ApiError::invalid(
                    "image_url must be an http(s) URL of at most 2048 characters",
                ));
            }
        }
        let starts_at = Millis::parse_rfc3339(&b.starts_at)
            .map_err(|e| ApiError::invalid(format!("starts_at: {e}")))?;
        let ends_at = Millis::parse_rfc3339(&b.ends_at)
            .map_err(|e| ApiError::invalid(format!("ends_at: {e}")))?;
        if ends_at <= starts_at {
            return Err(ApiError::invalid("ends_at must be after starts_at"));
        }
        let (per_user_limit, ticket_types) = match b.ticket_types {
            None => {
                let stock_total = b
                    .stock_total
                    .ok_or_else(|| ApiError::invalid("give stock_total, or ticket_types"))?;
                if !(0..=MAX_STOCK).contains(&stock_total) {
                    return Err(ApiError::invalid(format!(
                        "stock_total must be between 0 and {MAX_STOCK}"
                    )));
                }
                let limit = b.per_user_limit.unwrap_or(1);
                if !(1..=MAX_PER_USER_LIMIT).contains(&limit) {
                    return Err(ApiError::invalid(format!(
                        "per_user_limit must be between 1 and {MAX_PER_USER_LIMIT}"
                    )));
                }
                let only = TicketType::default_for(
                    &name,
                    stock_total,
                    limit,
                    b.kind.unwrap_or(Kind::Counter),
                );
                (Some(limit), vec![only])
            }
            Some(list) => {
                if b.stock_total.is_some() || b.kind.is_some() {
                    return Err(ApiError::invalid(
                        "with ticket_types, stock_total and kind belong to each type",
                    ));
                }
                if let Some(limit) = b.per_user_limit {
                    if !(1..=MAX_ACTIVITY_LIMIT).contains(&limit) {
                        return Err(ApiError::invalid(format!(
                            "per_user_limit over all types must be between 1 and {MAX_ACTIVITY_LIMIT}"
                        )));
                    }
                }
                (
                    b.per_user_limit,
                    TicketType::parse_list(list, starts_at, ends_at)?,
                )
            }
        };
        let stock_buckets = b.stock_buckets.unwrap_or(1);
        if !(1..=crate::buckets::MAX_BUCKETS).contains(&stock_buckets) {
            return Err(ApiError::invalid(format!(
                "stock_buckets must be between 1 and {}",
                crate::buckets::MAX_BUCKETS
            )));
        }
        let require_pass = b.require_pass.unwrap_or(false);
        // A pool's codes and the passes are not split over buckets (yet): refused, not
        // half served.
        if stock_buckets > 1 && ticket_types.iter().any(|t| t.kind != Kind::Counter) {
            return Err(ApiError::invalid(
                "stock_buckets above 1 needs every ticket type of kind counter",
            ));
        }
        if stock_buckets > 1 && require_pass {
            return Err(ApiError::invalid(
                "stock_buckets above 1 cannot be combined with require_pass",
            ));
        }
        Ok(NewActivity {
            name,
            description,
            image_url: b.image_url,
            starts_at,
            ends_at,
            per_user_limit,
            require_pass,
            ticket_types,
            stock_buckets,
        })
    }

    /// The activity as created, with its server-assigned id, still a draft.
    pub fn into_activity(self, id: ActivityId, status: Status) -> Activity {
        Activity {
            id,
            name: self.name,
            description: self.description,
            image_url: self.image_url,
            starts_at: self.starts_at,
            ends_at: self.ends_at,
            status,
            per_user_limit: self.per_user_limit,
            require_pass: self.require_pass,
            ticket_types: self.ticket_types,
            stock_buckets: self.stock_buckets,
        }
    }
}

/// An activity as stored in Postgres (the source of truth for definitions).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Activity {
    pub id: ActivityId,
    pub name: String,
    pub description: String,
    pub image_url: Option<String>,
    pub starts_at: Millis,
    pub ends_at: Millis,
    pub status: Status,
    /// Over all types together; `None`: no limit beyond each type's own.
    pub per_user_limit: Option<i64>,
    pub require_pass: bool,
    /// 1-20, in the operator's order.
    pub ticket_types: Vec<TicketType>,
    /// 1 ..= `buckets::MAX_BUCKETS`: how many Redis Cluster slots the stock is spread over.
    pub stock_buckets: i64,
}

impl Activity {
    /// The stock of all types together (the activity row's `stock_total`).
    pub fn stock_total(&self) -> i64 {
        self.ticket_types.iter().map(|t| t.stock_total).sum()
    }

    /// The types' kind when they share one, else `mixed` (the activity row's `kind`).
    pub fn kind_label(&self) -> &'static str {
        match self.ticket_types.split_first() {
            Some((first, rest)) if rest.iter().all(|t| t.kind == first.kind) => first.kind.as_str(),
            Some(_) => "mixed",
            None => Kind::Counter.as_str(),
        }
    }

    pub fn ticket_type(&self, key: &str) -> Option<&TicketType> {
        self.ticket_types.iter().find(|t| t.key.as_str() == key)
    }

    /// The public JSON, with each type's live stock from `stock_left(key)` (the caller
    /// reads Redis; `None`: not loaded, the whole stock) and their sum as `stock_left`.
    pub fn view_with(&self, stock_left: impl Fn(&str) -> Option<i64>) -> serde_json::Value {
        let types: Vec<serde_json::Value> = self
            .ticket_types
            .iter()
            .map(|t| t.view(stock_left(t.key.as_str()).unwrap_or(t.stock_total)))
            .collect();
        let left: i64 = types.iter().filter_map(|t| t["stock_left"].as_i64()).sum();
        serde_json::json!({
            "id": self.id,
            "name": self.name,
            "description": self.description,
            "image_url": self.image_url,
            "starts_at": self.starts_at,
            "ends_at": self.ends_at,
            "status": self.status,
            "stock_total": self.stock_total(),
            "stock_left": left,
            "per_user_limit": self.per_user_limit,
            "kind": self.kind_label(),
            "require_pass": self.require_pass,
            "stock_buckets": self.stock_buckets,
            "ticket_types": types,
        })
    }

    /// The public JSON with the whole stock of every type left (drafts, cached views).
    pub fn view(&self) -> serde_json::Value {
        self.view_with(|_| None)
    }

    /// The publish script's KEYS and ARGV for this activity; `already_issued(key)` is the
    /// count of the type's live tickets Postgres holds (0 on a first publish).
    pub fn publish_command(&self, already_issued: impl Fn(&str) -> i64) -> (Vec<String>, Vec<Arg>) {
        self.publish_bucket_command((0, 1), already_issued)
    }

    /// The publish script for bucket `b` of `n` stock buckets (`crate::buckets`): the same
    /// settings, and the bucket's share of each type's stock.
    pub fn publish_bucket_command(
        &self,
        (b, n): (i64, i64),
        already_issued: impl Fn(&str) -> i64,
    ) -> (Vec<String>, Vec<Arg>) {
        use crate::buckets::share;
        let k = ActivityKeys::in_bucket(self.id, b, n);
        let keys = vec![k.meta(), k.stocks(), k.log(), k.view()];
        let mut argv = vec![
            Arg::Int(self.id.get()),
            Arg::Int(self.starts_at.0),
            Arg::Int(self.ends_at.0),
            Arg::Int(self.per_user_limit.unwrap_or(0)),
            Arg::Int(i64::from(self.require_pass)),
            Arg::Int(
                self.ticket_types
                    .iter()
                    .map(|t| share(t.stock_total, n, b))
                    .sum(),
            ),
            Arg::from(self.status.as_str()),
            Arg::from(DRAIN_GROUP),
            Arg::Int(n),
            Arg::Int(b),
        ];
        for t in &self.ticket_types {
            let (opens, closes) = t.window(self.starts_at, self.ends_at);
            argv.extend([
                Arg::from(t.key.as_str()),
                Arg::Int(opens.0),
                Arg::Int(closes.0),
                Arg::Int(t.per_user_limit),
                Arg::from(t.kind.as_str()),
                Arg::Int(share(t.stock_total, n, b)),
                Arg::Int(share(
                    (t.stock_total - already_issued(t.key.as_str())).max(0),
                    n,
                    b,
                )),
            ]);
        }
        (keys, argv)
    }
}

/// Live stock per type of one activity: type key -> tickets left.
pub type TypeStocks = std::collections::HashMap<String, i64>;

/// stocks.lua's reply for `count` activities, in the order of its keys: per activity a
/// count of types, then key and stock of each (an activity Redis does not hold has none).
pub fn decode_stocks(reply: &[Reply], count: usize) -> Result<Vec<TypeStocks>, ApiError> {
    let mut out = Vec::with_capacity(count);
    let mut at = 0;
    for _ in 0..count {
        let n = reply
            .get(at)
            .and_then(Reply::as_int)
            .ok_or(ApiError::Internal)? as usize;
        let pairs = reply
            .get(at + 1..at + 1 + 2 * n)
            .ok_or(ApiError::Internal)?;
        out.push(
            pairs
                .chunks(2)
                .map(|p| Some((p[0].as_text()?.to_string(), p[1].as_int()?)))
                .collect::<Option<TypeStocks>>()
                .ok_or(ApiError::Internal)?,
        );
        at += 1 + 2 * n;
    }
    Ok(out)
}

/// A view's types get their live stock (those Redis holds), and the view their sum.
pub fn lay_stocks_over(view: &mut serde_json::Value, stocks: &TypeStocks) {
    let mut left = 0;
    if let Some(types) = view["ticket_types"].as_array_mut() {
        for t in types {
            if let Some(stock) = t["key"].as_str().and_then(|k| stocks.get(k)) {
                t["stock_left"] = (*stock).into();
            }
            left += t["stock_left"].as_i64().unwrap_or(0);
        }
    }
    view["stock_left"] = left.into();
}

/// The other stock buckets' stocks (`crate::buckets`) added to a live view of bucket 0.
pub fn add_bucket_stocks(view: &mut serde_json::Value, others: &[TypeStocks]) {
    let mut sums = TypeStocks::new();
    if let Some(types) = view["ticket_types"].as_array() {
        for t in types {
            if let (Some(key), Some(left)) = (t["key"].as_str(), t["stock_left"].as_i64()) {
                sums.insert(key.to_string(), left);
            }
        }
    }
    for stocks in others {
        for (key, left) in stocks {
            *sums.entry(key.clone()).or_default() += left;
        }
    }
    lay_stocks_over(view, &sums);
}

/// What the caller holds as the home bucket's `HMGET claimed user user|<type>...` read it
/// (the types in the view's order), laid over a live view.
pub fn lay_held_over(view: &mut serde_json::Value, held: &[Reply]) {
    let count = |i: usize| held.get(i).and_then(Reply::as_int).unwrap_or(0);
    view["my_claimed"] = count(0).into();
    if let Some(types) = view["ticket_types"].as_array_mut() {
        for (i, t) in types.iter_mut().enumerate() {
            t["my_claimed"] = count(1 + i).into();
        }
    }
}

/// view.lua's reply as the page a client reads: the cached view with each type's live
/// stock and their sum, and with `with_caller` what the caller holds (`my_claimed`, over
/// the activity and per type). `None` when nothing is cached; `NotFound` for a cached
/// absence.
pub fn live_view(
    reply: &[Reply],
    with_caller: bool,
) -> Result<Option<serde_json::Value>, ApiError> {
    let text = match reply.first() {
        None | Some(Reply::Nil) => return Ok(None),
        Some(r) => r.as_text().ok_or(ApiError::Internal)?,
    };
    if text == NOT_FOUND_MARKER {
        return Err(ApiError::NotFound);
    }
    let mut view: serde_json::Value = serde_json::from_str(text).map_err(|_| ApiError::Internal)?;
    let n = reply
        .get(1)
        .and_then(Reply::as_int)
        .ok_or(ApiError::Internal)? as usize;
    let pairs = reply.get(2..2 + 2 * n).ok_or(ApiError::Internal)?;
    let keys: Vec<&str> = pairs.chunks(2).filter_map(|p| p[0].as_text()).collect();
    let stocks: TypeStocks = pairs
        .chunks(2)
        .filter_map(|p| Some((p[0].as_text()?.to_string(), p[1].as_int()?)))
        .collect();
    let held = with_caller
        .then(|| reply.get(2 + 2 * n..2 + 3 * n + 1))
        .flatten();
    let held_of = |key: &str| {
        let i = keys.iter().position(|k| *k == key)?;
        held?.get(1 + i)?.as_int()
    };
    let types = view["ticket_types"]
        .as_array_mut()
        .ok_or(ApiError::Internal)?;
    let mut left = 0;
    for t in types.iter_mut() {
        let key = t["key"].as_str().unwrap_or_default().to_string();
        if let Some(stock) = stocks.get(&key) {
            t["stock_left"] = (*stock).into();
        }
        left += t["stock_left"].as_i64().unwrap_or(0);
        if with_caller {
            t["my_claimed"] = held_of(&key).unwrap_or(0).into();
        }
    }
    view["stock_left"] = left.into();
    if with_caller {
        let total = held.and_then(|h| h.first()).and_then(Reply::as_int);
        view["my_claimed"] = total.unwrap_or(0).into();
    }
    Ok(Some(view))
}

/// `{ loaded, stock_left }` from publish.lua.
pub fn decode_publish(reply: &[Reply]) -> Result<(bool, i64), ApiError> {
    match (
        reply.first().and_then(Reply::as_int),
        reply.get(1).and_then(Reply::as_int),
    ) {
        (Some(loaded), Some(stock_left)) => Ok((loaded == 1, stock_left)),
        _ => Err(ApiError::Internal),
    }
}

/// Activities per page of `GET /api/activities`, unless `limit` says otherwise.
pub const DEFAULT_PAGE: i64 = 20;
pub const MAX_PAGE: i64 = 100;
/// Cached listing pages live briefly: a new activity shows up within this time.
pub const LIST_TTL_MS: i64 = 2_000;

/// `GET /api/activities?cursor=<c>&limit=<n>`: the cursor is the `next_cursor` of the
/// previous page (opaque to clients; it is the last id seen).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ListQuery {
    pub after: i64,
    pub limit: i64,
}

impl ListQuery {
    pub fn parse(query: &str) -> Result<Self, ApiError> {
        let mut q = ListQuery {
            after: 0,
            limit: DEFAULT_PAGE,
        };
        for pair in query.split('&').filter(|p| !p.is_empty()) {
            let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
            match name {
                "cursor" => {
                    q.after =
                        value.parse().ok().filter(|n| *n >= 0).ok_or_else(|| {
                            ApiError::invalid("cursor is not one this API gave out")
                        })?
                }
                "limit" => {
                    q.limit = value
                        .parse()
                        .ok()
                        .filter(|n| (1..=MAX_PAGE).contains(n))
                        .ok_or_else(|| {
                            ApiError::invalid(format!("limit must be between 1 and {MAX_PAGE}"))
                        })?
                }
                other => {
                    return Err(ApiError::invalid(format!(
                        "unknown query parameter `{}`",
                        other.chars().take(40).collect::<String>()
                    )))
                }
            }
        }
        Ok(q)
    }
}

/// What the activity cache holds for an id Postgres does not know, so a flood of random
/// ids is answered from Redis.
pub const NOT_FOUND_MARKER: &str = "-";
/// Cached views live this long, plus up to [`VIEW_TTL_JITTER_MS`], so entries written
/// together do not expire together.
pub const VIEW_TTL_MS: i64 = 60_000;
pub const VIEW_TTL_JITTER_MS: i64 = 15_000;
pub const NOT_FOUND_TTL_MS: i64 = 30_000;

/// Time-to-live for a cached view, spread by a random value.
pub fn view_ttl_ms(random: u32) -> i64 {
    VIEW_TTL_MS + i64::from(random) % VIEW_TTL_JITTER_MS
}

#[cfg(test)]
mod tests {
    use super::*;

    fn body(extra: &str) -> Vec<u8> {
        format!(
            r#"{{"name":"Free ride","starts_at":"2026-01-01T00:00:00Z","ends_at":"2026-01-02T00:00:00Z","stock_total":1000{extra}}}"#
        )
        .into_bytes()
    }

    #[test]
    fn defaults_are_one_per_user_and_a_counter() {
        let a = NewActivity::parse(&body("")).unwrap();
        assert_eq!((a.per_user_limit, a.require_pass), (Some(1), false));
        assert_eq!(a.description, "");
        let [only] = a.ticket_types.as_slice() else {
            panic!("an activity without types has one: {:?}", a.ticket_types)
        };
        assert_eq!(only.key.as_str(), "default");
        assert_eq!(
            (only.stock_total, only.per_user_limit, only.kind),
            (1000, 1, Kind::Counter)
        );
        assert_eq!(
            (only.name.as_str(), only.starts_at, only.ends_at),
            ("Free ride", None, None)
        );
    }

    fn typed(extra: &str, types: &str) -> Result<NewActivity, ApiError> {
        NewActivity::parse(
            format!(
                r#"{{"name":"Show","starts_at":"2026-01-01T00:00:00Z","ends_at":"2026-01-02T00:00:00Z"{extra},"ticket_types":{types}}}"#
            )
            .as_bytes(),
        )
    }

    const TWO: &str = r#"[{"key":"vip","name":"VIP","stock_total":10,"per_user_limit":2,"kind":"codes"},{"key":"std","name":"Standard","stock_total":500,"starts_at":"2026-01-01T12:00:00Z"}]"#;

    #[test]
    fn an_activity_with_types_sums_them_and_may_limit_a_user_over_all() {
        let a = typed(r#","per_user_limit":3"#, TWO).unwrap();
        assert_eq!(a.per_user_limit, Some(3));
        let a = typed("", TWO).unwrap();
        assert_eq!(a.per_user_limit, None, "no limit beyond each type's own");
        let a = a.into_activity(ActivityId::from_db(1), Status::Draft);
        assert_eq!((a.stock_total(), a.kind_label()), (510, "mixed"));
        let v = a.view_with(|key| (key == "vip").then_some(4));
        assert_eq!(
            (v["stock_total"].as_i64(), v["stock_left"].as_i64()),
            (Some(510), Some(504))
        );
        assert_eq!(v["ticket_types"][0]["stock_left"], 4);
        assert_eq!(v["ticket_types"][1]["key"], "std");
        assert_eq!(v["ticket_types"][1]["starts_at"], "2026-01-01T12:00:00Z");
        assert!(v["ticket_types"][0]["starts_at"].is_null(), "{v}");
        assert!(v["per_user_limit"].is_null());
    }

    #[test]
    fn types_exclude_the_single_stock_fields_and_bound_the_overall_limit() {
        for extra in [
            r#","stock_total":5"#,
            r#","kind":"codes""#,
            r#","per_user_limit":0"#,
            r#","per_user_limit":2001"#,
        ] {
            assert_eq!(
                typed(extra, TWO).unwrap_err().code(),
                "invalid_request",
                "{extra}"
            );
        }
        assert!(typed(r#","per_user_limit":2000"#, TWO).is_ok());
        assert!(NewActivity::parse(br#"{"name":"x","starts_at":"2026-01-01T00:00:00Z","ends_at":"2026-01-02T00:00:00Z"}"#).is_err(), "a stock is needed");
    }

    #[test]
    fn publishing_sends_each_types_window_limit_and_stock_left() {
        let a = typed(r#","per_user_limit":3"#, TWO)
            .unwrap()
            .into_activity(ActivityId::from_db(7), Status::Published);
        let (keys, argv) = a.publish_command(|key| if key == "std" { 20 } else { 0 });
        assert_eq!(keys[1], "fc:{a:7}:stocks");
        assert_eq!(argv[3], Arg::Int(3));
        assert_eq!(argv.len(), 10 + 2 * 7);
        assert_eq!(
            argv[8..10],
            [Arg::Int(1), Arg::Int(0)],
            "one bucket, bucket 0"
        );
        let std = &argv[17..24];
        assert_eq!(std[0], Arg::from("std"));
        assert_eq!(
            std[1],
            Arg::Int(a.starts_at.0 + 12 * 3600 * 1000),
            "its own opening"
        );
        assert_eq!(std[2], Arg::Int(a.ends_at.0), "the activity's close");
        assert_eq!(std[6], Arg::Int(480), "its stock less what Postgres holds");
        let (keys, argv) =
            a.publish_bucket_command((2, 3), |key| if key == "std" { 20 } else { 0 });
        assert_ne!(keys[1], "fc:{a:7}:stocks", "bucket 2's own tag");
        assert_eq!(argv[8..10], [Arg::Int(3), Arg::Int(2)]);
        assert_eq!(argv[17 + 6], Arg::Int(160), "a third of what is left");
    }

    #[test]
    fn stock_buckets_default_to_one_and_more_need_counter_types_without_passes() {
        let with = |extra: &str| {
            NewActivity::parse(
                format!(
                    r#"{{"name":"x","starts_at":"2026-01-01T00:00:00Z","ends_at":"2026-01-02T00:00:00Z","stock_total":9{extra}}}"#
                )
                .as_bytes(),
            )
        };
        assert_eq!(with("").unwrap().stock_buckets, 1);
        assert_eq!(with(r#","stock_buckets":3"#).unwrap().stock_buckets, 3);
        for refused in [
            r#","stock_buckets":0"#,
            r#","stock_buckets":17"#,
            r#","stock_buckets":"3""#,
            r#","stock_buckets":3,"kind":"codes""#,
            r#","stock_buckets":3,"require_pass":true"#,
        ] {
            assert_eq!(
                with(refused).unwrap_err().code(),
                "invalid_request",
                "{refused}"
            );
        }
    }

    #[test]
    fn activity_is_refused_when_it_ends_before_it_starts() {
        let b = br#"{"name":"x","starts_at":"2026-01-02T00:00:00Z","ends_at":"2026-01-01T00:00:00Z","stock_total":1}"#;
        assert_eq!(NewActivity::parse(b).unwrap_err().code(), "invalid_request");
    }

    #[test]
    fn wrong_types_and_out_of_range_values_are_invalid() {
        for extra in [
            r#","per_user_limit":0"#,
            r#","per_user_limit":"2""#,
            r#","kind":"lottery""#,
            r#","require_pass":"yes""#,
            r#","image_url":"javascript:alert(1)""#,
            r#","unknown":1"#,
        ] {
            assert!(NewActivity::parse(&body(extra)).is_err(), "{extra}");
        }
        assert!(NewActivity::parse(br#"{"name":"","starts_at":"2026-01-01T00:00:00Z","ends_at":"2026-01-02T00:00:00Z","stock_total":1}"#).is_err());
        assert!(NewActivity::parse(br#"{"name":"x","starts_at":"2026-01-01T00:00:00Z","ends_at":"2026-01-02T00:00:00Z","stock_total":-1}"#).is_err());
        assert!(NewActivity::parse(b"[]").is_err());
        assert!(NewActivity::parse(&vec![b' '; MAX_ACTIVITY_BODY + 1]).is_err());
    }

    #[test]
    fn the_view_has_rfc3339_times_and_live_stock() {
        let a = Activity {
            id: ActivityId::parse("3").unwrap(),
            name: "n".into(),
            description: String::new(),
            image_url: None,
            starts_at: Millis(0),
            ends_at: Millis(1000),
            status: Status::Published,
            per_user_limit: Some(1),
            require_pass: false,
            ticket_types: vec![TicketType::default_for("n", 10, 1, Kind::Counter)],
            stock_buckets: 1,
        };
        let v = a.view_with(|_| Some(7));
        assert_eq!(v["starts_at"], "1970-01-01T00:00:00Z");
        assert_eq!(v["status"], "published");
        assert_eq!(v["stock_left"], 7);
        assert_eq!(v["id"], 3);
        // As before types: one stock, its limit and kind.
        assert_eq!(
            (v["stock_total"].as_i64(), v["per_user_limit"].as_i64()),
            (Some(10), Some(1))
        );
        assert_eq!(v["kind"], "counter");
        assert_eq!(a.view()["stock_left"], 10);
    }

    #[test]
    fn a_cached_view_gets_live_stocks_and_what_the_caller_holds() {
        let t = |s: &str| Reply::Bytes(s.as_bytes().to_vec());
        let a = NewActivity::parse(br#"{"name":"Show","starts_at":"2026-01-01T00:00:00Z","ends_at":"2026-01-02T00:00:00Z","ticket_types":[{"key":"vip","name":"VIP","stock_total":10},{"key":"std","name":"S","stock_total":5}]}"#)
            .unwrap()
            .into_activity(ActivityId::from_db(2), Status::Published);
        let cached = a.view().to_string();
        // HGETALL's order is Redis's own: std before vip here.
        let reply = [
            t(&cached),
            Reply::Int(2),
            t("std"),
            Reply::Int(4),
            t("vip"),
            Reply::Int(9),
            Reply::Int(3),
            Reply::Int(2),
            Reply::Int(1),
        ];
        let v = live_view(&reply, true).unwrap().unwrap();
        assert_eq!(
            (v["stock_left"].as_i64(), v["my_claimed"].as_i64()),
            (Some(13), Some(3))
        );
        assert_eq!(
            (
                v["ticket_types"][0]["stock_left"].as_i64(),
                v["ticket_types"][0]["my_claimed"].as_i64()
            ),
            (Some(9), Some(1))
        );
        assert_eq!(
            (
                v["ticket_types"][1]["stock_left"].as_i64(),
                v["ticket_types"][1]["my_claimed"].as_i64()
            ),
            (Some(4), Some(2))
        );
        let anonymous = live_view(&reply[..6], false).unwrap().unwrap();
        assert!(anonymous.get("my_claimed").is_none());
        assert!(anonymous["ticket_types"][0].get("my_claimed").is_none());
        assert_eq!(live_view(&[Reply::Nil], false), Ok(None));
        assert_eq!(live_view(&[t("-")], false), Err(ApiError::NotFound));
        assert_eq!(
            live_view(&[t(&cached), Reply::Int(2)], false),
            Err(ApiError::Internal)
        );
    }

    #[test]
    fn stocks_of_a_page_decode_per_activity() {
        let t = |s: &str| Reply::Bytes(s.as_bytes().to_vec());
        let reply = [
            Reply::Int(2),
            t("vip"),
            Reply::Int(3),
            t("std"),
            Reply::Int(0),
            Reply::Int(0),
            Reply::Int(1),
            t("default"),
            Reply::Int(7),
        ];
        let stocks = decode_stocks(&reply, 3).unwrap();
        assert_eq!((stocks[0]["vip"], stocks[0]["std"]), (3, 0));
        assert!(stocks[1].is_empty(), "not loaded");
        assert_eq!(stocks[2]["default"], 7);
        assert_eq!(decode_stocks(&reply[..4], 3), Err(ApiError::Internal));
    }

    #[test]
    fn list_queries_default_and_bound_the_page() {
        assert_eq!(
            ListQuery::parse("").unwrap(),
            ListQuery {
                after: 0,
                limit: DEFAULT_PAGE
            }
        );
        assert_eq!(
            ListQuery::parse("cursor=42&limit=5").unwrap(),
            ListQuery {
                after: 42,
                limit: 5
            }
        );
        for bad in [
            "limit=0",
            "limit=101",
            "limit=x",
            "cursor=-1",
            "cursor=",
            "page=2",
        ] {
            assert_eq!(
                ListQuery::parse(bad).unwrap_err().code(),
                "invalid_request",
                "{bad}"
            );
        }
    }

    #[test]
    fn view_ttls_are_spread() {
        assert_eq!(view_ttl_ms(0), VIEW_TTL_MS);
        assert!(view_ttl_ms(u32::MAX) < VIEW_TTL_MS + VIEW_TTL_JITTER_MS);
    }
}

//! `GET /metrics`: what a Prometheus scrapes, in the text exposition format 0.0.4.
//!
//! Nothing here is counted in the component: a WASIp2 instance lives for one request, so
//! every counter lives in Redis and is moved by the scripts that already run (claim.lua,
//! return.lua, redeem.lua, pass.lua, login.lua; the drain notes its runs with tally.lua).
//! A scrape reads them back ([`ActivityReading`], [`Counters`]) and this module renders
//! them: parse (the readings) → render (the text), with the I/O in the drain component.
//!
//! Labels are bounded: `activity` and `ticket_type` by what operators publish, `shard` by
//! `redis_address`, `outcome` and `kind` by the fixed lists below. An activity leaves the
//! output [`RETENTION_MS`] after its `ends_at` (Prometheus then marks its series stale);
//! its counters stay in Redis with the rest of the activity's keys.

use crate::drain::{entry_millis, DrainReport};
use crate::error::ApiError;
use crate::scripts::{Arg, Reply};
use crate::HttpResponse;

pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// How long an ended activity stays in the output: a day covers a dashboard's "yesterday's
/// sale" and an alert's `for`, and keeps a scrape's size bounded by the recent sales.
pub const RETENTION_MS: i64 = 24 * 60 * 60 * 1000;

/// The global counters' hash (login, registration, the drain's runs), on the first Redis
/// endpoint like the log-in counters. Each activity has its own (`ActivityKeys::metrics`).
pub const GLOBAL_KEY: &str = "fc:metrics";

/// Claim answers as claim.lua counts them (`answers:<outcome>:<type>` in the activity's
/// metrics hash; `claimed` packed with the tickets, see [`split_claimed`]). `unavailable` and `unknown` (Redis down, or the reply lost) never reached
/// the script: a reused WASIp3 instance reports them later (`claim::Unreported`), under
/// an empty ticket type; a WASIp2 instance cannot (README, "Monitoring").
pub const CLAIM_OUTCOMES: [&str; 12] = [
    "claimed",
    "replayed",
    "not_started",
    "ended",
    "blacklisted",
    "rate_limited",
    "limit_reached",
    "sold_out",
    "pass_required",
    "invalid",
    "unavailable",
    "unknown",
];

/// claim.lua counts a claim and its tickets in one field, `claimed:<type>` = claims × 2^32 +
/// tickets, so the hot path pays one HINCRBY for both. Tickets per type stay far below 2^32
/// (stock is at most 10 million; returns re-issue a few). Returns (claims, tickets).
pub fn split_claimed(packed: i64) -> (i64, i64) {
    (packed >> 32, packed & 0xFFFF_FFFF)
}

/// The outcomes only ever counted without a type: the script never saw the request.
const UNTYPED: [&str; 2] = ["unavailable", "unknown"];

/// Registration answers, counted by the auth component after it has answered.
pub const REGISTRATION_OUTCOMES: [&str; 5] =
    ["created", "taken", "rate_limited", "invalid", "failed"];

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Counter,
    Gauge,
}

/// Every family `/metrics` can show, in output order: (name, type, help).
const FAMILIES: &[(&str, Kind, &str)] = &[
    ("flashclaim_build_info", Kind::Gauge, "The running release (version) and manifest flavour (wasip3 or wasip2); always 1."),
    ("flashclaim_claim_answers_total", Kind::Counter, "Claim answers by outcome, counted in claim.lua (ticket_type is empty when the answer came before a type was chosen)."),
    ("flashclaim_tickets_issued_total", Kind::Counter, "Tickets handed out by claims."),
    ("flashclaim_tickets_returned_total", Kind::Counter, "Tickets given back by their owners."),
    ("flashclaim_tickets_redeemed_total", Kind::Counter, "Tickets redeemed by operators."),
    ("flashclaim_tickets_left", Kind::Gauge, "Tickets left in the ticket type's stock."),
    ("flashclaim_passes_issued_total", Kind::Counter, "Claim passes handed out."),
    ("flashclaim_rate_limited_total", Kind::Counter, "Claims and passes refused by a rate limit, by the limit's kind (user, address, activity; pass_address)."),
    ("flashclaim_drain_backlog_entries", Kind::Gauge, "Claim-log entries not yet in Postgres."),
    ("flashclaim_drain_oldest_entry_age_seconds", Kind::Gauge, "Age of the oldest claim-log entry not yet in Postgres (0 when none)."),
    ("flashclaim_drain_runs_total", Kind::Counter, "Drain runs (cron ticks and POST /admin/drain)."),
    ("flashclaim_drain_failures_total", Kind::Counter, "Drain runs that left something undone (Postgres or a shard unreachable, a batch failed)."),
    ("flashclaim_drain_entries_total", Kind::Counter, "Claim-log entries written to Postgres and acknowledged."),
    ("flashclaim_drain_rows_written_total", Kind::Counter, "Rows the drain inserted or offered for insertion (ON CONFLICT DO NOTHING), by table."),
    ("flashclaim_drain_last_success_timestamp_seconds", Kind::Gauge, "When a drain run last finished with nothing undone."),
    ("flashclaim_redis_up", Kind::Gauge, "Whether the Redis shard answered this scrape."),
    ("flashclaim_redis_script_reloads_total", Kind::Counter, "NOSCRIPT replies of the shard (INFO errorstats): each is a script sent again with EVAL."),
    ("flashclaim_postgres_up", Kind::Gauge, "Whether Postgres answered this scrape."),
    ("flashclaim_login_attempts_total", Kind::Counter, "Log-in attempts: checked (the password was hashed) or throttled (refused before any hash)."),
    ("flashclaim_login_successes_total", Kind::Counter, "Log-ins with the right password."),
    ("flashclaim_registrations_total", Kind::Counter, "Registration answers by outcome."),
];

/// The text of one scrape: families in [`FAMILIES`] order, each sample under its family.
#[derive(Debug, Clone)]
pub struct Exposition {
    samples: Vec<Vec<String>>,
}

impl Default for Exposition {
    fn default() -> Self {
        Exposition {
            samples: vec![Vec::new(); FAMILIES.len()],
        }
    }
}

impl Exposition {
    /// One sample of the family `name` (one of [`FAMILIES`]; any other is a programming
    /// error, caught by the tests, and dropped).
    pub fn add(&mut self, name: &str, labels: &[(&str, &str)], value: f64) {
        let Some(index) = FAMILIES.iter().position(|(n, _, _)| *n == name) else {
            debug_assert!(false, "unknown metric family {name}");
            return;
        };
        let mut line = name.to_string();
        if !labels.is_empty() {
            let pairs: Vec<String> = labels
                .iter()
                .map(|(k, v)| format!("{k}=\"{}\"", escape(v)))
                .collect();
            line.push_str(&format!("{{{}}}", pairs.join(",")));
        }
        line.push_str(&format!(" {}", number(value)));
        self.samples[index].push(line);
    }

    pub fn render(&self) -> String {
        let mut text = String::new();
        for ((name, kind, help), samples) in FAMILIES.iter().zip(&self.samples) {
            let kind = match kind {
                Kind::Counter => "counter",
                Kind::Gauge => "gauge",
            };
            text.push_str(&format!("# HELP {name} {help}\n# TYPE {name} {kind}\n"));
            for sample in samples {
                text.push_str(sample);
                text.push('\n');
            }
        }
        text
    }

    pub fn to_response(&self) -> HttpResponse {
        HttpResponse {
            status: 200,
            headers: vec![
                ("content-type", CONTENT_TYPE.to_string()),
                ("cache-control", "no-store".to_string()),
            ],
            body: self.render().into_bytes(),
        }
    }
}

/// Label values escaped as the format asks: backslash, double quote and line feed.
fn escape(value: &str) -> String {
    value
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

fn number(value: f64) -> String {
    if value.fract() == 0.0 && value.abs() < 1e15 {
        format!("{}", value as i64)
    } else {
        format!("{value}")
    }
}

/// Who may read `/metrics`: a bearer equal to `metrics_token` (compared in constant time,
/// as the drain token is), or an operator. `is_admin` is asked only when the token does not
/// match, so a scraper's request never verifies a JWT. Only the `Authorization` header is
/// read: a token in a query string would end up in access logs.
pub fn authorize(
    authorization: Option<&str>,
    metrics_token: Option<&str>,
    is_admin: impl FnOnce() -> bool,
) -> Result<(), Refusal> {
    let Some(presented) = crate::drain_token::presented(authorization, "") else {
        return Err(Refusal::NoCredential);
    };
    if crate::drain_token::matches(presented, metrics_token, None) || is_admin() {
        return Ok(());
    }
    Err(Refusal::BadCredential)
}

/// Why `/metrics` was refused, for the log line (the answer is the same `401` either way).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    NoCredential,
    BadCredential,
}

impl Refusal {
    pub fn reason(self) -> &'static str {
        match self {
            Refusal::NoCredential => "no_credential",
            Refusal::BadCredential => "bad_credential",
        }
    }

    pub fn to_error(self) -> ApiError {
        ApiError::Unauthenticated("metrics need the metrics token or an admin token")
    }
}

/// A hash read back as (field, value) pairs: HGETALL's flat reply, or a script's.
pub fn pairs(reply: &[Reply]) -> Vec<(String, i64)> {
    reply
        .chunks_exact(2)
        .filter_map(|p| Some((p[0].as_text()?.to_string(), p[1].as_int()?)))
        .collect()
}

/// One activity as metrics.lua reads it.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ActivityReading {
    pub id: i64,
    pub status: String,
    pub ends_at_ms: i64,
    pub types: Vec<String>,
    pub passes: i64,
    pub backlog: i64,
    /// The id of the oldest entry of the claim log, when there is one.
    pub oldest_entry: Option<String>,
    pub stocks: Vec<(String, i64)>,
    pub counters: Vec<(String, i64)>,
}

impl ActivityReading {
    /// metrics.lua's reply: status, ends_at, types, passes, log length, oldest entry id,
    /// 2n, then n (type, left) pairs, then the metrics hash's (field, value) pairs.
    pub fn decode(id: i64, reply: &[Reply]) -> Option<Self> {
        let text = |i: usize| reply.get(i).and_then(Reply::as_text).unwrap_or("");
        let int = |i: usize| reply.get(i).and_then(Reply::as_int).unwrap_or(0);
        let stock_len = usize::try_from(reply.get(6)?.as_int()?).ok()?;
        let stocks_end = 7usize.checked_add(stock_len)?;
        if stocks_end > reply.len() {
            return None;
        }
        Some(ActivityReading {
            id,
            status: text(0).to_string(),
            ends_at_ms: int(1),
            types: text(2)
                .split(',')
                .filter(|t| !t.is_empty())
                .map(str::to_string)
                .collect(),
            passes: int(3),
            backlog: int(4),
            oldest_entry: Some(text(5).to_string()).filter(|t| !t.is_empty()),
            stocks: pairs(&reply[7..stocks_end]),
            counters: pairs(&reply[stocks_end..]),
        })
    }

    /// Adds another stock bucket's reading of the same activity (`crate::buckets`): one
    /// activity on `/metrics`, its stocks, counters, passes and logs summed, its oldest
    /// entry the oldest of any bucket. The settings are every bucket's alike.
    pub fn merge(&mut self, other: ActivityReading) {
        fn add(into: &mut Vec<(String, i64)>, from: Vec<(String, i64)>) {
            for (key, value) in from {
                match into.iter_mut().find(|(k, _)| *k == key) {
                    Some((_, v)) => *v += value,
                    None => into.push((key, value)),
                }
            }
        }
        self.passes += other.passes;
        self.backlog += other.backlog;
        let millis = |e: &Option<String>| e.as_deref().and_then(crate::drain::entry_millis);
        if other.oldest_entry.is_some()
            && (self.oldest_entry.is_none()
                || millis(&other.oldest_entry) < millis(&self.oldest_entry))
        {
            self.oldest_entry = other.oldest_entry;
        }
        add(&mut self.stocks, other.stocks);
        add(&mut self.counters, other.counters);
    }

    /// Whether the activity is still shown: loaded, and not ended longer than the retention.
    pub fn shown(&self, now_ms: i64) -> bool {
        matches!(self.status.as_str(), "published" | "closed")
            && now_ms < self.ends_at_ms.saturating_add(RETENTION_MS)
    }

    fn counter(&self, field: &str) -> i64 {
        self.counters
            .iter()
            .find(|(f, _)| f == field)
            .map_or(0, |(_, v)| *v)
    }

    fn render(&self, out: &mut Exposition) {
        let id = self.id.to_string();
        let activity = ("activity", id.as_str());
        for ty in &self.types {
            let labels = [activity, ("ticket_type", ty.as_str())];
            // Every outcome of every type, zeros included: a series that appears only at its
            // first increment hides that increment from rate() and increase().
            let (claims, tickets) = split_claimed(self.counter(&format!("claimed:{ty}")));
            for outcome in CLAIM_OUTCOMES.iter().filter(|o| !UNTYPED.contains(o)) {
                let value = match *outcome {
                    "claimed" => claims,
                    _ => self.counter(&format!("answers:{outcome}:{ty}")),
                };
                let labels = [activity, ("ticket_type", ty.as_str()), ("outcome", outcome)];
                out.add("flashclaim_claim_answers_total", &labels, value as f64);
            }
            let issued = [activity, ("ticket_type", ty.as_str())];
            out.add("flashclaim_tickets_issued_total", &issued, tickets as f64);
            for (family, field) in [
                ("flashclaim_tickets_returned_total", "returned"),
                ("flashclaim_tickets_redeemed_total", "redeemed"),
            ] {
                out.add(
                    family,
                    &labels,
                    self.counter(&format!("{field}:{ty}")) as f64,
                );
            }
            let left = self
                .stocks
                .iter()
                .find(|(t, _)| t == ty)
                .map_or(0, |(_, v)| *v);
            out.add("flashclaim_tickets_left", &labels, left as f64);
        }
        // Answers given before a type was chosen (the activity not started or ended, a type
        // that is not offered, no Redis): under an empty ticket_type, when there are any, and
        // always for the untyped outcomes the unavailability alert divides.
        for outcome in CLAIM_OUTCOMES {
            let field = format!("answers:{outcome}:");
            let value = self.counters.iter().find(|(f, _)| *f == field);
            if value.is_some() || UNTYPED.contains(&outcome) {
                let labels = [activity, ("ticket_type", ""), ("outcome", outcome)];
                let value = value.map_or(0, |(_, v)| *v);
                out.add("flashclaim_claim_answers_total", &labels, value as f64);
            }
        }
        out.add(
            "flashclaim_passes_issued_total",
            &[activity],
            self.passes as f64,
        );
        for kind in ["user", "address", "activity", "pass_address"] {
            let value = self.counter(&format!("limited:{kind}"));
            out.add(
                "flashclaim_rate_limited_total",
                &[activity, ("kind", kind)],
                value as f64,
            );
        }
    }
}

/// One Redis endpoint as a scrape found it.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ShardReading {
    pub up: bool,
    /// NOSCRIPT replies since the shard started, from `INFO errorstats`.
    pub script_reloads: Option<i64>,
    /// Every activity with a claim log on the shard, shown or not (the backlog counts all).
    pub activities: Vec<ActivityReading>,
}

/// The `errorstat_NOSCRIPT:count=<n>` line of `INFO errorstats` (absent: none since the
/// server started).
pub fn noscript_count(info: &str) -> i64 {
    info.lines()
        .find_map(|l| l.trim().strip_prefix("errorstat_NOSCRIPT:count="))
        .and_then(|rest| rest.split(',').next()?.parse().ok())
        .unwrap_or(0)
}

/// Everything one scrape read.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Scrape {
    pub now_ms: i64,
    pub version: String,
    /// `wasip3` or `wasip2`: the manifest's `manifest` variable of the drain component.
    pub manifest: String,
    pub postgres_up: bool,
    pub shards: Vec<ShardReading>,
    /// [`GLOBAL_KEY`] of the first endpoint; empty when it did not answer.
    pub global: Vec<(String, i64)>,
}

impl Scrape {
    pub fn render(&self) -> Exposition {
        let mut out = Exposition::default();
        out.add(
            "flashclaim_build_info",
            &[("version", &self.version), ("manifest", &self.manifest)],
            1.0,
        );
        for (index, shard) in self.shards.iter().enumerate() {
            let index = index.to_string();
            let label = [("shard", index.as_str())];
            out.add("flashclaim_redis_up", &label, f64::from(u8::from(shard.up)));
            if !shard.up {
                continue;
            }
            if let Some(n) = shard.script_reloads {
                out.add("flashclaim_redis_script_reloads_total", &label, n as f64);
            }
            let backlog: i64 = shard.activities.iter().map(|a| a.backlog).sum();
            let oldest = shard
                .activities
                .iter()
                .filter_map(|a| entry_millis(a.oldest_entry.as_deref()?))
                .min()
                .map_or(0, |at| (self.now_ms - at).max(0));
            out.add("flashclaim_drain_backlog_entries", &label, backlog as f64);
            out.add(
                "flashclaim_drain_oldest_entry_age_seconds",
                &label,
                oldest as f64 / 1000.0,
            );
            for activity in shard.activities.iter().filter(|a| a.shown(self.now_ms)) {
                activity.render(&mut out);
            }
        }
        out.add(
            "flashclaim_postgres_up",
            &[],
            f64::from(u8::from(self.postgres_up)),
        );
        self.render_global(&mut out);
        out
    }

    fn render_global(&self, out: &mut Exposition) {
        if self.shards.first().is_none_or(|s| !s.up) {
            return;
        }
        let get = |field: &str| {
            self.global
                .iter()
                .find(|(f, _)| f == field)
                .map_or(0, |(_, v)| *v) as f64
        };
        for (family, field) in [
            ("flashclaim_drain_runs_total", "drain:runs"),
            ("flashclaim_drain_failures_total", "drain:failures"),
            ("flashclaim_drain_entries_total", "drain:entries"),
            ("flashclaim_login_successes_total", "login:succeeded"),
        ] {
            out.add(family, &[], get(field));
        }
        for table in ["claims", "tickets"] {
            out.add(
                "flashclaim_drain_rows_written_total",
                &[("table", table)],
                get(&format!("drain:{table}")),
            );
        }
        let last = get("drain:last_success_ms");
        if last > 0.0 {
            out.add(
                "flashclaim_drain_last_success_timestamp_seconds",
                &[],
                last / 1000.0,
            );
        }
        for outcome in ["checked", "throttled"] {
            out.add(
                "flashclaim_login_attempts_total",
                &[("outcome", outcome)],
                get(&format!("login:{outcome}")),
            );
        }
        for outcome in REGISTRATION_OUTCOMES {
            out.add(
                "flashclaim_registrations_total",
                &[("outcome", outcome)],
                get(&format!("register:{outcome}")),
            );
        }
    }
}

/// tally.lua's ARGV for one drain run, ended as `run` at `now_ms`: a run that left nothing
/// undone records its time; any other counts as a failure.
pub fn drain_tally(run: &Result<DrainReport, ApiError>, now_ms: i64) -> Vec<Arg> {
    let ok = matches!(run, Ok(r) if r.errors.is_empty());
    let mut argv: Vec<Arg> = if ok {
        vec!["drain:last_success_ms".into(), Arg::Int(now_ms)]
    } else {
        vec!["".into(), "".into()]
    };
    let done = run
        .as_ref()
        .map_or((0, 0, 0), |r| (r.entries, r.claims, r.tickets));
    for (field, n) in [
        ("drain:runs", 1),
        ("drain:failures", i64::from(!ok)),
        ("drain:entries", done.0 as i64),
        ("drain:claims", done.1 as i64),
        ("drain:tickets", done.2 as i64),
    ] {
        if n != 0 {
            argv.push(field.into());
            argv.push(Arg::Int(n));
        }
    }
    argv
}

/// The log line of a drain run worth a line: one that moved entries or failed (a quiet
/// tick every second is not news).
pub fn drain_log_line(run: &Result<DrainReport, ApiError>, now_ms: i64) -> Option<String> {
    let fields = match run {
        Ok(r) if r.entries == 0 && r.errors.is_empty() => return None,
        Ok(r) => vec![
            ("ok", r.errors.is_empty().into()),
            ("entries", r.entries.into()),
            ("claims", r.claims.into()),
            ("tickets", r.tickets.into()),
            ("backlog", r.backlog.into()),
            ("complete", r.complete.into()),
            ("errors", r.errors.clone().into()),
        ],
        Err(e) => vec![("ok", false.into()), ("error", e.code().into())],
    };
    Some(crate::log::line(now_ms, "drain_run", &fields))
}

/// The registration outcome counted for an answer of `POST /api/users`.
pub fn registration_outcome<T>(answer: &Result<T, ApiError>) -> &'static str {
    match answer {
        Ok(_) => "created",
        Err(ApiError::Conflict(_)) => "taken",
        Err(ApiError::RateLimited { .. }) => "rate_limited",
        Err(e) if e.status() < 500 => "invalid",
        Err(_) => "failed",
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_buckets_of_one_activity_read_as_one() {
        let reading = |left: i64, sold: i64, oldest: Option<&str>| super::ActivityReading {
            id: 9,
            status: "published".into(),
            ends_at_ms: 5,
            types: vec!["std".into()],
            passes: 1,
            backlog: 2,
            oldest_entry: oldest.map(str::to_string),
            stocks: vec![("std".into(), left)],
            counters: vec![("answers:sold_out:std".into(), sold)],
        };
        let mut one = reading(3, 10, Some("2000-0"));
        one.merge(reading(4, 5, Some("1000-3")));
        one.merge(reading(0, 1, None));
        assert_eq!(one.stocks, [("std".to_string(), 7)]);
        assert_eq!(one.counters, [("answers:sold_out:std".to_string(), 16)]);
        assert_eq!((one.passes, one.backlog), (3, 6));
        assert_eq!(one.oldest_entry.as_deref(), Some("1000-3"));
    }

    use super::*;

    fn b(s: &str) -> Reply {
        Reply::Bytes(s.as_bytes().to_vec())
    }

    /// metrics.lua's reply for activity 7: one type `vip` with 3 left, two claims and a
    /// sold-out answer, one answer before the start, an entry in the log since `at`.
    fn reading(at: i64) -> Vec<Reply> {
        vec![
            b("published"),
            b("2000000000000"),
            b("vip"),
            b("4"),
            Reply::Int(1),
            b(&format!("{at}-0")),
            Reply::Int(2),
            b("vip"),
            b("3"),
            b("claimed:vip"),
            b(&((2_i64 << 32) + 2).to_string()),
            b("answers:sold_out:vip"),
            b("1"),
            b("answers:not_started:"),
            b("5"),
            b("limited:address"),
            b("6"),
        ]
    }

    fn scrape(now: i64) -> Scrape {
        Scrape {
            now_ms: now,
            version: "0.1.0".into(),
            manifest: "wasip3".into(),
            postgres_up: true,
            shards: vec![ShardReading {
                up: true,
                script_reloads: Some(2),
                activities: vec![ActivityReading::decode(7, &reading(now - 1_500)).unwrap()],
            }],
            global: vec![
                ("drain:runs".into(), 10),
                ("drain:last_success_ms".into(), 1_700_000_000_500),
                ("login:throttled".into(), 3),
            ],
        }
    }

    #[test]
    fn a_scrape_renders_every_family_with_help_and_type_once() {
        let text = scrape(1_700_000_000_000).render().render();
        for (name, _, _) in FAMILIES {
            assert_eq!(
                text.matches(&format!("# TYPE {name} ")).count(),
                1,
                "{name}"
            );
            assert_eq!(
                text.matches(&format!("# HELP {name} ")).count(),
                1,
                "{name}"
            );
        }
        assert!(text.ends_with('\n'));
    }

    #[test]
    fn claim_answers_are_counted_per_activity_type_and_outcome_with_zeros_for_the_rest() {
        let text = scrape(1_700_000_000_000).render().render();
        for line in [
            r#"flashclaim_claim_answers_total{activity="7",ticket_type="vip",outcome="claimed"} 2"#,
            r#"flashclaim_claim_answers_total{activity="7",ticket_type="vip",outcome="sold_out"} 1"#,
            r#"flashclaim_claim_answers_total{activity="7",ticket_type="vip",outcome="rate_limited"} 0"#,
            r#"flashclaim_claim_answers_total{activity="7",ticket_type="",outcome="not_started"} 5"#,
            r#"flashclaim_claim_answers_total{activity="7",ticket_type="",outcome="unavailable"} 0"#,
            r#"flashclaim_tickets_issued_total{activity="7",ticket_type="vip"} 2"#,
            r#"flashclaim_tickets_returned_total{activity="7",ticket_type="vip"} 0"#,
            r#"flashclaim_tickets_left{activity="7",ticket_type="vip"} 3"#,
            r#"flashclaim_passes_issued_total{activity="7"} 4"#,
            r#"flashclaim_rate_limited_total{activity="7",kind="address"} 6"#,
        ] {
            assert!(text.lines().any(|l| l == line), "{line} in\n{text}");
        }
        assert!(!text.contains(r#"ticket_type="vip",outcome="unavailable""#));
        assert!(!text.contains(r#"ticket_type="",outcome="sold_out""#));
    }

    #[test]
    fn the_drain_and_the_stores_are_shown_per_shard_and_globally() {
        let text = scrape(1_700_000_000_000).render().render();
        for line in [
            r#"flashclaim_build_info{version="0.1.0",manifest="wasip3"} 1"#,
            r#"flashclaim_redis_up{shard="0"} 1"#,
            r#"flashclaim_redis_script_reloads_total{shard="0"} 2"#,
            r#"flashclaim_drain_backlog_entries{shard="0"} 1"#,
            r#"flashclaim_drain_oldest_entry_age_seconds{shard="0"} 1.5"#,
            "flashclaim_postgres_up 1",
            "flashclaim_drain_runs_total 10",
            "flashclaim_drain_failures_total 0",
            "flashclaim_drain_last_success_timestamp_seconds 1700000000.5",
            r#"flashclaim_login_attempts_total{outcome="throttled"} 3"#,
            r#"flashclaim_registrations_total{outcome="created"} 0"#,
        ] {
            assert!(text.lines().any(|l| l == line), "{line} in\n{text}");
        }
    }

    #[test]
    fn a_shard_that_did_not_answer_is_down_and_shows_nothing_else() {
        let mut s = scrape(1_700_000_000_000);
        s.shards[0] = ShardReading::default();
        s.postgres_up = false;
        let text = s.render().render();
        assert!(text
            .lines()
            .any(|l| l == r#"flashclaim_redis_up{shard="0"} 0"#));
        assert!(text.lines().any(|l| l == "flashclaim_postgres_up 0"));
        assert!(!text.contains("flashclaim_drain_runs_total 10"));
        assert!(!text.contains(r#"activity="7""#));
    }

    #[test]
    fn an_activity_leaves_the_output_a_day_after_it_ends_but_its_backlog_still_counts() {
        let ends = 2_000_000_000_000;
        let later = ends + RETENTION_MS;
        let text = scrape(later).render().render();
        assert!(!text.contains(r#"activity="7""#), "{text}");
        assert!(text
            .lines()
            .any(|l| l == r#"flashclaim_drain_backlog_entries{shard="0"} 1"#));
        let a = ActivityReading::decode(7, &reading(0)).unwrap();
        assert!(a.shown(later - 1));
        assert!(!ActivityReading {
            status: "draft".into(),
            ..a
        }
        .shown(0));
    }

    #[test]
    fn a_reply_too_short_for_its_stock_count_is_not_a_reading() {
        let mut reply = reading(0);
        reply.truncate(8);
        assert_eq!(ActivityReading::decode(7, &reply), None);
        assert_eq!(ActivityReading::decode(7, &[]), None);
    }

    #[test]
    fn label_values_are_escaped() {
        let mut out = Exposition::default();
        out.add(
            "flashclaim_build_info",
            &[("version", "a\"b\\c\nd"), ("manifest", "x")],
            1.0,
        );
        assert!(out
            .render()
            .contains(r#"flashclaim_build_info{version="a\"b\\c\nd",manifest="x"} 1"#));
    }

    #[test]
    fn the_metrics_token_or_an_admin_reads_and_anyone_else_is_refused() {
        let token = Some("scrape-me");
        assert_eq!(authorize(Some("Bearer scrape-me"), token, || false), Ok(()));
        assert_eq!(authorize(Some("Bearer jwt"), token, || true), Ok(()));
        assert_eq!(
            authorize(Some("Bearer scrape-mf"), token, || false),
            Err(Refusal::BadCredential)
        );
        assert_eq!(authorize(None, token, || true), Err(Refusal::NoCredential));
        assert_eq!(Refusal::NoCredential.to_error().status(), 401);
    }

    #[test]
    fn an_empty_metrics_token_lets_only_admins_read() {
        assert_eq!(
            authorize(Some("Bearer "), Some(""), || false),
            Err(Refusal::NoCredential)
        );
        assert_eq!(
            authorize(Some("Bearer x"), Some(""), || false),
            Err(Refusal::BadCredential)
        );
        assert_eq!(authorize(Some("Bearer x"), None, || true), Ok(()));
    }

    #[test]
    fn the_token_is_never_taken_from_the_query_string() {
        // `presented` would read `?token=`; /metrics passes an empty query on purpose.
        assert_eq!(
            authorize(None, Some("scrape-me"), || false),
            Err(Refusal::NoCredential)
        );
    }

    #[test]
    fn noscript_replies_are_read_from_info_errorstats() {
        let info = "# Errorstats\r\nerrorstat_ERR:count=4\r\nerrorstat_NOSCRIPT:count=12\r\n";
        assert_eq!(noscript_count(info), 12);
        assert_eq!(noscript_count("# Errorstats\r\n"), 0);
    }

    #[test]
    fn registration_answers_map_to_bounded_outcomes() {
        let ok: Result<(), ApiError> = Ok(());
        assert_eq!(registration_outcome(&ok), "created");
        assert_eq!(
            registration_outcome::<()>(&Err(ApiError::Conflict("taken".into()))),
            "taken"
        );
        assert_eq!(
            registration_outcome::<()>(&Err(ApiError::RateLimited {
                retry_after_secs: 1
            })),
            "rate_limited"
        );
        assert_eq!(
            registration_outcome::<()>(&Err(ApiError::invalid("x"))),
            "invalid"
        );
        assert_eq!(
            registration_outcome::<()>(&Err(ApiError::Internal)),
            "failed"
        );
        assert!(REGISTRATION_OUTCOMES.contains(&"failed"));
    }

    #[test]
    fn a_drain_run_that_did_its_work_counts_it_and_records_its_time() {
        let run = Ok(DrainReport {
            entries: 3,
            claims: 3,
            tickets: 4,
            ..DrainReport::default()
        });
        let argv = drain_tally(&run, 99);
        assert_eq!(
            argv[..2],
            [Arg::from("drain:last_success_ms"), Arg::Int(99)]
        );
        assert!(argv
            .windows(2)
            .any(|w| w == [Arg::from("drain:tickets"), Arg::Int(4)]));
        assert!(!argv.contains(&Arg::from("drain:failures")));
        let line = drain_log_line(&run, 99).unwrap();
        assert!(line.starts_with(r#"{"ts_ms":99,"event":"drain_run","ok":true,"entries":3"#));
    }

    #[test]
    fn a_drain_run_that_failed_counts_a_failure_and_keeps_the_last_success() {
        for run in [
            Err(ApiError::Unavailable("postgres")),
            Ok(DrainReport {
                errors: vec!["shard 1 (h:6379) is unreachable".into()],
                ..DrainReport::default()
            }),
        ] {
            let argv = drain_tally(&run, 99);
            assert_eq!(argv[..2], [Arg::from(""), Arg::from("")]);
            assert!(argv
                .windows(2)
                .any(|w| w == [Arg::from("drain:failures"), Arg::Int(1)]));
            assert!(drain_log_line(&run, 99).unwrap().contains(r#""ok":false"#));
        }
    }

    #[test]
    fn a_quiet_drain_tick_writes_no_log_line() {
        assert_eq!(drain_log_line(&Ok(DrainReport::default()), 1), None);
    }

    #[test]
    fn one_packed_field_holds_the_claims_and_their_tickets() {
        let packed = 3 * (1_i64 << 32) + 7;
        assert_eq!(split_claimed(packed), (3, 7));
        assert_eq!(split_claimed(0), (0, 0));
        let stock = 10_000_000_i64;
        assert_eq!(split_claimed((stock << 32) + stock), (stock, stock));
    }

    #[test]
    fn every_family_name_follows_the_prometheus_conventions() {
        for (name, kind, _) in FAMILIES {
            assert!(name.starts_with("flashclaim_"), "{name}");
            assert_eq!(name.ends_with("_total"), *kind == Kind::Counter, "{name}");
        }
    }
}

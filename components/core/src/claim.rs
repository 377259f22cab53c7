//! The claim use case: parse the request, build the claim script's KEYS/ARGV, decode its
//! reply into a [`ClaimOutcome`] or an [`ApiError`], and encode the response.

use serde::Serialize;

use crate::client_addr::ClientAddr;
use crate::error::{ApiError, LimitScope};
use crate::http::{json_object, reject_unknown, HttpResponse};
use crate::ids::{ActivityId, IdempotencyKey, TicketRef, UserId};
use crate::keys::ActivityKeys;
use crate::scripts::{Arg, Reply};
use crate::ticket_type::TypeKey;
use crate::time::Millis;

/// A claim request body larger than this is refused unread.
pub const MAX_CLAIM_BODY: usize = 1024;
/// No claim takes more than this many tickets, whatever the activity allows.
pub const MAX_QUANTITY: i64 = 100;
/// How long a repeated Idempotency-Key returns the first result.
pub const IDEMPOTENCY_TTL_MS: i64 = 24 * 3600 * 1000;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClaimRequest {
    pub quantity: i64,
    /// `None`: the activity's only type (the script refuses when it has several).
    pub ticket_type: Option<TypeKey>,
}

impl ClaimRequest {
    /// An empty body means one ticket of the activity's only type.
    pub fn parse(body: &[u8]) -> Result<Self, ApiError> {
        if body.len() <= MAX_CLAIM_BODY && body.iter().all(u8::is_ascii_whitespace) {
            return Ok(ClaimRequest {
                quantity: 1,
                ticket_type: None,
            });
        }
        let object = json_object(body, MAX_CLAIM_BODY)?;
        reject_unknown(&object, &["quantity", "ticket_type"])?;
        let quantity = match object.get("quantity") {
            None => 1,
            Some(v) => v
                .as_i64()
                .ok_or_else(|| ApiError::invalid("quantity must be an integer"))?,
        };
        if !(1..=MAX_QUANTITY).contains(&quantity) {
            return Err(ApiError::invalid(format!(
                "quantity must be between 1 and {MAX_QUANTITY}"
            )));
        }
        let ticket_type = match object.get("ticket_type") {
            None | Some(serde_json::Value::Null) => None,
            Some(serde_json::Value::String(key)) => Some(TypeKey::parse(key)?),
            Some(_) => return Err(ApiError::invalid("ticket_type must be a string")),
        };
        Ok(ClaimRequest {
            quantity,
            ticket_type,
        })
    }
}

/// A rate limit applied inside the claim script: per user (`claim_rate_limit`) or on the
/// whole activity (`claim_global_rate_limit`, which sheds load before it reaches the stock).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RateLimit {
    pub attempts: i64,
    pub window_ms: i64,
}

impl Default for RateLimit {
    fn default() -> Self {
        RateLimit {
            attempts: 20,
            window_ms: 1000,
        }
    }
}

impl RateLimit {
    pub const OFF: RateLimit = RateLimit {
        attempts: 0,
        window_ms: 1000,
    };

    /// `"<attempts>/<window ms>"`, e.g. `"20/1000"`; `"0"` turns the limit off.
    pub fn parse(text: &str) -> Option<Self> {
        if text.trim() == "0" {
            return Some(RateLimit::OFF);
        }
        let (a, w) = text.trim().split_once('/')?;
        let (attempts, window_ms) = (a.parse().ok()?, w.parse().ok()?);
        (attempts > 0 && window_ms > 0).then_some(RateLimit {
            attempts,
            window_ms,
        })
    }
}

/// The per-address limit on one activity's claims and passes (`claim_rate_limit_per_address`):
/// a token bucket refilled with `rate.attempts` per `rate.window_ms`, holding at most `burst`
/// (seed 003's `limit_req rate=10r/s burst=20` is `"10/1000/20"`). Off by default: a campus
/// or a carrier NAT puts many honest people behind one address.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AddressLimit {
    pub rate: RateLimit,
    pub burst: i64,
}

impl AddressLimit {
    pub const OFF: AddressLimit = AddressLimit {
        rate: RateLimit::OFF,
        burst: 0,
    };

    /// `"<attempts>/<window ms>[/<burst>]"` (the burst defaults to the attempts); `"0"`: off.
    pub fn parse(text: &str) -> Option<Self> {
        let text = text.trim();
        let (rate_text, burst) = match text.splitn(3, '/').collect::<Vec<_>>().as_slice() {
            [_, _, b] => (
                &text[..text.len() - b.len() - 1],
                Some(b.parse::<i64>().ok()?),
            ),
            _ => (text, None),
        };
        let rate = RateLimit::parse(rate_text)?;
        let burst = burst.unwrap_or(rate.attempts);
        if rate.attempts == 0 {
            return Some(AddressLimit::OFF);
        }
        (burst >= 1).then_some(AddressLimit { rate, burst })
    }

    fn args(&self) -> [Arg; 3] {
        [
            Arg::Int(self.rate.attempts),
            Arg::Int(self.rate.window_ms),
            Arg::Int(self.burst),
        ]
    }
}

/// Everything the claim script needs, built from validated inputs only.
#[derive(Debug, Clone)]
pub struct ClaimCommand {
    pub keys: Vec<String>,
    pub argv: Vec<Arg>,
    /// Whose claim, of how many, under which id: what claiming in stock buckets needs
    /// besides the script's arguments (`crate::buckets::BucketedClaim`).
    pub activity: ActivityId,
    pub user: UserId,
    pub quantity: i64,
    pub claim_id: String,
}

/// Crockford base32: unambiguous when read aloud or typed from a printed ticket.
const CODE_ALPHABET: &[u8; 32] = b"0123456789ABCDEFGHJKMNPQRSTVWXYZ";

/// Eight code characters from five random bytes.
pub fn code_prefix(random: [u8; 5]) -> String {
    let n = random.iter().fold(0u64, |acc, b| acc << 8 | u64::from(*b));
    (0..8)
        .rev()
        .map(|i| CODE_ALPHABET[(n >> (5 * i) & 31) as usize] as char)
        .collect()
}

pub fn claim_id(random: [u8; 16]) -> String {
    random.iter().map(|b| format!("{b:02x}")).collect()
}

impl ClaimCommand {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        activity: ActivityId,
        user: &UserId,
        request: ClaimRequest,
        idempotency: Option<&IdempotencyKey>,
        now: Millis,
        claim_id: &str,
        code_prefixes: &[String],
        rate: RateLimit,
        global_rate: RateLimit,
    ) -> Self {
        let k = ActivityKeys::new(activity);
        let keys = vec![
            k.meta(),
            k.stocks(),
            k.seq(),
            k.claimed(),
            k.tickets(),
            k.log(),
            k.idempotency(user, idempotency),
            k.deny(),
            k.rate(user),
            k.pools(),
            k.pass(user),
            k.flood(),
        ];
        let argv = vec![
            Arg::from(user.as_str()),
            Arg::Int(request.quantity),
            Arg::Int(now.0),
            Arg::from(claim_id),
            Arg::from(code_prefixes.join(",")),
            Arg::Int(i64::from(idempotency.is_some())),
            Arg::Int(IDEMPOTENCY_TTL_MS),
            Arg::Int(rate.attempts),
            Arg::Int(rate.window_ms),
            Arg::Int(global_rate.attempts),
            Arg::Int(global_rate.window_ms),
            Arg::from(request.ticket_type.as_ref().map_or("", TypeKey::as_str)),
        ];
        let mut command = ClaimCommand {
            keys,
            argv,
            activity,
            user: user.clone(),
            quantity: request.quantity,
            claim_id: claim_id.to_string(),
        };
        command.set_client(activity, "", AddressLimit::OFF);
        command
    }

    /// Who asked (the stored form of the client's address, "" when unknown) and the limit
    /// on that address: KEYS[13] and ARGV[13..16] of claim.lua (KEYS[14], the activity's
    /// metrics hash, follows).
    pub fn with_client(
        mut self,
        activity: ActivityId,
        stored_addr: &str,
        limit: AddressLimit,
    ) -> Self {
        self.set_client(activity, stored_addr, limit);
        self
    }

    fn set_client(&mut self, activity: ActivityId, stored_addr: &str, limit: AddressLimit) {
        self.keys.truncate(12);
        self.argv.truncate(12);
        let keys = ActivityKeys::new(activity);
        self.keys.push(keys.client(stored_addr));
        self.keys.push(keys.metrics());
        self.argv.extend(limit.args());
        self.argv.push(Arg::from(stored_addr));
    }
}

impl ClaimCommand {
    /// Answers given without the script since this instance last reached Redis for the
    /// activity (see [`Unreported`]): ARGV[17..18] of claim.lua, added to its counters.
    pub fn with_unreported(mut self, (unavailable, unknown): (i64, i64)) -> Self {
        let end = self.argv.len().min(18);
        self.argv
            .splice(16..end, [Arg::Int(unavailable), Arg::Int(unknown)]);
        self
    }

    /// Asks a refusal any user would get to bring a snapshot of the activity for the
    /// instance's cache (claim.lua's ARGV[19..21], `ClaimCache::snapshot_args`).
    pub fn with_snapshot(mut self, args: [Arg; 3]) -> Self {
        if self.argv.len() < 18 {
            self = self.with_unreported((0, 0));
        }
        let end = self.argv.len().min(21);
        self.argv.splice(18..end, args);
        self
    }
}

impl ClaimCommand {
    /// The claim in bucket `b` of an activity of `n` stock buckets (`crate::buckets`): the
    /// same keys under that bucket's tag, KEYS[15], and the user's hash (ARGV[22]), by
    /// which the script checks it is the user's home bucket, or says which `n` it has
    /// (`{ -16, n }`); a first attempt (ARGV[23] empty). Last of the builders: the others
    /// keep ARGV[22..24] but do not add them. Applied once: it divides the activity's and
    /// the address's limits among the buckets.
    pub fn in_bucket(mut self, (b, n): (i64, i64)) -> Self {
        self.keys.truncate(14);
        self.keys.push(ActivityKeys::new(self.activity).bucket());
        if self.argv.len() < 18 {
            self = self.with_unreported((0, 0));
        }
        if self.argv.len() < 21 {
            self.argv.truncate(18);
            self.argv.extend([Arg::Int(0), Arg::Int(0), Arg::Int(-1)]);
        }
        self.argv.truncate(21);
        let hash = crate::buckets::user_hash(&self.user);
        self.argv.extend([
            Arg::Int(i64::from(hash)),
            Arg::from(""),
            Arg::Int(crate::buckets::DRY_MS),
        ]);
        self.move_from_bucket_zero((b, n));
        self
    }

    /// A claim built for bucket 0 of one bucket ([`ClaimCommand::in_bucket`] with `(0, 1)`)
    /// sent instead to bucket `b` of `n`: its keys under that bucket's tag, and the limits
    /// over the activity and an address divided among the buckets (each counts its own, so
    /// together they allow what the deployment set).
    pub fn move_from_bucket_zero(&mut self, (b, n): (i64, i64)) {
        // Bucket 0 has the activity's own tag: its keys stay as built.
        if b != 0 {
            let from = ActivityKeys::new(self.activity).meta();
            let from = &from[..from.len() - "meta".len()];
            let to = ActivityKeys::in_bucket(self.activity, b, n).meta();
            let to = &to[..to.len() - "meta".len()];
            for key in &mut self.keys {
                if let Some(rest) = key.strip_prefix(from) {
                    *key = format!("{to}{rest}");
                }
            }
        }
        if n > 1 {
            for i in [9, 12, 14] {
                if let Some(Arg::Int(x)) = self.argv.get_mut(i) {
                    if *x > 0 {
                        *x = (*x + n - 1) / n;
                    }
                }
            }
        }
    }

    /// The same claim again after borrowing: the stock lent to its bucket for it (ARGV[23],
    /// `<move>:<amount>` each, `-` for none), credited first, once; `dry`: whether a
    /// shortfall now keeps the bucket from asking again for `DRY_MS` (ARGV[24]; not when a
    /// bucket could not be asked). The answers ARGV[17..18] reported were counted the
    /// first time.
    pub fn again(&mut self, loans: &[(String, i64)], dry: bool) {
        let credits = match loans {
            [] => "-".to_string(),
            loans => loans
                .iter()
                .map(|(m, a)| format!("{m}:{a}"))
                .collect::<Vec<_>>()
                .join(","),
        };
        let dry_ms = if dry { crate::buckets::DRY_MS } else { 0 };
        self.argv.splice(16..18, [Arg::Int(0), Arg::Int(0)]);
        self.argv.splice(
            22..24.min(self.argv.len()),
            [Arg::from(credits), Arg::Int(dry_ms)],
        );
    }
}

/// Claims answered without the script (`unavailable`: it never ran; `unknown`: the reply
/// was lost), which Redis could not count. A reused WASIp3 instance keeps them here and
/// reports them with its next claim of the same activity that reaches Redis; they are lost
/// if the instance ends first (a WASIp2 instance always does). At most
/// [`Unreported::MAX_ACTIVITIES`] activities are remembered, so made-up ids sent while
/// Redis is down cannot grow it.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Unreported(std::collections::BTreeMap<i64, (i64, i64)>);

impl Unreported {
    pub const MAX_ACTIVITIES: usize = 64;

    /// The activity's counts, to send with its next claim.
    pub fn take(&mut self, activity: ActivityId) -> (i64, i64) {
        self.0.remove(&activity.get()).unwrap_or_default()
    }

    /// After the claim that carried `taken`: a reply means the script counted them; a
    /// failure that proves it never ran keeps them and adds this answer as `unavailable`;
    /// any other failure may have followed a script that counted them, so they are dropped
    /// (never doubled) and this answer is added as `unknown`.
    pub fn settle(
        &mut self,
        activity: ActivityId,
        taken: (i64, i64),
        failure: Option<&crate::scripts::RedisFailure>,
    ) {
        let add = match failure {
            None => return,
            Some(f) if f.proves_nothing_ran() => (taken.0 + 1, taken.1),
            Some(_) => (0, 1),
        };
        if self.0.len() >= Self::MAX_ACTIVITIES && !self.0.contains_key(&activity.get()) {
            return;
        }
        let entry = self.0.entry(activity.get()).or_default();
        entry.0 += add.0;
        entry.1 += add.1;
    }
}

/// What a claim needs from the deployment (its Spin variables), read once: per request on
/// WASIp2, once per reused instance on WASIp3.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClaimSettings {
    pub jwt_secret: String,
    /// During a rotation, the secret of the tokens issued before it (`core::rotation`).
    pub jwt_secret_previous: Option<String>,
    pub rate: RateLimit,
    pub global_rate: RateLimit,
    pub per_address: AddressLimit,
}

impl ClaimSettings {
    /// From `jwt_secret`, `claim_rate_limit` and `claim_global_rate_limit` (absent or empty:
    /// their defaults). A malformed limit is a deployment error: the text says which.
    pub fn from_variables(
        jwt_secret: String,
        rate: Option<&str>,
        global_rate: Option<&str>,
    ) -> Result<Self, String> {
        let limit = |name: &str, text: Option<&str>, default: RateLimit| match text
            .map(str::trim)
            .filter(|t| !t.is_empty())
        {
            None => Ok(default),
            Some(t) => RateLimit::parse(t)
                .ok_or_else(|| format!("{name} `{t}` is not `<attempts>/<window ms>` or `0`")),
        };
        Ok(ClaimSettings {
            jwt_secret,
            jwt_secret_previous: None,
            rate: limit("claim_rate_limit", rate, RateLimit::default())?,
            global_rate: limit("claim_global_rate_limit", global_rate, RateLimit::OFF)?,
            per_address: AddressLimit::OFF,
        })
    }

    /// `claim_rate_limit_per_address` (absent or empty: off).
    pub fn with_per_address(mut self, text: Option<&str>) -> Result<Self, String> {
        if let Some(t) = text.map(str::trim).filter(|t| !t.is_empty()) {
            self.per_address = AddressLimit::parse(t).ok_or_else(|| {
                format!("claim_rate_limit_per_address `{t}` is not `<attempts>/<window ms>[/<burst>]` or `0`")
            })?;
        }
        Ok(self)
    }
}

impl ClaimSettings {
    /// `jwt_secret_previous` (absent or empty: no rotation in progress).
    pub fn with_previous_jwt_secret(mut self, previous: Option<String>) -> Self {
        self.jwt_secret_previous = previous.filter(|s| !s.trim().is_empty());
        self
    }
}

/// The parse step of `POST /api/activities/{id}/claims`, shared by the WASIp2 and WASIp3
/// claim components: the activity id from the path, the caller from the token, the body,
/// the Idempotency-Key, and the script's KEYS/ARGV. `random(n)` gives `n` random bytes; it
/// is called once per claim.
// Each argument is one fact of the request or the instance, read by the component.
#[allow(clippy::too_many_arguments)]
pub fn prepare(
    id: &str,
    authorization: Option<&str>,
    idempotency_key: Option<&[u8]>,
    body: &[u8],
    client: Option<ClientAddr>,
    settings: &ClaimSettings,
    now: Millis,
    random: impl FnOnce(usize) -> Vec<u8>,
) -> Result<(ActivityId, ClaimCommand), ApiError> {
    let parsed = parse(id, authorization, idempotency_key, body, settings, now)?;
    let command = parsed.command(client, settings, now, random)?;
    Ok((parsed.activity, command))
}

/// A claim request, validated: what [`prepare`] checks before any random or keyed work, so
/// an instance can answer it from its cache (`crate::claim_cache`) without that work.
#[derive(Debug, Clone)]
pub struct ParsedClaim {
    pub activity: ActivityId,
    pub user: UserId,
    pub request: ClaimRequest,
    pub idempotency: Option<IdempotencyKey>,
}

/// The validation half of [`prepare`].
pub fn parse(
    id: &str,
    authorization: Option<&str>,
    idempotency_key: Option<&[u8]>,
    body: &[u8],
    settings: &ClaimSettings,
    now: Millis,
) -> Result<ParsedClaim, ApiError> {
    let activity = ActivityId::parse(id)?;
    let principal = crate::rotation::authenticate(
        authorization,
        settings.jwt_secret.as_bytes(),
        || settings.jwt_secret_previous.clone(),
        now.as_secs(),
    )?;
    let request = ClaimRequest::parse(body)?;
    let idempotency = idempotency_key
        .map(|k| {
            std::str::from_utf8(k).map_err(|_| ApiError::invalid("Idempotency-Key must be ASCII"))
        })
        .transpose()?
        .map(IdempotencyKey::parse)
        .transpose()?;
    Ok(ParsedClaim {
        activity,
        user: principal.user,
        request,
        idempotency,
    })
}

impl ParsedClaim {
    /// What the claim cache judges the request by.
    pub fn ask(&self) -> crate::claim_cache::Ask<'_> {
        crate::claim_cache::Ask {
            request: &self.request,
            user: &self.user,
            keyed: self.idempotency.is_some(),
        }
    }

    /// The script's KEYS/ARGV: the claim id and code prefixes from `random`, the client's
    /// address hashed.
    pub fn command(
        &self,
        client: Option<ClientAddr>,
        settings: &ClaimSettings,
        now: Millis,
        random: impl FnOnce(usize) -> Vec<u8>,
    ) -> Result<ClaimCommand, ApiError> {
        let quantity = self.request.quantity as usize;
        let bytes = random(16 + 5 * quantity);
        let (id_bytes, code_bytes) = bytes.split_at(16);
        let prefixes: Vec<String> = code_bytes
            .chunks_exact(5)
            .map(|c| code_prefix([c[0], c[1], c[2], c[3], c[4]]))
            .collect();
        let claim_id = claim_id(id_bytes.try_into().map_err(|_| ApiError::Internal)?);
        if prefixes.len() != quantity {
            return Err(ApiError::Internal);
        }
        Ok(ClaimCommand::new(
            self.activity,
            &self.user,
            self.request.clone(),
            self.idempotency.as_ref(),
            now,
            &claim_id,
            &prefixes,
            settings.rate,
            settings.global_rate,
        )
        .with_client(
            self.activity,
            &crate::client_addr::stored(client, settings.jwt_secret.as_bytes()),
            settings.per_address,
        ))
    }
}

/// The encode step: the claim script's reply, or why there was none, as the answer. A
/// failure that proves the script never ran says nothing was claimed; any other leaves the
/// outcome unknown (the client retries with its Idempotency-Key).
pub fn answer(
    activity: ActivityId,
    reply: Result<Vec<Reply>, crate::scripts::RedisFailure>,
) -> Result<HttpResponse, ApiError> {
    match reply {
        Ok(reply) => decode(&reply).map(|outcome| encode(activity, &outcome)),
        Err(e) if e.proves_nothing_ran() => Err(ApiError::Unavailable(
            "claims are unavailable right now; nothing was claimed",
        )),
        Err(_) => Err(ApiError::OutcomeUnknown),
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Claimed {
    pub claim_id: String,
    /// Left of the claimed type.
    pub stock_left: i64,
    pub ticket_type: String,
    pub codes: Vec<String>,
    /// Whether the codes came from an uploaded pool: such a code is shown as uploaded.
    pub pooled: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClaimOutcome {
    Claimed(Claimed),
    /// A repeated Idempotency-Key: the first claim's result, nothing changed.
    Replayed(Claimed),
}

/// The list of type keys claim.lua names in a refusal (comma separated).
fn type_list(reply: &[Reply], i: usize) -> Vec<String> {
    reply
        .get(i)
        .and_then(Reply::as_text)
        .unwrap_or("")
        .split(',')
        .filter(|k| !k.is_empty())
        .map(str::to_string)
        .collect()
}

/// The claim script's return codes, in one place.
pub fn decode(reply: &[Reply]) -> Result<ClaimOutcome, ApiError> {
    let int = |i: usize| reply.get(i).and_then(Reply::as_int);
    let text = |i: usize| reply.get(i).and_then(Reply::as_text).map(str::to_string);
    // The type a refusal is about, when the script names one.
    let of_type = |i: usize, error: ApiError| match text(i) {
        Some(ticket_type) => ApiError::OfType {
            ticket_type,
            error: Box::new(error),
        },
        None => error,
    };
    let status = int(0).ok_or(ApiError::Internal)?;
    match status {
        1 | 2 => {
            let claim_id = text(1).ok_or(ApiError::Internal)?;
            let stock_left = int(2).ok_or(ApiError::Internal)?;
            let ticket_type = text(3).ok_or(ApiError::Internal)?;
            let pooled = text(4).ok_or(ApiError::Internal)? == "codes";
            let codes = reply[5..]
                .iter()
                .map(|r| r.as_text().map(str::to_string).ok_or(ApiError::Internal))
                .collect::<Result<Vec<_>, _>>()?;
            let claimed = Claimed {
                claim_id,
                stock_left,
                ticket_type,
                codes,
                pooled,
            };
            Ok(if status == 1 {
                ClaimOutcome::Claimed(claimed)
            } else {
                ClaimOutcome::Replayed(claimed)
            })
        }
        -1 => Err(ApiError::NotFound),
        -3 => Err(of_type(
            2,
            ApiError::NotStarted {
                starts_at: Millis(int(1).unwrap_or(0)),
            },
        )),
        -4 => Err(of_type(1, ApiError::Ended)),
        -5 => Err(ApiError::Forbidden("this account may not claim")),
        -6 => Err(ApiError::RateLimited {
            retry_after_secs: (int(1).unwrap_or(1000).max(1) as u64).div_ceil(1000),
        }),
        -7 => {
            let scope = match text(2).as_deref() {
                Some("activity") => LimitScope::Activity,
                _ => LimitScope::TicketType,
            };
            Err(of_type(
                3,
                ApiError::LimitReached {
                    limit: int(1).unwrap_or(0),
                    scope,
                },
            ))
        }
        -8 => Err(of_type(1, ApiError::SoldOut)),
        -9 => Err(ApiError::PassRequired),
        -10 => Err(of_type(
            2,
            ApiError::invalid(format!(
                "quantity exceeds the per-user limit of {}",
                int(1).unwrap_or(0)
            )),
        )),
        // An activity loaded before it had types (it must be published again).
        -14 if type_list(reply, 1).is_empty() => {
            eprintln!(
                "flashclaim: claim: the activity has no ticket types in Redis; publish it again"
            );
            Err(ApiError::Internal)
        }
        -14 => Err(ApiError::UnknownTicketType {
            named: false,
            offered: type_list(reply, 1),
        }),
        -15 => Err(ApiError::UnknownTicketType {
            named: true,
            offered: type_list(reply, 1),
        }),
        _ => Err(ApiError::Internal),
    }
}

#[derive(Serialize)]
struct TicketBody {
    id: String,
    code: String,
    activity_id: ActivityId,
    ticket_type: String,
    status: &'static str,
}

#[derive(Serialize)]
struct ClaimBody201 {
    claim_id: String,
    activity_id: ActivityId,
    ticket_type: String,
    quantity: usize,
    stock_left: i64,
    tickets: Vec<TicketBody>,
}

pub fn encode(activity: ActivityId, outcome: &ClaimOutcome) -> HttpResponse {
    let (claimed, replayed) = match outcome {
        ClaimOutcome::Claimed(c) => (c, false),
        ClaimOutcome::Replayed(c) => (c, true),
    };
    let body = ClaimBody201 {
        claim_id: claimed.claim_id.clone(),
        activity_id: activity,
        ticket_type: claimed.ticket_type.clone(),
        quantity: claimed.codes.len(),
        stock_left: claimed.stock_left,
        tickets: claimed
            .codes
            .iter()
            .map(|code| {
                let ticket = TicketRef {
                    activity,
                    code: code.clone(),
                };
                TicketBody {
                    id: ticket.to_string(),
                    code: ticket.shown(claimed.pooled),
                    activity_id: activity,
                    ticket_type: claimed.ticket_type.clone(),
                    status: "active",
                }
            })
            .collect(),
    };
    let mut response = HttpResponse::json(201, &body);
    if replayed {
        response
            .headers
            .push(("idempotent-replayed", "true".into()));
    }
    response
}

/// Claim passes handed out per ticket of stock, unless `claim_pass_factor` says otherwise.
pub const PASS_FACTOR: i64 = 3;

/// The `claim_pass_factor` variable: a whole number ≥ 1, else the default.
pub fn pass_factor(variable: Option<&str>) -> i64 {
    variable
        .and_then(|v| v.trim().parse::<i64>().ok())
        .filter(|f| *f >= 1)
        .unwrap_or(PASS_FACTOR)
}

/// pass.lua's KEYS and ARGV.
pub fn pass_command(
    activity: ActivityId,
    user: &UserId,
    now: Millis,
    factor: i64,
    stored_addr: &str,
    limit: AddressLimit,
) -> (Vec<String>, Vec<Arg>) {
    let k = ActivityKeys::new(activity);
    let mut argv = vec![Arg::Int(now.0), Arg::Int(factor)];
    argv.extend(limit.args());
    (
        vec![
            k.meta(),
            k.passes(),
            k.pass(user),
            k.client(stored_addr),
            k.metrics(),
        ],
        argv,
    )
}

/// pass.lua's reply as the response: 201 for a new pass, 200 when the user had one.
pub fn decode_pass(activity: ActivityId, reply: &[Reply]) -> Result<HttpResponse, ApiError> {
    let state = reply.get(1).and_then(Reply::as_text);
    let status = match (reply.first().and_then(Reply::as_int), state) {
        (Some(1), Some(_)) => 201,
        (Some(2), Some(_)) => 200,
        (Some(-1), _) => return Err(ApiError::NotFound),
        (Some(-4), _) => return Err(ApiError::Ended),
        (Some(-6), _) => {
            let ms = reply.get(1).and_then(Reply::as_int).unwrap_or(1000);
            return Err(ApiError::RateLimited {
                retry_after_secs: (ms.max(1) as u64).div_ceil(1000),
            });
        }
        (Some(-8), _) => return Err(ApiError::SoldOut),
        (Some(-13), _) => {
            return Err(ApiError::Conflict(
                "this activity does not use claim passes".into(),
            ))
        }
        _ => return Err(ApiError::Internal),
    };
    Ok(HttpResponse::json(
        status,
        &serde_json::json!({ "activity_id": activity, "pass": state }),
    ))
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_per_address_limit_reads_as_rate_window_and_optional_burst() {
        let l = AddressLimit::parse("10/1000/20").unwrap();
        assert_eq!((l.rate.attempts, l.rate.window_ms, l.burst), (10, 1000, 20));
        let l = AddressLimit::parse(" 5/60000 ").unwrap();
        assert_eq!((l.rate.attempts, l.rate.window_ms, l.burst), (5, 60000, 5));
        assert_eq!(AddressLimit::parse("0"), Some(AddressLimit::OFF));
        for bad in [
            "",
            "10",
            "10/0",
            "10/1000/0",
            "10/1000/x",
            "10/1000/20/1",
            "-1/1000",
        ] {
            assert_eq!(AddressLimit::parse(bad), None, "{bad}");
        }
    }

    #[test]
    fn answers_given_without_redis_wait_for_the_next_claim_that_reaches_it() {
        use crate::scripts::RedisFailure;
        let id = ActivityId::parse("7").unwrap();
        let mut unreported = Unreported::default();
        let down = RedisFailure::Unreachable("refused".into());
        let lost = RedisFailure::Command("Connection reset by peer".into());
        let taken = unreported.take(id);
        unreported.settle(id, taken, Some(&down));
        let taken = unreported.take(id);
        assert_eq!(taken, (1, 0));
        unreported.settle(id, taken, Some(&down));
        let taken = unreported.take(id);
        assert_eq!(taken, (2, 0), "kept while Redis stays away");
        // The reply was lost: the script may have counted the two; they are not sent again.
        unreported.settle(id, taken, Some(&lost));
        let taken = unreported.take(id);
        assert_eq!(taken, (0, 1));
        unreported.settle(id, taken, None);
        assert_eq!(
            unreported.take(id),
            (0, 0),
            "reported with a claim that ran"
        );
    }

    #[test]
    fn unreported_answers_remember_a_bounded_number_of_activities() {
        let down = crate::scripts::RedisFailure::Unreachable("refused".into());
        let mut unreported = Unreported::default();
        for n in 1..=(Unreported::MAX_ACTIVITIES as i64 + 10) {
            let id = ActivityId::parse(&n.to_string()).unwrap();
            unreported.settle(id, (0, 0), Some(&down));
        }
        assert_eq!(unreported.0.len(), Unreported::MAX_ACTIVITIES);
    }

    #[test]
    fn unreported_answers_travel_as_the_last_two_arguments() {
        let command = plain_command(ActivityId::parse("7").unwrap()).with_unreported((3, 1));
        assert_eq!(command.argv.len(), 18);
        assert_eq!(command.argv[16..], [Arg::Int(3), Arg::Int(1)]);
    }

    /// One ticket of the only type for `u1`, no limits, no client address.
    fn plain_command(id: ActivityId) -> ClaimCommand {
        limited_command(id, RateLimit::OFF)
    }

    /// [`plain_command`] with a limit over the whole activity.
    fn limited_command(id: ActivityId, global_rate: RateLimit) -> ClaimCommand {
        ClaimCommand::new(
            id,
            &UserId::parse("u1").unwrap(),
            ClaimRequest::parse(b"{}").unwrap(),
            None,
            Millis(1),
            "c",
            &["P".into()],
            RateLimit::OFF,
            global_rate,
        )
    }

    #[test]
    fn a_claim_in_a_stock_bucket_moves_every_key_there_and_shares_the_activity_wide_limits() {
        let id = ActivityId::parse("7").unwrap();
        let limit = AddressLimit::parse("10/1000/20").unwrap();
        let command = limited_command(id, RateLimit::parse("90/1000").unwrap())
            .with_client(id, "abc", limit)
            .with_snapshot([Arg::Int(1), Arg::Int(5), Arg::Int(-1)]);
        let home = command.clone().in_bucket((2, 3));
        let tag = crate::buckets::tag(id, 2, 3);
        assert_eq!(home.keys.len(), 15);
        assert!(
            home.keys
                .iter()
                .all(|k| k.starts_with(&format!("fc:{{{tag}}}:"))),
            "{:?}",
            home.keys
        );
        assert_eq!(
            home.argv[18],
            Arg::Int(1),
            "the snapshot is still asked for"
        );
        assert_eq!(home.argv[22], Arg::from(""), "a first attempt");
        assert_eq!(
            (&home.argv[9], &home.argv[12], &home.argv[14]),
            (&Arg::Int(30), &Arg::Int(4), &Arg::Int(7)),
            "a third of 90 per activity, of 10 (20 burst) per address, rounded up"
        );
        // Sent to bucket 0 first (the count unknown), then moved home: the same claim.
        let mut moved = command.clone().in_bucket((0, 1));
        assert_eq!(moved.argv[9], Arg::Int(90), "one bucket: the whole limit");
        moved.move_from_bucket_zero((2, 3));
        assert_eq!((&moved.keys, &moved.argv), (&home.keys, &home.argv));
        let mut again = home.clone();
        let loans = [("c.0".to_string(), 2), ("c.1".to_string(), 1)];
        again.again(&loans, true);
        assert_eq!(again.argv.len(), 24);
        assert_eq!(again.argv[22], Arg::from("c.0:2,c.1:1"));
        assert_eq!(again.argv[23], Arg::Int(crate::buckets::DRY_MS));
        let mut none = home;
        none.again(&[], false);
        assert_eq!(
            (&none.argv[22], &none.argv[23]),
            (&Arg::from("-"), &Arg::Int(0))
        );
    }

    #[test]
    fn every_claim_names_its_client_bucket_on_the_activity_shard() {
        let id = ActivityId::parse("7").unwrap();
        let plain = plain_command(id);
        assert_eq!((plain.keys.len(), plain.argv.len()), (14, 16));
        assert_eq!(plain.keys[12], ActivityKeys::new(id).client("unknown"));
        let limit = AddressLimit::parse("10/1000/20").unwrap();
        let with = plain.with_client(id, "abc", limit);
        assert_eq!((with.keys.len(), with.argv.len()), (14, 16));
        assert_eq!(with.keys[13], ActivityKeys::new(id).metrics());
        assert!(
            with.keys[12].starts_with(&ActivityKeys::new(id).meta()[..5]),
            "{}",
            with.keys[12]
        );
        assert_eq!(with.keys[12], ActivityKeys::new(id).client("abc"));
        assert_eq!(
            with.argv[12..],
            [Arg::Int(10), Arg::Int(1000), Arg::Int(20), Arg::from("abc")]
        );
    }

    use super::*;

    fn bytes(s: &str) -> Reply {
        Reply::Bytes(s.as_bytes().to_vec())
    }

    fn settings() -> ClaimSettings {
        ClaimSettings::from_variables("secret".into(), None, Some("0")).unwrap()
    }

    fn bearer(user: &str, now: Millis) -> String {
        let claims = crate::jwt::Claims {
            sub: user.into(),
            exp: now.as_secs() + 60,
            nbf: None,
            iat: None,
            role: None,
        };
        format!("Bearer {}", crate::jwt::sign(&claims, b"secret"))
    }

    #[test]
    fn a_missing_or_nonsensical_pass_factor_is_the_default() {
        assert_eq!(pass_factor(Some("5")), 5);
        for v in [None, Some("0"), Some("-2"), Some("x")] {
            assert_eq!(pass_factor(v), PASS_FACTOR, "{v:?}");
        }
    }

    #[test]
    fn settings_default_to_20_per_second_per_user_and_no_global_limit() {
        let s = settings();
        assert_eq!(s.rate, RateLimit::default());
        assert_eq!(s.global_rate, RateLimit::OFF);
        let e = ClaimSettings::from_variables("s".into(), Some("20 per sec"), None).unwrap_err();
        assert!(e.contains("claim_rate_limit `20 per sec`"), "{e}");
    }

    #[test]
    fn a_claim_draws_its_random_bytes_once_for_the_id_and_every_code() {
        let now = Millis(1_700_000_000_000);
        let auth = bearer("alice", now);
        let mut asked = Vec::new();
        let (activity, command) = prepare(
            "42",
            Some(&auth),
            Some(b"key-1"),
            br#"{"quantity": 3}"#,
            Some(ClientAddr::of("198.51.100.7".parse().unwrap())),
            &settings(),
            now,
            |n| {
                asked.push(n);
                (0..n as u8).collect()
            },
        )
        .unwrap();
        assert_eq!(asked, vec![16 + 5 * 3]);
        assert_eq!(activity.get(), 42);
        assert_eq!(
            command.argv[3],
            Arg::from(claim_id(core::array::from_fn(|i| i as u8)))
        );
        let prefixes = match &command.argv[4] {
            Arg::Bytes(b) => String::from_utf8(b.clone()).unwrap(),
            other => panic!("{other:?}"),
        };
        assert_eq!(prefixes.split(',').count(), 3);
        assert_eq!(command.argv[5], Arg::Int(1), "an Idempotency-Key was given");
        let stored = ClientAddr::of("198.51.100.7".parse().unwrap())
            .hashed(settings().jwt_secret.as_bytes());
        assert_eq!(
            command.argv[15],
            Arg::from(stored.as_str()),
            "the log names the client, hashed"
        );
    }

    #[test]
    fn a_claim_without_a_valid_token_or_id_is_refused_before_any_random_work() {
        let now = Millis(1_700_000_000_000);
        let never = |_: usize| -> Vec<u8> { panic!("no random bytes for a refused claim") };
        let auth = bearer("alice", now);
        for (id, auth, body, code) in [
            ("x", Some(auth.as_str()), &b""[..], "not_found"),
            ("1", None, b"", "unauthenticated"),
            ("1", Some("Bearer nope"), b"", "unauthenticated"),
            (
                "1",
                Some(auth.as_str()),
                b"{\"quantity\": 0}",
                "invalid_request",
            ),
        ] {
            let e = prepare(id, auth, None, body, None, &settings(), now, never).unwrap_err();
            assert_eq!(e.code(), code, "{id} {auth:?}");
        }
    }

    #[test]
    fn a_refused_script_says_nothing_was_claimed_and_a_lost_reply_says_unknown() {
        use crate::scripts::RedisFailure;
        let id = ActivityId::from_db(1);
        let loading = RedisFailure::Command("BusyLoadingError: loading".into());
        assert!(matches!(
            answer(id, Err(loading)),
            Err(ApiError::Unavailable(_))
        ));
        let reset = RedisFailure::Command("Connection reset by peer".into());
        assert_eq!(answer(id, Err(reset)), Err(ApiError::OutcomeUnknown));
    }

    #[test]
    fn an_empty_body_claims_one_ticket() {
        assert_eq!(ClaimRequest::parse(b"").unwrap().quantity, 1);
        assert_eq!(ClaimRequest::parse(b"{}").unwrap().quantity, 1);
        assert_eq!(
            ClaimRequest::parse(br#"{"quantity": 3}"#).unwrap().quantity,
            3
        );
    }

    #[test]
    fn claim_requests_with_bad_quantities_are_invalid() {
        for body in [
            &br#"{"quantity": 0}"#[..],
            br#"{"quantity": -1}"#,
            br#"{"quantity": 1.5}"#,
            br#"{"quantity": "1"}"#,
            br#"{"quantity": 101}"#,
            br#"{"quantity": 99999999999999999999}"#,
            br#"{"qty": 1}"#,
            b"[1]",
            b"not json",
            b"{\"quantity\": 1",
        ] {
            let e = ClaimRequest::parse(body).unwrap_err();
            assert_eq!(
                e.code(),
                "invalid_request",
                "{}",
                String::from_utf8_lossy(body)
            );
        }
        let huge = vec![b' '; MAX_CLAIM_BODY + 1];
        assert_eq!(
            ClaimRequest::parse(&huge).unwrap_err().code(),
            "invalid_request"
        );
    }

    #[test]
    fn claim_is_decoded_with_its_type_and_codes() {
        let reply = [
            Reply::Int(1),
            bytes("c1"),
            Reply::Int(9),
            bytes("vip"),
            bytes("counter"),
            bytes("AB-1"),
            bytes("CD-2"),
        ];
        let ClaimOutcome::Claimed(c) = decode(&reply).unwrap() else {
            panic!()
        };
        assert_eq!(c.codes, vec!["AB-1", "CD-2"]);
        assert_eq!(
            (c.stock_left, c.ticket_type.as_str(), c.pooled),
            (9, "vip", false)
        );
        assert!(matches!(
            decode(&[
                Reply::Int(2),
                bytes("c1"),
                Reply::Int(0),
                bytes("vip"),
                bytes("codes")
            ])
            .unwrap(),
            ClaimOutcome::Replayed(Claimed { pooled: true, .. })
        ));
        assert_eq!(
            decode(&[Reply::Int(1), bytes("c1"), Reply::Int(9)]),
            Err(ApiError::Internal)
        );
    }

    #[test]
    fn claim_is_refused_when_sold_out() {
        assert_eq!(decode(&[Reply::Int(-8)]), Err(ApiError::SoldOut));
        assert_eq!(
            decode(&[Reply::Int(-8), bytes("vip")]),
            Err(ApiError::OfType {
                ticket_type: "vip".into(),
                error: Box::new(ApiError::SoldOut)
            })
        );
    }

    #[test]
    fn a_claim_names_a_type_or_leaves_it_to_the_script() {
        let r = ClaimRequest::parse(br#"{"ticket_type": "vip", "quantity": 2}"#).unwrap();
        assert_eq!((r.quantity, r.ticket_type.unwrap().as_str()), (2, "vip"));
        assert_eq!(
            ClaimRequest::parse(br#"{"ticket_type": null}"#)
                .unwrap()
                .ticket_type,
            None
        );
        assert_eq!(ClaimRequest::parse(b"").unwrap().ticket_type, None);
        for bad in [
            &br#"{"ticket_type": "VIP"}"#[..],
            br#"{"ticket_type": 1}"#,
            br#"{"ticket_type": ""}"#,
            br#"{"ticket_type": "a,b"}"#,
        ] {
            assert_eq!(
                ClaimRequest::parse(bad).unwrap_err().code(),
                "invalid_request"
            );
        }
    }

    #[test]
    fn a_missing_or_unknown_type_is_a_bad_request_listing_the_types() {
        for code in [-14, -15] {
            let e = decode(&[Reply::Int(code), bytes("vip,std")]).unwrap_err();
            assert_eq!(
                e,
                ApiError::UnknownTicketType {
                    named: code == -15,
                    offered: vec!["vip".into(), "std".into()]
                }
            );
        }
        // An activity loaded into Redis before ticket types has no list: an internal error
        // (publishing it again fixes it), not the client's fault.
        assert_eq!(
            decode(&[Reply::Int(-14), bytes("")]),
            Err(ApiError::Internal)
        );
    }

    #[test]
    fn every_refusal_code_maps_to_one_error() {
        assert_eq!(decode(&[Reply::Int(-1)]), Err(ApiError::NotFound));
        assert_eq!(
            decode(&[Reply::Int(-3), Reply::Int(5000)]),
            Err(ApiError::NotStarted {
                starts_at: Millis(5000)
            })
        );
        assert_eq!(decode(&[Reply::Int(-4)]), Err(ApiError::Ended));
        assert_eq!(decode(&[Reply::Int(-5)]).unwrap_err().code(), "forbidden");
        assert_eq!(
            decode(&[Reply::Int(-6), Reply::Int(1500)]),
            Err(ApiError::RateLimited {
                retry_after_secs: 2
            })
        );
        let of_vip = |error| ApiError::OfType {
            ticket_type: "vip".into(),
            error: Box::new(error),
        };
        assert_eq!(
            decode(&[Reply::Int(-3), Reply::Int(5000), bytes("vip")]),
            Err(of_vip(ApiError::NotStarted {
                starts_at: Millis(5000)
            }))
        );
        assert_eq!(
            decode(&[Reply::Int(-4), bytes("vip")]),
            Err(of_vip(ApiError::Ended))
        );
        assert_eq!(
            decode(&[
                Reply::Int(-7),
                Reply::Int(1),
                bytes("ticket_type"),
                bytes("vip")
            ]),
            Err(of_vip(ApiError::LimitReached {
                limit: 1,
                scope: LimitScope::TicketType
            }))
        );
        assert_eq!(
            decode(&[
                Reply::Int(-7),
                Reply::Int(2),
                bytes("activity"),
                bytes("vip")
            ]),
            Err(of_vip(ApiError::LimitReached {
                limit: 2,
                scope: LimitScope::Activity
            }))
        );
        assert_eq!(decode(&[Reply::Int(-9)]), Err(ApiError::PassRequired));
        assert_eq!(
            decode(&[Reply::Int(-10), Reply::Int(2), bytes("vip")])
                .unwrap_err()
                .code(),
            "invalid_request"
        );
        assert_eq!(decode(&[Reply::Int(-99)]), Err(ApiError::Internal));
        assert_eq!(decode(&[]), Err(ApiError::Internal));
    }

    #[test]
    fn the_command_names_every_key_and_argument_in_the_scripts_order() {
        let user = UserId::parse("u1").unwrap();
        let cmd = ClaimCommand::new(
            ActivityId::parse("5").unwrap(),
            &user,
            ClaimRequest {
                quantity: 2,
                ticket_type: Some(TypeKey::parse("vip").unwrap()),
            },
            None,
            Millis(1000),
            "cid",
            &["AAAA".into(), "BBBB".into()],
            RateLimit::default(),
            RateLimit::OFF,
        );
        assert_eq!(cmd.keys.len(), 14);
        assert_eq!(cmd.keys[13], "fc:{a:5}:metrics");
        assert_eq!(cmd.keys[0], "fc:{a:5}:meta");
        assert_eq!(cmd.keys[11], "fc:{a:5}:flood");
        assert_eq!(cmd.keys[12], "fc:{a:5}:client:unknown");
        assert_eq!(cmd.keys[1], "fc:{a:5}:stocks");
        assert_eq!(cmd.keys[9], "fc:{a:5}:pools");
        assert_eq!(cmd.argv.len(), 16);
        assert_eq!(
            cmd.argv[12],
            Arg::Int(0),
            "no per-address limit unless asked"
        );
        assert_eq!(cmd.argv[11], Arg::from("vip"));
        assert_eq!(cmd.argv[9], Arg::Int(0));
        assert_eq!(cmd.argv[4], Arg::from("AAAA,BBBB"));
        assert_eq!(cmd.argv[5], Arg::Int(0));
    }

    #[test]
    fn codes_use_an_unambiguous_alphabet() {
        let c = code_prefix([0xff, 0, 0x12, 0x34, 0x56]);
        assert_eq!(c.len(), 8);
        assert!(c.bytes().all(|b| CODE_ALPHABET.contains(&b)));
        assert_eq!(claim_id([0xab; 16]).len(), 32);
    }

    #[test]
    fn the_response_shows_full_ticket_codes() {
        let a = ActivityId::parse("5").unwrap();
        let claimed = |pooled| {
            let r = encode(
                a,
                &ClaimOutcome::Claimed(Claimed {
                    claim_id: "c".into(),
                    stock_left: 3,
                    ticket_type: "default".into(),
                    codes: vec!["SAVE10-AB12".into()],
                    pooled,
                }),
            );
            assert_eq!(r.status, 201);
            serde_json::from_slice::<serde_json::Value>(&r.body).unwrap()
        };
        let v = claimed(false);
        assert_eq!(v["tickets"][0]["code"], "5-SAVE10-AB12");
        assert_eq!(v["tickets"][0]["id"], "5-SAVE10-AB12");
        assert_eq!(
            (v["activity_id"].as_i64(), v["ticket_type"].as_str()),
            (Some(5), Some("default"))
        );
        let v = claimed(true);
        assert_eq!(
            v["tickets"][0]["code"], "SAVE10-AB12",
            "a pool code as uploaded"
        );
        assert_eq!(
            v["tickets"][0]["id"], "5-SAVE10-AB12",
            "the route id keeps its activity"
        );
    }

    #[test]
    fn pass_replies_map_to_statuses_and_codes() {
        let a = ActivityId::parse("3").unwrap();
        let text = |t: &str| Reply::Bytes(t.as_bytes().to_vec());
        assert_eq!(
            decode_pass(a, &[Reply::Int(1), text("issued")])
                .unwrap()
                .status,
            201
        );
        assert_eq!(
            decode_pass(a, &[Reply::Int(2), text("used")])
                .unwrap()
                .status,
            200
        );
        for (code, expected) in [
            (-1, "not_found"),
            (-4, "ended"),
            (-8, "sold_out"),
            (-13, "conflict"),
        ] {
            assert_eq!(
                decode_pass(a, &[Reply::Int(code)]).unwrap_err().code(),
                expected
            );
        }
        assert_eq!(decode_pass(a, &[]).unwrap_err(), ApiError::Internal);
    }
}

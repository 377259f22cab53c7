//! Refusals a reused claim instance gives without Redis: `not_started` before the window,
//! `ended` after it, `sold_out` once nothing is left. A sale is many more presses than
//! tickets, before the opening and after the sell-out, and each of those answers is the
//! same for everybody; running claim.lua for each costs what a successful claim costs.
//!
//! The instance learns from replies it gets anyway: when it holds no fresh snapshot of an
//! activity it asks its next claim's script for one (claim.lua's ARGV[19]), which comes
//! with a claim or a refusal any user would get (-3, -4, -8): the activity's meta hash,
//! what each type has left, and who has ever held a ticket of it (sent again only when
//! that changed). A snapshot answers for
//! `claim_cache_ms` from when Redis last vouched for it, never longer, so a ticket given
//! back, a window the operator changed or a type added is seen within that bound.
//!
//! Redis vouches for it twice over: by the script that brought it, and by the activity's
//! generation (the meta hash's `gen`, which every script that changes what a snapshot holds
//! raises; lua/publish.lua). Past the bound, the first claim that the old snapshot would
//! answer reads the generation (one HGET, [`ClaimCache::to_confirm`]); unchanged, the
//! snapshot is as true as when it was taken and answers for another bound
//! ([`ClaimCache::confirm`]); moved on, the claim runs the script, which brings a new one.
//! The full script (some 15 Redis calls) runs once per instance and change instead of once
//! per instance and bound. Snapshots of an activity in several stock buckets are never
//! renewed: a bucket's "sold out" lasts `DRY_MS` (flashclaim_core::buckets), a time no
//! generation marks.
//!
//! Never from the cache: anything about the user. A user who has held a ticket of the
//! activity and sends an Idempotency-Key may be repeating a claim whose answer was lost, so
//! the script answers (it returns that claim); so does everyone while the snapshot could
//! not list its claimers ([`MAX_CLAIMERS`]). Blacklists, rate limits and per-user limits
//! are checked by the script before it looks at the stock; a refused user who presses
//! after the sell-out is told `sold_out`, which is true for everyone. A quantity over the
//! type's limit, or a quantity that more than the little left could not serve, goes to the
//! script too (its answer is not the same for everybody).

use std::collections::{HashMap, HashSet};
use std::rc::Rc;

use crate::claim::ClaimRequest;
use crate::ids::{ActivityId, UserId};
use crate::scripts::{Arg, Reply};
use crate::time::Millis;

/// `claim_cache_ms` when unset: a returned ticket is claimable again, and an operator's
/// change of the window honoured, within a second. Measured (BENCHMARKS.md, "The storm"):
/// at 250 ms every instance learns four times as often, and a storm of 30,000 presses ran
/// 250-650 scripts per 1,000 answers against 90-240 at 1 s.
pub const DEFAULT_BOUND_MS: i64 = 1000;
/// No snapshot answers for longer than this, whatever `claim_cache_ms` says.
pub const MAX_BOUND_MS: i64 = 1000;
/// Activities one instance keeps snapshots of; the least recently learned goes first.
pub const MAX_ACTIVITIES: usize = 32;
/// The most claimers a snapshot lists (claim.lua's ARGV[20]); past it, requests with an
/// Idempotency-Key always run the script.
pub const MAX_CLAIMERS: i64 = 4096;
/// Answers given from a snapshot are added to the activity's counters (`/metrics`) this
/// long after the first of a batch, with one `HINCRBY` per outcome and type: by a timer, so
/// that the last answers before an instance goes idle are counted too (a batch waiting for
/// a count of answers would wait for ever once the presses stop). A second, like the bound:
/// every live instance sends a batch per period, and at 250 ms the batches were most of the
/// Redis commands of a storm answered from the cache (BENCHMARKS.md, "The storm"); a scrape
/// every 15 s does not see the difference.
pub const TALLY_AFTER_MS: u64 = 1000;

const MARKER: &[u8] = b"~";

/// `claim_cache_ms`: absent or empty, the default; `0` turns the cache off; anything else
/// must be a number of milliseconds up to [`MAX_BOUND_MS`].
pub fn bound_from(text: Option<&str>) -> Result<i64, String> {
    match text.map(str::trim).filter(|t| !t.is_empty()) {
        None => Ok(DEFAULT_BOUND_MS),
        Some(t) => match t.parse::<i64>() {
            Ok(ms) if (0..=MAX_BOUND_MS).contains(&ms) => Ok(ms),
            _ => Err(format!(
                "claim_cache_ms `{t}` is not a number of milliseconds from 0 to {MAX_BOUND_MS}"
            )),
        },
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct TypeState {
    key: String,
    starts_at: i64,
    ends_at: i64,
    limit: i64,
    /// Tickets claimable when the snapshot was taken.
    left: i64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Snapshot {
    /// When Redis last vouched for it: the script that brought it, or a generation read
    /// that found it unchanged.
    taken_at: i64,
    /// The activity's generation it holds (meta `gen`); `None`: never renewed (an activity
    /// loaded before generations, or in several stock buckets).
    gen: Option<i64>,
    closed: bool,
    starts_at: i64,
    ends_at: i64,
    activity_limit: i64,
    types: Vec<TypeState>,
    /// Hashes of the users who hold or held a ticket; `None`: too many to list.
    claimers: Option<Rc<HashSet<u64>>>,
    /// The length of the activity's `claimed` hash they were listed at: the script lists
    /// them again only when it changed.
    claimed_len: i64,
}

/// What a claim asks, as far as the cache can judge it.
#[derive(Debug, Clone, Copy)]
pub struct Ask<'a> {
    pub request: &'a ClaimRequest,
    pub user: &'a UserId,
    /// An Idempotency-Key was sent.
    pub keyed: bool,
}

/// One instance's snapshots and the answers it gave from them, not yet counted in Redis.
#[derive(Debug, Default)]
pub struct ClaimCache {
    snapshots: HashMap<i64, Snapshot>,
    tally: HashMap<i64, HashMap<String, i64>>,
    /// Activities whose batch of answers has its count scheduled.
    scheduled: HashSet<i64>,
}

impl ClaimCache {
    /// The claim.lua arguments that ask for a snapshot (ARGV[19..21]): the claimers this
    /// cache already holds for `activity` are not sent again while they stand.
    pub fn snapshot_args(&self, activity: ActivityId) -> [Arg; 3] {
        let known = self
            .snapshots
            .get(&activity.get())
            .filter(|s| s.claimers.is_some())
            .map_or(-1, |s| s.claimed_len);
        [Arg::Int(1), Arg::Int(MAX_CLAIMERS), Arg::Int(known)]
    }

    /// Whether the next script run for `activity` should ask for a snapshot: the cache is
    /// on and holds none that is fresh.
    pub fn wants_snapshot(&self, activity: ActivityId, now: Millis, bound_ms: i64) -> bool {
        bound_ms > 0 && self.fresh(activity, now, bound_ms).is_none()
    }

    /// Whether a fresh snapshot might answer some claim of `activity` without Redis: the
    /// activity or one of its types is closed, outside its window or sold out. When not,
    /// every claim of it goes to Redis, and the caller holds its instance from the start.
    pub fn might_answer(&self, activity: ActivityId, now: Millis, bound_ms: i64) -> bool {
        let Some(s) = self.fresh(activity, now, bound_ms) else {
            return false;
        };
        let now = now.0;
        let outside = |starts_at: i64, ends_at: i64| now < starts_at || now >= ends_at;
        s.closed
            || outside(s.starts_at, s.ends_at)
            || s.types
                .iter()
                .any(|t| t.left <= 0 || outside(t.starts_at, t.ends_at))
    }

    /// The generation to read (meta `gen`, one HGET) before answering `ask` from a snapshot
    /// past its bound, when that snapshot would answer it: `None` when the cache is off,
    /// holds nothing it could renew, or would not answer `ask` anyway (the script must run).
    pub fn to_confirm(
        &self,
        activity: ActivityId,
        ask: Ask<'_>,
        now: Millis,
        bound_ms: i64,
    ) -> Option<i64> {
        if bound_ms <= 0 || self.fresh(activity, now, bound_ms).is_some() {
            return None;
        }
        let s = self.snapshots.get(&activity.get())?;
        let gen = s.gen?;
        decide(s, ask, now).map(|_| gen)
    }

    /// Redis said the activity's generation was `found` at `at`, asked whether it still was
    /// `gen` ([`to_confirm`]): when it was and the snapshot still holds it, the snapshot
    /// answers for another bound from `at`. When it moved on, the snapshot is never renewed
    /// (the script brings a new one; the old one is kept for its claimers, which the script
    /// sends again only when they changed). True when renewed.
    ///
    /// [`to_confirm`]: ClaimCache::to_confirm
    pub fn confirm(&mut self, activity: ActivityId, gen: i64, found: i64, at: Millis) -> bool {
        let Some(s) = self.snapshots.get_mut(&activity.get()) else {
            return false;
        };
        if s.gen != Some(gen) {
            // Replaced meanwhile by a snapshot of its own generation.
            return false;
        }
        if found == gen {
            s.taken_at = s.taken_at.max(at.0);
            return true;
        }
        s.gen = None;
        false
    }

    fn fresh(&self, activity: ActivityId, now: Millis, bound_ms: i64) -> Option<&Snapshot> {
        self.snapshots
            .get(&activity.get())
            .filter(|s| (0..bound_ms).contains(&(now.0 - s.taken_at)))
    }

    /// The script's reply without its snapshot, which is kept (taken at `now`, the time
    /// the script was given). A snapshot that does not parse is dropped: the reply stands.
    pub fn learn(
        &mut self,
        activity: ActivityId,
        mut reply: Vec<Reply>,
        now: Millis,
    ) -> Vec<Reply> {
        let Some(at) = reply
            .iter()
            .position(|r| matches!(r, Reply::Bytes(b) if b == MARKER))
        else {
            self.contradicted(activity, &reply, now);
            return reply;
        };
        let trailer = reply.split_off(at);
        let known = self.snapshots.get(&activity.get());
        if let Some(snapshot) = parse(&trailer[1..], now, known) {
            if self.snapshots.len() >= MAX_ACTIVITIES
                && !self.snapshots.contains_key(&activity.get())
            {
                let oldest = self
                    .snapshots
                    .iter()
                    .min_by_key(|(_, s)| s.taken_at)
                    .map(|(k, _)| *k);
                if let Some(oldest) = oldest {
                    self.snapshots.remove(&oldest);
                }
            }
            self.snapshots.insert(activity.get(), snapshot);
        }
        reply
    }

    /// A script's `sold_out` for a type the fresh snapshot holds with stock (the last
    /// tickets went to other instances' claims) ends the snapshot's bound at once, so the
    /// next claim asks for a new one: else every press of the sold-out type would run the
    /// script until the bound ran out.
    fn contradicted(&mut self, activity: ActivityId, reply: &[Reply], now: Millis) {
        let [Reply::Int(-8), Reply::Bytes(ty)] = reply else {
            return;
        };
        let Some(s) = self.snapshots.get_mut(&activity.get()) else {
            return;
        };
        if s.types
            .iter()
            .any(|t| t.key.as_bytes() == ty.as_slice() && t.left > 0)
        {
            s.taken_at = s.taken_at.min(now.0 - MAX_BOUND_MS);
        }
    }

    /// The reply claim.lua would give `ask` at `now`, when a fresh snapshot decides it for
    /// anyone (see the module's rules); `None`: run the script. An answer given is counted
    /// for [`ClaimCache::take_tally`].
    pub fn answer(
        &mut self,
        activity: ActivityId,
        ask: Ask<'_>,
        now: Millis,
        bound_ms: i64,
    ) -> Option<Vec<Reply>> {
        let s = self.fresh(activity, now, bound_ms)?;
        let reply = decide(s, ask, now)?;
        let (outcome, ty) = match reply.as_slice() {
            [Reply::Int(-3), Reply::Int(_)] => ("not_started", ""),
            [Reply::Int(-3), _, Reply::Bytes(t)] => ("not_started", std::str::from_utf8(t).ok()?),
            [Reply::Int(-4)] => ("ended", ""),
            [Reply::Int(-4), Reply::Bytes(t)] => ("ended", std::str::from_utf8(t).ok()?),
            [Reply::Int(-8), Reply::Bytes(t)] => ("sold_out", std::str::from_utf8(t).ok()?),
            _ => return None,
        };
        let field = format!("answers:{outcome}:{ty}");
        *self
            .tally
            .entry(activity.get())
            .or_default()
            .entry(field)
            .or_default() += 1;
        Some(reply)
    }

    /// Whether the caller must schedule the count of the activity's answers (in
    /// [`TALLY_AFTER_MS`]): answers wait to be counted and no count is scheduled yet. Once
    /// true, false until the batch is taken.
    pub fn schedule_tally(&mut self, activity: ActivityId) -> bool {
        self.tally.contains_key(&activity.get()) && self.scheduled.insert(activity.get())
    }

    /// The counts to add to the activity's metrics hash (`HINCRBY <field> <n>` each): every
    /// answer waiting. They are forgotten when taken (a failed `HINCRBY` loses them rather
    /// than risk counting them twice), and the next answer starts a new batch.
    pub fn take_tally(&mut self, activity: ActivityId) -> Option<Vec<(String, i64)>> {
        self.scheduled.remove(&activity.get());
        let mut counts: Vec<(String, i64)> =
            self.tally.remove(&activity.get())?.into_iter().collect();
        counts.sort();
        Some(counts)
    }
}

/// claim.lua's checks, in its order, on what the snapshot knows.
fn decide(s: &Snapshot, ask: Ask<'_>, now: Millis) -> Option<Vec<Reply>> {
    if ask.keyed
        && s.claimers
            .as_ref()
            .is_none_or(|c| c.contains(&user_hash(ask.user)))
    {
        return None;
    }
    let now = now.0;
    if s.closed || now >= s.ends_at {
        return Some(vec![Reply::Int(-4)]);
    }
    if now < s.starts_at {
        return Some(vec![Reply::Int(-3), Reply::Int(s.starts_at)]);
    }
    let t = match &ask.request.ticket_type {
        None => match s.types.as_slice() {
            [only] => only,
            _ => return None,
        },
        Some(key) => s.types.iter().find(|t| t.key == key.as_str())?,
    };
    let ty = || Reply::Bytes(t.key.as_bytes().to_vec());
    if now >= t.ends_at {
        return Some(vec![Reply::Int(-4), ty()]);
    }
    if now < t.starts_at {
        return Some(vec![Reply::Int(-3), Reply::Int(t.starts_at), ty()]);
    }
    let quantity = ask.request.quantity;
    if quantity > t.limit || (s.activity_limit > 0 && quantity > s.activity_limit) {
        return None;
    }
    (t.left <= 0).then(|| vec![Reply::Int(-8), ty()])
}

/// FNV-1a: a collision only sends a request to the script.
fn user_hash(user: &UserId) -> u64 {
    user.as_str().bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

/// The snapshot after claim.lua's '~' (see its header); `known`: the one it replaces, whose
/// claimers stand when the script says so.
fn parse(t: &[Reply], now: Millis, known: Option<&Snapshot>) -> Option<Snapshot> {
    let mut it = t.iter();
    let int = |it: &mut std::slice::Iter<'_, Reply>| it.next().and_then(Reply::as_int);
    let pairs = int(&mut it)?;
    if pairs < 0 || pairs % 2 != 0 {
        return None;
    }
    let mut meta = HashMap::new();
    for _ in 0..pairs / 2 {
        let field = it.next()?.as_text()?;
        let value = it.next()?.as_text()?;
        meta.insert(field, value);
    }
    let number = |field: &str| meta.get(field).and_then(|v| v.parse::<i64>().ok());
    let closed = match meta.get("status").copied() {
        Some("closed") => true,
        Some("published") => false,
        _ => return None,
    };
    let listed = int(&mut it)?;
    let mut types = Vec::new();
    for _ in 0..listed.max(0) {
        let key = it.next()?.as_text()?.to_string();
        let left = int(&mut it)?;
        types.push(TypeState {
            starts_at: number(&format!("{key}:starts_at"))?,
            ends_at: number(&format!("{key}:ends_at"))?,
            limit: number(&format!("{key}:limit"))?,
            key,
            left,
        });
    }
    let claimed_len = int(&mut it)?;
    let claimers = match int(&mut it)? {
        -2 => known
            .filter(|k| k.claimed_len == claimed_len)
            .and_then(|k| k.claimers.clone()),
        n if n < 0 => None,
        n => Some(Rc::new(
            (0..n)
                .map(|_| {
                    it.next()?
                        .as_text()
                        .and_then(UserId::parse)
                        .map(|u| user_hash(&u))
                })
                .collect::<Option<HashSet<u64>>>()?,
        )),
    };
    let gen = match number("buckets").unwrap_or(1) {
        1 => number("gen"),
        _ => None,
    };
    Some(Snapshot {
        taken_at: now.0,
        gen,
        closed,
        starts_at: number("starts_at")?,
        ends_at: number("ends_at")?,
        activity_limit: number("per_user_limit").unwrap_or(0),
        types,
        claimers,
        claimed_len,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ticket_type::TypeKey;

    const BOUND: i64 = 250;

    fn b(s: &str) -> Reply {
        Reply::Bytes(s.as_bytes().to_vec())
    }

    /// A reply as claim.lua gives it with a snapshot: an activity open from 1,000 to 9,000
    /// with types `vip` (left `vip_left`, limit 2) and `std` (opens at 2,000, left 5).
    fn with_snapshot(head: Vec<Reply>, vip_left: i64, claimers: &[&str]) -> Vec<Reply> {
        let meta = [
            ("status", "published"),
            ("starts_at", "1000"),
            ("ends_at", "9000"),
            ("per_user_limit", "0"),
            ("types", "vip,std"),
            ("vip:starts_at", "1000"),
            ("vip:ends_at", "9000"),
            ("vip:limit", "2"),
            ("vip:kind", "counter"),
            ("std:starts_at", "2000"),
            ("std:ends_at", "9000"),
            ("std:limit", "1"),
            ("std:kind", "codes"),
        ];
        let mut r = head;
        r.push(b("~"));
        r.push(Reply::Int(2 * meta.len() as i64));
        for (f, v) in meta {
            r.extend([b(f), b(v)]);
        }
        r.extend([
            Reply::Int(2),
            b("vip"),
            Reply::Int(vip_left),
            b("std"),
            Reply::Int(5),
        ]);
        r.push(Reply::Int(2 * claimers.len() as i64));
        r.push(Reply::Int(claimers.len() as i64));
        r.extend(claimers.iter().map(|c| b(c)));
        r
    }

    fn id() -> ActivityId {
        ActivityId::from_db(7)
    }

    fn request(ty: Option<&str>, quantity: i64) -> ClaimRequest {
        ClaimRequest {
            quantity,
            ticket_type: ty.map(|t| TypeKey::parse(t).unwrap()),
        }
    }

    fn ask<'a>(request: &'a ClaimRequest, user: &'a UserId, keyed: bool) -> Ask<'a> {
        Ask {
            request,
            user,
            keyed,
        }
    }

    fn sold_out_vip(cache: &mut ClaimCache, at: i64, claimers: &[&str]) {
        let reply = cache.learn(
            id(),
            with_snapshot(vec![Reply::Int(-8), b("vip")], 0, claimers),
            Millis(at),
        );
        assert_eq!(
            reply,
            vec![Reply::Int(-8), b("vip")],
            "the reply without its snapshot"
        );
    }

    #[test]
    fn a_type_seen_sold_out_is_answered_sold_out_for_the_bound_and_not_a_moment_longer() {
        let mut cache = ClaimCache::default();
        let user = UserId::parse("u1").unwrap();
        let vip = request(Some("vip"), 1);
        assert!(cache.wants_snapshot(id(), Millis(3000), BOUND));
        assert_eq!(
            cache.answer(id(), ask(&vip, &user, false), Millis(3000), BOUND),
            None
        );
        sold_out_vip(&mut cache, 3000, &[]);
        assert!(!cache.wants_snapshot(id(), Millis(3000), BOUND));
        for at in [3000, 3100, 3000 + BOUND - 1] {
            assert_eq!(
                cache.answer(id(), ask(&vip, &user, false), Millis(at), BOUND),
                Some(vec![Reply::Int(-8), b("vip")]),
                "{at}"
            );
        }
        assert_eq!(
            cache.answer(id(), ask(&vip, &user, false), Millis(3000 + BOUND), BOUND),
            None
        );
        assert!(cache.wants_snapshot(id(), Millis(3000 + BOUND), BOUND));
        assert_eq!(
            cache.answer(id(), ask(&vip, &user, false), Millis(2999), BOUND),
            None,
            "a clock that went back"
        );
    }

    #[test]
    fn an_open_sale_with_stock_in_every_type_is_known_to_need_redis_for_every_claim() {
        let mut cache = ClaimCache::default();
        assert!(
            !cache.might_answer(id(), Millis(3000), BOUND),
            "nothing known"
        );
        let claimed = vec![
            Reply::Int(1),
            b("c1"),
            Reply::Int(2),
            b("vip"),
            b("counter"),
            b("CODE"),
        ];
        cache.learn(id(), with_snapshot(claimed.clone(), 3, &[]), Millis(3000));
        assert!(
            !cache.might_answer(id(), Millis(3001), BOUND),
            "open, stock left"
        );
        // `std` opens at 2,000: before it, its claims are answered from the snapshot.
        cache.learn(id(), with_snapshot(claimed, 3, &[]), Millis(1500));
        assert!(
            cache.might_answer(id(), Millis(1501), BOUND),
            "a type not open yet"
        );
        sold_out_vip(&mut cache, 3000, &[]);
        assert!(
            cache.might_answer(id(), Millis(3001), BOUND),
            "a type sold out"
        );
        assert!(
            !cache.might_answer(id(), Millis(3000 + BOUND), BOUND),
            "past the bound nothing is known"
        );
        assert!(!cache.might_answer(id(), Millis(3001), 0), "the cache off");
    }

    #[test]
    fn another_type_with_stock_left_and_other_activities_still_run_the_script() {
        let mut cache = ClaimCache::default();
        sold_out_vip(&mut cache, 3000, &[]);
        let user = UserId::parse("u1").unwrap();
        let std = request(Some("std"), 1);
        assert_eq!(
            cache.answer(id(), ask(&std, &user, false), Millis(3001), BOUND),
            None
        );
        let other = ActivityId::from_db(8);
        assert_eq!(
            cache.answer(
                other,
                ask(&request(Some("vip"), 1), &user, false),
                Millis(3001),
                BOUND
            ),
            None
        );
        let unnamed = request(None, 1);
        assert_eq!(
            cache.answer(id(), ask(&unnamed, &user, false), Millis(3001), BOUND),
            None,
            "two types: the script says which"
        );
        let unknown = request(Some("gold"), 1);
        assert_eq!(
            cache.answer(id(), ask(&unknown, &user, false), Millis(3001), BOUND),
            None
        );
    }

    #[test]
    fn before_the_opening_everyone_is_told_when_it_opens_and_after_the_end_that_it_ended() {
        let mut cache = ClaimCache::default();
        let reply = cache.learn(
            id(),
            with_snapshot(vec![Reply::Int(-3), Reply::Int(1000)], 3, &[]),
            Millis(900),
        );
        assert_eq!(reply, vec![Reply::Int(-3), Reply::Int(1000)]);
        let user = UserId::parse("u1").unwrap();
        let any = request(Some("gold"), 100);
        assert_eq!(
            cache.answer(id(), ask(&any, &user, true), Millis(950), BOUND),
            Some(vec![Reply::Int(-3), Reply::Int(1000)]),
            "the window comes before the type and the quantity, as in the script"
        );
        let std = request(Some("std"), 1);
        assert_eq!(
            cache.answer(id(), ask(&std, &user, false), Millis(1000), BOUND),
            Some(vec![Reply::Int(-3), Reply::Int(2000), b("std")]),
            "the activity opened, the type not yet"
        );
        let vip = request(Some("vip"), 1);
        assert_eq!(
            cache.answer(id(), ask(&vip, &user, false), Millis(1000), BOUND),
            None,
            "open: the script claims"
        );
        let mut late = ClaimCache::default();
        late.learn(
            id(),
            with_snapshot(vec![Reply::Int(-4)], 3, &[]),
            Millis(9000),
        );
        assert_eq!(
            late.answer(id(), ask(&vip, &user, false), Millis(9001), BOUND),
            Some(vec![Reply::Int(-4)])
        );
    }

    #[test]
    fn a_user_who_held_a_ticket_and_sends_an_idempotency_key_always_reaches_the_script() {
        let mut cache = ClaimCache::default();
        sold_out_vip(&mut cache, 3000, &["winner"]);
        let vip = request(Some("vip"), 1);
        let winner = UserId::parse("winner").unwrap();
        let other = UserId::parse("other").unwrap();
        assert_eq!(
            cache.answer(id(), ask(&vip, &winner, true), Millis(3001), BOUND),
            None
        );
        assert!(cache
            .answer(id(), ask(&vip, &winner, false), Millis(3001), BOUND)
            .is_some());
        assert!(cache
            .answer(id(), ask(&vip, &other, true), Millis(3001), BOUND)
            .is_some());
        let mut unlisted = ClaimCache::default();
        let mut reply = with_snapshot(vec![Reply::Int(-8), b("vip")], 0, &[]);
        *reply.last_mut().unwrap() = Reply::Int(-1);
        unlisted.learn(id(), reply, Millis(3000));
        assert_eq!(
            unlisted.answer(id(), ask(&vip, &other, true), Millis(3001), BOUND),
            None,
            "claimers not listed"
        );
        assert!(unlisted
            .answer(id(), ask(&vip, &other, false), Millis(3001), BOUND)
            .is_some());
    }

    #[test]
    fn the_claimers_are_sent_once_and_kept_while_the_claimed_hash_keeps_its_length() {
        let mut cache = ClaimCache::default();
        assert_eq!(cache.snapshot_args(id())[2], Arg::Int(-1), "none held");
        sold_out_vip(&mut cache, 3000, &["winner"]);
        assert_eq!(
            cache.snapshot_args(id())[2],
            Arg::Int(2),
            "held at length 2"
        );
        let vip = request(Some("vip"), 1);
        let winner = UserId::parse("winner").unwrap();
        let unchanged = |len: i64| {
            let mut r = with_snapshot(vec![Reply::Int(-8), b("vip")], 0, &[]);
            let at = r.len() - 2;
            r[at] = Reply::Int(len);
            r[at + 1] = Reply::Int(-2);
            r
        };
        cache.learn(id(), unchanged(2), Millis(4000));
        assert_eq!(
            cache.answer(id(), ask(&vip, &winner, true), Millis(4001), BOUND),
            None,
            "the winner is still known"
        );
        let other = UserId::parse("other").unwrap();
        assert!(cache
            .answer(id(), ask(&vip, &other, true), Millis(4001), BOUND)
            .is_some());
        // A "kept" answer for another length than the one held cannot be trusted.
        cache.learn(id(), unchanged(4), Millis(5000));
        assert_eq!(
            cache.answer(id(), ask(&vip, &other, true), Millis(5001), BOUND),
            None
        );
        assert_eq!(cache.snapshot_args(id())[2], Arg::Int(-1));
    }

    #[test]
    fn a_quantity_the_script_would_refuse_or_that_the_little_left_could_not_serve_runs_the_script()
    {
        let mut cache = ClaimCache::default();
        let user = UserId::parse("u1").unwrap();
        cache.learn(
            id(),
            with_snapshot(vec![Reply::Int(-8), b("vip")], 1, &[]),
            Millis(3000),
        );
        let two = request(Some("vip"), 2);
        assert_eq!(
            cache.answer(id(), ask(&two, &user, false), Millis(3001), BOUND),
            None,
            "one left"
        );
        sold_out_vip(&mut cache, 3000, &[]);
        assert!(cache
            .answer(id(), ask(&two, &user, false), Millis(3001), BOUND)
            .is_some());
        let three = request(Some("vip"), 3);
        assert_eq!(
            cache.answer(id(), ask(&three, &user, false), Millis(3001), BOUND),
            None,
            "over the limit: 400"
        );
    }

    #[test]
    fn a_closed_activity_or_a_snapshot_that_does_not_parse_is_handled_without_harm() {
        let mut cache = ClaimCache::default();
        let user = UserId::parse("u1").unwrap();
        let vip = request(Some("vip"), 1);
        let mut closed = with_snapshot(vec![Reply::Int(-4)], 3, &[]);
        assert_eq!(closed[4], b("published"));
        closed[4] = b("closed");
        cache.learn(id(), closed, Millis(3000));
        assert_eq!(
            cache.answer(id(), ask(&vip, &user, false), Millis(3001), BOUND),
            Some(vec![Reply::Int(-4)])
        );
        let mut broken = ClaimCache::default();
        let mut reply = with_snapshot(vec![Reply::Int(-8), b("vip")], 0, &[]);
        reply.truncate(10);
        assert_eq!(
            broken.learn(id(), reply, Millis(3000)),
            vec![Reply::Int(-8), b("vip")]
        );
        assert!(broken.wants_snapshot(id(), Millis(3000), BOUND));
        let plain = vec![Reply::Int(1), b("c1")];
        assert_eq!(broken.learn(id(), plain.clone(), Millis(3000)), plain);
    }

    #[test]
    fn the_cache_is_off_at_zero_and_keeps_a_bounded_number_of_activities() {
        let mut cache = ClaimCache::default();
        assert!(!cache.wants_snapshot(id(), Millis(0), 0));
        sold_out_vip(&mut cache, 3000, &[]);
        let user = UserId::parse("u1").unwrap();
        assert_eq!(
            cache.answer(
                id(),
                ask(&request(Some("vip"), 1), &user, false),
                Millis(3000),
                0
            ),
            None
        );
        for n in 0..(MAX_ACTIVITIES as i64 + 10) {
            cache.learn(
                ActivityId::from_db(100 + n),
                with_snapshot(vec![Reply::Int(-4)], 0, &[]),
                Millis(4000 + n),
            );
        }
        assert_eq!(cache.snapshots.len(), MAX_ACTIVITIES);
        assert!(!cache.snapshots.contains_key(&7), "the oldest went first");
    }

    #[test]
    fn answers_from_the_cache_are_counted_in_batches_each_scheduled_by_its_first_answer() {
        let mut cache = ClaimCache::default();
        sold_out_vip(&mut cache, 3000, &[]);
        let user = UserId::parse("u1").unwrap();
        let vip = request(Some("vip"), 1);
        assert!(!cache.schedule_tally(id()), "nothing to count yet");
        cache
            .answer(id(), ask(&vip, &user, false), Millis(3001), BOUND)
            .unwrap();
        assert!(cache.schedule_tally(id()), "the first answer schedules");
        for _ in 0..40 {
            cache
                .answer(id(), ask(&vip, &user, false), Millis(3001), BOUND)
                .unwrap();
            assert!(!cache.schedule_tally(id()), "once per batch");
        }
        assert_eq!(
            cache.take_tally(id()),
            Some(vec![("answers:sold_out:vip".into(), 41)])
        );
        assert_eq!(cache.take_tally(id()), None, "taken once");
        cache
            .answer(id(), ask(&vip, &user, false), Millis(3002), BOUND)
            .unwrap();
        assert!(
            cache.schedule_tally(id()),
            "the next answer starts a new batch"
        );
    }

    /// `reply` (with a snapshot) whose meta hash also holds `field` = `value`.
    fn with_meta(mut reply: Vec<Reply>, field: &str, value: &str) -> Vec<Reply> {
        let at = reply.iter().position(|r| *r == b("~")).unwrap();
        let Reply::Int(pairs) = reply[at + 1] else {
            panic!("no meta length")
        };
        reply[at + 1] = Reply::Int(pairs + 2);
        reply.splice(at + 2..at + 2, [b(field), b(value)]);
        reply
    }

    fn sold_out_vip_at_gen(cache: &mut ClaimCache, at: i64, gen: &str) {
        let snapshot = with_snapshot(vec![Reply::Int(-8), b("vip")], 0, &[]);
        cache.learn(id(), with_meta(snapshot, "gen", gen), Millis(at));
    }

    #[test]
    fn past_its_bound_a_snapshot_whose_generation_is_unchanged_answers_for_another_bound() {
        let mut cache = ClaimCache::default();
        let user = UserId::parse("u1").unwrap();
        let vip = request(Some("vip"), 1);
        let vip_ask = || ask(&vip, &user, false);
        sold_out_vip_at_gen(&mut cache, 3000, "41");
        assert_eq!(
            cache.to_confirm(id(), vip_ask(), Millis(3000 + BOUND - 1), BOUND),
            None,
            "fresh: nothing to confirm"
        );
        let late = Millis(3000 + BOUND + 50);
        assert_eq!(cache.answer(id(), vip_ask(), late, BOUND), None);
        assert_eq!(cache.to_confirm(id(), vip_ask(), late, BOUND), Some(41));
        assert!(cache.confirm(id(), 41, 41, late));
        assert!(!cache.wants_snapshot(id(), late, BOUND));
        for at in [late.0, late.0 + BOUND - 1] {
            assert_eq!(
                cache.answer(id(), vip_ask(), Millis(at), BOUND),
                Some(vec![Reply::Int(-8), b("vip")]),
                "{at}: renewed from the read"
            );
        }
        assert_eq!(
            cache.answer(id(), vip_ask(), Millis(late.0 + BOUND), BOUND),
            None,
            "and not a moment longer"
        );
        assert_eq!(
            cache.to_confirm(id(), vip_ask(), Millis(late.0 + BOUND), BOUND),
            Some(41),
            "asked again after each bound"
        );
    }

    #[test]
    fn a_generation_that_moved_on_renews_nothing_and_the_script_runs_until_it_brings_a_new_one() {
        let mut cache = ClaimCache::default();
        let user = UserId::parse("u1").unwrap();
        let vip = request(Some("vip"), 1);
        let vip_ask = || ask(&vip, &user, false);
        sold_out_vip_at_gen(&mut cache, 3000, "41");
        let late = Millis(3000 + BOUND);
        assert!(!cache.confirm(id(), 41, 42, late), "a ticket came back");
        assert_eq!(cache.answer(id(), vip_ask(), late, BOUND), None);
        assert_eq!(
            cache.to_confirm(id(), vip_ask(), late, BOUND),
            None,
            "not asked again"
        );
        assert!(cache.wants_snapshot(id(), late, BOUND));
        sold_out_vip_at_gen(&mut cache, late.0, "43");
        assert_eq!(
            cache.answer(id(), vip_ask(), late, BOUND),
            Some(vec![Reply::Int(-8), b("vip")])
        );
        assert!(
            !cache.confirm(id(), 41, 41, late),
            "a read for the replaced snapshot renews nothing"
        );
        assert_eq!(
            cache.to_confirm(id(), vip_ask(), Millis(late.0 + BOUND), BOUND),
            Some(43)
        );
    }

    #[test]
    fn nothing_is_confirmed_for_a_claim_the_old_snapshot_would_not_answer_or_that_it_cannot_renew()
    {
        let user = UserId::parse("u1").unwrap();
        let vip = request(Some("vip"), 1);
        let std_type = request(Some("std"), 1);
        let late = Millis(3000 + BOUND);
        let mut cache = ClaimCache::default();
        sold_out_vip_at_gen(&mut cache, 3000, "41");
        assert_eq!(
            cache.to_confirm(id(), ask(&std_type, &user, false), late, BOUND),
            None,
            "std has stock: the script decides"
        );
        assert_eq!(
            cache.to_confirm(id(), ask(&vip, &user, false), late, 0),
            None,
            "cache off"
        );
        // Learned before generations: never renewed.
        let mut cache = ClaimCache::default();
        sold_out_vip(&mut cache, 3000, &[]);
        assert_eq!(
            cache.to_confirm(id(), ask(&vip, &user, false), late, BOUND),
            None
        );
        // A bucket's sold out is bounded by time, not by a generation.
        let mut cache = ClaimCache::default();
        let snapshot = with_snapshot(vec![Reply::Int(-8), b("vip")], 0, &[]);
        let snapshot = with_meta(with_meta(snapshot, "gen", "41"), "buckets", "3");
        cache.learn(id(), snapshot, Millis(3000));
        assert_eq!(
            cache.to_confirm(id(), ask(&vip, &user, false), late, BOUND),
            None
        );
    }

    #[test]
    fn a_sold_out_from_the_script_for_a_type_the_snapshot_holds_with_stock_ends_its_bound() {
        let mut cache = ClaimCache::default();
        let claimed = vec![
            Reply::Int(1),
            b("c1"),
            Reply::Int(0),
            b("vip"),
            b("counter"),
            b("CODE"),
        ];
        // vip sold out, std with 5 left.
        cache.learn(id(), with_snapshot(claimed, 0, &[]), Millis(3000));
        assert!(!cache.wants_snapshot(id(), Millis(3001), BOUND));
        // What the snapshot already says, or a refusal about the user, says nothing new.
        cache.learn(id(), vec![Reply::Int(-8), b("vip")], Millis(3001));
        cache.learn(
            id(),
            vec![Reply::Int(-7), Reply::Int(1), b("ticket_type"), b("std")],
            Millis(3001),
        );
        assert!(!cache.wants_snapshot(id(), Millis(3002), BOUND));
        let reply = cache.learn(id(), vec![Reply::Int(-8), b("std")], Millis(3002));
        assert_eq!(reply, vec![Reply::Int(-8), b("std")]);
        assert!(
            cache.wants_snapshot(id(), Millis(3002), BOUND),
            "the next claim learns the sell-out"
        );
        let user = UserId::parse("u1").unwrap();
        let std_type = request(Some("std"), 1);
        assert_eq!(
            cache.answer(id(), ask(&std_type, &user, false), Millis(3002), BOUND),
            None
        );
    }

    #[test]
    fn claim_cache_ms_defaults_to_one_second_and_never_exceeds_it() {
        assert_eq!(bound_from(None), Ok(DEFAULT_BOUND_MS));
        assert_eq!(bound_from(Some(" ")), Ok(DEFAULT_BOUND_MS));
        assert_eq!(bound_from(Some("0")), Ok(0));
        assert_eq!(bound_from(Some("1000")), Ok(1000));
        for bad in ["1001", "-1", "fast"] {
            assert!(
                bound_from(Some(bad))
                    .unwrap_err()
                    .contains("claim_cache_ms"),
                "{bad}"
            );
        }
    }
}

//! Stock buckets: one hot activity spread over several Redis Cluster slots (issue 23).
//!
//! An activity created with `stock_buckets = n > 1` keeps n copies of its claim state in
//! Redis, each under its own hash tag, so under its own slot and, on a cluster whose slots
//! are spread evenly, on its own primary:
//! - bucket 0 is the activity's usual tag `{a:<id>}`, so an activity of one bucket is
//!   exactly what it always was;
//! - bucket b > 0 has a tag whose slot lies in the middle of the b-th of n equal slot
//!   ranges after bucket 0's ([`tag`]), found by a short search any caller repeats:
//!   nothing needs storing.
//!
//! Each type's stock is split over the buckets ([`share`]). Every user has a home bucket
//! ([`home`], a stable hash of the id) holding everything about that user — what they
//! hold, their Idempotency-Keys, passes and rate counters — so each per-user and per-type
//! limit stays exact in one script. A claim runs in its user's home bucket; when that
//! bucket has too little of the type left, stock is lent to it from the others
//! (lua/lend.lua, at most what the claim lacks) and credited inside the next claim script,
//! so the tickets, the log entry and any later return all live in the home bucket.

use crate::claim::ClaimCommand;
use crate::cluster::{crc16, SLOTS};
use crate::ids::{ActivityId, UserId};
use crate::keys::ActivityKeys;
use crate::scripts::{Arg, RedisFailure, Reply, Script, CLAIM, LEND};
use crate::time::Millis;

/// The most buckets an activity may have: more than the primaries of any cluster this
/// project sizes for, and each costs a script per claim that finds its home bucket empty.
pub const MAX_BUCKETS: i64 = 16;

/// A bucket's slot is the first found within this many slots after its target: small
/// against the 5,461 slots one of three evenly split primaries holds, and found in about
/// 16384 / 64 = 256 CRC16s of a dozen bytes.
const AIM: u16 = 64;

/// The hash of a user id that picks the home bucket (FNV-1a, 32 bits): claim.lua is given
/// it and takes it modulo the activity's bucket count, so a caller that does not know that
/// count yet is told where to go (`{ -16, n }`).
pub fn user_hash(user: &UserId) -> u32 {
    user.as_str().bytes().fold(0x811c_9dc5u32, |h, b| {
        (h ^ u32::from(b)).wrapping_mul(0x0100_0193)
    })
}

/// The user's home bucket among `n`.
pub fn home(user: &UserId, n: i64) -> i64 {
    i64::from(user_hash(user)) % n.max(1)
}

/// The hash tag (without braces) of bucket `b` of `n` of an activity.
pub fn tag(id: ActivityId, b: i64, n: i64) -> String {
    let base = format!("a:{id}");
    if b == 0 || n <= 1 {
        return base;
    }
    // Split the slots into n equal ranges: bucket b aims at the middle of the b-th range
    // after bucket 0's, as far from a range's edge as it can be.
    let (slots, origin) = (i64::from(SLOTS), i64::from(crc16(base.as_bytes()) % SLOTS));
    let range = (origin * n / slots + b) % n;
    let target = (range * slots / n + slots / (2 * n) - i64::from(AIM) / 2) as u16;
    (0u32..)
        .map(|k| format!("{base}.{b}.{k}"))
        .find(|candidate| {
            let slot = crc16(candidate.as_bytes()) % SLOTS;
            (slot + SLOTS - target) % SLOTS < AIM
        })
        .expect("CRC16 reaches every window of slots")
}

/// Bucket `b`'s part of a type's `total` stock over `n` buckets: equal parts, the first
/// buckets one more while a remainder lasts.
pub fn share(total: i64, n: i64, b: i64) -> i64 {
    let n = n.max(1);
    total / n + i64::from(b < total % n)
}

/// The buckets a home bucket asks for stock, in order: the next ones round the ring, so
/// that homes borrowing at once start at different lenders.
pub fn lenders(home: i64, n: i64) -> impl Iterator<Item = i64> {
    (1..n).map(move |i| (home + i) % n)
}

/// How long a home bucket whose borrowing found too little answers `sold_out` without
/// asking the others again (claim.lua's ARGV[24]): the bound within which a ticket returned
/// to another bucket reaches the users homed here, as `claim_cache_ms` bounds an instance.
pub const DRY_MS: i64 = 1000;

/// One script a caller runs for a claim on an activity that may have stock buckets.
#[derive(Debug, Clone)]
pub struct Call {
    pub script: &'static Script,
    pub keys: Vec<String>,
    pub argv: Vec<Arg>,
}

/// What follows a reply: another script, or the claim's final reply.
#[derive(Debug)]
pub enum Next {
    Run(Call),
    Done(Result<Vec<Reply>, RedisFailure>),
}

#[derive(Debug)]
enum Stage {
    /// The claim in the bucket it was sent to; `redirected` once it went home.
    Claim { redirected: bool },
    /// Asking `lenders[at]` for what the home lacks.
    Lend {
        ty: String,
        want: i64,
        lenders: Vec<i64>,
        at: usize,
        failed: bool,
    },
    /// The claim again at home with the loans.
    Again,
}

/// The claim of one user on an activity of `n` stock buckets, as the scripts it takes
/// (tokio mini-redis style: this decides, the component runs each [`Call`]):
/// - the claim in the user's home bucket, or in bucket 0 while `n` is unknown, which says
///   `n` (`{ -16, n }`) when it is not the home;
/// - when the home has too little (`{ -17, type, left }`), lua/lend.lua in the other
///   buckets until the lack is covered, then the claim again at home with the loans.
///
/// An activity of one bucket takes exactly the one claim script it always did.
#[derive(Debug)]
pub struct BucketedClaim {
    activity: ActivityId,
    user: UserId,
    command: ClaimCommand,
    quantity: i64,
    now: Millis,
    claim_id: String,
    n: Option<i64>,
    loans: Vec<(String, i64)>,
    stage: Stage,
}

impl BucketedClaim {
    /// The claim and its first script; `known` is the activity's bucket count when the
    /// caller remembers it (a reused WASIp3 instance), saving the hop through bucket 0.
    #[allow(clippy::too_many_arguments)]
    pub fn start(
        activity: ActivityId,
        user: &UserId,
        command: ClaimCommand,
        quantity: i64,
        now: Millis,
        claim_id: &str,
        known: Option<i64>,
    ) -> (Self, Call) {
        let claim = BucketedClaim {
            activity,
            user: user.clone(),
            command,
            quantity,
            now,
            claim_id: claim_id.to_string(),
            n: known.filter(|n| *n > 1),
            loans: Vec::new(),
            stage: Stage::Claim { redirected: false },
        };
        let call = claim.claim_call(None);
        (claim, call)
    }

    /// The activity's bucket count once a script said it.
    pub fn buckets(&self) -> Option<i64> {
        self.n
    }

    fn home(&self) -> (i64, i64) {
        let n = self.n.unwrap_or(1);
        (home(&self.user, n), n)
    }

    fn claim_call(&self, credits: Option<&[(String, i64)]>) -> Call {
        let mut command = self.command.clone();
        if matches!(self.stage, Stage::Claim { redirected: true } | Stage::Again) {
            // The first script already counted these (claim.lua, ARGV[17..18]).
            command = command.with_unreported((0, 0));
        }
        let command = command.in_bucket(self.activity, &self.user, self.home(), credits);
        Call {
            script: &CLAIM,
            keys: command.keys,
            argv: command.argv,
        }
    }

    fn lend_call(&self, lender: i64, ty: &str, want: i64) -> Call {
        let (home, n) = self.home();
        let k = ActivityKeys::in_bucket(self.activity, lender, n);
        Call {
            script: &LEND,
            keys: vec![k.meta(), k.stocks(), k.bucket()],
            argv: vec![
                Arg::from(ty),
                Arg::Int(want),
                Arg::from(format!("{}.{lender}", self.claim_id)),
                Arg::Int(home),
                Arg::Int(self.now.0),
            ],
        }
    }

    /// The next script after `reply`, or the claim's reply.
    pub fn next(&mut self, reply: Result<Vec<Reply>, RedisFailure>) -> Next {
        let stage = std::mem::replace(&mut self.stage, Stage::Again);
        match (stage, reply) {
            (Stage::Claim { redirected: false }, Ok(r)) if status(&r) == Some(-16) => {
                match r.get(1).and_then(Reply::as_int).filter(|n| *n > 1) {
                    Some(n) => {
                        self.n = Some(n);
                        self.stage = Stage::Claim { redirected: true };
                        Next::Run(self.claim_call(None))
                    }
                    None => Next::Done(Ok(r)),
                }
            }
            (Stage::Claim { .. }, Ok(r)) if status(&r) == Some(-16) => {
                // The home said it is not the home: the activity changed under us. Nothing
                // was claimed.
                Next::Done(Err(RedisFailure::Unreachable(
                    "the activity's stock buckets changed during the claim".into(),
                )))
            }
            (Stage::Claim { .. }, Ok(r)) if status(&r) == Some(-17) => {
                let ty = r.get(1).and_then(Reply::as_text).map(str::to_string);
                let left = r.get(2).and_then(Reply::as_int);
                let (Some(ty), Some(left)) = (ty, left) else {
                    return Next::Done(Ok(r));
                };
                let (home, n) = self.home();
                let lenders: Vec<i64> = lenders(home, n).collect();
                let want = self.quantity - left;
                let call = self.lend_call(lenders[0], &ty, want);
                self.stage = Stage::Lend {
                    ty,
                    want,
                    lenders,
                    at: 0,
                    failed: false,
                };
                Next::Run(call)
            }
            (
                Stage::Lend {
                    ty,
                    mut want,
                    lenders,
                    at,
                    mut failed,
                },
                reply,
            ) => {
                match reply.as_deref().map(|r| r.first().and_then(Reply::as_int)) {
                    Ok(Some(lent)) if lent > 0 => {
                        self.loans
                            .push((format!("{}.{}", self.claim_id, lenders[at]), lent));
                        want -= lent;
                    }
                    Ok(_) => {}
                    // Its loan, if it made one, is credited by the drain (credit.lua).
                    Err(_) => failed = true,
                }
                if want > 0 && at + 1 < lenders.len() {
                    let call = self.lend_call(lenders[at + 1], &ty, want);
                    self.stage = Stage::Lend {
                        ty,
                        want,
                        lenders,
                        at: at + 1,
                        failed,
                    };
                    return Next::Run(call);
                }
                if want > 0 && failed && self.loans.is_empty() {
                    // Sold out is not known while a bucket could not be asked.
                    return Next::Done(Err(RedisFailure::Unreachable(
                        "a stock bucket of the activity could not be asked".into(),
                    )));
                }
                self.stage = Stage::Again;
                let loans = self.loans.clone();
                let mut call = self.claim_call(Some(&loans));
                if failed {
                    // Not dry: a bucket that could not be asked may hold stock.
                    *call.argv.last_mut().expect("claim.lua's ARGV[24]") = Arg::Int(0);
                }
                Next::Run(call)
            }
            (_, reply) => Next::Done(reply),
        }
    }
}

fn status(reply: &[Reply]) -> Option<i64> {
    reply.first().and_then(Reply::as_int)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cluster::key_slot;

    fn id(n: i64) -> ActivityId {
        ActivityId::from_db(n)
    }

    #[test]
    fn bucket_zero_is_the_activitys_own_tag() {
        assert_eq!(tag(id(42), 0, 3), "a:42");
        assert_eq!(tag(id(42), 0, 1), "a:42");
    }

    #[test]
    fn the_buckets_of_an_activity_land_on_distinct_primaries_of_an_evenly_split_cluster() {
        // `redis-cli --cluster create` splits the slots into equal ranges.
        let owner = |slot: u16, primaries: u16| -> u16 {
            (slot / SLOTS.div_ceil(primaries)).min(primaries - 1)
        };
        for activity in 1..200 {
            for (n, primaries) in [(2, 2), (3, 3), (2, 3)] {
                let owners: std::collections::HashSet<u16> = (0..n)
                    .map(|b| {
                        let key = format!("fc:{{{}}}:meta", tag(id(activity), b, n));
                        owner(key_slot(key.as_bytes()), primaries)
                    })
                    .collect();
                assert_eq!(owners.len(), n as usize, "activity {activity}, {n} buckets");
            }
        }
    }

    #[test]
    fn a_tag_is_the_same_wherever_it_is_computed() {
        assert_eq!(tag(id(7), 2, 3), tag(id(7), 2, 3));
        assert_ne!(tag(id(7), 1, 3), tag(id(7), 2, 3));
    }

    #[test]
    fn shares_add_up_to_the_stock_and_differ_by_at_most_one() {
        for total in [0, 1, 2, 999, 1000, 1001] {
            for n in 1..=5 {
                let parts: Vec<i64> = (0..n).map(|b| share(total, n, b)).collect();
                assert_eq!(parts.iter().sum::<i64>(), total);
                assert!(parts.iter().max().unwrap() - parts.iter().min().unwrap() <= 1);
            }
        }
    }

    #[test]
    fn users_are_homed_stably_and_spread_over_the_buckets() {
        let mut counts = [0; 3];
        for u in 0..3000 {
            let user = UserId::parse(&format!("user-{u}")).unwrap();
            assert_eq!(home(&user, 3), home(&user, 3));
            counts[home(&user, 3) as usize] += 1;
        }
        assert!(counts.iter().all(|c| *c > 900), "{counts:?}");
    }

    #[test]
    fn a_home_asks_every_other_bucket_once() {
        assert_eq!(lenders(1, 3).collect::<Vec<_>>(), [2, 0]);
        assert_eq!(lenders(0, 1).count(), 0);
    }
}

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

/// The bucket holding the ticket of `code` on an activity of `n` buckets: claim.lua ends
/// the codes of bucket b > 0 in `-<b>` (a counter code is `<prefix>-<number>` otherwise).
pub fn code_bucket(code: &str, n: i64) -> i64 {
    if n <= 1 {
        return 0;
    }
    let mut parts = code.rsplitn(3, '-');
    match (parts.next(), parts.next(), parts.next()) {
        (Some(b), Some(_), Some(_)) => b.parse().ok().filter(|b| (1..n).contains(b)).unwrap_or(0),
        _ => 0,
    }
}

/// Whether a code may lie in a bucket other than 0, so that finding it needs the
/// activity's bucket count (one read, which codes of bucket 0 never pay).
pub fn code_may_be_bucketed(code: &str) -> bool {
    code.matches('-').count() >= 2
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

/// The bucket counts a reused WASIp3 instance learned, a few activities at most (a sale is
/// one or two): an id made up by a client is never learned, only what a script said.
#[derive(Debug, Default)]
pub struct Buckets(std::collections::HashMap<i64, i64>);

impl Buckets {
    const MAX: usize = 64;

    pub fn get(&self, activity: ActivityId) -> Option<i64> {
        self.0.get(&activity.get()).copied()
    }

    pub fn remember(&mut self, activity: ActivityId, n: i64) {
        if self.0.len() >= Self::MAX {
            self.0.clear();
        }
        self.0.insert(activity.get(), n);
    }
}

/// The script a caller runs next for a claim on an activity that may have stock buckets,
/// borrowed from the [`BucketedClaim`]: nothing is copied on the way.
#[derive(Debug, Clone, Copy)]
pub struct Call<'a> {
    pub script: &'static Script,
    pub keys: &'a [String],
    pub argv: &'a [Arg],
}

/// What follows a reply: another script ([`BucketedClaim::call`]), or the claim's reply.
#[derive(Debug)]
pub enum Next {
    Run,
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
/// - when the home has too little (`{ -17, type, left, n }`), lua/lend.lua in the other
///   buckets until the lack is covered, then the claim again at home with the loans.
///
/// An activity of one bucket takes exactly the one claim script it always did, built once.
#[derive(Debug)]
pub struct BucketedClaim {
    /// The claim, in the bucket it goes to next.
    claim: ClaimCommand,
    /// A lend.lua call while the home borrows.
    lend: Option<(Vec<String>, Vec<Arg>)>,
    now: Millis,
    n: Option<i64>,
    loans: Vec<(String, i64)>,
    stage: Stage,
}

impl BucketedClaim {
    /// The claim, ready for its first script ([`BucketedClaim::call`]); `known` is the
    /// activity's bucket count when the caller remembers it (a reused WASIp3 instance),
    /// saving the hop through bucket 0.
    pub fn start(command: ClaimCommand, now: Millis, known: Option<i64>) -> Self {
        let n = known.filter(|n| *n > 1);
        let at = n.map_or((0, 1), |n| (home(&command.user, n), n));
        BucketedClaim {
            claim: command.in_bucket(at),
            lend: None,
            now,
            n,
            loans: Vec::new(),
            stage: Stage::Claim { redirected: false },
        }
    }

    /// The script to run now.
    pub fn call(&self) -> Call<'_> {
        match &self.lend {
            Some((keys, argv)) => Call {
                script: &LEND,
                keys,
                argv,
            },
            None => Call {
                script: &CLAIM,
                keys: &self.claim.keys,
                argv: &self.claim.argv,
            },
        }
    }

    /// The activity's bucket count once a script said it.
    pub fn buckets(&self) -> Option<i64> {
        self.n
    }

    fn home(&self) -> (i64, i64) {
        let n = self.n.unwrap_or(1);
        (home(&self.claim.user, n), n)
    }

    fn lend_from(&mut self, lender: i64, ty: &str, want: i64) {
        let (home, n) = self.home();
        let k = ActivityKeys::in_bucket(self.claim.activity, lender, n);
        self.lend = Some((
            vec![k.meta(), k.stocks(), k.bucket()],
            vec![
                Arg::from(ty),
                Arg::Int(want),
                Arg::from(format!("{}.{lender}", self.claim.claim_id)),
                Arg::Int(home),
                Arg::Int(self.now.0),
            ],
        ));
    }

    /// What follows `reply` to the script [`BucketedClaim::call`] gave.
    pub fn next(&mut self, reply: Result<Vec<Reply>, RedisFailure>) -> Next {
        let stage = std::mem::replace(&mut self.stage, Stage::Again);
        match (stage, reply) {
            (Stage::Claim { redirected: false }, Ok(r)) if status(&r) == Some(-16) => {
                match r.get(1).and_then(Reply::as_int).filter(|n| *n > 1) {
                    Some(n) => {
                        self.n = Some(n);
                        self.stage = Stage::Claim { redirected: true };
                        let home = self.home();
                        self.claim.move_from_bucket_zero(home);
                        // Bucket 0 counted the answers ARGV[17..18] reported.
                        self.claim.argv.splice(16..18, [Arg::Int(0), Arg::Int(0)]);
                        Next::Run
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
                // A user homed in bucket 0 learns the count here, with no redirection.
                let n = r.get(3).and_then(Reply::as_int).filter(|n| *n > 1);
                let (Some(ty), Some(left), Some(n)) = (ty, left, n) else {
                    return Next::Done(Ok(r));
                };
                self.n = Some(n);
                let (home, n) = self.home();
                let lenders: Vec<i64> = lenders(home, n).collect();
                let want = self.claim.quantity - left;
                self.lend_from(lenders[0], &ty, want);
                self.stage = Stage::Lend {
                    ty,
                    want,
                    lenders,
                    at: 0,
                    failed: false,
                };
                Next::Run
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
                            .push((format!("{}.{}", self.claim.claim_id, lenders[at]), lent));
                        want -= lent;
                    }
                    Ok(_) => {}
                    // Its loan, if it made one, is credited by the drain (credit.lua).
                    Err(_) => failed = true,
                }
                if want > 0 && at + 1 < lenders.len() {
                    self.lend_from(lenders[at + 1], &ty, want);
                    self.stage = Stage::Lend {
                        ty,
                        want,
                        lenders,
                        at: at + 1,
                        failed,
                    };
                    return Next::Run;
                }
                if want > 0 && failed && self.loans.is_empty() {
                    // Sold out is not known while a bucket could not be asked.
                    return Next::Done(Err(RedisFailure::Unreachable(
                        "a stock bucket of the activity could not be asked".into(),
                    )));
                }
                self.lend = None;
                // Not dry after a failure: a bucket that could not be asked may hold stock.
                self.claim.again(&self.loans, !failed);
                Next::Run
            }
            (_, reply) => Next::Done(reply),
        }
    }
}

/// A loan lend.lua recorded in a bucket (`out:<move>`) that its claim may never have
/// credited: the drain credits it (credit.lua, at most once) and closes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OpenLoan {
    pub field: String,
    pub move_id: String,
    pub home: i64,
    pub ticket_type: String,
    pub amount: i64,
}

/// A loan is left to its claim this long: the claim credits it within its request.
pub const REPAIR_AFTER_MS: i64 = 5_000;

/// The loans of one bucket's state hash (HGETALL, field and value in turn) old enough for
/// the drain to settle at `now`.
pub fn due_loans(state: &[Reply], now: Millis) -> Vec<OpenLoan> {
    state
        .chunks(2)
        .filter_map(|pair| {
            let field = pair.first()?.as_text()?;
            let move_id = field.strip_prefix("out:")?;
            let value = pair.get(1)?.as_text()?;
            let mut parts = value.split('|');
            let home = parts.next()?.parse().ok()?;
            let ticket_type = parts.next()?.to_string();
            let amount = parts.next()?.parse().ok()?;
            let at: i64 = parts.next()?.parse().ok()?;
            (now.0 - at >= REPAIR_AFTER_MS).then(|| OpenLoan {
                field: field.to_string(),
                move_id: move_id.to_string(),
                home,
                ticket_type,
                amount,
            })
        })
        .collect()
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
    fn a_code_names_its_bucket_by_its_suffix() {
        assert_eq!(code_bucket("ABCDEFGH-17", 3), 0);
        assert_eq!(code_bucket("ABCDEFGH-17-2", 3), 2);
        assert_eq!(code_bucket("ABCDEFGH-17-2", 1), 0, "one bucket: always 0");
        assert_eq!(code_bucket("A-B-9", 3), 0, "not a bucket of this activity");
        assert!(code_may_be_bucketed("ABCDEFGH-17-2"));
        assert!(!code_may_be_bucketed("ABCDEFGH-17"));
    }

    #[test]
    fn loans_are_settled_by_the_drain_only_once_their_claim_had_its_time() {
        let text = |t: &str| Reply::Bytes(t.as_bytes().to_vec());
        let state = [
            text("out:c1.2"),
            text("0|std|3|1000"),
            text("dry:std"),
            text("9000"),
            text("in:c0.1"),
            text("2"),
            text("out:c2.2"),
            text("1|std|1|4000"),
        ];
        let due = due_loans(&state, Millis(1000 + REPAIR_AFTER_MS));
        assert_eq!(
            due,
            [OpenLoan {
                field: "out:c1.2".into(),
                move_id: "c1.2".into(),
                home: 0,
                ticket_type: "std".into(),
                amount: 3,
            }]
        );
    }

    #[test]
    fn a_home_asks_every_other_bucket_once() {
        assert_eq!(lenders(1, 3).collect::<Vec<_>>(), [2, 0]);
        assert_eq!(lenders(0, 1).count(), 0);
    }
}

//! Stock buckets (flashclaim_core::buckets) against a real Redis: one activity's stock
//! split over three buckets, claimed through the same `BucketedClaim` steps the claim
//! components take, with the scripts they run. One Redis holds all three buckets here (the
//! keys differ only in their hash tags); tests/cluster.rs spreads them over primaries.

use std::collections::HashMap;

use flashclaim_core::activity::{Activity, NewActivity, Status};
use flashclaim_core::buckets::{self, BucketedClaim, Next};
use flashclaim_core::claim::{self, ClaimCommand, ClaimOutcome, ClaimRequest, RateLimit};
use flashclaim_core::error::LimitScope;
use flashclaim_core::ids::{ActivityId, TicketRef, UserId};
use flashclaim_core::keys::ActivityKeys;
use flashclaim_core::scripts::{run_script, Arg, RedisCommands, Reply, CREDIT, PUBLISH, RETURN};
use flashclaim_core::ticket;
use flashclaim_core::ticket_type::TypeKey;
use flashclaim_core::time::Millis;
use flashclaim_core::ApiError;
use flashclaim_tests::{fresh_redis_db, NativeRedis};

const N: i64 = 3;
const NOW: i64 = 1_500_000;

/// `per_user_limit`: over all types, 0 for none beyond each type's.
fn activity(types: &str, per_user_limit: i64) -> Activity {
    let limit = match per_user_limit {
        0 => String::new(),
        n => format!(r#""per_user_limit":{n},"#),
    };
    NewActivity::parse(
        format!(
            r#"{{"name":"hot","starts_at":"1970-01-01T00:16:40Z","ends_at":"1970-01-01T00:33:20Z",
                {limit}"ticket_types":[{types}]}}"#
        )
        .as_bytes(),
    )
    .unwrap()
    .into_activity(ActivityId::parse("9").unwrap(), Status::Published)
}

struct Lab {
    redis: NativeRedis,
    activity: Activity,
    seq: u32,
    /// Scripts run, by name.
    runs: HashMap<&'static str, u32>,
}

impl Lab {
    async fn new(activity: Activity) -> Lab {
        let (_, conn) = fresh_redis_db().await;
        let lab = Lab {
            redis: NativeRedis::new(conn),
            activity,
            seq: 0,
            runs: HashMap::new(),
        };
        for b in 0..N {
            let (keys, argv) = lab.activity.publish_bucket_command((b, N), |_| 0);
            run_script(&lab.redis, &PUBLISH, &keys, &argv).unwrap();
        }
        lab
    }

    fn bucket(&self, b: i64) -> ActivityKeys {
        ActivityKeys::in_bucket(self.activity.id, b, N)
    }

    /// The type's stock left in each bucket.
    fn stocks(&self, ty: &str) -> Vec<i64> {
        (0..N)
            .map(|b| self.int("HGET", &[self.bucket(b).stocks(), ty.into()]))
            .collect()
    }

    fn int(&self, command: &str, args: &[String]) -> i64 {
        let args: Vec<Arg> = args.iter().map(|a| Arg::from(a.as_str())).collect();
        self.redis.execute(command, &args).unwrap()[0]
            .as_int()
            .unwrap_or(0)
    }

    /// One claim as the components make it; `known`: the bucket count the caller
    /// remembers. Returns the outcome and the bucket count the scripts said.
    fn claim(
        &mut self,
        user: &str,
        ty: &str,
        quantity: i64,
        now: i64,
        known: Option<i64>,
    ) -> (Result<ClaimOutcome, ApiError>, Option<i64>) {
        self.seq += 1;
        let user = UserId::parse(user).unwrap();
        let claim_id = format!("claim-{}", self.seq);
        let prefixes: Vec<String> = (0..quantity)
            .map(|i| format!("P{}X{i}", self.seq))
            .collect();
        let command = ClaimCommand::new(
            self.activity.id,
            &user,
            ClaimRequest {
                quantity,
                ticket_type: Some(TypeKey::parse(ty).unwrap()),
            },
            None,
            Millis(now),
            &claim_id,
            &prefixes,
            RateLimit::OFF,
            RateLimit::OFF,
        );
        let mut steps = BucketedClaim::start(command, Millis(now), known);
        loop {
            let call = steps.call();
            *self.runs.entry(call.script.name).or_default() += 1;
            let reply = run_script(&self.redis, call.script, call.keys, call.argv);
            if let Next::Done(reply) = steps.next(reply) {
                return (claim::decode(&reply.unwrap()), steps.buckets());
            }
        }
    }

    fn runs(&self, script: &str) -> u32 {
        self.runs.get(script).copied().unwrap_or(0)
    }
}

fn claimed(outcome: Result<ClaimOutcome, ApiError>) -> claim::Claimed {
    match outcome {
        Ok(ClaimOutcome::Claimed(c)) => c,
        other => panic!("expected a claim, got {other:?}"),
    }
}

fn of(ticket_type: &str, error: ApiError) -> ApiError {
    ApiError::OfType {
        ticket_type: ticket_type.into(),
        error: Box::new(error),
    }
}

/// The users homed in bucket `b`, `count` of them.
fn homed(b: i64, count: usize) -> Vec<String> {
    (0..)
        .map(|i| format!("user-{i}"))
        .filter(|u| buckets::home(&UserId::parse(u).unwrap(), N) == b)
        .take(count)
        .collect()
}

const STD: &str = r#"{"key":"std","name":"Standard","stock_total":10,"per_user_limit":2}"#;

#[tokio::test(flavor = "multi_thread")]
async fn the_stock_is_split_over_the_buckets_and_a_claim_runs_in_its_users_home() {
    let mut lab = Lab::new(activity(STD, 0)).await;
    assert_eq!(lab.stocks("std"), [4, 3, 3]);
    let user = &homed(2, 1)[0];
    // A caller that does not know the buckets asks bucket 0, which names them.
    let (outcome, learned) = lab.claim(user, "std", 1, NOW, None);
    claimed(outcome);
    assert_eq!(learned, Some(N));
    assert_eq!(
        lab.stocks("std"),
        [4, 3, 2],
        "taken from the home, bucket 2"
    );
    assert_eq!(
        lab.runs("claim"),
        2,
        "bucket 0's redirection, then the home"
    );
    let second = claimed(lab.claim(user, "std", 1, NOW, Some(N)).0);
    assert!(second.codes[0].ends_with("-2"), "a code names its bucket");
    assert_eq!(lab.runs("claim"), 3, "one that knows goes home at once");
    assert_eq!(
        lab.int("HGET", &[lab.bucket(2).claimed(), user.clone()]),
        2,
        "the user's count lives in the home bucket only"
    );
    assert_eq!(lab.int("HLEN", &[lab.bucket(0).claimed()]), 0);
}

#[tokio::test(flavor = "multi_thread")]
async fn an_empty_home_borrows_from_the_others_and_the_stock_is_given_out_exactly_once() {
    let mut lab = Lab::new(activity(STD, 0)).await;
    // Eleven users of bucket 1 (3 tickets at home) want one each: 10 tickets in all.
    let users = homed(1, 11);
    let mut codes = std::collections::HashSet::new();
    for user in &users[..10] {
        let c = claimed(lab.claim(user, "std", 1, NOW, Some(N)).0);
        assert!(codes.insert(c.codes[0].clone()), "a code given twice");
    }
    // A caller that knows nothing borrows too: a user of bucket 0 is never redirected,
    // and learns the bucket count from the home's shortfall.
    let zero = &homed(0, 1)[0];
    assert_eq!(
        lab.claim(zero, "std", 1, NOW, None),
        (Err(of("std", ApiError::SoldOut)), Some(N)),
        "bucket 0 asked the others"
    );
    assert_eq!(lab.stocks("std"), [0, 0, 0]);
    assert_eq!(
        lab.claim(&users[10], "std", 1, NOW, Some(N)).0,
        Err(of("std", ApiError::SoldOut))
    );
    assert_eq!(
        lab.int("HLEN", &[lab.bucket(1).tickets()]),
        10,
        "every ticket is issued, and logged, in the home bucket"
    );
    assert_eq!(lab.int("XLEN", &[lab.bucket(1).log()]), 10);
    assert!(lab.runs("lend") >= 7, "7 tickets came from other buckets");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_quantity_gathers_from_several_buckets_and_keeps_the_per_user_limits() {
    let types = r#"{"key":"std","name":"Standard","stock_total":6,"per_user_limit":4},
                   {"key":"vip","name":"VIP","stock_total":3,"per_user_limit":2}"#;
    let mut lab = Lab::new(activity(types, 5)).await;
    assert_eq!(lab.stocks("std"), [2, 2, 2]);
    let user = &homed(0, 1)[0];
    let c = claimed(lab.claim(user, "std", 4, NOW, Some(N)).0);
    assert_eq!(c.codes.len(), 4);
    assert_eq!(
        lab.stocks("std"),
        [0, 0, 2],
        "2 at home, 2 lent by bucket 1"
    );
    assert_eq!(
        lab.claim(user, "std", 1, NOW, Some(N)).0,
        Err(of(
            "std",
            ApiError::LimitReached {
                limit: 4,
                scope: LimitScope::TicketType
            }
        )),
        "the type's limit, counted at home whatever bucket lent"
    );
    claimed(lab.claim(user, "vip", 1, NOW, Some(N)).0);
    assert_eq!(
        lab.claim(user, "vip", 1, NOW, Some(N)).0,
        Err(of(
            "vip",
            ApiError::LimitReached {
                limit: 5,
                scope: LimitScope::Activity
            }
        )),
        "5 over both types, the activity's limit"
    );
    // Another user takes the rest: 2 std (lent), then vip runs out across buckets.
    let other = &homed(0, 2)[1];
    assert_eq!(
        claimed(lab.claim(other, "std", 2, NOW, Some(N)).0)
            .codes
            .len(),
        2
    );
    assert_eq!(lab.stocks("std"), [0, 0, 0]);
    assert_eq!(
        claimed(lab.claim(other, "vip", 2, NOW, Some(N)).0)
            .codes
            .len(),
        2
    );
    assert_eq!(lab.stocks("vip").iter().sum::<i64>(), 0);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_ticket_returned_to_another_bucket_reaches_an_empty_home_after_the_dry_bound() {
    let mut lab = Lab::new(activity(STD, 0)).await;
    let (zeros, ones) = (homed(0, 11), homed(1, 1));
    let mut first = None;
    for user in &zeros[..10] {
        let c = claimed(lab.claim(user, "std", 1, NOW, Some(N)).0);
        first.get_or_insert(c);
    }
    // Sold out: bucket 0 asked the others and found nothing.
    assert_eq!(
        lab.claim(&zeros[10], "std", 1, NOW, Some(N)).0,
        Err(of("std", ApiError::SoldOut))
    );
    let lends = lab.runs("lend");
    assert_eq!(
        lab.claim(&ones[0], "std", 1, NOW, Some(N)).0,
        Err(of("std", ApiError::SoldOut))
    );
    // The first ticket goes back to its home, bucket 0 ...
    let first = first.unwrap();
    let ticket = TicketRef::parse(&format!("9-{}", first.codes[0])).unwrap();
    let (keys, argv) = ticket::return_command(&ticket, &lab.bucket(0), &zeros[0], Millis(NOW + 1));
    let reply = run_script(&lab.redis, &RETURN, &keys, &argv).unwrap();
    assert_eq!(reply[0], Reply::Int(1));
    // ... where bucket 1's users, dry for DRY_MS, find it only once that has passed.
    let lends_before = lab.runs("lend");
    assert_eq!(
        lab.claim(&ones[0], "std", 1, NOW + 2, Some(N)).0,
        Err(of("std", ApiError::SoldOut))
    );
    assert_eq!(
        lab.runs("lend"),
        lends_before,
        "dry: the others were not asked"
    );
    assert!(lends_before > lends);
    claimed(
        lab.claim(&ones[0], "std", 1, NOW + 2 + buckets::DRY_MS, Some(N))
            .0,
    );
    assert_eq!(lab.stocks("std"), [0, 0, 0]);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_loan_whose_claim_never_ran_is_credited_once_by_credit_lua() {
    let lab = Lab::new(activity(STD, 0)).await;
    let (lender, home) = (lab.bucket(2), lab.bucket(1));
    let lend = |want: i64, mv: &str| {
        let argv = [
            Arg::from("std"),
            Arg::Int(want),
            Arg::from(mv),
            Arg::Int(1),
            Arg::Int(NOW),
        ];
        let keys = vec![lender.meta(), lender.stocks(), lender.bucket()];
        run_script(&lab.redis, &flashclaim_core::scripts::LEND, &keys, &argv).unwrap()[0]
            .as_int()
            .unwrap()
    };
    assert_eq!(lend(5, "m1"), 3, "all it had, up to what was wanted");
    assert_eq!(lend(1, "m2"), 0);
    let open = lab.int("HLEN", &[lender.bucket()]);
    assert_eq!(open, 1, "one loan open: out:m1");
    let credit = || {
        run_script(
            &lab.redis,
            &CREDIT,
            &[home.stocks(), home.bucket()],
            &[Arg::from("m1"), Arg::from("std"), Arg::Int(3)],
        )
        .unwrap()[0]
            .as_int()
            .unwrap()
    };
    assert_eq!(credit(), 1);
    assert_eq!(credit(), 0, "twice is once");
    assert_eq!(lab.stocks("std"), [4, 6, 0]);
}

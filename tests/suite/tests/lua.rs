//! The Lua scripts against a real Redis: every return code and edge, through the same
//! KEYS/ARGV builders and reply decoders the components use.

use flashclaim_core::activity::{decode_publish, Activity, Kind, NewActivity, Status};
use flashclaim_core::claim::{self, ClaimCommand, ClaimOutcome, ClaimRequest, RateLimit};
use flashclaim_core::claim_cache::ClaimCache;
use flashclaim_core::drain::{decode_ack, Batch, LogEvent};
use flashclaim_core::error::LimitScope;
use flashclaim_core::ids::{ActivityId, IdempotencyKey, UserId};
use flashclaim_core::keys::{ActivityKeys, DRAIN_GROUP};
use flashclaim_core::scripts::{
    run_script, Arg, RedisCommands, Reply, CLAIM, DRAIN_ACK, DRAIN_READ, PASS, POOL, PUBLISH,
    REDEEM, RETURN,
};
use flashclaim_core::ticket;
use flashclaim_core::ticket_type::{TicketType, TypeKey};
use flashclaim_core::time::Millis;
use flashclaim_core::ApiError;
use flashclaim_tests::{fresh_redis_db, NativeRedis};

const START: i64 = 1_000_000;
const END: i64 = 2_000_000;

struct Lab {
    redis: NativeRedis,
    conn: redis::aio::MultiplexedConnection,
    activity: Activity,
    rate: RateLimit,
    global_rate: RateLimit,
    /// The client's stored address and the per-address limit (claim.lua's KEYS[13]).
    client: (String, claim::AddressLimit),
    seq: u32,
    /// When set, every claim asks for a snapshot (ARGV[19]) and this cache learns it.
    cache: Option<ClaimCache>,
}

fn activity(stock: i64, limit: i64) -> Activity {
    Activity {
        id: ActivityId::parse("7").unwrap(),
        name: "lab".into(),
        description: String::new(),
        image_url: None,
        starts_at: Millis(START),
        ends_at: Millis(END),
        status: Status::Published,
        per_user_limit: Some(limit),
        require_pass: false,
        ticket_types: vec![TicketType::default_for("lab", stock, limit, Kind::Counter)],
        stock_buckets: 1,
    }
}

/// A refusal about one ticket type, as claim.lua names it.
fn of(ticket_type: &str, error: ApiError) -> ApiError {
    ApiError::OfType {
        ticket_type: ticket_type.into(),
        error: Box::new(error),
    }
}

impl Lab {
    async fn new(activity: Activity) -> Lab {
        let (_, conn) = fresh_redis_db().await;
        let mut lab = Lab {
            redis: NativeRedis::new(conn.clone()),
            conn,
            activity,
            rate: RateLimit::OFF,
            global_rate: RateLimit::OFF,
            client: (String::new(), claim::AddressLimit::OFF),
            seq: 0,
            cache: None,
        };
        lab.publish_expect(true);
        lab
    }

    fn keys(&self) -> ActivityKeys {
        ActivityKeys::new(self.activity.id)
    }

    fn publish(&mut self) -> (bool, i64) {
        let (keys, argv) = self.activity.publish_command(|_| 0);
        decode_publish(&run_script(&self.redis, &PUBLISH, &keys, &argv).unwrap()).unwrap()
    }

    fn publish_expect(&mut self, loaded: bool) -> i64 {
        let (l, stock) = self.publish();
        assert_eq!(l, loaded);
        stock
    }

    fn claim_at(
        &mut self,
        user: &str,
        quantity: i64,
        now: i64,
        idem: Option<&str>,
    ) -> Result<ClaimOutcome, ApiError> {
        self.claim_type_at(user, None, quantity, now, idem)
    }

    /// A claim naming `ticket_type` (`None`: left to the script).
    fn claim_type_at(
        &mut self,
        user: &str,
        ticket_type: Option<&str>,
        quantity: i64,
        now: i64,
        idem: Option<&str>,
    ) -> Result<ClaimOutcome, ApiError> {
        self.seq += 1;
        let user = UserId::parse(user).unwrap();
        let idem = idem.map(|k| IdempotencyKey::parse(k).unwrap());
        let prefixes: Vec<String> = (0..quantity)
            .map(|i| format!("P{}X{i}", self.seq))
            .collect();
        let cmd = ClaimCommand::new(
            self.activity.id,
            &user,
            ClaimRequest {
                quantity,
                ticket_type: ticket_type.map(|t| TypeKey::parse(t).unwrap()),
            },
            idem.as_ref(),
            Millis(now),
            &format!("claim-{}", self.seq),
            &prefixes,
            self.rate,
            self.global_rate,
        )
        .with_client(self.activity.id, &self.client.0, self.client.1);
        let Some(cache) = self.cache.as_mut() else {
            return claim::decode(&run_script(&self.redis, &CLAIM, &cmd.keys, &cmd.argv).unwrap());
        };
        let cmd = cmd.with_snapshot(cache.snapshot_args(self.activity.id));
        let reply = run_script(&self.redis, &CLAIM, &cmd.keys, &cmd.argv).unwrap();
        claim::decode(&cache.learn(self.activity.id, reply, Millis(now)))
    }

    /// What the cache answers `user` at `now`, decoded as the script's reply would be.
    fn cached(
        &mut self,
        user: &str,
        ty: Option<&str>,
        keyed: bool,
        now: i64,
    ) -> Option<Result<ClaimOutcome, ApiError>> {
        let request = ClaimRequest {
            quantity: 1,
            ticket_type: ty.map(|t| TypeKey::parse(t).unwrap()),
        };
        let user = UserId::parse(user).unwrap();
        let ask = flashclaim_core::claim_cache::Ask {
            request: &request,
            user: &user,
            keyed,
        };
        let reply = self
            .cache
            .as_mut()?
            .answer(self.activity.id, ask, Millis(now), 250)?;
        Some(claim::decode(&reply))
    }

    fn claim(&mut self, user: &str, quantity: i64) -> Result<ClaimOutcome, ApiError> {
        self.claim_at(user, quantity, START + 10, None)
    }

    fn claim_type(
        &mut self,
        user: &str,
        ty: &str,
        quantity: i64,
    ) -> Result<ClaimOutcome, ApiError> {
        self.claim_type_at(user, Some(ty), quantity, START + 10, None)
    }

    /// The type's stock left in Redis.
    fn stock(&self, ty: &str) -> i64 {
        self.int(&["HGET", &self.keys().stocks(), ty])
    }

    /// One drain_read.lua call, as a drain run named `consumer` makes it.
    fn drain_read(&self, consumer: &str, count: i64, reclaim_after_ms: i64) -> Batch {
        let argv = [
            Arg::from(DRAIN_GROUP),
            Arg::from(consumer),
            Arg::Int(count),
            Arg::Int(reclaim_after_ms),
        ];
        Batch::decode(&run_script(&self.redis, &DRAIN_READ, &[self.keys().log()], &argv).unwrap())
    }

    fn cmd(&self, args: &[&str]) -> Vec<Reply> {
        let (command, rest) = args.split_first().unwrap();
        self.redis
            .execute(
                command,
                &rest.iter().map(|a| Arg::from(*a)).collect::<Vec<_>>(),
            )
            .unwrap()
    }

    fn int(&self, args: &[&str]) -> i64 {
        self.cmd(args).first().and_then(Reply::as_int).unwrap_or(0)
    }

    /// Every key and value except the rate counters and the metrics (which count every
    /// answer, refusals included), to prove a refusal changed nothing.
    async fn snapshot(&self) -> Vec<(String, Vec<u8>)> {
        let mut conn = self.conn.clone();
        let mut keys: Vec<String> = redis::cmd("KEYS")
            .arg("*")
            .query_async(&mut conn)
            .await
            .unwrap();
        keys.retain(|k| {
            !k.contains(":rate:") && !k.contains(":client:") && !k.ends_with(":metrics")
        });
        keys.sort();
        let mut out = Vec::new();
        for k in keys {
            let dump: Vec<u8> = redis::cmd("DUMP")
                .arg(&k)
                .query_async(&mut conn)
                .await
                .unwrap();
            out.push((k, dump));
        }
        out
    }
}

fn claimed(outcome: Result<ClaimOutcome, ApiError>) -> claim::Claimed {
    match outcome {
        Ok(ClaimOutcome::Claimed(c)) => c,
        other => panic!("expected a claim, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn claim_takes_stock_issues_codes_and_logs_one_entry() {
    let mut lab = Lab::new(activity(10, 3)).await;
    let c = claimed(lab.claim("alice", 2));
    assert_eq!(c.stock_left, 8);
    assert_eq!(c.codes.len(), 2);
    assert!(
        c.codes[0].ends_with("-1") && c.codes[1].ends_with("-2"),
        "{:?}",
        c.codes
    );
    let k = lab.keys();
    assert_eq!(lab.int(&["HGET", &k.claimed(), "alice"]), 2);
    assert_eq!(lab.int(&["HLEN", &k.tickets()]), 2);
    assert_eq!(lab.int(&["XLEN", &k.log()]), 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn claim_is_refused_when_sold_out_at_exactly_zero() {
    let mut lab = Lab::new(activity(1, 5)).await;
    assert_eq!(claimed(lab.claim("a", 1)).stock_left, 0);
    let before = lab.snapshot().await;
    assert_eq!(lab.claim("b", 1), Err(of("default", ApiError::SoldOut)));
    assert_eq!(lab.snapshot().await, before, "a refusal changes nothing");
    assert_eq!(lab.stock("default"), 0);
}

#[tokio::test(flavor = "multi_thread")]
async fn claim_for_more_than_the_stock_left_is_sold_out_and_takes_nothing() {
    let mut lab = Lab::new(activity(2, 5)).await;
    let before = lab.snapshot().await;
    assert_eq!(lab.claim("a", 3), Err(of("default", ApiError::SoldOut)));
    assert_eq!(lab.snapshot().await, before);
    assert_eq!(claimed(lab.claim("a", 2)).stock_left, 0);
}

#[tokio::test(flavor = "multi_thread")]
async fn claim_is_refused_once_the_limit_is_exactly_reached() {
    let mut lab = Lab::new(activity(10, 2)).await;
    claimed(lab.claim("a", 1));
    claimed(lab.claim("a", 1));
    let before = lab.snapshot().await;
    assert_eq!(
        lab.claim("a", 1),
        Err(of(
            "default",
            ApiError::LimitReached {
                limit: 2,
                scope: LimitScope::TicketType
            }
        ))
    );
    assert_eq!(lab.snapshot().await, before);
    claimed(lab.claim("b", 2));
    assert_eq!(
        lab.claim("c", 3).unwrap_err().code(),
        "invalid_request",
        "quantity above the limit"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn the_window_is_closed_at_start_and_open_at_end() {
    let mut lab = Lab::new(activity(10, 10)).await;
    assert_eq!(
        lab.claim_at("a", 1, START - 1, None),
        Err(ApiError::NotStarted {
            starts_at: Millis(START)
        })
    );
    claimed(lab.claim_at("a", 1, START, None));
    claimed(lab.claim_at("a", 1, END - 1, None));
    assert_eq!(lab.claim_at("a", 1, END, None), Err(ApiError::Ended));
}

#[tokio::test(flavor = "multi_thread")]
async fn unknown_draft_and_closed_activities_are_refused() {
    let mut lab = Lab::new(activity(10, 1)).await;
    lab.activity.id = ActivityId::parse("8").unwrap();
    assert_eq!(
        lab.claim("a", 1),
        Err(ApiError::NotFound),
        "never published"
    );
    lab.activity.id = ActivityId::parse("7").unwrap();
    lab.cmd(&["HSET", &lab.keys().meta(), "status", "draft"]);
    assert_eq!(lab.claim("a", 1), Err(ApiError::NotFound));
    lab.activity.status = Status::Closed;
    lab.publish_expect(false);
    assert_eq!(lab.claim("a", 1), Err(ApiError::Ended));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_blacklisted_user_is_refused() {
    let mut lab = Lab::new(activity(10, 1)).await;
    lab.cmd(&["SADD", &lab.keys().deny(), "mallory"]);
    assert_eq!(lab.claim("mallory", 1).unwrap_err().code(), "forbidden");
    claimed(lab.claim("alice", 1));
}

#[tokio::test(flavor = "multi_thread")]
async fn attempts_beyond_the_rate_limit_are_refused_with_a_retry_time() {
    let mut lab = Lab::new(activity(100, 100)).await;
    lab.rate = RateLimit {
        attempts: 2,
        window_ms: 5000,
    };
    claimed(lab.claim("a", 1));
    claimed(lab.claim("a", 1));
    match lab.claim("a", 1) {
        Err(ApiError::RateLimited { retry_after_secs }) => {
            assert!((1..=5).contains(&retry_after_secs))
        }
        other => panic!("{other:?}"),
    }
    claimed(lab.claim("b", 1));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_repeated_idempotency_key_returns_the_first_result_and_changes_nothing() {
    let mut lab = Lab::new(activity(10, 5)).await;
    let first = claimed(lab.claim_at("a", 2, START + 1, Some("k1")));
    let before = lab.snapshot().await;
    match lab.claim_at("a", 2, START + 2, Some("k1")) {
        Ok(ClaimOutcome::Replayed(again)) => {
            assert_eq!(again.claim_id, first.claim_id);
            assert_eq!(again.codes, first.codes);
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(lab.snapshot().await, before);
    assert_eq!(lab.int(&["XLEN", &lab.keys().log()]), 1);
    claimed(lab.claim_at("a", 1, START + 3, Some("k2")));
}

#[tokio::test(flavor = "multi_thread")]
async fn republishing_never_resets_the_stock() {
    let mut lab = Lab::new(activity(5, 5)).await;
    claimed(lab.claim("a", 3));
    assert_eq!(lab.publish_expect(false), 2);
    assert_eq!(lab.stock("default"), 2);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_reload_after_redis_lost_its_data_leaves_out_the_stock_postgres_saw_issued() {
    let lab = Lab::new(activity(5, 5)).await;
    lab.cmd(&["FLUSHDB"]);
    let (keys, argv) = lab.activity.publish_command(|_| 3);
    let reply = run_script(&lab.redis, &PUBLISH, &keys, &argv).unwrap();
    assert_eq!(decode_publish(&reply).unwrap(), (true, 2));
    assert_eq!(
        lab.cmd(&["HGET", &lab.keys().meta(), "stock_total"]),
        vec![Reply::Bytes(b"5".to_vec())],
        "the total stays the total (passes are counted against it)"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_pass_is_required_and_used_once_when_the_activity_says_so() {
    let mut a = activity(10, 5);
    a.require_pass = true;
    let mut lab = Lab::new(a).await;
    assert_eq!(lab.claim("a", 1), Err(ApiError::PassRequired));
    let pass = lab.keys().pass(&UserId::parse("a").unwrap());
    lab.cmd(&["SET", &pass, "issued"]);
    claimed(lab.claim("a", 1));
    assert_eq!(lab.claim("a", 1), Err(ApiError::PassRequired), "single use");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_code_pool_hands_out_uploaded_codes_and_an_empty_pool_is_sold_out() {
    let mut a = activity(5, 2);
    a.ticket_types[0].kind = Kind::Codes;
    let mut lab = Lab::new(a).await;
    pool(&lab, "load", "default", &["CODE-A", "CODE-B", "CODE-C"]);
    let c = claimed(lab.claim("a", 2));
    assert_eq!(c.codes, vec!["CODE-A", "CODE-B"]);
    // Stock is left (3) but only one code: two tickets cannot be had, and nothing changes.
    let before = lab.snapshot().await;
    assert_eq!(lab.claim("b", 2), Err(of("default", ApiError::SoldOut)));
    assert_eq!(lab.snapshot().await, before);
    claimed(lab.claim("b", 1));
    assert_eq!(lab.claim("c", 1), Err(of("default", ApiError::SoldOut)));
}

fn pool(lab: &Lab, mode: &str, ty: &str, codes: &[&str]) -> (i64, i64) {
    let keys = [lab.keys().meta(), lab.keys().pools()];
    let mut argv = vec![Arg::from(mode), Arg::from(ty)];
    argv.extend(codes.iter().map(|c| Arg::from(*c)));
    let r = run_script(&lab.redis, &POOL, &keys, &argv).unwrap();
    (r[0].as_int().unwrap(), r[1].as_int().unwrap())
}

#[tokio::test(flavor = "multi_thread")]
async fn the_pool_is_loaded_once_and_later_uploads_are_appended() {
    let mut a = activity(5, 1);
    a.ticket_types[0].kind = Kind::Codes;
    let lab = Lab::new(a).await;
    assert_eq!(
        pool(&lab, "add", "default", &["EARLY"]),
        (0, 0),
        "before the load: Postgres has them"
    );
    let many: Vec<String> = (0..25_000).map(|n| format!("C{n}")).collect();
    let refs: Vec<&str> = many.iter().map(String::as_str).collect();
    assert_eq!(
        pool(&lab, "load", "default", &refs),
        (25_000, 25_000),
        "beyond Lua's unpack limit"
    );
    assert_eq!(
        pool(&lab, "load", "default", &["AGAIN"]),
        (0, 25_000),
        "a second load does nothing"
    );
    assert_eq!(
        pool(&lab, "add", "default", &["LATE1", "LATE2"]),
        (2, 25_002)
    );
}

fn give_back(lab: &Lab, code: &str, user: &str, now: i64) -> Result<Option<Reply>, ApiError> {
    let t = flashclaim_core::ids::TicketRef {
        activity: lab.activity.id,
        code: code.to_string(),
    };
    let (keys, argv) =
        ticket::return_command(&t, &ActivityKeys::new(t.activity), user, Millis(now));
    let reply = run_script(&lab.redis, &RETURN, &keys, &argv).unwrap();
    ticket::decode_ticket_change(&reply).map(|r| r.cloned())
}

#[tokio::test(flavor = "multi_thread")]
async fn a_returned_ticket_puts_the_stock_back_once_and_lets_the_user_claim_again() {
    let mut lab = Lab::new(activity(1, 1)).await;
    let code = claimed(lab.claim("a", 1)).codes[0].clone();
    assert_eq!(lab.claim("b", 1), Err(of("default", ApiError::SoldOut)));
    let before = lab.snapshot().await;
    assert_eq!(
        give_back(&lab, &code, "b", START + 20),
        Err(ApiError::NotFound),
        "not the owner"
    );
    assert_eq!(
        give_back(&lab, "NOPE", "a", START + 20),
        Err(ApiError::NotFound)
    );
    assert_eq!(give_back(&lab, &code, "a", END), Err(ApiError::Ended));
    assert_eq!(lab.snapshot().await, before, "refusals change nothing");
    assert_eq!(
        give_back(&lab, &code, "a", START + 20),
        Ok(Some(Reply::Int(1)))
    );
    let again = give_back(&lab, &code, "a", START + 21).unwrap_err();
    assert_eq!(
        (again.status(), again.to_string()),
        (409, "the ticket is returned".into())
    );
    assert_eq!(lab.stock("default"), 1, "exactly one back");
    assert_eq!(
        lab.int(&["XLEN", &lab.keys().log()]),
        2,
        "claim + return logged"
    );
    claimed(lab.claim("b", 1));
    assert_eq!(
        lab.claim("a", 1).map(|_| ()),
        Err(of("default", ApiError::SoldOut))
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_returned_code_goes_back_to_the_pool() {
    let mut a = activity(1, 1);
    a.ticket_types[0].kind = Kind::Codes;
    let mut lab = Lab::new(a).await;
    pool(&lab, "load", "default", &["ONLY"]);
    claimed(lab.claim("a", 1));
    give_back(&lab, "ONLY", "a", START + 20).unwrap();
    assert_eq!(claimed(lab.claim("b", 1)).codes, vec!["ONLY"]);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_ticket_is_redeemed_once() {
    let mut lab = Lab::new(activity(2, 1)).await;
    let code = claimed(lab.claim("a", 1)).codes[0].clone();
    let t = flashclaim_core::ids::TicketRef {
        activity: lab.activity.id,
        code: code.clone(),
    };
    let redeem = || {
        let (keys, argv) =
            ticket::redeem_command(&t, &ActivityKeys::new(t.activity), Millis(START + 30));
        let reply = run_script(&lab.redis, &REDEEM, &keys, &argv).unwrap();
        ticket::decode_ticket_change(&reply).map(|r| r.cloned())
    };
    assert_eq!(redeem(), Ok(Some(Reply::Bytes(b"a".to_vec()))));
    assert_eq!(redeem().unwrap_err().to_string(), "the ticket is redeemed");
    assert_eq!(
        give_back(&lab, &code, "a", START + 40)
            .unwrap_err()
            .status(),
        409,
        "a used ticket cannot be returned"
    );
    let missing = flashclaim_core::ids::TicketRef {
        activity: lab.activity.id,
        code: "NOPE".into(),
    };
    let (keys, argv) = ticket::redeem_command(
        &missing,
        &ActivityKeys::new(missing.activity),
        Millis(START),
    );
    let reply = run_script(&lab.redis, &REDEEM, &keys, &argv).unwrap();
    assert_eq!(
        ticket::decode_ticket_change(&reply),
        Err(ApiError::NotFound)
    );
}

fn take_pass(lab: &Lab, user: &str, now: i64) -> Result<u16, ApiError> {
    let id = lab.activity.id;
    let (keys, argv) = claim::pass_command(
        id,
        &UserId::parse(user).unwrap(),
        Millis(now),
        2,
        &lab.client.0,
        lab.client.1,
    );
    claim::decode_pass(id, &run_script(&lab.redis, &PASS, &keys, &argv).unwrap()).map(|r| r.status)
}

#[tokio::test(flavor = "multi_thread")]
async fn passes_are_one_per_user_bounded_by_stock_times_factor_and_single_use() {
    let mut a = activity(1, 1);
    a.require_pass = true;
    let mut lab = Lab::new(a).await;
    assert_eq!(lab.claim("a", 1), Err(ApiError::PassRequired));
    assert_eq!(take_pass(&lab, "a", START), Ok(201));
    assert_eq!(take_pass(&lab, "a", START), Ok(200), "one per user");
    assert_eq!(take_pass(&lab, "b", START), Ok(201));
    assert_eq!(
        take_pass(&lab, "c", START),
        Err(ApiError::SoldOut),
        "stock 1 x factor 2"
    );
    assert_eq!(take_pass(&lab, "d", END), Err(ApiError::Ended));
    claimed(lab.claim("a", 1));
    let plain = Lab::new(activity(1, 1)).await;
    let e = take_pass(&plain, "a", START).unwrap_err();
    assert_eq!(
        e.code(),
        "conflict",
        "no passes for an activity without require_pass"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn the_global_rate_limit_sheds_attempts_over_all_users() {
    let mut lab = Lab::new(activity(100, 1)).await;
    lab.global_rate = RateLimit {
        attempts: 3,
        window_ms: 60_000,
    };
    for u in ["a", "b", "c"] {
        claimed(lab.claim(u, 1));
    }
    match lab.claim("d", 1) {
        Err(ApiError::RateLimited { retry_after_secs }) => {
            assert!((1..=60).contains(&retry_after_secs))
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(lab.stock("default"), 97);
}

#[tokio::test(flavor = "multi_thread")]
async fn the_drain_reads_in_pairs_acknowledges_and_empties_the_log() {
    let mut lab = Lab::new(activity(10, 1)).await;
    for u in ["a", "b", "c"] {
        claimed(lab.claim(u, 1));
    }
    let log = vec![lab.keys().log()];
    let read = |consumer: &str, count: i64, idle: i64| lab.drain_read(consumer, count, idle);
    let first = read("run-1", 2, 60_000);
    assert_eq!(first.entries.len(), 2);
    let LogEvent::Claim {
        user,
        activity,
        codes,
        ..
    } = &first.entries[0].event
    else {
        panic!("{:?}", first.entries[0].event)
    };
    assert_eq!(
        (user.as_str(), activity.as_str(), codes.len()),
        ("a", "7", 1)
    );
    // Another run does not take entries the first is still working on.
    let second = read("run-2", 10, 60_000);
    assert_eq!(second.entries.len(), 1);
    assert_eq!(read("run-3", 10, 60_000).entries.len(), 0);

    let mut ack = vec![Arg::from(DRAIN_GROUP)];
    ack.extend(first.ids().into_iter().map(Arg::from));
    let reply = run_script(&lab.redis, &DRAIN_ACK, &log, &ack).unwrap();
    assert_eq!(decode_ack(&reply), Some((2, 1)));
}

#[tokio::test(flavor = "multi_thread")]
async fn entries_of_a_run_that_died_are_taken_over_after_the_timeout() {
    let mut lab = Lab::new(activity(10, 1)).await;
    claimed(lab.claim("a", 1));
    let read = |consumer: &str, idle: i64| lab.drain_read(consumer, 10, idle);
    let died = read("run-died", 60_000);
    assert_eq!(died.entries.len(), 1);
    assert_eq!(
        read("run-next", 60_000).entries.len(),
        0,
        "not before the timeout"
    );
    tokio::time::sleep(std::time::Duration::from_millis(30)).await;
    let taken = read("run-next", 20);
    assert_eq!(taken.ids(), died.ids());
}

#[tokio::test(flavor = "multi_thread")]
async fn noscript_falls_back_to_eval_after_a_script_flush() {
    let mut lab = Lab::new(activity(10, 1)).await;
    lab.cmd(&["SCRIPT", "FLUSH"]);
    claimed(lab.claim("a", 1));
    let loaded = lab.cmd(&["SCRIPT", "EXISTS", CLAIM.sha1]);
    assert_eq!(
        loaded,
        vec![Reply::Int(1)],
        "EVAL loaded the script; its SHA1 matches Redis's"
    );
}

/// An activity of two types from a create request: `vip` (codes, stock 3, 2 each, open
/// 00:20 to 00:30) and `std` (counter, stock 5, 2 each), at most 3 per user over both.
fn two_types() -> Activity {
    NewActivity::parse(
        br#"{"name":"lab","starts_at":"1970-01-01T00:16:40Z","ends_at":"1970-01-01T00:33:20Z",
             "per_user_limit":3,"ticket_types":[
               {"key":"vip","name":"VIP","stock_total":3,"per_user_limit":2,"kind":"codes",
                "starts_at":"1970-01-01T00:20:00Z","ends_at":"1970-01-01T00:30:00Z"},
               {"key":"std","name":"Standard","stock_total":5,"per_user_limit":2}]}"#,
    )
    .unwrap()
    .into_activity(ActivityId::parse("7").unwrap(), Status::Published)
}

const VIP_OPENS: i64 = 1_200_000;
const VIP_CLOSES: i64 = 1_800_000;

#[tokio::test(flavor = "multi_thread")]
async fn a_type_opens_and_closes_inside_the_activitys_window_and_says_which_type() {
    let mut lab = Lab::new(two_types()).await;
    pool(&lab, "load", "vip", &["V1", "V2", "V3"]);
    let before = lab.snapshot().await;
    assert_eq!(
        lab.claim_type_at("a", Some("vip"), 1, VIP_OPENS - 1, None),
        Err(of(
            "vip",
            ApiError::NotStarted {
                starts_at: Millis(VIP_OPENS)
            }
        ))
    );
    assert_eq!(
        lab.claim_type_at("a", Some("vip"), 1, VIP_CLOSES, None),
        Err(of("vip", ApiError::Ended))
    );
    assert_eq!(lab.snapshot().await, before, "refusals change nothing");
    // The other type follows the activity's window meanwhile.
    claimed(lab.claim_type_at("a", Some("std"), 1, START, None));
    claimed(lab.claim_type_at("b", Some("vip"), 1, VIP_OPENS, None));
    claimed(lab.claim_type_at("c", Some("vip"), 1, VIP_CLOSES - 1, None));
    claimed(lab.claim_type_at("d", Some("std"), 1, VIP_CLOSES, None));
    assert_eq!(
        lab.claim_type_at("d", Some("std"), 1, END, None),
        Err(ApiError::Ended),
        "the activity's own end names no type"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn the_activity_wide_limit_is_reached_exactly_across_two_types() {
    let mut lab = Lab::new(two_types()).await;
    pool(&lab, "load", "vip", &["V1", "V2", "V3"]);
    let now = VIP_OPENS + 10;
    claimed(lab.claim_type_at("a", Some("vip"), 2, now, None));
    assert_eq!(
        lab.claim_type_at("a", Some("vip"), 1, now, None),
        Err(of(
            "vip",
            ApiError::LimitReached {
                limit: 2,
                scope: LimitScope::TicketType
            }
        )),
        "the type's own limit"
    );
    let third = claimed(lab.claim_type_at("a", Some("std"), 1, now, None));
    assert_eq!(third.ticket_type, "std", "3 of 3: exactly the limit");
    let before = lab.snapshot().await;
    assert_eq!(
        lab.claim_type_at("a", Some("std"), 1, now, None),
        Err(of(
            "std",
            ApiError::LimitReached {
                limit: 3,
                scope: LimitScope::Activity
            }
        )),
        "std still allows 1 more of its own, the activity does not"
    );
    assert_eq!(lab.snapshot().await, before);
    let k = lab.keys();
    assert_eq!(lab.int(&["HGET", &k.claimed(), "a"]), 3);
    assert_eq!(lab.int(&["HGET", &k.claimed(), "a|vip"]), 2);
    assert_eq!(lab.int(&["HGET", &k.claimed(), "a|std"]), 1);
    assert_eq!(
        lab.claim_type_at("b", Some("std"), 3, now, None)
            .unwrap_err()
            .code(),
        "invalid_request",
        "more than the type allows at once"
    );
    claimed(lab.claim_type_at("b", Some("std"), 2, now, None));
}

#[tokio::test(flavor = "multi_thread")]
async fn one_types_empty_pool_is_sold_out_while_the_other_type_has_stock() {
    let mut lab = Lab::new(two_types()).await;
    pool(&lab, "load", "vip", &["SAVE10-AB12"]);
    let now = VIP_OPENS + 10;
    let c = claimed(lab.claim_type_at("a", Some("vip"), 1, now, None));
    assert_eq!((c.codes[0].as_str(), c.pooled), ("SAVE10-AB12", true));
    assert_eq!(lab.stock("vip"), 2, "stock is left, codes are not");
    let before = lab.snapshot().await;
    assert_eq!(
        lab.claim_type_at("b", Some("vip"), 1, now, None),
        Err(of("vip", ApiError::SoldOut))
    );
    assert_eq!(lab.snapshot().await, before);
    let std = claimed(lab.claim_type_at("b", Some("std"), 2, now, None));
    assert_eq!((std.stock_left, std.pooled), (3, false));
    assert_eq!(lab.stock("vip"), 2);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_claim_without_a_type_needs_an_activity_of_one_type_and_an_unknown_type_is_refused() {
    let mut lab = Lab::new(two_types()).await;
    let before = lab.snapshot().await;
    assert_eq!(
        lab.claim("a", 1),
        Err(ApiError::UnknownTicketType {
            named: false,
            offered: vec!["vip".into(), "std".into()]
        })
    );
    assert_eq!(
        lab.claim_type("a", "balcony", 1),
        Err(ApiError::UnknownTicketType {
            named: true,
            offered: vec!["vip".into(), "std".into()]
        })
    );
    assert_eq!(lab.snapshot().await, before);
    // One type, whatever its key: a claim may leave it out.
    let mut one = two_types();
    one.ticket_types.remove(0);
    let mut lab = Lab::new(one).await;
    assert_eq!(claimed(lab.claim("a", 1)).ticket_type, "std");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_return_puts_the_stock_back_to_its_own_type() {
    let mut lab = Lab::new(two_types()).await;
    let code = claimed(lab.claim_type("a", "std", 2)).codes[0].clone();
    assert_eq!(lab.stock("std"), 3);
    let back = give_back(&lab, &code, "a", START + 20).unwrap();
    assert_eq!(back, Some(Reply::Int(4)), "std's stock");
    assert_eq!(lab.stock("std"), 4);
    assert_eq!(lab.stock("vip"), 3, "the other type is untouched");
    let k = lab.keys();
    assert_eq!(lab.int(&["HGET", &k.claimed(), "a|std"]), 1);
    assert_eq!(lab.int(&["HGET", &k.claimed(), "a"]), 1);
    let batch = lab.drain_read("run", 10, 60_000);
    let LogEvent::Claim { ticket_type, .. } = &batch.entries[0].event else {
        panic!("{:?}", batch.entries[0].event)
    };
    assert_eq!(ticket_type.as_deref(), Some("std"), "the log says the type");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_returned_pool_code_goes_back_to_its_types_pool() {
    let mut lab = Lab::new(two_types()).await;
    pool(&lab, "load", "vip", &["ONLY"]);
    let now = VIP_OPENS + 10;
    claimed(lab.claim_type_at("a", Some("vip"), 1, now, None));
    give_back(&lab, "ONLY", "a", now).unwrap();
    let again = claimed(lab.claim_type_at("b", Some("vip"), 1, now, None));
    assert_eq!(
        (again.codes[0].as_str(), again.ticket_type.as_str()),
        ("ONLY", "vip")
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_replayed_claim_names_its_type_and_that_types_stock() {
    let mut lab = Lab::new(two_types()).await;
    let first = claimed(lab.claim_type_at("a", Some("std"), 1, START + 1, Some("k")));
    match lab.claim_type_at("a", Some("std"), 1, START + 2, Some("k")) {
        Ok(ClaimOutcome::Replayed(again)) => {
            assert_eq!((again.ticket_type.as_str(), again.stock_left), ("std", 4));
            assert_eq!(again.codes, first.codes);
        }
        other => panic!("{other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_republish_keeps_every_types_stock() {
    let mut lab = Lab::new(two_types()).await;
    claimed(lab.claim_type("a", "std", 2));
    assert_eq!(lab.publish_expect(false), 3 + 3);
    assert_eq!((lab.stock("std"), lab.stock("vip")), (3, 3));
}

fn rate_limited_secs(outcome: Result<ClaimOutcome, ApiError>) -> u64 {
    match outcome {
        Err(ApiError::RateLimited { retry_after_secs }) => retry_after_secs,
        other => panic!("expected rate_limited, got {other:?}"),
    }
}

/// Seed 003's `limit_req`: 1 attempt per second per address, a burst of 3.
fn per_address(lab: &mut Lab, stored: &str) {
    lab.client = (
        stored.into(),
        claim::AddressLimit::parse("1/1000/3").unwrap(),
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn an_address_gets_its_burst_then_one_attempt_per_refill() {
    let mut lab = Lab::new(activity(100, 1)).await;
    per_address(&mut lab, "addr-a");
    let t = START + 10;
    for u in ["a1", "a2", "a3"] {
        claimed(lab.claim_at(u, 1, t, None));
    }
    let before = lab.snapshot().await;
    assert_eq!(rate_limited_secs(lab.claim_at("a4", 1, t, None)), 1);
    assert_eq!(
        lab.snapshot().await,
        before,
        "a refusal changed nothing but the counters"
    );
    // 999 ms later the bucket holds 0.999 of a token: still refused, for the last 1 ms.
    assert_eq!(rate_limited_secs(lab.claim_at("a4", 1, t + 999, None)), 1);
    claimed(lab.claim_at("a4", 1, t + 1_000, None));
    rate_limited_secs(lab.claim_at("a5", 1, t + 1_000, None));
    // Quiet long enough, the bucket is full again, and no fuller than the burst.
    for u in ["b1", "b2", "b3"] {
        claimed(lab.claim_at(u, 1, t + 60_000, None));
    }
    rate_limited_secs(lab.claim_at("b4", 1, t + 60_000, None));
    assert_eq!(lab.stock("default"), 100 - 7);
}

#[tokio::test(flavor = "multi_thread")]
async fn addresses_have_separate_buckets_and_an_ipv6_slash_64_is_one_address() {
    use flashclaim_core::client_addr::ClientAddr;
    let stored = |ip: &str| ClientAddr::of(ip.parse().unwrap()).hashed(b"lab secret");
    let mut lab = Lab::new(activity(100, 1)).await;
    let t = START + 10;
    per_address(&mut lab, &stored("2001:db8:5:6::1"));
    for u in ["a1", "a2", "a3"] {
        claimed(lab.claim_at(u, 1, t, None));
    }
    // Another address in the same /64: the same bucket, already empty.
    per_address(&mut lab, &stored("2001:db8:5:6:ffff::9"));
    rate_limited_secs(lab.claim_at("a4", 1, t, None));
    // The next /64 and an IPv4 address each have a full bucket.
    for (ip, users) in [
        ("2001:db8:5:7::1", ["b1", "b2", "b3"]),
        ("198.51.100.7", ["c1", "c2", "c3"]),
    ] {
        per_address(&mut lab, &stored(ip));
        for u in users {
            claimed(lab.claim_at(u, 1, t, None));
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn passes_and_claims_from_one_address_draw_on_one_bucket() {
    let mut a = activity(10, 1);
    a.require_pass = true;
    let mut lab = Lab::new(a).await;
    per_address(&mut lab, "addr-p");
    let t = START + 10;
    assert_eq!(take_pass(&lab, "p1", t), Ok(201));
    assert_eq!(take_pass(&lab, "p2", t), Ok(201));
    claimed(lab.claim_at("p1", 1, t, None));
    assert_eq!(
        take_pass(&lab, "p3", t),
        Err(ApiError::RateLimited {
            retry_after_secs: 1
        })
    );
    rate_limited_secs(lab.claim_at("p2", 1, t, None));
    lab.client.0 = "addr-q".into();
    assert_eq!(take_pass(&lab, "p3", t), Ok(201));
}

#[tokio::test(flavor = "multi_thread")]
async fn the_claim_log_names_the_client_address_for_the_operator() {
    let mut lab = Lab::new(activity(10, 1)).await;
    lab.client = ("f00dfeed".into(), claim::AddressLimit::OFF);
    claimed(lab.claim("u1", 1));
    lab.client = (String::new(), claim::AddressLimit::OFF);
    claimed(lab.claim("u2", 1));
    let batch = lab.drain_read("reader", 10, 60_000);
    let addrs: Vec<Option<String>> = batch
        .entries
        .iter()
        .map(|e| match &e.event {
            LogEvent::Claim { addr, .. } => addr.clone(),
            other => panic!("{other:?}"),
        })
        .collect();
    assert_eq!(addrs, vec![Some("f00dfeed".to_string()), None]);
}

/// login.lua "try" on fresh counters: `Ok(())` admitted, `Err(wait_ms)` refused.
struct Login {
    redis: NativeRedis,
    conn: redis::aio::MultiplexedConnection,
    keys: Vec<String>,
    per_user: flashclaim_core::throttle::LoginThrottle,
    per_address: flashclaim_core::throttle::LoginThrottle,
}

impl Login {
    async fn new(per_user: i64, per_address: i64) -> Login {
        use flashclaim_core::throttle::{self, LoginThrottle};
        let (_, conn) = fresh_redis_db().await;
        Login {
            redis: NativeRedis::new(conn.clone()),
            conn,
            keys: throttle::login_keys("victim", "addr-1"),
            per_user: LoginThrottle::after(per_user),
            per_address: LoginThrottle::after(per_address),
        }
    }

    fn run(&self, count: flashclaim_core::throttle::Count, now: i64) -> Vec<Reply> {
        use flashclaim_core::{scripts::LOGIN, throttle};
        let args = throttle::login_args(count, now, self.per_user, self.per_address);
        run_script(&self.redis, &LOGIN, &self.keys, &args).unwrap()
    }

    fn attempt(&self, now: i64) -> Result<(), i64> {
        match self
            .run(flashclaim_core::throttle::Count::Try, now)
            .as_slice()
        {
            [Reply::Int(1), Reply::Int(0)] => Ok(()),
            [Reply::Int(0), Reply::Int(wait)] if *wait > 0 => Err(*wait),
            other => panic!("login.lua answered {other:?}"),
        }
    }

    /// Failures counted for the username and the address.
    async fn counts(&self) -> (Option<i64>, Option<i64>) {
        let mut conn = self.conn.clone();
        let mut n = Vec::new();
        for key in &self.keys {
            let v: Option<i64> = redis::cmd("HGET")
                .arg(key)
                .arg("n")
                .query_async(&mut conn)
                .await
                .unwrap();
            n.push(v);
        }
        (n[0], n[1])
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn login_attempts_are_admitted_up_to_the_free_failures_then_wait_one_second_doubling() {
    let l = Login::new(3, 100).await;
    for _ in 0..3 {
        assert_eq!(l.attempt(10_000), Ok(()));
    }
    // Refused attempts count nothing: the wait stays one second from the last admitted one.
    assert_eq!(l.attempt(10_000), Err(1_000));
    assert_eq!(l.attempt(10_400), Err(600));
    assert_eq!(l.counts().await, (Some(3), Some(3)));
    // The window's edge: refused 1 ms before, admitted at it; the next wait is 2 s, then 4 s.
    assert_eq!(l.attempt(10_999), Err(1));
    assert_eq!(l.attempt(11_000), Ok(()));
    assert_eq!(l.attempt(11_000), Err(2_000));
    assert_eq!(l.attempt(13_000), Ok(()));
    assert_eq!(l.attempt(13_000), Err(4_000));
}

#[tokio::test(flavor = "multi_thread")]
async fn login_waits_never_grow_past_fifteen_minutes() {
    let l = Login::new(1, 100).await;
    let mut now = 0;
    for _ in 0..25 {
        match l.attempt(now) {
            Ok(()) => {}
            Err(wait) => {
                assert!(wait <= 15 * 60_000, "{wait}");
                now += wait;
            }
        }
    }
    assert_eq!(l.attempt(now), Err(15 * 60_000));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_burst_of_attempts_gets_exactly_the_free_failures_through() {
    // Counted on admission, before any hash: 50 guesses at the same instant, 5 hashed.
    let l = Login::new(5, 100).await;
    let admitted = (0..50).filter(|_| l.attempt(1_000).is_ok()).count();
    assert_eq!(admitted, 5);
}

#[tokio::test(flavor = "multi_thread")]
async fn the_address_is_throttled_on_its_own_count_across_usernames() {
    use flashclaim_core::throttle;
    let mut l = Login::new(100, 4).await;
    for i in 0..4 {
        l.keys[0] = throttle::login_keys(&format!("user{i}"), "addr-1").remove(0);
        assert_eq!(l.attempt(5_000), Ok(()));
    }
    l.keys[0] = throttle::login_keys("someone-else", "addr-1").remove(0);
    assert_eq!(l.attempt(5_000), Err(1_000));
    // Another address is not.
    l.keys[1] = throttle::login_keys("x", "addr-2").remove(1);
    assert_eq!(l.attempt(5_000), Ok(()));
}

#[tokio::test(flavor = "multi_thread")]
async fn zero_free_failures_turns_a_key_off() {
    let l = Login::new(0, 0).await;
    for _ in 0..100 {
        assert_eq!(l.attempt(1_000), Ok(()));
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_quiet_hour_forgets_a_run_and_a_success_clears_the_username_only() {
    use flashclaim_core::throttle::{Count, LoginThrottle};
    let l = Login::new(2, 100).await;
    let forget = LoginThrottle::PER_USER.forget_after_ms;
    assert_eq!(l.attempt(0), Ok(()));
    assert_eq!(l.attempt(0), Ok(()));
    assert_eq!(l.attempt(500), Err(500));
    // One ms short of an hour's quiet the run goes on (its wait is long over)...
    assert_eq!(l.attempt(forget - 1), Ok(()));
    assert_eq!(l.counts().await, (Some(3), Some(3)));
    // ...after an hour's quiet it starts again from zero.
    let later = 2 * forget - 1;
    assert_eq!(l.attempt(later), Ok(()));
    assert_eq!(l.counts().await, (Some(1), Some(1)));
    let forget = later;
    // The right password: the username starts again, the address gets its failure back.
    assert!(l.run(Count::Clear, forget + 1).is_empty());
    assert_eq!(l.counts().await, (None, Some(0)));
}

// ---- /metrics: the counters the scripts keep (flashclaim_core::metrics) ----

impl Lab {
    /// The activity's metrics hash, field by field.
    fn counters(&self) -> std::collections::BTreeMap<String, i64> {
        let reply = self.cmd(&["HGETALL", &self.keys().metrics()]);
        flashclaim_core::metrics::pairs(&reply)
            .into_iter()
            .collect()
    }

    fn counter(&self, field: &str) -> i64 {
        self.counters().get(field).copied().unwrap_or(0)
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn every_claim_answer_is_counted_by_outcome_and_type_in_the_same_script() {
    let mut lab = Lab::new(activity(2, 1)).await;
    claimed(lab.claim("a", 1));
    assert_eq!(lab.claim("a", 1).unwrap_err().code(), "limit_reached");
    claimed(lab.claim("b", 1));
    assert_eq!(lab.claim("c", 1).unwrap_err().code(), "sold_out");
    assert_eq!(
        lab.claim_at("d", 1, START - 1, None).unwrap_err().code(),
        "not_started"
    );
    assert_eq!(lab.claim_at("d", 1, END, None).unwrap_err().code(), "ended");
    assert_eq!(
        lab.claim_type("d", "nope", 1).unwrap_err().code(),
        "invalid_request"
    );
    lab.cmd(&["SADD", &lab.keys().deny(), "evil"]);
    assert_eq!(lab.claim("evil", 1).unwrap_err().code(), "forbidden");
    let expected: std::collections::BTreeMap<String, i64> = [
        ("claimed:default", (2 << 32) + 2),
        ("answers:limit_reached:default", 1),
        ("answers:sold_out:default", 1),
        ("answers:blacklisted:default", 1),
        // Before a type is chosen, and never the made-up type's name.
        ("answers:not_started:", 1),
        ("answers:ended:", 1),
        ("answers:invalid:", 1),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect();
    assert_eq!(lab.counters(), expected);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_replay_and_a_rate_limit_are_counted_apart_from_claims_and_say_which_limit() {
    let mut lab = Lab::new(activity(5, 5)).await;
    claimed(lab.claim_at("a", 2, START + 10, Some("k1")));
    assert!(matches!(
        lab.claim_at("a", 2, START + 10, Some("k1")),
        Ok(ClaimOutcome::Replayed(_))
    ));
    lab.rate = RateLimit::parse("1/1000").unwrap();
    claimed(lab.claim("b", 1));
    assert_eq!(lab.claim("b", 1).unwrap_err().code(), "rate_limited");
    let claimed = flashclaim_core::metrics::split_claimed(lab.counter("claimed:default"));
    assert_eq!(claimed, (2, 3), "two claims, three tickets");
    assert_eq!(lab.counter("answers:replayed:default"), 1);
    assert_eq!(lab.counter("answers:rate_limited:default"), 1);
    assert_eq!(lab.counter("limited:user"), 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn answers_given_without_redis_are_added_by_the_next_claim_of_an_existing_activity() {
    let lab = Lab::new(activity(5, 5)).await;
    let user = UserId::parse("u").unwrap();
    let command = |id: ActivityId| {
        ClaimCommand::new(
            id,
            &user,
            ClaimRequest::parse(b"{}").unwrap(),
            None,
            Millis(START + 10),
            "claim-x",
            &["PX".into()],
            RateLimit::OFF,
            RateLimit::OFF,
        )
        .with_client(id, "", claim::AddressLimit::OFF)
        .with_unreported((3, 1))
    };
    let cmd = command(lab.activity.id);
    claimed(claim::decode(
        &run_script(&lab.redis, &CLAIM, &cmd.keys, &cmd.argv).unwrap(),
    ));
    assert_eq!(lab.counter("answers:unavailable:"), 3);
    assert_eq!(lab.counter("answers:unknown:"), 1);
    // A made-up id gets no metrics hash, whatever the caller had to report.
    let made_up = ActivityId::parse("999").unwrap();
    let cmd = command(made_up);
    let reply = run_script(&lab.redis, &CLAIM, &cmd.keys, &cmd.argv).unwrap();
    assert_eq!(claim::decode(&reply), Err(ApiError::NotFound));
    let exists = lab.int(&["EXISTS", &ActivityKeys::new(made_up).metrics()]);
    assert_eq!(exists, 0);
}

#[tokio::test(flavor = "multi_thread")]
async fn returns_redemptions_and_refused_passes_are_counted_per_type() {
    let mut a = activity(3, 3);
    a.require_pass = true;
    let mut lab = Lab::new(a).await;
    assert_eq!(take_pass(&lab, "a", START + 1), Ok(201));
    let code = claimed(lab.claim("a", 1)).codes[0].clone();
    give_back(&lab, &code, "a", START + 20).unwrap();
    assert_eq!(take_pass(&lab, "b", START + 21), Ok(201));
    let code = claimed(lab.claim("b", 1)).codes[0].clone();
    let t = flashclaim_core::ids::TicketRef {
        activity: lab.activity.id,
        code,
    };
    let (keys, argv) =
        ticket::redeem_command(&t, &ActivityKeys::new(t.activity), Millis(START + 30));
    run_script(&lab.redis, &REDEEM, &keys, &argv).unwrap();
    per_address(&mut lab, "addr");
    let refused = (0..10)
        .map(|_| take_pass(&lab, "c", START + 40))
        .filter(|r| matches!(r, Err(ApiError::RateLimited { .. })))
        .count() as i64;
    assert!(refused > 0);
    assert_eq!(lab.counter("returned:default"), 1);
    assert_eq!(lab.counter("redeemed:default"), 1);
    assert_eq!(lab.counter("limited:pass_address"), refused);
}

#[tokio::test(flavor = "multi_thread")]
async fn metrics_lua_reads_back_what_the_scrape_renders() {
    use flashclaim_core::metrics::ActivityReading;
    use flashclaim_core::scripts::METRICS;
    let mut lab = Lab::new(activity(5, 5)).await;
    claimed(lab.claim("a", 2));
    let k = lab.keys();
    let keys = [k.meta(), k.stocks(), k.metrics(), k.passes(), k.log()];
    let reply = run_script(&lab.redis, &METRICS, &keys, &[]).unwrap();
    let id = lab.activity.id.get();
    let reading = ActivityReading::decode(id, &reply).unwrap();
    assert_eq!(reading.status, "published");
    assert_eq!(reading.ends_at_ms, END);
    assert_eq!(reading.types, vec!["default"]);
    assert_eq!(reading.stocks, vec![("default".to_string(), 3)]);
    assert_eq!(reading.backlog, 1);
    assert!(reading.oldest_entry.is_some());
    assert!(reading
        .counters
        .contains(&("claimed:default".to_string(), (1 << 32) + 2)));
    // An activity Redis does not hold reads as nothing shown.
    let gone = ActivityKeys::new(ActivityId::parse("998").unwrap());
    let keys = [
        gone.meta(),
        gone.stocks(),
        gone.metrics(),
        gone.passes(),
        gone.log(),
    ];
    let reply = run_script(&lab.redis, &METRICS, &keys, &[]).unwrap();
    let reading = ActivityReading::decode(998, &reply).unwrap();
    assert!(!reading.shown(START));
}

#[tokio::test(flavor = "multi_thread")]
async fn log_ins_are_counted_as_checked_throttled_and_succeeded() {
    let l = Login::new(1, 100).await;
    assert_eq!(l.attempt(10_000), Ok(()));
    assert!(l.attempt(10_001).is_err());
    l.run(flashclaim_core::throttle::Count::Clear, 10_002);
    let reply = l
        .redis
        .execute(
            "HGETALL",
            &[Arg::from(flashclaim_core::metrics::GLOBAL_KEY)],
        )
        .unwrap();
    let mut counts = flashclaim_core::metrics::pairs(&reply);
    counts.sort();
    assert_eq!(
        counts,
        vec![
            ("login:checked".to_string(), 1),
            ("login:succeeded".to_string(), 1),
            ("login:throttled".to_string(), 1),
        ]
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn tally_adds_to_counters_and_records_the_last_success() {
    use flashclaim_core::drain::DrainReport;
    use flashclaim_core::metrics::{drain_tally, pairs, GLOBAL_KEY};
    use flashclaim_core::scripts::TALLY;
    let (_, conn) = fresh_redis_db().await;
    let redis = NativeRedis::new(conn);
    let keys = [GLOBAL_KEY.to_string()];
    let ok = Ok(DrainReport {
        entries: 2,
        claims: 2,
        tickets: 3,
        ..DrainReport::default()
    });
    run_script(&redis, &TALLY, &keys, &drain_tally(&ok, 5_000)).unwrap();
    let failed = Err(ApiError::Unavailable("postgres"));
    run_script(&redis, &TALLY, &keys, &drain_tally(&failed, 6_000)).unwrap();
    let reply = redis.execute("HGETALL", &[Arg::from(GLOBAL_KEY)]).unwrap();
    let mut counts = pairs(&reply);
    counts.sort();
    let expected: Vec<(String, i64)> = [
        ("drain:claims", 2),
        ("drain:entries", 2),
        ("drain:failures", 1),
        ("drain:last_success_ms", 5_000),
        ("drain:runs", 2),
        ("drain:tickets", 3),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect();
    assert_eq!(counts, expected);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_refusal_brings_the_snapshot_the_cache_answers_the_same_refusal_from_and_changes_nothing()
{
    let mut lab = Lab::new(two_types()).await;
    lab.cache = Some(ClaimCache::default());
    pool(&lab, "load", "vip", &["V1", "V2"]);
    let early = VIP_OPENS - 100;
    let refused = Err(of(
        "vip",
        ApiError::NotStarted {
            starts_at: Millis(VIP_OPENS),
        },
    ));
    assert_eq!(lab.claim_type_at("a", Some("vip"), 1, early, None), refused);
    assert_eq!(
        lab.cached("b", Some("vip"), true, early + 1),
        Some(refused),
        "nobody has claimed"
    );
    assert_eq!(
        lab.cached("b", Some("std"), false, early + 1),
        None,
        "std is open"
    );

    let now = VIP_OPENS + 10;
    claimed(lab.claim_type_at("a", Some("vip"), 1, now, None));
    claimed(lab.claim_type_at("b", Some("vip"), 1, now, None));
    let before = lab.snapshot().await;
    // The pool is empty though the stock says 1 (three stock, two codes uploaded).
    assert_eq!(
        lab.claim_type_at("c", Some("vip"), 1, now, None),
        Err(of("vip", ApiError::SoldOut))
    );
    assert_eq!(
        lab.snapshot().await,
        before,
        "a refusal with a snapshot changes nothing"
    );
    assert_eq!(
        lab.cached("d", Some("vip"), false, now + 1),
        Some(Err(of("vip", ApiError::SoldOut)))
    );
    assert_eq!(
        lab.cached("d", Some("vip"), true, now + 1),
        Some(Err(of("vip", ApiError::SoldOut)))
    );
    assert_eq!(
        lab.cached("a", Some("vip"), true, now + 1),
        None,
        "a claimer's key: the script"
    );
    assert_eq!(
        lab.cached("d", Some("std"), false, now + 1),
        None,
        "std has stock"
    );
    assert_eq!(
        lab.cached("d", Some("vip"), false, now + 250),
        None,
        "past the bound"
    );

    // Without ARGV[19] the same refusal comes bare.
    lab.cache = None;
    assert_eq!(
        lab.claim_type_at("c", Some("vip"), 1, now, None),
        Err(of("vip", ApiError::SoldOut))
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn the_generation_moves_with_every_change_a_claim_cache_holds_and_never_with_a_refusal() {
    let mut lab = Lab::new(activity(1, 1)).await;
    let gen = |lab: &Lab| lab.int(&["HGET", &lab.keys().meta(), "gen"]);
    let clock_us = |lab: &Lab| lab.int(&["TIME"]) * 1_000_000;
    let published = gen(&lab);
    assert!(
        published >= clock_us(&lab) - 60_000_000,
        "from the server's clock: {published}"
    );
    lab.publish_expect(false);
    let republished = gen(&lab);
    assert!(republished > published, "a republish moves it on");

    let code = claimed(lab.claim("a", 1)).codes[0].clone();
    assert_eq!(gen(&lab), republished + 1, "a claim");
    lab.cache = Some(ClaimCache::default());
    assert_eq!(lab.claim("b", 1), Err(of("default", ApiError::SoldOut)));
    assert!(matches!(
        lab.claim("a", 1),
        Err(ApiError::OfType { error, .. }) if matches!(*error, ApiError::LimitReached { .. })
    ));
    assert_eq!(gen(&lab), republished + 1, "refusals leave it");

    // The cache learned the sell-out at that generation: past the bound it asks for it,
    // and a return moves it on.
    let user = UserId::parse("c").unwrap();
    let request = ClaimRequest {
        quantity: 1,
        ticket_type: None,
    };
    let ask = flashclaim_core::claim_cache::Ask {
        request: &request,
        user: &user,
        keyed: false,
    };
    let late = Millis(START + 10 + 1000);
    let cache = lab.cache.as_ref().unwrap();
    assert_eq!(
        cache.to_confirm(lab.activity.id, ask, late, 1000),
        Some(republished + 1),
        "the generation the snapshot holds is the one in Redis"
    );
    give_back(&lab, &code, "a", START + 20).unwrap();
    assert_eq!(gen(&lab), republished + 2, "a return");

    // A code pool's upload.
    let mut pooled = Lab::new(two_types()).await;
    let before = gen(&pooled);
    pool(&pooled, "load", "vip", &["V1"]);
    pool(&pooled, "add", "vip", &["V2"]);
    assert_eq!(gen(&pooled), before + 2, "a load and an upload");
    claimed(pooled.claim_type_at("a", Some("vip"), 1, VIP_OPENS + 10, None));
    assert_eq!(gen(&pooled), before + 3);

    // Redis lost the activity and it was loaded again: never a generation seen before.
    pooled.cmd(&["FLUSHDB"]);
    pooled.publish_expect(true);
    assert!(
        gen(&pooled) > before + 3,
        "{} after {}",
        gen(&pooled),
        before + 3
    );
}

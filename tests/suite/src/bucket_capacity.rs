//! One hot activity's Redis-side capacity with its stock split into B stock buckets
//! (`flashclaim_core::buckets`, issue 23) on a Redis Cluster of P primaries, for `make
//! bench`: claim.lua's EVALSHA sent straight to the primary of each claim's home bucket by
//! the native client, every claim a new user (per-user limit 1) in a bucket with stock, no
//! rate limits: the steady state of a hot sale. Enough claims are in flight that Redis, not
//! the client, is busy.
//!
//! Wall-clock claims/s depends on how many cores the machine running it has; what each
//! primary's main thread spent (`INFO cpu`) and how many scripts it ran (`INFO
//! commandstats`) do not: the claims/s the activity would sustain with a core per primary
//! is the claims divided by the CPU seconds of the busiest primary.
//!
//! After each run the buckets are read back: the stock left adds up over the buckets, and
//! each bucket took exactly its own claims' stock and holds exactly their tickets, claimers
//! and log entries, none twice. Every call to Redis is bounded in time.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use flashclaim_core::activity::{Activity, Kind, Status};
use flashclaim_core::buckets;
use flashclaim_core::claim::{ClaimCommand, ClaimRequest, RateLimit};
use flashclaim_core::cluster::key_slot;
use flashclaim_core::ids::{ActivityId, UserId};
use flashclaim_core::keys::ActivityKeys;
use flashclaim_core::scripts::{Arg, CLAIM, PUBLISH};
use flashclaim_core::ticket_type::TicketType;
use flashclaim_core::time::Millis;
use redis::aio::MultiplexedConnection;

use crate::cluster::RedisCluster;

/// The activity's stock: no bucket runs out, so no claim borrows.
pub const STOCK: i64 = 50_000_000;
/// Connections to each primary that serves a bucket.
pub const CONNECTIONS: usize = 32;
/// Claims in flight on each connection (pipelined on it).
pub const IN_FLIGHT: usize = 2;
/// The longest a claim's answer may take before the run fails.
const ANSWER_WITHIN: Duration = Duration::from_secs(10);
/// The longest a connection or a read of a node's counters may take.
const ASK_WITHIN: Duration = Duration::from_secs(5);

/// What one node's counters moved by over a span.
#[derive(Debug, Clone, Copy, Default)]
pub struct NodeUse {
    /// CPU seconds of the main thread (`used_cpu_{user,sys}_main_thread`; the whole
    /// process's on a Redis before 7).
    pub cpu: f64,
    /// EVALSHA calls, and the µs Redis spent inside them (`cmdstat_evalsha`).
    pub scripts: u64,
    pub script_usec: u64,
}

impl std::ops::AddAssign for NodeUse {
    fn add_assign(&mut self, o: NodeUse) {
        self.cpu += o.cpu;
        self.scripts += o.scripts;
        self.script_usec += o.script_usec;
    }
}

/// One run of claims on a configuration.
#[derive(Debug, Clone)]
pub struct Run {
    pub claims: u64,
    pub wall: Duration,
    /// By node of the cluster.
    pub nodes: Vec<NodeUse>,
    /// CPU seconds of this process (the client) meanwhile.
    pub client_cpu: f64,
}

/// One configuration: a cluster of `primaries` primaries and no replica, and one activity
/// published in `buckets` buckets on it.
pub struct HotActivity {
    pub buckets: i64,
    pub primaries: usize,
    cluster: RedisCluster,
    activity: Activity,
    /// The node serving each bucket's slot.
    pub owners: Vec<usize>,
    /// Connections to each node that serves a bucket.
    conns: BTreeMap<usize, Vec<MultiplexedConnection>>,
    users: u64,
    /// Claims that succeeded in each bucket so far (warm-ups too).
    claimed: Vec<u64>,
}

impl HotActivity {
    /// Starts the cluster, publishes the activity (`id`) in every bucket on the bucket's
    /// primary, loads claim.lua there and opens the connections. With as many buckets as
    /// primaries, every bucket must land on a primary of its own.
    pub async fn start(buckets: i64, primaries: usize, id: i64) -> HotActivity {
        let cluster =
            RedisCluster::start_primaries(&format!("capacity-{buckets}x{primaries}"), primaries)
                .await;
        let id = ActivityId::from_db(id);
        let now = crate::now_ms();
        let activity = Activity {
            id,
            name: format!("hot, {buckets} buckets on {primaries} primaries"),
            description: String::new(),
            image_url: None,
            starts_at: Millis(now - 60_000),
            ends_at: Millis(now + 6 * 3_600_000),
            status: Status::Published,
            per_user_limit: Some(1),
            require_pass: false,
            ticket_types: vec![TicketType::default_for("hot", STOCK, 1, Kind::Counter)],
            stock_buckets: buckets,
        };
        let mut owners = Vec::new();
        for b in 0..buckets {
            let slot = key_slot(ActivityKeys::in_bucket(id, b, buckets).meta().as_bytes());
            let owner = tokio::time::timeout(ASK_WITHIN * 3, cluster.owner(slot))
                .await
                .unwrap_or_else(|_| panic!("the owner of slot {slot}: no answer"))
                .unwrap_or_else(|| panic!("no node serves slot {slot} (bucket {b})"));
            owners.push(owner);
        }
        let distinct: BTreeSet<usize> = owners.iter().copied().collect();
        if buckets as usize == primaries {
            assert_eq!(
                distinct.len(),
                primaries,
                "{buckets} buckets on {primaries} primaries: a primary each, not {owners:?}"
            );
        }
        let mut conns = BTreeMap::new();
        for &node in &distinct {
            let url = cluster.node_url(node);
            let sha: String = ask(&url, redis::cmd("SCRIPT").arg("LOAD").arg(CLAIM.source)).await;
            assert_eq!(sha, CLAIM.sha1, "claim.lua's SHA1 on node {node}");
            let mut list = Vec::new();
            for _ in 0..CONNECTIONS {
                list.push(connect(&url).await);
            }
            conns.insert(node, list);
        }
        for (b, &node) in owners.iter().enumerate() {
            let (keys, argv) = activity.publish_bucket_command((b as i64, buckets), |_| 0);
            let mut publish = redis::cmd("EVAL");
            publish.arg(PUBLISH.source).arg(keys.len()).arg(&keys);
            with_args(&mut publish, &argv);
            let reply: Vec<i64> = ask(&cluster.node_url(node), &publish).await;
            assert_eq!(
                reply,
                [1, buckets::share(STOCK, buckets, b as i64)],
                "bucket {b} published on node {node}"
            );
        }
        HotActivity {
            buckets,
            primaries,
            cluster,
            activity,
            owners,
            conns,
            users: 0,
            claimed: vec![0; buckets as usize],
        }
    }

    /// The claim of `user` in its home bucket: EVALSHA of claim.lua, as the claim
    /// components build it.
    fn claim(&self, user: &UserId, home: i64) -> redis::Cmd {
        let command = ClaimCommand::new(
            self.activity.id,
            user,
            ClaimRequest {
                quantity: 1,
                ticket_type: None,
            },
            None,
            Millis(crate::now_ms()),
            &format!("cap-{}x{}-{user}", self.buckets, self.primaries),
            &["CAPACITY".to_string()],
            RateLimit::OFF,
            RateLimit::OFF,
        )
        .in_bucket((home, self.buckets));
        let mut cmd = redis::cmd("EVALSHA");
        cmd.arg(CLAIM.sha1)
            .arg(command.keys.len())
            .arg(&command.keys);
        with_args(&mut cmd, &command.argv);
        cmd
    }

    /// `n` claims, each by a new user, sent to the primary of the user's home bucket over
    /// [`CONNECTIONS`] connections with [`IN_FLIGHT`] claims on each, to every primary at
    /// once; every one must succeed.
    pub async fn run(&mut self, n: usize) -> Run {
        let queues = self.claims(n);
        self.send(queues).await
    }

    /// As [`HotActivity::run`], but the claims of one primary at a time, each primary
    /// alone busy: what each one's work costs when it has the machine's cores to itself,
    /// as with a core per primary. Each run is of one node (by node).
    pub async fn run_one_primary_at_a_time(&mut self, n: usize) -> Vec<(usize, Run)> {
        let mut runs = Vec::new();
        for (node, queue) in self.claims(n) {
            runs.push((node, self.send(BTreeMap::from([(node, queue)])).await));
        }
        runs
    }

    /// `n` claims of new users, by the node of each user's home bucket (and the bucket),
    /// built before any clock starts: the client's work is not what is measured.
    fn claims(&mut self, n: usize) -> BTreeMap<usize, Vec<(usize, redis::Cmd)>> {
        let mut queues: BTreeMap<usize, Vec<(usize, redis::Cmd)>> = BTreeMap::new();
        for _ in 0..n {
            self.users += 1;
            let user = UserId::parse(&format!("u{}", self.users)).expect("a user id");
            let home = buckets::home(&user, self.buckets);
            let cmd = self.claim(&user, home);
            queues
                .entry(self.owners[home as usize])
                .or_default()
                .push((home as usize, cmd));
        }
        queues
    }

    /// Sends each node's claims over its connections, all nodes at once, and reads the
    /// nodes' counters before and after.
    async fn send(&mut self, queues: BTreeMap<usize, Vec<(usize, redis::Cmd)>>) -> Run {
        let before = self.counters().await;
        let client_started = crate::cpu_secs(libc::CLOCK_PROCESS_CPUTIME_ID);
        let started = Instant::now();
        let mut tasks = tokio::task::JoinSet::new();
        for (node, queue) in queues {
            let (queue, next) = (Arc::new(queue), Arc::new(AtomicUsize::new(0)));
            let url = self.cluster.node_url(node);
            for conn in &self.conns[&node] {
                for _ in 0..IN_FLIGHT {
                    tasks.spawn(send_claims(
                        conn.clone(),
                        queue.clone(),
                        next.clone(),
                        url.clone(),
                        self.buckets as usize,
                    ));
                }
            }
        }
        let mut claims = 0;
        while let Some(done) = tasks.join_next().await {
            let per_bucket = done.expect("a claim task").unwrap_or_else(|e| {
                panic!(
                    "{} buckets on {} primaries: {e}",
                    self.buckets, self.primaries
                )
            });
            for (b, c) in per_bucket.into_iter().enumerate() {
                self.claimed[b] += c;
                claims += c;
            }
        }
        let wall = started.elapsed();
        let client_cpu = crate::cpu_secs(libc::CLOCK_PROCESS_CPUTIME_ID) - client_started;
        let after = self.counters().await;
        let nodes = before
            .iter()
            .zip(&after)
            .map(|(b, a)| NodeUse {
                cpu: a.cpu - b.cpu,
                scripts: a.scripts - b.scripts,
                script_usec: a.script_usec - b.script_usec,
            })
            .collect();
        Run {
            claims,
            wall,
            nodes,
            client_cpu,
        }
    }

    /// Every node's counters now (`INFO cpu commandstats`).
    async fn counters(&self) -> Vec<NodeUse> {
        let mut out = Vec::new();
        for node in 0..self.primaries {
            let info: String = ask(
                &self.cluster.node_url(node),
                redis::cmd("INFO").arg("cpu").arg("commandstats"),
            )
            .await;
            out.push(parse_counters(&info));
        }
        out
    }

    /// Reads every bucket back: `Ok` with what was checked, or `Err` with what is wrong.
    /// The stock left over the buckets is the stock less every claim, each bucket's stock
    /// went down by exactly its own claims, and it holds a ticket, two claimer fields (the
    /// user's count over the activity and of the type), a log entry and a sequence number
    /// per claim: none doubled, none lost.
    pub async fn check(&self) -> Result<String, String> {
        let ty = self.activity.ticket_types[0].key.as_str().to_string();
        let mut wrong = Vec::new();
        let mut left_total = 0i64;
        for b in 0..self.buckets {
            let url = self.cluster.node_url(self.owners[b as usize]);
            let k = ActivityKeys::in_bucket(self.activity.id, b, self.buckets);
            let claims = self.claimed[b as usize] as i64;
            let left: i64 = ask(&url, redis::cmd("HGET").arg(k.stocks()).arg(&ty)).await;
            let tickets: i64 = ask(&url, redis::cmd("HLEN").arg(k.tickets())).await;
            let claimers: i64 = ask(&url, redis::cmd("HLEN").arg(k.claimed())).await;
            let seq: Option<i64> = ask(&url, redis::cmd("GET").arg(k.seq())).await;
            let log: i64 = ask(&url, redis::cmd("XLEN").arg(k.log())).await;
            left_total += left;
            let taken = buckets::share(STOCK, self.buckets, b) - left;
            for (what, got, want) in [
                ("stock taken", taken, claims),
                ("tickets", tickets, claims),
                ("claimer fields", claimers, 2 * claims),
                ("sequence", seq.unwrap_or(0), claims),
                ("log entries", log, claims),
            ] {
                if got != want {
                    wrong.push(format!("bucket {b}: {what} {got}, not {want}"));
                }
            }
        }
        let total: i64 = self.claimed.iter().map(|c| *c as i64).sum();
        if left_total != STOCK - total {
            wrong.push(format!(
                "stock left {left_total}, not {STOCK} − {total} = {}",
                STOCK - total
            ));
        }
        if wrong.is_empty() {
            Ok(format!(
                "stock left {left_total} = {STOCK} − {total}; per bucket, stock taken = tickets = log entries = claims {:?}",
                self.claimed
            ))
        } else {
            Err(wrong.join("; "))
        }
    }

    /// Successful claims so far, warm-ups included.
    pub fn claimed(&self) -> u64 {
        self.claimed.iter().sum()
    }
}

/// One task's claims: the next of `queue` until none is left; how many succeeded in each
/// bucket, or what went wrong (an error, a refusal, no answer within [`ANSWER_WITHIN`]).
async fn send_claims(
    mut conn: MultiplexedConnection,
    queue: Arc<Vec<(usize, redis::Cmd)>>,
    next: Arc<AtomicUsize>,
    url: String,
    buckets: usize,
) -> Result<Vec<u64>, String> {
    let mut ok = vec![0u64; buckets];
    loop {
        let Some((bucket, cmd)) = queue.get(next.fetch_add(1, Ordering::Relaxed)) else {
            return Ok(ok);
        };
        let reply: redis::Value =
            match tokio::time::timeout(ANSWER_WITHIN, cmd.query_async(&mut conn)).await {
                Err(_) => {
                    return Err(format!(
                        "a claim on {url} had no answer within {ANSWER_WITHIN:?}"
                    ))
                }
                Ok(Err(e)) => return Err(format!("a claim on {url}: {e}")),
                Ok(Ok(reply)) => reply,
            };
        match &reply {
            redis::Value::Array(items) if items.first() == Some(&redis::Value::Int(1)) => {
                ok[*bucket] += 1
            }
            other => {
                return Err(format!(
                    "a claim in bucket {bucket} on {url} answered {other:?}, not claimed"
                ))
            }
        }
    }
}

/// A node's counters from `INFO cpu commandstats`.
pub fn parse_counters(info: &str) -> NodeUse {
    let field = |name: &str| {
        info.lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(':'))
            .and_then(|v| v.trim().parse::<f64>().ok())
    };
    let cpu = match (
        field("used_cpu_user_main_thread"),
        field("used_cpu_sys_main_thread"),
    ) {
        (Some(user), Some(sys)) => user + sys,
        _ => field("used_cpu_user").unwrap_or(0.0) + field("used_cpu_sys").unwrap_or(0.0),
    };
    // cmdstat_evalsha:calls=N,usec=U,usec_per_call=…
    let stat = |name: &str| -> u64 {
        info.lines()
            .find_map(|l| l.strip_prefix("cmdstat_evalsha:"))
            .and_then(|stats| {
                stats
                    .split(',')
                    .find_map(|kv| kv.strip_prefix(name)?.strip_prefix('='))
            })
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0)
    };
    NodeUse {
        cpu,
        scripts: stat("calls"),
        script_usec: stat("usec"),
    }
}

fn with_args(cmd: &mut redis::Cmd, argv: &[Arg]) {
    for a in argv {
        match a {
            Arg::Int(n) => cmd.arg(*n),
            Arg::Bytes(b) => cmd.arg(b.as_slice()),
        };
    }
}

/// A connection of its own to `url`, within [`ASK_WITHIN`].
async fn connect(url: &str) -> MultiplexedConnection {
    let client = redis::Client::open(url).expect("a redis:// address");
    tokio::time::timeout(ASK_WITHIN, client.get_multiplexed_async_connection())
        .await
        .unwrap_or_else(|_| panic!("no connection to {url} within {ASK_WITHIN:?}"))
        .unwrap_or_else(|e| panic!("connecting to {url}: {e}"))
}

/// One command on a connection of its own, within [`ASK_WITHIN`]; fails with a message.
async fn ask<T: redis::FromRedisValue>(url: &str, cmd: &redis::Cmd) -> T {
    let mut conn = connect(url).await;
    tokio::time::timeout(ASK_WITHIN, cmd.query_async(&mut conn))
        .await
        .unwrap_or_else(|_| panic!("no answer from {url} within {ASK_WITHIN:?}"))
        .unwrap_or_else(|e| panic!("{url}: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_are_read_from_the_main_thread_and_evalsha() {
        let info = "# CPU\r\nused_cpu_sys:3.5\r\nused_cpu_user:6.25\r\nused_cpu_sys_main_thread:1.5\r\nused_cpu_user_main_thread:2.25\r\n\r\n# Commandstats\r\ncmdstat_eval:calls=4,usec=99,usec_per_call=24.75\r\ncmdstat_evalsha:calls=120,usec=4800,usec_per_call=40.00,rejected_calls=0,failed_calls=0\r\n";
        let n = parse_counters(info);
        assert_eq!(n.cpu, 3.75);
        assert_eq!((n.scripts, n.script_usec), (120, 4800));
        let old = parse_counters("used_cpu_sys:1.0\r\nused_cpu_user:2.0\r\n");
        assert_eq!((old.cpu, old.scripts), (3.0, 0));
    }

    #[test]
    fn the_hand_made_split_is_redis_cli_s() {
        use crate::cluster::even_ranges;
        assert_eq!(even_ranges(1), [(0, 16383)]);
        assert_eq!(even_ranges(2), [(0, 8191), (8192, 16383)]);
        assert_eq!(
            even_ranges(3),
            [(0, 5460), (5461, 10922), (10923, 16383)],
            "what `redis-cli --cluster create` prints for three"
        );
    }
}

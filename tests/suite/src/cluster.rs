//! A Redis Cluster of real processes for the cluster tier: three primaries and three
//! replicas (`redis-server --cluster-enabled yes`, AOF `appendfsync always`,
//! `cluster-node-timeout` [`NODE_TIMEOUT_MS`]) joined by `redis-cli --cluster create
//! --cluster-replicas 1`, in a directory of their own; or, for the benchmark, primaries
//! only ([`RedisCluster::start_primaries`]). Nodes are killed (SIGKILL) and
//! restarted on their data, slots moved between primaries while they serve (`CLUSTER
//! SETSLOT … IMPORTING / MIGRATING`, `MIGRATE`, `SETSLOT … NODE`), and primaries added.
//! Every call to a node is bounded (2 s, `sentinel::query`); every process dies with the
//! cluster (and with the test binary).

use std::path::PathBuf;
use std::time::{Duration, Instant};

use crate::sentinel::{query, role_at, wait_until_replica_in_sync_at, Process};
use crate::{free_port, root};

/// How long a primary may be unreachable before the others count it as failed and its
/// replica is promoted (after up to another second of election).
pub const NODE_TIMEOUT_MS: u64 = 2000;

/// The cluster; every process is killed when it is dropped.
pub struct RedisCluster {
    nodes: Vec<Process>,
    dir: PathBuf,
}

/// What moving a slot took.
#[derive(Debug)]
pub struct SlotMove {
    pub from: usize,
    pub to: usize,
    pub keys: usize,
    /// From `SETSLOT … MIGRATING` until every node was told the new owner.
    pub took: Duration,
}

impl RedisCluster {
    /// Six nodes joined into three primaries with a replica each; waits (at most 60 s)
    /// until every node says `cluster_state:ok` and knows all six.
    pub async fn start(name: &str) -> RedisCluster {
        RedisCluster::create(name, 3, 1).await
    }

    /// `primaries` nodes (1 or more), every one a primary serving an equal range of the
    /// slots, and no replica (the benchmark measures what each primary's CPU does; a
    /// replica would take CPU of its own). Waits (at most 60 s) as [`RedisCluster::start`]
    /// does.
    pub async fn start_primaries(name: &str, primaries: usize) -> RedisCluster {
        RedisCluster::create(name, primaries, 0).await
    }

    /// `primaries × (1 + replicas)` nodes joined by `redis-cli --cluster create
    /// --cluster-replicas <replicas>`; it refuses fewer than three primaries, so one or two
    /// (no replicas) get the same equal split of the slots by hand ([`even_ranges`]).
    async fn create(name: &str, primaries: usize, replicas: usize) -> RedisCluster {
        assert!(primaries >= 1, "a cluster needs a primary");
        let dir = root().join(format!(".data/cluster/{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let mut cluster = RedisCluster {
            nodes: Vec::new(),
            dir,
        };
        let total = primaries * (1 + replicas);
        for _ in 0..total {
            cluster.spawn_node().await;
        }
        if primaries < 3 {
            assert_eq!(replicas, 0, "fewer than three primaries: no replicas");
            cluster.assign_by_hand(primaries).await;
        } else {
            cluster.create_with_redis_cli(replicas).await;
        }
        cluster.wait_ok(total, Duration::from_secs(60)).await;
        cluster
    }

    /// Each node serves its range of [`even_ranges`] (`CLUSTER ADDSLOTSRANGE`), has its own
    /// config epoch, and meets node 0: what `redis-cli --cluster create` does.
    async fn assign_by_hand(&self, primaries: usize) {
        let ok = |what: String, r: Option<String>| assert_eq!(r.as_deref(), Some("OK"), "{what}");
        for (i, (first, last)) in even_ranges(primaries).into_iter().enumerate() {
            let url = self.node_url(i);
            ok(
                format!("CLUSTER ADDSLOTSRANGE {first} {last} on node {i}"),
                query(
                    &url,
                    redis::cmd("CLUSTER")
                        .arg("ADDSLOTSRANGE")
                        .arg(first)
                        .arg(last),
                )
                .await,
            );
            ok(
                format!("CLUSTER SET-CONFIG-EPOCH on node {i}"),
                query(
                    &url,
                    redis::cmd("CLUSTER").arg("SET-CONFIG-EPOCH").arg(i + 1),
                )
                .await,
            );
        }
        // A node learns its own address when another meets it: a lone one is told it, so
        // that its `CLUSTER NODES` names it as a met one does (`127.0.0.1:<port>`).
        if primaries == 1 {
            ok(
                "CONFIG SET cluster-announce-ip".into(),
                query(
                    &self.node_url(0),
                    redis::cmd("CONFIG")
                        .arg("SET")
                        .arg("cluster-announce-ip")
                        .arg("127.0.0.1"),
                )
                .await,
            );
            let me = format!("127.0.0.1:{}@", self.nodes[0].port);
            let deadline = Instant::now() + Duration::from_secs(10);
            while !self.nodes_text(0).await.is_some_and(|t| t.contains(&me)) {
                assert!(Instant::now() < deadline, "node 0 did not take its address");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
        for i in 1..primaries {
            ok(
                format!("CLUSTER MEET from node {i}"),
                query(
                    &self.node_url(i),
                    redis::cmd("CLUSTER")
                        .arg("MEET")
                        .arg("127.0.0.1")
                        .arg(self.nodes[0].port),
                )
                .await,
            );
        }
    }

    async fn create_with_redis_cli(&self, replicas: usize) {
        let addresses: Vec<String> = self
            .nodes
            .iter()
            .map(|n| format!("127.0.0.1:{}", n.port))
            .collect();
        let create = tokio::process::Command::new("redis-cli")
            .arg("--cluster")
            .arg("create")
            .args(&addresses)
            .args(["--cluster-replicas", &replicas.to_string(), "--cluster-yes"])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .kill_on_drop(true)
            .output();
        let out = tokio::time::timeout(Duration::from_secs(30), create)
            .await
            .expect("redis-cli --cluster create within 30 s")
            .expect("redis-cli (installed by scripts/deps.sh)");
        assert!(
            out.status.success(),
            "redis-cli --cluster create: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// A new empty node of the cluster's kind, started and answering (not yet met).
    async fn spawn_node(&mut self) -> usize {
        let port = free_port();
        let node_dir = self.dir.join(format!("node-{}", self.nodes.len()));
        std::fs::create_dir_all(&node_dir).unwrap();
        let args: Vec<String> = [
            "--port",
            &port.to_string(),
            "--bind",
            "127.0.0.1",
            "--cluster-enabled",
            "yes",
            "--cluster-config-file",
            "nodes.conf",
            "--cluster-node-timeout",
            &NODE_TIMEOUT_MS.to_string(),
            "--appendonly",
            "yes",
            "--appendfsync",
            "always",
            "--save",
            "",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        let mut node = Process {
            port,
            dir: node_dir,
            args,
            child: None,
        };
        node.spawn();
        self.nodes.push(node);
        let index = self.nodes.len() - 1;
        let deadline = Instant::now() + Duration::from_secs(10);
        while query::<String>(&self.node_url(index), &redis::cmd("PING"))
            .await
            .is_none()
        {
            assert!(Instant::now() < deadline, "node {index} did not start");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        index
    }

    /// Waits until every live node says `cluster_state:ok` and knows `known` nodes that are
    /// all connected and none failing, and every replica's link to its primary is up.
    pub async fn wait_ok(&self, known: usize, limit: Duration) {
        let deadline = Instant::now() + limit;
        loop {
            let mut ok = true;
            for i in self.live() {
                let info: Option<String> =
                    query(&self.node_url(i), redis::cmd("CLUSTER").arg("INFO")).await;
                let nodes = self.nodes_text(i).await.unwrap_or_default();
                let lines: Vec<&str> = nodes.lines().filter(|l| !l.is_empty()).collect();
                ok &= info.is_some_and(|i| i.contains("cluster_state:ok"))
                    && lines.len() == known
                    && lines
                        .iter()
                        .all(|l| l.contains(" connected") && !l.contains("fail"));
                // A replica counts once its copy is up to date (WAIT can be met).
                let replication: Option<String> =
                    query(&self.node_url(i), redis::cmd("INFO").arg("replication")).await;
                ok &= replication.is_some_and(|r| {
                    r.contains("role:master") || r.contains("master_link_status:up")
                });
            }
            if ok {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "the cluster did not settle within {limit:?}"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    fn live(&self) -> Vec<usize> {
        (0..self.nodes.len())
            .filter(|i| self.nodes[*i].child.is_some())
            .collect()
    }

    /// `redis_address` for the cluster: its first three nodes (or fewer) as seeds.
    pub fn address(&self) -> String {
        let seeds: Vec<String> = self.nodes[..self.nodes.len().min(3)]
            .iter()
            .map(|n| format!("127.0.0.1:{}", n.port))
            .collect();
        format!("redis-cluster://{}", seeds.join(","))
    }

    pub fn node_url(&self, node: usize) -> String {
        format!("redis://127.0.0.1:{}", self.nodes[node].port)
    }

    async fn nodes_text(&self, node: usize) -> Option<String> {
        query(&self.node_url(node), redis::cmd("CLUSTER").arg("NODES")).await
    }

    async fn id(&self, node: usize) -> String {
        query(&self.node_url(node), redis::cmd("CLUSTER").arg("MYID"))
            .await
            .expect("CLUSTER MYID")
    }

    /// The node serving `slot` as primary, as the first live node that answers says.
    pub async fn owner(&self, slot: u16) -> Option<usize> {
        for i in self.live() {
            let Some(text) = self.nodes_text(i).await else {
                continue;
            };
            let map = flashclaim_core::cluster::SlotMap::parse(&text).ok()?;
            let node = map.node_for(slot)?;
            return self
                .nodes
                .iter()
                .position(|n| format!("127.0.0.1:{}", n.port) == node);
        }
        None
    }

    /// The node holding an activity's keys now.
    pub async fn owner_of_activity(&self, id: i64) -> usize {
        let slot = flashclaim_core::cluster::key_slot(format!("a:{id}").as_bytes());
        self.owner(slot).await.expect("a node serves the slot")
    }

    /// The hash at `key`, read from the primary serving its slot (empty when absent or
    /// when no node answers within 2 s).
    pub async fn hash(&self, key: &str) -> Vec<(String, String)> {
        let slot = flashclaim_core::cluster::key_slot(key.as_bytes());
        let Some(owner) = self.owner(slot).await else {
            return Vec::new();
        };
        query(&self.node_url(owner), redis::cmd("HGETALL").arg(key))
            .await
            .unwrap_or_default()
    }

    /// A primary other than `not`.
    pub async fn other_primary(&self, not: usize) -> usize {
        for i in self.live() {
            if i != not && self.role(i).await.as_deref() == Some("master") {
                return i;
            }
        }
        panic!("no other primary");
    }

    /// `role:` of `INFO replication`; `None` when the node does not answer within 2 s.
    pub async fn role(&self, node: usize) -> Option<String> {
        role_at(&self.node_url(node)).await
    }

    /// Waits (at most `limit`) until the cluster names a primary other than `old` for
    /// `slot`, and says `cluster_state:ok` again.
    pub async fn wait_for_new_owner(&self, slot: u16, old: usize, limit: Duration) -> usize {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(new) = self.owner(slot).await.filter(|o| *o != old) {
                let info: Option<String> =
                    query(&self.node_url(new), redis::cmd("CLUSTER").arg("INFO")).await;
                if info.is_some_and(|i| i.contains("cluster_state:ok")) {
                    return new;
                }
            }
            assert!(
                Instant::now() < deadline,
                "no new owner of slot {slot} within {limit:?}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Moves `slot` from its owner to the primary `to` while it serves, as `redis-cli
    /// --cluster reshard` does one slot: `to` imports, the owner migrates, the keys go over
    /// with `MIGRATE` in batches (a key being written meanwhile waits for its batch, and a
    /// command on keys of both sides is refused with `ASK` or `TRYAGAIN`), then every
    /// primary is told the new owner.
    pub async fn move_slot(&self, slot: u16, to: usize) -> SlotMove {
        let from = self.owner(slot).await.expect("the slot's owner");
        let started = Instant::now();
        self.begin_move(slot, from, to).await;
        let keys = self.migrate_keys(slot, from, to).await;
        self.finish_move(slot, from, to).await;
        SlotMove {
            from,
            to,
            keys,
            took: started.elapsed(),
        }
    }

    /// The first step of a move: `to` imports `slot`, its owner `from` migrates it.
    pub async fn begin_move(&self, slot: u16, from: usize, to: usize) {
        assert_ne!(from, to, "slot {slot} is already on node {to}");
        let (from_id, to_id) = (self.id(from).await, self.id(to).await);
        let ok = |what: &str, r: Option<String>| assert_eq!(r.as_deref(), Some("OK"), "{what}");
        ok(
            "SETSLOT IMPORTING",
            query(
                &self.node_url(to),
                redis::cmd("CLUSTER")
                    .arg("SETSLOT")
                    .arg(slot)
                    .arg("IMPORTING")
                    .arg(&from_id),
            )
            .await,
        );
        ok(
            "SETSLOT MIGRATING",
            query(
                &self.node_url(from),
                redis::cmd("CLUSTER")
                    .arg("SETSLOT")
                    .arg(slot)
                    .arg("MIGRATING")
                    .arg(&to_id),
            )
            .await,
        );
    }

    /// The keys of `slot` from `from` to `to` with `MIGRATE`, 200 at a time, until `from`
    /// holds none; how many went.
    pub async fn migrate_keys(&self, slot: u16, from: usize, to: usize) -> usize {
        let mut moved = 0;
        loop {
            let keys: Vec<Vec<u8>> = query(
                &self.node_url(from),
                redis::cmd("CLUSTER")
                    .arg("GETKEYSINSLOT")
                    .arg(slot)
                    .arg(200),
            )
            .await
            .expect("GETKEYSINSLOT");
            if keys.is_empty() {
                return moved;
            }
            moved += keys.len();
            let mut migrate = redis::cmd("MIGRATE");
            migrate
                .arg("127.0.0.1")
                .arg(self.nodes[to].port)
                .arg("")
                .arg(0)
                .arg(5000)
                .arg("KEYS")
                .arg(&keys);
            let r: Option<String> = query(&self.node_url(from), &migrate).await;
            assert_eq!(r.as_deref(), Some("OK"), "MIGRATE of {} keys", keys.len());
        }
    }

    /// The last step of a move: every primary is told `to` owns `slot` (`to` first, then
    /// `from`, which stops redirecting with `ASK`, then the rest, which would learn it from
    /// the cluster's gossip anyway).
    pub async fn finish_move(&self, slot: u16, from: usize, to: usize) {
        let to_id = self.id(to).await;
        let mut primaries = Vec::new();
        for i in self.live() {
            if self.role(i).await.as_deref() == Some("master") {
                primaries.push(i);
            }
        }
        primaries.sort_by_key(|i| (*i != to, *i != from));
        for i in primaries {
            let r: Option<String> = query(
                &self.node_url(i),
                redis::cmd("CLUSTER")
                    .arg("SETSLOT")
                    .arg(slot)
                    .arg("NODE")
                    .arg(&to_id),
            )
            .await;
            assert_eq!(r.as_deref(), Some("OK"), "SETSLOT NODE on node {i}");
        }
    }

    /// A new empty node joined to the running cluster (`CLUSTER MEET`): a primary serving
    /// no slot yet. Waits until every node knows it.
    pub async fn add_primary(&mut self) -> usize {
        let node = self.spawn_node().await;
        let known = self.live().len();
        let r: Option<String> = query(
            &self.node_url(node),
            redis::cmd("CLUSTER")
                .arg("MEET")
                .arg("127.0.0.1")
                .arg(self.nodes[0].port),
        )
        .await;
        assert_eq!(r.as_deref(), Some("OK"), "CLUSTER MEET");
        self.wait_ok(known, Duration::from_secs(30)).await;
        node
    }

    /// A new node joined as a replica of `primary` (`CLUSTER REPLICATE`), in sync.
    pub async fn add_replica(&mut self, primary: usize) -> usize {
        let node = self.add_primary().await;
        let id = self.id(primary).await;
        let r: Option<String> = query(
            &self.node_url(node),
            redis::cmd("CLUSTER").arg("REPLICATE").arg(&id),
        )
        .await;
        assert_eq!(r.as_deref(), Some("OK"), "CLUSTER REPLICATE");
        self.wait_until_replica_in_sync(node, Duration::from_secs(30))
            .await;
        node
    }

    /// SIGKILL, as a crashed host.
    pub fn kill(&mut self, node: usize) {
        self.nodes[node].kill();
    }

    /// Starts a killed node again on its own data and `nodes.conf`: a primary that was
    /// replaced meanwhile comes back as a replica of its replacement.
    pub fn restart(&mut self, node: usize) {
        self.nodes[node].spawn();
    }

    /// Waits (at most `limit`) until `node` is a replica whose link to its primary is up.
    pub async fn wait_until_replica_in_sync(&self, node: usize, limit: Duration) {
        wait_until_replica_in_sync_at(&self.node_url(node), limit).await
    }

    /// How many times the live nodes have answered `CLUSTER NODES` (the slot map flashclaim
    /// reads), from `INFO commandstats`.
    pub async fn map_reads(&self) -> u64 {
        let mut total = 0;
        for i in self.live() {
            let info: Option<String> =
                query(&self.node_url(i), redis::cmd("INFO").arg("commandstats")).await;
            total += info
                .unwrap_or_default()
                .lines()
                .find_map(|l| l.strip_prefix("cmdstat_cluster|nodes:calls="))
                .and_then(|rest| rest.split(',').next()?.parse::<u64>().ok())
                .unwrap_or(0);
        }
        total
    }

    /// `CLUSTER KEYSLOT`, Redis' own answer.
    pub async fn keyslot(&self, key: &str) -> Option<i64> {
        query(
            &self.node_url(0),
            redis::cmd("CLUSTER").arg("KEYSLOT").arg(key),
        )
        .await
    }
}

/// The slot ranges (first, last) `redis-cli --cluster create` gives `primaries` primaries,
/// in order: 16384 / primaries slots each, rounded as it rounds them.
pub fn even_ranges(primaries: usize) -> Vec<(u16, u16)> {
    let slots = flashclaim_core::cluster::SLOTS;
    let per_node = f64::from(slots) / primaries as f64;
    let (mut first, mut cursor) = (0u16, 0.0f64);
    (0..primaries)
        .map(|i| {
            let mut last = (cursor + per_node - 1.0).round() as u16;
            if last >= slots || i == primaries - 1 {
                last = slots - 1;
            }
            let range = (first, last.max(first));
            first = range.1 + 1;
            cursor += per_node;
            range
        })
        .collect()
}

impl Drop for RedisCluster {
    fn drop(&mut self) {
        for p in self.nodes.iter_mut() {
            p.kill();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

//! A Redis Sentinel group of real processes for the high-availability tests and the
//! benchmark: one primary and two replicas (AOF `appendfsync always`, `min-replicas-to-write
//! 1`, so a primary cut off from its replicas refuses writes) watched by three sentinels
//! (quorum 2, `down-after-milliseconds` 1000). Nodes are killed (SIGKILL), frozen (SIGSTOP)
//! and restarted on their own data directory, as a crashed or paused host would be.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::{free_port, root};

pub const MASTER: &str = "flashclaim";
pub const DOWN_AFTER_MS: u64 = 1000;

/// One redis-server (a data node or a sentinel; a cluster node in `crate::cluster`).
pub(crate) struct Process {
    pub(crate) port: u16,
    pub(crate) dir: PathBuf,
    pub(crate) args: Vec<String>,
    pub(crate) child: Option<Child>,
}

impl Process {
    pub(crate) fn spawn(&mut self) {
        let mut cmd = Command::new("redis-server");
        cmd.args(&self.args)
            .current_dir(&self.dir)
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        // A test killed by a time-out leaves no server behind.
        use std::os::unix::process::CommandExt;
        unsafe {
            cmd.pre_exec(|| {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                Ok(())
            });
        }
        self.child = Some(
            cmd.spawn()
                .expect("redis-server (installed by scripts/deps.sh)"),
        );
    }

    pub(crate) fn signal(&self, signal: libc::c_int) {
        if let Some(child) = &self.child {
            unsafe { libc::kill(child.id() as libc::pid_t, signal) };
        }
    }

    /// SIGKILL (a frozen process too), and reaped.
    pub(crate) fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// The group; every process is killed when it is dropped.
pub struct SentinelGroup {
    nodes: Vec<Process>,
    sentinels: Vec<Process>,
    dir: PathBuf,
}

impl SentinelGroup {
    /// Starts the group and waits (at most 30 s) until every sentinel knows both replicas
    /// and the other sentinels, and the primary takes writes.
    pub async fn start(name: &str) -> SentinelGroup {
        let dir = root().join(format!(".data/sentinel/{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let ports: Vec<u16> = (0..3).map(|_| free_port()).collect();
        let mut nodes = Vec::new();
        for (i, port) in ports.iter().enumerate() {
            let node_dir = dir.join(format!("node-{i}"));
            std::fs::create_dir_all(&node_dir).unwrap();
            let mut args: Vec<String> = [
                "--port",
                &port.to_string(),
                "--bind",
                "127.0.0.1",
                "--appendonly",
                "yes",
                "--appendfsync",
                "always",
                "--min-replicas-to-write",
                "1",
                "--min-replicas-max-lag",
                "2",
                "--save",
                "",
            ]
            .iter()
            .map(|s| s.to_string())
            .collect();
            if i > 0 {
                args.extend([
                    "--replicaof".into(),
                    "127.0.0.1".into(),
                    ports[0].to_string(),
                ]);
            }
            nodes.push(Process {
                port: *port,
                dir: node_dir,
                args,
                child: None,
            });
        }
        for node in &mut nodes {
            node.spawn();
        }
        let mut sentinels = Vec::new();
        for i in 0..3 {
            let port = free_port();
            let sentinel_dir = dir.join(format!("sentinel-{i}"));
            std::fs::create_dir_all(&sentinel_dir).unwrap();
            let conf = sentinel_dir.join("sentinel.conf");
            std::fs::write(
                &conf,
                format!(
                    "port {port}\nbind 127.0.0.1\ndir {}\nsentinel resolve-hostnames no\n\
                     sentinel monitor {MASTER} 127.0.0.1 {} 2\n\
                     sentinel down-after-milliseconds {MASTER} {DOWN_AFTER_MS}\n\
                     sentinel failover-timeout {MASTER} 4000\n\
                     sentinel parallel-syncs {MASTER} 2\n",
                    sentinel_dir.display(),
                    ports[0]
                ),
            )
            .unwrap();
            sentinels.push(Process {
                port,
                dir: sentinel_dir,
                args: vec![conf.display().to_string(), "--sentinel".into()],
                child: None,
            });
        }
        for sentinel in &mut sentinels {
            sentinel.spawn();
        }
        let group = SentinelGroup {
            nodes,
            sentinels,
            dir,
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let mut ready = true;
            for s in 0..3 {
                let replicas = group.sentinel_count(s, "replicas").await;
                let others = group.sentinel_count(s, "sentinels").await;
                ready &= replicas == Some(2) && others == Some(2);
            }
            // And the primary takes writes: it counts its replicas as good only once they
            // have acknowledged (min-replicas-to-write), a second or so after they connect.
            let writable: Option<String> = query(
                &group.node_url(0),
                redis::cmd("SET").arg("sentinel-test:ready").arg(1),
            )
            .await;
            if ready && writable.is_some() {
                return group;
            }
            assert!(
                Instant::now() < deadline,
                "the sentinel group did not settle within 30 s"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// `redis_address` for the group.
    pub fn address(&self) -> String {
        let sentinels: Vec<String> = self
            .sentinels
            .iter()
            .map(|s| format!("127.0.0.1:{}", s.port))
            .collect();
        format!("redis-sentinel://{}#{MASTER}", sentinels.join(","))
    }

    /// The same group under another master name (a configuration error).
    pub fn address_named(&self, master: &str) -> String {
        self.address()
            .replace(&format!("#{MASTER}"), &format!("#{master}"))
    }

    async fn sentinel_count(&self, sentinel: usize, what: &str) -> Option<usize> {
        let reply: Vec<redis::Value> = self
            .sentinel_query(sentinel, redis::cmd("SENTINEL").arg(what).arg(MASTER))
            .await?;
        Some(reply.len())
    }

    async fn sentinel_query<T: redis::FromRedisValue>(
        &self,
        sentinel: usize,
        cmd: &redis::Cmd,
    ) -> Option<T> {
        let url = format!("redis://127.0.0.1:{}", self.sentinels[sentinel].port);
        query(&url, cmd).await
    }

    /// The node the sentinels name as primary now (asking each live one until one answers).
    pub async fn primary(&self) -> Option<usize> {
        self.primaries_named().await.into_iter().next()
    }

    /// The primary each live sentinel names now, in order (those that answer).
    async fn primaries_named(&self) -> Vec<usize> {
        let mut named = Vec::new();
        for s in 0..self.sentinels.len() {
            if self.sentinels[s].child.is_none() {
                continue;
            }
            let addr: Option<Vec<String>> = self
                .sentinel_query(
                    s,
                    redis::cmd("SENTINEL")
                        .arg("get-master-addr-by-name")
                        .arg(MASTER),
                )
                .await;
            if let Some(port) = addr.and_then(|a| a.get(1)?.parse::<u16>().ok()) {
                named.extend(self.nodes.iter().position(|n| n.port == port));
            }
        }
        named
    }

    /// Waits (at most `limit`) until the failover away from `old` has settled: every live
    /// sentinel names the same other primary and that node says it is one. (Under load a
    /// sentinel can name the replica of a failover attempt that another, in a later epoch,
    /// replaces; the first name heard is then not the primary that stays.)
    pub async fn wait_for_new_primary(&self, old: usize, limit: Duration) -> usize {
        let deadline = Instant::now() + limit;
        loop {
            let named = self.primaries_named().await;
            if let Some(&p) = named.first().filter(|p| **p != old) {
                if named.iter().all(|n| *n == p) && self.role(p).await.as_deref() == Some("master")
                {
                    return p;
                }
            }
            assert!(
                Instant::now() < deadline,
                "no failover from node {old} within {limit:?}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Every node's and every sentinel's URL (for counters).
    pub fn all_urls(&self) -> Vec<String> {
        self.nodes
            .iter()
            .chain(self.sentinels.iter())
            .map(|p| format!("redis://127.0.0.1:{}", p.port))
            .collect()
    }

    /// A data node's URL, for reading what it holds.
    pub fn node_url(&self, node: usize) -> String {
        format!("redis://127.0.0.1:{}/0", self.nodes[node].port)
    }

    /// The node's `role` line from `INFO replication` (`master` / `slave`), `None` when it
    /// does not answer within 2 s.
    pub async fn role(&self, node: usize) -> Option<String> {
        role_at(&self.node_url(node)).await
    }

    /// Waits (at most `limit`) until `node` is a replica whose link to its primary is up.
    pub async fn wait_until_replica_in_sync(&self, node: usize, limit: Duration) {
        wait_until_replica_in_sync_at(&self.node_url(node), limit).await
    }

    /// SIGKILL, as a crashed host.
    pub fn kill(&mut self, node: usize) {
        self.nodes[node].kill();
    }

    /// Starts a killed node again on its own data (AOF): it comes back as a primary of
    /// nobody, and the sentinels turn it into a replica of the current primary.
    pub fn restart(&mut self, node: usize) {
        self.nodes[node].spawn();
    }

    /// SIGSTOP: the process is frozen, its connections stay open.
    pub fn freeze(&self, node: usize) {
        self.nodes[node].signal(libc::SIGSTOP);
    }

    pub fn thaw(&self, node: usize) {
        self.nodes[node].signal(libc::SIGCONT);
    }

    pub fn kill_sentinel(&mut self, sentinel: usize) {
        self.sentinels[sentinel].kill();
    }

    pub fn restart_sentinel(&mut self, sentinel: usize) {
        self.sentinels[sentinel].spawn();
    }
}

impl Drop for SentinelGroup {
    fn drop(&mut self) {
        for p in self.nodes.iter_mut().chain(self.sentinels.iter_mut()) {
            p.kill();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// The `role` line of a node's `INFO replication` (`master` / `slave`), `None` when it does
/// not answer within 2 s.
pub(crate) async fn role_at(url: &str) -> Option<String> {
    let info: String = query(url, redis::cmd("INFO").arg("replication")).await?;
    info.lines()
        .find_map(|l| l.strip_prefix("role:"))
        .map(|r| r.trim().to_string())
}

/// Waits (at most `limit`) until the node at `url` is a replica whose link to its primary is
/// up.
pub(crate) async fn wait_until_replica_in_sync_at(url: &str, limit: Duration) {
    let deadline = Instant::now() + limit;
    loop {
        let info: Option<String> = query(url, redis::cmd("INFO").arg("replication")).await;
        if info.is_some_and(|i| i.contains("role:slave") && i.contains("master_link_status:up")) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{url} did not become an in-sync replica within {limit:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// One command on a fresh connection, bounded by 2 s; `None` on any failure.
pub(crate) async fn query<T: redis::FromRedisValue>(url: &str, cmd: &redis::Cmd) -> Option<T> {
    let attempt = async {
        let client = redis::Client::open(url).ok()?;
        let mut conn = client.get_multiplexed_async_connection().await.ok()?;
        cmd.query_async(&mut conn).await.ok()
    };
    tokio::time::timeout(Duration::from_secs(2), attempt)
        .await
        .ok()
        .flatten()
}

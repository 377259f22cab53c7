//! What one shard of `redis_address` is: a plain endpoint (`redis://…`), or a group whose
//! primary is named by Redis Sentinel (`redis-sentinel://[user:password@]host:port[,host:port…]
//! [/db]#<master-name>`, Lettuce's form). The glue crates open connections through this;
//! the components never see which one a shard is.
//!
//! A Sentinel group is followed, not trusted: the primary the sentinels name is asked for
//! when a connection is first needed and again whenever the node fails the way a replaced
//! primary fails ([`asks_for_new_primary`]). A success is acknowledged only after `WAIT`
//! confirmed the configured replicas ([`Durability`]), so the replica a failover promotes
//! holds every claim anyone was told they have.

use crate::cluster::{ClusterSeeds, CLUSTER_SCHEME};
use crate::scripts::{Arg, RedisFailure, Reply};

/// One shard of `redis_address`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Endpoint {
    Plain(String),
    Sentinel(SentinelGroup),
    /// A Redis Cluster, by its seed nodes: each command goes to the primary serving its
    /// key's slot (`crate::cluster`).
    Cluster(ClusterSeeds),
}

/// A Sentinel-managed group: the sentinels to ask, the name they know the primary by, and
/// what to connect to the primary with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SentinelGroup {
    sentinels: Vec<String>,
    master: String,
    /// `user:password` or `:password` (the part before `@`), for the data nodes only:
    /// sentinels are asked without credentials.
    credentials: Option<String>,
    db: Option<u32>,
}

pub const SENTINEL_SCHEME: &str = "redis-sentinel://";

impl Endpoint {
    /// `address` as written in `redis_address`. A malformed Sentinel address is a
    /// deployment error: the text says what is wrong, without the credentials.
    pub fn parse(address: &str) -> Result<Endpoint, String> {
        if let Some(rest) = address.strip_prefix(CLUSTER_SCHEME) {
            return ClusterSeeds::parse(rest).map(Endpoint::Cluster);
        }
        let Some(rest) = address.strip_prefix(SENTINEL_SCHEME) else {
            return Ok(Endpoint::Plain(address.to_string()));
        };
        let (rest, master) = rest.split_once('#').ok_or(
            "a redis-sentinel:// address names its group after `#` (…#mymaster)".to_string(),
        )?;
        if master.is_empty() || master.contains(|c: char| c.is_whitespace() || c == '/') {
            return Err("a redis-sentinel:// address needs a master name after `#`".into());
        }
        let (credentials, rest) = match rest.rsplit_once('@') {
            Some((c, r)) => (Some(c.to_string()), r),
            None => (None, rest),
        };
        let (hosts, db) = match rest.split_once('/') {
            Some((h, "")) => (h, None),
            Some((h, d)) => (
                h,
                Some(
                    d.parse::<u32>()
                        .map_err(|_| format!("`/{d}` is not a database number"))?,
                ),
            ),
            None => (rest, None),
        };
        let sentinels = host_ports(hosts, "redis-sentinel://", "sentinel")?;
        Ok(Endpoint::Sentinel(SentinelGroup {
            sentinels,
            master: master.to_string(),
            credentials,
            db,
        }))
    }
}

impl SentinelGroup {
    pub fn master(&self) -> &str {
        &self.master
    }

    /// The sentinels, in the order they are asked.
    pub fn sentinel_urls(&self) -> impl Iterator<Item = String> + '_ {
        self.sentinels.iter().map(|s| format!("redis://{s}"))
    }

    /// The arguments of `SENTINEL get-master-addr-by-name <master>`.
    pub fn ask(&self) -> [Arg; 2] {
        [
            Arg::from("get-master-addr-by-name"),
            Arg::from(self.master.as_str()),
        ]
    }

    /// The primary's URL, from the sentinel's `[host, port]` reply, with the group's
    /// credentials and database. `None`: the sentinel does not know the name (a `Nil`
    /// reply) or answered something else.
    pub fn primary_url(&self, reply: &[Reply]) -> Option<String> {
        let host = reply.first()?.as_text()?;
        let port: u16 = reply.get(1)?.as_text()?.parse().ok()?;
        if host.is_empty() {
            return None;
        }
        // An IPv6 address comes back bare; a URL needs it in brackets.
        let host = if host.contains(':') {
            format!("[{host}]")
        } else {
            host.to_string()
        };
        let auth = self
            .credentials
            .as_deref()
            .map_or(String::new(), |c| format!("{c}@"));
        let db = self.db.map_or(String::new(), |d| format!("/{d}"));
        Some(format!("redis://{auth}{host}:{port}{db}"))
    }

    /// The group as logs and `/healthz` name it: its master name and sentinels, never the
    /// credentials.
    pub fn label(&self) -> String {
        format!("{} via {}", self.master, self.sentinels.join(","))
    }
}

/// Asking a group's sentinels in turn, as both glue crates do (one synchronous, one
/// asynchronous): each answer is handed in; the first that names a primary ends it, and
/// when none did, [`Asking::failure`] says why, sentinel by sentinel.
pub struct Asking<'a> {
    group: &'a SentinelGroup,
    why: Vec<String>,
}

impl<'a> Asking<'a> {
    pub fn new(group: &'a SentinelGroup) -> Self {
        Asking {
            group,
            why: Vec::new(),
        }
    }

    /// One sentinel's answer (or why it gave none): the primary's URL if it named one.
    pub fn answered(
        &mut self,
        sentinel: &str,
        answer: Result<Vec<Reply>, String>,
    ) -> Option<String> {
        match answer.map(|reply| self.group.primary_url(&reply)) {
            Ok(Some(primary)) => Some(primary),
            Ok(None) => {
                self.why.push(format!(
                    "{sentinel}: knows no master named `{}`",
                    self.group.master()
                ));
                None
            }
            Err(e) => {
                self.why.push(format!("{sentinel}: {e}"));
                None
            }
        }
    }

    /// No sentinel named a primary: nothing can have run.
    pub fn failure(self) -> RedisFailure {
        RedisFailure::Unreachable(format!(
            "no sentinel named a primary for {}: {}",
            self.group.label(),
            self.why.join("; ")
        ))
    }
}

/// The comma-separated `host:port` list of a `redis-sentinel://` or `redis-cluster://`
/// address (`what` names one of them in the error).
pub(crate) fn host_ports(list: &str, scheme: &str, what: &str) -> Result<Vec<String>, String> {
    let hosts: Vec<String> = list
        .split(',')
        .map(str::trim)
        .filter(|h| !h.is_empty())
        .map(str::to_string)
        .collect();
    if hosts.is_empty() {
        return Err(format!("a {scheme} address lists no {what}"));
    }
    for h in &hosts {
        let port = h.rsplit_once(':').map(|(_, p)| p);
        if port.is_none_or(|p| p.parse::<u16>().is_err()) {
            return Err(format!("{what} `{h}` is not host:port"));
        }
    }
    Ok(hosts)
}

/// `host:port[/db]` of a `redis://` URL, without its credentials (for logs and `/healthz`).
pub fn node_label(url: &str) -> String {
    let rest = url.split_once("://").map_or(url, |(_, rest)| rest);
    rest.rsplit_once('@')
        .map_or(rest, |(_, host)| host)
        .to_string()
}

/// A node's replication as `INFO replication` reports it: what `/healthz` says of a group.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Replication {
    /// `master` or `slave`, as Redis says it.
    pub role: String,
    /// Replicas connected to it.
    pub replicas: usize,
    /// Every connected replica online and at most a second behind, and at least one.
    pub replicas_in_sync: bool,
}

pub fn replication(info: &str) -> Replication {
    let mut role = String::new();
    let mut replicas = 0;
    let mut in_sync = true;
    for line in info.lines().map(str::trim) {
        if let Some(r) = line.strip_prefix("role:") {
            role = r.to_string();
        } else if line.starts_with("slave") && line.contains(":ip=") {
            replicas += 1;
            let field = |name: &str| {
                line.split([':', ','])
                    .find_map(|kv| kv.strip_prefix(name)?.strip_prefix('='))
            };
            let online = field("state") == Some("online");
            let lag = field("lag")
                .and_then(|l| l.parse::<i64>().ok())
                .unwrap_or(i64::MAX);
            in_sync &= online && lag <= 1;
        }
    }
    Replication {
        role,
        replicas,
        replicas_in_sync: in_sync && replicas > 0,
    }
}

/// Whether a failure on a group's primary means it may no longer be the primary, so the
/// sentinels must be asked again before the next command: the node is gone (a refused or
/// broken connection), or it says it cannot take writes as a primary (`READONLY`: it was
/// demoted; `NOREPLICAS` / `MASTERDOWN`: cut off from its group; `LOADING`: restarted).
pub fn asks_for_new_primary(failure: &RedisFailure) -> bool {
    match failure {
        RedisFailure::Unreachable(_) => true,
        RedisFailure::Unconfirmed(_) => false,
        RedisFailure::Command(text) => [
            "READONLY",
            "ReadOnly",
            "NOREPLICAS",
            "NoReplicas",
            "MASTERDOWN",
            "MasterDown",
            "LOADING",
            "BusyLoadingError",
            "reset by peer",
            "roken pipe",
            "Connection refused",
            "Unexpected EOF",
            "UnexpectedEof",
            "timed out",
        ]
        .iter()
        .any(|marker| text.contains(marker)),
    }
}

/// How many replicas must hold a write before it is acknowledged, and how long to wait.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Durability {
    pub replicas: i64,
    pub timeout_ms: i64,
}

/// `redis_replica_timeout_ms` when unset.
pub const DEFAULT_REPLICA_TIMEOUT_MS: i64 = 200;

impl Durability {
    /// From `redis_replicas_ack` and `redis_replica_timeout_ms` (unset or malformed: the
    /// defaults, 1 replica for a Sentinel group and 0 for a plain endpoint, 200 ms). A
    /// timeout of 0 would make `WAIT` block for ever, so it is at least 1 ms.
    pub fn configured(endpoint: &Endpoint, replicas: Option<&str>, timeout: Option<&str>) -> Self {
        let default_replicas = match endpoint {
            Endpoint::Plain(_) => 0,
            Endpoint::Sentinel(_) | Endpoint::Cluster(_) => 1,
        };
        let replicas = replicas
            .and_then(|r| r.trim().parse::<i64>().ok())
            .filter(|r| *r >= 0)
            .unwrap_or(default_replicas);
        let timeout_ms = timeout
            .and_then(|t| t.trim().parse::<i64>().ok())
            .filter(|t| *t >= 1)
            .unwrap_or(DEFAULT_REPLICA_TIMEOUT_MS);
        Durability {
            replicas,
            timeout_ms,
        }
    }

    /// `WAIT`'s arguments, or `None` when no replica needs to confirm (no round trip).
    pub fn wait_args(&self) -> Option<[Arg; 2]> {
        (self.replicas > 0).then_some([Arg::Int(self.replicas), Arg::Int(self.timeout_ms)])
    }

    /// Whether `WAIT`'s reply (the replicas that hold every write of the connection so far)
    /// is enough.
    pub fn confirmed(&self, reply: &[Reply]) -> bool {
        reply
            .first()
            .and_then(Reply::as_int)
            .is_some_and(|n| n >= self.replicas)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn group(address: &str) -> SentinelGroup {
        match Endpoint::parse(address).unwrap() {
            Endpoint::Sentinel(g) => g,
            other => panic!("{other:?}"),
        }
    }

    fn b(s: &str) -> Reply {
        Reply::Bytes(s.as_bytes().to_vec())
    }

    #[test]
    fn a_node_is_named_without_its_credentials() {
        assert_eq!(
            node_label("redis://u:pw@10.0.0.1:6379/2"),
            "10.0.0.1:6379/2"
        );
        assert_eq!(node_label("redis://10.0.0.1:6379"), "10.0.0.1:6379");
    }

    #[test]
    fn a_plain_address_is_a_plain_endpoint() {
        assert_eq!(
            Endpoint::parse("redis://10.0.0.1:6379/2").unwrap(),
            Endpoint::Plain("redis://10.0.0.1:6379/2".into())
        );
    }

    #[test]
    fn a_sentinel_address_names_its_sentinels_master_credentials_and_database() {
        let g = group("redis-sentinel://app:s3cret@s1:26379,s2:26380,s3:26381/3#orders");
        assert_eq!(g.master(), "orders");
        assert_eq!(
            g.sentinel_urls().collect::<Vec<_>>(),
            ["redis://s1:26379", "redis://s2:26380", "redis://s3:26381"]
        );
        let reply = [b("10.1.2.3"), b("6380")];
        assert_eq!(
            g.primary_url(&reply).as_deref(),
            Some("redis://app:s3cret@10.1.2.3:6380/3")
        );
        assert_eq!(g.label(), "orders via s1:26379,s2:26380,s3:26381");
        assert!(!g.label().contains("s3cret"));
    }

    #[test]
    fn a_sentinel_address_without_credentials_or_database_connects_bare() {
        let g = group("redis-sentinel://127.0.0.1:26379#mymaster");
        assert_eq!(
            g.primary_url(&[b("127.0.0.1"), b("7001")]).as_deref(),
            Some("redis://127.0.0.1:7001")
        );
        assert_eq!(
            g.primary_url(&[b("::1"), b("7001")]).as_deref(),
            Some("redis://[::1]:7001")
        );
    }

    #[test]
    fn an_unknown_master_or_odd_reply_names_no_primary() {
        let g = group("redis-sentinel://s1:26379#mymaster");
        assert_eq!(g.primary_url(&[Reply::Nil]), None);
        assert_eq!(g.primary_url(&[]), None);
        assert_eq!(g.primary_url(&[b("h"), b("port")]), None);
    }

    #[test]
    fn a_cluster_address_is_a_cluster_endpoint_and_a_bad_one_is_refused() {
        let Endpoint::Cluster(seeds) =
            Endpoint::parse("redis-cluster://u:pw@10.0.0.1:7000,10.0.0.2:7000").unwrap()
        else {
            panic!("not a cluster");
        };
        assert_eq!(seeds.seeds(), ["10.0.0.1:7000", "10.0.0.2:7000"]);
        let e = Endpoint::parse("redis-cluster://u:pw@10.0.0.1").unwrap_err();
        assert!(e.contains("host:port") && !e.contains("pw"), "{e}");
    }

    #[test]
    fn a_malformed_sentinel_address_is_refused_without_its_credentials() {
        for bad in [
            "redis-sentinel://s1:26379",
            "redis-sentinel://s1:26379#",
            "redis-sentinel://#m",
            "redis-sentinel://s1#m",
            "redis-sentinel://s1:x#m",
            "redis-sentinel://u:pw@s1:26379/x#m",
        ] {
            let e = Endpoint::parse(bad).unwrap_err();
            assert!(!e.contains("pw"), "{e}");
        }
    }

    #[test]
    fn asking_ends_at_the_first_sentinel_that_names_a_primary_and_else_says_why() {
        let g = group("redis-sentinel://s1:26379,s2:26379#m");
        let mut asking = Asking::new(&g);
        assert_eq!(
            asking.answered("redis://s1:26379", Err("refused".into())),
            None
        );
        assert_eq!(
            asking.answered("redis://s2:26379", Ok(vec![Reply::Nil])),
            None
        );
        let e = asking.failure();
        assert!(e.proves_nothing_ran());
        let text = e.to_string();
        assert!(text.contains("s1:26379: refused"), "{text}");
        assert!(text.contains("knows no master named `m`"), "{text}");
        let mut asking = Asking::new(&g);
        assert_eq!(
            asking.answered("redis://s1:26379", Ok(vec![b("h"), b("7000")])),
            Some("redis://h:7000".into())
        );
    }

    #[test]
    fn a_replaced_primary_is_recognised_by_how_it_fails() {
        for text in [
            "READONLY You can't write against a read only replica.",
            "An error was signalled by the server - ReadOnly: You can't write against a read only replica.",
            "NOREPLICAS Not enough good replicas to write.",
            "MASTERDOWN Link with MASTER is down",
            "LOADING Redis is loading the dataset in memory",
            "Connection reset by peer (os error 104)",
            "Broken pipe (os error 32)",
        ] {
            assert!(
                asks_for_new_primary(&RedisFailure::Command(text.into())),
                "{text}"
            );
        }
        assert!(asks_for_new_primary(&RedisFailure::Unreachable("x".into())));
        for text in [
            "NOSCRIPT No matching script",
            "ERR wrong number of arguments",
            "",
        ] {
            assert!(
                !asks_for_new_primary(&RedisFailure::Command(text.into())),
                "{text}"
            );
        }
    }

    #[test]
    fn replication_is_in_sync_when_every_replica_is_online_and_at_most_a_second_behind() {
        let info = "# Replication\r\nrole:master\r\nconnected_slaves:2\r\n\
            slave0:ip=127.0.0.1,port=7002,state=online,offset=100,lag=0\r\n\
            slave1:ip=127.0.0.1,port=7003,state=online,offset=90,lag=1\r\n\
            master_repl_offset:100\r\n";
        assert_eq!(
            replication(info),
            Replication {
                role: "master".into(),
                replicas: 2,
                replicas_in_sync: true
            }
        );
        let behind = info.replace("lag=1", "lag=7");
        assert!(!replication(&behind).replicas_in_sync);
        let syncing = info.replace("state=online,offset=90", "state=wait_bgsave,offset=0");
        assert!(!replication(&syncing).replicas_in_sync);
        let alone = "role:master\r\nconnected_slaves:0\r\n";
        assert_eq!(replication(alone).replicas, 0);
        assert!(!replication(alone).replicas_in_sync);
    }

    #[test]
    fn a_sentinel_group_waits_for_one_replica_and_a_plain_endpoint_for_none_by_default() {
        let sentinel = Endpoint::parse("redis-sentinel://s:26379#m").unwrap();
        let plain = Endpoint::parse("redis://r:6379").unwrap();
        assert_eq!(
            Durability::configured(&sentinel, None, None),
            Durability {
                replicas: 1,
                timeout_ms: DEFAULT_REPLICA_TIMEOUT_MS
            }
        );
        assert_eq!(Durability::configured(&plain, None, None).wait_args(), None);
        let cluster = Endpoint::parse("redis-cluster://h:7000,h:7001").unwrap();
        assert_eq!(Durability::configured(&cluster, None, None).replicas, 1);
        let two = Durability::configured(&plain, Some("2"), Some("50"));
        assert_eq!(two.wait_args(), Some([Arg::Int(2), Arg::Int(50)]));
    }

    #[test]
    fn a_zero_or_malformed_timeout_never_makes_wait_block_for_ever() {
        let e = Endpoint::parse("redis://r:6379").unwrap();
        for t in ["0", "-5", "soon"] {
            assert_eq!(
                Durability::configured(&e, Some("1"), Some(t)).timeout_ms,
                DEFAULT_REPLICA_TIMEOUT_MS,
                "{t}"
            );
        }
        assert_eq!(Durability::configured(&e, Some("x"), None).replicas, 0);
    }

    #[test]
    fn a_write_is_confirmed_only_when_enough_replicas_hold_it() {
        let d = Durability {
            replicas: 1,
            timeout_ms: 100,
        };
        assert!(d.confirmed(&[Reply::Int(1)]));
        assert!(d.confirmed(&[Reply::Int(2)]));
        assert!(!d.confirmed(&[Reply::Int(0)]));
        assert!(!d.confirmed(&[]));
    }
}

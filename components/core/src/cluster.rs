//! Redis Cluster as a shard of `redis_address` (`redis-cluster://[user:password@]host:port
//! [,host:port…]`, the seed nodes). Spin's Redis binding knows nothing of a cluster (a
//! `MOVED` reply is an error like any other), so the glue crates route each command
//! themselves, with what this module gives them:
//!
//! - [`key_slot`]: the hash slot of a key (CRC16/XMODEM of the key, or of its `{…}` hash
//!   tag, modulo 16384), as the Redis Cluster specification defines it. Every key of one
//!   activity carries the tag `{a:<id>}` (`keys::ActivityKeys`), so one script's keys are
//!   always in one slot.
//! - [`SlotMap`]: which primary serves which slot, read from `CLUSTER NODES`. That reply is
//!   one bulk string, which reaches a component exactly as Redis sent it; `CLUSTER SLOTS`
//!   and `CLUSTER SHARDS` are nested arrays, which Spin's `execute` flattens into one list
//!   (and `CLUSTER SHARDS` answers maps, which Spin refuses), so their structure would have
//!   to be guessed back from the kinds of the values.
//! - [`Redirect`]: `MOVED <slot> <host:port>` (the slot lives elsewhere now: remember it and
//!   send the command there, once) and `ASK <slot> <host:port>` (the slot is being moved and
//!   this key is already there: `ASKING` then the command on that node, once). Both, like
//!   `TRYAGAIN` and `CLUSTERDOWN`, are refusals before anything ran
//!   (`scripts::RedisFailure::proves_nothing_ran`).
//! - [`command_key`]: which argument of a command routes it.

use crate::scripts::{Arg, RedisFailure, Reply};

/// The number of hash slots of a Redis Cluster.
pub const SLOTS: u16 = 16384;

/// The scheme of a cluster shard in `redis_address`.
pub const CLUSTER_SCHEME: &str = "redis-cluster://";

/// CRC16 as the Redis Cluster specification uses it: CCITT polynomial 0x1021, initial
/// value 0, no reflection, no final XOR (XMODEM).
pub fn crc16(bytes: &[u8]) -> u16 {
    let mut crc: u16 = 0;
    for &b in bytes {
        crc ^= u16::from(b) << 8;
        for _ in 0..8 {
            crc = if crc & 0x8000 != 0 {
                (crc << 1) ^ 0x1021
            } else {
                crc << 1
            };
        }
    }
    crc
}

/// The hash slot of `key`: when the key has a `{` followed later by a `}` with at least one
/// byte between them, only the bytes between the first `{` and the first `}` after it are
/// hashed; otherwise the whole key.
pub fn key_slot(key: &[u8]) -> u16 {
    let hashed = key
        .iter()
        .position(|&b| b == b'{')
        .and_then(|open| {
            let rest = &key[open + 1..];
            let close = rest.iter().position(|&b| b == b'}')?;
            (close > 0).then(|| &rest[..close])
        })
        .unwrap_or(key);
    crc16(hashed) % SLOTS
}

/// The seeds of a cluster shard: the nodes asked for the slot map, in turn.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterSeeds {
    seeds: Vec<String>,
    /// `user:password` or `:password`, for every node of the cluster.
    credentials: Option<String>,
}

impl ClusterSeeds {
    /// The part of a `redis-cluster://` address after the scheme. A malformed address is a
    /// deployment error: the text says what is wrong, without the credentials.
    pub fn parse(rest: &str) -> Result<ClusterSeeds, String> {
        let (credentials, rest) = match rest.rsplit_once('@') {
            Some((c, r)) => (Some(c.to_string()), r),
            None => (None, rest),
        };
        // A cluster has database 0 only; `/` or `/0` is accepted, anything else refused.
        let hosts = match rest.split_once('/') {
            Some((h, "" | "0")) => h,
            Some(_) => {
                return Err(
                    "a redis-cluster:// address names no database (a cluster has only 0)".into(),
                )
            }
            None => rest,
        };
        let seeds = crate::topology::host_ports(hosts, CLUSTER_SCHEME, "cluster seed")?;
        Ok(ClusterSeeds { seeds, credentials })
    }

    /// The seeds, as `host:port`, in the order they are asked.
    pub fn seeds(&self) -> &[String] {
        &self.seeds
    }

    /// The URL to connect to a node (`host:port`, as the slot map names it) with the
    /// cluster's credentials.
    pub fn node_url(&self, node: &str) -> String {
        let auth = self
            .credentials
            .as_deref()
            .map_or(String::new(), |c| format!("{c}@"));
        format!("redis://{auth}{node}")
    }

    /// The cluster as logs and `/healthz` name it: its seeds, never the credentials.
    pub fn label(&self) -> String {
        format!("cluster via {}", self.seeds.join(","))
    }
}

/// Which primary serves each slot, as a node last told us.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SlotMap {
    /// `host:port` of each primary that serves at least one slot.
    nodes: Vec<String>,
    /// Slot → index into `nodes`; `u16::MAX` for a slot nobody serves.
    owner: Vec<u16>,
}

const NOBODY: u16 = u16::MAX;

impl SlotMap {
    /// The arguments of the command that reads the map: `CLUSTER NODES`.
    pub fn ask() -> [Arg; 1] {
        [Arg::from("NODES")]
    }

    /// The map from `CLUSTER NODES` (one bulk string, a line per node:
    /// `<id> <ip:port@cport[,hostname]> <flags> <primary> <ping> <pong> <epoch> <link>
    /// <slot>…`). Slots are `a-b` ranges or single numbers; `[slot->-id]` / `[slot-<-id]`
    /// (a slot being migrated or imported) change nothing: the slot is still served by the
    /// node that owns it, which redirects with `ASK` what it no longer holds. Only primaries
    /// own slots; one flagged `fail` keeps them until its replica is promoted.
    pub fn parse(text: &str) -> Result<SlotMap, String> {
        let mut map = SlotMap {
            nodes: Vec::new(),
            owner: vec![NOBODY; SLOTS as usize],
        };
        for line in text.lines().map(str::trim).filter(|l| !l.is_empty()) {
            let fields: Vec<&str> = line.split_whitespace().collect();
            if fields.len() < 8 {
                return Err(format!("a CLUSTER NODES line has {} fields", fields.len()));
            }
            let flags = fields[2];
            if !flags.split(',').any(|f| f == "master") || fields.len() == 8 {
                continue;
            }
            // `ip:port@cport[,hostname]`; a node without an address yet is `:0@0`.
            let address = fields[1].split(['@', ',']).next().unwrap_or("");
            let Some((host, port)) = address.rsplit_once(':') else {
                continue;
            };
            if host.is_empty() || port == "0" {
                continue;
            }
            let node = if host.contains(':') {
                format!("[{host}]:{port}")
            } else {
                address.to_string()
            };
            let index = map.index_of(&node);
            for slot in &fields[8..] {
                if slot.starts_with('[') {
                    continue;
                }
                let (from, to) = slot.split_once('-').unwrap_or((slot, slot));
                let (Ok(from), Ok(to)) = (from.parse::<u16>(), to.parse::<u16>()) else {
                    return Err(format!("`{slot}` is not a slot range"));
                };
                if from > to || to >= SLOTS {
                    return Err(format!("`{slot}` is not a slot range"));
                }
                for s in from..=to {
                    map.owner[s as usize] = index;
                }
            }
        }
        if map.owner.contains(&NOBODY) {
            let served = map.owner.iter().filter(|o| **o != NOBODY).count();
            return Err(format!(
                "the cluster serves {served} of {SLOTS} slots (is it still being set up?)"
            ));
        }
        Ok(map)
    }

    /// The map from a reply of `CLUSTER NODES` as the glue receives it.
    pub fn from_reply(reply: &[Reply]) -> Result<SlotMap, String> {
        let text = reply
            .first()
            .and_then(Reply::as_text)
            .ok_or("CLUSTER NODES answered no text")?;
        SlotMap::parse(text)
    }

    fn index_of(&mut self, node: &str) -> u16 {
        match self.nodes.iter().position(|n| n == node) {
            Some(i) => i as u16,
            None => {
                self.nodes.push(node.to_string());
                (self.nodes.len() - 1) as u16
            }
        }
    }

    /// The primary serving `slot`, as `host:port`.
    pub fn node_for(&self, slot: u16) -> Option<&str> {
        let index = *self.owner.get(slot as usize)?;
        self.nodes.get(index as usize).map(String::as_str)
    }

    /// The primary that serves a command: the one of its key's slot, or (a command without
    /// a key) the one that serves slot 0.
    pub fn node_for_key(&self, key: Option<&[u8]>) -> Option<&str> {
        self.node_for(key.map_or(0, key_slot))
    }

    /// A `MOVED` reply: `slot` is served by `node` from now on.
    pub fn moved(&mut self, slot: u16, node: &str) {
        if slot < SLOTS {
            let index = self.index_of(node);
            self.owner[slot as usize] = index;
        }
    }

    /// The primaries, in the order they were first named.
    pub fn primaries(&self) -> &[String] {
        &self.nodes
    }
}

/// Asking a cluster's seeds in turn for the slot map, as both glue crates do (one
/// synchronous, one asynchronous): each answer is handed in; the first that gives a map
/// ends it, and when none did, [`MapAsking::failure`] says why, seed by seed.
pub struct MapAsking<'a> {
    seeds: &'a ClusterSeeds,
    why: Vec<String>,
}

impl<'a> MapAsking<'a> {
    pub fn new(seeds: &'a ClusterSeeds) -> Self {
        MapAsking {
            seeds,
            why: Vec::new(),
        }
    }

    /// One seed's answer to `CLUSTER NODES` (or why it gave none): the map if it is one.
    pub fn answered(&mut self, seed: &str, answer: Result<Vec<Reply>, String>) -> Option<SlotMap> {
        match answer.and_then(|reply| SlotMap::from_reply(&reply)) {
            Ok(map) => Some(map),
            Err(e) => {
                self.why.push(format!("{seed}: {e}"));
                None
            }
        }
    }

    /// No seed gave a map: nothing can have run.
    pub fn failure(self) -> RedisFailure {
        RedisFailure::Unreachable(format!(
            "no seed gave the slot map of the {}: {}",
            self.seeds.label(),
            self.why.join("; ")
        ))
    }
}

/// A cluster redirection: the command did not run on the node that answered it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Redirect {
    /// The slot is served by `node` now (resharding finished, or a failover).
    Moved { slot: u16, node: String },
    /// The slot is being migrated to `node`, and the key is already there (or not here):
    /// send `ASKING` then the command to `node`, once, without changing the map.
    Ask { slot: u16, node: String },
}

impl Redirect {
    /// Reads a redirection from an error as Redis sends it (`MOVED 3999 127.0.0.1:6381`)
    /// or as the redis crate, and so Spin, renders it (`An error was signalled by the
    /// server - Moved: 3999 127.0.0.1:6381`).
    pub fn parse(error: &str) -> Option<Redirect> {
        let text = error
            .strip_prefix("An error was signalled by the server - ")
            .unwrap_or(error)
            .trim_start();
        let mut words = text.split_whitespace();
        let kind = words.next()?.trim_end_matches(':');
        let slot: u16 = words.next()?.parse().ok().filter(|s| *s < SLOTS)?;
        let node = words.next()?;
        if !node.contains(':') {
            return None;
        }
        let node = node.to_string();
        match kind {
            "MOVED" | "Moved" => Some(Redirect::Moved { slot, node }),
            "ASK" | "Ask" => Some(Redirect::Ask { slot, node }),
            _ => None,
        }
    }
}

/// Whether a failure means the map a component keeps may be wrong, so it must be read
/// again before the next command: what makes a Sentinel group's primary be asked again
/// (the node is gone, or no longer a primary), and `CLUSTERDOWN` (the cluster is
/// reconfiguring, e.g. a primary failed and its replica is not promoted yet).
pub fn forgets_map(failure: &RedisFailure) -> bool {
    crate::topology::asks_for_new_primary(failure)
        || matches!(failure, RedisFailure::Command(text)
            if text.contains("CLUSTERDOWN") || text.contains("ClusterDown"))
}

/// The key that routes a command: the first key of `EVAL` / `EVALSHA` (none when it names
/// no key), nothing for commands that address the node itself, else the first argument
/// (every single-key command flashclaim sends: GET, SET, HGETALL, SADD, XLEN, …).
pub fn command_key<'a>(command: &str, args: &'a [Arg]) -> Option<&'a [u8]> {
    let bytes = |a: &'a Arg| match a {
        Arg::Bytes(b) => Some(b.as_slice()),
        Arg::Int(_) => None,
    };
    let is = |names: &[&str]| names.iter().any(|n| command.eq_ignore_ascii_case(n));
    if is(&["EVAL", "EVALSHA", "EVAL_RO", "EVALSHA_RO"]) {
        let keys = match args.get(1)? {
            Arg::Int(n) => *n,
            Arg::Bytes(b) => std::str::from_utf8(b).ok()?.parse().ok()?,
        };
        if keys > 0 {
            bytes(args.get(2)?)
        } else {
            None
        }
    } else if is(&[
        "INFO", "WAIT", "PING", "CLUSTER", "ASKING", "SCRIPT", "TIME", "DBSIZE", "ROLE", "CONFIG",
    ]) {
        None
    } else {
        bytes(args.first()?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NODES: &str = "\
07c37dfeb235213a872192d90877d0cd55635b91 127.0.0.1:30004@31004 slave e7d1eecce10fd6bb5eb35b9f99a514335d9ba9ca 0 1426238317239 4 connected
67ed2db8d677e59ec4a4cefb06858cf2a1a89fa1 127.0.0.1:30002@31002 master - 0 1426238316232 2 connected 5461-10922
292f8b365bb7edb5e285caf0b7e6ddc7265d2f4f 127.0.0.1:30003@31003 master - 0 1426238318243 3 connected 10923-16383 [10923->-67ed2db8d677e59ec4a4cefb06858cf2a1a89fa1]
6ec23923021cf3ffec47632106199cb7f496ce01 127.0.0.1:30005@31005 slave 67ed2db8d677e59ec4a4cefb06858cf2a1a89fa1 0 1426238316232 5 connected
824fe116063bc5fcf9f4ffd895bc17aee7731ac3 127.0.0.1:30006@31006 slave 292f8b365bb7edb5e285caf0b7e6ddc7265d2f4f 0 1426238317741 6 connected
e7d1eecce10fd6bb5eb35b9f99a514335d9ba9ca 127.0.0.1:30001@31001,node-1.example myself,master - 0 0 1 connected 0-5459 5460
";

    #[test]
    fn crc16_is_xmodem_as_the_cluster_specification_gives_it() {
        assert_eq!(crc16(b"123456789"), 0x31C3);
        assert_eq!(crc16(b""), 0);
    }

    #[test]
    fn a_key_without_a_hash_tag_is_hashed_whole() {
        assert_eq!(key_slot(b"123456789"), 12739);
        assert_eq!(key_slot(b"foo"), 12182);
        assert_eq!(key_slot(b"bar"), 5061);
    }

    #[test]
    fn only_the_first_non_empty_hash_tag_is_hashed() {
        // The specification's examples.
        assert_eq!(key_slot(b"{user1000}.following"), key_slot(b"user1000"));
        assert_eq!(key_slot(b"{user1000}.followers"), key_slot(b"user1000"));
        assert_eq!(key_slot(b"foo{}{bar}"), key_slot(b"foo{}{bar}"));
        assert_ne!(key_slot(b"foo{}{bar}"), key_slot(b"bar"));
        assert_eq!(key_slot(b"foo{{bar}}zap"), key_slot(b"{bar"));
        assert_eq!(key_slot(b"foo{bar}{zap}"), key_slot(b"bar"));
        assert_eq!(key_slot(b"{unclosed"), crc16(b"{unclosed") % SLOTS);
    }

    #[test]
    fn every_key_of_an_activity_is_in_the_slot_of_its_tag() {
        let keys = crate::keys::ActivityKeys::new(crate::ids::ActivityId::parse("42").unwrap());
        let user = crate::ids::UserId::parse("u{1}").unwrap();
        let slot = key_slot(b"a:42");
        for key in [keys.meta(), keys.log(), keys.rate(&user), keys.metrics()] {
            assert_eq!(key_slot(key.as_bytes()), slot, "{key}");
        }
    }

    #[test]
    fn a_cluster_address_names_its_seeds_and_credentials() {
        let seeds = ClusterSeeds::parse("app:s3cret@10.0.0.1:7000, 10.0.0.2:7001/0").unwrap();
        assert_eq!(seeds.seeds(), ["10.0.0.1:7000", "10.0.0.2:7001"]);
        assert_eq!(
            seeds.node_url("10.0.0.9:7005"),
            "redis://app:s3cret@10.0.0.9:7005"
        );
        assert_eq!(seeds.label(), "cluster via 10.0.0.1:7000,10.0.0.2:7001");
        let bare = ClusterSeeds::parse("h:7000").unwrap();
        assert_eq!(bare.node_url("h:7001"), "redis://h:7001");
    }

    #[test]
    fn a_malformed_cluster_address_is_refused_without_its_credentials() {
        for bad in ["", "u:pw@", "u:pw@h", "u:pw@h:x", "u:pw@h:7000/3", ","] {
            let e = ClusterSeeds::parse(bad).unwrap_err();
            assert!(!e.contains("pw"), "{e}");
        }
    }

    #[test]
    fn the_slot_map_is_read_from_cluster_nodes_primaries_only() {
        let map = SlotMap::parse(NODES).unwrap();
        assert_eq!(map.node_for(0), Some("127.0.0.1:30001"));
        assert_eq!(map.node_for(5460), Some("127.0.0.1:30001"));
        assert_eq!(map.node_for(5461), Some("127.0.0.1:30002"));
        // Being migrated, the slot is still served by its owner (which answers ASK).
        assert_eq!(map.node_for(10923), Some("127.0.0.1:30003"));
        assert_eq!(map.node_for(16383), Some("127.0.0.1:30003"));
        assert_eq!(map.node_for(SLOTS), None);
        assert_eq!(map.primaries().len(), 3);
        assert_eq!(
            map.node_for_key(Some(b"fc:{a:1}:meta")),
            map.node_for(key_slot(b"a:1"))
        );
        assert_eq!(map.node_for_key(None), Some("127.0.0.1:30001"));
    }

    #[test]
    fn a_map_with_unserved_slots_or_odd_lines_is_refused() {
        let missing = NODES.replace(" 5461-10922", "");
        let e = SlotMap::parse(&missing).unwrap_err();
        assert!(e.contains("16384"), "{e}");
        assert!(SlotMap::parse("x y z").is_err());
        assert!(SlotMap::parse(&NODES.replace("5461-10922", "5461-99999")).is_err());
        assert!(SlotMap::from_reply(&[Reply::Nil]).is_err());
    }

    #[test]
    fn asking_ends_at_the_first_seed_that_gives_a_map_and_else_says_why() {
        let seeds = ClusterSeeds::parse("u:pw@s1:7000,s2:7000").unwrap();
        let mut asking = MapAsking::new(&seeds);
        assert_eq!(asking.answered("s1:7000", Err("refused".into())), None);
        let disabled = Err("ResponseError: This instance has cluster support disabled".into());
        assert_eq!(asking.answered("s2:7000", disabled), None);
        let e = asking.failure();
        assert!(e.proves_nothing_ran());
        let text = e.to_string();
        assert!(text.contains("s1:7000: refused"), "{text}");
        assert!(text.contains("cluster support disabled"), "{text}");
        assert!(!text.contains("pw"), "{text}");
        let mut asking = MapAsking::new(&seeds);
        let reply = vec![Reply::Bytes(NODES.as_bytes().to_vec())];
        assert!(asking.answered("s1:7000", Ok(reply)).is_some());
    }

    #[test]
    fn a_moved_reply_changes_the_owner_of_one_slot() {
        let mut map = SlotMap::parse(NODES).unwrap();
        map.moved(7, "127.0.0.1:30007");
        assert_eq!(map.node_for(7), Some("127.0.0.1:30007"));
        assert_eq!(map.node_for(8), Some("127.0.0.1:30001"));
        map.moved(8, "127.0.0.1:30002");
        assert_eq!(map.node_for(8), Some("127.0.0.1:30002"));
        assert_eq!(map.primaries().len(), 4);
    }

    #[test]
    fn moved_and_ask_are_read_as_redis_sends_them_and_as_spin_renders_them() {
        let moved = Redirect::Moved {
            slot: 3999,
            node: "127.0.0.1:6381".into(),
        };
        assert_eq!(
            Redirect::parse("MOVED 3999 127.0.0.1:6381"),
            Some(moved.clone())
        );
        assert_eq!(
            Redirect::parse("An error was signalled by the server - Moved: 3999 127.0.0.1:6381"),
            Some(moved)
        );
        assert_eq!(
            Redirect::parse("An error was signalled by the server - Ask: 12 10.0.0.2:7000"),
            Some(Redirect::Ask {
                slot: 12,
                node: "10.0.0.2:7000".into()
            })
        );
        for other in [
            "TRYAGAIN Multiple keys request during rehashing of slot",
            "CLUSTERDOWN The cluster is down",
            "MOVED x 127.0.0.1:6381",
            "MOVED 99999 127.0.0.1:6381",
            "ERR unknown command",
        ] {
            assert_eq!(Redirect::parse(other), None, "{other}");
        }
    }

    #[test]
    fn cluster_refusals_prove_nothing_ran_and_a_broken_connection_proves_nothing() {
        for text in [
            "MOVED 3999 127.0.0.1:6381",
            "An error was signalled by the server - Moved: 3999 127.0.0.1:6381",
            "ASK 3999 127.0.0.1:6381",
            "An error was signalled by the server - TryAgain: Multiple keys request during rehashing of slot",
            "TRYAGAIN Multiple keys request during rehashing of slot",
            "CLUSTERDOWN The cluster is down",
            "An error was signalled by the server - ClusterDown: The cluster is down",
            "CROSSSLOT Keys in request don't hash to the same slot",
        ] {
            assert!(RedisFailure::Command(text.into()).proves_nothing_ran(), "{text}");
        }
        let broken = RedisFailure::Command("Connection reset by peer (os error 104)".into());
        assert!(!broken.proves_nothing_ran());
        assert!(forgets_map(&broken));
        assert!(forgets_map(&RedisFailure::Command(
            "An error was signalled by the server - ClusterDown: The cluster is down".into()
        )));
        assert!(!forgets_map(&RedisFailure::Command(
            "TRYAGAIN Multiple keys".into()
        )));
    }

    #[test]
    fn a_command_is_routed_by_its_first_key() {
        let eval = [
            Arg::from("sha"),
            Arg::Int(2),
            Arg::from("fc:{a:1}:meta"),
            Arg::from("fc:{a:1}:stocks"),
            Arg::Int(5),
        ];
        assert_eq!(
            command_key("EVALSHA", &eval),
            Some(b"fc:{a:1}:meta".as_slice())
        );
        assert_eq!(
            command_key("EVAL", &[Arg::from("return 1"), Arg::Int(0)]),
            None
        );
        assert_eq!(
            command_key("eval", &[Arg::from("s"), Arg::from("1"), Arg::from("k")]),
            Some(b"k".as_slice())
        );
        assert_eq!(
            command_key("GET", &[Arg::from("fc:shard")]),
            Some(b"fc:shard".as_slice())
        );
        assert_eq!(command_key("INFO", &[Arg::from("replication")]), None);
        assert_eq!(command_key("WAIT", &[Arg::Int(1), Arg::Int(200)]), None);
    }
}

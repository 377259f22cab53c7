//! The Lua scripts and how to run them through a Redis connection: EVALSHA first (the
//! script body is not resent on the hot path), EVAL when Redis answers NOSCRIPT (after a
//! restart or SCRIPT FLUSH), which also loads it for the next call.

/// A Lua script of `lua/`, with its SHA1 computed at build time.
#[derive(Debug, Clone, Copy)]
pub struct Script {
    pub name: &'static str,
    pub source: &'static str,
    pub sha1: &'static str,
}

include!(concat!(env!("OUT_DIR"), "/scripts.rs"));

/// One value of a Redis reply as Spin delivers it: nested arrays are already flattened.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reply {
    Nil,
    Status(String),
    Int(i64),
    Bytes(Vec<u8>),
}

impl Reply {
    pub fn as_int(&self) -> Option<i64> {
        match self {
            Reply::Int(n) => Some(*n),
            Reply::Bytes(b) => std::str::from_utf8(b).ok()?.parse().ok(),
            _ => None,
        }
    }

    pub fn as_text(&self) -> Option<&str> {
        match self {
            Reply::Bytes(b) => std::str::from_utf8(b).ok(),
            Reply::Status(s) => Some(s),
            _ => None,
        }
    }
}

/// An argument of a Redis command.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Arg {
    Int(i64),
    Bytes(Vec<u8>),
}

impl From<i64> for Arg {
    fn from(n: i64) -> Self {
        Arg::Int(n)
    }
}

impl From<&str> for Arg {
    fn from(s: &str) -> Self {
        Arg::Bytes(s.as_bytes().to_vec())
    }
}

impl From<String> for Arg {
    fn from(s: String) -> Self {
        Arg::Bytes(s.into_bytes())
    }
}

/// Why a Redis command failed, as far as callers need to know.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RedisFailure {
    /// The connection could not be opened: nothing happened.
    #[error("redis unreachable: {0}")]
    Unreachable(String),
    /// The command failed (an error reply, or the connection broke).
    #[error("redis command failed: {0}")]
    Command(String),
    /// A write ran on the primary, but fewer replicas than `redis_replicas_ack` confirmed it
    /// within `redis_replica_timeout_ms` (`WAIT`): a failover now could lose it, so its
    /// outcome is unknown and nobody may be told it is done (`flashclaim_core::topology`).
    #[error("redis write not confirmed by enough replicas: {0}")]
    Unconfirmed(String),
}

impl RedisFailure {
    /// Whether the failure proves the command never ran, so a client may be told "nothing
    /// happened" (`"claimed": false`) rather than "outcome unknown". Redis refuses a
    /// command as a whole with these replies before executing any of it: still loading
    /// its data after a restart, a read-only replica, a primary that lost its replicas or
    /// cannot persist, out of memory, busy with another script, not authenticated, a
    /// cluster redirection, the client limit; a refused connection sent nothing. Anything
    /// else (a generic `ERR`, a script error, a connection reset or a time-out while the
    /// reply was awaited) may follow a command that ran, so it proves nothing.
    pub fn proves_nothing_ran(&self) -> bool {
        match self {
            RedisFailure::Unreachable(_) => true,
            RedisFailure::Command(text) => refused_before_running(text),
            RedisFailure::Unconfirmed(_) => false,
        }
    }
}

/// The success test of scripts whose reply starts with a status, positive for a success
/// (`{ 1, … }` done now, `{ 2, … }` done before) and negative for a refusal that wrote
/// nothing worth confirming: claim, pass, return, redeem.
pub fn status_is_success(reply: &[Reply]) -> bool {
    reply.first().and_then(Reply::as_int).is_some_and(|s| s > 0)
}

/// The success test of scripts that only ever succeed when they answer (publish, pool,
/// the drain's acknowledgement).
pub fn always(_: &[Reply]) -> bool {
    true
}

/// Error codes (as Redis sends them) and kinds (as the redis crate, and so Spin, renders
/// them: `BusyLoadingError: Redis is loading the dataset in memory`) that mean the command
/// was refused whole.
const REFUSED_WHOLE: [&str; 28] = [
    "LOADING",
    "BusyLoadingError",
    "READONLY",
    "ReadOnly",
    "MASTERDOWN",
    "MasterDown",
    "MISCONF",
    "OOM",
    "BUSY",
    "NOAUTH",
    "NOPERM",
    "WRONGPASS",
    "AuthenticationFailed",
    "CLUSTERDOWN",
    "ClusterDown",
    "MOVED",
    "Moved",
    "ASK",
    "Ask",
    "TRYAGAIN",
    "TryAgain",
    "CROSSSLOT",
    "CrossSlot",
    "NOSCRIPT",
    "NoScriptError",
    "NOREPLICAS",
    "NoReplicas",
    "EXECABORT",
];

fn refused_before_running(text: &str) -> bool {
    // Newer redis crates put a description before the kind.
    let text = text
        .strip_prefix("An error was signalled by the server - ")
        .unwrap_or(text)
        .trim_start();
    let first = text
        .split(|c: char| c == ':' || c.is_whitespace())
        .next()
        .unwrap_or("");
    REFUSED_WHOLE.contains(&first)
        || text.contains("max number of clients reached")
        || text.contains("Connection refused")
}

/// The one capability scripts need from Redis: run a command and get Spin's flat reply.
pub trait RedisCommands {
    fn execute(&self, command: &str, args: &[Arg]) -> Result<Vec<Reply>, RedisFailure>;
}

/// Redis says `NOSCRIPT No matching script`; Spin passes Redis errors on as the redis
/// crate renders them (`NoScriptError: No matching script. Please use EVAL.`).
pub fn is_noscript(error: &str) -> bool {
    error.contains("NOSCRIPT")
        || error.contains("NoScriptError")
        || error.contains("No matching script")
}

/// Runs `script` with EVALSHA, falling back to EVAL on NOSCRIPT.
pub fn run_script(
    redis: &impl RedisCommands,
    script: &Script,
    keys: &[String],
    argv: &[Arg],
) -> Result<Vec<Reply>, RedisFailure> {
    let args = evalsha_args(script, keys, argv);
    match redis.execute("EVALSHA", &args) {
        Err(RedisFailure::Command(e)) if is_noscript(&e) => {
            redis.execute("EVAL", &eval_args(script, args))
        }
        other => other,
    }
}

/// EVALSHA's arguments: the script's SHA1, the number of keys, the keys, then `argv`.
/// Hosts with an asynchronous Redis run the same two steps as [`run_script`].
pub fn evalsha_args(script: &Script, keys: &[String], argv: &[Arg]) -> Vec<Arg> {
    let mut args = Vec::with_capacity(2 + keys.len() + argv.len());
    args.push(Arg::from(script.sha1));
    args.push(Arg::Int(keys.len() as i64));
    args.extend(keys.iter().map(|k| Arg::from(k.as_str())));
    args.extend_from_slice(argv);
    args
}

/// The same call as EVAL, after NOSCRIPT: the source in place of the SHA1 (which also
/// loads the script for the next EVALSHA).
pub fn eval_args(script: &Script, mut args: Vec<Arg>) -> Vec<Arg> {
    args[0] = Arg::from(script.source);
    args
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_script_is_embedded_with_a_sha1() {
        for s in [CLAIM, PUBLISH, DRAIN_READ, DRAIN_ACK] {
            assert_eq!(s.sha1.len(), 40, "{}", s.name);
            assert!(s.source.contains("KEYS[1]"), "{}", s.name);
        }
    }

    #[test]
    fn a_loading_or_read_only_redis_proves_the_command_never_ran() {
        for text in [
            "BusyLoadingError: Redis is loading the dataset in memory",
            "An error was signalled by the server - BusyLoadingError: Redis is loading the dataset in memory",
            "LOADING Redis is loading the dataset in memory",
            "ReadOnly: You can't write against a read only replica.",
            "MasterDown: Link with MASTER is down and replica-serve-stale-data is set to 'no'.",
            "MISCONF: Redis is configured to save RDB snapshots, but it's currently unable to persist to disk.",
            "OOM: command not allowed when used memory > 'maxmemory'.",
            "BUSY: Redis is busy running a script. You can only call SCRIPT KILL or SHUTDOWN NOSAVE.",
            "NoScriptError: No matching script. Please use EVAL.",
            "ResponseError: max number of clients reached",
            "Connection refused (os error 111)",
        ] {
            assert!(
                RedisFailure::Command(text.into()).proves_nothing_ran(),
                "{text}"
            );
        }
        assert!(RedisFailure::Unreachable("no route".into()).proves_nothing_ran());
    }

    #[test]
    fn a_write_the_replicas_did_not_confirm_has_an_unknown_outcome() {
        assert!(!RedisFailure::Unconfirmed("WAIT 1 200: 0".into()).proves_nothing_ran());
    }

    #[test]
    fn a_positive_status_is_a_success_and_a_refusal_is_not() {
        assert!(status_is_success(&[Reply::Int(1), Reply::Nil]));
        assert!(status_is_success(&[Reply::Int(2)]));
        assert!(!status_is_success(&[Reply::Int(-8)]));
        assert!(!status_is_success(&[]));
        assert!(always(&[]));
    }

    #[test]
    fn a_broken_connection_or_script_error_leaves_the_outcome_unknown() {
        for text in [
            "Connection reset by peer (os error 104)",
            "broken pipe",
            "Unexpected EOF",
            "timed out",
            "ResponseError: Error running script (call to f_1234): @user_script:12: oops",
            "An error was signalled by the server - ResponseError: ERR something",
            "TASK failed",
            "",
        ] {
            assert!(
                !RedisFailure::Command(text.into()).proves_nothing_ran(),
                "{text}"
            );
        }
    }

    #[test]
    fn replies_read_as_numbers_and_text() {
        assert_eq!(Reply::Bytes(b"42".to_vec()).as_int(), Some(42));
        assert_eq!(Reply::Int(-8).as_int(), Some(-8));
        assert_eq!(Reply::Nil.as_int(), None);
        assert_eq!(Reply::Bytes(b"abc".to_vec()).as_text(), Some("abc"));
    }
}

//! The Spin side of flashclaim's WASIp3 components (spin-sdk 7): variables, Redis, clock
//! and random wired to the core library's types, for an instance that Spin 4 reuses (up
//! to 128 requests, 16 at once by default). What a WASIp2 component pays on every request
//! is paid here once per instance: variable look-ups and opening a Redis connection.
//!
//! Two rules shape this crate:
//! - wasip3 0.7 has no cross-task wake-ups: a request can never *wait* for another one (an
//!   async mutex shared by two requests of one instance panics or hangs). So nothing here
//!   waits: state lives in `thread_local` cells borrowed only between `.await`s, and a
//!   request that finds no idle Redis connection opens one.
//! - Two requests must never share a connection's replies: a connection belongs to one
//!   request from [`Lease::take`] to [`Lease::release`], and only goes back to the idle
//!   list after a complete reply.

use std::cell::RefCell;
use std::collections::HashMap;

use flashclaim_core::client_addr::{ClientAddr, TrustedProxies};
use flashclaim_core::cluster::{ClusterSeeds, MapAsking, Redirect, SlotMap};
use flashclaim_core::cors::{self, AllowedOrigins, RequestFacts};
use flashclaim_core::keys::RedisShards;
use flashclaim_core::scripts::{self, Arg, RedisFailure, Reply, Script};
use flashclaim_core::time::Millis;
use flashclaim_core::topology::{Asking, Durability, Endpoint, SentinelGroup};
use flashclaim_core::{ApiError, HttpResponse};
use spin_sdk::redis::{Connection, Error as RedisError, RedisParameter, RedisResult};
use spin_sdk::wasip3::http::types::{Fields, Response};
use spin_sdk::wasip3::{wit_future, wit_stream};

/// No more idle connections per endpoint than Spin runs requests at once in an instance.
const MAX_IDLE: usize = 16;

thread_local! {
    // A component instance is single-threaded; these live as long as the instance.
    static VARIABLES: RefCell<HashMap<String, Option<String>>> = RefCell::new(HashMap::new());
    static IDLE: RefCell<HashMap<String, Vec<Connection>>> = RefCell::new(HashMap::new());
    // Shard address (a redis-sentinel:// group) -> the primary its sentinels last named.
    // Kept while it serves; forgotten when it fails as a replaced primary fails, so the
    // next request asks again. With every sentinel down, the instance keeps serving on it.
    static PRIMARY: RefCell<HashMap<String, String>> = RefCell::new(HashMap::new());
    // Shard address (a redis-cluster:// one) -> the slot map a seed last gave, corrected by
    // every MOVED since; forgotten like PRIMARY, so the next request reads it again.
    static CLUSTER: RefCell<HashMap<String, SlotMap>> = RefCell::new(HashMap::new());
}

pub fn now() -> Millis {
    let d = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    Millis(d.as_millis() as i64)
}

pub fn random_vec(n: usize) -> Vec<u8> {
    spin_sdk::wasip3::random::random::get_random_bytes(n as u64)
}

/// A variable, looked up once per instance: Spin resolves variables when the app starts,
/// and an instance lives for seconds. Two first requests may both look it up; that costs
/// one extra host call, never a wait. `None`: not set (or empty).
pub async fn optional_var(name: &str) -> Option<String> {
    if let Some(cached) = VARIABLES.with_borrow(|v| v.get(name).cloned()) {
        return cached;
    }
    let value = spin_sdk::variables::get(name)
        .await
        .ok()
        .filter(|v| !v.trim().is_empty());
    VARIABLES.with_borrow_mut(|v| v.insert(name.to_string(), value.clone()));
    value
}

/// A variable the manifest must provide; its absence is a deployment error, logged and
/// answered as a generic 500. The value is never logged.
pub async fn var(name: &str) -> Result<String, ApiError> {
    optional_var(name).await.ok_or_else(|| {
        eprintln!("flashclaim: variable `{name}` is not available");
        ApiError::Internal
    })
}

/// The Redis endpoints of `redis_address` (one per shard).
pub async fn redis_shards() -> Result<RedisShards, ApiError> {
    RedisShards::parse(&var("redis_address").await?).ok_or_else(|| {
        eprintln!("flashclaim: redis_address lists no endpoint");
        ApiError::Internal
    })
}

/// A Redis connection owned by one request. Dropping it closes it: only
/// [`Lease::release`] after a complete reply returns it to the instance's idle list, so a
/// connection whose command failed or was cancelled (the client went away mid-command) is
/// never reused and can never hand its late reply to another request.
pub struct Lease {
    conn: Connection,
    /// The URL connected to: the shard's own, or its group's primary.
    address: String,
    endpoint: Endpoint,
}

impl Lease {
    /// An idle connection to the shard `address` kept by this instance, or a new one: to
    /// the endpoint itself, or to the primary of a Sentinel group (`flashclaim_core::
    /// topology`), asked for once and kept until it fails.
    pub async fn take(address: &str) -> Result<Lease, RedisFailure> {
        Lease::take_for(address, None).await
    }

    /// [`Lease::take`] for a command on `key`: on a cluster, a connection to the primary
    /// serving the key's slot, from the map this instance keeps (read from a seed when it
    /// has none).
    pub async fn take_for(address: &str, key: Option<&[u8]>) -> Result<Lease, RedisFailure> {
        let endpoint = Endpoint::parse(address).map_err(|e| {
            eprintln!("flashclaim: redis_address: {e}");
            RedisFailure::Unreachable(e)
        })?;
        let url = match &endpoint {
            Endpoint::Plain(url) => url.clone(),
            Endpoint::Cluster(seeds) => {
                let known = CLUSTER.with_borrow(|c| {
                    c.get(address)
                        .and_then(|map| map.node_for_key(key).map(str::to_string))
                });
                let node = match known {
                    Some(node) => node,
                    None => {
                        let map = map_of(seeds).await?;
                        let node = map.node_for_key(key).map(str::to_string);
                        CLUSTER.with_borrow_mut(|c| c.insert(address.to_string(), map));
                        node.ok_or_else(|| {
                            RedisFailure::Unreachable("no node serves the slot".into())
                        })?
                    }
                };
                seeds.node_url(&node)
            }
            Endpoint::Sentinel(group) => match PRIMARY.with_borrow(|p| p.get(address).cloned()) {
                Some(primary) => primary,
                None => {
                    let primary = primary_of(group).await?;
                    PRIMARY.with_borrow_mut(|p| p.insert(address.to_string(), primary.clone()));
                    primary
                }
            },
        };
        Lease::to(address, url, endpoint).await
    }

    /// An idle connection to `url` (a node of the shard `address`), or a new one.
    async fn to(address: &str, url: String, endpoint: Endpoint) -> Result<Lease, RedisFailure> {
        let idle = IDLE.with_borrow_mut(|idle| idle.get_mut(&url).and_then(Vec::pop));
        let conn = match idle {
            Some(conn) => conn,
            None => Connection::open(&url).await.map_err(|e| {
                forget_primary(address);
                RedisFailure::Unreachable(error_text(e))
            })?,
        };
        Ok(Lease {
            conn,
            address: url,
            endpoint,
        })
    }

    /// Waits until `redis_replicas_ack` replicas hold every write of this connection (none
    /// by default for a plain endpoint: no round trip), at most `redis_replica_timeout_ms`.
    pub async fn confirm(&self) -> Result<(), RedisFailure> {
        let durability = Durability::configured(
            &self.endpoint,
            optional_var("redis_replicas_ack").await.as_deref(),
            optional_var("redis_replica_timeout_ms").await.as_deref(),
        );
        let Some(args) = durability.wait_args() else {
            return Ok(());
        };
        let reply = self.execute("WAIT", &args).await?;
        if durability.confirmed(&reply) {
            Ok(())
        } else {
            Err(RedisFailure::Unconfirmed(format!(
                "{} of {} replicas within {} ms",
                reply.first().and_then(Reply::as_int).unwrap_or(0),
                durability.replicas,
                durability.timeout_ms
            )))
        }
    }

    /// Back to the idle list, for the next request of this instance.
    pub fn release(self) {
        IDLE.with_borrow_mut(|idle| {
            let list = idle.entry(self.address).or_default();
            if list.len() < MAX_IDLE {
                list.push(self.conn);
            }
        });
    }

    pub async fn execute(&self, command: &str, args: &[Arg]) -> Result<Vec<Reply>, RedisFailure> {
        let replies = self
            .conn
            .execute(command, args.iter().map(parameter))
            .await
            .map_err(|e| RedisFailure::Command(error_text(e)))?;
        Ok(replies.into_iter().map(reply_of).collect())
    }

    /// `script` with EVALSHA, and EVAL after NOSCRIPT (see `scripts::run_script`). An error
    /// reply such as NOSCRIPT is a complete answer: the connection stays usable.
    pub async fn run(
        &self,
        script: &Script,
        keys: &[String],
        argv: &[Arg],
    ) -> Result<Vec<Reply>, RedisFailure> {
        self.run_asking(script, keys, argv, false).await
    }

    /// [`Lease::run`], each command preceded by `ASKING` when `asking` (a cluster's `ASK`
    /// redirection: the node importing the slot serves only a command so announced).
    async fn run_asking(
        &self,
        script: &Script,
        keys: &[String],
        argv: &[Arg],
        asking: bool,
    ) -> Result<Vec<Reply>, RedisFailure> {
        let args = scripts::evalsha_args(script, keys, argv);
        if asking {
            self.execute("ASKING", &[]).await?;
        }
        match self.execute("EVALSHA", &args).await {
            Err(RedisFailure::Command(e)) if scripts::is_noscript(&e) => {
                if asking {
                    self.execute("ASKING", &[]).await?;
                }
                self.execute("EVAL", &scripts::eval_args(script, args))
                    .await
            }
            other => other,
        }
    }
}

/// One script on the Redis endpoint at `address`, on a connection this instance keeps: the
/// connection goes back to the idle list after a reply and is dropped after a failure (it
/// may be broken, or hold a reply that never came). Its idle siblings go too: when Redis
/// restarts they are all dead, and a request on a dead kept connection cannot tell whether
/// its command left (the host says "broken pipe" either way), so it must answer "outcome
/// unknown"; after the first such failure the instance's next request opens a fresh
/// connection, whose refusal proves nothing was sent.
pub async fn run_script(
    address: &str,
    script: &Script,
    keys: &[String],
    argv: &[Arg],
) -> Result<Vec<Reply>, RedisFailure> {
    run_confirmed(address, script, keys, argv, |_| false).await
}

/// [`run_script`] for a write whose success is acknowledged to someone: when `succeeded`
/// says the reply is one, `WAIT` must confirm it on the same connection first
/// ([`Lease::confirm`]). A failure that shows the shard's primary may have been replaced
/// makes the instance ask the sentinels again on its next request; nothing retries here.
pub async fn run_confirmed(
    address: &str,
    script: &Script,
    keys: &[String],
    argv: &[Arg],
    succeeded: fn(&[Reply]) -> bool,
) -> Result<Vec<Reply>, RedisFailure> {
    let mut lease = Lease::take_for(address, keys.first().map(|k| k.as_bytes())).await?;
    let mut result = lease.run(script, keys, argv).await;
    // A cluster's redirection proves the script did not run: followed once.
    let redirect = match (&result, &lease.endpoint) {
        (Err(RedisFailure::Command(text)), Endpoint::Cluster(seeds)) => {
            Redirect::parse(text).map(|r| (r, seeds.clone()))
        }
        _ => None,
    };
    if let Some((redirect, seeds)) = redirect {
        let (node, asking) = match redirect {
            Redirect::Moved { slot, node } => {
                CLUSTER.with_borrow_mut(|c| {
                    if let Some(map) = c.get_mut(address) {
                        map.moved(slot, &node);
                    }
                });
                (node, false)
            }
            Redirect::Ask { node, .. } => (node, true),
        };
        let endpoint = lease.endpoint.clone();
        // The refusal was a complete answer: the connection stays usable.
        lease.release();
        lease = Lease::to(address, seeds.node_url(&node), endpoint).await?;
        result = lease.run_asking(script, keys, argv, asking).await;
    }
    let result = match result {
        Ok(reply) if succeeded(&reply) => lease.confirm().await.map(|()| reply),
        other => other,
    };
    match result {
        Ok(reply) => {
            lease.release();
            Ok(reply)
        }
        Err(e) => {
            let answered = match &e {
                RedisFailure::Command(text) => error_reply(text),
                RedisFailure::Unconfirmed(_) => true,
                RedisFailure::Unreachable(_) => false,
            };
            if answered {
                lease.release();
            } else {
                IDLE.with_borrow_mut(|idle| idle.remove(&lease.address));
            }
            if flashclaim_core::cluster::forgets_map(&e) {
                forget_primary(address);
            }
            Err(e)
        }
    }
}

/// The next request on `address` asks its sentinels again, or a cluster's seeds for the
/// slot map (a plain endpoint: nothing).
fn forget_primary(address: &str) {
    PRIMARY.with_borrow_mut(|p| p.remove(address));
    CLUSTER.with_borrow_mut(|c| c.remove(address));
}

/// The slot map from the first of a cluster's seeds that gives one, each asked once.
async fn map_of(seeds: &ClusterSeeds) -> Result<SlotMap, RedisFailure> {
    let mut asking = MapAsking::new(seeds);
    for seed in seeds.seeds() {
        let ask = async {
            let conn = Connection::open(&seeds.node_url(seed))
                .await
                .map_err(error_text)?;
            conn.execute("CLUSTER", SlotMap::ask().iter().map(parameter))
                .await
                .map(|reply| reply.into_iter().map(reply_of).collect())
                .map_err(error_text)
        };
        if let Some(map) = asking.answered(seed, ask.await) {
            return Ok(map);
        }
    }
    let failure = asking.failure();
    eprintln!("flashclaim: {failure}");
    Err(failure)
}

/// The primary the group's sentinels name, each sentinel asked in turn and once.
async fn primary_of(group: &SentinelGroup) -> Result<String, RedisFailure> {
    let mut asking = Asking::new(group);
    for url in group.sentinel_urls() {
        let ask = async {
            let sentinel = Connection::open(&url).await.map_err(error_text)?;
            let args = group.ask().map(|a| parameter(&a));
            sentinel
                .execute("SENTINEL", args)
                .await
                .map(|reply| reply.into_iter().map(reply_of).collect())
                .map_err(error_text)
        };
        let answer = ask.await;
        if let Some(primary) = asking.answered(&url, answer) {
            return Ok(primary);
        }
    }
    let failure = asking.failure();
    eprintln!("flashclaim: {failure}");
    Err(failure)
}

fn parameter(a: &Arg) -> RedisParameter {
    match a {
        Arg::Int(n) => RedisParameter::Int64(*n),
        Arg::Bytes(b) => RedisParameter::Binary(b.clone()),
    }
}

fn reply_of(r: RedisResult) -> Reply {
    match r {
        RedisResult::Nil => Reply::Nil,
        RedisResult::Status(s) => Reply::Status(s),
        RedisResult::Int64(n) => Reply::Int(n),
        RedisResult::Binary(b) => Reply::Bytes(b),
    }
}

/// Whether a failure is Redis answering with an error (the connection is fine) rather than
/// the connection failing.
fn error_reply(text: &str) -> bool {
    text.starts_with("An error was signalled by the server")
        || RedisFailure::Command(text.to_string()).proves_nothing_ran()
}

/// Spin's rendering of a Redis error: the reply's own text for `Other` (what
/// `RedisFailure::proves_nothing_ran` classifies), the variant's name otherwise.
fn error_text(e: RedisError) -> String {
    match e {
        RedisError::Other(text) => text,
        other => format!("{other:?}"),
    }
}

/// Why the shard of `activity` answered "no such activity": a changed endpoint list or a
/// shard that lost its data is refused (`503`, logged) instead of answered `404`. Only
/// this rare answer pays for it (see `flashclaim_core::shards`).
pub async fn not_found_on_shard(
    shards: &RedisShards,
    activity: flashclaim_core::ids::ActivityId,
) -> ApiError {
    use flashclaim_core::shards;
    let own = match shard_marker(shards.for_activity(activity)).await {
        Ok(own) => own,
        Err(e) => return redis_unavailable("shard marker", e),
    };
    if let Some(verdict) = shards::judge(shards, activity, own.as_deref()) {
        return verdict.into_error();
    }
    let index = shards::index_for(shards, activity);
    let mut others_marked = false;
    for (i, address) in shards.all().iter().enumerate() {
        if i != index && matches!(shard_marker(address).await, Ok(Some(_))) {
            others_marked = true;
            break;
        }
    }
    shards::judge_missing(shards, activity, others_marked).into_error()
}

async fn shard_marker(address: &str) -> Result<Option<String>, RedisFailure> {
    let marker = flashclaim_core::shards::MARKER;
    let reply = execute_on_key(address, "GET", &[Arg::from(marker)]).await?;
    Ok(reply.first().and_then(Reply::as_text).map(str::to_string))
}

/// One plain command whose first argument is its key, on a connection this instance keeps
/// to the node serving that key (its slot's primary on a cluster): back to the idle list
/// after a reply, dropped after a failure, which is returned as it came (a cluster's
/// redirection is not followed: the callers' next script run follows it).
pub async fn execute_on_key(
    address: &str,
    command: &str,
    args: &[Arg],
) -> Result<Vec<Reply>, RedisFailure> {
    let key = match args.first() {
        Some(Arg::Bytes(key)) => Some(key.as_slice()),
        _ => None,
    };
    let lease = Lease::take_for(address, key).await?;
    let reply = lease.execute(command, args).await?;
    lease.release();
    Ok(reply)
}

/// Redis failures seen by a client: the store is unavailable, and the detail is logged.
/// The answer says truthfully whether anything happened: "nothing was changed" only when
/// the failure proves it; a write that may have run (a broken connection, replicas that
/// did not confirm) is an unknown outcome.
pub fn redis_unavailable(context: &str, e: RedisFailure) -> ApiError {
    eprintln!("flashclaim: {context}: {e}");
    if e.proves_nothing_ran() {
        ApiError::Unavailable("the service is temporarily unavailable; nothing was changed")
    } else {
        ApiError::OutcomeUnknown
    }
}

/// Holds WASIp3 backpressure while a request runs, so Spin starts no second request in
/// this instance until this one has answered; concurrent requests go to other instances.
///
/// Why: when several requests of one instance finish in the same turn of Spin's event loop,
/// Spin can hand hyper a response head before the body has left the guest's stream, and the
/// body then follows in a second TCP write that Nagle holds until the client's delayed ACK
/// (Spin 4 sets no TCP_NODELAY): measured on Spin 4.1.0-pre0, 0.2-0.9 % of claims took
/// 40 ms more at 16 requests per instance, none at one. One request at a time also keeps
/// one Redis connection per instance. It is the component's own
/// `--max-instance-concurrent-reuse-count 1`, so it holds on any Spin, whatever its flags.
pub struct OneAtATime(());

impl OneAtATime {
    pub fn enter() -> Self {
        spin_sdk::wit_bindgen::backpressure_inc();
        OneAtATime(())
    }
}

impl Drop for OneAtATime {
    fn drop(&mut self) {
        spin_sdk::wit_bindgen::backpressure_dec();
    }
}

/// A response that leaves Spin in one write: `content-length` set (without it hyper sends
/// chunked encoding and writes the final `0\r\n\r\n` in a second write, once the stream
/// closes, which waits ~40 ms for the client's delayed ACK on every keep-alive response),
/// and the whole body in a single stream write started before the handler returns.
pub fn respond(r: HttpResponse) -> Response {
    let mut headers: Vec<(String, Vec<u8>)> = r
        .headers
        .iter()
        .map(|(name, value)| (name.to_string(), value.as_bytes().to_vec()))
        .collect();
    headers.push((
        "content-length".into(),
        r.body.len().to_string().into_bytes(),
    ));
    let headers = Fields::from_list(&headers).unwrap_or_else(|_| Fields::new());
    let (mut body_tx, body_rx) = wit_stream::new();
    let (trailers_tx, trailers_rx) = wit_future::new(|| Ok(None));
    let (response, _sent) = Response::new(headers, Some(body_rx), trailers_rx);
    let _ = response.set_status_code(r.status);
    let body = r.body;
    spin_sdk::wasip3::spawn(async move {
        body_tx.write_all(body).await;
        drop(body_tx);
        let _ = trailers_tx.write(Ok(None)).await;
    });
    response
}

/// The request's whole body; a body that breaks off is the client's problem (400).
///
/// Read straight from the WASIp3 stream, with as few host round trips as the request
/// allows: every one suspends the request and wakes it again, and spin-sdk's `bytes()`
/// makes three for any body (a read, a read that finds the end, the trailers), measured on
/// Spin 4.1 at 40-89 µs of its CPU on a request that costs 119-124 µs before it
/// (BENCHMARKS.md, "Where a cached answer's time goes"). So:
/// - `content-length: 0` is not read at all;
/// - a body of known length ends when that many bytes have come: the stream's end and the
///   trailers are not waited for (the server framed the body by that length, so neither
///   can add a byte), and both are dropped unread;
/// - only a body of unknown length (chunked, HTTP/2, or none sent without a length) is
///   read to its end, and then its trailers are awaited, though unused: on Spin 4.1 a
///   request that drops trailers the host has already sent keeps its instance from the
///   next request for a while, and a steady trickle of presses started new instances
///   (tests/claim_cache.rs counts them).
///
/// Taken from `req`, which keeps its headers: a caller reads them after the body without
/// copying them first. A body longer than `max` (the most the route parses) is refused as
/// the route would refuse it, before it is read when its length says so and as soon as it
/// passes `max` otherwise: an instance never holds more than that of anyone's body.
pub async fn body(req: &mut spin_sdk::http::Request, max: usize) -> Result<Vec<u8>, ApiError> {
    use spin_sdk::wasip3::http::types::Request as WasiRequest;
    use spin_sdk::wasip3::wit_bindgen::StreamResult;
    /// At most this much is asked for in one read, whatever a `content-length` claims.
    const READ: usize = 16 * 1024;
    let broken = || ApiError::invalid("the body could not be read");
    let length = match req.headers().get("content-length") {
        None => None,
        Some(v) => Some(
            v.to_str()
                .ok()
                .and_then(|v| v.trim().parse::<usize>().ok())
                .ok_or_else(broken)?,
        ),
    };
    match length {
        Some(0) => return Ok(Vec::new()),
        Some(n) if n > max => return Err(flashclaim_core::http::body_too_large(max)),
        _ => {}
    }
    let raw: WasiRequest = req.body_mut().take_unstarted().ok_or_else(broken)?;
    // Dropped unwritten when the body has been read: the host is told it was handled.
    let (_handled, handled_rx) = wit_future::new(|| Ok(()));
    let (mut stream, trailers) = WasiRequest::consume_body(raw, handled_rx);
    let mut body = Vec::with_capacity(length.unwrap_or(0).min(READ));
    loop {
        let want = length.map_or(READ, |n| n.saturating_sub(body.len()).min(READ));
        let (result, chunk) = stream.read(Vec::with_capacity(want)).await;
        body.extend_from_slice(&chunk);
        if body.len() > max {
            return Err(flashclaim_core::http::body_too_large(max));
        }
        match result {
            StreamResult::Complete(_) if Some(body.len()) == length => return Ok(body),
            StreamResult::Complete(_) => {}
            // The end: where a length was given, only with all of it.
            StreamResult::Dropped if length.is_none_or(|n| n == body.len()) => {
                // Nobody's trailers matter here; whether they came does not either.
                let _ = trailers.await;
                return Ok(body);
            }
            StreamResult::Dropped | StreamResult::Cancelled => return Err(broken()),
        }
    }
}

/// Who is asking (see `flashclaim_core::client_addr`): the peer Spin names, or what a
/// `trusted_proxies` proxy forwarded. A `trusted_proxies` that is not a CIDR list is a
/// deployment error: logged, and nobody is trusted.
pub async fn client_addr(req: &spin_sdk::http::Request) -> Option<ClientAddr> {
    let trusted = match optional_var("trusted_proxies").await {
        None => TrustedProxies::default(),
        Some(t) => TrustedProxies::parse(&t).unwrap_or_else(|e| {
            eprintln!("flashclaim: {e}; no proxy is trusted");
            TrustedProxies::default()
        }),
    };
    let joined = |name: &str| {
        let values: Vec<&str> = req
            .headers()
            .get_all(name)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .collect();
        (!values.is_empty()).then(|| values.join(","))
    };
    ClientAddr::resolve(
        joined("spin-client-addr").as_deref(),
        joined("forwarded").as_deref(),
        joined("x-forwarded-for").as_deref(),
        &trusted,
    )
}

/// What the response path needs to know about the request, read before the handler
/// consumes it (see `flashclaim_core::cors`).
fn request_facts(req: &spin_sdk::http::Request) -> RequestFacts {
    let header = |name| {
        req.headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(String::from)
    };
    RequestFacts {
        method: req.method().as_str().to_string(),
        origin: header("origin"),
        preflight_method: header("access-control-request-method"),
        authorization: req.headers().contains_key("authorization"),
    }
}

/// `cors_allowed_origins`, looked up once per instance (like every variable here), and
/// only by requests that carry an `Origin`.
async fn allowed_origins(facts: &RequestFacts) -> AllowedOrigins {
    match facts.origin {
        Some(_) => AllowedOrigins::parse(optional_var("cors_allowed_origins").await.as_deref()),
        None => AllowedOrigins::default(),
    }
}

/// The answer to a CORS preflight from an allowed origin, `None` for anything else.
async fn preflight(facts: &RequestFacts) -> Option<HttpResponse> {
    if !facts.is_preflight() {
        return None;
    }
    allowed_origins(facts).await.preflight(facts)
}

/// An answer (or problem) with the CORS and caching headers every API answer carries.
async fn finish(facts: &RequestFacts, result: Result<HttpResponse, ApiError>) -> Response {
    let mut response = result.unwrap_or_else(|e| e.to_response());
    cors::finish(&mut response, facts, &allowed_origins(facts).await);
    respond(response)
}

/// One request of a flashclaim WASIp3 component: one at a time in the instance (see
/// [`OneAtATime`]), a CORS preflight answered before any route, then `route`'s answer with
/// the headers every API answer carries. An answer `hold` names a wait for is sent after
/// that wait, during which the instance is free for other requests (a timer, no CPU).
pub async fn serve<Fut>(
    req: spin_sdk::http::Request,
    route: impl FnOnce(spin_sdk::http::Request) -> Fut,
    hold: impl FnOnce(&Result<HttpResponse, ApiError>) -> Option<std::time::Duration>,
) -> Response
where
    Fut: std::future::Future<Output = Result<HttpResponse, ApiError>>,
{
    let one = OneAtATime::enter();
    let facts = request_facts(&req);
    if let Some(answer) = preflight(&facts).await {
        return respond(answer);
    }
    let result = route(req).await;
    if let Some(wait) = hold(&result) {
        drop(one);
        spin_sdk::wasip3::clocks::monotonic_clock::wait_for(wait.as_nanos() as u64).await;
    }
    finish(&facts, result).await
}

/// [`serve`] for a route that decides itself when to hold the instance ([`OneAtATime`]):
/// one that answers most requests without any I/O lets Spin run up to its limit of them in
/// one instance at once, so the instance (and what it learned) serves more of them.
pub async fn serve_admitting<Fut>(
    req: spin_sdk::http::Request,
    route: impl FnOnce(spin_sdk::http::Request) -> Fut,
) -> Response
where
    Fut: std::future::Future<Output = Result<HttpResponse, ApiError>>,
{
    let facts = request_facts(&req);
    if let Some(answer) = preflight(&facts).await {
        return respond(answer);
    }
    let result = route(req).await;
    finish(&facts, result).await
}

/// Problems are answered as they are; internal errors were logged where they happened.
pub fn respond_result(result: Result<HttpResponse, ApiError>) -> Response {
    respond(result.unwrap_or_else(|e| e.to_response()))
}

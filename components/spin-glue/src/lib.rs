//! The Spin side of every WASIp2 component: Spin's Redis, Postgres, variables, clock and
//! random wired to the core library's types. A crate of its own because the core library
//! must stay free of spin-sdk.

use std::cell::RefCell;
use std::rc::Rc;

use flashclaim_core::client_addr::{ClientAddr, TrustedProxies};
use flashclaim_core::cluster::{self, ClusterSeeds, MapAsking, Redirect, SlotMap};
use flashclaim_core::cors::{self, AllowedOrigins, RequestFacts};
use flashclaim_core::jwt::Principal;
use flashclaim_core::scripts::{self, Arg, RedisCommands, RedisFailure, Reply, Script};
use flashclaim_core::time::Millis;
use flashclaim_core::topology::{self, Asking, Durability, Endpoint, SentinelGroup};
use flashclaim_core::{ApiError, HttpResponse};
use spin_sdk::http::{Request, Response};
use spin_sdk::pg4::{self, DbValue, ParameterValue};
use spin_sdk::redis::{self, RedisParameter, RedisResult};
use spin_sdk::variables;

pub fn now() -> Millis {
    let d = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    Millis(d.as_millis() as i64)
}

pub fn random_vec(n: usize) -> Vec<u8> {
    wasi::random::random::get_random_bytes(n as u64)
}

pub fn random_bytes<const N: usize>() -> [u8; N] {
    let bytes = wasi::random::random::get_random_bytes(N as u64);
    let mut out = [0u8; N];
    out.copy_from_slice(&bytes[..N]);
    out
}

/// A variable the manifest must provide; its absence is a deployment error, logged and
/// answered as a generic 500. The value is never logged.
pub fn var(name: &str) -> Result<String, ApiError> {
    variables::get(name).map_err(|e| {
        eprintln!("flashclaim: variable `{name}` is not available: {e:?}");
        ApiError::Internal
    })
}

pub fn optional_var(name: &str) -> Option<String> {
    variables::get(name).ok().filter(|v| !v.trim().is_empty())
}

/// The caller, from `Authorization: Bearer <JWT>` signed with `jwt_secret`.
pub fn principal(req: &Request) -> Result<Principal, ApiError> {
    let secret = var("jwt_secret")?;
    let header = req.header("authorization").and_then(|h| h.as_str());
    // During a rotation, tokens of the previous secret too (read only if this one refuses).
    flashclaim_core::rotation::authenticate(
        header,
        secret.as_bytes(),
        || optional_var("jwt_secret_previous"),
        now().as_secs(),
    )
}

/// An operator (role `admin`). The drain token is a known credential, but not for these
/// routes: it is answered `403`, not `401`, so a scheduler misconfigured onto another route
/// is told what it holds. Looked up only when the caller is not an operator.
pub fn admin(req: &Request) -> Result<Principal, ApiError> {
    match principal(req) {
        Ok(p) if p.is_admin() => Ok(p),
        Ok(_) => Err(ApiError::Forbidden("this route needs the admin role")),
        Err(_) if is_drain_token(req) => {
            Err(ApiError::Forbidden("the drain token runs the drain only"))
        }
        Err(e) => Err(e),
    }
}

/// Whether the request presents the drain token (`drain_token`, or `drain_token_previous`
/// during a rotation) as a bearer credential or as `?token=`.
pub fn is_drain_token(req: &Request) -> bool {
    use flashclaim_core::drain_token;
    let authorization = req.header("authorization").and_then(|h| h.as_str());
    let query = req.query();
    let Some(presented) = drain_token::presented(authorization, query) else {
        return false;
    };
    let current = optional_var("drain_token");
    let previous = optional_var("drain_token_previous");
    drain_token::matches(presented, current.as_deref(), previous.as_deref())
}

/// Who may run the drain: a scheduler with the drain token, or an operator.
pub fn drain_caller(req: &Request) -> Result<(), ApiError> {
    if is_drain_token(req) {
        return Ok(());
    }
    admin(req).map(|_| ())
}

/// The request path as segments, for matching routes with slice patterns.
pub fn path_segments(req: &Request) -> Vec<&str> {
    req.path().trim_matches('/').split('/').collect()
}

/// Who is asking, for the per-address limits (see `flashclaim_core::client_addr`): the peer
/// Spin names, or what a `trusted_proxies` proxy forwarded. A `trusted_proxies` that is not
/// a CIDR list is a deployment error: logged, and nobody is trusted.
pub fn client_addr(req: &Request) -> Option<ClientAddr> {
    let joined = |name: &str| {
        let values: Vec<&str> = req
            .headers()
            .filter(|(n, _)| n.eq_ignore_ascii_case(name))
            .filter_map(|(_, v)| v.as_str())
            .collect();
        (!values.is_empty()).then(|| values.join(","))
    };
    let (forwarded, x_forwarded_for) = (joined("forwarded"), joined("x-forwarded-for"));
    // A variable look-up is a host call on every WASIp2 request: only a request that carries
    // a forwarding header needs to know whom to trust.
    let trusted = if forwarded.is_none() && x_forwarded_for.is_none() {
        TrustedProxies::default()
    } else {
        optional_var("trusted_proxies").map_or_else(TrustedProxies::default, |t| {
            TrustedProxies::parse(&t).unwrap_or_else(|e| {
                eprintln!("flashclaim: {e}; no proxy is trusted");
                TrustedProxies::default()
            })
        })
    };
    ClientAddr::resolve(
        joined("spin-client-addr").as_deref(),
        forwarded.as_deref(),
        x_forwarded_for.as_deref(),
        &trusted,
    )
}

/// The optional human check (`captcha_verify_url`; see `flashclaim_core::captcha`): nothing
/// when unset; else the request's token verified with that endpoint, failing closed.
pub fn human_check(req: &Request) -> Result<(), ApiError> {
    use flashclaim_core::captcha;
    let Some(url) = optional_var("captcha_verify_url") else {
        return Ok(());
    };
    let token = captcha::token(req.header(captcha::TOKEN_HEADER).and_then(|h| h.as_str()))?;
    let secret = optional_var("captcha_secret").unwrap_or_default();
    let body = captcha::verify_body(&secret, token);
    // A length, not chunks: some verifiers' front ends refuse a chunked form post.
    let request = spin_sdk::http::Request::post(url, body.clone())
        .header("content-type", "application/x-www-form-urlencoded")
        .header("content-length", body.len().to_string())
        .build();
    let response: spin_sdk::http::Response = spin_sdk::http::run(spin_sdk::http::send(request))
        .map_err(|e| {
            // The URL is configuration, not a secret; the body (with the secret) is not logged.
            eprintln!("flashclaim: human check: the verifier could not be asked: {e}");
            ApiError::Unavailable("the human check could not be verified; try again")
        })?;
    captcha::judge(*response.status(), response.body())
}

/// Serves one API request: a CORS preflight from an allowed origin is answered before
/// routing (before any token check: browsers send preflights without one); every other
/// answer leaves with the CORS and caching headers of `flashclaim_core::cors::finish`.
pub fn serve(
    req: &Request,
    route: impl FnOnce(&Request) -> Result<HttpResponse, ApiError>,
) -> Response {
    let facts = request_facts(req);
    if let Some(answer) = preflight(&facts) {
        return respond(answer);
    }
    respond(finish(
        &facts,
        route(req).unwrap_or_else(|e| e.to_response()),
    ))
}

/// What the response path needs to know about the request.
pub fn request_facts(req: &Request) -> RequestFacts {
    let header = |name| req.header(name).and_then(|h| h.as_str()).map(String::from);
    RequestFacts {
        method: req.method().to_string(),
        origin: header("origin"),
        preflight_method: header("access-control-request-method"),
        authorization: req.header("authorization").is_some(),
    }
}

/// Requests without `Origin` (same-origin reads, apps, tools) never look the variable up.
fn allowed_origins(facts: &RequestFacts) -> AllowedOrigins {
    match facts.origin {
        Some(_) => AllowedOrigins::parse(optional_var("cors_allowed_origins").as_deref()),
        None => AllowedOrigins::default(),
    }
}

/// The answer to a CORS preflight from an allowed origin, `None` for anything else.
pub fn preflight(facts: &RequestFacts) -> Option<HttpResponse> {
    if !facts.is_preflight() {
        return None;
    }
    allowed_origins(facts).preflight(facts)
}

/// An answer with the CORS and caching headers every API answer carries.
pub fn finish(facts: &RequestFacts, mut response: HttpResponse) -> HttpResponse {
    cors::finish(&mut response, facts, &allowed_origins(facts));
    response
}

pub fn respond(r: HttpResponse) -> Response {
    let mut builder = Response::builder();
    builder.status(r.status);
    for (name, value) in r.headers {
        builder.header(name, value);
    }
    builder.body(r.body).build()
}

/// Problems are answered as they are; internal errors were logged where they happened.
pub fn respond_result(result: Result<HttpResponse, ApiError>) -> Response {
    respond(result.unwrap_or_else(|e| e.to_response()))
}

/// A connection to one shard's primary. The one place a WASIp2 component learns where a
/// shard is: a plain endpoint is opened as it is; for a Sentinel group the sentinels are
/// asked for the primary first (`flashclaim_core::topology`); for a Redis Cluster a seed is
/// asked for the slot map (`CLUSTER NODES`), and each command goes to the primary of its
/// key's slot (`flashclaim_core::cluster`). A WASIp2 instance keeps nothing between
/// requests, so each request asks once: one more connection and round trip, measured in
/// BENCHMARKS.md. Nothing here retries, except what a cluster's redirection proves safe
/// (`MOVED` / `ASK`: the command did not run; followed once): a request that meets a
/// failover answers `503` and says truthfully whether anything ran; the client retries.
pub struct SpinRedis {
    route: Route,
    endpoint: Endpoint,
    node: String,
}

enum Route {
    /// A plain endpoint or a Sentinel group's primary.
    One(redis::Connection),
    Cluster(Cluster),
}

/// A request's view of a cluster: the map read at open, connections to the primaries it
/// has used, and the ones its commands went to (where `WAIT` must be asked: a write
/// acknowledged after commands on two primaries, as publishing is, needs both confirmed).
struct Cluster {
    seeds: ClusterSeeds,
    map: RefCell<SlotMap>,
    /// `(node, connection)`: a request uses a few primaries at most.
    conns: RefCell<Vec<(String, Rc<redis::Connection>)>>,
    used: RefCell<Vec<String>>,
}

impl SpinRedis {
    pub fn open(address: &str) -> Result<Self, RedisFailure> {
        let endpoint = Endpoint::parse(address).map_err(|e| {
            eprintln!("flashclaim: redis_address: {e}");
            RedisFailure::Unreachable(e)
        })?;
        let url = match &endpoint {
            Endpoint::Plain(url) => url.clone(),
            Endpoint::Sentinel(group) => primary_of(group)?,
            Endpoint::Cluster(seeds) => {
                let cluster = Cluster::open(seeds)?;
                return Ok(SpinRedis {
                    route: Route::Cluster(cluster),
                    node: seeds.label(),
                    endpoint,
                });
            }
        };
        let conn = redis::Connection::open(&url)
            .map_err(|e| RedisFailure::Unreachable(format!("{e:?}")))?;
        Ok(SpinRedis {
            route: Route::One(conn),
            node: topology::node_label(&url),
            endpoint,
        })
    }

    /// `host:port` of the node connected to (for a Sentinel group, its primary now; for a
    /// cluster, its seeds).
    pub fn node(&self) -> &str {
        &self.node
    }

    /// Whether the shard is a Sentinel-managed group.
    pub fn is_group(&self) -> bool {
        matches!(self.endpoint, Endpoint::Sentinel(_))
    }

    /// For a cluster: each primary of the slot map (`host:port`) with its answer to one
    /// command (`INFO replication`, for `/healthz`); for any other shard, nothing.
    pub fn on_each_primary(
        &self,
        command: &str,
        args: &[Arg],
    ) -> Vec<(String, Result<Vec<Reply>, RedisFailure>)> {
        let Route::Cluster(cluster) = &self.route else {
            return Vec::new();
        };
        let params: Vec<RedisParameter> = args.iter().map(parameter).collect();
        let primaries = cluster.map.borrow().primaries().to_vec();
        primaries
            .into_iter()
            .map(|node| {
                let answer = cluster
                    .on(&node, command, &params)
                    .map_err(RedisFailure::Command);
                (node, answer)
            })
            .collect()
    }

    pub fn run(
        &self,
        script: &Script,
        keys: &[String],
        argv: &[Arg],
    ) -> Result<Vec<Reply>, RedisFailure> {
        scripts::run_script(self, script, keys, argv)
    }

    /// [`SpinRedis::run`] for a write whose success is acknowledged to someone: when
    /// `succeeded` says the reply is one, `WAIT` must confirm it first ([`SpinRedis::confirm`]).
    pub fn run_confirmed(
        &self,
        script: &Script,
        keys: &[String],
        argv: &[Arg],
        succeeded: fn(&[Reply]) -> bool,
    ) -> Result<Vec<Reply>, RedisFailure> {
        let reply = self.run(script, keys, argv)?;
        if succeeded(&reply) {
            self.confirm()?;
        }
        Ok(reply)
    }

    /// Waits until `redis_replicas_ack` replicas hold every write of this connection (none
    /// by default for a plain endpoint: no round trip), at most `redis_replica_timeout_ms`.
    /// The variables are looked up only here, after a successful write. On a cluster, the
    /// primary asked is the one the last command went to.
    pub fn confirm(&self) -> Result<(), RedisFailure> {
        let durability = Durability::configured(
            &self.endpoint,
            optional_var("redis_replicas_ack").as_deref(),
            optional_var("redis_replica_timeout_ms").as_deref(),
        );
        let Some(args) = durability.wait_args() else {
            return Ok(());
        };
        let reply = self.execute("WAIT", &args)?;
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
}

impl Cluster {
    /// The slot map from the first seed that gives one, each asked once; its connection is
    /// kept (it is a primary the request may need).
    fn open(seeds: &ClusterSeeds) -> Result<Cluster, RedisFailure> {
        let mut asking = MapAsking::new(seeds);
        for seed in seeds.seeds() {
            let conn = match redis::Connection::open(&seeds.node_url(seed)) {
                Ok(conn) => conn,
                Err(e) => {
                    asking.answered(seed, Err(format!("{e:?}")));
                    continue;
                }
            };
            let args = SlotMap::ask().map(|a| parameter(&a));
            let answer = conn
                .execute("CLUSTER", &args)
                .map(|reply| reply.into_iter().map(reply_of).collect())
                .map_err(redis_error_text);
            if let Some(map) = asking.answered(seed, answer) {
                return Ok(Cluster {
                    seeds: seeds.clone(),
                    map: RefCell::new(map),
                    conns: RefCell::new(vec![(seed.clone(), Rc::new(conn))]),
                    used: RefCell::new(Vec::new()),
                });
            }
        }
        let failure = asking.failure();
        eprintln!("flashclaim: {failure}");
        Err(failure)
    }

    /// The connection to `node`, opened on first use. A refusal proves nothing ran.
    fn conn(&self, node: &str) -> Result<Rc<redis::Connection>, RedisFailure> {
        if let Some((_, conn)) = self.conns.borrow().iter().find(|(n, _)| n == node) {
            return Ok(conn.clone());
        }
        let conn = Rc::new(
            redis::Connection::open(&self.seeds.node_url(node))
                .map_err(|e| RedisFailure::Unreachable(format!("{node}: {e:?}")))?,
        );
        self.conns
            .borrow_mut()
            .push((node.to_string(), conn.clone()));
        Ok(conn)
    }

    fn on(&self, node: &str, command: &str, args: &[RedisParameter]) -> Result<Vec<Reply>, String> {
        let conn = self.conn(node).map_err(|e| e.to_string())?;
        if !self.used.borrow().iter().any(|n| n == node) {
            self.used.borrow_mut().push(node.to_string());
        }
        conn.execute(command, args)
            .map(|replies| replies.into_iter().map(reply_of).collect())
            .map_err(redis_error_text)
    }

    /// One command on the primary of its key's slot, following one redirection: `MOVED`
    /// (the map is corrected and the command sent to the named node) or `ASK` (`ASKING`
    /// then the command on the named node, on one connection). Either proves the command
    /// did not run where it was refused. `WAIT` is asked of every primary this request
    /// used, and answers the fewest replicas any of them confirmed.
    fn execute(&self, command: &str, args: &[Arg]) -> Result<Vec<Reply>, RedisFailure> {
        let params: Vec<RedisParameter> = args.iter().map(parameter).collect();
        // `on` renders a refused connection as its failure's text: made a refusal again.
        let unreachable = |e: String| match e.strip_prefix("redis unreachable: ") {
            Some(why) => RedisFailure::Unreachable(why.to_string()),
            None => RedisFailure::Command(e),
        };
        if command == "WAIT" {
            let used = self.used.borrow().clone();
            let mut fewest: Option<i64> = None;
            for node in &used {
                let reply = self.on(node, command, &params).map_err(unreachable)?;
                let n = reply.first().and_then(Reply::as_int).unwrap_or(0);
                fewest = Some(fewest.map_or(n, |f| f.min(n)));
            }
            return Ok(vec![Reply::Int(fewest.unwrap_or(i64::MAX))]);
        }
        let node = self
            .map
            .borrow()
            .node_for_key(cluster::command_key(command, args))
            .ok_or_else(|| RedisFailure::Unreachable("no node serves the slot".into()))?
            .to_string();
        let error = match self.on(&node, command, &params) {
            Ok(reply) => return Ok(reply),
            Err(e) => e,
        };
        match Redirect::parse(&error) {
            Some(Redirect::Moved { slot, node }) => {
                self.map.borrow_mut().moved(slot, &node);
                self.on(&node, command, &params).map_err(unreachable)
            }
            Some(Redirect::Ask { node, .. }) => {
                self.on(&node, "ASKING", &[]).map_err(unreachable)?;
                self.on(&node, command, &params).map_err(unreachable)
            }
            None => Err(unreachable(error)),
        }
    }
}

/// The primary the group's sentinels name, each sentinel asked in turn and once: the
/// first that names one wins. None reachable, or none that knows the name: nothing ran.
fn primary_of(group: &SentinelGroup) -> Result<String, RedisFailure> {
    let mut asking = Asking::new(group);
    for url in group.sentinel_urls() {
        let answer = redis::Connection::open(&url)
            .map_err(|e| format!("{e:?}"))
            .and_then(|sentinel| {
                let args = group.ask().map(|a| parameter(&a));
                sentinel
                    .execute("SENTINEL", &args)
                    .map(|reply| reply.into_iter().map(reply_of).collect())
                    .map_err(redis_error_text)
            });
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

impl RedisCommands for SpinRedis {
    fn execute(&self, command: &str, args: &[Arg]) -> Result<Vec<Reply>, RedisFailure> {
        let conn = match &self.route {
            Route::One(conn) => conn,
            Route::Cluster(cluster) => return cluster.execute(command, args),
        };
        let args: Vec<RedisParameter> = args.iter().map(parameter).collect();
        let replies = conn
            .execute(command, &args)
            .map_err(|e| RedisFailure::Command(redis_error_text(e)))?;
        Ok(replies.into_iter().map(reply_of).collect())
    }
}

/// Spin's rendering of a Redis error: the reply's own text for `Other` (what callers
/// classify, see `RedisFailure::proves_nothing_ran`), the variant's name otherwise.
fn redis_error_text(e: redis::Error) -> String {
    match e {
        redis::Error::Other(text) => text,
        other => format!("{other:?}"),
    }
}

/// The Redis endpoints of `redis_address` (one per shard).
pub fn redis_shards() -> Result<flashclaim_core::keys::RedisShards, ApiError> {
    flashclaim_core::keys::RedisShards::parse(&var("redis_address")?).ok_or_else(|| {
        eprintln!("flashclaim: redis_address lists no endpoint");
        ApiError::Internal
    })
}

/// A connection to the Redis endpoint that holds `activity`.
pub fn redis_for(
    activity: flashclaim_core::ids::ActivityId,
    context: &str,
) -> Result<SpinRedis, ApiError> {
    SpinRedis::open(redis_shards()?.for_activity(activity))
        .map_err(|e| redis_unavailable(context, e))
}

/// How many stock buckets `activity` has in Redis (`flashclaim_core::buckets`; 1 for an
/// activity created without, or one Redis does not hold): bucket 0's copy of its settings.
pub fn stock_buckets(
    redis: &SpinRedis,
    activity: flashclaim_core::ids::ActivityId,
) -> Result<i64, RedisFailure> {
    let meta = flashclaim_core::keys::ActivityKeys::new(activity).meta();
    let reply = redis.execute("HGET", &[Arg::from(meta), Arg::from("buckets")])?;
    Ok(reply
        .first()
        .and_then(Reply::as_int)
        .filter(|n| *n > 1)
        .unwrap_or(1))
}

/// The keys of the stock bucket holding `ticket` (`flashclaim_core::buckets::code_bucket`):
/// only a code that may name a bucket pays a read of the activity's bucket count.
pub fn ticket_keys(
    redis: &SpinRedis,
    ticket: &flashclaim_core::ids::TicketRef,
) -> Result<flashclaim_core::keys::ActivityKeys, RedisFailure> {
    use flashclaim_core::buckets;
    use flashclaim_core::keys::ActivityKeys;
    if !buckets::code_may_be_bucketed(&ticket.code) {
        return Ok(ActivityKeys::new(ticket.activity));
    }
    let n = stock_buckets(redis, ticket.activity)?;
    let b = buckets::code_bucket(&ticket.code, n);
    Ok(ActivityKeys::in_bucket(ticket.activity, b, n))
}

/// The keys of every stock bucket of `activity` (one for most activities).
pub fn bucket_keys(
    redis: &SpinRedis,
    activity: flashclaim_core::ids::ActivityId,
) -> Result<Vec<flashclaim_core::keys::ActivityKeys>, RedisFailure> {
    let n = stock_buckets(redis, activity)?;
    Ok((0..n)
        .map(|b| flashclaim_core::keys::ActivityKeys::in_bucket(activity, b, n))
        .collect())
}

/// Why the shard of `activity` answered "no such activity": a changed endpoint list or a
/// shard that lost its data is refused (`503`, logged) instead of answered `404`. Only
/// this rare answer pays for it (see `flashclaim_core::shards`).
pub fn not_found_on_shard(
    shards: &flashclaim_core::keys::RedisShards,
    activity: flashclaim_core::ids::ActivityId,
) -> ApiError {
    use flashclaim_core::shards;
    let own = match shard_marker(shards.for_activity(activity)) {
        Ok(own) => own,
        Err(e) => return redis_unavailable("shard marker", e),
    };
    if let Some(verdict) = shards::judge(shards, activity, own.as_deref()) {
        return verdict.into_error();
    }
    let index = shards::index_for(shards, activity);
    let others_marked = shards
        .all()
        .iter()
        .enumerate()
        .filter(|(i, _)| *i != index)
        .any(|(_, address)| matches!(shard_marker(address), Ok(Some(_))));
    shards::judge_missing(shards, activity, others_marked).into_error()
}

fn shard_marker(address: &str) -> Result<Option<String>, RedisFailure> {
    let reply =
        SpinRedis::open(address)?.execute("GET", &[Arg::from(flashclaim_core::shards::MARKER)])?;
    Ok(reply.first().and_then(Reply::as_text).map(str::to_string))
}

/// Before an activity is loaded into Redis: every shard's marker is read, and written
/// where missing, or the publish is refused because the endpoint list changed.
pub fn claim_shard_markers() -> Result<(), ApiError> {
    use flashclaim_core::shards;
    let shards_list = redis_shards()?;
    let all = shards_list.all();
    let found: Vec<_> = all
        .iter()
        .map(|address| shard_marker(address).map_err(|_| ()))
        .collect();
    for index in shards::markers_to_write(&found)? {
        // NX: a marker once written is never replaced, whoever publishes at the same time.
        let set = SpinRedis::open(&all[index]).and_then(|redis| {
            redis.execute(
                "SET",
                &[
                    Arg::from(shards::MARKER),
                    Arg::from(shards::marker(index, all.len()).as_str()),
                    Arg::from("NX"),
                ],
            )
        });
        if let Err(e) = set {
            eprintln!(
                "flashclaim: {}: marker not written: {e}",
                shards::label(&shards_list, index)
            );
        }
    }
    Ok(())
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

pub fn pg_open() -> Result<pg4::Connection, ApiError> {
    let address = var("pg_address")?;
    pg4::Connection::open(&address).map_err(|e| {
        eprintln!("flashclaim: postgres unreachable: {}", pg_error_text(&e));
        ApiError::Unavailable("the database is temporarily unavailable")
    })
}

/// A Postgres error for the log: the server's message, never the connection string.
pub fn pg_error_text(e: &pg4::PgError) -> String {
    match e {
        pg4::PgError::QueryFailed(pg4::QueryError::DbError(db)) => {
            format!("{} ({})", db.message, db.code)
        }
        pg4::PgError::QueryFailed(pg4::QueryError::Text(t)) => t.chars().take(300).collect(),
        pg4::PgError::ConnectionFailed(_) => "connection failed".to_string(),
        other => format!("{other:?}").chars().take(300).collect(),
    }
}

/// The constraint a statement violated (unique, foreign key, check), so each use case maps
/// the ones it expects to 409/422 and leaves the rest internal.
pub fn pg_constraint(e: &pg4::PgError) -> Option<&str> {
    match e {
        pg4::PgError::QueryFailed(pg4::QueryError::DbError(db)) => db
            .extras
            .iter()
            .find(|(k, _)| k == "constraint")
            .map(|(_, v)| v.as_str())
            .or_else(|| {
                // Hosts that do not pass the constraint name still say it in the message.
                let m = db.message.as_str();
                let start = m.find("constraint \"")? + "constraint \"".len();
                m[start..].split('"').next()
            }),
        _ => None,
    }
}

pub fn pg_internal(context: &str, e: pg4::PgError) -> ApiError {
    eprintln!("flashclaim: {context}: {}", pg_error_text(&e));
    ApiError::Internal
}

pub fn int(v: &DbValue) -> Option<i64> {
    match v {
        DbValue::Int64(n) => Some(*n),
        DbValue::Int32(n) => Some(i64::from(*n)),
        DbValue::Int16(n) => Some(i64::from(*n)),
        _ => None,
    }
}

pub fn text(v: &DbValue) -> Option<String> {
    match v {
        DbValue::Str(s) => Some(s.clone()),
        _ => None,
    }
}

/// A boolean column, or a flag read from a list: pg4 has no boolean arrays, so lists
/// aggregate flags as `int4` 0 / 1 (see [`ACTIVITY_ARRAYS`]).
pub fn boolean(v: &DbValue) -> Option<bool> {
    match v {
        DbValue::Boolean(b) => Some(*b),
        DbValue::Int32(n @ (0 | 1)) => Some(*n == 1),
        _ => None,
    }
}

/// The rows of a list read as one row of arrays, one per column, which is how every list
/// is queried: Spin 4.0.x never returns from a query whose result has no row
/// (spinframework/spin#3671), so a list's SQL aggregates its rows into one
/// (`SELECT array_agg(a ORDER BY k), array_agg(b ORDER BY k) FROM ...`) and this turns
/// the arrays back into rows of plain values. An aggregate over no row is NULL: no rows.
/// With several columns, every aggregate of the query has the same `ORDER BY` on a unique
/// key, so the arrays line up.
pub fn list_rows(result: pg4::RowSet, context: &str) -> Result<Vec<Vec<DbValue>>, ApiError> {
    let Some(row) = result.rows.into_iter().next() else {
        return Ok(Vec::new());
    };
    let mut columns = Vec::with_capacity(row.len());
    for column in row {
        let values: Vec<DbValue> = match column {
            DbValue::DbNull => Vec::new(),
            DbValue::ArrayInt64(v) => v
                .into_iter()
                .map(|x| x.map_or(DbValue::DbNull, DbValue::Int64))
                .collect(),
            DbValue::ArrayInt32(v) => v
                .into_iter()
                .map(|x| x.map_or(DbValue::DbNull, DbValue::Int32))
                .collect(),
            DbValue::ArrayStr(v) => v
                .into_iter()
                .map(|x| x.map_or(DbValue::DbNull, DbValue::Str))
                .collect(),
            other => {
                eprintln!("flashclaim: {context}: a list column is not an array: {other:?}");
                return Err(ApiError::Internal);
            }
        };
        columns.push(values.into_iter());
    }
    let len = columns
        .iter()
        .map(ExactSizeIterator::len)
        .min()
        .unwrap_or(0);
    if columns.iter().any(|c| c.len() != len) {
        eprintln!("flashclaim: {context}: the list's columns differ in length");
        return Err(ApiError::Internal);
    }
    Ok((0..len)
        .map(|_| columns.iter_mut().filter_map(Iterator::next).collect())
        .collect())
}

pub fn str_param(s: &str) -> ParameterValue {
    ParameterValue::Str(s.to_string())
}

pub fn str_array(values: &[String]) -> ParameterValue {
    ParameterValue::ArrayStr(values.iter().cloned().map(Some).collect())
}

pub fn int_array(values: &[i64]) -> ParameterValue {
    ParameterValue::ArrayInt64(values.iter().copied().map(Some).collect())
}

/// The activity's ticket types as one JSON text (`TicketType::list_from_db`), in the
/// operator's order; `[]` for the NULL id of an unknown activity.
macro_rules! types_json {
    () => {
        "(SELECT coalesce(json_agg(json_build_object('key', t.key, 'name', t.name, \
           'description', t.description, 'stock_total', t.stock_total, \
           'per_user_limit', t.per_user_limit, 'kind', t.kind, \
           'starts_at', (extract(epoch FROM t.starts_at) * 1000)::int8, \
           'ends_at', (extract(epoch FROM t.ends_at) * 1000)::int8) ORDER BY t.position), '[]')::text \
         FROM ticket_types t WHERE t.activity_id = activities.id)"
    };
}

/// The columns [`activity_row`] reads, in its order. Instants are read as epoch
/// milliseconds: Spin cannot read a `timestamptz` column as a date-time.
pub const ACTIVITY_COLUMNS: &str = concat!(
    "id, name, description, image_url, \
     (extract(epoch FROM starts_at) * 1000)::int8, (extract(epoch FROM ends_at) * 1000)::int8, \
     status, stock_total, per_user_limit, kind, require_pass, ",
    types_json!(),
    ", stock_buckets"
);

/// [`ACTIVITY_COLUMNS`] aggregated into one row of arrays ordered by id, for lists read
/// with [`list_rows`] (the flag as 0 / 1: pg4 has no boolean arrays).
pub const ACTIVITY_ARRAYS: &str = concat!(
    "array_agg(id ORDER BY id), array_agg(name ORDER BY id), \
     array_agg(description ORDER BY id), array_agg(image_url ORDER BY id), \
     array_agg((extract(epoch FROM starts_at) * 1000)::int8 ORDER BY id), \
     array_agg((extract(epoch FROM ends_at) * 1000)::int8 ORDER BY id), \
     array_agg(status ORDER BY id), array_agg(stock_total ORDER BY id), \
     array_agg(per_user_limit ORDER BY id), array_agg(kind ORDER BY id), \
     array_agg(require_pass::int4 ORDER BY id), array_agg(",
    types_json!(),
    " ORDER BY id), array_agg(stock_buckets ORDER BY id)"
);

pub fn activity_row(row: &[DbValue]) -> Option<flashclaim_core::activity::Activity> {
    use flashclaim_core::activity::{Activity, Status};
    use flashclaim_core::ticket_type::TicketType;
    Some(Activity {
        id: flashclaim_core::ids::ActivityId::from_db(int(row.first()?)?),
        name: text(row.get(1)?)?,
        description: text(row.get(2)?)?,
        image_url: text(row.get(3)?),
        starts_at: Millis(int(row.get(4)?)?),
        ends_at: Millis(int(row.get(5)?)?),
        status: Status::parse(&text(row.get(6)?)?)?,
        per_user_limit: int(row.get(8)?),
        require_pass: boolean(row.get(10)?)?,
        ticket_types: TicketType::list_from_db(&text(row.get(11)?)?).filter(|t| !t.is_empty())?,
        stock_buckets: int(row.get(12)?)?,
    })
}

/// The live stock of each ticket type of `activities` (each with its stock buckets;
/// drafts and activities Redis does not hold: none), one EVALSHA of stocks.lua per Redis
/// endpoint holding any of them (per slot on a cluster), every bucket's stock summed.
pub fn type_stocks(
    activities: &[(flashclaim_core::ids::ActivityId, i64)],
    context: &str,
) -> Result<Vec<flashclaim_core::activity::TypeStocks>, ApiError> {
    use flashclaim_core::keys::ActivityKeys;
    let shards = redis_shards()?;
    // (address, slot) -> (activity position, its bucket's stocks key)
    let mut by_shard: std::collections::BTreeMap<(&str, u16), Vec<(usize, String)>> =
        Default::default();
    for (i, (id, n)) in activities.iter().enumerate() {
        let address = shards.for_activity(*id);
        for b in 0..(*n).max(1) {
            let key = ActivityKeys::in_bucket(*id, b, *n).stocks();
            // One script may only touch one slot of a cluster: one call per slot there.
            let slot = match address.starts_with(cluster::CLUSTER_SCHEME) {
                true => cluster::key_slot(key.as_bytes()),
                false => 0,
            };
            by_shard.entry((address, slot)).or_default().push((i, key));
        }
    }
    let mut stocks: Vec<flashclaim_core::activity::TypeStocks> =
        vec![Default::default(); activities.len()];
    // The map is ordered by address: one connection per address, opened when it comes up.
    let mut opened: Option<(&str, SpinRedis)> = None;
    for ((address, _), entries) in by_shard {
        let keys: Vec<String> = entries.iter().map(|(_, k)| k.clone()).collect();
        if opened.as_ref().is_none_or(|(a, _)| *a != address) {
            let redis = SpinRedis::open(address).map_err(|e| redis_unavailable(context, e))?;
            opened = Some((address, redis));
        }
        let (_, redis) = opened.as_ref().ok_or(ApiError::Internal)?;
        let reply = redis
            .run(&scripts::STOCKS, &keys, &[])
            .map_err(|e| redis_unavailable(context, e))?;
        let decoded = flashclaim_core::activity::decode_stocks(&reply, entries.len())?;
        for ((i, _), bucket) in entries.into_iter().zip(decoded) {
            for (ty, left) in bucket {
                *stocks[i].entry(ty).or_default() += left;
            }
        }
    }
    Ok(stocks)
}

/// An activity definition from Postgres, the source of truth.
pub fn load_activity(
    pg: &pg4::Connection,
    id: flashclaim_core::ids::ActivityId,
) -> Result<Option<flashclaim_core::activity::Activity>, ApiError> {
    // One row whatever the id (spin#3671: a query with no row never returns on Spin
    // 4.0.x): an unknown id is a row of NULLs.
    let rows = pg
        .query(
            &format!(
                "SELECT {ACTIVITY_COLUMNS} FROM (VALUES (1)) AS one(x) \
                 LEFT JOIN activities ON activities.id = $1"
            ),
            &[ParameterValue::Int64(id.get())],
        )
        .map_err(|e| pg_internal("load activity", e))?;
    let Some(row) = rows
        .rows
        .first()
        .filter(|r| r.first().and_then(int).is_some())
    else {
        return Ok(None);
    };
    activity_row(row).map(Some).ok_or_else(|| {
        eprintln!("flashclaim: activity {id} has an unreadable row");
        ApiError::Internal
    })
}

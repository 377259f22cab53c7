//! Spin's Redis binding on a real Redis, for both of its WIT versions:
//! `fermyon:spin/redis@2.0.0` (WASIp2, spin-sdk 5) and the async `spin:redis@3.0.0`
//! (WASIp3, spin-sdk 7). One code path does the work ([`Ops`]); each WIT version only
//! converts its own types. Spin's semantics: every `open` is a new connection (a WASIp3
//! instance may keep it across the requests it serves), a denied address fails the open with
//! `invalid-address`, replies of `execute` are flattened into one list, maps are refused,
//! and Redis errors become `other(text)` in the redis crate's rendering.

use redis::{AsyncCommands, FromRedisValue, Value};
use wasmtime::component::{Accessor, HasSelf, Resource};

use crate::bindings::fermyon::spin::redis as wit2;
use crate::bindings::p3::spin::redis::redis as wit3;
use crate::state::{ComponentRuntime, HostState};

/// An open connection: the resource behind both WIT versions' `connection`.
pub struct RedisConnection {
    conn: redis::aio::MultiplexedConnection,
}

/// A failed call, as Spin reports it; each WIT version has these cases (and
/// `too-many-connections`, which only the table can cause).
#[derive(Debug)]
pub(crate) enum Failure {
    InvalidAddress,
    TypeError,
    Other(String),
}

fn other(e: redis::RedisError) -> Failure {
    Failure::Other(e.to_string())
}

/// A `redis-parameter` of `execute`.
pub(crate) enum Param {
    Int64(i64),
    Binary(Vec<u8>),
}

/// One value of a reply after Spin's conversion.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Flat {
    Nil,
    Status(String),
    Int(i64),
    Bytes(Vec<u8>),
}

/// Spin's reply conversion for `execute`: nested arrays are flattened depth-first, `nil` is
/// kept, booleans become integers, doubles and big numbers text; maps, attributes, verbatim
/// strings and pushes are refused. Public so native tests can see replies exactly as a
/// component running on Spin would.
pub fn flatten(value: &Value) -> redis::RedisResult<Vec<Flat>> {
    fn unsupported(what: &str) -> redis::RedisError {
        redis::RedisError::from((
            redis::ErrorKind::TypeError,
            "Could not convert Redis response",
            format!("Redis {what} type is not supported"),
        ))
    }
    fn append(out: &mut Vec<Flat>, value: &Value) -> redis::RedisResult<()> {
        match value {
            Value::Nil => out.push(Flat::Nil),
            Value::Int(v) => out.push(Flat::Int(*v)),
            Value::BulkString(b) => out.push(Flat::Bytes(b.clone())),
            Value::SimpleString(s) => out.push(Flat::Status(s.clone())),
            Value::Okay => out.push(Flat::Status("OK".into())),
            Value::Array(items) | Value::Set(items) => {
                for item in items {
                    append(out, item)?;
                }
            }
            Value::Double(d) => out.push(Flat::Bytes(d.to_string().into_bytes())),
            Value::Boolean(b) => out.push(Flat::Int(i64::from(*b))),
            Value::BigNumber(n) => out.push(Flat::Bytes(n.to_string().into_bytes())),
            Value::Map(_) => return Err(unsupported("Map")),
            Value::Attribute { .. } => return Err(unsupported("Attribute")),
            Value::VerbatimString { .. } => {
                return Err(unsupported("string with format attribute"))
            }
            Value::Push { .. } => return Err(unsupported("Pub/Sub")),
            Value::ServerError(e) => {
                return Err(redis::RedisError::from((
                    redis::ErrorKind::ResponseError,
                    "Server error",
                    format!("{e:?}"),
                )))
            }
        }
        Ok(())
    }
    let mut out = Vec::new();
    append(&mut out, value)?;
    Ok(out)
}

struct Flattened(Vec<Flat>);

impl FromRedisValue for Flattened {
    fn from_redis_value(value: &Value) -> redis::RedisResult<Self> {
        flatten(value).map(Flattened)
    }
}

/// Opens a connection for `component` as Spin does: the address must parse as a Redis URL
/// and be allowed by the component's `allowed_outbound_hosts`.
pub(crate) async fn open(
    component: &ComponentRuntime,
    address: &str,
) -> Result<RedisConnection, Failure> {
    let Some((scheme, host, port)) = crate::outbound::redis_target(address) else {
        return Err(Failure::InvalidAddress);
    };
    if !component.allowed_hosts.allows(&scheme, &host, port) {
        component.deny(&format!("{scheme}://{host}:{port}"));
        return Err(Failure::InvalidAddress);
    }
    let client = redis::Client::open(address).map_err(|_| Failure::InvalidAddress)?;
    let conn = client
        .get_multiplexed_async_connection()
        .await
        .map_err(other)?;
    Ok(RedisConnection { conn })
}

/// The commands of the binding on one connection. It is a clone of the multiplexed
/// connection, so a call never holds the store while it waits for Redis.
pub(crate) struct Ops(redis::aio::MultiplexedConnection);

impl Ops {
    fn of(
        table: &wasmtime::component::ResourceTable,
        c: &Resource<RedisConnection>,
    ) -> Result<Self, Failure> {
        table
            .get(c)
            .map(|c| Ops(c.conn.clone()))
            .map_err(|_| Failure::Other("could not find connection for resource".into()))
    }

    async fn publish(mut self, channel: String, payload: Vec<u8>) -> Result<(), Failure> {
        let () = self.0.publish(&channel, &payload).await.map_err(other)?;
        Ok(())
    }

    async fn get(mut self, key: String) -> Result<Option<Vec<u8>>, Failure> {
        self.0.get(&key).await.map_err(other)
    }

    async fn set(mut self, key: String, value: Vec<u8>) -> Result<(), Failure> {
        let () = self.0.set(&key, &value).await.map_err(other)?;
        Ok(())
    }

    async fn incr(mut self, key: String) -> Result<i64, Failure> {
        self.0.incr(&key, 1).await.map_err(|e| match e.kind() {
            redis::ErrorKind::TypeError => Failure::TypeError,
            _ => other(e),
        })
    }

    async fn del(mut self, keys: Vec<String>) -> Result<u32, Failure> {
        self.0.del(&keys).await.map_err(other)
    }

    async fn sadd(mut self, key: String, values: Vec<String>) -> Result<u32, Failure> {
        self.0
            .sadd(&key, &values)
            .await
            .map_err(|e| match e.kind() {
                redis::ErrorKind::TypeError => Failure::TypeError,
                _ => other(e),
            })
    }

    async fn smembers(mut self, key: String) -> Result<Vec<String>, Failure> {
        self.0.smembers(&key).await.map_err(other)
    }

    async fn srem(mut self, key: String, values: Vec<String>) -> Result<u32, Failure> {
        self.0.srem(&key, &values).await.map_err(other)
    }

    async fn execute(
        mut self,
        command: String,
        arguments: Vec<Param>,
    ) -> Result<Vec<Flat>, Failure> {
        let mut cmd = redis::cmd(&command);
        for argument in arguments {
            match argument {
                Param::Int64(v) => cmd.arg(v),
                Param::Binary(v) => cmd.arg(v),
            };
        }
        let Flattened(results) = cmd.query_async(&mut self.0).await.map_err(other)?;
        Ok(results)
    }
}

/// The conversions between one WIT version's types and the shared ones.
macro_rules! wit_types {
    ($wit:ident) => {
        impl From<Failure> for $wit::Error {
            fn from(f: Failure) -> Self {
                match f {
                    Failure::InvalidAddress => $wit::Error::InvalidAddress,
                    Failure::TypeError => $wit::Error::TypeError,
                    Failure::Other(text) => $wit::Error::Other(text),
                }
            }
        }

        impl From<$wit::RedisParameter> for Param {
            fn from(p: $wit::RedisParameter) -> Self {
                match p {
                    $wit::RedisParameter::Int64(v) => Param::Int64(v),
                    $wit::RedisParameter::Binary(v) => Param::Binary(v),
                }
            }
        }

        impl From<Flat> for $wit::RedisResult {
            fn from(f: Flat) -> Self {
                match f {
                    Flat::Nil => $wit::RedisResult::Nil,
                    Flat::Status(s) => $wit::RedisResult::Status(s),
                    Flat::Int(n) => $wit::RedisResult::Int64(n),
                    Flat::Bytes(b) => $wit::RedisResult::Binary(b),
                }
            }
        }
    };
}

wit_types!(wit2);
wit_types!(wit3);

fn results<T: From<Flat>>(flat: Vec<Flat>) -> Vec<T> {
    flat.into_iter().map(T::from).collect()
}

fn params(arguments: Vec<impl Into<Param>>) -> Vec<Param> {
    arguments.into_iter().map(Into::into).collect()
}

// `fermyon:spin/redis@2.0.0`: synchronous for the guest; the store is held for the call,
// which is all a WASIp2 instance (one request at a time) can do anyway.

impl HostState {
    fn redis(&mut self, c: &Resource<RedisConnection>) -> Result<Ops, wit2::Error> {
        Ok(Ops::of(&self.table, c)?)
    }
}

impl wit2::Host for HostState {}

impl wit2::HostConnection for HostState {
    async fn open(&mut self, address: String) -> Result<Resource<RedisConnection>, wit2::Error> {
        let conn = open(&self.component, &address).await?;
        self.table
            .push(conn)
            .map_err(|_| wit2::Error::TooManyConnections)
    }

    async fn publish(
        &mut self,
        c: Resource<RedisConnection>,
        channel: String,
        payload: Vec<u8>,
    ) -> Result<(), wit2::Error> {
        Ok(self.redis(&c)?.publish(channel, payload).await?)
    }

    async fn get(
        &mut self,
        c: Resource<RedisConnection>,
        key: String,
    ) -> Result<Option<Vec<u8>>, wit2::Error> {
        Ok(self.redis(&c)?.get(key).await?)
    }

    async fn set(
        &mut self,
        c: Resource<RedisConnection>,
        key: String,
        value: Vec<u8>,
    ) -> Result<(), wit2::Error> {
        Ok(self.redis(&c)?.set(key, value).await?)
    }

    async fn incr(
        &mut self,
        c: Resource<RedisConnection>,
        key: String,
    ) -> Result<i64, wit2::Error> {
        Ok(self.redis(&c)?.incr(key).await?)
    }

    async fn del(
        &mut self,
        c: Resource<RedisConnection>,
        keys: Vec<String>,
    ) -> Result<u32, wit2::Error> {
        Ok(self.redis(&c)?.del(keys).await?)
    }

    async fn sadd(
        &mut self,
        c: Resource<RedisConnection>,
        key: String,
        values: Vec<String>,
    ) -> Result<u32, wit2::Error> {
        Ok(self.redis(&c)?.sadd(key, values).await?)
    }

    async fn smembers(
        &mut self,
        c: Resource<RedisConnection>,
        key: String,
    ) -> Result<Vec<String>, wit2::Error> {
        Ok(self.redis(&c)?.smembers(key).await?)
    }

    async fn srem(
        &mut self,
        c: Resource<RedisConnection>,
        key: String,
        values: Vec<String>,
    ) -> Result<u32, wit2::Error> {
        Ok(self.redis(&c)?.srem(key, values).await?)
    }

    async fn execute(
        &mut self,
        c: Resource<RedisConnection>,
        command: String,
        arguments: Vec<wit2::RedisParameter>,
    ) -> Result<Vec<wit2::RedisResult>, wit2::Error> {
        let flat = self.redis(&c)?.execute(command, params(arguments)).await?;
        Ok(results(flat))
    }

    async fn drop(&mut self, c: Resource<RedisConnection>) -> wasmtime::Result<()> {
        self.table.delete(c)?;
        Ok(())
    }
}

// `spin:redis@3.0.0`: every function is a WIT `async func`. The store is taken only to
// look the connection up (or to add it); Redis is awaited without it, so the instance's
// other requests run meanwhile. The connection lives in the instance's table and so
// outlives the request that opened it, for as long as the instance is reused.

type P3 = HasSelf<HostState>;

fn ops3<T>(accessor: &Accessor<T, P3>, c: &Resource<RedisConnection>) -> Result<Ops, Failure> {
    accessor.with(|mut access| Ops::of(&access.get().table, c))
}

impl wit3::Host for HostState {}

impl wit3::HostConnection for HostState {
    fn drop(&mut self, c: Resource<RedisConnection>) -> wasmtime::Result<()> {
        self.table.delete(c)?;
        Ok(())
    }
}

impl<T> wit3::HostConnectionWithStore<T> for P3 {
    async fn open(
        accessor: &Accessor<T, Self>,
        address: String,
    ) -> Result<Resource<RedisConnection>, wit3::Error> {
        let component = accessor.with(|mut access| access.get().component.clone());
        let conn = open(&component, &address).await?;
        accessor.with(|mut access| {
            access
                .get()
                .table
                .push(conn)
                .map_err(|_| wit3::Error::TooManyConnections)
        })
    }

    async fn publish(
        accessor: &Accessor<T, Self>,
        c: Resource<RedisConnection>,
        channel: String,
        payload: Vec<u8>,
    ) -> Result<(), wit3::Error> {
        Ok(ops3(accessor, &c)?.publish(channel, payload).await?)
    }

    async fn get(
        accessor: &Accessor<T, Self>,
        c: Resource<RedisConnection>,
        key: String,
    ) -> Result<Option<Vec<u8>>, wit3::Error> {
        Ok(ops3(accessor, &c)?.get(key).await?)
    }

    async fn set(
        accessor: &Accessor<T, Self>,
        c: Resource<RedisConnection>,
        key: String,
        value: Vec<u8>,
    ) -> Result<(), wit3::Error> {
        Ok(ops3(accessor, &c)?.set(key, value).await?)
    }

    async fn incr(
        accessor: &Accessor<T, Self>,
        c: Resource<RedisConnection>,
        key: String,
    ) -> Result<i64, wit3::Error> {
        Ok(ops3(accessor, &c)?.incr(key).await?)
    }

    async fn del(
        accessor: &Accessor<T, Self>,
        c: Resource<RedisConnection>,
        keys: Vec<String>,
    ) -> Result<u32, wit3::Error> {
        Ok(ops3(accessor, &c)?.del(keys).await?)
    }

    async fn sadd(
        accessor: &Accessor<T, Self>,
        c: Resource<RedisConnection>,
        key: String,
        values: Vec<String>,
    ) -> Result<u32, wit3::Error> {
        Ok(ops3(accessor, &c)?.sadd(key, values).await?)
    }

    async fn smembers(
        accessor: &Accessor<T, Self>,
        c: Resource<RedisConnection>,
        key: String,
    ) -> Result<Vec<String>, wit3::Error> {
        Ok(ops3(accessor, &c)?.smembers(key).await?)
    }

    async fn srem(
        accessor: &Accessor<T, Self>,
        c: Resource<RedisConnection>,
        key: String,
        values: Vec<String>,
    ) -> Result<u32, wit3::Error> {
        Ok(ops3(accessor, &c)?.srem(key, values).await?)
    }

    async fn execute(
        accessor: &Accessor<T, Self>,
        c: Resource<RedisConnection>,
        command: String,
        arguments: Vec<wit3::RedisParameter>,
    ) -> Result<Vec<wit3::RedisResult>, wit3::Error> {
        let flat = ops3(accessor, &c)?
            .execute(command, params(arguments))
            .await?;
        Ok(results(flat))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::bindings::fermyon::spin::redis::RedisResult;

    fn flatten(v: Value) -> redis::RedisResult<Vec<RedisResult>> {
        Flattened::from_redis_value(&v).map(|f| results(f.0))
    }

    #[test]
    fn nested_arrays_flatten_depth_first_keeping_nil() {
        let v = Value::Array(vec![
            Value::Int(1),
            Value::Array(vec![
                Value::Nil,
                Value::Array(vec![Value::BulkString(b"x".to_vec())]),
            ]),
            Value::Okay,
            Value::Boolean(true),
            Value::Double(1.5),
        ]);
        let flat = flatten(v).unwrap();
        assert_eq!(flat.len(), 6);
        assert!(matches!(flat[0], RedisResult::Int64(1)));
        assert!(matches!(flat[1], RedisResult::Nil));
        assert!(matches!(&flat[2], RedisResult::Binary(b) if b == b"x"));
        assert!(matches!(&flat[3], RedisResult::Status(s) if s == "OK"));
        assert!(matches!(flat[4], RedisResult::Int64(1)));
        assert!(matches!(&flat[5], RedisResult::Binary(b) if b == b"1.5"));
    }

    #[test]
    fn maps_are_refused_as_spin_refuses_them() {
        let map = Value::Map(vec![(Value::Int(1), Value::Int(2))]);
        let err = flatten(Value::Array(vec![Value::Int(0), map])).unwrap_err();
        assert!(
            err.to_string().contains("Map type is not supported"),
            "{err}"
        );
    }
}

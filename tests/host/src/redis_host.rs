//! `fermyon:spin/redis@2.0.0` on a real Redis, with Spin's semantics: every `open` is a new
//! connection, a denied address fails the open with `invalid-address`, replies of `execute`
//! are flattened into one list, maps are refused, and Redis errors become `other(text)`.

use redis::{AsyncCommands, FromRedisValue, Value};
use wasmtime::component::Resource;

use crate::bindings::fermyon::spin::redis::{self as wit, Error, RedisParameter, RedisResult};
use crate::state::HostState;

pub struct RedisConnection {
    conn: redis::aio::MultiplexedConnection,
}

fn other(e: redis::RedisError) -> Error {
    Error::Other(e.to_string())
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

struct Flattened(Vec<RedisResult>);

impl FromRedisValue for Flattened {
    fn from_redis_value(value: &Value) -> redis::RedisResult<Self> {
        Ok(Flattened(
            flatten(value)?
                .into_iter()
                .map(|f| match f {
                    Flat::Nil => RedisResult::Nil,
                    Flat::Status(s) => RedisResult::Status(s),
                    Flat::Int(n) => RedisResult::Int64(n),
                    Flat::Bytes(b) => RedisResult::Binary(b),
                })
                .collect(),
        ))
    }
}

impl HostState {
    fn redis(
        &mut self,
        c: &Resource<RedisConnection>,
    ) -> Result<redis::aio::MultiplexedConnection, Error> {
        self.table
            .get(c)
            .map(|c| c.conn.clone())
            .map_err(|_| Error::Other("could not find connection for resource".into()))
    }
}

impl wit::Host for HostState {}

impl wit::HostConnection for HostState {
    async fn open(&mut self, address: String) -> Result<Resource<RedisConnection>, Error> {
        let Some((scheme, host, port)) = crate::outbound::redis_target(&address) else {
            return Err(Error::InvalidAddress);
        };
        if !self.component.allowed_hosts.allows(&scheme, &host, port) {
            self.component.deny(&format!("{scheme}://{host}:{port}"));
            return Err(Error::InvalidAddress);
        }
        let client = redis::Client::open(address.as_str()).map_err(|_| Error::InvalidAddress)?;
        let conn = client
            .get_multiplexed_async_connection()
            .await
            .map_err(other)?;
        self.table
            .push(RedisConnection { conn })
            .map_err(|_| Error::TooManyConnections)
    }

    async fn publish(
        &mut self,
        c: Resource<RedisConnection>,
        channel: String,
        payload: Vec<u8>,
    ) -> Result<(), Error> {
        let mut conn = self.redis(&c)?;
        let () = conn.publish(&channel, &payload).await.map_err(other)?;
        Ok(())
    }

    async fn get(
        &mut self,
        c: Resource<RedisConnection>,
        key: String,
    ) -> Result<Option<Vec<u8>>, Error> {
        let mut conn = self.redis(&c)?;
        conn.get(&key).await.map_err(other)
    }

    async fn set(
        &mut self,
        c: Resource<RedisConnection>,
        key: String,
        value: Vec<u8>,
    ) -> Result<(), Error> {
        let mut conn = self.redis(&c)?;
        let () = conn.set(&key, &value).await.map_err(other)?;
        Ok(())
    }

    async fn incr(&mut self, c: Resource<RedisConnection>, key: String) -> Result<i64, Error> {
        let mut conn = self.redis(&c)?;
        conn.incr(&key, 1).await.map_err(|e| match e.kind() {
            redis::ErrorKind::TypeError => Error::TypeError,
            _ => other(e),
        })
    }

    async fn del(&mut self, c: Resource<RedisConnection>, keys: Vec<String>) -> Result<u32, Error> {
        let mut conn = self.redis(&c)?;
        conn.del(&keys).await.map_err(other)
    }

    async fn sadd(
        &mut self,
        c: Resource<RedisConnection>,
        key: String,
        values: Vec<String>,
    ) -> Result<u32, Error> {
        let mut conn = self.redis(&c)?;
        conn.sadd(&key, &values).await.map_err(|e| match e.kind() {
            redis::ErrorKind::TypeError => Error::TypeError,
            _ => other(e),
        })
    }

    async fn smembers(
        &mut self,
        c: Resource<RedisConnection>,
        key: String,
    ) -> Result<Vec<String>, Error> {
        let mut conn = self.redis(&c)?;
        conn.smembers(&key).await.map_err(other)
    }

    async fn srem(
        &mut self,
        c: Resource<RedisConnection>,
        key: String,
        values: Vec<String>,
    ) -> Result<u32, Error> {
        let mut conn = self.redis(&c)?;
        conn.srem(&key, &values).await.map_err(other)
    }

    async fn execute(
        &mut self,
        c: Resource<RedisConnection>,
        command: String,
        arguments: Vec<RedisParameter>,
    ) -> Result<Vec<RedisResult>, Error> {
        let mut conn = self.redis(&c)?;
        let mut cmd = redis::cmd(&command);
        for argument in arguments {
            match argument {
                RedisParameter::Int64(v) => cmd.arg(v),
                RedisParameter::Binary(v) => cmd.arg(v),
            };
        }
        let Flattened(results) = cmd.query_async(&mut conn).await.map_err(other)?;
        Ok(results)
    }

    async fn drop(&mut self, c: Resource<RedisConnection>) -> wasmtime::Result<()> {
        self.table.delete(c)?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn flatten(v: Value) -> redis::RedisResult<Vec<RedisResult>> {
        Flattened::from_redis_value(&v).map(|f| f.0)
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

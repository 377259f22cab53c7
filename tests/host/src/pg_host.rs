//! `spin:postgres/postgres@4.0.0` on a real Postgres, converting types the way Spin's
//! outbound-pg factor does, including its sharp edges: a `datetime` value is a naive
//! timestamp (so it binds to `timestamp`, not `timestamptz`), `timestamp` (epoch seconds)
//! binds to `timestamptz`, and reading a `timestamptz` column as a date-time fails.
//! Components that must run on real Spin exchange instants as epoch integers. A query
//! whose result has no row, which Spin 4.0.x never answers, is refused (see [`ZeroRows`]).

// The error type is the WIT interface's own and cannot be boxed.
#![allow(clippy::result_large_err)]

use std::sync::Arc;

use anyhow::anyhow;
use chrono::{Datelike, Timelike};
use tokio_postgres::types::{FromSql, ToSql, Type};
use tokio_postgres::{NoTls, Row};
use wasmtime::component::Resource;

use crate::bindings::spin::postgres::postgres::{
    self as wit, Column, DbDataType, DbError, DbValue, Error, ParameterValue, QueryError, RowSet,
};
use crate::state::HostState;

pub struct PgConnection {
    client: Arc<tokio_postgres::Client>,
    address: String,
}

impl HostState {
    /// The connection's client, refused when its database is marked (see [`ZeroRows`]).
    fn pg(&mut self, c: &Resource<PgConnection>) -> Result<Arc<tokio_postgres::Client>, Error> {
        let c = self
            .table
            .get(c)
            .map_err(|_| Error::Other("could not find connection for resource".into()))?;
        ZeroRows::check(&self.component.id, &c.address).map_err(Error::Other)?;
        Ok(c.client.clone())
    }
}

/// Spin 4.0.x never returns from a Postgres `query` whose result has no row
/// (spinframework/spin#3671): the request hangs for good and no timeout can end it. This
/// host answers such a query with an error instead, so tests fail rather than hang, and
/// says why on stderr. An error alone can go unnoticed: a component may ignore it, and a
/// streamed response (the claims export) has already answered 200 and just ends its body,
/// exactly as a correct empty export would. So the database the query ran on is also
/// marked for the rest of the process: every later open of that address and every call on
/// a connection to it fails with the same reason, and the next request of the test that
/// needs Postgres fails too. Each test app has a database of its own, so one mark fails
/// that test only.
struct ZeroRows;

/// Postgres addresses (as the component passed them) on which a query returned zero rows,
/// with the component and the statement.
static ZERO_ROW_DATABASES: std::sync::Mutex<Vec<(String, String, String)>> =
    std::sync::Mutex::new(Vec::new());

impl ZeroRows {
    fn report(component: &str, address: &str, statement: &str) -> Error {
        let sql: String = statement.chars().take(200).collect();
        let line = format!(
            "spin-test-host: component `{component}` ran a Postgres query that returned zero \
             rows; on Spin 4.0.x this call never returns (spinframework/spin#3671): rewrite it \
             to always return a row (an aggregate, count(*), array_agg, json_agg ...): {sql}"
        );
        eprintln!("{line}");
        let mut marked = ZERO_ROW_DATABASES
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if !marked.iter().any(|(a, _, _)| a == address) {
            marked.push((address.to_string(), component.to_string(), sql));
        }
        Error::Other(line)
    }

    fn check(component: &str, address: &str) -> Result<(), String> {
        let marked = ZERO_ROW_DATABASES
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        match marked.iter().find(|(a, _, _)| a == address) {
            None => Ok(()),
            Some((_, first, sql)) => {
                let line = format!(
                    "spin-test-host: component `{component}`: Postgres refused on this database \
                     for the rest of the run: component `{first}` ran a query on it that returned \
                     zero rows, which never returns on Spin 4.0.x (spinframework/spin#3671): {sql}"
                );
                eprintln!("{line}");
                Err(line)
            }
        }
    }
}

fn query_failed(e: tokio_postgres::Error) -> Error {
    let text = format!("{e:?}");
    Error::QueryFailed(match e.as_db_error() {
        None => QueryError::Text(text),
        Some(db) => {
            let mut extras = Vec::new();
            let mut extra = |k: &str, v: Option<&str>| {
                if let Some(v) = v {
                    extras.push((k.to_string(), v.to_string()));
                }
            };
            extra("column", db.column());
            extra("constraint", db.constraint());
            extra("hint", db.hint());
            extra("table", db.table());
            extra("datatype", db.datatype());
            extra("schema", db.schema());
            QueryError::DbError(DbError {
                as_text: text,
                severity: db.severity().to_string(),
                code: db.code().code().to_string(),
                message: db.message().to_string(),
                detail: db.detail().map(str::to_string),
                extras,
            })
        }
    })
}

/// Binds as SQL NULL to a parameter of any type.
#[derive(Debug)]
struct Null;

impl ToSql for Null {
    fn to_sql(
        &self,
        _: &Type,
        _: &mut bytes::BytesMut,
    ) -> Result<tokio_postgres::types::IsNull, Box<dyn std::error::Error + Sync + Send>> {
        Ok(tokio_postgres::types::IsNull::Yes)
    }
    fn accepts(_: &Type) -> bool {
        true
    }
    tokio_postgres::types::to_sql_checked!();
}

type Param = Box<dyn ToSql + Send + Sync>;

fn to_param(value: &ParameterValue) -> anyhow::Result<Param> {
    Ok(match value {
        ParameterValue::Boolean(v) => Box::new(*v),
        ParameterValue::Int8(v) => Box::new(*v),
        ParameterValue::Int16(v) => Box::new(*v),
        ParameterValue::Int32(v) => Box::new(*v),
        ParameterValue::Int64(v) => Box::new(*v),
        ParameterValue::Floating32(v) => Box::new(*v),
        ParameterValue::Floating64(v) => Box::new(*v),
        ParameterValue::Str(v) => Box::new(v.clone()),
        ParameterValue::Binary(v) => Box::new(v.clone()),
        ParameterValue::Date((y, m, d)) => Box::new(
            chrono::NaiveDate::from_ymd_opt(*y, (*m).into(), (*d).into())
                .ok_or_else(|| anyhow!("invalid date y={y}, m={m}, d={d}"))?,
        ),
        ParameterValue::Time((h, mi, s, ns)) => Box::new(
            chrono::NaiveTime::from_hms_nano_opt((*h).into(), (*mi).into(), (*s).into(), *ns)
                .ok_or_else(|| anyhow!("invalid time {h}:{mi}:{s}:{ns}"))?,
        ),
        ParameterValue::Datetime((y, mo, d, h, mi, s, ns)) => {
            let date = chrono::NaiveDate::from_ymd_opt(*y, (*mo).into(), (*d).into())
                .ok_or_else(|| anyhow!("invalid date y={y}, m={mo}, d={d}"))?;
            let time =
                chrono::NaiveTime::from_hms_nano_opt((*h).into(), (*mi).into(), (*s).into(), *ns)
                    .ok_or_else(|| anyhow!("invalid time {h}:{mi}:{s}:{ns}"))?;
            Box::new(chrono::NaiveDateTime::new(date, time))
        }
        ParameterValue::Timestamp(v) => Box::new(
            chrono::DateTime::<chrono::Utc>::from_timestamp(*v, 0)
                .ok_or_else(|| anyhow!("invalid epoch timestamp {v}"))?,
        ),
        ParameterValue::Uuid(v) => Box::new(uuid::Uuid::parse_str(v)?),
        ParameterValue::Jsonb(v) => Box::new(serde_json::from_slice::<serde_json::Value>(v)?),
        ParameterValue::ArrayInt32(v) => Box::new(v.clone()),
        ParameterValue::ArrayInt64(v) => Box::new(v.clone()),
        ParameterValue::ArrayStr(v) => Box::new(v.clone()),
        ParameterValue::DbNull => Box::new(Null),
        other => {
            return Err(anyhow!(
                "parameter type not supported by this host: {other:?}"
            ))
        }
    })
}

fn data_type(t: &Type) -> DbDataType {
    match *t {
        Type::BOOL => DbDataType::Boolean,
        Type::BYTEA => DbDataType::Binary,
        Type::FLOAT4 => DbDataType::Floating32,
        Type::FLOAT8 => DbDataType::Floating64,
        Type::INT2 => DbDataType::Int16,
        Type::INT4 => DbDataType::Int32,
        Type::INT8 => DbDataType::Int64,
        Type::TEXT | Type::VARCHAR | Type::BPCHAR => DbDataType::Str,
        Type::TIMESTAMP | Type::TIMESTAMPTZ => DbDataType::Datetime,
        Type::DATE => DbDataType::Date,
        Type::TIME => DbDataType::Time,
        Type::UUID => DbDataType::Uuid,
        Type::JSONB => DbDataType::Jsonb,
        Type::NUMERIC => DbDataType::Decimal,
        Type::INT4_ARRAY => DbDataType::ArrayInt32,
        Type::INT8_ARRAY => DbDataType::ArrayInt64,
        Type::TEXT_ARRAY | Type::VARCHAR_ARRAY | Type::BPCHAR_ARRAY => DbDataType::ArrayStr,
        Type::INTERVAL => DbDataType::Interval,
        ref other => DbDataType::Other(other.name().to_string()),
    }
}

fn get<'a, T: FromSql<'a>>(
    row: &'a Row,
    i: usize,
    f: impl Fn(T) -> DbValue,
) -> anyhow::Result<DbValue> {
    Ok(row.try_get::<_, Option<T>>(i)?.map_or(DbValue::DbNull, f))
}

/// Raw bytes of a column this host does not convert, as Spin's `unsupported`.
struct RawBytes(Vec<u8>);

impl<'a> FromSql<'a> for RawBytes {
    fn from_sql(_: &Type, raw: &'a [u8]) -> Result<Self, Box<dyn std::error::Error + Sync + Send>> {
        Ok(RawBytes(raw.to_vec()))
    }
    fn accepts(_: &Type) -> bool {
        true
    }
}

fn to_value(row: &Row, i: usize) -> anyhow::Result<DbValue> {
    match *row.columns()[i].type_() {
        Type::BOOL => get(row, i, DbValue::Boolean),
        Type::BYTEA => get(row, i, DbValue::Binary),
        Type::FLOAT4 => get(row, i, DbValue::Floating32),
        Type::FLOAT8 => get(row, i, DbValue::Floating64),
        Type::INT2 => get(row, i, DbValue::Int16),
        Type::INT4 => get(row, i, DbValue::Int32),
        Type::INT8 => get(row, i, DbValue::Int64),
        Type::TEXT | Type::VARCHAR | Type::BPCHAR => get(row, i, DbValue::Str),
        // As in Spin: both are read as a naive timestamp, which `timestamptz` refuses.
        Type::TIMESTAMP | Type::TIMESTAMPTZ => get(row, i, |v: chrono::NaiveDateTime| {
            DbValue::Datetime((
                v.year(),
                v.month() as u8,
                v.day() as u8,
                v.hour() as u8,
                v.minute() as u8,
                v.second() as u8,
                v.nanosecond(),
            ))
        }),
        Type::DATE => get(row, i, |v: chrono::NaiveDate| {
            DbValue::Date((v.year(), v.month() as u8, v.day() as u8))
        }),
        Type::TIME => get(row, i, |v: chrono::NaiveTime| {
            DbValue::Time((
                v.hour() as u8,
                v.minute() as u8,
                v.second() as u8,
                v.nanosecond(),
            ))
        }),
        Type::UUID => get(row, i, |v: uuid::Uuid| DbValue::Uuid(v.to_string())),
        Type::JSONB => get(row, i, |v: serde_json::Value| {
            DbValue::Jsonb(serde_json::to_vec(&v).unwrap_or_default())
        }),
        Type::INT4_ARRAY => get(row, i, DbValue::ArrayInt32),
        Type::INT8_ARRAY => get(row, i, DbValue::ArrayInt64),
        Type::TEXT_ARRAY | Type::VARCHAR_ARRAY | Type::BPCHAR_ARRAY => {
            get(row, i, DbValue::ArrayStr)
        }
        _ => get(row, i, |v: RawBytes| DbValue::Unsupported(v.0)),
    }
}

fn params(values: &[ParameterValue], bad: fn(String) -> Error) -> Result<Vec<Param>, Error> {
    values
        .iter()
        .map(to_param)
        .collect::<anyhow::Result<Vec<_>>>()
        .map_err(|e| bad(format!("{e:?}")))
}

fn refs(params: &[Param]) -> Vec<&(dyn ToSql + Sync)> {
    params
        .iter()
        .map(|p| p.as_ref() as &(dyn ToSql + Sync))
        .collect()
}

impl wit::Host for HostState {}

impl wit::HostConnection for HostState {
    async fn open(&mut self, address: String) -> Result<Resource<PgConnection>, Error> {
        let Some(targets) = crate::outbound::postgres_targets(&address) else {
            return Err(Error::ConnectionFailed("invalid Postgres address".into()));
        };
        for (host, port) in &targets {
            if !self.component.allowed_hosts.allows("postgres", host, *port) {
                self.component.deny(&format!("postgres://{host}:{port}"));
                return Err(Error::ConnectionFailed(format!(
                    "address postgres://{host}:{port} is not permitted"
                )));
            }
        }
        ZeroRows::check(&self.component.id, &address).map_err(Error::ConnectionFailed)?;
        let (client, connection) = tokio_postgres::connect(&address, NoTls)
            .await
            .map_err(|e| Error::ConnectionFailed(format!("{e:?}")))?;
        tokio::spawn(async move {
            // The connection ends when the client is dropped; errors then are expected.
            let _ = connection.await;
        });
        self.table
            .push(PgConnection {
                client: Arc::new(client),
                address,
            })
            .map_err(|e| Error::Other(e.to_string()))
    }

    async fn query(
        &mut self,
        c: Resource<PgConnection>,
        statement: String,
        values: Vec<ParameterValue>,
    ) -> Result<RowSet, Error> {
        let client = self.pg(&c)?;
        let params = params(&values, Error::BadParameter)?;
        let rows = client
            .query(&statement, &refs(&params))
            .await
            .map_err(query_failed)?;
        let Some(first) = rows.first() else {
            let address = self
                .table
                .get(&c)
                .map(|c| c.address.clone())
                .unwrap_or_default();
            return Err(ZeroRows::report(&self.component.id, &address, &statement));
        };
        let columns = first
            .columns()
            .iter()
            .map(|c| Column {
                name: c.name().to_string(),
                data_type: data_type(c.type_()),
            })
            .collect();
        let rows = rows
            .iter()
            .map(|row| {
                (0..row.len())
                    .map(|i| to_value(row, i))
                    .collect::<anyhow::Result<Vec<_>>>()
            })
            .collect::<anyhow::Result<Vec<_>>>()
            .map_err(|e| Error::QueryFailed(QueryError::Text(format!("{e:?}"))))?;
        Ok(RowSet { columns, rows })
    }

    async fn execute(
        &mut self,
        c: Resource<PgConnection>,
        statement: String,
        values: Vec<ParameterValue>,
    ) -> Result<u64, Error> {
        let client = self.pg(&c)?;
        let params = params(&values, Error::ValueConversionFailed)?;
        client
            .execute(&statement, &refs(&params))
            .await
            .map_err(query_failed)
    }

    async fn drop(&mut self, c: Resource<PgConnection>) -> wasmtime::Result<()> {
        self.table.delete(c)?;
        Ok(())
    }
}

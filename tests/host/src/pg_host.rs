//! Spin's Postgres binding on a real Postgres, for both of its WIT versions:
//! `spin:postgres/postgres@4.0.0` (WASIp2, spin-sdk 5) and `spin:postgres/postgres@4.2.0`
//! (WASIp3, spin-sdk 7, whose `pg::Connection` calls `open-async`, `query-async` and
//! `execute-async`; the synchronous functions of 4.0.0 and a connection builder are there
//! too). One code path does the work ([`open`], [`Session`]); each WIT version only converts
//! its own types ([`wit_types!`]).
//!
//! Types convert the way Spin's outbound-pg factor does, including its sharp edges: a
//! `datetime` value is a naive timestamp (so it binds to `timestamp`, not `timestamptz`),
//! `timestamp` (epoch seconds) binds to `timestamptz`, and reading a `timestamptz` column as
//! a date-time fails. Components that must run on real Spin exchange instants as epoch
//! integers. A query whose result has no row, which Spin 4.0.x never answers, is refused
//! (see [`ZeroRows`]), whichever WIT version asked.

// The error types are the WIT interfaces' own (and the shared one mirrors them); they are
// returned as they are, never boxed.
#![allow(clippy::result_large_err)]

use std::sync::Arc;

use anyhow::anyhow;
use chrono::{Datelike, Timelike};
use tokio_postgres::types::{FromSql, ToSql, Type};
use tokio_postgres::{NoTls, Row};
use wasmtime::component::{Accessor, FutureReader, HasSelf, Resource, StreamReader};

use crate::bindings::p3::spin::postgres4_2_0::postgres as wit42;
use crate::bindings::spin::postgres4_0_0::postgres as wit40;
use crate::state::{ComponentRuntime, HostState};

/// An open connection: the resource behind both WIT versions' `connection`. A WASIp3
/// instance may keep it across the requests it serves.
pub struct PgConnection {
    client: Arc<tokio_postgres::Client>,
    address: String,
}

/// `connection-builder` (4.2.0): an address waiting for `build`.
pub struct PgConnectionBuilder {
    address: String,
}

/// A failed call, as Spin reports it; both WIT versions have these cases.
pub(crate) enum Failure {
    ConnectionFailed(String),
    BadParameter(String),
    QueryFailed(QueryFailure),
    ValueConversionFailed(String),
    Other(String),
}

/// `query-error`: Postgres's own structured error when there is one, else text.
pub(crate) enum QueryFailure {
    Text(String),
    Db(DbFailure),
}

/// `db-error`.
pub(crate) struct DbFailure {
    as_text: String,
    severity: String,
    code: String,
    message: String,
    detail: Option<String>,
    extras: Vec<(String, String)>,
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
    fn report(component: &str, address: &str, statement: &str) -> Failure {
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
        Failure::Other(line)
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

fn query_failed(e: tokio_postgres::Error) -> Failure {
    let text = format!("{e:?}");
    Failure::QueryFailed(match e.as_db_error() {
        None => QueryFailure::Text(text),
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
            QueryFailure::Db(DbFailure {
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

fn refs(params: &[Param]) -> Vec<&(dyn ToSql + Sync)> {
    params
        .iter()
        .map(|p| p.as_ref() as &(dyn ToSql + Sync))
        .collect()
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

/// A WIT version's `parameter-value`, bound as Spin binds it.
trait WitParameter: Sync {
    fn to_param(&self) -> anyhow::Result<Param>;
}

/// A WIT version's `column`, named and typed as Spin reports it.
trait WitColumn {
    fn of(column: &tokio_postgres::Column) -> Self;
}

/// A WIT version's `db-value`, read from a row as Spin reads it.
trait WitValue: Sized {
    fn read(row: &Row, i: usize) -> anyhow::Result<Self>;
}

/// The conversions between one WIT version's types and Postgres's. Both versions have the
/// same cases, so the same text serves both; no other code knows a WIT type.
macro_rules! wit_types {
    ($wit:ident) => {
        impl From<Failure> for $wit::Error {
            fn from(f: Failure) -> Self {
                match f {
                    Failure::ConnectionFailed(t) => $wit::Error::ConnectionFailed(t),
                    Failure::BadParameter(t) => $wit::Error::BadParameter(t),
                    Failure::ValueConversionFailed(t) => $wit::Error::ValueConversionFailed(t),
                    Failure::Other(t) => $wit::Error::Other(t),
                    Failure::QueryFailed(QueryFailure::Text(t)) => {
                        $wit::Error::QueryFailed($wit::QueryError::Text(t))
                    }
                    Failure::QueryFailed(QueryFailure::Db(db)) => {
                        $wit::Error::QueryFailed($wit::QueryError::DbError($wit::DbError {
                            as_text: db.as_text,
                            severity: db.severity,
                            code: db.code,
                            message: db.message,
                            detail: db.detail,
                            extras: db.extras,
                        }))
                    }
                }
            }
        }

        impl WitParameter for $wit::ParameterValue {
            fn to_param(&self) -> anyhow::Result<Param> {
                use $wit::ParameterValue as P;
                Ok(match self {
                    P::Boolean(v) => Box::new(*v),
                    P::Int8(v) => Box::new(*v),
                    P::Int16(v) => Box::new(*v),
                    P::Int32(v) => Box::new(*v),
                    P::Int64(v) => Box::new(*v),
                    P::Floating32(v) => Box::new(*v),
                    P::Floating64(v) => Box::new(*v),
                    P::Str(v) => Box::new(v.clone()),
                    P::Binary(v) => Box::new(v.clone()),
                    P::Date((y, m, d)) => Box::new(
                        chrono::NaiveDate::from_ymd_opt(*y, (*m).into(), (*d).into())
                            .ok_or_else(|| anyhow!("invalid date y={y}, m={m}, d={d}"))?,
                    ),
                    P::Time((h, mi, s, ns)) => Box::new(
                        chrono::NaiveTime::from_hms_nano_opt(
                            (*h).into(),
                            (*mi).into(),
                            (*s).into(),
                            *ns,
                        )
                        .ok_or_else(|| anyhow!("invalid time {h}:{mi}:{s}:{ns}"))?,
                    ),
                    P::Datetime((y, mo, d, h, mi, s, ns)) => {
                        let date = chrono::NaiveDate::from_ymd_opt(*y, (*mo).into(), (*d).into())
                            .ok_or_else(|| anyhow!("invalid date y={y}, m={mo}, d={d}"))?;
                        let time = chrono::NaiveTime::from_hms_nano_opt(
                            (*h).into(),
                            (*mi).into(),
                            (*s).into(),
                            *ns,
                        )
                        .ok_or_else(|| anyhow!("invalid time {h}:{mi}:{s}:{ns}"))?;
                        Box::new(chrono::NaiveDateTime::new(date, time))
                    }
                    P::Timestamp(v) => Box::new(
                        chrono::DateTime::<chrono::Utc>::from_timestamp(*v, 0)
                            .ok_or_else(|| anyhow!("invalid epoch timestamp {v}"))?,
                    ),
                    P::Uuid(v) => Box::new(uuid::Uuid::parse_str(v)?),
                    P::Jsonb(v) => Box::new(serde_json::from_slice::<serde_json::Value>(v)?),
                    P::ArrayInt32(v) => Box::new(v.clone()),
                    P::ArrayInt64(v) => Box::new(v.clone()),
                    P::ArrayStr(v) => Box::new(v.clone()),
                    P::DbNull => Box::new(Null),
                    other => {
                        return Err(anyhow!(
                            "parameter type not supported by this host: {other:?}"
                        ))
                    }
                })
            }
        }

        impl WitColumn for $wit::Column {
            fn of(column: &tokio_postgres::Column) -> Self {
                use $wit::DbDataType as D;
                let data_type = match *column.type_() {
                    Type::BOOL => D::Boolean,
                    Type::BYTEA => D::Binary,
                    Type::FLOAT4 => D::Floating32,
                    Type::FLOAT8 => D::Floating64,
                    Type::INT2 => D::Int16,
                    Type::INT4 => D::Int32,
                    Type::INT8 => D::Int64,
                    Type::TEXT | Type::VARCHAR | Type::BPCHAR => D::Str,
                    Type::TIMESTAMP | Type::TIMESTAMPTZ => D::Datetime,
                    Type::DATE => D::Date,
                    Type::TIME => D::Time,
                    Type::UUID => D::Uuid,
                    Type::JSONB => D::Jsonb,
                    Type::NUMERIC => D::Decimal,
                    Type::INT4_ARRAY => D::ArrayInt32,
                    Type::INT8_ARRAY => D::ArrayInt64,
                    Type::TEXT_ARRAY | Type::VARCHAR_ARRAY | Type::BPCHAR_ARRAY => D::ArrayStr,
                    Type::INTERVAL => D::Interval,
                    ref other => D::Other(other.name().to_string()),
                };
                $wit::Column {
                    name: column.name().to_string(),
                    data_type,
                }
            }
        }

        impl WitValue for $wit::DbValue {
            fn read(row: &Row, i: usize) -> anyhow::Result<Self> {
                use $wit::DbValue as V;
                fn get<'a, T: FromSql<'a>>(
                    row: &'a Row,
                    i: usize,
                    f: impl Fn(T) -> V,
                ) -> anyhow::Result<V> {
                    Ok(row.try_get::<_, Option<T>>(i)?.map_or(V::DbNull, f))
                }
                match *row.columns()[i].type_() {
                    Type::BOOL => get(row, i, V::Boolean),
                    Type::BYTEA => get(row, i, V::Binary),
                    Type::FLOAT4 => get(row, i, V::Floating32),
                    Type::FLOAT8 => get(row, i, V::Floating64),
                    Type::INT2 => get(row, i, V::Int16),
                    Type::INT4 => get(row, i, V::Int32),
                    Type::INT8 => get(row, i, V::Int64),
                    Type::TEXT | Type::VARCHAR | Type::BPCHAR => get(row, i, V::Str),
                    // As in Spin: both are read as a naive timestamp, which `timestamptz`
                    // refuses.
                    Type::TIMESTAMP | Type::TIMESTAMPTZ => {
                        get(row, i, |v: chrono::NaiveDateTime| {
                            V::Datetime((
                                v.year(),
                                v.month() as u8,
                                v.day() as u8,
                                v.hour() as u8,
                                v.minute() as u8,
                                v.second() as u8,
                                v.nanosecond(),
                            ))
                        })
                    }
                    Type::DATE => get(row, i, |v: chrono::NaiveDate| {
                        V::Date((v.year(), v.month() as u8, v.day() as u8))
                    }),
                    Type::TIME => get(row, i, |v: chrono::NaiveTime| {
                        V::Time((
                            v.hour() as u8,
                            v.minute() as u8,
                            v.second() as u8,
                            v.nanosecond(),
                        ))
                    }),
                    Type::UUID => get(row, i, |v: uuid::Uuid| V::Uuid(v.to_string())),
                    Type::JSONB => get(row, i, |v: serde_json::Value| {
                        V::Jsonb(serde_json::to_vec(&v).unwrap_or_default())
                    }),
                    Type::INT4_ARRAY => get(row, i, V::ArrayInt32),
                    Type::INT8_ARRAY => get(row, i, V::ArrayInt64),
                    Type::TEXT_ARRAY | Type::VARCHAR_ARRAY | Type::BPCHAR_ARRAY => {
                        get(row, i, V::ArrayStr)
                    }
                    _ => get(row, i, |v: RawBytes| V::Unsupported(v.0)),
                }
            }
        }
    };
}

wit_types!(wit40);
wit_types!(wit42);

/// Opens a connection for `component` as Spin does: every host of the address must be in
/// its `allowed_outbound_hosts`. A database marked by [`ZeroRows`] is refused.
async fn open(component: &ComponentRuntime, address: String) -> Result<PgConnection, Failure> {
    let Some(targets) = crate::outbound::postgres_targets(&address) else {
        return Err(Failure::ConnectionFailed("invalid Postgres address".into()));
    };
    for (host, port) in &targets {
        if !component.allowed_hosts.allows("postgres", host, *port) {
            component.deny(&format!("postgres://{host}:{port}"));
            return Err(Failure::ConnectionFailed(format!(
                "address postgres://{host}:{port} is not permitted"
            )));
        }
    }
    ZeroRows::check(&component.id, &address).map_err(Failure::ConnectionFailed)?;
    let (client, connection) = tokio_postgres::connect(&address, NoTls)
        .await
        .map_err(|e| Failure::ConnectionFailed(format!("{e:?}")))?;
    tokio::spawn(async move {
        // The connection ends when the client is dropped; errors then are expected.
        let _ = connection.await;
    });
    Ok(PgConnection {
        client: Arc::new(client),
        address,
    })
}

/// One connection's calls. It holds a clone of the client, so an async WIT function awaits
/// Postgres without holding the store.
struct Session {
    client: Arc<tokio_postgres::Client>,
    address: String,
    component: Arc<ComponentRuntime>,
}

impl Session {
    /// The connection `c` of `state`'s table, refused when its database is marked (see
    /// [`ZeroRows`]).
    fn of(state: &HostState, c: &Resource<PgConnection>) -> Result<Session, Failure> {
        let conn = state
            .table
            .get(c)
            .map_err(|_| Failure::Other("could not find connection for resource".into()))?;
        ZeroRows::check(&state.component.id, &conn.address).map_err(Failure::Other)?;
        Ok(Session {
            client: conn.client.clone(),
            address: conn.address.clone(),
            component: state.component.clone(),
        })
    }

    /// The columns and rows of a query, refused (and its database marked) when it has no
    /// row: see [`ZeroRows`].
    async fn query<C: WitColumn, V: WitValue>(
        &self,
        statement: &str,
        values: &[impl WitParameter],
    ) -> Result<(Vec<C>, Vec<Vec<V>>), Failure> {
        let params = params(values, Failure::BadParameter)?;
        let rows = self
            .client
            .query(statement, &refs(&params))
            .await
            .map_err(query_failed)?;
        let Some(first) = rows.first() else {
            return Err(ZeroRows::report(
                &self.component.id,
                &self.address,
                statement,
            ));
        };
        let columns = first.columns().iter().map(C::of).collect();
        let rows = rows
            .iter()
            .map(|row| {
                (0..row.len())
                    .map(|i| V::read(row, i))
                    .collect::<anyhow::Result<Vec<_>>>()
            })
            .collect::<anyhow::Result<Vec<_>>>()
            .map_err(|e| Failure::QueryFailed(QueryFailure::Text(format!("{e:?}"))))?;
        Ok((columns, rows))
    }

    async fn execute(&self, statement: &str, values: &[impl WitParameter]) -> Result<u64, Failure> {
        let params = params(values, Failure::ValueConversionFailed)?;
        self.client
            .execute(statement, &refs(&params))
            .await
            .map_err(query_failed)
    }
}

fn params(values: &[impl WitParameter], bad: fn(String) -> Failure) -> Result<Vec<Param>, Failure> {
    values
        .iter()
        .map(WitParameter::to_param)
        .collect::<anyhow::Result<Vec<_>>>()
        .map_err(|e| bad(format!("{e:?}")))
}

impl HostState {
    /// Opens a connection for this instance's component and keeps it in the instance's
    /// table, where it lives until the guest drops it.
    async fn open_pg(&mut self, address: String) -> Result<Resource<PgConnection>, Failure> {
        let conn = open(&self.component, address).await?;
        self.keep_pg(conn)
    }

    fn keep_pg(&mut self, conn: PgConnection) -> Result<Resource<PgConnection>, Failure> {
        self.table
            .push(conn)
            .map_err(|e| Failure::Other(e.to_string()))
    }

    fn builder_address(&self, b: &Resource<PgConnectionBuilder>) -> Result<String, Failure> {
        self.table
            .get(b)
            .map(|b| b.address.clone())
            .map_err(|_| Failure::ConnectionFailed("no builder found".into()))
    }
}

/// The synchronous `connection` functions, the same in both WIT versions: the guest blocks
/// (on a fiber) while the host awaits Postgres holding the store. That is all a WASIp2
/// instance (one request at a time) can do anyway; a WASIp3 instance's other requests wait
/// meanwhile, as they would for any synchronous import.
macro_rules! blocking_connection {
    ($wit:ident) => {
        impl $wit::Host for HostState {}

        impl $wit::HostConnection for HostState {
            async fn open(
                &mut self,
                address: String,
            ) -> Result<Resource<PgConnection>, $wit::Error> {
                Ok(self.open_pg(address).await?)
            }

            async fn query(
                &mut self,
                c: Resource<PgConnection>,
                statement: String,
                values: Vec<$wit::ParameterValue>,
            ) -> Result<$wit::RowSet, $wit::Error> {
                let (columns, rows) = Session::of(self, &c)?.query(&statement, &values).await?;
                Ok($wit::RowSet { columns, rows })
            }

            async fn execute(
                &mut self,
                c: Resource<PgConnection>,
                statement: String,
                values: Vec<$wit::ParameterValue>,
            ) -> Result<u64, $wit::Error> {
                Ok(Session::of(self, &c)?.execute(&statement, &values).await?)
            }

            async fn drop(&mut self, c: Resource<PgConnection>) -> wasmtime::Result<()> {
                self.table.delete(c)?;
                Ok(())
            }
        }
    };
}

blocking_connection!(wit40);
blocking_connection!(wit42);

// `spin:postgres@4.2.0`'s connection builder. Spin parses a CA root and uses it for TLS; this
// host has no TLS stack, so it only checks the text holds a PEM certificate, says on stderr
// that it will not be used, and connects without TLS: the same as Spin against a server
// without TLS under the default `sslmode=prefer`, while `sslmode=require` fails here.

impl wit42::HostConnectionBuilder for HostState {
    async fn new(&mut self, address: String) -> wasmtime::Result<Resource<PgConnectionBuilder>> {
        Ok(self.table.push(PgConnectionBuilder { address })?)
    }

    async fn set_ca_root(
        &mut self,
        b: Resource<PgConnectionBuilder>,
        certificate: String,
    ) -> Result<(), wit42::Error> {
        if !certificate.contains("-----BEGIN CERTIFICATE-----") {
            return Err(wit42::Error::Other(
                "invalid root certificate: no PEM certificate found".into(),
            ));
        }
        self.builder_address(&b)?;
        eprintln!(
            "spin-test-host: component `{}` set a CA root for Postgres; this host has no TLS \
             stack and connects without TLS (sslmode=require will fail)",
            self.component.id
        );
        Ok(())
    }

    async fn build(
        &mut self,
        b: Resource<PgConnectionBuilder>,
    ) -> Result<Resource<PgConnection>, wit42::Error> {
        let address = self.builder_address(&b)?;
        Ok(self.open_pg(address).await?)
    }

    async fn drop(&mut self, b: Resource<PgConnectionBuilder>) -> wasmtime::Result<()> {
        self.table.delete(b)?;
        Ok(())
    }
}

// `spin:postgres@4.2.0`'s async functions. The store is taken only to look a connection up
// (or to keep one); Postgres is awaited without it, so the instance's other requests run
// meanwhile.

type P3 = HasSelf<HostState>;

/// Opens a connection to `address` (once the store has given up what it needs) and keeps
/// it in the instance's table.
async fn open_kept<T>(
    accessor: &Accessor<T, P3>,
    address: impl FnOnce(&HostState) -> Result<String, Failure>,
) -> Result<Resource<PgConnection>, Failure> {
    let (component, address) = accessor.with(|mut access| {
        let state = access.get();
        address(state).map(|a| (state.component.clone(), a))
    })?;
    let conn = open(&component, address).await?;
    accessor.with(|mut access| access.get().keep_pg(conn))
}

fn session<T>(accessor: &Accessor<T, P3>, c: &Resource<PgConnection>) -> Result<Session, Failure> {
    accessor.with(|mut access| Session::of(access.get(), c))
}

/// What `query-async` answers: the columns, the rows, and how the query ended.
type QueryStream = (
    Vec<wit42::Column>,
    StreamReader<wit42::Row>,
    FutureReader<Result<(), wit42::Error>>,
);

impl<T> wit42::HostConnectionWithStore<T> for P3 {
    async fn open_async(
        accessor: &Accessor<T, Self>,
        address: String,
    ) -> Result<Resource<PgConnection>, wit42::Error> {
        Ok(open_kept(accessor, |_| Ok(address)).await?)
    }

    async fn query_async(
        accessor: &Accessor<T, Self>,
        c: Resource<PgConnection>,
        statement: String,
        values: Vec<wit42::ParameterValue>,
    ) -> Result<QueryStream, wit42::Error> {
        let (columns, rows) = session(accessor, &c)?.query(&statement, &values).await?;
        // The rows are read before anything is answered, as for `query`, so a query with
        // none is refused before a stream exists; the stream then hands them over at once
        // and the query has already ended well.
        accessor
            .with(|mut access| {
                let rows = StreamReader::new(&mut access, rows)?;
                let ended =
                    FutureReader::new(&mut access, async { wasmtime::Result::<_>::Ok(Ok(())) })?;
                wasmtime::Result::<_>::Ok((columns, rows, ended))
            })
            .map_err(|e| wit42::Error::Other(e.to_string()))
    }

    async fn execute_async(
        accessor: &Accessor<T, Self>,
        c: Resource<PgConnection>,
        statement: String,
        values: Vec<wit42::ParameterValue>,
    ) -> Result<u64, wit42::Error> {
        Ok(session(accessor, &c)?.execute(&statement, &values).await?)
    }
}

impl<T> wit42::HostConnectionBuilderWithStore<T> for P3 {
    async fn build_async(
        accessor: &Accessor<T, Self>,
        b: Resource<PgConnectionBuilder>,
    ) -> Result<Resource<PgConnection>, wit42::Error> {
        Ok(open_kept(accessor, |state| state.builder_address(&b)).await?)
    }
}

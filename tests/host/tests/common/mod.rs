//! What the test host's test files share: the addresses of the stores `scripts/services.sh`
//! started, and small helpers for reading the fixtures' answers.
#![allow(dead_code)]

use std::collections::HashMap;
use std::path::PathBuf;

/// `services.env` of the test stores (`FLASHCLAIM_DATA`, else `.data/test`).
pub fn services() -> HashMap<String, String> {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..");
    let env = std::fs::read_to_string(
        std::env::var_os("FLASHCLAIM_DATA")
            .map_or_else(|| root.join(".data/test"), PathBuf::from)
            .join("services.env"),
    )
    .expect(
        "no .data/test/services.env: run the tests through `make test` (it starts Redis and Postgres)",
    );
    env.lines()
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

/// wit-bindgen prefixes variants with their type in `Debug` (`RedisResult::Int64(1)`);
/// the assertions leave it out.
pub fn bare(text: &str) -> String {
    [
        "RedisResult::",
        "DbDataType::",
        "DbValue::",
        "QueryError::",
        "ErrorCode::",
        "Error::",
    ]
    .iter()
    .fold(text.to_string(), |t, prefix| t.replace(prefix, ""))
}

/// A name no other run of the tests uses.
pub fn unique(prefix: &str) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    format!("{prefix}{nanos}")
}

/// What a fixture's `/pg/roundtrip` must answer (after [`bare`]), whichever WIT version of
/// `spin:postgres` it went through: every supported type and NULL, the columns' types, a
/// NULL parameter, and `timestamptz` refused as a date-time.
pub fn assert_pg_roundtrip(text: &str) {
    for want in [
        "create=Ok(0)",
        "insert=Ok(1)",
        "column b=Boolean",
        "column i2=Int16",
        "column i4=Int32",
        "column i8=Int64",
        "column f4=Floating32",
        "column f8=Floating64",
        "column s=Str",
        "column bin=Binary",
        "column at_epoch=Int64",
        "column naive=Datetime",
        "column u=Uuid",
        "column j=Jsonb",
        "column n=Str",
        "value=Boolean(true)",
        "value=Int16(-2)",
        "value=Int32(40000)",
        "value=Int64(9000000000)",
        "value=Floating32(1.5)",
        "value=Floating64(-2.25)",
        "value=Str(\"héllo 'quoted' ; DROP TABLE rt;--\")",
        "value=Binary([0, 1, 254, 255])",
        "value=Int64(1767225600)",
        "value=Datetime((2026, 1, 2, 3, 4, 5, 600000000))",
        "value=Uuid(\"6f1c1b9e-2c44-4a55-9d3b-2f7d0f0b7e11\")",
        "value=Jsonb([123, 34, 107, 34, 58, 91, 49, 44, 50, 93, 125])",
        "value=DbNull",
        "null_param=Ok([[Boolean(true)]])",
    ] {
        assert!(
            text.lines().any(|l| l == want),
            "missing `{want}` in:\n{text}"
        );
    }
    // Spin reads timestamptz through a naive timestamp, which the driver refuses:
    // components must read instants as epoch numbers (as flashclaim does).
    let tz = text
        .lines()
        .find(|l| l.starts_with("timestamptz_as_datetime="))
        .unwrap();
    assert!(tz.contains("Err(QueryFailed("), "{tz}");
}

/// A Postgres address of one test's own (its application name), so the zero-row mark of
/// that test touches no other: the host marks the address the component opened.
pub fn zero_rows_address(pg_url: &str) -> String {
    format!("{pg_url}?application_name={}", unique("zero_rows_"))
}

/// A fixture's `/pg/zero-rows` answers: `first` (status, text), the request that ran a
/// query with no row and then one with a row on the same connection; `again`, the same
/// request afterwards. Spin 4.0.x never returns from the first query (spin#3671): the host
/// answers it with an error naming the bug and from then on refuses the database.
pub fn assert_zero_rows_refused(component: &str, first: (u16, String), again: (u16, String)) {
    assert_eq!(first.0, 200, "{}", first.1);
    let text = bare(&first.1);
    let (zero, after) = text.split_once('\n').unwrap();
    assert!(
        zero.starts_with(&format!(
            "zero=Err(Other(\"spin-test-host: component `{component}` ran a Postgres query \
             that returned zero rows; on Spin 4.0.x this call never returns \
             (spinframework/spin#3671)"
        )),
        "{text}"
    );
    assert!(zero.contains("SELECT 1 AS one WHERE false"), "{text}");
    assert!(
        after.starts_with("after=Err(Other(") && after.contains("spin#3671"),
        "a query with a row on the same connection is refused too: {text}"
    );
    assert_eq!(again.0, 502, "{}", again.1);
    let again = bare(&again.1);
    assert!(
        again.starts_with("open=ConnectionFailed(") && again.contains("spin#3671"),
        "a later request cannot even open the database: {again}"
    );
}

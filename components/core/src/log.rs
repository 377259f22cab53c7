//! One structured line per notable event: a JSON object with stable keys (`ts_ms`, `event`,
//! then the event's own fields), written to stderr by the components, which Spin collects
//! per component. Callers pass counts, names and outcomes only: never a token, a password or
//! a secret, and never a raw client address (the stored form is a keyed hash).

use serde_json::Value;

/// The line for `event` at `ts_ms` with `fields` in the order given (written by hand: a
/// JSON map would sort the keys, and a reader scanning logs expects `event` first).
pub fn line(ts_ms: i64, event: &str, fields: &[(&str, Value)]) -> String {
    let mut text = format!("{{\"ts_ms\":{ts_ms},\"event\":{}", Value::from(event));
    for (key, value) in fields {
        text.push_str(&format!(",{}:{value}", Value::from(*key)));
    }
    text.push('}');
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_line_is_one_json_object_with_the_time_and_event_first() {
        let text = line(
            1_700_000_000_000,
            "drain_run",
            &[("entries", 3.into()), ("ok", true.into())],
        );
        assert!(!text.contains('\n'));
        assert_eq!(
            text,
            r#"{"ts_ms":1700000000000,"event":"drain_run","entries":3,"ok":true}"#
        );
    }
}

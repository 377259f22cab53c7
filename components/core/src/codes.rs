//! Uploading a code pool (`POST /admin/activities/{id}/codes`): CSV or JSON, validated as a
//! whole so that an upload with any bad or duplicate code stores nothing.

use std::collections::HashSet;

use crate::error::ApiError;
use crate::ids::is_code;

/// At most this many codes per upload.
pub const MAX_CODES_PER_UPLOAD: usize = 100_000;
/// 100k codes of up to 64 characters, with line ends or JSON quoting.
pub const MAX_UPLOAD_BYTES: usize = 7 * 1024 * 1024;

/// The codes of an upload, in file order, each valid and none repeated.
pub fn parse_upload(content_type: Option<&str>, body: &[u8]) -> Result<Vec<String>, ApiError> {
    if body.len() > MAX_UPLOAD_BYTES {
        return Err(ApiError::invalid(format!(
            "the upload exceeds {MAX_UPLOAD_BYTES} bytes"
        )));
    }
    let media = content_type
        .and_then(|c| c.split(';').next())
        .map(|c| c.trim().to_ascii_lowercase());
    let entries = match media.as_deref() {
        Some("application/json") => json_entries(body)?,
        Some("text/csv") | Some("text/plain") => csv_entries(body)?,
        _ => {
            return Err(ApiError::invalid(
                "Content-Type must be text/csv or application/json",
            ))
        }
    };
    if entries.is_empty() {
        return Err(ApiError::invalid("the upload holds no codes"));
    }
    if entries.len() > MAX_CODES_PER_UPLOAD {
        return Err(ApiError::invalid(format!(
            "at most {MAX_CODES_PER_UPLOAD} codes per upload, got {}",
            entries.len()
        )));
    }
    let mut seen = HashSet::with_capacity(entries.len());
    let (mut bad, mut duplicates) = (Vec::new(), Vec::new());
    for (position, code) in &entries {
        if !is_code(code) {
            bad.push(format!(
                "{position}: `{}` is not 1-64 characters of A-Z a-z 0-9 _ -",
                code.chars().take(80).collect::<String>()
            ));
        } else if !seen.insert(code.as_str()) {
            duplicates.push(code.clone());
        }
    }
    if !bad.is_empty() || !duplicates.is_empty() {
        return Err(ApiError::CodesRejected { bad, duplicates });
    }
    Ok(entries.into_iter().map(|(_, code)| code).collect())
}

/// `{"codes": ["A1", "A2", ...]}`; entries are tagged with their index.
fn json_entries(body: &[u8]) -> Result<Vec<(String, String)>, ApiError> {
    #[derive(serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Upload {
        codes: Vec<String>,
    }
    let upload: Upload = serde_json::from_slice(body).map_err(|e| {
        ApiError::invalid(format!(
            "the body must be {{\"codes\": [\"...\"]}} with string codes: {e}"
        ))
    })?;
    Ok(upload
        .codes
        .into_iter()
        .enumerate()
        .map(|(i, code)| (format!("codes[{i}]"), code))
        .collect())
}

/// One code per line (RFC 4180: a field may be quoted, `""` is a quote inside one); an
/// optional header line `code`; blank lines are skipped. Extra columns are refused, so a
/// file exported with the wrong columns is not silently misread.
fn csv_entries(body: &[u8]) -> Result<Vec<(String, String)>, ApiError> {
    let text = std::str::from_utf8(body).map_err(|_| ApiError::invalid("the CSV is not UTF-8"))?;
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    let mut entries = Vec::new();
    for (n, raw) in text.split('\n').enumerate() {
        let line = raw.strip_suffix('\r').unwrap_or(raw);
        if line.trim().is_empty() {
            continue;
        }
        let position = format!("line {}", n + 1);
        let field = match csv_field(line) {
            Some(field) => field,
            None => {
                entries.push((position, line.to_string()));
                continue;
            }
        };
        if entries.is_empty() && n == 0 && field.eq_ignore_ascii_case("code") {
            continue;
        }
        entries.push((position, field));
    }
    Ok(entries)
}

/// The single field of a CSV line, or None when the line has several or bad quoting.
fn csv_field(line: &str) -> Option<String> {
    let Some(quoted) = line.strip_prefix('"') else {
        return (!line.contains(',') && !line.contains('"')).then(|| line.to_string());
    };
    let inner = quoted.strip_suffix('"')?;
    let mut out = String::with_capacity(inner.len());
    let mut chars = inner.chars();
    while let Some(c) = chars.next() {
        if c == '"' && chars.next() != Some('"') {
            return None;
        }
        out.push(c);
    }
    Some(out)
}

/// One CSV field, quoted when it must be (RFC 4180).
pub fn csv_escape(field: &str) -> String {
    if field.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", field.replace('"', "\"\""))
    } else {
        field.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn csv(text: &str) -> Result<Vec<String>, ApiError> {
        parse_upload(Some("text/csv; charset=utf-8"), text.as_bytes())
    }

    #[test]
    fn a_csv_with_a_header_and_crlf_line_ends_is_read() {
        assert_eq!(
            csv("code\r\nA1\r\n\"B2\"\r\n\r\nC-3\n").unwrap(),
            vec!["A1", "B2", "C-3"]
        );
    }

    #[test]
    fn json_uploads_are_read_in_order() {
        let codes = parse_upload(Some("application/json"), br#"{"codes":["x1","x2"]}"#).unwrap();
        assert_eq!(codes, vec!["x1", "x2"]);
    }

    #[test]
    fn an_upload_with_duplicates_or_bad_codes_is_rejected_whole() {
        let Err(ApiError::CodesRejected { bad, duplicates }) =
            csv("A1\nA2\nA1\nbad code\nx,y\n\"open\n")
        else {
            panic!("accepted")
        };
        assert_eq!(duplicates, vec!["A1"]);
        assert_eq!(bad.len(), 3, "{bad:?}");
        assert!(bad[0].starts_with("line 4:"), "{bad:?}");
    }

    #[test]
    fn empty_oversized_and_untyped_uploads_are_invalid_requests() {
        assert_eq!(csv("code\n\n").unwrap_err().code(), "invalid_request");
        let many: String = (0..=MAX_CODES_PER_UPLOAD)
            .map(|n| format!("C{n}\n"))
            .collect();
        assert_eq!(csv(&many).unwrap_err().code(), "invalid_request");
        assert_eq!(
            parse_upload(None, b"A1").unwrap_err().code(),
            "invalid_request"
        );
        assert_eq!(
            parse_upload(Some("application/json"), br#"{"codes":[1]}"#)
                .unwrap_err()
                .code(),
            "invalid_request"
        );
        assert_eq!(
            parse_upload(Some("text/csv"), &vec![b'A'; MAX_UPLOAD_BYTES + 1])
                .unwrap_err()
                .code(),
            "invalid_request"
        );
    }

    #[test]
    fn csv_fields_are_quoted_only_when_needed() {
        assert_eq!(csv_escape("plain"), "plain");
        assert_eq!(csv_escape("a,b"), "\"a,b\"");
        assert_eq!(csv_escape("say \"hi\""), "\"say \"\"hi\"\"\"");
        assert_eq!(csv_escape("two\nlines"), "\"two\nlines\"");
    }
}

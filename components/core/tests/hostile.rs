//! Hostile input for every parser of the shared library: arbitrary bytes and strings never
//! panic, and every refusal is a 4xx. Two layers:
//! - properties (proptest), bounded by case count so CI time is bounded
//!   (`PROPTEST_CASES` raises it for a longer local run);
//! - the corpus in `fuzz-corpus/<parser>/`: inputs that found bugs or sit on an edge,
//!   replayed on every run. Add a file there for each new finding.

use flashclaim_core::activity::{Activity, Kind, ListQuery, NewActivity, Status};
use flashclaim_core::admin::{apply_patch, parse_blacklist_reason};
use flashclaim_core::auth::{Credentials, Registration};
use flashclaim_core::claim::ClaimRequest;
use flashclaim_core::codes::parse_upload;
use flashclaim_core::cors::AllowedOrigins;
use flashclaim_core::ids::{ActivityId, IdempotencyKey, TicketRef, UserId};
use flashclaim_core::jwt::{self, Claims};
use flashclaim_core::listing::{blacklist_cursor, AdminActivityQuery, BlacklistQuery};
use flashclaim_core::ticket::parse_redeem;
use flashclaim_core::ticket_type::TicketType;
use flashclaim_core::time::Millis;
use flashclaim_core::ApiError;
use proptest::prelude::*;

fn client_error<T>(result: Result<T, ApiError>) {
    if let Err(e) = result {
        assert!((400..500).contains(&e.status()), "{e:?} is not a 4xx");
    }
}

fn draft() -> Activity {
    Activity {
        id: ActivityId::from_db(1),
        name: "n".into(),
        description: String::new(),
        image_url: None,
        starts_at: Millis(1_800_000_000_000),
        ends_at: Millis(1_800_000_360_000),
        status: Status::Draft,
        per_user_limit: Some(1),
        require_pass: false,
        ticket_types: vec![TicketType::default_for("n", 10, 1, Kind::Counter)],
        stock_buckets: 1,
    }
}

/// Every byte-level parser, by the name of its corpus directory.
fn parse_bytes(parser: &str, input: &[u8]) {
    let text = String::from_utf8_lossy(input);
    match parser {
        "claim_body" => client_error(ClaimRequest::parse(input)),
        "activity_body" => client_error(NewActivity::parse(input)),
        "activity_patch" => client_error(apply_patch(&draft(), input)),
        "registration" => client_error(Registration::parse(input)),
        "credentials" => client_error(Credentials::parse(input)),
        "codes_csv" => client_error(parse_upload(Some("text/csv"), input)),
        "codes_json" => client_error(parse_upload(Some("application/json"), input)),
        "redeem_body" => client_error(parse_redeem(input)),
        "blacklist_body" => client_error(parse_blacklist_reason(input)),
        "list_query" => client_error(ListQuery::parse(&text)),
        "activity_id" => client_error(ActivityId::parse(&text)),
        "ticket_code" => client_error(TicketRef::parse(&text)),
        "idempotency_key" => client_error(IdempotencyKey::parse(&text)),
        "user_id" => {
            let _ = UserId::parse(&text);
        }
        "jwt" => client_error(jwt::verify(&text, b"secret", 1_700_000_000)),
        "authorization" => client_error(jwt::authenticate(Some(&text), b"secret", 1_700_000_000)),
        "rfc3339" => {
            let _ = Millis::parse_rfc3339(&text);
        }
        "admin_list_query" => client_error(AdminActivityQuery::parse(&text)),
        "blacklist_query" => client_error(BlacklistQuery::parse(&text)),
        "cors_origins" => {
            // A deployment's variable: never refused, junk entries are dropped.
            let origins = AllowedOrigins::parse(Some(&text));
            assert!(!origins.allows("null") && !origins.allows(""));
        }
        "qr_payload" => {
            let _ = flashclaim_core::qr::svg(&text);
        }
        other => panic!("no parser named {other} (a corpus directory without a parser)"),
    }
}

const PARSERS: &[&str] = &[
    "claim_body",
    "activity_body",
    "activity_patch",
    "registration",
    "credentials",
    "codes_csv",
    "codes_json",
    "redeem_body",
    "blacklist_body",
    "list_query",
    "activity_id",
    "ticket_code",
    "idempotency_key",
    "user_id",
    "jwt",
    "authorization",
    "rfc3339",
    "admin_list_query",
    "blacklist_query",
    "cors_origins",
    "qr_payload",
];

#[test]
fn the_corpus_replays_without_a_panic_or_a_5xx() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz-corpus");
    let mut replayed = 0;
    for dir in std::fs::read_dir(&root).expect("fuzz-corpus/ is in the repo") {
        let dir = dir.unwrap().path();
        let parser = dir.file_name().unwrap().to_str().unwrap().to_string();
        assert!(
            PARSERS.contains(&parser.as_str()),
            "{parser}: no such parser"
        );
        for file in std::fs::read_dir(&dir).unwrap() {
            let input = std::fs::read(file.unwrap().path()).unwrap();
            parse_bytes(&parser, &input);
            replayed += 1;
        }
    }
    assert!(
        replayed >= PARSERS.len(),
        "the corpus has an entry per parser"
    );
}

/// Inputs near the grammar: JSON-ish fragments, so properties reach past the first check.
fn jsonish() -> impl Strategy<Value = Vec<u8>> {
    let atoms = prop::sample::select(vec![
        "{",
        "}",
        "[",
        "]",
        ",",
        ":",
        "\"quantity\"",
        "\"name\"",
        "\"codes\"",
        "\"qr\"",
        "\"username\"",
        "\"password\"",
        "\"starts_at\"",
        "\"ends_at\"",
        "\"stock_total\"",
        "1",
        "-1",
        "0",
        "1e400",
        "99999999999999999999",
        "null",
        "true",
        "\"2026-01-01T00:00:00Z\"",
        "\"x\"",
        "\"\\u0000\"",
        "\"FC1.1-A.AAAA\"",
        " ",
        "\n",
    ]);
    prop::collection::vec(atoms, 0..40).prop_map(|v| v.concat().into_bytes())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 1000, ..ProptestConfig::default() })]

    #[test]
    fn no_parser_panics_on_arbitrary_bytes(input in prop::collection::vec(any::<u8>(), 0..512)) {
        for parser in PARSERS {
            parse_bytes(parser, &input);
        }
    }

    #[test]
    fn no_parser_panics_on_near_valid_json(input in jsonish()) {
        for parser in PARSERS {
            parse_bytes(parser, &input);
        }
    }

    #[test]
    fn blacklist_cursors_round_trip_any_user_id(user in "\\PC{1,64}") {
        let q = BlacklistQuery::parse(&format!("cursor={}", blacklist_cursor(&user))).unwrap();
        prop_assert_eq!(q.after, user);
    }

    #[test]
    fn ticket_codes_round_trip(id in 1i64..1_000_000_000, code in "[A-Za-z0-9_-]{1,64}") {
        let text = format!("{id}-{code}");
        let parsed = TicketRef::parse(&text).unwrap();
        prop_assert_eq!(parsed.to_string(), text);
    }

    #[test]
    fn instants_round_trip_through_rfc3339(ms in -62_135_596_800_000i64..253_402_300_799_999) {
        let text = Millis(ms).to_string();
        prop_assert_eq!(Millis::parse_rfc3339(&text), Ok(Millis(ms)));
    }

    #[test]
    fn a_signed_token_verifies_and_any_tampering_fails(
        sub in "[a-z0-9]{1,64}",
        flip in 0usize..200,
    ) {
        let claims = Claims { sub: sub.clone(), exp: 2_000_000_000, nbf: None, iat: None, role: None };
        let token = jwt::sign(&claims, b"secret");
        let principal = jwt::verify(&token, b"secret", 1_700_000_000).unwrap();
        prop_assert_eq!(principal.user.as_str(), sub.as_str());
        let mut bytes = token.into_bytes();
        let i = flip % bytes.len();
        bytes[i] = if bytes[i] == b'A' { b'B' } else { b'A' };
        let tampered = String::from_utf8(bytes).unwrap();
        if let Ok(p) = jwt::verify(&tampered, b"secret", 1_700_000_000) {
            // Only a change in base64 padding bits can keep the same bytes; then the
            // identity must be unchanged.
            prop_assert_eq!(p.user.as_str(), sub.as_str());
        }
    }

    #[test]
    fn valid_code_uploads_come_back_in_order(codes in prop::collection::btree_set("[A-Za-z0-9_-]{1,64}", 1..50)) {
        let codes: Vec<String> = codes.into_iter().collect();
        let csv: String = codes.iter().map(|c| format!("\"{c}\"\r\n")).collect();
        prop_assert_eq!(parse_upload(Some("text/csv"), csv.as_bytes()).unwrap(), codes.clone());
        let json = serde_json::json!({ "codes": codes }).to_string();
        prop_assert_eq!(parse_upload(Some("application/json"), json.as_bytes()).unwrap(), codes);
    }

    #[test]
    fn claim_quantities_are_accepted_exactly_in_range(q in any::<i64>()) {
        let body = format!(r#"{{"quantity":{q}}}"#);
        let parsed = ClaimRequest::parse(body.as_bytes());
        prop_assert_eq!(parsed.is_ok(), (1..=100).contains(&q));
    }
}

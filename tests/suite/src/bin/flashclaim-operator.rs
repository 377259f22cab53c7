//! `flashclaim-operator <postgres-url>`: creates (or resets) the operator account named by
//! `FLASHCLAIM_ADMIN_USERNAME` with the password in `FLASHCLAIM_ADMIN_PASSWORD`, stored as
//! an argon2id hash with role `admin`. The set-up script runs it; nothing is hard-coded.

use std::io::Read;

use flashclaim_core::auth::{self, Registration};

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let url = std::env::args()
        .nth(1)
        .unwrap_or_else(|| fail("usage: flashclaim-operator <postgres-url>"));
    let username = std::env::var("FLASHCLAIM_ADMIN_USERNAME")
        .unwrap_or_else(|_| fail("set FLASHCLAIM_ADMIN_USERNAME"));
    let password = std::env::var("FLASHCLAIM_ADMIN_PASSWORD")
        .unwrap_or_else(|_| fail("set FLASHCLAIM_ADMIN_PASSWORD"));
    // The same rules as POST /api/users, so the operator can log in like anyone else.
    let body = serde_json::json!({ "username": username, "password": password }).to_string();
    let account = Registration::parse(body.as_bytes()).unwrap_or_else(|e| fail(&e.to_string()));
    let mut random = [0u8; 28];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut random))
        .unwrap_or_else(|e| fail(&format!("/dev/urandom: {e}")));
    let salt: [u8; 16] = random[..16].try_into().unwrap();
    let id: [u8; 12] = random[16..].try_into().unwrap();
    let hash =
        auth::hash_password(&account.password, salt).unwrap_or_else(|_| fail("hashing failed"));
    let (client, connection) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
        .await
        .unwrap_or_else(|e| fail(&format!("postgres: {e}")));
    tokio::spawn(connection);
    client
        .execute(
            "INSERT INTO users (id, username, password_hash, role) VALUES ($1, $2, $3, 'admin') \
             ON CONFLICT (username) DO UPDATE SET password_hash = EXCLUDED.password_hash, role = 'admin'",
            &[&auth::user_id(id), &account.username, &hash],
        )
        .await
        .unwrap_or_else(|e| fail(&format!("postgres: {e}")));
    println!("operator account `{}` is ready", account.username);
}

fn fail(message: &str) -> ! {
    eprintln!("flashclaim-operator: {message}");
    std::process::exit(2);
}

//! `flashclaim-token <user> [admin] [ttl-seconds]`: prints an HS256 token signed with
//! `SPIN_VARIABLE_JWT_SECRET`, for local runs and demos (the auth component issues real
//! tokens to registered users).

use flashclaim_core::jwt::{sign, Claims};

fn main() {
    let mut args = std::env::args().skip(1);
    let Some(user) = args.next() else {
        eprintln!("usage: flashclaim-token <user> [admin] [ttl-seconds]");
        std::process::exit(2);
    };
    let role = args.next().filter(|r| r == "admin");
    let ttl: i64 = args
        .next()
        .and_then(|t| t.parse().ok())
        .unwrap_or(24 * 3600);
    let Ok(secret) = std::env::var("SPIN_VARIABLE_JWT_SECRET") else {
        eprintln!("flashclaim-token: set SPIN_VARIABLE_JWT_SECRET");
        std::process::exit(2);
    };
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    let claims = Claims {
        sub: user,
        exp: now + ttl,
        nbf: None,
        iat: Some(now),
        role,
    };
    println!("{}", sign(&claims, secret.as_bytes()));
}

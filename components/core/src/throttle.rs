//! The limits in front of the auth routes: failed logins per username and per address
//! (checked before any password is hashed), and accounts created per address.
//!
//! A login costs an argon2 hash, which is exactly the CPU a claim storm needs; so a key
//! that has failed too often is refused from its counters alone, with a back-off that
//! doubles with each further failure. Nothing here does I/O: the auth component counts in
//! Redis (lua/login.lua, one round trip, no Postgres connection for a refused attempt) and
//! hands the counts in.

use crate::claim::RateLimit;
use crate::error::ApiError;
use crate::scripts::{Arg, Reply};

/// When failed logins start to cost a wait, and how long it grows (login.lua applies it).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LoginThrottle {
    /// Failures allowed before the first wait; 0 turns the throttle off.
    pub free_failures: i64,
    pub first_wait_ms: i64,
    pub max_wait_ms: i64,
    /// A key quiet for this long starts again from zero.
    pub forget_after_ms: i64,
}

impl LoginThrottle {
    /// Per username: a person mistyping is not slowed down, a guessing run is after five.
    pub const PER_USER: LoginThrottle = LoginThrottle::after(5);
    /// Per address: higher, since many people share an address behind a carrier NAT.
    pub const PER_ADDRESS: LoginThrottle = LoginThrottle::after(20);

    pub const fn after(free_failures: i64) -> LoginThrottle {
        LoginThrottle {
            free_failures,
            first_wait_ms: 1_000,
            max_wait_ms: 15 * 60_000,
            forget_after_ms: 60 * 60_000,
        }
    }

    /// The variable's value: the number of free failures, `"0"` for off.
    pub fn parse(text: &str, default: LoginThrottle) -> Option<LoginThrottle> {
        let n: i64 = text.trim().parse().ok()?;
        (n >= 0).then_some(LoginThrottle {
            free_failures: n,
            ..default
        })
    }
}

/// The Redis keys failed logins are counted under (login.lua's KEYS), for a username and a
/// stored client address. They live on the first endpoint of `redis_address`: they belong
/// to no activity, and one place keeps a username's count whole. The third is the global
/// metrics hash, where login.lua counts attempts for `/metrics`. The first two carry the
/// global key as their hash tag, so all three are in one slot of a Redis Cluster (one
/// script may touch only one slot there), whatever the username holds.
pub fn login_keys(username: &str, stored_addr: &str) -> Vec<String> {
    vec![
        format!("{LOGIN_PREFIX}user:{username}"),
        format!("{LOGIN_PREFIX}addr:{stored_addr}"),
        crate::metrics::GLOBAL_KEY.to_string(),
    ]
}

/// What every login counter's key starts with: `fc:login:` and the hash tag of
/// [`crate::metrics::GLOBAL_KEY`] (a key without a tag is hashed whole, as the tag is).
pub const LOGIN_PREFIX: &str = "fc:login:{fc:metrics}:";

/// What login.lua does to the counters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Count {
    /// Before the password is looked at: admit the attempt and count it as a failure, or
    /// refuse it and count nothing.
    Try,
    /// A success: the username's count is cleared and the address's failure given back.
    Clear,
}

/// login.lua's ARGV. The waits grow the same way for both keys; only the free failures
/// differ.
pub fn login_args(
    count: Count,
    now_ms: i64,
    per_user: LoginThrottle,
    per_address: LoginThrottle,
) -> Vec<Arg> {
    let mode = match count {
        Count::Try => "try",
        Count::Clear => "clear",
    };
    vec![
        Arg::from(mode),
        Arg::Int(now_ms),
        Arg::Int(per_user.forget_after_ms),
        Arg::Int(per_user.free_failures),
        Arg::Int(per_address.free_failures),
        Arg::Int(per_user.first_wait_ms),
        Arg::Int(per_user.max_wait_ms),
    ]
}

/// login.lua's answer to "try": admitted, or refused for `wait_ms` (429 with the wait
/// rounded up to seconds). `None` for a reply of another shape.
pub fn decode_try(reply: &[Reply]) -> Option<Result<(), ApiError>> {
    let int = |i: usize| reply.get(i).and_then(Reply::as_int);
    match (int(0)?, int(1)?) {
        (1, _) => Some(Ok(())),
        (0, wait_ms) if wait_ms > 0 => Some(Err(ApiError::RateLimited {
            retry_after_secs: (wait_ms as u64).div_ceil(1000),
        })),
        _ => None,
    }
}

/// Accounts created from one address in the limit's window: refused once `created` reach
/// the limit, until the oldest of them leaves the window.
pub fn check_registration(
    limit: RateLimit,
    created: i64,
    oldest_ms: Option<i64>,
    now_ms: i64,
) -> Result<(), ApiError> {
    if limit.attempts == 0 || created < limit.attempts {
        return Ok(());
    }
    let left = oldest_ms.map_or(limit.window_ms, |o| o + limit.window_ms - now_ms);
    Err(ApiError::RateLimited {
        retry_after_secs: (left.max(1) as u64).div_ceil(1000),
    })
}

/// The default for `register_rate_limit`: 20 accounts per address per hour.
pub const REGISTRATIONS_PER_ADDRESS: RateLimit = RateLimit {
    attempts: 20,
    window_ms: 3_600_000,
};

#[cfg(test)]
mod tests {
    use super::*;

    const T: LoginThrottle = LoginThrottle::after(5);

    #[test]
    fn zero_free_failures_turns_the_throttle_off_and_bad_values_do_not_parse() {
        assert_eq!(LoginThrottle::parse("0", T).unwrap().free_failures, 0);
        assert_eq!(LoginThrottle::parse("x", T), None);
        assert_eq!(LoginThrottle::parse("-1", T), None);
        assert_eq!(LoginThrottle::parse(" 7 ", T).unwrap().free_failures, 7);
    }

    #[test]
    fn registrations_are_cut_at_the_limit_until_the_oldest_leaves_the_window() {
        let limit = RateLimit {
            attempts: 3,
            window_ms: 60_000,
        };
        assert_eq!(check_registration(limit, 2, Some(0), 1_000), Ok(()));
        assert_eq!(
            check_registration(limit, 3, Some(0), 1_000),
            Err(ApiError::RateLimited {
                retry_after_secs: 59
            })
        );
        assert_eq!(
            check_registration(RateLimit::OFF, 1_000, Some(0), 0),
            Ok(())
        );
    }

    #[test]
    fn keys_of_users_and_addresses_cannot_collide() {
        let keys = login_keys("abc", "abc");
        assert_ne!(keys[0], keys[1]);
        // One slot of a cluster, even for a username with a tag of its own.
        let slot = crate::cluster::key_slot(crate::metrics::GLOBAL_KEY.as_bytes());
        for key in login_keys("{x}y", "::1") {
            assert_eq!(crate::cluster::key_slot(key.as_bytes()), slot, "{key}");
        }
    }

    #[test]
    fn the_scripts_answer_admits_or_refuses_with_the_wait_in_whole_seconds() {
        assert_eq!(decode_try(&[Reply::Int(1), Reply::Int(0)]), Some(Ok(())));
        assert_eq!(
            decode_try(&[Reply::Int(0), Reply::Int(1_001)]),
            Some(Err(ApiError::RateLimited {
                retry_after_secs: 2
            }))
        );
        assert_eq!(decode_try(&[Reply::Int(0), Reply::Int(0)]), None);
        assert_eq!(decode_try(&[Reply::Int(1)]), None);
        let args = login_args(Count::Try, 5, T, LoginThrottle::after(20));
        assert_eq!(args[0], Arg::from("try"));
        assert_eq!(
            (args[3].clone(), args[4].clone()),
            (Arg::Int(5), Arg::Int(20))
        );
    }
}

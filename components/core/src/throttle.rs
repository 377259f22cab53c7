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

/// Failures a key has had: how many, and when the last one was (ms since the epoch).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Failures {
    pub count: i64,
    pub last_ms: i64,
}

/// When failed logins start to cost a wait, and how long it grows.
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

    /// Failures counted when one more happens at `now_ms` (an old run is forgotten).
    pub fn counted(&self, failures: Option<Failures>, now_ms: i64) -> i64 {
        match failures {
            Some(f) if now_ms - f.last_ms < self.forget_after_ms => f.count,
            _ => 0,
        }
    }

    /// Seconds to wait before this key may try again, or `None` when it may try now.
    pub fn wait_secs(&self, failures: Option<Failures>, now_ms: i64) -> Option<u64> {
        let f = failures?;
        let count = self.counted(Some(f), now_ms);
        if self.free_failures == 0 || count < self.free_failures {
            return None;
        }
        let doublings = (count - self.free_failures).min(30) as u32;
        let wait = self
            .first_wait_ms
            .saturating_mul(1i64 << doublings)
            .min(self.max_wait_ms);
        let left = f.last_ms + wait - now_ms;
        (left > 0).then(|| (left as u64).div_ceil(1000))
    }
}

/// The Redis keys failed logins are counted under (login.lua's KEYS), for a username and a
/// stored client address. They live on the first endpoint of `redis_address`: they belong
/// to no activity, and one place keeps a username's count whole.
pub fn login_keys(username: &str, stored_addr: &str) -> Vec<String> {
    vec![
        format!("fc:login:user:{username}"),
        format!("fc:login:addr:{stored_addr}"),
    ]
}

/// What login.lua does to the counters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Count {
    /// Before the password is looked at: read only.
    Read,
    /// A wrong password or an unknown username: one more failure for both keys.
    Fail,
    /// A success: the username's count is cleared.
    Clear,
}

pub fn login_args(count: Count, now_ms: i64) -> Vec<Arg> {
    let mode = match count {
        Count::Read => "read",
        Count::Fail => "fail",
        Count::Clear => "clear",
    };
    vec![
        Arg::from(mode),
        Arg::Int(now_ms),
        // Both throttles forget after the same quiet time.
        Arg::Int(LoginThrottle::PER_USER.forget_after_ms),
    ]
}

/// login.lua's `{ user_n, user_last, addr_n, addr_last }`: the username's and the address's
/// failures (`None` for a key that has none). `None` for a reply of another shape.
pub fn decode_counts(reply: &[Reply]) -> Option<(Option<Failures>, Option<Failures>)> {
    let int = |i: usize| reply.get(i).and_then(Reply::as_int);
    let failures = |n: i64, last_ms: i64| (n > 0).then_some(Failures { count: n, last_ms });
    Some((failures(int(0)?, int(1)?), failures(int(2)?, int(3)?)))
}

/// Refuse a login attempt before hashing when the username or the address must wait;
/// the longer wait is the one the client is told.
pub fn check_login(
    user: (LoginThrottle, Option<Failures>),
    address: (LoginThrottle, Option<Failures>),
    now_ms: i64,
) -> Result<(), ApiError> {
    let wait = [user, address]
        .into_iter()
        .filter_map(|(throttle, failures)| throttle.wait_secs(failures, now_ms))
        .max();
    match wait {
        Some(retry_after_secs) => Err(ApiError::RateLimited { retry_after_secs }),
        None => Ok(()),
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

    fn f(count: i64, last_ms: i64) -> Option<Failures> {
        Some(Failures { count, last_ms })
    }

    #[test]
    fn failures_below_the_threshold_cost_no_wait() {
        assert_eq!(T.wait_secs(None, 0), None);
        assert_eq!(T.wait_secs(f(4, 1_000), 1_000), None);
    }

    #[test]
    fn the_wait_starts_at_the_threshold_and_doubles_with_each_failure() {
        assert_eq!(T.wait_secs(f(5, 10_000), 10_000), Some(1));
        assert_eq!(T.wait_secs(f(6, 10_000), 10_000), Some(2));
        assert_eq!(T.wait_secs(f(7, 10_000), 10_000), Some(4));
        assert_eq!(T.wait_secs(f(8, 10_000), 10_500), Some(8)); // 7.5 s left, rounded up
    }

    #[test]
    fn the_wait_is_over_once_its_time_has_passed() {
        assert_eq!(T.wait_secs(f(6, 10_000), 11_999), Some(1));
        assert_eq!(T.wait_secs(f(6, 10_000), 12_000), None);
    }

    #[test]
    fn the_wait_never_grows_past_its_cap() {
        assert_eq!(T.wait_secs(f(1_000_000, 0), 0), Some(15 * 60));
    }

    #[test]
    fn a_key_quiet_for_an_hour_starts_from_zero() {
        let hour = 3_600_000;
        assert_eq!(T.counted(f(9, 0), hour - 1), 9);
        assert_eq!(T.counted(f(9, 0), hour), 0);
        assert_eq!(T.wait_secs(f(9, 0), hour), None);
    }

    #[test]
    fn zero_free_failures_turns_the_throttle_off() {
        let off = LoginThrottle::parse("0", T).unwrap();
        assert_eq!(off.wait_secs(f(1_000, 0), 0), None);
        assert_eq!(LoginThrottle::parse("x", T), None);
        assert_eq!(LoginThrottle::parse("-1", T), None);
        assert_eq!(LoginThrottle::parse(" 7 ", T).unwrap().free_failures, 7);
    }

    #[test]
    fn a_login_waits_for_the_longer_of_the_username_and_address_waits() {
        let user = (T, f(6, 0)); // 2 s
        let addr = (LoginThrottle::after(20), f(23, 0)); // 8 s
        assert_eq!(
            check_login(user, addr, 0),
            Err(ApiError::RateLimited {
                retry_after_secs: 8
            })
        );
        assert_eq!(check_login((T, None), (T, f(1, 0)), 0), Ok(()));
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
    }

    #[test]
    fn counts_are_read_from_the_scripts_reply() {
        let reply = [
            Reply::Int(3),
            Reply::Int(1_000),
            Reply::Int(0),
            Reply::Int(0),
        ];
        assert_eq!(
            decode_counts(&reply),
            Some((
                Some(Failures {
                    count: 3,
                    last_ms: 1_000
                }),
                None
            ))
        );
        assert_eq!(decode_counts(&[Reply::Int(1)]), None);
        assert_eq!(login_args(Count::Fail, 5)[0], Arg::from("fail"));
    }
}

//! Instants as milliseconds since the Unix epoch, with RFC 3339 parsing and UTC formatting.
//! Small on purpose: every component carries it, and a date library would dwarf it.

use std::fmt;

/// Milliseconds since 1970-01-01T00:00:00Z.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Millis(pub i64);

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("`{0}` is not an RFC 3339 date-time (e.g. 2026-11-21T12:00:00Z)")]
pub struct BadTime(pub String);

// Days since the epoch of a civil date (proleptic Gregorian), after H. Hinnant.
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

fn civil_from_days(z: i64) -> (i64, i64, i64) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    (
        if m <= 2 {
            yoe + era * 400 + 1
        } else {
            yoe + era * 400
        },
        m,
        d,
    )
}

fn days_in_month(y: i64, m: i64) -> i64 {
    match m {
        1 | 3 | 5 | 7 | 8 | 10 | 12 => 31,
        4 | 6 | 9 | 11 => 30,
        _ if (y % 4 == 0 && y % 100 != 0) || y % 400 == 0 => 29,
        _ => 28,
    }
}

impl Millis {
    /// Parses `YYYY-MM-DDTHH:MM:SS[.fff…](Z|±HH:MM)`; `t`/`z` and a space separator are
    /// accepted as RFC 3339 allows. Sub-millisecond digits are truncated.
    pub fn parse_rfc3339(text: &str) -> Result<Millis, BadTime> {
        let bad = || BadTime(text.chars().take(64).collect());
        let b = text.as_bytes();
        if b.len() < 20 || b.len() > 40 {
            return Err(bad());
        }
        let num = |range: std::ops::Range<usize>| -> Result<i64, BadTime> {
            let s = text.get(range).ok_or_else(bad)?;
            if !s.bytes().all(|c| c.is_ascii_digit()) {
                return Err(bad());
            }
            s.parse().map_err(|_| bad())
        };
        if b[4] != b'-'
            || b[7] != b'-'
            || !matches!(b[10], b'T' | b't' | b' ')
            || b[13] != b':'
            || b[16] != b':'
        {
            return Err(bad());
        }
        let (y, mo, d, h, mi, s) = (
            num(0..4)?,
            num(5..7)?,
            num(8..10)?,
            num(11..13)?,
            num(14..16)?,
            num(17..19)?,
        );
        if !(1..=12).contains(&mo)
            || d < 1
            || d > days_in_month(y, mo)
            || h > 23
            || mi > 59
            || s > 59
        {
            return Err(bad());
        }
        let mut i = 19;
        let mut millis = 0;
        if b.get(i) == Some(&b'.') {
            i += 1;
            let start = i;
            while i < b.len() && b[i].is_ascii_digit() {
                i += 1;
            }
            if i == start {
                return Err(bad());
            }
            let frac = &text[start..i.min(start + 3)];
            millis = frac.parse::<i64>().map_err(|_| bad())? * 10_i64.pow(3 - frac.len() as u32);
        }
        let offset_minutes = match b.get(i) {
            Some(b'Z' | b'z') if i + 1 == b.len() => 0,
            Some(sign @ (b'+' | b'-')) if i + 6 == b.len() && b[i + 3] == b':' => {
                let (oh, om) = (num(i + 1..i + 3)?, num(i + 4..i + 6)?);
                if oh > 23 || om > 59 {
                    return Err(bad());
                }
                let m = oh * 60 + om;
                if *sign == b'+' {
                    m
                } else {
                    -m
                }
            }
            _ => return Err(bad()),
        };
        let days = days_from_civil(y, mo, d);
        let secs = days * 86_400 + h * 3600 + mi * 60 + s - offset_minutes * 60;
        Ok(Millis(secs * 1000 + millis))
    }

    pub fn as_secs(self) -> i64 {
        self.0.div_euclid(1000)
    }

    /// RFC 3339 UTC always with milliseconds (`2026-11-21T12:00:00.000Z`): the server's
    /// clock as pages read it, one fixed shape.
    pub fn rfc3339_millis(self) -> String {
        let text = self.to_string();
        match self.0.rem_euclid(1000) {
            0 => format!("{}.000Z", text.trim_end_matches('Z')),
            _ => text,
        }
    }

    /// The HTTP `Date` format (RFC 9110 IMF-fixdate): `Sat, 21 Nov 2026 12:00:00 GMT`.
    pub fn http_date(self) -> String {
        const DAYS: [&str; 7] = ["Thu", "Fri", "Sat", "Sun", "Mon", "Tue", "Wed"];
        const MONTHS: [&str; 12] = [
            "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
        ];
        let secs = self.as_secs();
        let days = secs.div_euclid(86_400);
        let (y, m, d) = civil_from_days(days);
        let rem = secs.rem_euclid(86_400);
        format!(
            "{}, {d:02} {} {y:04} {:02}:{:02}:{:02} GMT",
            DAYS[days.rem_euclid(7) as usize],
            MONTHS[(m - 1) as usize],
            rem / 3600,
            rem % 3600 / 60,
            rem % 60
        )
    }
}

/// RFC 3339 in UTC with millisecond precision when there are milliseconds:
/// `2026-11-21T12:00:00Z`, `2026-11-21T12:00:00.250Z`.
impl fmt::Display for Millis {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let secs = self.0.div_euclid(1000);
        let ms = self.0.rem_euclid(1000);
        let (y, m, d) = civil_from_days(secs.div_euclid(86_400));
        let rem = secs.rem_euclid(86_400);
        write!(
            f,
            "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}",
            rem / 3600,
            rem % 3600 / 60,
            rem % 60
        )?;
        if ms != 0 {
            write!(f, ".{ms:03}")?;
        }
        f.write_str("Z")
    }
}

impl serde::Serialize for Millis {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn utc_and_offsets_parse_to_the_same_instant() {
        let a = Millis::parse_rfc3339("2026-11-21T12:00:00Z").unwrap();
        let b = Millis::parse_rfc3339("2026-11-21T20:00:00+08:00").unwrap();
        assert_eq!(a, b);
        assert_eq!(a.0, 1_795_262_400_000);
    }

    #[test]
    fn fractions_are_kept_to_the_millisecond() {
        let t = Millis::parse_rfc3339("1970-01-01T00:00:01.2345Z").unwrap();
        assert_eq!(t.0, 1234);
        assert_eq!(t.to_string(), "1970-01-01T00:00:01.234Z");
    }

    #[test]
    fn formatting_round_trips_across_leap_years_and_before_the_epoch() {
        for text in [
            "2024-02-29T23:59:59Z",
            "1969-12-31T23:59:59.999Z",
            "2000-03-01T00:00:00Z",
        ] {
            assert_eq!(Millis::parse_rfc3339(text).unwrap().to_string(), text);
        }
    }

    #[test]
    fn server_time_always_has_milliseconds() {
        let t = Millis::parse_rfc3339("2026-11-21T12:00:00Z").unwrap();
        assert_eq!(t.rfc3339_millis(), "2026-11-21T12:00:00.000Z");
        assert_eq!(Millis(t.0 + 7).rfc3339_millis(), "2026-11-21T12:00:00.007Z");
    }

    #[test]
    fn http_dates_name_the_right_weekday_and_month() {
        let t = Millis::parse_rfc3339("2026-11-21T12:00:00.999Z").unwrap();
        assert_eq!(t.http_date(), "Sat, 21 Nov 2026 12:00:00 GMT");
        assert_eq!(Millis(0).http_date(), "Thu, 01 Jan 1970 00:00:00 GMT");
        assert_eq!(
            Millis::parse_rfc3339("2024-02-29T23:59:59Z")
                .unwrap()
                .http_date(),
            "Thu, 29 Feb 2024 23:59:59 GMT"
        );
    }

    #[test]
    fn impossible_dates_and_junk_are_refused() {
        for text in [
            "2026-02-29T00:00:00Z",
            "2026-13-01T00:00:00Z",
            "2026-01-01T24:00:00Z",
            "2026-01-01T00:00:00",
            "2026-01-01",
            "yesterday",
            "2026-01-01T00:00:00+8:00",
            "2026-01-01T00:00:00.Z",
            "२०२६-01-01T00:00:00Z",
        ] {
            assert!(Millis::parse_rfc3339(text).is_err(), "{text}");
        }
    }
}

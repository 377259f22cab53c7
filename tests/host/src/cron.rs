//! The cron expressions of Spin's cron trigger: six fields (`sec min hour day month weekday`)
//! and an optional seventh (`year`). Each field takes `*`, `n`, `a-b`, lists `a,b` and steps
//! `*/n`, `a/n`, `a-b/n`. Weekdays are 0–6 (or 1–7, 7 = Sunday) counted from Sunday.

use anyhow::{bail, Context, Result};
use chrono::{DateTime, Datelike, Duration, TimeZone, Timelike, Utc};

#[derive(Debug, Clone)]
pub struct CronSchedule {
    seconds: u64,
    minutes: u64,
    hours: u64,
    days: u64,
    months: u64,
    weekdays: u64,
    years: Option<(i32, i32)>,
}

const FIELDS: [(&str, u32, u32); 6] = [
    ("second", 0, 59),
    ("minute", 0, 59),
    ("hour", 0, 23),
    ("day of month", 1, 31),
    ("month", 1, 12),
    ("day of week", 0, 7),
];

fn parse_field(text: &str, name: &str, min: u32, max: u32) -> Result<u64> {
    let mut set = 0u64;
    for item in text.split(',') {
        let (range, step) = match item.split_once('/') {
            Some((r, s)) => (
                r,
                s.parse::<u32>()
                    .with_context(|| format!("{name}: bad step `{s}`"))?,
            ),
            None => (item, 1),
        };
        if step == 0 {
            bail!("{name}: step must be positive");
        }
        let (lo, hi) = if range == "*" {
            (min, max)
        } else if let Some((a, b)) = range.split_once('-') {
            (parse_num(a, name)?, parse_num(b, name)?)
        } else {
            let n = parse_num(range, name)?;
            (n, if item.contains('/') { max } else { n })
        };
        if lo < min || hi > max || lo > hi {
            bail!("{name}: `{item}` is outside {min}-{max}");
        }
        let mut v = lo;
        while v <= hi {
            set |= 1 << v;
            v += step;
        }
    }
    Ok(set)
}

fn parse_num(text: &str, name: &str) -> Result<u32> {
    text.parse()
        .with_context(|| format!("{name}: `{text}` is not a number"))
}

impl CronSchedule {
    pub fn parse(expr: &str) -> Result<Self> {
        let fields: Vec<&str> = expr.split_whitespace().collect();
        if fields.len() != 6 && fields.len() != 7 {
            bail!(
                "`{expr}` has {} fields; expected 6 (sec min hour day month weekday) or 7 (with year)",
                fields.len()
            );
        }
        let mut sets = [0u64; 6];
        for (i, (name, min, max)) in FIELDS.iter().enumerate() {
            sets[i] = parse_field(fields[i], name, *min, *max)?;
        }
        // 7 is Sunday as well as 0.
        if sets[5] & (1 << 7) != 0 {
            sets[5] |= 1;
        }
        let years = match fields.get(6) {
            None | Some(&"*") => None,
            Some(y) => Some(match y.split_once('-') {
                Some((a, b)) => (parse_num(a, "year")? as i32, parse_num(b, "year")? as i32),
                None => {
                    let n = parse_num(y, "year")? as i32;
                    (n, n)
                }
            }),
        };
        Ok(Self {
            seconds: sets[0],
            minutes: sets[1],
            hours: sets[2],
            days: sets[3],
            months: sets[4],
            weekdays: sets[5],
            years,
        })
    }

    /// The first matching instant strictly after `after`, to the second; `None` if there is
    /// none within the next five years.
    pub fn next_after(&self, after: DateTime<Utc>) -> Option<DateTime<Utc>> {
        let mut t = after.with_nanosecond(0)? + Duration::seconds(1);
        let limit = after + Duration::days(5 * 366);
        while t <= limit {
            if let Some((lo, hi)) = self.years {
                if t.year() > hi {
                    return None;
                }
                if t.year() < lo {
                    t = Utc.with_ymd_and_hms(lo, 1, 1, 0, 0, 0).single()?;
                    continue;
                }
            }
            if self.months & (1 << t.month()) == 0 {
                let (y, m) = if t.month() == 12 {
                    (t.year() + 1, 1)
                } else {
                    (t.year(), t.month() + 1)
                };
                t = Utc.with_ymd_and_hms(y, m, 1, 0, 0, 0).single()?;
                continue;
            }
            let weekday = t.weekday().num_days_from_sunday();
            if self.days & (1 << t.day()) == 0 || self.weekdays & (1 << weekday) == 0 {
                t = (t + Duration::days(1))
                    .with_hour(0)?
                    .with_minute(0)?
                    .with_second(0)?;
                continue;
            }
            if self.hours & (1 << t.hour()) == 0 {
                t = (t + Duration::hours(1)).with_minute(0)?.with_second(0)?;
                continue;
            }
            if self.minutes & (1 << t.minute()) == 0 {
                t = (t + Duration::minutes(1)).with_second(0)?;
                continue;
            }
            if self.seconds & (1 << t.second()) == 0 {
                t += Duration::seconds(1);
                continue;
            }
            return Some(t);
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(s: &str) -> DateTime<Utc> {
        s.parse().unwrap()
    }

    #[test]
    fn every_second_fires_on_the_next_second() {
        let c = CronSchedule::parse("* * * * * *").unwrap();
        assert_eq!(
            c.next_after(at("2026-01-01T00:00:00.5Z")),
            Some(at("2026-01-01T00:00:01Z"))
        );
    }

    #[test]
    fn steps_and_lists_are_honoured() {
        let c = CronSchedule::parse("*/15 * * * * *").unwrap();
        assert_eq!(
            c.next_after(at("2026-01-01T00:00:16Z")),
            Some(at("2026-01-01T00:00:30Z"))
        );
        let c = CronSchedule::parse("0 0 9,17 * * 1-5").unwrap();
        // 2026-01-03 is a Saturday: the next weekday 09:00 is Monday the 5th.
        assert_eq!(
            c.next_after(at("2026-01-02T17:00:00Z")),
            Some(at("2026-01-05T09:00:00Z"))
        );
    }

    #[test]
    fn month_and_year_boundaries_roll_over() {
        let c = CronSchedule::parse("0 0 0 1 1 * *").unwrap();
        assert_eq!(
            c.next_after(at("2026-03-04T05:06:07Z")),
            Some(at("2027-01-01T00:00:00Z"))
        );
    }

    #[test]
    fn bad_expressions_name_the_field() {
        assert!(CronSchedule::parse("* * * * *").is_err());
        let e = CronSchedule::parse("* 61 * * * *").unwrap_err().to_string();
        assert!(e.contains("minute"), "{e}");
        assert!(CronSchedule::parse("*/0 * * * * *").is_err());
    }
}

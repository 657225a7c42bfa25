//! Timestamps as the original system wrote them: ISO 8601 in UTC with milliseconds
//! (`2026-11-26T10:46:47.123Z`, what JavaScript's `toISOString()` gives).

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use time::OffsetDateTime;
use time::format_description::well_known::Iso8601;
use time::format_description::well_known::iso8601::{Config, EncodedConfig, TimePrecision};

const ISO_MILLIS: EncodedConfig =
    Config::DEFAULT.set_time_precision(TimePrecision::Second { decimal_digits: std::num::NonZeroU8::new(3) }).encode();

/// Now, as an ISO-8601 string.
pub fn now_iso() -> String {
    iso(SystemTime::now())
}

/// A point in time as an ISO-8601 string.
///
/// Written by hand for the years 1970 to 9999 (every timestamp of a running cluster; a data
/// item's read writes two, and the `time` crate's general formatter was 3 % of its CPU), by
/// the `time` crate otherwise; beyond its years (±9999), the epoch's text.
pub fn iso(at: SystemTime) -> String {
    match at.duration_since(UNIX_EPOCH) {
        Ok(since) if since.as_secs() < YEAR_10000 => iso_since_epoch(since),
        _ => iso_by_crate(at),
    }
}

/// 10000-01-01T00:00:00Z in seconds since the epoch: the first instant of five-digit years.
const YEAR_10000: u64 = 253_402_300_800;

fn iso_by_crate(at: SystemTime) -> String {
    // Not `OffsetDateTime::from(at)`: it panics beyond the crate's years.
    let moved = |d: Duration| time::Duration::try_from(d).ok();
    let date_time = match at.duration_since(UNIX_EPOCH) {
        Ok(after) => moved(after).and_then(|d| OffsetDateTime::UNIX_EPOCH.checked_add(d)),
        Err(before) => moved(before.duration()).and_then(|d| OffsetDateTime::UNIX_EPOCH.checked_sub(d)),
    };
    date_time
        .and_then(|at| at.format(&Iso8601::<ISO_MILLIS>).ok())
        .unwrap_or_else(|| String::from("1970-01-01T00:00:00.000Z"))
}

/// `since` the epoch (before year 10000) as `YYYY-MM-DDTHH:MM:SS.mmmZ`.
fn iso_since_epoch(since: Duration) -> String {
    let secs = since.as_secs();
    let (year, month, day) = civil_from_days(secs / 86_400);
    let of_day = secs % 86_400;
    let mut text = *b"0000-00-00T00:00:00.000Z";
    let mut put = |at: usize, digits: usize, mut value: u64| {
        for i in (at..at + digits).rev() {
            text[i] = b'0' + (value % 10) as u8;
            value /= 10;
        }
    };
    put(0, 4, year);
    put(5, 2, month);
    put(8, 2, day);
    put(11, 2, of_day / 3600);
    put(14, 2, of_day / 60 % 60);
    put(17, 2, of_day % 60);
    put(20, 3, u64::from(since.subsec_millis()));
    String::from(std::str::from_utf8(&text).expect("ASCII digits"))
}

/// The Gregorian (year, month, day) of the day `days` after 1970-01-01: Howard Hinnant's
/// `civil_from_days`, for days on or after the epoch.
fn civil_from_days(days: u64) -> (u64, u64, u64) {
    let z = days + 719_468; // days since 0000-03-01
    let era = z / 146_097;
    let day_of_era = z % 146_097;
    let year_of_era = (day_of_era - day_of_era / 1460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    let month_from_march = (5 * day_of_year + 2) / 153;
    let day = day_of_year - (153 * month_from_march + 2) / 5 + 1;
    let month = if month_from_march < 10 { month_from_march + 3 } else { month_from_march - 9 };
    let year = era * 400 + year_of_era + u64::from(month <= 2);
    (year, month, day)
}

/// Milliseconds since the Unix epoch as an ISO-8601 string.
pub fn iso_from_millis(ms: i64) -> String {
    let at = if ms >= 0 { UNIX_EPOCH + Duration::from_millis(ms as u64) } else { UNIX_EPOCH };
    iso(at)
}

/// Milliseconds since the Unix epoch.
pub fn unix_millis() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as i64).unwrap_or(0)
}

#[cfg(test)]
mod tests {
    #[test]
    fn shape_matches_javascript() {
        assert_eq!(super::iso_from_millis(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(super::iso_from_millis(1_764_154_007_120), "2025-11-26T10:46:47.120Z");
        let now = super::now_iso();
        assert_eq!(now.len(), 24, "{now}");
        assert!(now.ends_with('Z'));
    }

    /// The hand-written years agree with the `time` crate's formatter to the millisecond
    /// (truncated, as JavaScript does): each day's edges, leap days, and a spread of instants
    /// up to the last millisecond of year 9999; later ones are the crate's.
    #[test]
    fn written_by_hand_as_the_crate_writes() {
        use std::time::{Duration, UNIX_EPOCH};
        let mut instants: Vec<Duration> = vec![
            Duration::ZERO,
            Duration::from_nanos(999_999),
            Duration::from_secs(951_782_400) + Duration::from_nanos(999_999_999), // 2000-02-29
            Duration::from_secs(4_107_542_400),                                   // 2100-03-01
            Duration::from_millis(super::YEAR_10000 * 1000 - 1),
        ];
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        for _ in 0..20_000 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            instants.push(Duration::from_millis(x % (super::YEAR_10000 * 1000)) + Duration::from_nanos(x >> 44));
        }
        for day in (0..super::YEAR_10000 / 86_400).step_by(97) {
            instants.push(Duration::from_secs(day * 86_400));
            instants.push(Duration::from_secs(day * 86_400) - Duration::from_nanos(1).min(Duration::from_secs(day)));
        }
        for since in instants {
            let at = UNIX_EPOCH + since;
            assert_eq!(super::iso(at), super::iso_by_crate(at), "{since:?}");
        }
        let later = UNIX_EPOCH + Duration::from_secs(super::YEAR_10000);
        assert_eq!(super::iso(later), "1970-01-01T00:00:00.000Z", "beyond the crate's years");
        let before = UNIX_EPOCH - Duration::from_millis(1);
        assert_eq!(super::iso(before), "1969-12-31T23:59:59.999Z");
    }
}

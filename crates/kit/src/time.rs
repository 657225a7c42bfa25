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
pub fn iso(at: SystemTime) -> String {
    OffsetDateTime::from(at).format(&Iso8601::<ISO_MILLIS>).unwrap_or_else(|_| String::from("1970-01-01T00:00:00.000Z"))
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
}

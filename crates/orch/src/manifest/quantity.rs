//! Kubernetes' quantity syntax for `resources:`: a decimal number (`1`, `0.5`, `1e3`) with an
//! optional suffix, binary (`Ki`, `Mi`, `Gi`, `Ti`, `Pi`, `Ei`), decimal (`k`, `M`, `G`,
//! `T`, `P`, `E`) or milli (`m`). Pure: text in, whole units out (bytes for memory,
//! millicores for cpu), rounded up as Kubernetes does; and back to text for display and
//! export. The resolved `Resources` of a service lives here too.

use serde::Serialize;

/// A service's limits, each optional (no limit).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Resources {
    /// Bytes.
    #[serde(skip_serializing_if = "Option::is_none", serialize_with = "memory_text")]
    pub memory: Option<u64>,
    /// Millicores (1000 is one core).
    #[serde(skip_serializing_if = "Option::is_none", serialize_with = "cpu_text")]
    pub cpu: Option<u64>,
    /// Processes (and threads) at once.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pids: Option<u64>,
}

impl Resources {
    pub fn is_empty(&self) -> bool {
        *self == Self::default()
    }
}

fn memory_text<S: serde::Serializer>(v: &Option<u64>, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&v.map(format_memory).unwrap_or_default())
}

fn cpu_text<S: serde::Serializer>(v: &Option<u64>, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&v.map(format_cpu).unwrap_or_default())
}

/// What a quantity is counted in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Unit {
    Bytes,
    Millicores,
}

/// Parses `text` into whole `unit`s (rounded up); the error says what is wrong.
pub fn parse(text: &str, unit: Unit) -> Result<u64, String> {
    let t = text.trim();
    let (number, suffix) = split(t).ok_or_else(|| format!("{text:?} is not a quantity"))?;
    // value = mantissa * 10^exp10 * binary; kept exact in integers.
    let (mut mantissa, mut exp10) = decimal(number).ok_or_else(|| format!("{text:?} is not a quantity"))?;
    let mut binary: u128 = 1;
    match suffix {
        "" => {}
        "m" => exp10 -= 3,
        "k" => exp10 += 3,
        "M" => exp10 += 6,
        "G" => exp10 += 9,
        "T" => exp10 += 12,
        "P" => exp10 += 15,
        "E" => exp10 += 18,
        "Ki" => binary = 1 << 10,
        "Mi" => binary = 1 << 20,
        "Gi" => binary = 1 << 30,
        "Ti" => binary = 1 << 40,
        "Pi" => binary = 1 << 50,
        "Ei" => binary = 1 << 60,
        other => {
            return Err(format!(
                "unknown suffix {other:?} in {text:?} (use Ki, Mi, Gi, Ti, k, M, G, T, or m for millicores)"
            ));
        }
    }
    if unit == Unit::Millicores {
        exp10 += 3;
    }
    let too_big = || format!("{text:?} is too large");
    mantissa = mantissa.checked_mul(binary).ok_or_else(too_big)?;
    let value = if exp10 >= 0 {
        let scale = 10u128.checked_pow(exp10 as u32).ok_or_else(too_big)?;
        mantissa.checked_mul(scale).ok_or_else(too_big)?
    } else {
        match 10u128.checked_pow((-exp10) as u32) {
            Some(scale) => mantissa.div_ceil(scale),
            None => u128::from(mantissa > 0),
        }
    };
    u64::try_from(value).map_err(|_| too_big())
}

/// The number and the suffix: `256Mi` → (`256`, `Mi`); an exponent (`1e3`) stays in the number.
fn split(t: &str) -> Option<(&str, &str)> {
    let bytes = t.as_bytes();
    let mut end = 0;
    while end < bytes.len() && (bytes[end].is_ascii_digit() || bytes[end] == b'.' || bytes[end] == b'+') {
        end += 1;
    }
    // An exponent: e/E followed by digits (`E` alone is the exa suffix).
    if end < bytes.len() && (bytes[end] == b'e' || bytes[end] == b'E') {
        let rest = &t[end + 1..];
        let digits = rest.strip_prefix(['+', '-']).unwrap_or(rest);
        if !digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit()) {
            end = t.len();
        }
    }
    (end > 0).then(|| (&t[..end], &t[end..]))
}

/// `12.5e3` → (125, 2): mantissa and power of ten; `None` if not a plain non-negative decimal.
fn decimal(number: &str) -> Option<(u128, i32)> {
    let number = number.strip_prefix('+').unwrap_or(number);
    let (base, exp) = match number.find(['e', 'E']) {
        Some(i) => (&number[..i], number[i + 1..].parse::<i32>().ok()?),
        None => (number, 0),
    };
    let (whole, fraction) = base.split_once('.').unwrap_or((base, ""));
    if whole.is_empty() && fraction.is_empty() {
        return None;
    }
    if !whole.bytes().chain(fraction.bytes()).all(|b| b.is_ascii_digit()) || !(-40..=40).contains(&exp) {
        return None;
    }
    let digits = format!("{whole}{fraction}");
    let digits = digits.trim_start_matches('0');
    let mantissa = if digits.is_empty() { 0 } else { digits.parse::<u128>().ok()? };
    Some((mantissa, exp - fraction.len() as i32))
}

/// Bytes as Kubernetes writes them: the largest binary suffix that divides them exactly.
pub fn format_memory(bytes: u64) -> String {
    for (shift, suffix) in [(60, "Ei"), (50, "Pi"), (40, "Ti"), (30, "Gi"), (20, "Mi"), (10, "Ki")] {
        if bytes >= 1 << shift && bytes % (1 << shift) == 0 {
            return format!("{}{suffix}", bytes >> shift);
        }
    }
    bytes.to_string()
}

/// Millicores as Kubernetes writes them: whole cores plainly (`2`), else `500m`.
pub fn format_cpu(millis: u64) -> String {
    if millis % 1000 == 0 { (millis / 1000).to_string() } else { format!("{millis}m") }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn memory_quantities() {
        for (text, bytes) in [
            ("256Mi", 256 << 20),
            ("1Gi", 1 << 30),
            ("1.5Gi", 3 << 29),
            ("128M", 128_000_000),
            ("1G", 1_000_000_000),
            ("64Ki", 65_536),
            ("1k", 1000),
            ("1000", 1000),
            ("1e6", 1_000_000),
            ("2E3", 2000),
            (" 4Mi ", 4 << 20),
            ("0.5", 1),
            ("1500m", 2),
            ("1E", 1_000_000_000_000_000_000),
        ] {
            assert_eq!(parse(text, Unit::Bytes), Ok(bytes), "{text}");
        }
    }

    #[test]
    fn cpu_quantities() {
        for (text, millis) in [("500m", 500), ("0.5", 500), ("1", 1000), ("2.25", 2250), ("200m", 200), ("0.0001", 1)] {
            assert_eq!(parse(text, Unit::Millicores), Ok(millis), "{text}");
        }
    }

    #[test]
    fn bad_quantities_say_why() {
        for (text, why) in [
            ("", "not a quantity"),
            ("Mi", "not a quantity"),
            ("-1Mi", "not a quantity"),
            ("1.2.3", "not a quantity"),
            ("256MB", "unknown suffix \"MB\""),
            ("12 Mi", "unknown suffix \" Mi\""),
            ("1mi", "unknown suffix"),
            ("99999999999Ei", "too large"),
            ("1e40", "too large"),
        ] {
            let err = parse(text, Unit::Bytes).unwrap_err();
            assert!(err.contains(why), "{text}: {err}");
        }
    }

    #[test]
    fn quantities_are_written_back_as_kubernetes_does() {
        assert_eq!(format_memory(256 << 20), "256Mi");
        assert_eq!(format_memory(3 << 29), "1536Mi");
        assert_eq!(format_memory(1000), "1000");
        assert_eq!(format_cpu(500), "500m");
        assert_eq!(format_cpu(2000), "2");
        for text in ["256Mi", "1Gi", "4Ki"] {
            assert_eq!(format_memory(parse(text, Unit::Bytes).unwrap()), text);
        }
    }
}

//! Figures from samples (quantiles, median/min/max) and as text for the tables.

use std::time::Duration;

/// Milliseconds of `d`.
pub fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// The `q` quantile of `sorted` values (the nearest rank); NaN when there are none.
pub fn quantile(sorted: &[f64], q: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    sorted[((sorted.len() - 1) as f64 * q).round() as usize]
}

/// `values` in milliseconds, sorted.
pub fn sorted_ms(values: &[Duration]) -> Vec<f64> {
    let mut v: Vec<f64> = values.iter().copied().map(ms).collect();
    v.sort_by(f64::total_cmp);
    v
}

/// Median, min, max of the values that are not NaN (NaN each when there are none).
pub fn spread(values: &[f64]) -> (f64, f64, f64) {
    let mut v: Vec<f64> = values.iter().copied().filter(|x| !x.is_nan()).collect();
    if v.is_empty() {
        return (f64::NAN, f64::NAN, f64::NAN);
    }
    v.sort_by(f64::total_cmp);
    let n = v.len();
    let median = if n % 2 == 1 { v[n / 2] } else { (v[n / 2 - 1] + v[n / 2]) / 2.0 };
    (median, v[0], v[n - 1])
}

/// To the hundredth.
pub fn round2(v: f64) -> f64 {
    (v * 100.0).round() / 100.0
}

/// Each value to the hundredth (runs in milliseconds, for the JSON).
pub fn runs(values: &[f64]) -> Vec<f64> {
    values.iter().copied().map(round2).collect()
}

/// Megabytes (10^6 bytes) from KiB.
pub fn mb(kib: u64) -> f64 {
    kib as f64 * 1024.0 / 1e6
}

/// `9.1 ms`, `212 ms`, `2.95 s`; `n/a` for NaN.
pub fn show_ms(v: f64) -> String {
    if v.is_nan() {
        "n/a".to_owned()
    } else if v >= 1000.0 {
        format!("{:.2} s", v / 1000.0)
    } else if v >= 100.0 {
        format!("{v:.0} ms")
    } else if v >= 10.0 {
        format!("{v:.1} ms")
    } else {
        format!("{v:.2} ms")
    }
}

/// `21 350` (thin grouping for the eye); `n/a` for NaN.
pub fn show_count(v: f64) -> String {
    if v.is_nan() {
        return "n/a".to_owned();
    }
    let digits = format!("{:.0}", v.round());
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            out.push(' ');
        }
        out.push(c);
    }
    out
}

/// `212 ms (min 180 ms, max 1.20 s)`: the median, min and max of `values` (ms).
pub fn show_spread(values: &[f64]) -> String {
    let (median, min, max) = spread(values);
    format!("{} (min {}, max {})", show_ms(median), show_ms(min), show_ms(max))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantiles_take_the_nearest_rank() {
        let v: Vec<f64> = (1..=200).map(f64::from).collect();
        assert_eq!(quantile(&v, 0.5), 101.0);
        assert_eq!(quantile(&v, 0.99), 198.0);
        assert_eq!(quantile(&v, 1.0), 200.0);
        assert!(quantile(&[], 0.5).is_nan());
    }

    #[test]
    fn spread_is_median_min_max_without_nan() {
        assert_eq!(spread(&[3.0, f64::NAN, 1.0, 2.0, 10.0]), (2.5, 1.0, 10.0));
        assert_eq!(spread(&[5.0, 1.0, 3.0]), (3.0, 1.0, 5.0));
        assert!(spread(&[f64::NAN]).0.is_nan());
    }

    #[test]
    fn figures_as_text() {
        assert_eq!(show_ms(9.104), "9.10 ms");
        assert_eq!(show_ms(21.26), "21.3 ms");
        assert_eq!(show_ms(212.4), "212 ms");
        assert_eq!(show_ms(2950.0), "2.95 s");
        assert_eq!(show_ms(f64::NAN), "n/a");
        assert_eq!(show_count(21350.4), "21 350");
        assert_eq!(show_count(999.0), "999");
        assert_eq!(show_count(1_234_567.0), "1 234 567");
        assert_eq!(show_spread(&[1.0, 2.0, 300.0]), "2.00 ms (min 1.00 ms, max 300 ms)");
    }
}

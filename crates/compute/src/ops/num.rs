//! Numbers in and out: `Num`, an operand as the request wrote it (integer of any size or
//! finite double), and the writers of results as JSON text (exact integers, doubles
//! shortest-round-trip, nothing that is not a finite number).

use std::fmt;
use std::fmt::Write as _;

use num_bigint::BigInt;
use serde_json::value::RawValue;

use super::{OpError, invalid};

/// Integers whose magnitude is below this are written as JSON integers (JavaScript's
/// `Number.MAX_SAFE_INTEGER + 1`), so `1.5 + 1.5` reads `3` as in the original service.
const SAFE_INTEGER: f64 = 9_007_199_254_740_992.0;

/// A number as the request wrote it: an integer when it was one, else a finite double.
#[derive(Clone, Debug, PartialEq)]
pub enum Num {
    Int(i64),
    /// An integer beyond 64 bits, as its decimal text (`-?[1-9][0-9]*`, at most
    /// [`MAX_INTEGER_DIGITS`](super::MAX_INTEGER_DIGITS) digits): it is parsed when
    /// evaluated, off the async runtime.
    Big(String),
    Float(f64),
}

impl Num {
    /// The nearest double (infinite beyond the doubles' range).
    pub(crate) fn f64(&self) -> f64 {
        match self {
            Self::Int(i) => *i as f64,
            // A decimal integer always parses as a double (correctly rounded).
            Self::Big(text) => text.parse().unwrap_or(f64::NAN),
            Self::Float(f) => *f,
        }
    }

    pub(crate) fn is_zero(&self) -> bool {
        match self {
            Self::Int(i) => *i == 0,
            Self::Big(_) => false,
            Self::Float(f) => *f == 0.0,
        }
    }

    pub(crate) fn is_integer(&self) -> bool {
        !matches!(self, Self::Float(_))
    }

    pub(crate) fn is_negative(&self) -> bool {
        match self {
            Self::Int(i) => *i < 0,
            Self::Big(text) => text.starts_with('-'),
            Self::Float(f) => *f < 0.0,
        }
    }

    /// The exact value of an integer (zero for a double, which callers rule out).
    pub(crate) fn big(&self) -> BigInt {
        match self {
            Self::Int(i) => BigInt::from(*i),
            Self::Big(text) => text.parse().unwrap_or_default(),
            Self::Float(_) => BigInt::default(),
        }
    }

    /// log10 of the magnitude, for estimating the digits of a result.
    pub(crate) fn log10(&self) -> f64 {
        match self {
            Self::Int(i) => (i.unsigned_abs() as f64).log10(),
            Self::Big(text) => {
                let digits = text.trim_start_matches('-');
                let lead = &digits[..digits.len().min(15)];
                lead.parse::<f64>().unwrap_or(1.0).log10() + (digits.len() - lead.len()) as f64
            }
            Self::Float(f) => f.abs().log10(),
        }
    }
}

/// JSON text (made by this module, so always valid).
pub(super) fn raw(text: String) -> Result<Box<RawValue>, OpError> {
    RawValue::from_string(text).map_err(|e| OpError::Invalid(format!("the result is not valid JSON: {e}")))
}

/// An exact integer as a JSON string of its decimal digits.
pub(super) fn decimal_string(n: &impl fmt::Display) -> Result<Box<RawValue>, OpError> {
    raw(format!("\"{n}\""))
}

/// A double as JSON.
pub(super) fn float_value(x: f64) -> Result<Box<RawValue>, OpError> {
    let mut text = String::new();
    write_float(&mut text, x)?;
    raw(text)
}

/// A double as JSON text: shortest round-trip, integral values below 2^53 as integers (as
/// JavaScript writes them), and `-0.0` kept.
pub(super) fn write_float(out: &mut String, x: f64) -> Result<(), OpError> {
    if x.is_nan() {
        return invalid("the result is not a real number");
    }
    if x.is_infinite() {
        return invalid("the result is too large to be a finite number");
    }
    if x.fract() == 0.0 && x.abs() < SAFE_INTEGER && !(x == 0.0 && x.is_sign_negative()) {
        let _ = write!(out, "{}", x as i64);
    } else if let Some(n) = serde_json::Number::from_f64(x) {
        let _ = write!(out, "{n}");
    }
    Ok(())
}

pub(super) fn write_int(out: &mut String, v: impl fmt::Display) -> Result<(), OpError> {
    let _ = write!(out, "{v}");
    Ok(())
}

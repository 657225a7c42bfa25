//! The operations: their input shapes, their bounds, and the arithmetic.
//!
//! [`parse`] checks `{operation, operands}` once and turns it into a [`Task`] (or a 400
//! message saying what is wrong, with the limit when a bound is exceeded). [`Task::evaluate`]
//! does the work; it is CPU-bound and pure, so callers run it off the async runtime unless
//! [`Task::is_cheap`]. Every bound keeps one evaluation well under a second in a release
//! build (see the benchmark).
//!
//! Numbers are read from the request's own text ([`RawValue`]), never through a lossy
//! intermediate: a JSON integer is an integer of any size (at most [`MAX_INTEGER_DIGITS`]
//! digits), a number with a fraction or an exponent a double, read with correct rounding.
//!
//! Results are never silently rounded integers. Integer operands give exact integers:
//! add, subtract, multiply and sumOfSquares always, divide and average when the quotient is
//! whole (else a double); they are JSON integers of any size. Power with integer base and
//! non-negative integer exponent, factorial and fibonacci are exact, as decimal strings.
//! Anything with a double operand is computed in doubles and written shortest-round-trip
//! (integral values below 2^53 as integers, like JavaScript, and `-0.0` as such);
//! `primeCheck` is a boolean, `matrixMultiply` an array of rows (exact when every entry is
//! an integer, up to 2^127). JSON has no NaN or infinity, so a result that is not a finite
//! number is an error.

use std::collections::HashMap;
use std::fmt;
use std::fmt::Write as _;

use num_bigint::{BigInt, BigUint};
use serde_json::value::RawValue;

/// add, subtract, multiply, divide, sumOfSquares, average: at most this many operands.
pub const MAX_OPERANDS: usize = 10_000;
/// factorial: n at most this (10000! has 35660 digits).
pub const MAX_FACTORIAL: u64 = 10_000;
/// fibonacci: n at most this (fib(100000) has 20899 digits).
pub const MAX_FIBONACCI: u64 = 100_000;
/// power and multiply with an exact (integer) result: at most this many digits.
pub const MAX_POWER_DIGITS: u64 = 100_000;
/// An integer operand: at most this many digits (beyond 64 bits it is computed exactly,
/// as a big integer).
pub const MAX_INTEGER_DIGITS: usize = 2_000;
/// primeCheck: n at most 2^53 - 1, the largest integer a JSON client represents exactly.
pub const MAX_PRIME: u64 = (1 << 53) - 1;
/// matrixMultiply: rows and columns of each matrix at most this.
pub const MAX_MATRIX_DIM: usize = 200;
/// sleep (jobs only): at most this many milliseconds.
pub const MAX_SLEEP_MS: u64 = 10_000;

/// Integers whose magnitude is below this are written as JSON integers (JavaScript's
/// `Number.MAX_SAFE_INTEGER + 1`), so `1.5 + 1.5` reads `3` as in the original service.
const SAFE_INTEGER: f64 = 9_007_199_254_740_992.0;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Operation {
    Add,
    Subtract,
    Multiply,
    Divide,
    Power,
    Factorial,
    Fibonacci,
    PrimeCheck,
    SumOfSquares,
    Average,
    MatrixMultiply,
    /// Waits `ms` milliseconds (a tokio sleep, no thread held): for demos and crash tests.
    Sleep,
}

impl Operation {
    /// Every operation; the first eleven are the direct ones.
    pub const ALL: [Operation; 12] = [
        Self::Add,
        Self::Subtract,
        Self::Multiply,
        Self::Divide,
        Self::Power,
        Self::Factorial,
        Self::Fibonacci,
        Self::PrimeCheck,
        Self::SumOfSquares,
        Self::Average,
        Self::MatrixMultiply,
        Self::Sleep,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Self::Add => "add",
            Self::Subtract => "subtract",
            Self::Multiply => "multiply",
            Self::Divide => "divide",
            Self::Power => "power",
            Self::Factorial => "factorial",
            Self::Fibonacci => "fibonacci",
            Self::PrimeCheck => "primeCheck",
            Self::SumOfSquares => "sumOfSquares",
            Self::Average => "average",
            Self::MatrixMultiply => "matrixMultiply",
            Self::Sleep => "sleep",
        }
    }

    pub fn from_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|op| op.name() == name)
    }

    /// The operations accepted at `place`, by name.
    pub fn supported(place: Place) -> Vec<&'static str> {
        let n = match place {
            Place::Direct => 11,
            Place::Job => Self::ALL.len(),
        };
        Self::ALL[..n].iter().map(|op| op.name()).collect()
    }
}

impl fmt::Display for Operation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Where a request runs: `sleep` exists only as a job.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Place {
    Direct,
    Job,
}

/// Why an operation cannot be done: always the client's input (400).
#[derive(Clone, Debug, PartialEq, thiserror::Error)]
pub enum OpError {
    #[error("unknown operation {name:?}; supported operations: {}", supported.join(", "))]
    Unknown { name: String, supported: Vec<&'static str> },
    #[error("{0}")]
    Invalid(String),
}

fn invalid<T>(message: impl Into<String>) -> Result<T, OpError> {
    Err(OpError::Invalid(message.into()))
}

/// A number as the request wrote it: an integer when it was one, else a finite double.
#[derive(Clone, Debug, PartialEq)]
pub enum Num {
    Int(i64),
    /// An integer beyond 64 bits, as its decimal text (`-?[1-9][0-9]*`, at most
    /// [`MAX_INTEGER_DIGITS`] digits): it is parsed when evaluated, off the async runtime.
    Big(String),
    Float(f64),
}

impl Num {
    /// The nearest double (infinite beyond the doubles' range).
    fn f64(&self) -> f64 {
        match self {
            Self::Int(i) => *i as f64,
            // A decimal integer always parses as a double (correctly rounded).
            Self::Big(text) => text.parse().unwrap_or(f64::NAN),
            Self::Float(f) => *f,
        }
    }

    fn is_zero(&self) -> bool {
        match self {
            Self::Int(i) => *i == 0,
            Self::Big(_) => false,
            Self::Float(f) => *f == 0.0,
        }
    }

    fn is_integer(&self) -> bool {
        !matches!(self, Self::Float(_))
    }

    fn is_negative(&self) -> bool {
        match self {
            Self::Int(i) => *i < 0,
            Self::Big(text) => text.starts_with('-'),
            Self::Float(f) => *f < 0.0,
        }
    }

    /// The exact value of an integer (zero for a double, which callers rule out).
    fn big(&self) -> BigInt {
        match self {
            Self::Int(i) => BigInt::from(*i),
            Self::Big(text) => text.parse().unwrap_or_default(),
            Self::Float(_) => BigInt::default(),
        }
    }

    /// log10 of the magnitude, for estimating the digits of a result.
    fn log10(&self) -> f64 {
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

/// The entries of a matrix, row by row: integers while every entry is one.
#[derive(Clone, Debug, PartialEq)]
enum Entries {
    Int(Vec<i64>),
    Float(Vec<f64>),
}

/// A dense matrix.
#[derive(Clone, Debug, PartialEq)]
pub struct Matrix {
    rows: usize,
    cols: usize,
    data: Entries,
}

impl Matrix {
    fn floats(&self) -> Vec<f64> {
        match &self.data {
            Entries::Int(v) => v.iter().map(|x| *x as f64).collect(),
            Entries::Float(v) => v.clone(),
        }
    }
}

/// A checked request, ready to evaluate.
#[derive(Clone, Debug, PartialEq)]
pub enum Task {
    Add(Vec<Num>),
    Subtract(Vec<Num>),
    Multiply(Vec<Num>),
    Divide(Vec<Num>),
    SumOfSquares(Vec<Num>),
    Average(Vec<Num>),
    Power(Num, Num),
    Factorial(u64),
    Fibonacci(u64),
    PrimeCheck(u64),
    MatrixMultiply(Matrix, Matrix),
    Sleep(u64),
}

/// Checks `operation` and `operands` (the request's JSON text) for `place`.
pub fn parse(operation: &str, operands: &RawValue, place: Place) -> Result<(Operation, Task), OpError> {
    let unknown = || OpError::Unknown { name: shorten(operation), supported: Operation::supported(place) };
    let op = Operation::from_name(operation).ok_or_else(unknown)?;
    if op == Operation::Sleep && place == Place::Direct {
        return invalid(format!(
            "sleep runs only as a job (POST /api/compute/job); direct operations: {}",
            Operation::supported(Place::Direct).join(", ")
        ));
    }
    let task = match op {
        Operation::Add => Task::Add(list(op, operands, 1)?),
        Operation::Subtract => Task::Subtract(list(op, operands, 2)?),
        Operation::Multiply => {
            let values = list(op, operands, 1)?;
            check_product_digits(op, &values)?;
            Task::Multiply(values)
        }
        Operation::Divide => {
            let values = list(op, operands, 2)?;
            if let Some(i) = values.iter().skip(1).position(Num::is_zero) {
                return invalid(format!("division by zero (operand {} is 0)", i + 2));
            }
            Task::Divide(values)
        }
        Operation::SumOfSquares => Task::SumOfSquares(list(op, operands, 1)?),
        Operation::Average => Task::Average(list(op, operands, 1)?),
        Operation::Power => {
            let (base, exponent) = pair(op, operands, ["base", "exponent"])?;
            let (base, exponent) = (number(base, "base")?, number(exponent, "exponent")?);
            check_power(&base, &exponent)?;
            Task::Power(base, exponent)
        }
        Operation::Factorial => Task::Factorial(whole(op, unary(op, operands, "n")?, "n", MAX_FACTORIAL)?),
        Operation::Fibonacci => Task::Fibonacci(whole(op, unary(op, operands, "n")?, "n", MAX_FIBONACCI)?),
        Operation::PrimeCheck => Task::PrimeCheck(whole(op, unary(op, operands, "n")?, "n", MAX_PRIME)?),
        Operation::MatrixMultiply => {
            let (a, b) = pair(op, operands, ["a", "b"])?;
            let (a, b) = (matrix(a, "A")?, matrix(b, "B")?);
            if a.cols != b.rows {
                return invalid(format!(
                    "cannot multiply a {}x{} matrix by a {}x{} matrix: the columns of A must equal the rows of B",
                    a.rows, a.cols, b.rows, b.cols
                ));
            }
            Task::MatrixMultiply(a, b)
        }
        Operation::Sleep => Task::Sleep(whole(op, unary(op, operands, "ms")?, "ms", MAX_SLEEP_MS)?),
    };
    Ok((op, task))
}

/// At most 64 characters of client input in a message.
fn shorten(s: &str) -> String {
    match s.char_indices().nth(64) {
        Some((i, _)) => format!("{}...", &s[..i]),
        None => s.to_owned(),
    }
}

/// What kind of JSON value `v` is (its text is valid JSON, so the first byte says it).
fn kind(v: &RawValue) -> &'static str {
    match v.get().as_bytes().first() {
        Some(b'n') => "null",
        Some(b't' | b'f') => "a boolean",
        Some(b'"') => "a string",
        Some(b'[') => "an array",
        Some(b'{') => "an object",
        _ => "a number",
    }
}

/// The items of an array, each as its own text.
fn array(v: &RawValue) -> Option<Vec<&RawValue>> {
    v.get().starts_with('[').then(|| serde_json::from_str(v.get()).ok()).flatten()
}

/// The fields of an object (the last of duplicates wins, as with any JSON reader here).
fn object(v: &RawValue) -> Option<HashMap<String, &RawValue>> {
    v.get().starts_with('{').then(|| serde_json::from_str(v.get()).ok()).flatten()
}

/// A number, from its JSON text.
pub fn number(v: &RawValue, what: &str) -> Result<Num, OpError> {
    let text = v.get();
    match text.as_bytes().first() {
        Some(b'-' | b'0'..=b'9') => read_number(text, what),
        Some(b'"') => {
            let s: String = serde_json::from_str(text).unwrap_or_default();
            invalid(format!("{what} must be a number, not the string {:?}", shorten(&s)))
        }
        _ => invalid(format!("{what} must be a number, not {}", kind(v))),
    }
}

/// A JSON number's text: an integer unless it has a fraction or an exponent.
fn read_number(text: &str, what: &str) -> Result<Num, OpError> {
    if text.contains(['.', 'e', 'E']) {
        // Rust's parser rounds correctly, so a double comes back as the client wrote it.
        return match text.parse::<f64>() {
            Ok(f) if f.is_finite() => Ok(Num::Float(f)),
            _ => invalid(format!("{what} is not a finite number")),
        };
    }
    if let Ok(i) = text.parse::<i64>() {
        return Ok(Num::Int(i));
    }
    let digits = text.len() - usize::from(text.starts_with('-'));
    if digits > MAX_INTEGER_DIGITS {
        return invalid(format!("{what} has {digits} digits; an integer has at most {MAX_INTEGER_DIGITS} digits"));
    }
    Ok(Num::Big(text.to_owned()))
}

/// The operand of a unary operation: `5`, `[5]` or `{"n": 5}`.
fn unary<'a>(op: Operation, operands: &'a RawValue, field: &str) -> Result<&'a RawValue, OpError> {
    if let Some(items) = array(operands) {
        return match items[..] {
            [item] => Ok(item),
            _ => invalid(format!("{op} takes exactly 1 operand ({field}), got {}", items.len())),
        };
    }
    if let Some(map) = object(operands) {
        return match map.get(field) {
            Some(v) => Ok(v),
            None => invalid(format!("{op} takes {{\"{field}\": ...}} or [{field}]")),
        };
    }
    Ok(operands)
}

/// A whole number from 0 to `max`.
fn whole(op: Operation, v: &RawValue, what: &str, max: u64) -> Result<u64, OpError> {
    let n = match number(v, what)? {
        Num::Int(i) if i < 0 => return invalid(format!("{op}: {what} must not be negative (got {i})")),
        Num::Int(i) => i as u64,
        Num::Big(text) if text.starts_with('-') => {
            return invalid(format!("{op}: {what} must not be negative (got {})", shorten(&text)));
        }
        Num::Big(_) => u64::MAX,
        Num::Float(f) if f < 0.0 => return invalid(format!("{op}: {what} must not be negative (got {f})")),
        Num::Float(f) if f.fract() != 0.0 => return invalid(format!("{op}: {what} must be a whole number (got {f})")),
        Num::Float(f) if f > max as f64 => u64::MAX,
        Num::Float(f) => f as u64,
    };
    if n > max {
        return invalid(format!("{op}: {what} must be at most {max}"));
    }
    Ok(n)
}

/// The numbers of an n-ary operation: an array of `min..=MAX_OPERANDS` numbers.
fn list(op: Operation, operands: &RawValue, min: usize) -> Result<Vec<Num>, OpError> {
    let Some(items) = array(operands) else {
        return invalid(format!("{op} takes an array of numbers as operands, not {}", kind(operands)));
    };
    if items.len() < min {
        let noun = if min == 1 { "operand" } else { "operands" };
        return invalid(format!("{op} needs at least {min} {noun}"));
    }
    if items.len() > MAX_OPERANDS {
        return invalid(format!("{op} takes at most {MAX_OPERANDS} operands (got {})", items.len()));
    }
    items.iter().enumerate().map(|(i, v)| number(v, &format!("operand {}", i + 1))).collect()
}

/// Two operands: `[x, y]` or `{"<names.0>": x, "<names.1>": y}`.
fn pair<'a>(op: Operation, operands: &'a RawValue, names: [&str; 2]) -> Result<(&'a RawValue, &'a RawValue), OpError> {
    let [first, second] = names;
    if let Some(items) = array(operands) {
        return match items[..] {
            [x, y] => Ok((x, y)),
            _ => invalid(format!("{op} takes exactly 2 operands ({first}, {second}), got {}", items.len())),
        };
    }
    match object(operands) {
        Some(map) => match (map.get(first), map.get(second)) {
            (Some(x), Some(y)) => Ok((x, y)),
            _ => invalid(format!("{op} takes [{first}, {second}] or {{\"{first}\": ..., \"{second}\": ...}}")),
        },
        None => invalid(format!("{op} takes [{first}, {second}] as operands, not {}", kind(operands))),
    }
}

fn matrix(v: &RawValue, name: &str) -> Result<Matrix, OpError> {
    let Some(rows) = array(v) else {
        return invalid(format!("matrix {name} must be an array of rows, not {}", kind(v)));
    };
    let limit = MAX_MATRIX_DIM;
    if rows.is_empty() {
        return invalid(format!("matrix {name} is empty"));
    }
    if rows.len() > limit {
        return invalid(format!("matrix {name} has {} rows; at most {limit} rows and {limit} columns", rows.len()));
    }
    let mut data = Entries::Int(Vec::new());
    let mut cols = 0;
    for (i, row) in rows.iter().enumerate() {
        let Some(row) = array(row) else {
            return invalid(format!("matrix {name}: row {} must be an array of numbers, not {}", i + 1, kind(row)));
        };
        if i == 0 {
            cols = row.len();
            if cols == 0 {
                return invalid(format!("matrix {name} has an empty row"));
            }
            if cols > limit {
                return invalid(format!("matrix {name} has {cols} columns; at most {limit} rows and {limit} columns"));
            }
            if let Entries::Int(v) = &mut data {
                v.reserve(rows.len() * cols);
            }
        } else if row.len() != cols {
            return invalid(format!(
                "matrix {name} is ragged: row {} has {} entries, row 1 has {cols}",
                i + 1,
                row.len()
            ));
        }
        for (j, x) in row.iter().enumerate() {
            let what = format!("matrix {name} entry [{}][{}]", i + 1, j + 1);
            match (number(x, &what)?, &mut data) {
                (Num::Big(_), _) => {
                    return invalid(format!(
                        "{what} does not fit 64 bits; integer entries are from {} to {}",
                        i64::MIN,
                        i64::MAX
                    ));
                }
                (Num::Int(x), Entries::Int(v)) => v.push(x),
                (Num::Int(x), Entries::Float(v)) => v.push(x as f64),
                (Num::Float(x), Entries::Float(v)) => v.push(x),
                (Num::Float(x), Entries::Int(v)) => {
                    let mut floats: Vec<f64> = Vec::with_capacity(rows.len() * cols);
                    floats.extend(v.iter().map(|i| *i as f64));
                    floats.push(x);
                    data = Entries::Float(floats);
                }
            }
        }
    }
    Ok(Matrix { rows: rows.len(), cols, data })
}

/// Both integers and a non-negative exponent: the exact result must fit the digit limit.
fn check_power(base: &Num, exponent: &Num) -> Result<(), OpError> {
    let small_base = matches!(base, Num::Int(b) if b.unsigned_abs() < 2);
    if base.is_integer() && exponent.is_integer() && !exponent.is_negative() && !small_base {
        let digits = exponent.f64() * base.log10();
        if digits > MAX_POWER_DIGITS as f64 {
            return invalid(format!(
                "power: the exact result would have about {digits:.0} digits; the limit is {MAX_POWER_DIGITS} digits"
            ));
        }
    }
    Ok(())
}

/// All integers: the exact product must fit the digit limit.
fn check_product_digits(op: Operation, values: &[Num]) -> Result<(), OpError> {
    if values.iter().all(Num::is_integer) && !values.iter().any(Num::is_zero) {
        let digits: f64 = values.iter().map(Num::log10).sum();
        if digits > MAX_POWER_DIGITS as f64 {
            return invalid(format!(
                "{op}: the exact result would have about {digits:.0} digits; the limit is {MAX_POWER_DIGITS} digits"
            ));
        }
    }
    Ok(())
}

impl Task {
    /// True when evaluating takes microseconds, so it may run on the async runtime.
    pub fn is_cheap(&self) -> bool {
        let small = |v: &[Num]| v.len() <= 1_000 && !v.iter().any(|x| matches!(x, Num::Big(_)));
        match self {
            // An exact product of up to a thousand digits (as for power).
            Self::Multiply(v) if v.iter().all(Num::is_integer) && !v.iter().any(Num::is_zero) => {
                small(v) && v.iter().map(Num::log10).sum::<f64>() <= 1_000.0
            }
            Self::Add(v) | Self::Subtract(v) | Self::Multiply(v) | Self::Divide(v) => small(v),
            Self::SumOfSquares(v) | Self::Average(v) => small(v),
            Self::Power(Num::Int(b), Num::Int(e)) if *e >= 0 => {
                (*e as f64) * (b.unsigned_abs() as f64).log2() <= 4096.0
            }
            Self::Power(Num::Big(_), _) => false,
            Self::Power(..) => true,
            Self::Factorial(n) => *n <= 100,
            Self::Fibonacci(n) => *n <= 1_000,
            Self::PrimeCheck(_) => true,
            Self::MatrixMultiply(a, b) => a.rows * a.cols * b.cols <= 4_096,
            Self::Sleep(_) => false,
        }
    }

    /// Does the work; the result as JSON text. CPU-bound: call off the async runtime unless
    /// [`Task::is_cheap`]. `Sleep` is not evaluated here (it is a timer, see the executor);
    /// it answers its `ms`.
    pub fn evaluate(&self) -> Result<Box<RawValue>, OpError> {
        match self {
            Self::Add(v) => exact_or_float(
                v,
                |is| is.iter().try_fold(0i128, |acc, i| acc.checked_add(*i)),
                |bs| bs.into_iter().sum(),
                |fs| fs[1..].iter().fold(fs[0], |acc, x| acc + x),
            ),
            Self::Subtract(v) => exact_or_float(
                v,
                |is| is[1..].iter().try_fold(0i128, |acc, i| acc.checked_add(*i)).and_then(|s| is[0].checked_sub(s)),
                |bs| bs[0].clone() - bs[1..].iter().sum::<BigInt>(),
                |fs| fs[1..].iter().fold(fs[0], |acc, x| acc - x),
            ),
            Self::Multiply(v) => exact_or_float(
                v,
                |is| is.iter().try_fold(1i128, |acc, i| acc.checked_mul(*i)),
                |bs| product(&bs),
                |fs| fs[1..].iter().fold(fs[0], |acc, x| acc * x),
            ),
            Self::SumOfSquares(v) => exact_or_float(
                v,
                // the square of a 64-bit integer fits 127 bits
                |is| is.iter().try_fold(0i128, |acc, i| acc.checked_add(i * i)),
                |bs| bs.iter().map(|b| b * b).sum(),
                |fs| fs.iter().map(|x| x * x).sum(),
            ),
            Self::Divide(v) => divide(v),
            Self::Average(v) => average(v),
            Self::Power(base, exponent) => power(base, exponent),
            Self::Factorial(n) => decimal_string(&factorial(*n)),
            Self::Fibonacci(n) => decimal_string(&fibonacci(*n)),
            Self::PrimeCheck(n) => raw(is_prime(*n).to_string()),
            Self::MatrixMultiply(a, b) => matrix_multiply(a, b),
            Self::Sleep(ms) => raw(ms.to_string()),
        }
    }
}

/// Every operand an integer: exactly, in 128 bits while `small` does not overflow, else
/// with big integers. Any double among them: `float`, in doubles.
fn exact_or_float(
    values: &[Num],
    small: impl Fn(&[i128]) -> Option<i128>,
    big: impl Fn(Vec<BigInt>) -> BigInt,
    float: impl Fn(&[f64]) -> f64,
) -> Result<Box<RawValue>, OpError> {
    if !values.iter().all(Num::is_integer) {
        return float_value(float(&doubles(values)?));
    }
    match small_ints(values).and_then(|is| small(&is)) {
        Some(result) => raw(result.to_string()),
        None => raw(big(values.iter().map(Num::big).collect()).to_string()),
    }
}

/// The operands as doubles, for a result that is a double.
fn doubles(values: &[Num]) -> Result<Vec<f64>, OpError> {
    values.iter().enumerate().map(|(i, v)| double(v, &format!("operand {}", i + 1))).collect()
}

/// An integer beyond the doubles' range cannot take part in a result that is a double.
fn double(v: &Num, what: &str) -> Result<f64, OpError> {
    let x = v.f64();
    if x.is_finite() {
        return Ok(x);
    }
    invalid(format!("{what} is beyond the range of doubles (about ±1.8e308), and this result is computed in doubles"))
}

/// The operands as 128-bit integers, if every one is a 64-bit integer.
fn small_ints(values: &[Num]) -> Option<Vec<i128>> {
    values
        .iter()
        .map(|v| match v {
            Num::Int(i) => Some(i128::from(*i)),
            _ => None,
        })
        .collect()
}

/// The product of big integers, split in halves so the multiplications stay balanced.
fn product(values: &[BigInt]) -> BigInt {
    match values {
        [] => BigInt::from(1),
        [x] => x.clone(),
        _ => {
            let (left, right) = values.split_at(values.len() / 2);
            product(left) * product(right)
        }
    }
}

/// Integers that divide exactly give the exact quotient; anything else is a double.
fn divide(values: &[Num]) -> Result<Box<RawValue>, OpError> {
    if values.iter().all(Num::is_integer) {
        let exact = match small_ints(values) {
            Some(is) => is[1..].iter().try_fold(is[0], |acc, d| (acc % d == 0).then(|| acc / d)).map(|q| q.to_string()),
            None => {
                let zero = BigInt::default();
                let mut ints = values.iter().map(Num::big);
                let first = ints.next().unwrap_or_default();
                ints.try_fold(first, |acc, d| (&acc % &d == zero).then(|| acc / d)).map(|q| q.to_string())
            }
        };
        if let Some(quotient) = exact {
            return raw(quotient);
        }
    }
    let floats = doubles(values)?;
    float_value(floats[1..].iter().fold(floats[0], |acc, x| acc / x))
}

/// Integers whose mean is whole give it exactly; anything else is a double.
fn average(values: &[Num]) -> Result<Box<RawValue>, OpError> {
    let n = values.len();
    if values.iter().all(Num::is_integer) {
        let small = small_ints(values).and_then(|is| is.iter().try_fold(0i128, |acc, i| acc.checked_add(*i)));
        return match small {
            Some(sum) if sum % n as i128 == 0 => raw((sum / n as i128).to_string()),
            Some(sum) => float_value(sum as f64 / n as f64),
            None => {
                let sum: BigInt = values.iter().map(Num::big).sum();
                let count = BigInt::from(n);
                if &sum % &count == BigInt::default() {
                    raw((sum / count).to_string())
                } else {
                    float_value(sum.to_string().parse::<f64>().unwrap_or(f64::NAN) / n as f64)
                }
            }
        };
    }
    float_value(doubles(values)?.iter().sum::<f64>() / n as f64)
}

fn power(base: &Num, exponent: &Num) -> Result<Box<RawValue>, OpError> {
    if base.is_integer() && exponent.is_integer() && !exponent.is_negative() {
        let exact = match (base, exponent) {
            (_, Num::Int(0)) | (Num::Int(1), _) => BigInt::from(1),
            (Num::Int(0), _) => BigInt::from(0),
            (Num::Int(-1), Num::Int(e)) => BigInt::from(if e % 2 == 0 { 1 } else { -1 }),
            (Num::Int(-1), Num::Big(e)) => BigInt::from(if e.ends_with(['0', '2', '4', '6', '8']) { 1 } else { -1 }),
            // parse bounds the digits, so the exponent of a base of 2 or more fits u32
            (b, Num::Int(e)) => b.big().pow(u32::try_from(*e).unwrap_or(u32::MAX)),
            (_, _) => return invalid(format!("power: the limit is {MAX_POWER_DIGITS} digits")),
        };
        return decimal_string(&exact);
    }
    if base.is_zero() && exponent.is_negative() {
        return invalid("division by zero (0 to a negative power)");
    }
    float_value(double(base, "base")?.powf(double(exponent, "exponent")?))
}

/// JSON text (made by this module, so always valid).
fn raw(text: String) -> Result<Box<RawValue>, OpError> {
    RawValue::from_string(text).map_err(|e| OpError::Invalid(format!("the result is not valid JSON: {e}")))
}

/// An exact integer as a JSON string of its decimal digits.
fn decimal_string(n: &impl fmt::Display) -> Result<Box<RawValue>, OpError> {
    raw(format!("\"{n}\""))
}

/// A double as JSON.
fn float_value(x: f64) -> Result<Box<RawValue>, OpError> {
    let mut text = String::new();
    write_float(&mut text, x)?;
    raw(text)
}

/// A double as JSON text: shortest round-trip, integral values below 2^53 as integers (as
/// JavaScript writes them), and `-0.0` kept.
fn write_float(out: &mut String, x: f64) -> Result<(), OpError> {
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

/// n! as the product of 1..=n, split in halves so the multiplications stay balanced.
pub fn factorial(n: u64) -> BigUint {
    fn product(lo: u64, hi: u64) -> BigUint {
        if hi < lo {
            return BigUint::from(1u32);
        }
        if hi - lo < 16 {
            let mut acc = BigUint::from(lo);
            for i in lo + 1..=hi {
                acc *= i;
            }
            return acc;
        }
        let mid = lo + (hi - lo) / 2;
        product(lo, mid) * product(mid + 1, hi)
    }
    product(1, n)
}

/// fib(n) by fast doubling: fib(2k) = fib(k)·(2·fib(k+1) − fib(k)), fib(2k+1) = fib(k)² +
/// fib(k+1)², walking the bits of n from the top.
pub fn fibonacci(n: u64) -> BigUint {
    let mut a = BigUint::from(0u32); // fib(k)
    let mut b = BigUint::from(1u32); // fib(k+1)
    for bit in (0..u64::BITS - n.leading_zeros()).rev() {
        let c = &a * ((&b << 1usize) - &a);
        let d = &a * &a + &b * &b;
        if (n >> bit) & 1 == 1 {
            b = &c + &d;
            a = d;
        } else {
            a = c;
            b = d;
        }
    }
    a
}

/// Deterministic Miller-Rabin: the first twelve primes as bases decide every n < 2^64.
pub fn is_prime(n: u64) -> bool {
    const BASES: [u64; 12] = [2, 3, 5, 7, 11, 13, 17, 19, 23, 29, 31, 37];
    if n < 2 {
        return false;
    }
    for p in BASES {
        if n % p == 0 {
            return n == p;
        }
    }
    let mul = |a: u64, b: u64| (u128::from(a) * u128::from(b) % u128::from(n)) as u64;
    let pow = |mut base: u64, mut exp: u64| {
        let mut acc = 1u64;
        while exp > 0 {
            if exp & 1 == 1 {
                acc = mul(acc, base);
            }
            base = mul(base, base);
            exp >>= 1;
        }
        acc
    };
    let s = (n - 1).trailing_zeros();
    let d = (n - 1) >> s;
    'bases: for a in BASES {
        let mut x = pow(a, d);
        if x == 1 || x == n - 1 {
            continue;
        }
        for _ in 1..s {
            x = mul(x, x);
            if x == n - 1 {
                continue 'bases;
            }
        }
        return false;
    }
    true
}

fn matrix_multiply(a: &Matrix, b: &Matrix) -> Result<Box<RawValue>, OpError> {
    let (n, m, p) = (a.rows, a.cols, b.cols);
    let mut text = String::with_capacity(n * p * 4 + 2 * n + 2);
    match (&a.data, &b.data) {
        (Entries::Int(x), Entries::Int(y)) => {
            // Every partial sum is at most m products of the largest magnitudes.
            let largest = |v: &[i64]| u128::from(v.iter().map(|i| i.unsigned_abs()).max().unwrap_or(0));
            let (max_a, max_b) = (largest(x), largest(y));
            let bound = max_a.checked_mul(max_b).and_then(|b| b.checked_mul(m as u128));
            match bound {
                Some(bound) if bound <= i64::MAX as u128 => {
                    write_rows(&mut text, p, &multiply(n, m, p, x, y), write_int)?
                }
                Some(bound) if bound <= i128::MAX as u128 => {
                    let wide = |v: &[i64]| v.iter().map(|i| i128::from(*i)).collect::<Vec<_>>();
                    write_rows(&mut text, p, &multiply(n, m, p, &wide(x), &wide(y)), write_int)?;
                }
                _ => {
                    return invalid(format!(
                        "matrixMultiply: integer entries up to {max_a} in A and {max_b} in B could make an entry of \
                         the product exceed 2^127, the limit of exact integer products"
                    ));
                }
            }
        }
        _ => write_rows(&mut text, p, &multiply(n, m, p, &a.floats(), &b.floats()), write_float)?,
    }
    raw(text)
}

fn write_int(out: &mut String, v: impl fmt::Display) -> Result<(), OpError> {
    let _ = write!(out, "{v}");
    Ok(())
}

/// The n×p product of an n×m and an m×p matrix, row by row. The caller rules out overflow.
fn multiply<T>(n: usize, m: usize, p: usize, a: &[T], b: &[T]) -> Vec<T>
where
    T: Copy + Default + std::ops::AddAssign + std::ops::Mul<Output = T>,
{
    let mut out = vec![T::default(); n * p];
    for i in 0..n {
        let row = &mut out[i * p..(i + 1) * p];
        for k in 0..m {
            let x = a[i * m + k];
            for (cell, y) in row.iter_mut().zip(&b[k * p..(k + 1) * p]) {
                *cell += x * *y;
            }
        }
    }
    out
}

/// `cells` as a JSON array of rows of `p` entries.
fn write_rows<T: Copy>(
    out: &mut String,
    p: usize,
    cells: &[T],
    write: impl Fn(&mut String, T) -> Result<(), OpError>,
) -> Result<(), OpError> {
    out.push('[');
    for (i, row) in cells.chunks(p).enumerate() {
        out.push_str(if i == 0 { "[" } else { ",[" });
        for (j, x) in row.iter().enumerate() {
            if j > 0 {
                out.push(',');
            }
            write(out, *x)?;
        }
        out.push(']');
    }
    out.push(']');
    Ok(())
}

#[cfg(test)]
mod tests {
    use serde_json::{Value, json};

    use super::*;

    fn raw_of(v: &Value) -> Box<RawValue> {
        serde_json::value::to_raw_value(v).unwrap()
    }

    /// The result of `operation` on `operands` (JSON text) as a job, as JSON text, or the
    /// error message.
    fn run_text(operation: &str, operands: &str) -> Result<String, String> {
        let operands: Box<RawValue> = serde_json::from_str(operands).unwrap();
        let (_, task) = parse(operation, &operands, Place::Job).map_err(|e| e.to_string())?;
        task.evaluate().map(|r| r.get().to_owned()).map_err(|e| e.to_string())
    }

    fn run(operation: &str, operands: Value) -> Result<Value, String> {
        run_text(operation, &operands.to_string()).map(|text| serde_json::from_str(&text).unwrap())
    }

    /// The result's text is `expected`'s (serde_json writes doubles shortest-round-trip).
    fn check(operation: &str, operands: Value, expected: Value) {
        check_text(operation, &operands.to_string(), &expected.to_string());
    }

    fn check_text(operation: &str, operands: &str, expected: &str) {
        assert_eq!(run_text(operation, operands).as_deref(), Ok(expected), "{operation} {operands}");
    }

    fn check_err(operation: &str, operands: Value, expected: &str) {
        check_err_text(operation, &operands.to_string(), expected);
    }

    fn check_err_text(operation: &str, operands: &str, expected: &str) {
        match run_text(operation, operands) {
            Ok(v) => panic!("{operation} {operands}: expected an error containing {expected:?}, got {v}"),
            Err(e) => assert!(e.contains(expected), "{operation} {operands}: {e:?} lacks {expected:?}"),
        }
    }

    #[test]
    fn arithmetic() {
        check("add", json!([1, 2, 3]), json!(6));
        check("add", json!([0.1, 0.2]), json!(0.1 + 0.2));
        check("add", json!([1.5, 1.5]), json!(3));
        check("add", json!([7]), json!(7));
        check("add", json!([i64::MAX, i64::MAX, -i64::MAX]), json!(i64::MAX));
        check_text("add", &format!("[{}, 1]", i64::MAX), "9223372036854775808");
        check("subtract", json!([10, 3, 2]), json!(5));
        check("subtract", json!([1, 2.5]), json!(-1.5));
        check_text("subtract", &format!("[{}, 1]", i64::MIN), "-9223372036854775809");
        check("multiply", json!([2, 3, 4]), json!(24));
        check("multiply", json!([-2, 0.5]), json!(-1));
        check("multiply", json!([0, -5]), json!(0));
        check("divide", json!([10, 4]), json!(2.5));
        check("divide", json!([100, 5, 2]), json!(10));
        check("divide", json!([1, 3]), json!(1.0 / 3.0));
        check("sumOfSquares", json!([1, 2, 3]), json!(14));
        check("sumOfSquares", json!([0.5, -1.5]), json!(2.5));
        check("average", json!([1, 2, 3, 4]), json!(2.5));
        check("average", json!([-3]), json!(-3));
    }

    #[test]
    fn arithmetic_errors() {
        check_err("divide", json!([1, 0]), "division by zero (operand 2 is 0)");
        check_err("divide", json!([1, 2, 0.0]), "division by zero (operand 3 is 0)");
        check_err("multiply", json!([1e200, 1e200]), "too large to be a finite number");
        check_err("add", json!([1.7e308, 1.7e308]), "too large to be a finite number");
        check_err("sumOfSquares", json!([1e200]), "too large to be a finite number");
        check_err("add", json!([]), "add needs at least 1 operand");
        check_err("subtract", json!([5]), "subtract needs at least 2 operands");
        check_err("divide", json!([5]), "divide needs at least 2 operands");
        check_err("add", json!([1, "2"]), "operand 2 must be a number, not the string \"2\"");
        check_err("add", json!([1, "NaN"]), "operand 2 must be a number, not the string \"NaN\"");
        check_err("add", json!([1, "Infinity"]), "not the string \"Infinity\"");
        check_err("average", json!([null]), "operand 1 must be a number, not null");
        check_err("multiply", json!([[1]]), "operand 1 must be a number, not an array");
        check_err("add", json!(5), "add takes an array of numbers as operands, not a number");
        check_err("add", json!({"a": 1}), "not an object");
    }

    const BIG: &str = "12345678901234567890123";

    #[test]
    fn integers_beyond_64_bits_are_exact() {
        check_text("add", &format!("[{BIG}, 1]"), "12345678901234567890124");
        check_text("add", &format!("[{BIG}]"), BIG);
        check_text("add", &format!("[{}, {}]", i64::MAX, i64::MAX), "18446744073709551614");
        check_text("add", &format!("[{BIG}, -{BIG}, 5]"), "5");
        check_text("subtract", &format!("[-{BIG}, {BIG}]"), "-24691357802469135780246");
        check_text("subtract", &format!("[{}, 1, 1]", i64::MIN), "-9223372036854775810");
        check_text(
            "multiply",
            "[18446744073709551616, 18446744073709551616]",
            "340282366920938463463374607431768211456",
        );
        check_text("multiply", &format!("[{}, {}]", i64::MAX, i64::MAX), "85070591730234615847396907784232501249");
        check_text("multiply", &format!("[{BIG}, 0]"), "0");
        check_text("sumOfSquares", &format!("[{BIG}]"), "152415787532388367504942236884722755800955129");
        check_text("sumOfSquares", &format!("[{}, 1]", i64::MIN), "85070591730234615865843651857942052865");
        check_text("divide", "[37037036703703703670369, 3]", BIG);
        check_text("divide", &format!("[{BIG}, {BIG}]"), "1");
        check_text("divide", "[10, 4]", "2.5");
        check_text("divide", &format!("[{BIG}, 2]"), "6.172839450617284e+21");
        check_text("average", &format!("[{BIG}, 12345678901234567890125]"), "12345678901234567890124");
        check_text("average", &format!("[{}, {}]", i64::MAX, i64::MAX), &i64::MAX.to_string());
        check_text("average", "[1, 2]", "1.5");
        check_text("power", &format!("[{BIG}, 2]"), "\"152415787532388367504942236884722755800955129\"");
        check_text("power", &format!("[1, {BIG}]"), "\"1\"");
        check_text("power", &format!("[-1, {BIG}]"), "\"-1\"");
        check_text("power", &format!("[-1, {BIG}0]"), "\"1\"");
        check_text("power", &format!("[0, {BIG}]"), "\"0\"");
        check_text("power", &format!("[{BIG}, -1]"), "8.100000072900001e-23");
        check_err_text("power", &format!("[2, {BIG}]"), "the limit is 100000 digits");
        check_err_text("power", &format!("[{BIG}, 5000]"), "the limit is 100000 digits");
        check_err_text(
            "multiply",
            &format!("[{}]", vec!["1".to_owned() + &"0".repeat(1_999); 51].join(",")),
            "multiply: the exact result would have about 101949 digits; the limit is 100000 digits",
        );
        let at_limit = format!("[{}]", "7".repeat(MAX_INTEGER_DIGITS));
        assert_eq!(run_text("add", &at_limit), Ok("7".repeat(MAX_INTEGER_DIGITS)));
        check_err_text(
            "add",
            &format!("[1, -{}]", "7".repeat(MAX_INTEGER_DIGITS + 1)),
            &format!(
                "operand 2 has {} digits; an integer has at most {MAX_INTEGER_DIGITS} digits",
                MAX_INTEGER_DIGITS + 1
            ),
        );
        check_err_text("factorial", &format!("[{BIG}]"), "factorial: n must be at most 10000");
        // Beyond the doubles' range: exact when whole, else refused, naming the limit.
        let huge = format!("1{}", "0".repeat(400));
        check_text("divide", &format!("[{huge}, 1{}]", "0".repeat(399)), "10");
        check_err_text("divide", &format!("[{huge}, 3]"), "operand 1 is beyond the range of doubles (about ±1.8e308)");
        check_err_text("power", &format!("[{huge}, 0.5]"), "base is beyond the range of doubles");
        check_err_text("add", &format!("[{huge}, 0.5]"), "operand 1 is beyond the range of doubles");
        check_err_text(
            "primeCheck",
            &format!("[-{BIG}]"),
            "primeCheck: n must not be negative (got -12345678901234567890123)",
        );
        // A double among the operands: doubles throughout.
        check_text("add", &format!("[{BIG}, 0.5]"), "1.2345678901234568e+22");
        check_err_text("add", "[1e400]", "operand 1 is not a finite number");
    }

    /// A double in gives the same double out (serde_json writes the shortest text that
    /// reads back as it, so `1e22` comes back as `1e+22`).
    #[test]
    fn doubles_come_back_as_sent() {
        for x in
            ["0.9636861036351481", "0.30000000000000004", "5e-324", "-0.0", "1.7976931348623157e308", "-2.5e-8", "1e22"]
        {
            let sent: f64 = x.parse().unwrap();
            for (op, operands) in [
                ("add", format!("[{x}]")),
                ("multiply", format!("[{x}]")),
                ("average", format!("[{x}]")),
                ("subtract", format!("[{x}, 0]")),
                ("divide", format!("[{x}, 1]")),
                ("power", format!("[{x}, 1]")),
            ] {
                let back: f64 = run_text(op, &operands).unwrap().parse().unwrap();
                assert_eq!(back.to_bits(), sent.to_bits(), "{op} {operands}");
            }
        }
        check_text("add", "[0.1, 0.2]", "0.30000000000000004");
        check_text("multiply", "[-0.5, 0]", "-0.0");
        check_text("add", "[-0.0, -0.0]", "-0.0");
        check_text("add", "[1.5, 1.5]", "3");
        check_text("add", "[4503599627370496.5, 4503599627370496.5]", "9007199254740992.0");
        check_text("power", "[2, 0.5]", "1.4142135623730951");
    }

    #[test]
    fn integer_matrices_are_exact() {
        let big = 3_037_000_500i64;
        check_text("matrixMultiply", &format!("[[[{big}]], [[{big}]]]"), "[[9223372037000250000]]");
        check_text(
            "matrixMultiply",
            &format!("[[[{m}]], [[{m}]]]", m = i64::MAX),
            "[[85070591730234615847396907784232501249]]",
        );
        check_text("matrixMultiply", &format!("[[[{m}, {m}]], [[1], [1]]]", m = i64::MAX), "[[18446744073709551614]]");
        check_text("matrixMultiply", "[[[0.5, 2]], [[2], [0.25]]]", "[[1.5]]");
        check_text("matrixMultiply", "[[[1e300]], [[1e-300]]]", "[[1]]");
        check_text(
            "matrixMultiply",
            &format!("[[[{m}, {m}]], [[{m}], [{m}]]]", m = i64::MAX),
            "[[170141183460469231694793815568465002498]]",
        );
        check_err_text(
            "matrixMultiply",
            &format!("[[[{m}, {m}, {m}]], [[{m}], [{m}], [{m}]]]", m = i64::MAX),
            "could make an entry of the product exceed 2^127, the limit of exact integer products",
        );
        check_err_text(
            "matrixMultiply",
            &format!("[[[1, {BIG}]], [[1], [2]]]"),
            "matrix A entry [1][2] does not fit 64 bits; integer entries are from -9223372036854775808 to 9223372036854775807",
        );
    }

    #[test]
    fn operand_count_bound() {
        let at_limit = Value::Array(vec![json!(1); MAX_OPERANDS]);
        check("add", at_limit.clone(), json!(MAX_OPERANDS));
        check("sumOfSquares", at_limit.clone(), json!(MAX_OPERANDS));
        check("average", at_limit, json!(1));
        let over = Value::Array(vec![json!(1); MAX_OPERANDS + 1]);
        for op in ["add", "subtract", "multiply", "divide", "sumOfSquares", "average"] {
            check_err(op, over.clone(), &format!("{op} takes at most 10000 operands (got 10001)"));
        }
    }

    #[test]
    fn power() {
        check("power", json!([2, 10]), json!("1024"));
        check("power", json!([-3, 3]), json!("-27"));
        check("power", json!([2, 100]), json!("1267650600228229401496703205376"));
        check("power", json!([0, 0]), json!("1"));
        check("power", json!([0, 5]), json!("0"));
        check("power", json!([-1, 9_007_199_254_740_991u64]), json!("-1"));
        check("power", json!([1, 1_000_000_000]), json!("1"));
        check("power", json!({"base": 3, "exponent": 4}), json!("81"));
        check("power", json!([2, -2]), json!(0.25));
        check("power", json!([2.5, 2]), json!(6.25));
        check("power", json!([4, 0.5]), json!(2));
        let big = run("power", json!([10, MAX_POWER_DIGITS - 1])).unwrap();
        assert_eq!(big.as_str().unwrap().len(), MAX_POWER_DIGITS as usize);
        check_err("power", json!([10, MAX_POWER_DIGITS + 1]), "the limit is 100000 digits");
        check_err("power", json!([2, 1_000_000]), "the limit is 100000 digits");
        check_err("power", json!([0, -1]), "division by zero");
        check_err("power", json!([-8, 0.5]), "not a real number");
        check_err("power", json!([10.5, 400]), "too large to be a finite number");
        check_err("power", json!([2]), "power takes exactly 2 operands (base, exponent), got 1");
        check_err("power", json!({"base": 2}), "power takes [base, exponent]");
        check_err("power", json!([2, "3"]), "exponent must be a number");
    }

    #[test]
    fn factorial() {
        check("factorial", json!([0]), json!("1"));
        check("factorial", json!([1]), json!("1"));
        check("factorial", json!(5), json!("120"));
        check("factorial", json!({"n": 20}), json!("2432902008176640000"));
        check("factorial", json!([10.0]), json!("3628800"));
        const F100: &str = "93326215443944152681699238856266700490715968264381621468592963895217599993229915608941463976156518286253697920827223758251185210916864000000000000000000000000";
        check("factorial", json!([100]), json!(F100));
        let big = run("factorial", json!([MAX_FACTORIAL])).unwrap();
        assert_eq!(big.as_str().unwrap().len(), 35660, "10000! has 35660 digits");
        assert!(big.as_str().unwrap().ends_with(&"0".repeat(2499)), "10000! ends in 2499 zeros");
        check_err("factorial", json!([MAX_FACTORIAL + 1]), "factorial: n must be at most 10000");
        check_err("factorial", json!([1e300]), "factorial: n must be at most 10000");
        check_err("factorial", json!([-1]), "factorial: n must not be negative (got -1)");
        check_err("factorial", json!([-0.5]), "must not be negative");
        check_err("factorial", json!([2.5]), "factorial: n must be a whole number (got 2.5)");
        check_err("factorial", json!([1, 2]), "factorial takes exactly 1 operand (n), got 2");
        check_err("factorial", json!([]), "got 0");
        check_err("factorial", json!("5"), "n must be a number, not the string");
        check_err("factorial", json!({"m": 5}), "factorial takes {\"n\": ...} or [n]");
    }

    #[test]
    fn fibonacci() {
        let small: Vec<u64> = (0..20).map(|n| super::fibonacci(n).to_string().parse().unwrap()).collect();
        assert_eq!(small, [0, 1, 1, 2, 3, 5, 8, 13, 21, 34, 55, 89, 144, 233, 377, 610, 987, 1597, 2584, 4181]);
        check("fibonacci", json!([90]), json!("2880067194370816120"));
        const F1000: &str = "43466557686937456435688527675040625802564660517371780402481729089536555417949051890403879840079255169295922593080322634775209689623239873322471161642996440906533187938298969649928516003704476137795166849228875";
        check("fibonacci", json!([1000]), json!(F1000));
        let big = run("fibonacci", json!(MAX_FIBONACCI)).unwrap();
        assert_eq!(big.as_str().unwrap().len(), 20899, "fib(100000) has 20899 digits");
        assert!(
            big.as_str().unwrap().starts_with(
                "2597406934722172416615503402127591541488048538651769658472477070395253454351127368626555677283671674"
            ),
            "fib(100000)"
        );
        check_err("fibonacci", json!([MAX_FIBONACCI + 1]), "fibonacci: n must be at most 100000");
        check_err("fibonacci", json!([-5]), "fibonacci: n must not be negative");
        check_err("fibonacci", json!([true]), "n must be a number, not a boolean");
    }

    #[test]
    fn prime_check() {
        let primes: Vec<u64> = (0..50).filter(|n| is_prime(*n)).collect();
        assert_eq!(primes, [2, 3, 5, 7, 11, 13, 17, 19, 23, 29, 31, 37, 41, 43, 47]);
        check("primeCheck", json!([97]), json!(true));
        check("primeCheck", json!(1), json!(false));
        check("primeCheck", json!([561]), json!(false)); // a Carmichael number
        check("primeCheck", json!([3_215_031_751u64]), json!(false)); // strong pseudoprime to 2, 3, 5, 7
        check("primeCheck", json!([MAX_PRIME]), json!(false)); // 6361 × 69431 × 20394401
        check("primeCheck", json!([9_007_199_254_740_881u64]), json!(true)); // the largest prime below 2^53
        check("primeCheck", json!([1_000_000_007]), json!(true));
        check_err("primeCheck", json!([MAX_PRIME + 1]), "primeCheck: n must be at most 9007199254740991");
        check_err("primeCheck", json!([-7]), "primeCheck: n must not be negative");
        check_err("primeCheck", json!([7.5]), "must be a whole number");
    }

    #[test]
    fn matrix_multiply() {
        check("matrixMultiply", json!([[[1, 2], [3, 4]], [[5, 6], [7, 8]]]), json!([[19, 22], [43, 50]]));
        check("matrixMultiply", json!([[[1, 2, 3]], [[1], [2], [3]]]), json!([[14]]));
        check("matrixMultiply", json!({"a": [[0.5]], "b": [[3, 4]]}), json!([[1.5, 2]]));
        let dim = MAX_MATRIX_DIM;
        let ones = Value::Array(vec![Value::Array(vec![json!(1); dim]); dim]);
        let product = run("matrixMultiply", json!([ones, ones])).unwrap();
        assert_eq!(product[dim - 1][dim - 1], json!(dim));

        check_err(
            "matrixMultiply",
            json!([[[1, 2], [3]], [[1], [2]]]),
            "matrix A is ragged: row 2 has 1 entries, row 1 has 2",
        );
        check_err("matrixMultiply", json!([[[1, 2]], [[1, 2], [3, 4, 5]]]), "matrix B is ragged");
        check_err(
            "matrixMultiply",
            json!([[[1, 2, 3]], [[1, 2]]]),
            "cannot multiply a 1x3 matrix by a 1x2 matrix: the columns of A must equal the rows of B",
        );
        check_err("matrixMultiply", json!([[], [[1]]]), "matrix A is empty");
        check_err("matrixMultiply", json!([[[]], [[1]]]), "matrix A has an empty row");
        check_err("matrixMultiply", json!([[[1, "x"]], [[1], [2]]]), "matrix A entry [1][2] must be a number");
        check_err("matrixMultiply", json!([[1, 2], [[1]]]), "matrix A: row 1 must be an array of numbers");
        check_err("matrixMultiply", json!([5, [[1]]]), "matrix A must be an array of rows, not a number");
        check_err("matrixMultiply", json!([[[1]]]), "matrixMultiply takes exactly 2 operands (a, b), got 1");
        check_err("matrixMultiply", json!([[[1e200]], [[1e200]]]), "too large to be a finite number");
        let tall = Value::Array(vec![json!([1]); dim + 1]);
        check_err("matrixMultiply", json!([tall, [[1]]]), "matrix A has 201 rows; at most 200 rows and 200 columns");
        let wide = json!([vec![1; dim + 1]]);
        check_err("matrixMultiply", json!([[[1]], wide]), "matrix B has 201 columns; at most 200 rows and 200 columns");
    }

    #[test]
    fn sleep_is_a_job_only_operation() {
        check("sleep", json!([250]), json!(250));
        check_err("sleep", json!([MAX_SLEEP_MS + 1]), "sleep: ms must be at most 10000");
        let err = parse("sleep", &raw_of(&json!([10])), Place::Direct).unwrap_err().to_string();
        assert!(err.starts_with("sleep runs only as a job"), "{err}");
    }

    #[test]
    fn unknown_operations_list_the_supported_ones() {
        let err = parse("modulo", &raw_of(&json!([1, 2])), Place::Direct).unwrap_err();
        let OpError::Unknown { supported, .. } = &err else { panic!("{err:?}") };
        assert_eq!(supported.len(), 11);
        assert_eq!(
            err.to_string(),
            "unknown operation \"modulo\"; supported operations: add, subtract, multiply, divide, power, factorial, \
             fibonacci, primeCheck, sumOfSquares, average, matrixMultiply"
        );
        let err = parse("Add", &raw_of(&json!([1])), Place::Job).unwrap_err().to_string();
        assert!(err.ends_with("matrixMultiply, sleep"), "{err}");
        let long = "x".repeat(1000);
        assert!(parse(&long, &raw_of(&json!([])), Place::Job).unwrap_err().to_string().len() < 300);
    }

    #[test]
    fn cheap_tasks_are_the_small_ones() {
        let cheap = |op: &str, operands: Value| parse(op, &raw_of(&operands), Place::Job).unwrap().1.is_cheap();
        assert!(cheap("add", json!([1, 2])));
        assert!(!cheap("add", Value::Array(vec![json!(1); 5000])));
        assert!(cheap("factorial", json!([20])));
        assert!(!cheap("factorial", json!([5000])));
        assert!(!cheap("fibonacci", json!([50000])));
        assert!(!cheap("power", json!([3, 100000])));
        assert!(!cheap("sleep", json!([1])));
        assert!(cheap("multiply", Value::Array(vec![json!(i64::MAX); 50])));
        assert!(!cheap("multiply", Value::Array(vec![json!(i64::MAX); 60])), "an exact product of 1100 digits");
        assert!(cheap("multiply", Value::Array(vec![json!(1.5); 1000])));
        let big = serde_json::from_str::<Box<RawValue>>("[12345678901234567890123, 1]").unwrap();
        assert!(!parse("add", &big, Place::Job).unwrap().1.is_cheap(), "big integers are parsed off the runtime");
    }
}

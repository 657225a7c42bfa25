//! The operations: their input shapes, their bounds, and the arithmetic.
//!
//! [`parse`] checks `{operation, operands}` once and turns it into a [`Task`] (or a 400
//! message saying what is wrong, with the limit when a bound is exceeded). [`Task::evaluate`]
//! does the work; it is CPU-bound and pure, so callers run it off the async runtime unless
//! [`Task::is_cheap`]. Every bound keeps one evaluation well under a second in a release
//! build (see the benchmark).
//!
//! Results: factorial, fibonacci and power with integer base and non-negative integer
//! exponent are exact, as decimal strings. Everything else is a JSON number (exact integer
//! arithmetic while all operands are integers and the result fits 64 bits, else a double),
//! `primeCheck` a boolean, `matrixMultiply` an array of rows. JSON has no NaN or infinity,
//! so a result that is not a finite number is an error.

use std::fmt;

use num_bigint::{BigInt, BigUint};
use serde_json::{Value, json};

/// add, subtract, multiply, divide, sumOfSquares, average: at most this many operands.
pub const MAX_OPERANDS: usize = 10_000;
/// factorial: n at most this (10000! has 35660 digits).
pub const MAX_FACTORIAL: u64 = 10_000;
/// fibonacci: n at most this (fib(100000) has 20899 digits).
pub const MAX_FIBONACCI: u64 = 100_000;
/// power with an exact (integer) result: at most this many digits.
pub const MAX_POWER_DIGITS: u64 = 100_000;
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

/// A number as JSON gave it: an integer when it was one, else a finite double.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Num {
    Int(i64),
    Float(f64),
}

impl Num {
    fn f64(self) -> f64 {
        match self {
            Self::Int(i) => i as f64,
            Self::Float(f) => f,
        }
    }

    fn is_zero(self) -> bool {
        self.f64() == 0.0
    }
}

/// A dense matrix, row by row.
#[derive(Clone, Debug, PartialEq)]
pub struct Matrix {
    rows: usize,
    cols: usize,
    data: Vec<f64>,
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

/// Checks `operation` and `operands` for `place`.
pub fn parse(operation: &str, operands: &Value, place: Place) -> Result<(Operation, Task), OpError> {
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
        Operation::Multiply => Task::Multiply(list(op, operands, 1)?),
        Operation::Divide => {
            let values = list(op, operands, 2)?;
            if let Some(i) = values.iter().skip(1).position(|v| v.is_zero()) {
                return invalid(format!("division by zero (operand {} is 0)", i + 2));
            }
            Task::Divide(values)
        }
        Operation::SumOfSquares => Task::SumOfSquares(list(op, operands, 1)?),
        Operation::Average => Task::Average(list(op, operands, 1)?),
        Operation::Power => {
            let (base, exponent) = pair(op, operands, ["base", "exponent"])?;
            let (base, exponent) = (number(base, "base")?, number(exponent, "exponent")?);
            check_power(base, exponent)?;
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

fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

fn number(v: &Value, what: &str) -> Result<Num, OpError> {
    match v {
        Value::Number(n) => match (n.as_i64(), n.as_f64()) {
            (Some(i), _) => Ok(Num::Int(i)),
            (None, Some(f)) if f.is_finite() => Ok(Num::Float(f)),
            _ => invalid(format!("{what} is not a finite number")),
        },
        Value::String(s) => invalid(format!("{what} must be a number, not the string {:?}", shorten(s))),
        other => invalid(format!("{what} must be a number, not {}", kind(other))),
    }
}

/// The operand of a unary operation: `5`, `[5]` or `{"n": 5}`.
fn unary<'a>(op: Operation, operands: &'a Value, field: &str) -> Result<&'a Value, OpError> {
    match operands {
        Value::Array(items) if items.len() == 1 => Ok(&items[0]),
        Value::Array(items) => invalid(format!("{op} takes exactly 1 operand ({field}), got {}", items.len())),
        Value::Object(map) => match map.get(field) {
            Some(v) => Ok(v),
            None => invalid(format!("{op} takes {{\"{field}\": ...}} or [{field}]")),
        },
        other => Ok(other),
    }
}

/// A whole number from 0 to `max`.
fn whole(op: Operation, v: &Value, what: &str, max: u64) -> Result<u64, OpError> {
    let n = match number(v, what)? {
        Num::Int(i) if i < 0 => return invalid(format!("{op}: {what} must not be negative (got {i})")),
        Num::Int(i) => i as u64,
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
fn list(op: Operation, operands: &Value, min: usize) -> Result<Vec<Num>, OpError> {
    let Value::Array(items) = operands else {
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
fn pair<'a>(op: Operation, operands: &'a Value, names: [&str; 2]) -> Result<(&'a Value, &'a Value), OpError> {
    let [first, second] = names;
    match operands {
        Value::Array(items) if items.len() == 2 => Ok((&items[0], &items[1])),
        Value::Object(map) => match (map.get(first), map.get(second)) {
            (Some(x), Some(y)) => Ok((x, y)),
            _ => invalid(format!("{op} takes [{first}, {second}] or {{\"{first}\": ..., \"{second}\": ...}}")),
        },
        Value::Array(items) => {
            invalid(format!("{op} takes exactly 2 operands ({first}, {second}), got {}", items.len()))
        }
        other => invalid(format!("{op} takes [{first}, {second}] as operands, not {}", kind(other))),
    }
}

fn matrix(v: &Value, name: &str) -> Result<Matrix, OpError> {
    let Value::Array(rows) = v else {
        return invalid(format!("matrix {name} must be an array of rows, not {}", kind(v)));
    };
    let limit = MAX_MATRIX_DIM;
    if rows.is_empty() {
        return invalid(format!("matrix {name} is empty"));
    }
    if rows.len() > limit {
        return invalid(format!("matrix {name} has {} rows; at most {limit} rows and {limit} columns", rows.len()));
    }
    let mut data = Vec::new();
    let mut cols = 0;
    for (i, row) in rows.iter().enumerate() {
        let Value::Array(row) = row else {
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
            data.reserve(rows.len() * cols);
        } else if row.len() != cols {
            return invalid(format!(
                "matrix {name} is ragged: row {} has {} entries, row 1 has {cols}",
                i + 1,
                row.len()
            ));
        }
        for (j, x) in row.iter().enumerate() {
            data.push(number(x, &format!("matrix {name} entry [{}][{}]", i + 1, j + 1))?.f64());
        }
    }
    Ok(Matrix { rows: rows.len(), cols, data })
}

/// Both integers and a non-negative exponent: the exact result must fit the digit limit.
fn check_power(base: Num, exponent: Num) -> Result<(), OpError> {
    if let (Num::Int(b), Num::Int(e)) = (base, exponent)
        && e >= 0
        && b.unsigned_abs() >= 2
    {
        let digits = e as f64 * (b.unsigned_abs() as f64).log10();
        if digits > MAX_POWER_DIGITS as f64 {
            return invalid(format!(
                "power: the exact result would have about {digits:.0} digits; the limit is {MAX_POWER_DIGITS} digits"
            ));
        }
    }
    Ok(())
}

impl Task {
    /// True when evaluating takes microseconds, so it may run on the async runtime.
    pub fn is_cheap(&self) -> bool {
        match self {
            Self::Add(v) | Self::Subtract(v) | Self::Multiply(v) | Self::Divide(v) => v.len() <= 1_000,
            Self::SumOfSquares(v) | Self::Average(v) => v.len() <= 1_000,
            Self::Power(Num::Int(b), Num::Int(e)) if *e >= 0 => {
                (*e as f64) * (b.unsigned_abs() as f64).log2() <= 4096.0
            }
            Self::Power(..) => true,
            Self::Factorial(n) => *n <= 100,
            Self::Fibonacci(n) => *n <= 1_000,
            Self::PrimeCheck(_) => true,
            Self::MatrixMultiply(a, b) => a.rows * a.cols * b.cols <= 4_096,
            Self::Sleep(_) => false,
        }
    }

    /// Does the work. CPU-bound: call off the async runtime unless [`Task::is_cheap`].
    /// `Sleep` is not evaluated here (it is a timer, see the executor); it answers its `ms`.
    pub fn evaluate(&self) -> Result<Value, OpError> {
        match self {
            Self::Add(v) => arith(v, 0, i128::checked_add, |a, b| a + b),
            Self::Subtract(v) => {
                let (first, rest) = v.split_first().expect("parse ensures two operands");
                match (first, ints(rest).and_then(|r| r.into_iter().try_fold(0i128, i128::checked_add))) {
                    (Num::Int(a), Some(sum)) => int_value(i128::from(*a) - sum),
                    _ => float_value(rest.iter().fold(first.f64(), |acc, x| acc - x.f64())),
                }
            }
            Self::Multiply(v) => arith(v, 1, i128::checked_mul, |a, b| a * b),
            Self::Divide(v) => {
                let (first, rest) = v.split_first().expect("parse ensures two operands");
                float_value(rest.iter().fold(first.f64(), |acc, x| acc / x.f64()))
            }
            Self::SumOfSquares(v) => {
                let exact = ints(v).and_then(|is| is.into_iter().try_fold(0i128, |acc, i| acc.checked_add(i * i)));
                match exact {
                    Some(sum) => int_value(sum),
                    None => float_value(v.iter().map(|x| x.f64() * x.f64()).sum()),
                }
            }
            Self::Average(v) => {
                let sum = match ints(v).and_then(|is| is.into_iter().try_fold(0i128, i128::checked_add)) {
                    Some(sum) => sum as f64,
                    None => v.iter().map(|x| x.f64()).sum(),
                };
                float_value(sum / v.len() as f64)
            }
            Self::Power(base, exponent) => power(*base, *exponent),
            Self::Factorial(n) => Ok(Value::String(factorial(*n).to_string())),
            Self::Fibonacci(n) => Ok(Value::String(fibonacci(*n).to_string())),
            Self::PrimeCheck(n) => Ok(Value::Bool(is_prime(*n))),
            Self::MatrixMultiply(a, b) => matrix_multiply(a, b),
            Self::Sleep(ms) => Ok(json!(ms)),
        }
    }
}

fn ints(values: &[Num]) -> Option<Vec<i128>> {
    values
        .iter()
        .map(|v| match v {
            Num::Int(i) => Some(i128::from(*i)),
            Num::Float(_) => None,
        })
        .collect()
}

/// Exact while every operand is an integer and nothing overflows, else in doubles.
fn arith(
    values: &[Num],
    unit: i128,
    exact: fn(i128, i128) -> Option<i128>,
    float: fn(f64, f64) -> f64,
) -> Result<Value, OpError> {
    match ints(values).and_then(|is| is.into_iter().try_fold(unit, exact)) {
        Some(result) => int_value(result),
        None => float_value(values.iter().map(|v| v.f64()).fold(unit as f64, float)),
    }
}

fn int_value(i: i128) -> Result<Value, OpError> {
    match i64::try_from(i) {
        Ok(i) => Ok(json!(i)),
        Err(_) => float_value(i as f64),
    }
}

/// A double as JSON: integral values below 2^53 as integers, like JavaScript writes them.
fn float_value(x: f64) -> Result<Value, OpError> {
    if x.is_nan() {
        return invalid("the result is not a real number");
    }
    if x.is_infinite() {
        return invalid("the result is too large to be a finite number");
    }
    if x.fract() == 0.0 && x.abs() < SAFE_INTEGER {
        return Ok(json!(x as i64));
    }
    Ok(json!(x))
}

fn power(base: Num, exponent: Num) -> Result<Value, OpError> {
    match (base, exponent) {
        (Num::Int(b), Num::Int(e)) if e >= 0 => {
            let exact = match b {
                0 if e == 0 => BigInt::from(1),
                0 => BigInt::from(0),
                1 => BigInt::from(1),
                -1 => BigInt::from(if e % 2 == 0 { 1 } else { -1 }),
                // parse bounds the digits, so the exponent of a base of 2 or more fits u32
                _ => BigInt::from(b).pow(u32::try_from(e).expect("bounded by the digit limit")),
            };
            Ok(Value::String(exact.to_string()))
        }
        (b, e) if b.is_zero() && e.f64() < 0.0 => invalid("division by zero (0 to a negative power)"),
        (b, e) => float_value(b.f64().powf(e.f64())),
    }
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

fn matrix_multiply(a: &Matrix, b: &Matrix) -> Result<Value, OpError> {
    let (n, m, p) = (a.rows, a.cols, b.cols);
    let mut out = vec![0.0f64; n * p];
    for i in 0..n {
        let row = &mut out[i * p..(i + 1) * p];
        for k in 0..m {
            let x = a.data[i * m + k];
            for (cell, y) in row.iter_mut().zip(&b.data[k * p..(k + 1) * p]) {
                *cell += x * y;
            }
        }
    }
    let rows = out
        .chunks(p)
        .map(|row| row.iter().map(|x| float_value(*x)).collect::<Result<Vec<_>, _>>().map(Value::Array))
        .collect::<Result<Vec<_>, _>>()?;
    Ok(Value::Array(rows))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The result of `operation` on `operands` as a job, or the error message.
    fn run(operation: &str, operands: Value) -> Result<Value, String> {
        let (_, task) = parse(operation, &operands, Place::Job).map_err(|e| e.to_string())?;
        task.evaluate().map_err(|e| e.to_string())
    }

    fn check(operation: &str, operands: Value, expected: Value) {
        assert_eq!(run(operation, operands.clone()), Ok(expected), "{operation} {operands}");
    }

    fn check_err(operation: &str, operands: Value, expected: &str) {
        match run(operation, operands.clone()) {
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
        check("add", json!([i64::MAX, 1]), json!(9_223_372_036_854_775_808.0));
        check("subtract", json!([10, 3, 2]), json!(5));
        check("subtract", json!([1, 2.5]), json!(-1.5));
        check("subtract", json!([i64::MIN, 1]), json!(-9_223_372_036_854_775_809.0));
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
        let err = parse("sleep", &json!([10]), Place::Direct).unwrap_err().to_string();
        assert!(err.starts_with("sleep runs only as a job"), "{err}");
    }

    #[test]
    fn unknown_operations_list_the_supported_ones() {
        let err = parse("modulo", &json!([1, 2]), Place::Direct).unwrap_err();
        let OpError::Unknown { supported, .. } = &err else { panic!("{err:?}") };
        assert_eq!(supported.len(), 11);
        assert_eq!(
            err.to_string(),
            "unknown operation \"modulo\"; supported operations: add, subtract, multiply, divide, power, factorial, \
             fibonacci, primeCheck, sumOfSquares, average, matrixMultiply"
        );
        let err = parse("Add", &json!([1]), Place::Job).unwrap_err().to_string();
        assert!(err.ends_with("matrixMultiply, sleep"), "{err}");
        let long = "x".repeat(1000);
        assert!(parse(&long, &json!([]), Place::Job).unwrap_err().to_string().len() < 300);
    }

    #[test]
    fn cheap_tasks_are_the_small_ones() {
        let cheap = |op: &str, operands: Value| parse(op, &operands, Place::Job).unwrap().1.is_cheap();
        assert!(cheap("add", json!([1, 2])));
        assert!(!cheap("add", Value::Array(vec![json!(1); 5000])));
        assert!(cheap("factorial", json!([20])));
        assert!(!cheap("factorial", json!([5000])));
        assert!(!cheap("fibonacci", json!([50000])));
        assert!(!cheap("power", json!([3, 100000])));
        assert!(!cheap("sleep", json!([1])));
    }
}

//! The operations: their input shapes, their bounds, and the arithmetic.
//!
//! [`parse`] checks `{operation, operands}` once and turns it into a [`Task`] (or a 400
//! message saying what is wrong, with the limit when a bound is exceeded). [`Task::evaluate`]
//! does the work; it is CPU-bound and pure, so callers run it off the async runtime unless
//! [`Task::is_cheap`]. Every bound keeps one evaluation well under a second in a release
//! build (see the benchmark).
//!
//! Numbers are read from the request's own text ([`RawValue`](serde_json::value::RawValue)), never through a lossy
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
//!
//! This file holds the operations, their bounds and the checked [`Task`]; `parse` reads a
//! request into one, `evaluate` computes it, `num` holds the operand type [`Num`] and the
//! writers of results as JSON text.

mod evaluate;
mod num;
mod parse;

use std::fmt;

pub use evaluate::{factorial, fibonacci, is_prime};
pub use num::Num;
pub use parse::{number, parse};

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

/// The entries of a matrix, row by row: integers while every entry is one.
#[derive(Clone, Debug, PartialEq)]
pub(crate) enum Entries {
    Int(Vec<i64>),
    Float(Vec<f64>),
}

/// A dense matrix.
#[derive(Clone, Debug, PartialEq)]
pub struct Matrix {
    pub(crate) rows: usize,
    pub(crate) cols: usize,
    pub(crate) data: Entries,
}

impl Matrix {
    pub(crate) fn floats(&self) -> Vec<f64> {
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

#[cfg(test)]
mod tests;

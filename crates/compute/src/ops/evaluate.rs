//! Evaluating a checked `Task`: exact integer arithmetic while every operand is an integer
//! (128 bits, then big integers), doubles otherwise; factorial, fibonacci, primality and
//! matrix products. CPU-bound and pure.

use num_bigint::{BigInt, BigUint};
use serde_json::value::RawValue;

use super::num::{decimal_string, float_value, raw, write_float, write_int};
use super::parse::Operand;
use super::{Entries, MAX_POWER_DIGITS, Matrix, Num, OpError, Task, invalid};

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
pub(super) fn exact_or_float(
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
pub(super) fn doubles(values: &[Num]) -> Result<Vec<f64>, OpError> {
    values.iter().enumerate().map(|(i, v)| double(v, Operand(i + 1))).collect()
}

/// An integer beyond the doubles' range cannot take part in a result that is a double.
pub(super) fn double(v: &Num, what: impl std::fmt::Display) -> Result<f64, OpError> {
    let x = v.f64();
    if x.is_finite() {
        return Ok(x);
    }
    invalid(format!("{what} is beyond the range of doubles (about ±1.8e308), and this result is computed in doubles"))
}

/// The operands as 128-bit integers, if every one is a 64-bit integer.
pub(super) fn small_ints(values: &[Num]) -> Option<Vec<i128>> {
    values
        .iter()
        .map(|v| match v {
            Num::Int(i) => Some(i128::from(*i)),
            _ => None,
        })
        .collect()
}

/// The product of big integers, split in halves so the multiplications stay balanced.
pub(super) fn product(values: &[BigInt]) -> BigInt {
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
pub(super) fn divide(values: &[Num]) -> Result<Box<RawValue>, OpError> {
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
pub(super) fn average(values: &[Num]) -> Result<Box<RawValue>, OpError> {
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

pub(super) fn power(base: &Num, exponent: &Num) -> Result<Box<RawValue>, OpError> {
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

pub(super) fn matrix_multiply(a: &Matrix, b: &Matrix) -> Result<Box<RawValue>, OpError> {
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

/// The n×p product of an n×m and an m×p matrix, row by row. The caller rules out overflow.
pub(super) fn multiply<T>(n: usize, m: usize, p: usize, a: &[T], b: &[T]) -> Vec<T>
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
pub(super) fn write_rows<T: Copy>(
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

//! Parsing a request: `parse` checks `{operation, operands}` for where it runs and turns it
//! into a `Task`, with every bound enforced here (so a job is refused at submit).

use std::collections::HashMap;
use std::fmt;

use serde_json::value::RawValue;

use super::{Entries, Matrix, Num, OpError, Operation, Place, Task, invalid};
use super::{
    MAX_FACTORIAL, MAX_FIBONACCI, MAX_INTEGER_DIGITS, MAX_MATRIX_DIM, MAX_OPERANDS, MAX_POWER_DIGITS, MAX_PRIME,
    MAX_SLEEP_MS,
};

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
pub(super) fn shorten(s: &str) -> String {
    match s.char_indices().nth(64) {
        Some((i, _)) => format!("{}...", &s[..i]),
        None => s.to_owned(),
    }
}

/// What kind of JSON value `v` is (its text is valid JSON, so the first byte says it).
pub(super) fn kind(v: &RawValue) -> &'static str {
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
pub(super) fn array(v: &RawValue) -> Option<Vec<&RawValue>> {
    v.get().starts_with('[').then(|| serde_json::from_str(v.get()).ok()).flatten()
}

/// The fields of an object (the last of duplicates wins, as with any JSON reader here).
pub(super) fn object(v: &RawValue) -> Option<HashMap<String, &RawValue>> {
    v.get().starts_with('{').then(|| serde_json::from_str(v.get()).ok()).flatten()
}

/// What an error names, written only when there is one: `operand 3` (counted from 1).
#[derive(Clone, Copy)]
pub(super) struct Operand(pub usize);

impl fmt::Display for Operand {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "operand {}", self.0)
    }
}

/// A matrix's entry as an error names it: `matrix a entry [1][2]` (counted from 1).
#[derive(Clone, Copy)]
struct Entry<'a> {
    matrix: &'a str,
    row: usize,
    col: usize,
}

impl fmt::Display for Entry<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "matrix {} entry [{}][{}]", self.matrix, self.row, self.col)
    }
}

/// A number, from its JSON text; `what` names it in an error.
pub fn number(v: &RawValue, what: impl fmt::Display) -> Result<Num, OpError> {
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
pub(super) fn read_number(text: &str, what: impl fmt::Display) -> Result<Num, OpError> {
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
pub(super) fn unary<'a>(op: Operation, operands: &'a RawValue, field: &str) -> Result<&'a RawValue, OpError> {
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
pub(super) fn whole(op: Operation, v: &RawValue, what: &str, max: u64) -> Result<u64, OpError> {
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
pub(super) fn list(op: Operation, operands: &RawValue, min: usize) -> Result<Vec<Num>, OpError> {
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
    items.iter().enumerate().map(|(i, v)| number(v, Operand(i + 1))).collect()
}

/// Two operands: `[x, y]` or `{"<names.0>": x, "<names.1>": y}`.
pub(super) fn pair<'a>(
    op: Operation,
    operands: &'a RawValue,
    names: [&str; 2],
) -> Result<(&'a RawValue, &'a RawValue), OpError> {
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

pub(super) fn matrix(v: &RawValue, name: &str) -> Result<Matrix, OpError> {
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
            let what = Entry { matrix: name, row: i + 1, col: j + 1 };
            match (number(x, what)?, &mut data) {
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
pub(super) fn check_power(base: &Num, exponent: &Num) -> Result<(), OpError> {
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
pub(super) fn check_product_digits(op: Operation, values: &[Num]) -> Result<(), OpError> {
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

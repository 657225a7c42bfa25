//! `ops::parse` and `Task::evaluate` as tables of operation, operands and the JSON text
//! answered (or the error): exact integers, doubles as sent, matrices, bounds.

use serde_json::value::RawValue;
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
    check_text("multiply", "[18446744073709551616, 18446744073709551616]", "340282366920938463463374607431768211456");
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
        &format!("operand 2 has {} digits; an integer has at most {MAX_INTEGER_DIGITS} digits", MAX_INTEGER_DIGITS + 1),
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

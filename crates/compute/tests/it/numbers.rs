//! Numbers pass through exactly: operands come back byte for byte as the client wrote
//! them, in direct answers and in jobs; integers beyond 2^53 are computed exactly; doubles
//! come back as the same doubles.

use std::time::Duration;

use serde_json::Value;

use crate::{Instance, database};

/// Operands as a client may write them: big integers, 17 significant digits, -0.0, the
/// smallest double, odd spacing.
const OPERANDS: &str = "[12345678901234567890123,  0.9636861036351481, -0.0,5e-324, 1.0000000000000002]";

/// `"name":` followed by exactly `value` somewhere in `text`.
fn has_field(text: &str, name: &str, value: &str) -> bool {
    text.contains(&format!("\"{name}\":{value}"))
}

#[tokio::test]
async fn direct_answers_keep_numbers_exact() {
    let (_dir, db) = database().await;
    let a = Instance::start(&db, "compute-a", &[("COMPUTE_WORKERS", "0")]).await;
    let cases = [
        // (operation, operands, result)
        ("add", OPERANDS, "1.2345678901234568e+22"),
        ("add", "[12345678901234567890123, 1]", "12345678901234567890124"),
        ("subtract", "[-9223372036854775808, 1]", "-9223372036854775809"),
        ("multiply", "[9007199254740993, 9007199254740993]", "81129638414606699710187514626049"),
        ("sumOfSquares", "[9007199254740993]", "81129638414606699710187514626049"),
        ("average", "[12345678901234567890123, 12345678901234567890125]", "12345678901234567890124"),
        ("divide", "[37037036703703703670369, 3]", "12345678901234567890123"),
        ("power", "[12345678901234567890123, 2]", "\"152415787532388367504942236884722755800955129\""),
        ("add", "[0.9636861036351481]", "0.9636861036351481"),
        ("add", "[0.30000000000000004]", "0.30000000000000004"),
        ("add", "[-0.0]", "-0.0"),
        ("add", "[5e-324]", "5e-324"),
        ("multiply", "[1.0000000000000002, 1]", "1.0000000000000002"),
        ("matrixMultiply", "[[[3037000500]], [[3037000500]]]", "[[9223372037000250000]]"),
    ];
    for (operation, operands, result) in cases {
        let body = format!(r#"{{"operation":"{operation}","operands":{operands}}}"#);
        let (status, answer) = a.post_text("/api/compute/direct", &body).await;
        assert_eq!(status, 200, "{body}: {answer}");
        assert!(has_field(&answer, "operands", operands), "{body}: the operands as sent in {answer}");
        assert!(has_field(&answer, "result", result), "{body}: result {result} in {answer}");
    }
    let (status, answer) = a
        .post_text("/api/compute/direct", &format!(r#"{{"operation":"add","operands":[1, {}]}}"#, "9".repeat(2_001)))
        .await;
    assert_eq!(status, 400, "{answer}");
    assert!(answer.contains("operand 2 has 2001 digits; an integer has at most 2000 digits"), "{answer}");
    a.stop().await;
}

#[tokio::test]
async fn jobs_keep_operands_and_results_exact() {
    let (_dir, db) = database().await;
    let a = Instance::start(&db, "compute-a", &[("COMPUTE_WORKERS", "1")]).await;
    let cases = [
        ("add", OPERANDS, "1.2345678901234568e+22"),
        ("add", "[ 12345678901234567890123 , 1 ]", "12345678901234567890124"),
        ("multiply", "[9007199254740993, 9007199254740993]", "81129638414606699710187514626049"),
        ("add", "[0.9636861036351481]", "0.9636861036351481"),
        ("add", "[-0.0]", "-0.0"),
        ("add", "[5e-324]", "5e-324"),
    ];
    for (operation, operands, result) in cases {
        let body = format!(r#"{{"operation":"{operation}","operands":{operands}}}"#);
        let (status, accepted) = a.post_text("/api/compute/job", &body).await;
        assert_eq!(status, 202, "{body}: {accepted}");
        let id = serde_json::from_str::<Value>(&accepted).unwrap()["jobId"].as_str().unwrap().to_owned();
        a.wait_for(&id, "completed", Duration::from_secs(10)).await;
        let (status, job) = a.get_text(&format!("/api/compute/job/{id}")).await;
        assert_eq!(status, 200, "{job}");
        assert!(has_field(&job, "operands", operands), "{body}: the operands as sent in {job}");
        assert!(has_field(&job, "result", result), "{body}: result {result} in {job}");
    }
    a.stop().await;
}

//! `POST /api/compute/direct`: every operation, every bound, every error, and the limits
//! that keep heavy work off the async runtime.

use std::time::Duration;

use serde_json::{Value, json};

use crate::{Instance, app, call, database, ones, send, token};

const F100: &str = "93326215443944152681699238856266700490715968264381621468592963895217599993229915608941463976156518286253697920827223758251185210916864000000000000000000000000";
const FIB1000: &str = "43466557686937456435688527675040625802564660517371780402481729089536555417949051890403879840079255169295922593080322634775209689623239873322471161642996440906533187938298969649928516003704476137795166849228875";

#[tokio::test]
async fn every_operation_answers_with_its_result() {
    let (app, _dir) = app(&[]).await;
    let token = token();
    let cases = [
        ("add", json!([1, 2, 3.5]), json!(6.5)),
        ("subtract", json!([10, 4, 1]), json!(5)),
        ("multiply", json!([2, 3, 7]), json!(42)),
        ("divide", json!([1, 8]), json!(0.125)),
        ("power", json!([2, 64]), json!("18446744073709551616")),
        ("power", json!([9, 0.5]), json!(3)),
        ("factorial", json!([100]), json!(F100)),
        ("factorial", json!(0), json!("1")),
        ("fibonacci", json!([1000]), json!(FIB1000)),
        ("fibonacci", json!({"n": 10}), json!("55")),
        ("primeCheck", json!([7919]), json!(true)),
        ("primeCheck", json!([7917]), json!(false)),
        ("sumOfSquares", json!([3, 4]), json!(25)),
        ("average", json!([2, 4, 9]), json!(5)),
        ("matrixMultiply", json!([[[1, 2], [3, 4]], [[0, 1], [1, 0]]]), json!([[2, 1], [4, 3]])),
    ];
    for (operation, operands, expected) in cases {
        let body = json!({"operation": operation, "operands": operands});
        let (status, answer) = call(&app, "POST", "/api/compute/direct", Some(body), Some(&token)).await;
        assert_eq!(status, 200, "{operation}: {answer}");
        assert_eq!(answer["result"], expected, "{operation} {operands}");
        assert_eq!(answer["operation"], operation);
        assert_eq!(answer["operands"], operands, "operands are echoed as given");
        assert_eq!(answer["service"], "compute-1");
        assert!(answer["computedAt"].as_str().unwrap().ends_with('Z'), "{answer}");
    }
}

#[tokio::test]
async fn bad_input_is_400_with_the_reason() {
    let (app, _dir) = app(&[]).await;
    let token = token();
    let direct = |body: Value| {
        let (app, token) = (app.clone(), token.clone());
        async move { call(&app, "POST", "/api/compute/direct", Some(body), Some(&token)).await }
    };

    // Unknown operation: the message and `supported` list the eleven.
    let (status, body) = direct(json!({"operation": "modulo", "operands": [5, 3]})).await;
    assert_eq!(status, 400);
    let supported = [
        "add",
        "subtract",
        "multiply",
        "divide",
        "power",
        "factorial",
        "fibonacci",
        "primeCheck",
        "sumOfSquares",
        "average",
        "matrixMultiply",
    ];
    assert_eq!(body["supported"], json!(supported));
    assert!(body["error"].as_str().unwrap().contains(&supported.join(", ")), "{body}");

    let huge_matrix = json!([ones(201, 1), ones(1, 1)]);
    let too_many = Value::Array(vec![json!(1); 10_001]);
    let cases: Vec<(Value, &str)> = vec![
        (json!({"operands": [1]}), "operation is required"),
        (json!({"operation": "add"}), "operands is required"),
        (json!({"operation": 5, "operands": [1]}), "operation must be a string"),
        (json!([1, 2]), "request body must be a JSON object"),
        (json!({"operation": "add", "operands": [1, "NaN"]}), "operand 2 must be a number, not the string \"NaN\""),
        (json!({"operation": "add", "operands": ["Infinity", 1]}), "not the string \"Infinity\""),
        (json!({"operation": "add", "operands": [1, null]}), "operand 2 must be a number, not null"),
        (json!({"operation": "divide", "operands": [1, 0]}), "division by zero"),
        (json!({"operation": "multiply", "operands": [1e300, 1e300]}), "too large to be a finite number"),
        (json!({"operation": "factorial", "operands": [-3]}), "factorial: n must not be negative (got -3)"),
        (json!({"operation": "fibonacci", "operands": [-1]}), "fibonacci: n must not be negative"),
        (json!({"operation": "factorial", "operands": [10_001]}), "factorial: n must be at most 10000"),
        (json!({"operation": "fibonacci", "operands": [100_001]}), "fibonacci: n must be at most 100000"),
        (json!({"operation": "primeCheck", "operands": [9_007_199_254_740_992u64]}), "at most 9007199254740991"),
        (json!({"operation": "power", "operands": [7, 1_000_000]}), "the limit is 100000 digits"),
        (json!({"operation": "add", "operands": too_many}), "add takes at most 10000 operands (got 10001)"),
        (json!({"operation": "matrixMultiply", "operands": huge_matrix}), "at most 200 rows and 200 columns"),
        (json!({"operation": "matrixMultiply", "operands": [[[1, 2], [3]], [[1], [1]]]}), "matrix A is ragged"),
        (
            json!({"operation": "matrixMultiply", "operands": [[[1, 2]], [[1, 2]]]}),
            "cannot multiply a 1x2 matrix by a 1x2",
        ),
        (json!({"operation": "sleep", "operands": [10]}), "sleep runs only as a job"),
    ];
    for (body, expected) in cases {
        let (status, answer) = direct(body.clone()).await;
        assert_eq!(status, 400, "{body}: {answer}");
        let message = answer["error"].as_str().unwrap_or_default();
        assert!(message.contains(expected), "{body}: {message:?} lacks {expected:?}");
    }

    // Bodies that are not JSON at all, or hold numbers JSON cannot carry.
    for raw in [
        "{nope",
        r#"{"operation":"add","operands":[NaN, 1]}"#,
        r#"{"operation":"add","operands":[Infinity]}"#,
        r#"{"operation":"add","operands":[1e999, 1]}"#,
        "",
    ] {
        let req = axum::http::Request::post("/api/compute/direct")
            .header("authorization", format!("Bearer {token}"))
            .body(axum::body::Body::from(raw))
            .unwrap();
        let res = tower::ServiceExt::oneshot(app.clone(), req).await.unwrap();
        assert_eq!(res.status(), 400, "{raw}");
        let body = http_body_util::BodyExt::collect(res.into_body()).await.unwrap().to_bytes();
        let body: Value = serde_json::from_slice(&body).unwrap();
        assert!(body["error"].is_string(), "{raw}: {body}");
    }
}

#[tokio::test]
async fn ten_megabyte_body_is_413() {
    let (app, _dir) = app(&[]).await;
    let big = format!(r#"{{"operation":"add","operands":[{}1]}}"#, "1,".repeat(5 << 20));
    let req = axum::http::Request::post("/api/compute/direct")
        .header("authorization", format!("Bearer {}", token()))
        .body(axum::body::Body::from(big))
        .unwrap();
    let res = tower::ServiceExt::oneshot(app.clone(), req).await.unwrap();
    assert_eq!(res.status(), 413);
    let body = http_body_util::BodyExt::collect(res.into_body()).await.unwrap().to_bytes();
    let body: Value = serde_json::from_slice(&body).unwrap();
    assert!(body["error"].as_str().unwrap().contains("1048576 bytes"), "{body}");
}

#[tokio::test]
async fn over_the_time_limit_is_503() {
    let (app, _dir) = app(&[("COMPUTE_TIME_LIMIT_MS", "1")]).await;
    let body = json!({"operation": "matrixMultiply", "operands": [ones(200, 200), ones(200, 200)]});
    let (status, answer) = call(&app, "POST", "/api/compute/direct", Some(body), Some(&token())).await;
    assert_eq!(status, 503, "{answer}");
    assert_eq!(answer["error"], "the computation exceeded the time limit of 1 ms");
    // Cheap operations are unaffected.
    let body = json!({"operation": "add", "operands": [1, 1]});
    let (status, answer) = call(&app, "POST", "/api/compute/direct", Some(body), Some(&token())).await;
    assert_eq!((status, &answer["result"]), (200, &json!(2)));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn heavy_requests_do_not_stall_health_checks() {
    let (_dir, db) = database().await;
    let instance =
        Instance::start(&db, "compute-1", &[("COMPUTE_THREADS", "1"), ("COMPUTE_TIME_LIMIT_MS", "60000")]).await;
    let body = json!({"operation": "matrixMultiply", "operands": [ones(200, 200), ones(200, 200)]});
    // More heavy requests than the runtime has threads.
    let heavy = futures_util::future::join_all((0..4).map(|_| send(instance.post("/api/compute/direct", &body))));
    let mut heavy = tokio::spawn(heavy);
    crate::eventually(Duration::from_secs(30), "a heavy computation running", || async {
        let stats = instance.stats().await;
        (stats["instance"]["computing"] == 1).then_some(())
    })
    .await;
    let (status, health) = send(instance.http.get(format!("{}/health", instance.url))).await;
    assert_eq!((status, &health["status"]), (200, &json!("healthy")));
    let (status, _) = send(instance.http.get(format!("{}/api/compute/health", instance.url))).await;
    assert_eq!(status, 200);
    assert!(!heavy.is_finished(), "health answered while the heavy requests still run");
    let answers = (&mut heavy).await.unwrap();
    for (status, answer) in answers {
        assert_eq!(status, 200, "{answer}");
        assert_eq!(answer["result"][199][199], json!(200));
    }
    instance.stop().await;
}

#[tokio::test]
async fn simulated_work_waits_then_answers() {
    let (app, _dir) = app(&[("WORK_DELAY_MS", "5"), ("WORK_DELAY_MAX_MS", "1000")]).await;
    for method in ["GET", "POST"] {
        let (status, body) = call(&app, method, "/api/compute/compute-worker", None, None).await;
        assert_eq!(status, 200, "{body}");
        assert_eq!(body["service"], "compute-1");
        assert_eq!(body["delayMs"], 5);
        assert!(body["message"].is_string() && body["timestamp"].is_string(), "{body}");
    }
    let (status, body) = call(&app, "GET", "/api/compute/compute-worker?ms=20", None, None).await;
    assert_eq!((status, &body["delayMs"]), (200, &json!(20)));
    for bad in ["?ms=1001", "?ms=-1", "?ms=soon"] {
        let (status, body) = call(&app, "GET", &format!("/api/compute/compute-worker{bad}"), None, None).await;
        assert_eq!(status, 400, "{bad}: {body}");
        assert_eq!(body["error"], "ms must be a whole number of milliseconds from 0 to 1000");
    }
}

#[tokio::test]
async fn a_direct_request_with_a_seen_idempotency_key_gets_the_first_answer() {
    let (_dir, db) = database().await;
    let a = Instance::start(&db, "compute-a", &[("COMPUTE_WORKERS", "0")]).await;
    let b = Instance::start(&db, "compute-b", &[("COMPUTE_WORKERS", "0")]).await;
    let body = json!({"operation": "fibonacci", "operands": [200]});
    let first = a.post("/api/compute/direct", &body).header("idempotency-key", "d-1").send().await.unwrap();
    assert_eq!(first.status(), 200);
    assert!(first.headers().get("idempotent-replayed").is_none());
    let first: Value = first.json().await.unwrap();
    let again = b.post("/api/compute/direct", &body).header("idempotency-key", "d-1").send().await.unwrap();
    assert_eq!(again.status(), 200);
    assert_eq!(again.headers()["idempotent-replayed"], "true");
    assert_eq!(again.json::<Value>().await.unwrap(), first, "the first answer, computedAt and service included");

    let other = json!({"operation": "fibonacci", "operands": [201]});
    let (status, _) = send(b.post("/api/compute/direct", &other).header("idempotency-key", "d-1")).await;
    assert_eq!(status, 422);
    let (status, fresh) = send(b.post("/api/compute/direct", &body)).await;
    assert_eq!((status, &fresh["service"]), (200, &json!("compute-b")), "without a key, computed again");
    a.stop().await;
    b.stop().await;
}

/// The answers kept for `Idempotency-Key`s are bounded per user: beyond
/// `IDEMPOTENCY_MAX_KEYS_PER_USER` the oldest are forgotten, the newest still replay, and
/// the table stays at the cap. Another user has an allowance (and keys) of its own.
#[tokio::test]
async fn the_idempotency_store_keeps_at_most_the_limit_per_user() {
    let (_dir, db) = database().await;
    let a =
        Instance::start(&db, "compute-a", &[("COMPUTE_WORKERS", "0"), ("IDEMPOTENCY_MAX_KEYS_PER_USER", "3")]).await;
    let pool = kit::db::connect_as(&crate::db_url(&db), "compute", Default::default()).await.unwrap();
    let stored = || async {
        sqlx::query_scalar::<_, i64>("SELECT COUNT(*) FROM idempotency_records").fetch_one(pool.pool()).await.unwrap()
    };
    let body = json!({"operation": "add", "operands": [1, 2]});
    let direct = |key: String, token: String| {
        let req = a.http.post(format!("{}/api/compute/direct", a.url)).bearer_auth(token).json(&body);
        async move {
            let res = req.header("idempotency-key", key).send().await.unwrap();
            assert_eq!(res.status(), 200);
            res.headers().get("idempotent-replayed").is_some()
        }
    };
    for i in 0..10 {
        assert!(!direct(format!("k{i}"), token()).await, "k{i} is new");
        assert!(stored().await <= 3, "the store never grows past the cap");
    }
    assert_eq!(stored().await, 3);
    for i in 7..10 {
        assert!(direct(format!("k{i}"), token()).await, "k{i}, among the newest, replays");
    }
    assert!(!direct("k0".into(), token()).await, "k0, the oldest, is forgotten: computed anew");
    assert_eq!(stored().await, 3);

    assert!(!direct("k9".into(), crate::token_for("2")).await, "another user's k9 is another key");
    assert_eq!(stored().await, 4, "another user has an allowance of its own");
    a.stop().await;
}

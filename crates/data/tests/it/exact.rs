//! A store may not change a value: value and metadata come back byte for byte as they were
//! sent, from create, read, update, list and an idempotent replay.

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use reqwest::Method;
use serde_json::json;

use crate::{RawItem, TestData, item_path, raw_pages, send, send_raw};

/// `[[[…]]]`, `depth` levels of arrays around `1`.
fn nested_arrays(depth: usize) -> String {
    format!("{}1{}", "[".repeat(depth), "]".repeat(depth))
}

/// `{"a":{"a":…}}`, `depth` levels of objects around `1`.
fn nested_objects(depth: usize) -> String {
    format!("{}1{}", r#"{"a":"#.repeat(depth), "}".repeat(depth))
}

/// JSON texts that a round trip through a parsed tree (`f64`, `Value`) would change, and
/// some it would reformat.
fn values() -> Vec<String> {
    let mut rng = StdRng::seed_from_u64(0x5eed);
    let mut values = Vec::new();
    for _ in 0..120 {
        // Shortest round-trip form in [0, 1), like the 0.9636861036351481 that came back as
        // 0.963686103635148, and floats of any magnitude in two more forms.
        values.push(format!("{}", rng.random::<f64>()));
        let any = f64::from_bits(rng.random::<u64>());
        if any.is_finite() {
            values.push(format!("{any:e}"));
            values.push(format!("{any:.16e}"));
        }
    }
    let fixed = [
        "0.9636861036351481",
        "12345678901234567890123",
        "9007199254740993",
        "-9007199254740993",
        "18446744073709551616",
        "-18446744073709551617",
        "340282366920938463463374607431768211457",
        "-0.0",
        "-0",
        "5e-324",
        "1e308",
        "1.7976931348623157e308",
        "1E+2",
        "0.1000000000000000055511151231257827",
        "1e400",
        "100.000",
        r#""ключ 🔑 日本語 ümlaut""#,
        r#""\u0000 \ud83d\ude00 \" \\ \/ \b\f\n\r\t \u00e9 \uD83D\uDE00""#,
        r#""😀 as UTF-8, \u00e9 escaped, é raw""#,
        r#"{ "a" : [ 1 , 2.50 , -0.0 ] , "b" : { } , "a b" : "\"" }"#,
        "[\n  1,\n\t2\r\n]",
        r#"{"dup":1,"dup":2}"#,
        "[]",
        "{}",
        "null",
        "true",
        "\"\"",
    ];
    values.extend(fixed.iter().map(|v| v.to_string()));
    values.push(nested_arrays(data::MAX_DEPTH));
    values.push(nested_objects(data::MAX_DEPTH));
    values.push(format!("[{}]", values[..40].join(",")));
    values
}

/// A metadata object around `value`, or, for the deepest values, an object as deep as allowed.
fn metadata_for(value: &str) -> String {
    if value.starts_with("[[[") || value.starts_with(r#"{"a":{"a":"#) {
        nested_objects(data::MAX_DEPTH)
    } else {
        format!(r#"{{ "m" : {value}, "n": [{value}] }}"#)
    }
}

/// `raw` parsed as an item, asserting its value and metadata texts are exactly these.
fn check(raw: &str, value: &str, metadata: &str) -> RawItem {
    let item: RawItem = serde_json::from_str(raw).unwrap_or_else(|e| panic!("{e}: {raw:.200}"));
    assert_eq!(item.value.get(), value, "value");
    assert_eq!(item.metadata.get(), metadata, "metadata");
    item
}

#[tokio::test]
async fn values_and_metadata_come_back_byte_for_byte() {
    let dir = tempfile::tempdir().unwrap();
    let data = TestData::start(dir.path(), &[]).await;
    let values = values();
    let cases: Vec<(String, String)> = values.iter().map(|v| (v.clone(), metadata_for(v))).collect();
    let key = |i: usize| format!("exact:{i:04}");

    // Create (with an Idempotency-Key), replay it, read it back.
    for (i, (value, metadata)) in cases.iter().enumerate() {
        let body = format!(r#"{{"key": "{}", "value": {value} , "metadata":{metadata}}}"#, key(i));
        let post =
            || data.req(Method::POST, "/api/data").header("idempotency-key", format!("create-{i}")).body(body.clone());
        let (status, _, first) = send_raw(post()).await;
        assert_eq!(status, 201, "{first:.300}");
        assert_eq!(check(&first, value, metadata).version, 1);
        let (status, headers, again) = send_raw(post()).await;
        assert_eq!((status, &again), (201, &first), "the replay is the first answer");
        assert_eq!(
            (headers["idempotent-replayed"].to_str().unwrap(), headers["etag"].to_str().unwrap()),
            ("true", "\"1\"")
        );
        let (status, headers, read) = send_raw(data.get(&item_path(&key(i)))).await;
        assert_eq!((status, headers["etag"].to_str().unwrap()), (200, "\"1\""), "{read:.300}");
        check(&read, value, metadata);
    }
    let listed = raw_pages(&data, "exact:", 1000).await;
    assert_eq!(listed.len(), cases.len());
    for (item, (value, metadata)) in listed.iter().zip(&cases) {
        assert_eq!((item.value.get(), item.metadata.get()), (value.as_str(), metadata.as_str()), "{}", item.key);
    }

    // Update value and metadata (the next case's), with expectedVersion in the body; replay;
    // then the value alone, which keeps the metadata as it was.
    for i in 0..cases.len() {
        let (value, metadata) = &cases[(i + 1) % cases.len()];
        let body = format!(r#"{{"value":{value},"metadata":  {metadata},"expectedVersion":1}}"#);
        let put = || {
            data.req(Method::PUT, &item_path(&key(i)))
                .header("idempotency-key", format!("update-{i}"))
                .body(body.clone())
        };
        let (status, _, first) = send_raw(put()).await;
        assert_eq!(status, 200, "{first:.300}");
        assert_eq!(check(&first, value, metadata).version, 2);
        let (status, _, again) = send_raw(put()).await;
        assert_eq!((status, &again), (200, &first));
        let original = &cases[i].0;
        let (status, _, updated) =
            send_raw(data.req(Method::PUT, &item_path(&key(i))).body(format!(r#"{{"value":{original}}}"#))).await;
        assert_eq!(status, 200, "{updated:.300}");
        check(&updated, original, metadata);
        let (_, _, read) = send_raw(data.get(&item_path(&key(i)))).await;
        assert_eq!(check(&read, original, metadata).version, 3);
    }
    let listed = raw_pages(&data, "exact:", 7).await;
    assert_eq!(listed.len(), cases.len());
    for (i, item) in listed.iter().enumerate() {
        let metadata = &cases[(i + 1) % cases.len()].1;
        assert_eq!((item.value.get(), item.metadata.get()), (cases[i].0.as_str(), metadata.as_str()), "{}", item.key);
    }
    data.stop().await;
}

#[tokio::test]
async fn limits_measure_the_compact_json_and_too_deep_or_lone_surrogates_are_400() {
    let dir = tempfile::tempdir().unwrap();
    let data = TestData::start(dir.path(), &[("DATA_MAX_VALUE_BYTES", "1000")]).await;
    data.create("kept", json!("original")).await;
    let before = data.all().await;
    let post = |value: &str, metadata: &str| {
        data.req(Method::POST, "/api/data").body(format!(r#"{{"key":"new","value":{value},"metadata":{metadata}}}"#))
    };
    let put = |body: String| data.req(Method::PUT, "/api/data/kept").body(body);

    let too_deep = nested_arrays(data::MAX_DEPTH + 1);
    let far_too_deep = nested_arrays(400);
    let deep_metadata = nested_objects(data::MAX_DEPTH + 1);
    for (req, expected) in [
        (post(&too_deep, "{}"), "value nests 101 levels deep, deeper than the limit of 100"),
        (post(&far_too_deep, "{}"), "value nests 400 levels deep"),
        (post("1", &deep_metadata), "metadata nests 101 levels deep"),
        (put(format!(r#"{{"value":{too_deep}}}"#)), "value nests 101 levels deep"),
        (put(format!(r#"{{"metadata":{deep_metadata}}}"#)), "metadata nests 101 levels deep"),
        (post(r#""\ud83d""#, "{}"), "value has a \\u escape of half a surrogate pair"),
        (post("1", r#"{"\ude00": 1}"#), "metadata has a \\u escape of half a surrogate pair"),
        (put(r#"{"value":["\ud83d\u0041"]}"#.to_owned()), "value has a \\u escape"),
    ] {
        let (status, body) = send(req).await;
        assert_eq!(status, 400, "{body}");
        assert!(body["error"].as_str().unwrap().contains(expected), "{expected:?} not in {body}");
    }
    assert_eq!(data.all().await, before, "refusals changed nothing");

    // The value limit counts the JSON without the whitespace between tokens, as before, but
    // what is stored and answered keeps it.
    let spaced = format!("[ {} ]", vec!["1"; 499].join(" , "));
    let (status, _, raw) = send_raw(post(&spaced, "{}")).await;
    assert_eq!(status, 201, "999 bytes as compact JSON: {raw:.200}");
    check(&raw, &spaced, "{}");
    let (status, body) = send(put(format!(r#"{{"value":[ {} ]}}"#, vec!["1"; 500].join(" , ")))).await;
    assert_eq!(status, 413, "{body}");
    assert!(body["error"].as_str().unwrap().starts_with("value is 1001 bytes as JSON"), "{body}");
    data.stop().await;
}

//! The JSON text of values and metadata: checked once when it arrives, then kept, stored and
//! answered as the client sent it.
//!
//! A value is never parsed into a tree (`serde_json::Value`): that would round floats to
//! their shortest `f64` form (`0.9636861036351481` came back as `0.963686103635148`), turn
//! integers past 2^64 into floats, and cost about 32 bytes of memory per number on every
//! read. Instead the request's text is taken as a [`RawValue`] (validated JSON, no tree), and
//! one pass over it ([`Shape::of`]) measures what the limits need: its size as compact JSON
//! and how deeply it nests.

use serde_json::value::RawValue;

/// How deeply a value or metadata may nest (arrays and objects). serde_json, like many
/// parsers, refuses documents nested past 128 levels; an item inside a list page sits three
/// levels down (`{"items":[{"value":`), so 100 keeps every answer readable by such a client.
pub const MAX_DEPTH: usize = 100;

/// What the limits need to know of a JSON text.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Shape {
    /// Bytes without the whitespace between tokens: the size of the compact JSON.
    pub compact_bytes: usize,
    /// The deepest nesting of arrays and objects (0 for a scalar).
    pub depth: usize,
}

impl Shape {
    /// The shape of `json`, which must be valid JSON (a [`RawValue`]'s text is).
    pub fn of(json: &str) -> Self {
        let (mut compact_bytes, mut depth, mut deepest) = (0, 0, 0);
        let (mut in_string, mut escaped) = (false, false);
        for &b in json.as_bytes() {
            if in_string {
                compact_bytes += 1;
                match (escaped, b) {
                    (true, _) => escaped = false,
                    (false, b'\\') => escaped = true,
                    (false, b'"') => in_string = false,
                    _ => {}
                }
                continue;
            }
            match b {
                b' ' | b'\t' | b'\n' | b'\r' => continue,
                b'"' => in_string = true,
                b'[' | b'{' => {
                    depth += 1;
                    deepest = deepest.max(depth);
                }
                b']' | b'}' => depth -= 1,
                _ => {}
            }
            compact_bytes += 1;
        }
        Self { compact_bytes, depth: deepest }
    }
}

/// `{}`, the metadata of an item created without any.
pub fn empty_object() -> Box<RawValue> {
    RawValue::from_string("{}".to_owned()).expect("{} is JSON")
}

/// Whether `json` (a [`RawValue`]'s text, which starts at its first token) is an object.
pub fn is_object(json: &RawValue) -> bool {
    json.get().starts_with('{')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shapes() {
        let check = |json: &str, compact_bytes: usize, depth: usize| {
            let raw: Box<RawValue> = serde_json::from_str(json).unwrap();
            assert_eq!(Shape::of(raw.get()), Shape { compact_bytes, depth }, "{json}");
        };
        check("1", 1, 0);
        check("0.9636861036351481", 18, 0);
        check(r#""a b""#, 5, 0);
        check(r#"" [{ \" ]} ""#, 12, 0);
        check(r#""\\""#, 4, 0);
        check(r#"{ "a" : [ 1 , 2 ] ,"b":{}}"#, 18, 2);
        check("[[[],[[]]],{}]", 14, 4);
        check(" \n\t[ \"\\\\\\\"[\" ]\r\n", 9, 1);
        check(&format!("{}{}", "[".repeat(500), "]".repeat(500)), 1000, 500);
    }

    #[test]
    fn objects() {
        for (json, object) in
            [("{}", true), (" { \"a\": 1 }", true), ("[{}]", false), ("\"{\"", false), ("null", false)]
        {
            let raw: Box<RawValue> = serde_json::from_str(json).unwrap();
            assert_eq!(is_object(&raw), object, "{json}");
        }
        assert_eq!(empty_object().get(), "{}");
    }
}

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

/// What the checks need to know of a JSON text.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Shape {
    /// Bytes without the whitespace between tokens: the size of the compact JSON.
    pub compact_bytes: usize,
    /// The deepest nesting of arrays and objects (0 for a scalar).
    pub depth: usize,
    /// Whether a string holds a `\u` escape of half a UTF-16 surrogate pair without its other
    /// half: JSON's grammar lets it through, but it is no Unicode character, and parsers such
    /// as serde_json refuse the document (as this service did before it kept texts).
    pub lone_surrogate: bool,
}

impl Shape {
    /// The shape of `json`, which must be valid JSON (a [`RawValue`]'s text is).
    pub fn of(json: &str) -> Self {
        let bytes = json.as_bytes();
        let mut shape = Self { compact_bytes: 0, depth: 0, lone_surrogate: false };
        let (mut depth, mut in_string, mut high_surrogate) = (0, false, false);
        let mut i = 0;
        while i < bytes.len() {
            let b = bytes[i];
            if in_string {
                // One character or escape sequence at a time.
                let (len, unit) = match b {
                    b'\\' if bytes.get(i + 1) == Some(&b'u') => (6, hex_unit(bytes.get(i + 2..i + 6))),
                    b'\\' => (2, None),
                    _ => (1, None),
                };
                let low = matches!(unit, Some(0xDC00..=0xDFFF));
                shape.lone_surrogate |= high_surrogate != low;
                high_surrogate = matches!(unit, Some(0xD800..=0xDBFF));
                in_string = b != b'"';
                shape.compact_bytes += len;
                i += len;
                continue;
            }
            i += 1;
            match b {
                b' ' | b'\t' | b'\n' | b'\r' => continue,
                b'"' => in_string = true,
                b'[' | b'{' => {
                    depth += 1;
                    shape.depth = shape.depth.max(depth);
                }
                b']' | b'}' => depth -= 1,
                _ => {}
            }
            shape.compact_bytes += 1;
        }
        shape
    }
}

/// The UTF-16 code unit of the four hex digits of a `\u` escape.
fn hex_unit(digits: Option<&[u8]>) -> Option<u16> {
    u16::from_str_radix(std::str::from_utf8(digits?).ok()?, 16).ok()
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
            assert_eq!(Shape::of(raw.get()), Shape { compact_bytes, depth, lone_surrogate: false }, "{json}");
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
        check(r#""\ud83d\ude00 \u00e9 \uD83D\uDE00\\ud800""#, 41, 0);
    }

    #[test]
    fn lone_surrogates() {
        let check = |json: &str, lone: bool| {
            let raw: Box<RawValue> = serde_json::from_str(json).unwrap();
            assert_eq!(Shape::of(raw.get()).lone_surrogate, lone, "{json}");
            assert_eq!(serde_json::from_str::<serde_json::Value>(json).is_err(), lone, "as serde_json sees it: {json}");
        };
        check(r#""\ud83d\ude00""#, false);
        check(r#"["\uDBFF\uDFFF", "\u0041"]"#, false);
        check(r#""\ud83d""#, true);
        check(r#""\ude00""#, true);
        check(r#""\ud83d\u0041""#, true);
        check(r#""\ud83d\n""#, true);
        check(r#""\ud83dx""#, true);
        check(r#"{"\ude00\ud83d": 1}"#, true);
        check(r#""\ude00\ud83d""#, true);
    }

    #[test]
    fn what_raw_value_refuses() {
        for bad in ["\"a\u{1}b\"", r#""\x""#, "[1,]", "01", "NaN", "\"\\u12\""] {
            assert!(serde_json::from_str::<Box<RawValue>>(bad).is_err(), "{bad}");
        }
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

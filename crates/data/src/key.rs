//! Item keys, list cursors and prefix ranges.
//!
//! A key is 1-256 bytes of UTF-8, any characters but NUL (which PostgreSQL's text cannot
//! hold). Keys sort byte-wise, which for UTF-8 is code-point order, so the keys starting
//! with a prefix `p` are exactly the range `p <= key < successor(p)`: a prefix listing is an
//! index range scan, and `%` or `_` in the prefix mean nothing special.

use kit::http::ApiError;

pub const MAX_KEY_BYTES: usize = 256;

pub fn validate(key: &str) -> Result<(), ApiError> {
    if key.is_empty() || key.len() > MAX_KEY_BYTES {
        return Err(ApiError::bad_request(format!(
            "key must be 1 to {MAX_KEY_BYTES} bytes of UTF-8 (this one is {} bytes)",
            key.len()
        )));
    }
    if key.contains('\0') {
        return Err(ApiError::bad_request("key must not contain NUL characters"));
    }
    Ok(())
}

/// The smallest string greater than every string that starts with `prefix`, or `None` when
/// there is none (an empty prefix, or one of only U+10FFFF).
pub fn successor(prefix: &str) -> Option<String> {
    let mut chars: Vec<char> = prefix.chars().collect();
    while let Some(last) = chars.pop() {
        let next = match last {
            '\u{D7FF}' => Some('\u{E000}'),
            c => char::from_u32(c as u32 + 1),
        };
        if let Some(next) = next {
            chars.push(next);
            return Some(chars.into_iter().collect());
        }
    }
    None
}

/// The cursor of a page that ended at `key`: opaque to clients (hex of the key's bytes).
pub fn encode_cursor(key: &str) -> String {
    key.bytes().map(|b| format!("{b:02x}")).collect()
}

pub fn decode_cursor(cursor: &str) -> Result<String, ApiError> {
    let invalid = || ApiError::bad_request("cursor is not valid (pass nextCursor from the previous page as it is)");
    if cursor.len() % 2 != 0 || cursor.len() > 2 * MAX_KEY_BYTES {
        return Err(invalid());
    }
    let bytes = (0..cursor.len())
        .step_by(2)
        .map(|i| cursor.get(i..i + 2).and_then(|h| u8::from_str_radix(h, 16).ok()))
        .collect::<Option<Vec<u8>>>()
        .ok_or_else(invalid)?;
    String::from_utf8(bytes).map_err(|_| invalid())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys() {
        let check = |key: &str, ok: bool| assert_eq!(validate(key).is_ok(), ok, "{key:?}");
        check("a", true);
        check("users/42", true);
        check("'; DROP TABLE items; --", true);
        check("ключ-🔑", true);
        check(&"k".repeat(256), true);
        check(&"é".repeat(128), true);
        check("", false);
        check(&"k".repeat(257), false);
        check(&"é".repeat(129), false);
        check("a\0b", false);
    }

    #[test]
    fn successors() {
        let check = |p: &str, s: Option<&str>| assert_eq!(successor(p).as_deref(), s, "{p:?}");
        check("", None);
        check("a", Some("b"));
        check("user:", Some("user;"));
        check("a%", Some("a&"));
        check("\u{D7FF}", Some("\u{E000}"));
        check("a\u{10FFFF}", Some("b"));
        check("\u{10FFFF}\u{10FFFF}", None);
        // Every string with the prefix sorts below the successor, byte-wise.
        for p in ["a", "é", "z\u{FFFF}", "日本"] {
            let s = successor(p).unwrap();
            for tail in ["", "\0", "zzz", "\u{10FFFF}\u{10FFFF}"] {
                let k = format!("{p}{tail}");
                assert!(k.as_bytes() >= p.as_bytes() && k.as_bytes() < s.as_bytes(), "{k:?} vs {s:?}");
            }
        }
    }

    #[test]
    fn cursors_round_trip() {
        for key in ["a", "users/42", "ключ 🔑", "%_'"] {
            assert_eq!(decode_cursor(&encode_cursor(key)).unwrap(), key);
        }
        for bad in ["0", "zz", "ff", "c3"] {
            assert!(decode_cursor(bad).is_err(), "{bad}");
        }
    }
}

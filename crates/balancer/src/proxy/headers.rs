//! The heads the proxy writes: the headers it adds (`X-Request-Id` and its ids,
//! `X-Real-IP`, `X-Forwarded-For`, `X-Upstream-Instance`), the hop-by-hop ones it removes,
//! the origin-form target, and the spare header maps a retryable request's copies reuse.

use std::net::SocketAddr;

use bytes::Bytes;
use http::Method;
use http::header::{self, HeaderName, HeaderValue};
use http::uri::Uri;

pub static X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");
pub static X_UPSTREAM_INSTANCE: HeaderName = HeaderName::from_static("x-upstream-instance");
pub static X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
pub static X_REAL_IP: HeaderName = HeaderName::from_static("x-real-ip");
pub(super) static IDEMPOTENCY_KEY: HeaderName = HeaderName::from_static("idempotency-key");
static KEEP_ALIVE: HeaderName = HeaderName::from_static("keep-alive");
static PROXY_CONNECTION: HeaderName = HeaderName::from_static("proxy-connection");

thread_local! {
    /// Emptied header maps, kept with their capacity: each request that may be retried
    /// sends a copy of its headers, and gives back the map it kept once answered.
    static SPARE_HEADERS: std::cell::RefCell<Vec<http::HeaderMap>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// Spare maps kept per thread at most.
const MAX_SPARE_HEADERS: usize = 256;

/// A copy of `headers` (the same names and values in the same order), in a spare map when
/// there is one.
pub(super) fn copy_headers(headers: &http::HeaderMap) -> http::HeaderMap {
    let spare = SPARE_HEADERS.with(|spare| spare.borrow_mut().pop());
    let Some(mut copy) = spare else { return headers.clone() };
    copy.reserve(headers.len());
    for (name, value) in headers {
        copy.append(name.clone(), value.clone());
    }
    copy
}

/// Keeps `headers`' map for [`copy_headers`].
pub(super) fn recycle_headers(mut headers: http::HeaderMap) {
    if headers.capacity() == 0 {
        return;
    }
    headers.clear();
    SPARE_HEADERS.with(|spare| {
        let mut spare = spare.borrow_mut();
        if spare.len() < MAX_SPARE_HEADERS {
            spare.push(headers);
        }
    });
}

/// A client connection's peer address as a header value (the IP alone, an IPv4 address
/// mapped into IPv6 as IPv4), made once per connection.
pub fn peer_header(peer: SocketAddr) -> HeaderValue {
    let ip = peer.ip().to_canonical().to_string();
    HeaderValue::from_maybe_shared(Bytes::from(ip)).expect("an IP address is a valid header value")
}

/// Says who the client is (see the module docs): `X-Real-IP` is `peer`, and `peer` is
/// appended to the client's `X-Forwarded-For` (its fields joined, empty ones left out).
pub(super) fn forwarded_for(headers: &mut http::HeaderMap, peer: &HeaderValue) {
    headers.insert(X_REAL_IP.clone(), peer.clone());
    let mut sent = match headers.entry(&X_FORWARDED_FOR) {
        header::Entry::Vacant(entry) => {
            entry.insert(peer.clone());
            return;
        }
        header::Entry::Occupied(entry) => entry,
    };
    let value = forwarded_value(|| sent.iter().map(HeaderValue::as_bytes), peer);
    sent.insert(value);
}

/// The `X-Forwarded-For` a backend gets: the client's values (`sent` lists them; their fields joined,
/// empty ones left out) with `peer` appended.
pub fn forwarded_value<'a, I: Iterator<Item = &'a [u8]>>(sent: impl Fn() -> I, peer: &HeaderValue) -> HeaderValue {
    let entries = || sent().map(<[u8]>::trim_ascii).filter(|v| !v.is_empty());
    if entries().next().is_none() {
        return peer.clone();
    }
    let mut joined = Vec::with_capacity(entries().map(|v| v.len() + 2).sum::<usize>() + peer.len());
    for entry in entries() {
        joined.extend_from_slice(entry);
        joined.extend_from_slice(b", ");
    }
    joined.extend_from_slice(peer.as_bytes());
    // Bytes the client's header values already held, commas, spaces and an IP address.
    HeaderValue::from_maybe_shared(Bytes::from(joined)).unwrap_or_else(|_| peer.clone())
}

/// `/path?query` of `uri` (`/` when it has none).
pub(super) fn origin_form(uri: &Uri) -> Uri {
    match uri.path_and_query() {
        Some(pq) => Uri::from(pq.clone()),
        None => Uri::from_static("/"),
    }
}

pub fn is_idempotent(method: &Method) -> bool {
    matches!(*method, Method::GET | Method::HEAD | Method::OPTIONS | Method::PUT | Method::DELETE | Method::TRACE)
}

pub(super) fn content_length(headers: &http::HeaderMap) -> Option<u64> {
    headers.get(header::CONTENT_LENGTH)?.to_str().ok()?.trim().parse().ok()
}

/// Removes the headers that belong to one connection, not to the message.
pub(super) fn strip_hop_by_hop(headers: &mut http::HeaderMap) {
    // Most messages have none: a glance at a few names is cheaper than seven lookups.
    if headers.keys_len() <= 16 && !headers.keys().any(is_hop_by_hop) {
        return;
    }
    if let Some(connection) = headers.remove(header::CONNECTION) {
        // Headers the Connection header names are hop-by-hop too.
        if let Ok(names) = connection.to_str() {
            for name in names.split(',').map(str::trim).filter(|n| !n.is_empty()) {
                if !name.eq_ignore_ascii_case("close") && !name.eq_ignore_ascii_case("keep-alive") {
                    headers.remove(name);
                }
            }
        }
    }
    // `Expect: 100-continue` is answered on the client's side (hyper sends the 100 when
    // the body is first read), so the backend gets the body without being asked.
    for name in [&KEEP_ALIVE, &PROXY_CONNECTION, &header::TE, &header::TRAILER, &header::UPGRADE, &header::EXPECT] {
        if headers.contains_key(name) {
            headers.remove(name);
        }
    }
}

/// One of the names `strip_hop_by_hop` always removes.
fn is_hop_by_hop(name: &HeaderName) -> bool {
    // By text: comparing `HeaderName`s one by one cost about 700 instructions a request
    // (callgrind), a `match` on the text (length first) a few dozen.
    matches!(name.as_str(), "connection" | "keep-alive" | "proxy-connection" | "te" | "trailer" | "upgrade" | "expect")
}

/// A new request id shaped like a UUID (version 4): a random number drawn once per thread,
/// plus a per-thread count, mixed so that consecutive ids look unrelated.
///
/// The ids of a thread are cut from one shared buffer, so making one (and cloning it into
/// the response) allocates nothing most of the time.
pub fn new_request_id() -> HeaderValue {
    /// Ids per buffer.
    const BATCH: usize = 256;
    thread_local! {
        static NEXT: std::cell::RefCell<(u128, u64, bytes::BytesMut)> =
            std::cell::RefCell::new((rand::random(), 0, bytes::BytesMut::new()));
    }
    NEXT.with(|next| {
        let (seed, n, buf) = &mut *next.borrow_mut();
        let count = *n;
        *n = count.wrapping_add(1);
        let out = format_request_id(*seed, count);
        if buf.capacity() < out.len() {
            buf.reserve(out.len() * BATCH);
        }
        buf.extend_from_slice(&out);
        HeaderValue::from_maybe_shared(buf.split().freeze()).expect("hex digits and dashes are a valid header value")
    })
}

/// The id number `n` of a thread whose random number is `seed`, as text.
fn format_request_id(seed: u128, n: u64) -> [u8; 36] {
    let bits = request_id_bits(seed, n);
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let bytes = bits.to_be_bytes();
    let mut out = [b'-'; 36];
    let mut at = 0;
    for (i, byte) in bytes.iter().enumerate() {
        if matches!(i, 4 | 6 | 8 | 10) {
            at += 1;
        }
        out[at] = HEX[usize::from(byte >> 4)];
        out[at + 1] = HEX[usize::from(byte & 0xf)];
        at += 2;
    }
    out
}

/// The 128 bits of id number `n`: `seed` mixed with a bijective mix of the count
/// (splitmix64), so ids differ in many digits, with the version (4) and variant bits set.
fn request_id_bits(seed: u128, n: u64) -> u128 {
    let mut z = n.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^= z >> 31;
    let random = seed ^ u128::from(z);
    (random & !(0xf << 76) & !(0x3 << 62)) | (0x4 << 76) | (0x2 << 62)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_ids_look_like_uuids() {
        let a = new_request_id();
        let b = new_request_id();
        assert_ne!(a, b);
        let a = a.to_str().unwrap();
        assert_eq!(a.len(), 36);
        assert_eq!(&a[14..15], "4", "{a}");
        assert!("89ab".contains(&a[19..20]), "{a}");
        assert_eq!(a.matches('-').count(), 4);
    }

    #[test]
    fn request_ids_are_the_uuid_layout_of_their_bits() {
        // Digit by digit, as ids were first formatted.
        let reference = |seed: u128, n: u64| {
            let bits = request_id_bits(seed, n);
            let mut out = [0u8; 36];
            let mut nibble = 32;
            for (i, byte) in out.iter_mut().enumerate() {
                if matches!(i, 8 | 13 | 18 | 23) {
                    *byte = b'-';
                } else {
                    nibble -= 1;
                    *byte = b"0123456789abcdef"[((bits >> (nibble * 4)) & 0xf) as usize];
                }
            }
            out
        };
        for (seed, n) in [(0, 0), (u128::MAX, u64::MAX), (0x0123_4567_89ab_cdef_fedc_ba98_7654_3210, 12345)] {
            assert_eq!(format_request_id(seed, n), reference(seed, n));
        }
        let ids: std::collections::HashSet<HeaderValue> = (0..1000).map(|_| new_request_id()).collect();
        assert_eq!(ids.len(), 1000);
    }

    #[test]
    fn hop_by_hop_headers_are_removed() {
        let mut headers = http::HeaderMap::new();
        for (k, v) in [("connection", "close, x-secret"), ("x-secret", "1"), ("keep-alive", "5"), ("x-kept", "1")] {
            headers.insert(HeaderName::from_static(k), HeaderValue::from_static(v));
        }
        strip_hop_by_hop(&mut headers);
        let names: Vec<&str> = headers.keys().map(HeaderName::as_str).collect();
        assert_eq!(names, vec!["x-kept"]);

        for name in ["te", "trailer", "upgrade", "expect", "proxy-connection", "keep-alive", "connection"] {
            let mut headers = http::HeaderMap::new();
            headers.insert(header::HOST, HeaderValue::from_static("a"));
            headers.insert(HeaderName::from_static(name), HeaderValue::from_static("1"));
            strip_hop_by_hop(&mut headers);
            assert_eq!(headers.keys().collect::<Vec<_>>(), vec![header::HOST], "{name}");
        }
        // Past the quick scan too.
        let mut headers = http::HeaderMap::new();
        for n in 0..20 {
            headers.insert(HeaderName::try_from(format!("x-{n}")).unwrap(), HeaderValue::from_static("1"));
        }
        headers.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
        strip_hop_by_hop(&mut headers);
        assert_eq!(headers.len(), 20);
    }

    #[test]
    fn copied_headers_are_the_same() {
        let mut headers = http::HeaderMap::new();
        headers.append(header::ACCEPT, HeaderValue::from_static("a"));
        headers.append(HeaderName::from_static("x-one"), HeaderValue::from_static("1"));
        headers.append(header::ACCEPT, HeaderValue::from_static("b"));
        let mut spare = http::HeaderMap::new();
        spare.insert(header::HOST, HeaderValue::from_static("old"));
        recycle_headers(spare);
        for _ in 0..2 {
            let copy = copy_headers(&headers);
            assert_eq!(copy, headers);
            let pairs = |m: &http::HeaderMap| m.iter().map(|(k, v)| (k.clone(), v.clone())).collect::<Vec<_>>();
            assert_eq!(pairs(&copy), pairs(&headers));
            recycle_headers(copy);
        }
    }

    #[test]
    fn the_client_address_is_appended_to_x_forwarded_for() {
        let peer = peer_header("127.0.0.1:4000".parse().unwrap());
        let check = |sent: &[(&'static str, &'static str)], forwarded: &str| {
            let mut headers = http::HeaderMap::new();
            for (name, value) in sent {
                headers.append(HeaderName::from_static(name), HeaderValue::from_static(value));
            }
            strip_hop_by_hop(&mut headers);
            forwarded_for(&mut headers, &peer);
            let all = |name: &HeaderName| headers.get_all(name).iter().map(|v| v.to_str().unwrap()).collect::<Vec<_>>();
            assert_eq!(all(&X_FORWARDED_FOR), vec![forwarded], "{sent:?}");
            assert_eq!(all(&X_REAL_IP), vec!["127.0.0.1"], "{sent:?}");
        };
        check(&[], "127.0.0.1");
        check(&[("x-real-ip", "5.6.7.8"), ("x-real-ip", "9.9.9.9")], "127.0.0.1");
        check(&[("x-forwarded-for", "1.2.3.4")], "1.2.3.4, 127.0.0.1");
        check(
            &[("x-forwarded-for", "1.2.3.4, 10.0.0.1"), ("x-forwarded-for", " 2.2.2.2 ")],
            "1.2.3.4, 10.0.0.1, 2.2.2.2, 127.0.0.1",
        );
        check(&[("x-forwarded-for", ""), ("x-forwarded-for", "1.2.3.4")], "1.2.3.4, 127.0.0.1");
        // Naming them in `Connection` does not make the balancer drop its own.
        check(&[("connection", "x-forwarded-for, x-real-ip"), ("x-forwarded-for", "1.2.3.4")], "127.0.0.1");

        assert_eq!(peer_header("[::ffff:10.1.2.3]:80".parse().unwrap()), "10.1.2.3");
        assert_eq!(peer_header("[::1]:80".parse().unwrap()), "::1");
    }

    #[test]
    fn upstream_uris_keep_path_and_query() {
        let check = |original: &str, expected: &str| {
            assert_eq!(origin_form(&original.parse().unwrap()).to_string(), expected);
        };
        check("/api/data/k?x=1", "/api/data/k?x=1");
        check("http://elsewhere:1/api/data?y", "/api/data?y");
    }
}

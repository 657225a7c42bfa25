//! The bytes of the fast path: a client's request head read with httparse and rewritten for
//! a backend, a backend's response head read and rewritten for the client, how a response
//! body is framed, and a scanner that finds the end of a chunked body as it passes.

use http::header::HeaderValue;
use http::{Method, StatusCode};

use crate::proxy::{X_FORWARDED_FOR, X_REAL_IP, X_REQUEST_ID, X_UPSTREAM_INSTANCE, forwarded_value, is_idempotent};

/// The header fields a head may have on the fast path (more goes to hyper, which answers 431
/// beyond `BALANCER_MAX_HEADERS`).
pub const MAX_FIELDS: usize = 100;

/// A request head the fast path takes, parsed from the start of the client's bytes.
pub struct RequestHead<'a> {
    /// The head's length in bytes; the body follows.
    pub len: usize,
    pub method: Method,
    pub path: &'a str,
    /// The declared body length (no `Content-Length`: none).
    pub body: usize,
    pub idempotent: bool,
    /// The client asked to close after this answer (`Connection: close`).
    pub close: bool,
    pub request_id: Option<&'a [u8]>,
    pub traceparent: Option<&'a [u8]>,
    /// The client's header fields, as parsed.
    pub fields: &'a [httparse::Header<'a>],
}

/// What the start of a client's bytes is.
pub enum Parsed<'a> {
    /// A head the fast path takes.
    Head(RequestHead<'a>),
    /// Not a whole head yet.
    Partial,
    /// Anything else (malformed, HTTP/1.0, `Upgrade`, `Expect`, `Transfer-Encoding`, an
    /// absolute target, a body too large to keep, too many fields): hyper's.
    Other,
}

/// Parses the head at the start of `bytes` into `fields`; `max_body` is the largest body
/// the fast path keeps in memory.
pub fn parse_request<'a>(bytes: &'a [u8], fields: &'a mut [httparse::Header<'a>], max_body: usize) -> Parsed<'a> {
    let mut request = httparse::Request::new(fields);
    let len = match request.parse(bytes) {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) => return Parsed::Partial,
        Err(_) => return Parsed::Other,
    };
    let (Some(method), Some(path), Some(1)) = (request.method, request.path, request.version) else {
        return Parsed::Other;
    };
    let Ok(method) = Method::from_bytes(method.as_bytes()) else { return Parsed::Other };
    if !path.starts_with('/') || method == Method::CONNECT {
        return Parsed::Other;
    }
    let fields: &'a [httparse::Header<'a>] = request.headers;
    let mut head = RequestHead {
        len,
        idempotent: is_idempotent(&method),
        method,
        path,
        body: 0,
        close: false,
        request_id: None,
        traceparent: None,
        fields,
    };
    let (mut length, mut host) = (None, false);
    for field in fields {
        let (name, value) = (field.name, field.value);
        if name.eq_ignore_ascii_case("content-length") {
            let Some(n) = std::str::from_utf8(value).ok().and_then(|v| v.trim().parse::<usize>().ok()) else {
                return Parsed::Other;
            };
            if length.is_some_and(|l| l != n) || n > max_body {
                return Parsed::Other;
            }
            length = Some(n);
        } else if name.eq_ignore_ascii_case("connection") {
            for token in value.split(|b| *b == b',').map(<[u8]>::trim_ascii).filter(|t| !t.is_empty()) {
                if token.eq_ignore_ascii_case(b"close") {
                    head.close = true;
                } else if !token.eq_ignore_ascii_case(b"keep-alive") {
                    // It names other fields as hop-by-hop: hyper's path removes them.
                    return Parsed::Other;
                }
            }
        } else if ["transfer-encoding", "upgrade", "expect"].iter().any(|n| name.eq_ignore_ascii_case(n)) {
            return Parsed::Other;
        } else if name.eq_ignore_ascii_case("host") {
            host = true;
        } else if name.eq_ignore_ascii_case(X_REQUEST_ID.as_str()) {
            head.request_id = head.request_id.or(Some(value));
        } else if name.eq_ignore_ascii_case("traceparent") {
            head.traceparent = head.traceparent.or(Some(value));
        } else if name.eq_ignore_ascii_case("idempotency-key") {
            head.idempotent = true;
        }
    }
    if !host {
        return Parsed::Other;
    }
    head.body = length.unwrap_or(0);
    Parsed::Head(head)
}

/// Fields the client sends that the backend does not get as sent: hop-by-hop ones, and
/// those the balancer sets itself.
fn replaced_upstream(name: &str) -> bool {
    const NAMES: [&str; 8] = [
        "connection",
        "keep-alive",
        "proxy-connection",
        "te",
        "trailer",
        "traceparent",
        "x-real-ip",
        "x-forwarded-for",
    ];
    NAMES.iter().any(|n| name.eq_ignore_ascii_case(n)) || name.eq_ignore_ascii_case(X_REQUEST_ID.as_str())
}

/// Writes the head a backend gets for `head` into `out`: the client's fields but the
/// hop-by-hop ones, then `X-Request-Id`, `X-Real-IP`, `X-Forwarded-For` (the client's,
/// with `peer` appended) and the balancer's `traceparent`.
pub fn write_upstream_head(
    out: &mut Vec<u8>,
    head: &RequestHead<'_>,
    request_id: &HeaderValue,
    peer: &HeaderValue,
    traceparent: &HeaderValue,
) {
    out.extend_from_slice(head.method.as_str().as_bytes());
    out.push(b' ');
    out.extend_from_slice(head.path.as_bytes());
    out.extend_from_slice(b" HTTP/1.1\r\n");
    for field in head.fields {
        if !replaced_upstream(field.name) {
            field_line(out, field.name.as_bytes(), field.value);
        }
    }
    let sent = || head.fields.iter().filter(|f| f.name.eq_ignore_ascii_case(X_FORWARDED_FOR.as_str())).map(|f| f.value);
    let forwarded = forwarded_value(sent, peer);
    field_line(out, X_REQUEST_ID.as_str().as_bytes(), request_id.as_bytes());
    field_line(out, X_REAL_IP.as_str().as_bytes(), peer.as_bytes());
    field_line(out, X_FORWARDED_FOR.as_str().as_bytes(), forwarded.as_bytes());
    field_line(out, b"traceparent", traceparent.as_bytes());
    out.extend_from_slice(b"\r\n");
}

fn field_line(out: &mut Vec<u8>, name: &[u8], value: &[u8]) {
    out.extend_from_slice(name);
    out.extend_from_slice(b": ");
    out.extend_from_slice(value);
    out.extend_from_slice(b"\r\n");
}

/// How a response body ends.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Framing {
    /// No body.
    Empty,
    Length(u64),
    Chunked,
    /// At the end of the connection (no length given): the client's connection closes after it.
    Close,
}

/// A backend's response head, parsed.
pub struct ResponseHead {
    pub len: usize,
    pub status: u16,
    pub framing: Framing,
    /// The backend's connection can carry another request after this answer.
    pub reusable: bool,
}

/// Why a backend's bytes are not a response head the fast path passes on.
#[derive(Debug, PartialEq, Eq)]
pub enum BadResponse {
    Partial,
    /// Malformed, or too large, or an unexpected `101`.
    Invalid,
}

/// Parses the response head at the start of `bytes`, for a request with `method`. An
/// interim answer (`1xx` but `101`) is reported with `Framing::Empty` and status below 200.
pub fn parse_response(bytes: &[u8], method: &Method) -> Result<ResponseHead, BadResponse> {
    let mut fields = [httparse::EMPTY_HEADER; MAX_FIELDS];
    let mut response = httparse::Response::new(&mut fields);
    let len = match response.parse(bytes) {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) => return Err(BadResponse::Partial),
        Err(_) => return Err(BadResponse::Invalid),
    };
    let status = response.code.ok_or(BadResponse::Invalid)?;
    if status == 101 || StatusCode::from_u16(status).is_err() {
        return Err(BadResponse::Invalid);
    }
    let mut reusable = response.version == Some(1);
    let (mut length, mut chunked) = (None, false);
    for field in response.headers.iter() {
        if field.name.eq_ignore_ascii_case("content-length") {
            let n = std::str::from_utf8(field.value).ok().and_then(|v| v.trim().parse::<u64>().ok());
            let n = n.ok_or(BadResponse::Invalid)?;
            if length.is_some_and(|l| l != n) {
                return Err(BadResponse::Invalid);
            }
            length = Some(n);
        } else if field.name.eq_ignore_ascii_case("transfer-encoding") {
            // Chunked must be the last coding; anything else is read to the end.
            let last = field.value.rsplit(|b| *b == b',').next().unwrap_or_default().trim_ascii();
            chunked = last.eq_ignore_ascii_case(b"chunked");
            if !chunked {
                length = None;
            }
        } else if field.name.eq_ignore_ascii_case("connection")
            && field.value.split(|b| *b == b',').any(|t| t.trim_ascii().eq_ignore_ascii_case(b"close"))
        {
            reusable = false;
        }
    }
    let transfer = response.headers.iter().any(|f| f.name.eq_ignore_ascii_case("transfer-encoding"));
    let framing = if status < 200 || status == 204 || status == 304 || *method == Method::HEAD {
        Framing::Empty
    } else if chunked {
        Framing::Chunked
    } else if transfer {
        Framing::Close
    } else {
        match length {
            Some(0) => Framing::Empty,
            Some(n) => Framing::Length(n),
            None => Framing::Close,
        }
    };
    if framing == Framing::Close {
        reusable = false;
    }
    Ok(ResponseHead { len, status, framing, reusable })
}

/// Fields a backend sends that the client does not get as sent.
fn replaced_downstream(name: &str, connection_named: &[&[u8]]) -> bool {
    const NAMES: [&str; 6] = ["connection", "keep-alive", "proxy-connection", "te", "trailer", "upgrade"];
    NAMES.iter().any(|n| name.eq_ignore_ascii_case(n))
        || name.eq_ignore_ascii_case("traceparent")
        || name.eq_ignore_ascii_case(X_REQUEST_ID.as_str())
        || name.eq_ignore_ascii_case(X_UPSTREAM_INSTANCE.as_str())
        || connection_named.iter().any(|n| name.as_bytes().eq_ignore_ascii_case(n))
}

/// Writes the head the client gets for the backend's head (`bytes[..head.len]`): its status
/// line and fields but the hop-by-hop ones, then `X-Request-Id`, `X-Upstream-Instance`,
/// `traceparent`, and `Connection: close` when `close`.
pub fn write_client_head(out: &mut Vec<u8>, bytes: &[u8], head: &ResponseHead, added: &Added<'_>, close: bool) {
    let mut fields = [httparse::EMPTY_HEADER; MAX_FIELDS];
    let mut response = httparse::Response::new(&mut fields);
    // Parsed once already: it parses the same way again.
    let _ = response.parse(&bytes[..head.len]);
    let reason = response.reason.unwrap_or("");
    out.extend_from_slice(b"HTTP/1.1 ");
    out.extend_from_slice(itoa3(head.status).as_slice());
    out.push(b' ');
    out.extend_from_slice(reason.as_bytes());
    out.extend_from_slice(b"\r\n");
    let mut named: [&[u8]; 8] = [&[]; 8];
    let mut n = 0;
    for field in response.headers.iter().filter(|f| f.name.eq_ignore_ascii_case("connection")) {
        for token in field.value.split(|b| *b == b',').map(<[u8]>::trim_ascii).filter(|t| !t.is_empty()) {
            if n < named.len() {
                named[n] = token;
                n += 1;
            }
        }
    }
    let chunked = head.framing == Framing::Chunked;
    for field in response.headers.iter() {
        if replaced_downstream(field.name, &named[..n])
            || (chunked && field.name.eq_ignore_ascii_case("content-length"))
        {
            continue;
        }
        field_line(out, field.name.as_bytes(), field.value);
    }
    added.write(out, close);
}

/// The fields the balancer adds to every answer it passes on or makes.
pub struct Added<'a> {
    pub request_id: &'a HeaderValue,
    pub instance: Option<&'a HeaderValue>,
    pub traceparent: &'a HeaderValue,
}

impl Added<'_> {
    fn write(&self, out: &mut Vec<u8>, close: bool) {
        field_line(out, X_REQUEST_ID.as_str().as_bytes(), self.request_id.as_bytes());
        if let Some(instance) = self.instance {
            field_line(out, X_UPSTREAM_INSTANCE.as_str().as_bytes(), instance.as_bytes());
        }
        field_line(out, b"traceparent", self.traceparent.as_bytes());
        if close {
            out.extend_from_slice(b"connection: close\r\n");
        }
        out.extend_from_slice(b"\r\n");
    }
}

/// A whole answer of the balancer's own: `{"error": message}` with `status`.
pub fn write_refusal(out: &mut Vec<u8>, status: StatusCode, message: &str, added: &Added<'_>, close: bool) {
    let body = serde_json::to_vec(&serde_json::json!({ "error": message })).unwrap_or_default();
    out.extend_from_slice(b"HTTP/1.1 ");
    out.extend_from_slice(itoa3(status.as_u16()).as_slice());
    out.push(b' ');
    out.extend_from_slice(status.canonical_reason().unwrap_or("").as_bytes());
    out.extend_from_slice(b"\r\ncontent-type: application/json\r\ncontent-length: ");
    out.extend_from_slice(body.len().to_string().as_bytes());
    out.extend_from_slice(b"\r\ndate: ");
    out.extend_from_slice(httpdate::fmt_http_date(std::time::SystemTime::now()).as_bytes());
    out.extend_from_slice(b"\r\n");
    added.write(out, close);
    out.extend_from_slice(&body);
}

fn itoa3(status: u16) -> [u8; 3] {
    [b'0' + (status / 100 % 10) as u8, b'0' + (status / 10 % 10) as u8, b'0' + (status % 10) as u8]
}

/// Finds the end of a chunked body in the bytes that pass (which go on unchanged).
#[derive(Debug, Default)]
pub struct Chunks {
    state: ChunkState,
    /// The size read so far on a size line.
    size: u64,
    /// A digit was read on the size line.
    digits: bool,
}

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
enum ChunkState {
    /// Reading a chunk-size line's hex digits.
    #[default]
    Size,
    /// Past the digits (an extension), up to the line's `\n`.
    SizeRest,
    /// In a chunk's data: this many bytes left.
    Data(u64),
    /// The `\r\n` after a chunk's data.
    DataEnd,
    /// At the start of a trailer line (after the last chunk).
    TrailerStart,
    /// Within a trailer line.
    Trailer,
    Done,
}

/// A chunked body that does not parse.
#[derive(Debug, PartialEq, Eq)]
pub struct BadChunk;

impl Chunks {
    /// Scans `bytes`; returns how many belong to the body (all of them, or up to its end).
    pub fn scan(&mut self, bytes: &[u8]) -> Result<usize, BadChunk> {
        let mut at = 0;
        while at < bytes.len() {
            let b = bytes[at];
            match self.state {
                ChunkState::Done => return Ok(at),
                ChunkState::Data(left) => {
                    let take = (left.min((bytes.len() - at) as u64)) as usize;
                    at += take;
                    let left = left - take as u64;
                    self.state = if left == 0 { ChunkState::DataEnd } else { ChunkState::Data(left) };
                    continue;
                }
                ChunkState::Size => match (b as char).to_digit(16) {
                    Some(d) => {
                        self.size = self.size.checked_mul(16).and_then(|s| s.checked_add(d.into())).ok_or(BadChunk)?;
                        self.digits = true;
                    }
                    None if self.digits && matches!(b, b'\r' | b'\n' | b';' | b' ' | b'\t') => {
                        self.state = ChunkState::SizeRest;
                        continue;
                    }
                    None => return Err(BadChunk),
                },
                ChunkState::SizeRest => {
                    if b == b'\n' {
                        let size = std::mem::take(&mut self.size);
                        self.digits = false;
                        self.state = if size == 0 { ChunkState::TrailerStart } else { ChunkState::Data(size) };
                    }
                }
                ChunkState::DataEnd => match b {
                    b'\r' => {}
                    b'\n' => self.state = ChunkState::Size,
                    _ => return Err(BadChunk),
                },
                ChunkState::TrailerStart => match b {
                    b'\r' => {}
                    b'\n' => self.state = ChunkState::Done,
                    _ => self.state = ChunkState::Trailer,
                },
                ChunkState::Trailer => {
                    if b == b'\n' {
                        self.state = ChunkState::TrailerStart;
                    }
                }
            }
            at += 1;
        }
        Ok(at)
    }

    pub fn done(&self) -> bool {
        self.state == ChunkState::Done
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn head(bytes: &[u8]) -> Option<(usize, Method, String, usize, bool, bool)> {
        let mut fields = [httparse::EMPTY_HEADER; MAX_FIELDS];
        match parse_request(bytes, &mut fields, 1000) {
            Parsed::Head(h) => Some((h.len, h.method, h.path.to_owned(), h.body, h.idempotent, h.close)),
            _ => None,
        }
    }

    #[test]
    fn common_requests_take_the_fast_path_and_others_do_not() {
        let get = b"GET /api/data/x?y=1 HTTP/1.1\r\nHost: a\r\n\r\n";
        assert_eq!(head(get), Some((get.len(), Method::GET, "/api/data/x?y=1".into(), 0, true, false)));
        let post = b"POST /a HTTP/1.1\r\nhost: a\r\ncontent-length: 3\r\nconnection: close\r\n\r\nabc";
        assert_eq!(head(post), Some((post.len() - 3, Method::POST, "/a".into(), 3, false, true)));
        let keyed = b"POST /a HTTP/1.1\r\nhost: a\r\nIdempotency-Key: k\r\n\r\n";
        assert!(head(keyed).unwrap().4, "an Idempotency-Key makes it idempotent");
        let mut fields = [httparse::EMPTY_HEADER; MAX_FIELDS];
        assert!(matches!(parse_request(b"GET / HTTP/1.1\r\nHost: a\r\n", &mut fields, 10), Parsed::Partial));
        for other in [
            &b"GET / HTTP/1.0\r\nHost: a\r\n\r\n"[..],
            b"GET http://x/ HTTP/1.1\r\nHost: a\r\n\r\n",
            b"GET / HTTP/1.1\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost: a\r\nUpgrade: websocket\r\nConnection: upgrade\r\n\r\n",
            b"POST / HTTP/1.1\r\nHost: a\r\nExpect: 100-continue\r\ncontent-length: 1\r\n\r\n",
            b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n",
            b"POST / HTTP/1.1\r\nHost: a\r\ncontent-length: 1001\r\n\r\n",
            b"POST / HTTP/1.1\r\nHost: a\r\ncontent-length: 1\r\ncontent-length: 2\r\n\r\n",
            b"POST / HTTP/1.1\r\nHost: a\r\ncontent-length: x\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost: a\r\nConnection: x-secret\r\n\r\n",
            b"G\x01T / HTTP/1.1\r\n\r\n",
        ] {
            let mut fields = [httparse::EMPTY_HEADER; MAX_FIELDS];
            assert!(matches!(parse_request(other, &mut fields, 1000), Parsed::Other), "{}", other.escape_ascii());
        }
    }

    #[test]
    fn the_upstream_head_replaces_what_the_balancer_sets() {
        let bytes = b"GET /x HTTP/1.1\r\nHost: a\r\nX-Request-Id: old\r\nKeep-Alive: 5\r\nX-Forwarded-For: 1.2.3.4\r\n\
            traceparent: t\r\nx-real-ip: 9.9.9.9\r\nAccept: */*\r\n\r\n";
        let mut fields = [httparse::EMPTY_HEADER; MAX_FIELDS];
        let Parsed::Head(head) = parse_request(bytes, &mut fields, 0) else { panic!("a head") };
        assert_eq!(head.request_id, Some(&b"old"[..]));
        let mut out = Vec::new();
        let (id, peer, trace) =
            (HeaderValue::from_static("id"), HeaderValue::from_static("127.0.0.1"), HeaderValue::from_static("tp"));
        write_upstream_head(&mut out, &head, &id, &peer, &trace);
        let expected = "GET /x HTTP/1.1\r\nHost: a\r\nAccept: */*\r\nx-request-id: id\r\nx-real-ip: 127.0.0.1\r\n\
            x-forwarded-for: 1.2.3.4, 127.0.0.1\r\ntraceparent: tp\r\n\r\n";
        assert_eq!(String::from_utf8(out).unwrap(), expected);
    }

    #[test]
    fn response_framing_follows_the_rfc() {
        let framing = |bytes: &[u8], method: Method| parse_response(bytes, &method).map(|h| (h.framing, h.reusable));
        let ok = |fields: &str| format!("HTTP/1.1 200 OK\r\n{fields}\r\n").into_bytes();
        assert_eq!(framing(&ok("content-length: 5\r\n"), Method::GET), Ok((Framing::Length(5), true)));
        assert_eq!(framing(&ok("content-length: 0\r\n"), Method::GET), Ok((Framing::Empty, true)));
        assert_eq!(framing(&ok("content-length: 5\r\n"), Method::HEAD), Ok((Framing::Empty, true)));
        let chunked = ok("transfer-encoding: chunked\r\ncontent-length: 5\r\n");
        assert_eq!(framing(&chunked, Method::GET), Ok((Framing::Chunked, true)));
        assert_eq!(framing(&ok(""), Method::GET), Ok((Framing::Close, false)));
        assert_eq!(
            framing(&ok("content-length: 1\r\nconnection: close\r\n"), Method::GET),
            Ok((Framing::Length(1), false))
        );
        assert_eq!(framing(b"HTTP/1.1 204 No Content\r\n\r\n", Method::GET), Ok((Framing::Empty, true)));
        assert_eq!(
            framing(b"HTTP/1.0 200 OK\r\ncontent-length: 1\r\n\r\n", Method::GET),
            Ok((Framing::Length(1), false))
        );
        assert_eq!(framing(b"HTTP/1.1 200 OK\r\n", Method::GET).err(), Some(BadResponse::Partial));
        assert_eq!(framing(b"HTTP/1.1 101 Switching\r\n\r\n", Method::GET).err(), Some(BadResponse::Invalid));
        let two = ok("content-length: 1\r\ncontent-length: 2\r\n");
        assert_eq!(framing(&two, Method::GET).err(), Some(BadResponse::Invalid));
    }

    #[test]
    fn the_client_head_drops_hop_by_hop_fields_and_adds_the_balancers() {
        let bytes = b"HTTP/1.1 200 Fine\r\nConnection: x-a, keep-alive\r\nx-a: 1\r\nx-request-id: theirs\r\n\
            transfer-encoding: chunked\r\ncontent-length: 3\r\ncontent-type: text/plain\r\n\r\n";
        let head = parse_response(bytes, &Method::GET).unwrap();
        let (id, instance, trace) =
            (HeaderValue::from_static("id"), HeaderValue::from_static("data-1"), HeaderValue::from_static("tp"));
        let added = Added { request_id: &id, instance: Some(&instance), traceparent: &trace };
        let mut out = Vec::new();
        write_client_head(&mut out, bytes, &head, &added, true);
        let expected = "HTTP/1.1 200 Fine\r\ntransfer-encoding: chunked\r\ncontent-type: text/plain\r\n\
            x-request-id: id\r\nx-upstream-instance: data-1\r\ntraceparent: tp\r\nconnection: close\r\n\r\n";
        assert_eq!(String::from_utf8(out).unwrap(), expected);

        let mut out = Vec::new();
        let added = Added { instance: None, ..added };
        write_refusal(&mut out, StatusCode::BAD_GATEWAY, "no \"instance\"", &added, false);
        let text = String::from_utf8(out).unwrap();
        let (head, body) = text.split_once("\r\n\r\n").unwrap();
        assert!(head.starts_with("HTTP/1.1 502 Bad Gateway\r\n"), "{head}");
        assert!(head.contains(&format!("content-length: {}\r\n", body.len())), "{head}");
        let date = head.lines().find_map(|line| line.strip_prefix("date: ")).expect("a date field");
        assert!(httpdate::parse_http_date(date).is_ok(), "{date}");
        assert_eq!(serde_json::from_str::<serde_json::Value>(body).unwrap()["error"], "no \"instance\"");
    }

    #[test]
    fn chunked_bodies_end_where_their_last_chunk_and_trailers_end() {
        let body = b"5\r\nhello\r\n1;ext=1\r\n!\r\n0\r\nx-trailer: 1\r\n\r\nNEXT";
        let end = body.len() - 4;
        let mut chunks = Chunks::default();
        assert_eq!(chunks.scan(body), Ok(end));
        assert!(chunks.done());
        // Byte by byte, as reads may split it anywhere.
        let mut chunks = Chunks::default();
        let mut taken = 0;
        for b in body.chunks(1) {
            taken += chunks.scan(b).unwrap();
        }
        assert_eq!(taken, end);
        assert!(chunks.done());
        let mut chunks = Chunks::default();
        assert_eq!(chunks.scan(b"0\r\n\r\n"), Ok(5));
        assert!(chunks.done());
        assert_eq!(Chunks::default().scan(b"zz\r\n"), Err(BadChunk));
        assert_eq!(Chunks::default().scan(b"1\r\nab"), Err(BadChunk));
        assert_eq!(Chunks::default().scan(b"fffffffffffffffff\r\n"), Err(BadChunk));
    }
}

//! Who is logging in: the client address that failed logins are throttled by.
//!
//! The peer of the connection is the client, unless it is a proxy on this machine: a
//! loopback peer (the balancer, in the cluster) is trusted to say who its client is, in the
//! last `X-Forwarded-For` entry (the one the nearest proxy added; entries before it are
//! whatever the client sent), else in `X-Real-IP`. A remote peer is never believed, so a
//! client cannot pick its own identity by sending those headers.
//!
//! When the server does not tell the peer's address (no `ConnectInfo`), a listener bound
//! to loopback has only loopback peers, so the headers are trusted there; on any other
//! listener they are not, and every client of an account shares one key (safe: nobody can
//! dodge the throttle, at the cost of the owner sharing a guesser's delays).
//!
//! IPv6 addresses count by their /64 (one host usually holds a whole /64), and IPv4-mapped
//! IPv6 addresses as the IPv4 address.

use std::net::{IpAddr, Ipv6Addr, SocketAddr};

use axum::extract::{ConnectInfo, FromRequestParts};
use axum::http::HeaderMap;
use axum::http::request::Parts;

use crate::AppState;

/// A client's key in the throttle: an address (IPv6 as its /64), or `unknown`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Client(pub String);

impl FromRequestParts<AppState> for Client {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, Self::Rejection> {
        let peer = parts.extensions.get::<ConnectInfo<SocketAddr>>().map(|c| c.0.ip());
        Ok(identify(peer, &parts.headers, state.loopback_listener))
    }
}

/// The client of a request from `peer` (if known) with `headers`, on a listener bound to
/// loopback or not.
pub fn identify(peer: Option<IpAddr>, headers: &HeaderMap, loopback_listener: bool) -> Client {
    let trusted = match peer {
        Some(ip) => canonical(ip).is_loopback(),
        None => loopback_listener,
    };
    let forwarded = trusted.then(|| forwarded(headers)).flatten();
    match forwarded.or(peer) {
        Some(ip) => Client(key(ip)),
        None => Client("unknown".to_owned()),
    }
}

/// The address a trusted proxy gave: the last `X-Forwarded-For` entry, else `X-Real-IP`.
fn forwarded(headers: &HeaderMap) -> Option<IpAddr> {
    let parse = |s: &str| s.trim().parse::<IpAddr>().ok();
    // Several header lines form one list; the last line's last entry is the nearest proxy's.
    match headers.get_all("x-forwarded-for").iter().next_back() {
        Some(line) => parse(line.to_str().ok()?.rsplit(',').next()?),
        None => parse(headers.get("x-real-ip")?.to_str().ok()?),
    }
}

fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

fn key(ip: IpAddr) -> String {
    match canonical(ip) {
        IpAddr::V4(v4) => v4.to_string(),
        IpAddr::V6(v6) => {
            let s = v6.segments();
            format!("{}/64", Ipv6Addr::new(s[0], s[1], s[2], s[3], 0, 0, 0, 0))
        }
    }
}

#[cfg(test)]
mod tests {
    use axum::http::HeaderValue;

    use super::*;

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.append(*name, HeaderValue::from_static(value));
        }
        map
    }

    #[test]
    fn proxies_on_this_machine_are_believed_and_nobody_else() {
        let check = |peer: Option<&str>, sent: &[(&'static str, &'static str)], loopback: bool, expected: &str| {
            let peer = peer.map(|p| p.parse().unwrap());
            assert_eq!(identify(peer, &headers(sent), loopback).0, expected, "{peer:?} {sent:?} {loopback}");
        };
        let xff = "x-forwarded-for";
        // A loopback peer (the balancer): the entry it added, the last one.
        check(Some("127.0.0.1"), &[(xff, "203.0.113.9")], false, "203.0.113.9");
        check(Some("127.0.0.1"), &[(xff, "198.51.100.1, 203.0.113.9")], false, "203.0.113.9");
        check(Some("::1"), &[(xff, "1.1.1.1"), (xff, "203.0.113.9")], false, "203.0.113.9");
        check(Some("::ffff:127.0.0.1"), &[(xff, "203.0.113.9")], false, "203.0.113.9");
        check(Some("127.0.0.1"), &[("x-real-ip", "203.0.113.4")], false, "203.0.113.4");
        check(Some("127.0.0.1"), &[(xff, "203.0.113.9"), ("x-real-ip", "203.0.113.4")], false, "203.0.113.9");
        // Nothing usable: the peer itself.
        check(Some("127.0.0.1"), &[], false, "127.0.0.1");
        check(Some("127.0.0.1"), &[(xff, "not an address")], false, "127.0.0.1");
        // A remote peer is the client, whatever it says.
        check(Some("198.51.100.7"), &[(xff, "203.0.113.9")], true, "198.51.100.7");
        check(Some("198.51.100.7"), &[("x-real-ip", "127.0.0.1")], true, "198.51.100.7");
        // No peer address: believed only on a loopback listener.
        check(None, &[(xff, "203.0.113.9")], true, "203.0.113.9");
        check(None, &[(xff, "203.0.113.9")], false, "unknown");
        check(None, &[], true, "unknown");
        // IPv6 by /64; IPv4-mapped as IPv4.
        check(Some("2001:db8:1:2:3:4:5:6"), &[], false, "2001:db8:1:2::/64");
        check(Some("127.0.0.1"), &[(xff, "2001:db8:1:2::99")], false, "2001:db8:1:2::/64");
        check(Some("::ffff:198.51.100.7"), &[], false, "198.51.100.7");
    }
}

//! The detector's URLs: the one to connect to (`localhost` as 127.0.0.1), the one to
//! show (no credentials), a target's health URL, and the host-and-port key that matches
//! orch's instances to registry records however either spells its URL.

/// A URL fit to show: no user or password, no trailing slash.
pub fn display_url(url: &str) -> String {
    match reqwest::Url::parse(url) {
        Ok(mut parsed) => {
            let _ = parsed.set_username("");
            let _ = parsed.set_password(None);
            parsed.to_string().trim_end_matches('/').to_owned()
        }
        Err(_) => url.trim_end_matches('/').to_owned(),
    }
}

/// The URL to connect to: `localhost` becomes 127.0.0.1 (no DNS, no ::1).
pub fn loopback(url: &str) -> String {
    match reqwest::Url::parse(url) {
        Ok(mut parsed) if parsed.host_str() == Some("localhost") => {
            let _ = parsed.set_host(Some("127.0.0.1"));
            parsed.to_string().trim_end_matches('/').to_owned()
        }
        _ => url.trim_end_matches('/').to_owned(),
    }
}

pub fn health_url(url: &str) -> String {
    format!("{}/health", loopback(url))
}

/// Host and port, for matching orch's instances to targets whatever the spelling.
pub fn url_key(url: &str) -> Option<String> {
    let parsed = reqwest::Url::parse(&loopback(url)).ok()?;
    Some(format!("{}:{}", parsed.host_str()?, parsed.port_or_known_default()?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls() {
        assert_eq!(loopback("http://localhost:3001"), "http://127.0.0.1:3001");
        assert_eq!(loopback("http://localhost:3001/"), "http://127.0.0.1:3001");
        assert_eq!(loopback("http://10.0.0.1:80"), "http://10.0.0.1:80");
        assert_eq!(display_url("http://user:secret@localhost:3001/"), "http://localhost:3001");
        assert_eq!(url_key("http://localhost:3001"), url_key("http://127.0.0.1:3001/"));
        assert_eq!(health_url("http://localhost:3001/"), "http://127.0.0.1:3001/health");
    }
}

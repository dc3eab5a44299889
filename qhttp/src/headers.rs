//! Header rules of a proxy: hop-by-hop fields stay on their hop (RFC 9110 §7.6.1), and the
//! guest learns who the client was (X-Forwarded-*, RFC 7239 Forwarded).

use std::net::IpAddr;

use http::header::{self, HeaderMap, HeaderName, HeaderValue};

const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
const X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
const X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");
const KEEP_ALIVE: HeaderName = HeaderName::from_static("keep-alive");
const PROXY_CONNECTION: HeaderName = HeaderName::from_static("proxy-connection");

/// Removes the fields that describe one connection: those RFC 9110 names and any the
/// Connection field lists.
pub fn strip_hop_by_hop(headers: &mut HeaderMap) {
    let listed: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|name| HeaderName::from_bytes(name.trim().as_bytes()).ok())
        .collect();
    for name in listed {
        headers.remove(name);
    }
    for name in [
        header::CONNECTION,
        PROXY_CONNECTION,
        KEEP_ALIVE,
        header::TE,
        header::TRANSFER_ENCODING,
        header::UPGRADE,
    ] {
        headers.remove(name);
    }
}

/// Tells the guest where the request came from. Unless `trust` is set, what the client
/// claimed in these headers is dropped first (it could claim any address).
pub fn add_forwarded(headers: &mut HeaderMap, client: IpAddr, host: Option<&str>, trust: bool) {
    if !trust {
        for name in [
            X_FORWARDED_FOR,
            X_FORWARDED_PROTO,
            X_FORWARDED_HOST,
            header::FORWARDED,
        ] {
            headers.remove(name);
        }
    }
    let ip = client.to_string();
    append_list(headers, X_FORWARDED_FOR, &ip);
    if !headers.contains_key(X_FORWARDED_PROTO) {
        headers.insert(X_FORWARDED_PROTO, HeaderValue::from_static("http"));
    }
    if let Some(h) = host.and_then(|h| HeaderValue::from_str(h).ok()) {
        if !headers.contains_key(X_FORWARDED_HOST) {
            headers.insert(X_FORWARDED_HOST, h);
        }
    }
    // RFC 7239: an IPv6 node is quoted and bracketed; a host is quoted (it may hold a port).
    let node = match client {
        IpAddr::V4(_) => ip,
        IpAddr::V6(_) => format!("\"[{ip}]\""),
    };
    let mut element = format!("for={node};proto=http");
    if let Some(h) = host.filter(|h| h.bytes().all(|b| b.is_ascii_graphic() && b != b'"')) {
        element.push_str(&format!(";host=\"{h}\""));
    }
    append_list(headers, header::FORWARDED, &element);
}

/// Appends `item` to a comma-separated field, joining repeated fields into one.
fn append_list(headers: &mut HeaderMap, name: HeaderName, item: &str) {
    let mut parts: Vec<String> = headers
        .get_all(&name)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .map(str::to_string)
        .collect();
    parts.push(item.to_string());
    if let Ok(v) = HeaderValue::from_str(&parts.join(", ")) {
        headers.insert(name, v);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut m = HeaderMap::new();
        for (k, v) in pairs {
            m.append(
                HeaderName::from_bytes(k.as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        m
    }

    #[test]
    fn hop_by_hop_fields_and_those_connection_lists_are_removed() {
        let mut h = map(&[
            ("connection", "keep-alive, X-Secret"),
            ("x-secret", "1"),
            ("keep-alive", "timeout=5"),
            ("transfer-encoding", "chunked"),
            ("te", "trailers"),
            ("upgrade", "websocket"),
            ("proxy-connection", "close"),
            ("content-type", "text/plain"),
        ]);
        strip_hop_by_hop(&mut h);
        assert_eq!(h.len(), 1, "{h:?}");
        assert!(h.contains_key("content-type"));
    }

    #[test]
    fn forwarded_headers_replace_or_extend_what_the_client_sent() {
        let client: IpAddr = "10.0.0.9".parse().unwrap();
        let mut h = map(&[("x-forwarded-for", "1.2.3.4"), ("forwarded", "for=1.2.3.4")]);
        add_forwarded(&mut h, client, Some("shop:8080"), false);
        assert_eq!(h["x-forwarded-for"], "10.0.0.9");
        assert_eq!(h["x-forwarded-proto"], "http");
        assert_eq!(h["x-forwarded-host"], "shop:8080");
        assert_eq!(h["forwarded"], "for=10.0.0.9;proto=http;host=\"shop:8080\"");

        let mut h = map(&[
            ("x-forwarded-for", "1.2.3.4"),
            ("x-forwarded-for", "5.6.7.8"),
        ]);
        add_forwarded(&mut h, "::1".parse().unwrap(), None, true);
        assert_eq!(h["x-forwarded-for"], "1.2.3.4, 5.6.7.8, ::1");
        assert_eq!(h["forwarded"], "for=\"[::1]\";proto=http");
    }
}

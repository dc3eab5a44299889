//! Choosing a route: by Host (exact, case-insensitive, port ignored; a route without a host
//! matches any) and then the longest path prefix that ends at a segment boundary.

use crate::config::{Route, Upstream};

/// One listener's routes, ready for matching.
#[derive(Clone, Debug)]
pub struct Router {
    routes: Vec<Entry>,
}

#[derive(Clone, Debug)]
struct Entry {
    host: Option<String>,
    prefix: String,
    upstream: Upstream,
    /// The route's name in logs and metrics: `host/prefix` or `*/prefix`.
    name: String,
}

/// The route a request takes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Matched<'a> {
    pub name: &'a str,
    pub upstream: Upstream,
}

impl Router {
    pub fn new(routes: &[Route]) -> Router {
        let mut routes: Vec<Entry> = routes
            .iter()
            .map(|r| Entry {
                host: r.host.as_ref().map(|h| h.to_ascii_lowercase()),
                prefix: r.path_prefix.clone(),
                upstream: r.upstream,
                name: format!("{}{}", r.host.as_deref().unwrap_or("*"), r.path_prefix),
            })
            .collect();
        // Most specific first: a named host before the wildcard, then longer prefixes.
        routes.sort_by(|a, b| {
            b.host
                .is_some()
                .cmp(&a.host.is_some())
                .then(b.prefix.len().cmp(&a.prefix.len()))
        });
        Router { routes }
    }

    /// The route for a request to `host` (a Host header or URI authority, port allowed)
    /// and `path`.
    pub fn route(&self, host: Option<&str>, path: &str) -> Option<Matched<'_>> {
        let host = host.map(strip_port).map(str::to_ascii_lowercase);
        self.routes
            .iter()
            .find(|e| {
                e.host
                    .as_ref()
                    .is_none_or(|h| host.as_deref() == Some(h.as_str()))
                    && prefix_matches(&e.prefix, path)
            })
            .map(|e| Matched {
                name: &e.name,
                upstream: e.upstream,
            })
    }
}

/// `example.com:8080` -> `example.com`; `[::1]:80` -> `[::1]`.
fn strip_port(host: &str) -> &str {
    match host.rfind(':') {
        Some(i)
            if !host[i..].contains(']') && host[i + 1..].bytes().all(|b| b.is_ascii_digit()) =>
        {
            &host[..i]
        }
        _ => host,
    }
}

/// `/api` matches `/api`, `/api/x` and `/api?q`, not `/apiary`.
fn prefix_matches(prefix: &str, path: &str) -> bool {
    match path.strip_prefix(prefix) {
        Some(rest) => prefix.ends_with('/') || rest.is_empty() || rest.starts_with(['/', '?']),
        None => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn route(host: Option<&str>, prefix: &str, port: u16) -> Route {
        Route {
            host: host.map(str::to_string),
            path_prefix: prefix.into(),
            upstream: Upstream::Port(port),
        }
    }

    #[test]
    fn most_specific_route_wins() {
        let r = Router::new(&[
            route(None, "/", 1),
            route(None, "/api", 2),
            route(Some("Shop.Example"), "/", 3),
            route(Some("shop.example"), "/api/v2", 4),
        ]);
        let port = |h: Option<&str>, p: &str| r.route(h, p).map(|m| m.upstream.addr().port());
        assert_eq!(port(None, "/"), Some(1));
        assert_eq!(port(Some("other"), "/api/x"), Some(2));
        assert_eq!(port(Some("other"), "/apiary"), Some(1));
        assert_eq!(port(Some("shop.example:8080"), "/api"), Some(3));
        assert_eq!(port(Some("SHOP.example"), "/api/v2?x=1"), Some(4));
        assert_eq!(
            r.route(Some("shop.example"), "/api/v2/y").unwrap().name,
            "shop.example/api/v2"
        );
        let only_host = Router::new(&[route(Some("a"), "/", 1)]);
        assert_eq!(only_host.route(Some("b"), "/"), None);
        assert_eq!(only_host.route(None, "/"), None);
    }

    #[test]
    fn ports_are_stripped_from_hosts_but_not_from_ipv6_literals() {
        assert_eq!(strip_port("a:80"), "a");
        assert_eq!(strip_port("[::1]:80"), "[::1]");
        assert_eq!(strip_port("[::1]"), "[::1]");
        assert_eq!(strip_port("a"), "a");
    }
}

//! What a proxy serves: listeners with their routes, timeouts, limits and header policy.
//!
//! The daemon reads it as JSON (`qnet serve --http-proxy FILE`); a container gives it in its
//! config.json annotations ([`Config::from_annotations`], keys in docs/qhttp.md). Everything is
//! checked before anything listens, with one clear error per problem.

use std::collections::{BTreeMap, HashSet};
use std::net::{Ipv4Addr, SocketAddr};
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// The annotation holding a whole [`Config`] as JSON.
pub const CONFIG_ANNOTATION: &str = "dev.quark.qhttp.config";
/// Prefix of the one-setting annotations (`dev.quark.qhttp.routes`, ...).
pub const ANNOTATION_PREFIX: &str = "dev.quark.qhttp.";

/// The smallest header limit (hyper's smallest read buffer).
pub const MIN_HEADER_BYTES: usize = 8192;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ConfigError {
    #[error("qhttp config: {0}")]
    Invalid(String),
}

fn invalid(msg: impl Into<String>) -> ConfigError {
    ConfigError::Invalid(msg.into())
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Config {
    pub listeners: Vec<Listener>,
    /// Port of the Prometheus text endpoint (on the stack's addresses), if any.
    #[serde(default)]
    pub metrics_port: Option<u16>,
    #[serde(default)]
    pub timeouts: Timeouts,
    #[serde(default)]
    pub limits: Limits,
    /// Keep the X-Forwarded-For / Forwarded headers a client sent and append to them. Off by
    /// default: a client could otherwise claim any address to the guest.
    #[serde(default)]
    pub trust_forwarded: bool,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Listener {
    pub port: u16,
    pub routes: Vec<Route>,
}

/// Requests whose Host matches `host` (any host when absent) and whose path starts with
/// `path_prefix` go to `upstream`. The most specific route wins: a host match over a
/// wildcard, then the longest prefix.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Route {
    #[serde(default)]
    pub host: Option<String>,
    #[serde(default = "root_prefix")]
    pub path_prefix: String,
    pub upstream: Upstream,
}

fn root_prefix() -> String {
    "/".into()
}

/// Where the guest listens: a port (on 127.0.0.1, inside the stack) or an address.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Upstream {
    Port(u16),
    Addr(SocketAddr),
}

impl Upstream {
    pub fn addr(self) -> SocketAddr {
        match self {
            Upstream::Port(p) => SocketAddr::from((Ipv4Addr::LOCALHOST, p)),
            Upstream::Addr(a) => a,
        }
    }
}

/// Timeouts in milliseconds (serde) / as durations (accessors).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Timeouts {
    /// From the moment a connection waits for a request until its headers are complete
    /// (slowloris clients are cut here, before the guest sees anything).
    pub header_read_ms: u64,
    /// A connection with no request in flight and no bytes moving is closed after this.
    pub idle_ms: u64,
    pub upstream_connect_ms: u64,
    /// From sending a request to the guest until its response headers arrive.
    pub upstream_response_ms: u64,
}

impl Default for Timeouts {
    fn default() -> Self {
        Timeouts {
            header_read_ms: 10_000,
            idle_ms: 60_000,
            upstream_connect_ms: 2_000,
            upstream_response_ms: 60_000,
        }
    }
}

impl Timeouts {
    pub fn header_read(&self) -> Duration {
        Duration::from_millis(self.header_read_ms)
    }
    pub fn idle(&self) -> Duration {
        Duration::from_millis(self.idle_ms)
    }
    pub fn upstream_connect(&self) -> Duration {
        Duration::from_millis(self.upstream_connect_ms)
    }
    pub fn upstream_response(&self) -> Duration {
        Duration::from_millis(self.upstream_response_ms)
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Limits {
    /// Request line plus headers (431 past it).
    pub header_bytes: usize,
    /// Request body (413 past it); `None` for no limit.
    pub body_bytes: Option<u64>,
    /// Open connections from one client address (further ones get 429 and are closed).
    pub connections_per_client: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            header_bytes: 16 * 1024,
            body_bytes: None,
            connections_per_client: 1024,
        }
    }
}

impl Config {
    pub fn from_json(text: &str) -> Result<Config, ConfigError> {
        let cfg: Config = serde_json::from_str(text).map_err(|e| invalid(e.to_string()))?;
        cfg.validate()?;
        Ok(cfg)
    }

    /// The proxy a container's annotations ask for, or `None` when they name none. Either the
    /// whole config as JSON in [`CONFIG_ANNOTATION`], or one setting per key:
    ///
    /// - `routes`: `;`-separated `[PORT:][HOST]/PREFIX=UPSTREAM`, e.g.
    ///   `80:api.example.com/v1=8080;80:/=8081` (PORT defaults to 80, UPSTREAM is a guest port
    ///   or address:port);
    /// - `metrics-port`; `trust-forwarded` (`true`/`false`);
    /// - `timeout.header-read`, `timeout.idle`, `timeout.upstream-connect`,
    ///   `timeout.upstream-response` (`500ms`, `10s`, `2m`);
    /// - `limit.header-bytes`, `limit.body-bytes`, `limit.connections-per-client`.
    pub fn from_annotations<'a>(
        annotations: impl IntoIterator<Item = (&'a String, &'a String)>,
    ) -> Result<Option<Config>, ConfigError> {
        // Sorted, so errors and listener order do not depend on the map's order.
        let all: BTreeMap<&str, &str> = annotations
            .into_iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        if let Some(json) = all.get(CONFIG_ANNOTATION) {
            return Config::from_json(json).map(Some);
        }
        let settings: Vec<(&str, &str)> = all
            .iter()
            .filter_map(|(k, v)| Some((k.strip_prefix(ANNOTATION_PREFIX)?, *v)))
            .collect();
        if settings.is_empty() {
            return Ok(None);
        }
        let mut cfg = Config {
            listeners: Vec::new(),
            metrics_port: None,
            timeouts: Timeouts::default(),
            limits: Limits::default(),
            trust_forwarded: false,
        };
        for (key, value) in settings {
            let bad = |why: &str| {
                invalid(format!(
                    "annotation {ANNOTATION_PREFIX}{key}={value:?}: {why}"
                ))
            };
            match key {
                "routes" => cfg.listeners = parse_routes(value).map_err(|e| bad(&e))?,
                "metrics-port" => {
                    cfg.metrics_port = Some(value.parse().map_err(|_| bad("not a port"))?)
                }
                "trust-forwarded" => {
                    cfg.trust_forwarded =
                        value.parse().map_err(|_| bad("expected true or false"))?
                }
                "timeout.header-read" => {
                    cfg.timeouts.header_read_ms = millis(value).map_err(|e| bad(&e))?
                }
                "timeout.idle" => cfg.timeouts.idle_ms = millis(value).map_err(|e| bad(&e))?,
                "timeout.upstream-connect" => {
                    cfg.timeouts.upstream_connect_ms = millis(value).map_err(|e| bad(&e))?
                }
                "timeout.upstream-response" => {
                    cfg.timeouts.upstream_response_ms = millis(value).map_err(|e| bad(&e))?
                }
                "limit.header-bytes" => {
                    cfg.limits.header_bytes = value.parse().map_err(|_| bad("not a byte count"))?
                }
                "limit.body-bytes" => {
                    cfg.limits.body_bytes =
                        Some(value.parse().map_err(|_| bad("not a byte count"))?)
                }
                "limit.connections-per-client" => {
                    cfg.limits.connections_per_client =
                        value.parse().map_err(|_| bad("not a count"))?
                }
                _ => return Err(bad("unknown qhttp setting")),
            }
        }
        if cfg.listeners.is_empty() {
            return Err(invalid(format!(
                "annotations {ANNOTATION_PREFIX}* need {ANNOTATION_PREFIX}routes"
            )));
        }
        cfg.validate()?;
        Ok(Some(cfg))
    }

    /// Checks everything that would otherwise fail late or surprise: ports, routes, limits.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.listeners.is_empty() {
            return Err(invalid("no listeners"));
        }
        let mut ports = HashSet::new();
        for l in &self.listeners {
            if l.port == 0 {
                return Err(invalid("listener port 0"));
            }
            if !ports.insert(l.port) {
                return Err(invalid(format!("port {} has two listeners", l.port)));
            }
            if l.routes.is_empty() {
                return Err(invalid(format!("listener {} has no routes", l.port)));
            }
            let mut seen = HashSet::new();
            for r in &l.routes {
                if !r.path_prefix.starts_with('/') {
                    return Err(invalid(format!(
                        "path prefix {:?} must start with /",
                        r.path_prefix
                    )));
                }
                if let Some(h) = &r.host {
                    if h.is_empty() || h.contains(['/', ' ']) {
                        return Err(invalid(format!("host {h:?} is not a host name")));
                    }
                }
                if r.upstream.addr().port() == 0 {
                    return Err(invalid("upstream port 0"));
                }
                if !seen.insert((
                    r.host.as_deref().map(str::to_ascii_lowercase),
                    &r.path_prefix,
                )) {
                    return Err(invalid(format!(
                        "listener {}: two routes for host {:?} prefix {:?}",
                        l.port, r.host, r.path_prefix
                    )));
                }
            }
        }
        if let Some(m) = self.metrics_port {
            if m == 0 || ports.contains(&m) {
                return Err(invalid(format!("metrics port {m} is 0 or a listener's")));
            }
        }
        let t = &self.timeouts;
        for (name, v) in [
            ("headerReadMs", t.header_read_ms),
            ("idleMs", t.idle_ms),
            ("upstreamConnectMs", t.upstream_connect_ms),
            ("upstreamResponseMs", t.upstream_response_ms),
        ] {
            if v == 0 {
                return Err(invalid(format!("timeout {name} is 0")));
            }
        }
        // The limit is hyper's read buffer, which has an 8 KiB floor.
        if self.limits.header_bytes < MIN_HEADER_BYTES {
            return Err(invalid(format!("headerBytes below {MIN_HEADER_BYTES}")));
        }
        if self.limits.connections_per_client == 0 {
            return Err(invalid("connectionsPerClient is 0"));
        }
        Ok(())
    }
}

/// `500ms`, `10s`, `2m`, or plain milliseconds.
fn millis(v: &str) -> Result<u64, String> {
    let v = v.trim();
    let (num, scale) = if let Some(n) = v.strip_suffix("ms") {
        (n, 1)
    } else if let Some(n) = v.strip_suffix('s') {
        (n, 1000)
    } else if let Some(n) = v.strip_suffix('m') {
        (n, 60_000)
    } else {
        (v, 1)
    };
    num.trim()
        .parse::<u64>()
        .ok()
        .and_then(|n| n.checked_mul(scale))
        .ok_or_else(|| "expected a duration such as 500ms, 10s or 2m".into())
}

/// `[PORT:][HOST]/PREFIX=UPSTREAM;...` into listeners, in the order their ports first appear.
fn parse_routes(spec: &str) -> Result<Vec<Listener>, String> {
    let mut listeners: Vec<Listener> = Vec::new();
    for item in spec.split(';').map(str::trim).filter(|s| !s.is_empty()) {
        let (lhs, upstream) = item
            .split_once('=')
            .ok_or_else(|| format!("route {item:?} has no =UPSTREAM"))?;
        let upstream =
            match upstream.trim().parse::<u16>() {
                Ok(p) => Upstream::Port(p),
                Err(_) => Upstream::Addr(upstream.trim().parse().map_err(|_| {
                    format!("upstream {upstream:?} is neither a port nor an address")
                })?),
            };
        let (port, rest) = match lhs.split_once(':') {
            Some((p, rest)) => (
                p.parse::<u16>()
                    .map_err(|_| format!("listener port {p:?} in {item:?}"))?,
                rest,
            ),
            None => (80, lhs),
        };
        let slash = rest
            .find('/')
            .ok_or_else(|| format!("route {item:?} has no /PATH prefix"))?;
        let host = (slash > 0).then(|| rest[..slash].to_string());
        let route = Route {
            host,
            path_prefix: rest[slash..].to_string(),
            upstream,
        };
        match listeners.iter_mut().find(|l| l.port == port) {
            Some(l) => l.routes.push(route),
            None => listeners.push(Listener {
                port,
                routes: vec![route],
            }),
        }
    }
    Ok(listeners)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ann(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn annotations_build_listeners_routes_and_settings() {
        let cfg = Config::from_annotations(&ann(&[
            (
                "dev.quark.qhttp.routes",
                "80:api.example.com/v1=8080; /=8081;8443:/=10.0.0.5:9000",
            ),
            ("dev.quark.qhttp.metrics-port", "9100"),
            ("dev.quark.qhttp.timeout.header-read", "2s"),
            ("dev.quark.qhttp.timeout.upstream-response", "1m"),
            ("dev.quark.qhttp.limit.body-bytes", "1048576"),
            ("dev.quark.qhttp.trust-forwarded", "true"),
            ("unrelated", "x"),
        ]))
        .unwrap()
        .unwrap();
        assert_eq!(cfg.listeners.len(), 2);
        assert_eq!(cfg.listeners[0].port, 80);
        assert_eq!(
            cfg.listeners[0].routes[0].host.as_deref(),
            Some("api.example.com")
        );
        assert_eq!(cfg.listeners[0].routes[0].path_prefix, "/v1");
        assert_eq!(cfg.listeners[0].routes[1].upstream, Upstream::Port(8081));
        assert_eq!(
            cfg.listeners[1].routes[0].upstream.addr(),
            "10.0.0.5:9000".parse().unwrap()
        );
        assert_eq!(cfg.metrics_port, Some(9100));
        assert_eq!(cfg.timeouts.header_read_ms, 2000);
        assert_eq!(cfg.timeouts.upstream_response_ms, 60_000);
        assert_eq!(cfg.limits.body_bytes, Some(1 << 20));
        assert!(cfg.trust_forwarded);
        assert_eq!(Config::from_annotations(&ann(&[("a", "b")])).unwrap(), None);
    }

    #[test]
    fn bad_settings_are_named_in_the_error() {
        for (k, v, want) in [
            ("dev.quark.qhttp.routes", "80:/", "no =UPSTREAM"),
            ("dev.quark.qhttp.routes", "x:/=80", "listener port"),
            ("dev.quark.qhttp.routes", "host=80", "no /PATH"),
            ("dev.quark.qhttp.routes", "/=nowhere", "neither a port"),
            ("dev.quark.qhttp.routes", "/=80;/=81", "two routes"),
            ("dev.quark.qhttp.routes", "/=0", "upstream port 0"),
            ("dev.quark.qhttp.timeout.idle", "soon", "duration"),
            ("dev.quark.qhttp.timeout.idle", "0s", "idleMs is 0"),
            ("dev.quark.qhttp.colour", "blue", "unknown qhttp setting"),
            ("dev.quark.qhttp.metrics-port", "80", "metrics port 80"),
            (
                "dev.quark.qhttp.config",
                "{\"listeners\": 3}",
                "invalid type",
            ),
            (
                "dev.quark.qhttp.config",
                "{\"listeners\": []}",
                "no listeners",
            ),
        ] {
            let mut a = ann(&[(k, v)]);
            if k != "dev.quark.qhttp.routes" && !k.ends_with("config") {
                a.insert("dev.quark.qhttp.routes".into(), "/=8080".into());
            }
            let err = Config::from_annotations(&a).unwrap_err().to_string();
            assert!(err.contains(want), "{k}={v}: {err}");
        }
    }

    #[test]
    fn json_config_round_trips_with_defaults() {
        let cfg =
            Config::from_json(r#"{"listeners": [{"port": 8000, "routes": [{"upstream": 9000}]}]}"#)
                .unwrap();
        assert_eq!(cfg.listeners[0].routes[0].path_prefix, "/");
        assert_eq!(cfg.timeouts, Timeouts::default());
        let again = Config::from_json(&serde_json::to_string(&cfg).unwrap()).unwrap();
        assert_eq!(again, cfg);
        let err = Config::from_json(r#"{"listeners": [], "colour": 1}"#).unwrap_err();
        assert!(err.to_string().contains("unknown field"), "{err}");
    }
}

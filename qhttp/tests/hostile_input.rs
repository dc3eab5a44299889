//! What a tenant or a client controls reaches qhttp's own parsers: container annotations (the
//! config), Host headers and paths (the router), and header values (the forwarding rules).
//! None of them may panic, whatever the bytes; bad config is an error naming the problem.

use std::collections::BTreeMap;

use http::header::{HeaderMap, HeaderName, HeaderValue};
use proptest::prelude::*;
use qhttp::config::{Config, Route, Upstream};
use qhttp::headers::{add_forwarded, strip_hop_by_hop};
use qhttp::route::Router;

fn setting_key() -> impl Strategy<Value = String> {
    prop_oneof![
        Just("routes".to_string()),
        Just("metrics-port".to_string()),
        Just("trust-forwarded".to_string()),
        Just("timeout.idle".to_string()),
        Just("timeout.header-read".to_string()),
        Just("limit.body-bytes".to_string()),
        Just("limit.header-bytes".to_string()),
        Just("config".to_string()),
        "[a-z.-]{0,20}",
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]

    #[test]
    fn annotations_never_panic(pairs in proptest::collection::vec((setting_key(), ".{0,60}"), 0..6)) {
        let map: BTreeMap<String, String> = pairs
            .into_iter()
            .map(|(k, v)| (format!("dev.quark.qhttp.{k}"), v))
            .collect();
        match Config::from_annotations(&map) {
            Ok(Some(cfg)) => prop_assert!(cfg.validate().is_ok()),
            Ok(None) => prop_assert!(map.is_empty()),
            Err(e) => prop_assert!(e.to_string().starts_with("qhttp config: ")),
        }
    }

    #[test]
    fn route_specs_from_route_like_text_never_panic(spec in "[0-9a-z:/=;. ]{0,80}") {
        let map = BTreeMap::from([("dev.quark.qhttp.routes".to_string(), spec)]);
        let _ = Config::from_annotations(&map);
    }

    #[test]
    fn json_configs_never_panic(text in ".{0,200}") {
        let _ = Config::from_json(&text);
    }

    #[test]
    fn routing_any_host_and_path_never_panics(host in proptest::option::of(".{0,40}"), path in ".{0,80}") {
        let router = Router::new(&[
            Route { host: Some("a.test".into()), path_prefix: "/".into(), upstream: Upstream::Port(1) },
            Route { host: None, path_prefix: "/api".into(), upstream: Upstream::Port(2) },
        ]);
        if let Some(m) = router.route(host.as_deref(), &path) {
            prop_assert!(m.upstream.addr().port() == 1 || m.upstream.addr().port() == 2);
        }
    }

    #[test]
    fn header_rules_never_panic(
        fields in proptest::collection::vec(("[a-zA-Z-]{1,16}", "[ -~]{0,40}"), 0..12),
        host in proptest::option::of("[ -~]{0,40}"),
        trust in any::<bool>(),
    ) {
        let mut headers = HeaderMap::new();
        for (k, v) in &fields {
            if let (Ok(k), Ok(v)) = (HeaderName::from_bytes(k.as_bytes()), HeaderValue::from_str(v)) {
                headers.append(k, v);
            }
        }
        strip_hop_by_hop(&mut headers);
        prop_assert!(!headers.contains_key("connection"));
        prop_assert!(!headers.contains_key("transfer-encoding"));
        add_forwarded(&mut headers, "10.0.0.1".parse().unwrap(), host.as_deref(), trust);
        let xff = headers.get("x-forwarded-for").and_then(|v| v.to_str().ok()).unwrap_or("");
        prop_assert!(xff.ends_with("10.0.0.1"));
        if !trust {
            prop_assert_eq!(xff, "10.0.0.1");
        }
    }
}

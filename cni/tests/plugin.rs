//! qnet-cni driven exactly as a container runtime drives a plugin: environment variables and
//! the configuration on stdin, in namespaces the test creates, chained after Debian's reference
//! bridge plugin with host-local IPAM.

use std::io::Write;
use std::process::{Command, Stdio};

use serde_json::{json, Value};

const CNI_DIR: &str = "/usr/lib/cni";

struct Out {
    ok: bool,
    json: Option<Value>,
    raw: String,
}

/// Runs `plugin` (ours, or one from /usr/lib/cni) with `env` and `conf` on stdin, in `in_ns`.
fn call(plugin: &str, in_ns: Option<&str>, env: &[(&str, &str)], conf: &str) -> Out {
    let program = if plugin == "qnet-cni" {
        env!("CARGO_BIN_EXE_qnet-cni").to_string()
    } else {
        format!("{CNI_DIR}/{plugin}")
    };
    let mut cmd = match in_ns {
        Some(ns) => {
            let mut c = Command::new("ip");
            c.args(["netns", "exec", ns, &program]);
            c
        }
        None => Command::new(&program),
    };
    cmd.env_clear()
        .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
        .envs(env.iter().copied())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().expect("running the plugin");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(conf.as_bytes())
        .unwrap();
    let o = child.wait_with_output().unwrap();
    let raw = String::from_utf8_lossy(&o.stdout).to_string();
    Out {
        ok: o.status.success(),
        json: serde_json::from_str(&raw).ok(),
        raw: format!("{raw}{}", String::from_utf8_lossy(&o.stderr)),
    }
}

fn error_code(o: &Out) -> u64 {
    assert!(!o.ok, "expected a failure: {}", o.raw);
    o.json
        .as_ref()
        .and_then(|j| j["code"].as_u64())
        .unwrap_or_else(|| panic!("no error JSON: {}", o.raw))
}

struct Ns(String);

impl Ns {
    fn new(tag: &str) -> Ns {
        let name = format!("qc-{tag}-{}", std::process::id());
        let ok = Command::new("ip")
            .args(["netns", "add", &name])
            .status()
            .unwrap();
        assert!(ok.success(), "ip netns add (run as root)");
        Ns(name)
    }
}

impl Drop for Ns {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.0]).status();
    }
}

fn attachment<'a>(command: &'a str, pod: &'a str, netns: &'a str) -> Vec<(&'a str, &'a str)> {
    vec![
        ("CNI_COMMAND", command),
        ("CNI_CONTAINERID", pod),
        ("CNI_NETNS", netns),
        ("CNI_IFNAME", "eth0"),
        ("CNI_PATH", CNI_DIR),
        (
            "CNI_ARGS",
            "IgnoreUnknown=1;K8S_POD_NAMESPACE=default;K8S_POD_NAME=web",
        ),
    ]
}

#[test]
fn version_lists_every_supported_version() {
    let o = call("qnet-cni", None, &[("CNI_COMMAND", "VERSION")], "");
    assert!(o.ok, "{}", o.raw);
    let j = o.json.unwrap();
    assert_eq!(
        j["supportedVersions"],
        json!(["0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"])
    );
    assert_eq!(j["cniVersion"], "1.1.0");
}

#[test]
fn bad_input_gets_the_spec_error_codes() {
    let env = attachment("ADD", "bad", "/run/netns/none");
    let conf = |v: &str, ty: &str, mode: &str| {
        format!(r#"{{"cniVersion":"{v}","name":"n","type":"{ty}","mode":"{mode}"}}"#)
    };
    // Malformed JSON: 6; unknown version: 1; another plugin's config: 7.
    assert_eq!(error_code(&call("qnet-cni", None, &env, "{not json")), 6);
    assert_eq!(
        error_code(&call(
            "qnet-cni",
            None,
            &env,
            &conf("0.2.0", "qnet-cni", "chained")
        )),
        1
    );
    assert_eq!(
        error_code(&call(
            "qnet-cni",
            None,
            &env,
            &conf("1.0.0", "bridge", "chained")
        )),
        7
    );
    // Missing environment: 4.
    let o = call(
        "qnet-cni",
        None,
        &[("CNI_COMMAND", "ADD"), ("CNI_PATH", CNI_DIR)],
        &conf("1.0.0", "qnet-cni", "chained"),
    );
    assert_eq!(error_code(&o), 4);
    assert!(o.raw.contains("CNI_CONTAINERID"), "{}", o.raw);
    // Chained without a previous result, a mode not built yet, CHECK in 0.3.1.
    let o = call(
        "qnet-cni",
        None,
        &env,
        &conf("1.0.0", "qnet-cni", "chained"),
    );
    assert_eq!(error_code(&o), 7);
    assert!(o.raw.contains("prevResult"), "{}", o.raw);
    let o = call("qnet-cni", None, &env, &conf("1.0.0", "qnet-cni", "bridge"));
    assert_eq!(error_code(&o), 7);
    assert!(o.raw.contains("ipam"), "{}", o.raw);
    let check = attachment("CHECK", "bad", "/run/netns/none");
    assert_eq!(
        error_code(&call(
            "qnet-cni",
            None,
            &check,
            &conf("0.3.1", "qnet-cni", "chained")
        )),
        1
    );
    // Unknown CNI_ARGS without IgnoreUnknown: 2. Errors carry the caller's version.
    let mut strict = env.clone();
    strict[5] = ("CNI_ARGS", "FOO=bar");
    let o = call(
        "qnet-cni",
        None,
        &strict,
        &conf("0.4.0", "qnet-cni", "chained"),
    );
    assert_eq!(error_code(&o), 2);
    assert_eq!(o.json.unwrap()["cniVersion"], "0.4.0");
}

#[test]
fn chained_after_the_bridge_plugin_in_every_version() {
    for (i, version) in ["0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"]
        .iter()
        .enumerate()
    {
        // Debian's bridge plugin (containernetworking-plugins 1.1.1) speaks up to 1.0.0.
        let bridge_version = if *version == "1.1.0" {
            "1.0.0"
        } else {
            version
        };
        let node = Ns::new(&format!("n{i}"));
        let pod = Ns::new(&format!("p{i}"));
        let netns = format!("/run/netns/{}", pod.0);
        let data = std::env::temp_dir().join(format!("qc-ipam-{i}-{}", std::process::id()));
        let bridge_conf = json!({
            "cniVersion": bridge_version, "name": "quark", "type": "bridge",
            "bridge": format!("qcbr{i}"), "isGateway": true,
            "ipam": {"type": "host-local", "ranges": [[{"subnet": format!("10.85.{i}.0/24")}]],
                     "routes": [{"dst": "0.0.0.0/0"}], "dataDir": data},
        });
        let pod_id = format!("pod{i}");
        let add = attachment("ADD", &pod_id, &netns);
        let made = call("bridge", Some(&node.0), &add, &bridge_conf.to_string());
        assert!(made.ok, "bridge ADD: {}", made.raw);
        let prev = made.json.unwrap();
        // As a runtime does for the next plugin of a conflist: same name and version, plus
        // prevResult.
        let ours = json!({
            "cniVersion": version, "name": "quark", "type": "qnet-cni", "mode": "chained",
            "prevResult": prev,
        })
        .to_string();
        let o = call("qnet-cni", Some(&node.0), &add, &ours);
        assert!(o.ok, "{version}: qnet-cni ADD: {}", o.raw);
        let mut expected = prev.clone();
        expected["cniVersion"] = json!(version);
        assert_eq!(
            o.json.unwrap(),
            expected,
            "{version}: the result passes through"
        );
        if *version != "0.3.0" && *version != "0.3.1" {
            let check = attachment("CHECK", &pod_id, &netns);
            let o = call("qnet-cni", Some(&node.0), &check, &ours);
            assert!(o.ok, "{version}: CHECK: {}", o.raw);
            // Drift: the pod's address gone, CHECK says so.
            let addr = prev["ips"][0]["address"].as_str().unwrap().to_string();
            Command::new("ip")
                .args(["-n", &pod.0, "addr", "del", &addr, "dev", "eth0"])
                .status()
                .unwrap();
            let o = call("qnet-cni", Some(&node.0), &check, &ours);
            assert_eq!(error_code(&o), 7, "{version}: CHECK after drift");
            assert!(o.raw.contains(&addr), "{}", o.raw);
        }
        // DEL twice, and once more with the namespace gone: always success.
        let del = attachment("DEL", &pod_id, &netns);
        for _ in 0..2 {
            let o = call("qnet-cni", Some(&node.0), &del, &ours);
            assert!(o.ok && o.raw.is_empty(), "{version}: DEL: {}", o.raw);
        }
        let del_gone: Vec<_> = del
            .iter()
            .copied()
            .filter(|(k, _)| *k != "CNI_NETNS")
            .collect();
        let o = call("qnet-cni", Some(&node.0), &del_gone, &ours);
        assert!(o.ok, "{version}: DEL without a namespace: {}", o.raw);
        let o = call("bridge", Some(&node.0), &del, &bridge_conf.to_string());
        assert!(o.ok, "bridge DEL: {}", o.raw);
        let _ = std::fs::remove_dir_all(&data);
    }
}

/// The pod's routes as `ip route` prints them, with its address (IPAM hands out the next one
/// each time) as POD and without the route protocol.
fn pod_routes(pod: &Ns, pod_ip: &str) -> Vec<String> {
    let o = Command::new("ip")
        .args(["-n", &pod.0, "-4", "route", "show"])
        .output()
        .unwrap();
    let mut lines: Vec<String> = String::from_utf8_lossy(&o.stdout)
        .lines()
        .map(|l| {
            l.split_whitespace()
                .filter(|w| !w.starts_with("proto") && *w != "static" && *w != "kernel")
                .map(|w| if w == pod_ip { "POD" } else { w })
                .collect::<Vec<_>>()
                .join(" ")
        })
        .collect();
    lines.sort();
    lines
}

/// The pod's address (without its prefix) in an ADD result.
fn pod_ip_of(result: &Value) -> String {
    let addr = result["ips"][0]["address"].as_str().unwrap();
    addr.split('/').next().unwrap().to_string()
}

/// Whether host-local (with `dataDir` `data`) still holds `ip` for network "quark".
fn reserved(data: &std::path::Path, ip: &str) -> bool {
    std::fs::read_dir(data.join("quark"))
        .map(|d| {
            d.filter_map(|e| e.ok())
                .any(|e| e.file_name().to_string_lossy() == ip)
        })
        .unwrap_or(false)
}

/// Whether `ip` answers a ping from namespace `node`.
fn pings(node: &Ns, ip: &str) -> bool {
    Command::new("ip")
        .args(["netns", "exec", &node.0, "ping", "-c", "1", "-W", "2", ip])
        .output()
        .unwrap()
        .status
        .success()
}

#[test]
fn ptp_mode_wires_a_reachable_pod_like_the_reference_ptp_plugin_and_leaves_nothing() {
    for (i, version) in ["0.3.1", "0.4.0", "1.0.0", "1.1.0"].iter().enumerate() {
        let node = Ns::new(&format!("pn{i}"));
        let pod = Ns::new(&format!("pp{i}"));
        let netns = format!("/run/netns/{}", pod.0);
        let data = std::env::temp_dir().join(format!("qc-ptp-{i}-{}", std::process::id()));
        let conf = |ty: &str| {
            json!({
                "cniVersion": version,
                "name": "quark", "type": ty, "mode": "ptp",
                "ipam": {"type": "host-local", "ranges": [[{"subnet": format!("10.84.{i}.0/24")}]],
                         "routes": [{"dst": "0.0.0.0/0"}], "dataDir": data},
            })
            .to_string()
        };
        let pod_id = format!("ptp{i}");
        let add = attachment("ADD", &pod_id, &netns);
        let o = call("qnet-cni", Some(&node.0), &add, &conf("qnet-cni"));
        if *version == "1.1.0" {
            // Debian's host-local speaks up to 1.0.0: its error comes back as it gave it, and
            // nothing is left.
            assert_eq!(error_code(&o), 1, "{}", o.raw);
            assert!(o.raw.contains("incompatible CNI versions"), "{}", o.raw);
            let links = links_of(&node);
            assert!(!links.contains("qv"));
            continue;
        }
        assert!(o.ok, "{version}: ADD: {}", o.raw);
        let result = o.json.unwrap();
        assert_eq!(result["cniVersion"], json!(version));
        let pod_ip = pod_ip_of(&result);
        assert_eq!(result["interfaces"][1]["name"], "eth0");
        assert_eq!(result["interfaces"][1]["sandbox"], json!(netns));
        // Reachable from the node: ping and TCP.
        assert!(pings(&node, &pod_ip), "{version}: ping {pod_ip}");
        let mut server = Command::new("ip")
            .args(["netns", "exec", &pod.0, "python3", "-c"])
            .arg("import socket; l=socket.socket(); l.bind(('0.0.0.0', 7070)); l.listen(); c,_=l.accept(); c.sendall(b'pod says hi'); c.close()")
            .spawn()
            .unwrap();
        let mut reply = String::new();
        for _ in 0..50 {
            let o = Command::new("ip")
                .args(["netns", "exec", &node.0, "nc", "-w", "2", &pod_ip, "7070"])
                .stdin(Stdio::null())
                .output()
                .unwrap();
            reply = String::from_utf8_lossy(&o.stdout).to_string();
            if !reply.is_empty() {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        let _ = server.kill();
        let _ = server.wait();
        assert_eq!(reply, "pod says hi", "{version}: TCP to the pod");
        // CHECK (0.4.0 on) with the result as prevResult, as a runtime does.
        if *version != "0.3.1" {
            let mut checked: Value = serde_json::from_str(&conf("qnet-cni")).unwrap();
            checked["prevResult"] = result.clone();
            let check = attachment("CHECK", &pod_id, &netns);
            let o = call("qnet-cni", Some(&node.0), &check, &checked.to_string());
            assert!(o.ok, "{version}: CHECK: {}", o.raw);
        }
        let ours = pod_routes(&pod, &pod_ip);
        // DEL, twice: nothing left in either namespace or in IPAM.
        let del = attachment("DEL", &pod_id, &netns);
        for _ in 0..2 {
            let o = call("qnet-cni", Some(&node.0), &del, &conf("qnet-cni"));
            assert!(o.ok, "{version}: DEL: {}", o.raw);
        }
        let links = links_of(&node);
        assert!(!links.contains("qv"), "{version}: host end left behind");
        let pod_links = links_of(&pod);
        assert!(!pod_links.contains("eth0"));
        assert!(
            !reserved(&data, &pod_ip),
            "{version}: {pod_ip} still reserved after DEL"
        );
        // Side by side: the reference ptp plugin on the same input routes the pod the same.
        let theirs = reference_routes("ptp", &node, &pod, (&add, &del), &conf("ptp"));
        assert_eq!(theirs, ours, "{version}: routes differ from ptp's");
        let _ = std::fs::remove_dir_all(&data);
    }
}

#[test]
fn bridge_mode_wires_a_reachable_pod_like_the_reference_bridge_plugin_and_leaves_nothing() {
    for (i, version) in ["0.3.1", "1.0.0"].iter().enumerate() {
        let node = Ns::new(&format!("bn{i}"));
        let pod = Ns::new(&format!("bp{i}"));
        let netns = format!("/run/netns/{}", pod.0);
        let data = std::env::temp_dir().join(format!("qc-br-{i}-{}", std::process::id()));
        let conf = |ty: &str| {
            json!({
                "cniVersion": version,
                "name": "quark", "type": ty, "mode": "bridge",
                "bridge": format!("qvbr{i}"), "isGateway": true, "isDefaultGateway": true,
                "hairpinMode": i == 1, "promiscMode": i == 0,
                "ipam": {"type": "host-local", "ranges": [[{"subnet": format!("10.86.{i}.0/24")}]],
                         "dataDir": data},
            })
            .to_string()
        };
        let pod_id = format!("br{i}");
        let add = attachment("ADD", &pod_id, &netns);
        let o = call("qnet-cni", Some(&node.0), &add, &conf("qnet-cni"));
        assert!(o.ok, "{version}: ADD: {}", o.raw);
        let result = o.json.unwrap();
        assert_eq!(result["interfaces"][0]["name"], json!(format!("qvbr{i}")));
        assert_eq!(result["interfaces"][2]["name"], "eth0");
        assert_eq!(result["interfaces"][2]["sandbox"], json!(netns));
        assert_eq!(result["ips"][0]["interface"], 2);
        let host_end = result["interfaces"][1]["name"]
            .as_str()
            .unwrap()
            .to_string();
        let show = |args: &[&str]| {
            let o = Command::new("ip")
                .args(["netns", "exec", &node.0])
                .args(args)
                .output();
            String::from_utf8_lossy(&o.unwrap().stdout).to_string()
        };
        let port = show(&["bridge", "-d", "link", "show", "dev", &host_end]);
        let hairpin = if i == 1 { "hairpin on" } else { "hairpin off" };
        assert!(port.contains(hairpin), "{version}: hairpinMode: {port}");
        let bridge = show(&["ip", "link", "show", &format!("qvbr{i}")]);
        assert_eq!(
            bridge.contains("PROMISC"),
            i == 0,
            "{version}: promiscMode: {bridge}"
        );
        let pod_ip = pod_ip_of(&result);
        // Reachable from the node through the bridge, which holds the gateway address.
        assert!(pings(&node, &pod_ip), "{version}: ping {pod_ip}");
        let ours = pod_routes(&pod, &pod_ip);
        let del = attachment("DEL", &pod_id, &netns);
        for _ in 0..2 {
            let o = call("qnet-cni", Some(&node.0), &del, &conf("qnet-cni"));
            assert!(o.ok, "{version}: DEL: {}", o.raw);
        }
        let links = links_of(&node);
        assert!(
            !links.contains(&host_end),
            "{version}: {host_end} left: {links}"
        );
        assert!(
            links.contains(&format!("qvbr{i}")),
            "{version}: the bridge stays"
        );
        let pod_links = links_of(&pod);
        assert!(!pod_links.contains("eth0"));
        assert!(
            !reserved(&data, &pod_ip),
            "{version}: {pod_ip} still reserved after DEL"
        );
        // Side by side: the reference bridge plugin on the same input routes the pod the same.
        let theirs = reference_routes("bridge", &node, &pod, (&add, &del), &conf("bridge"));
        assert_eq!(theirs, ours, "{version}: routes differ from bridge's");
        let _ = std::fs::remove_dir_all(&data);
    }
}

#[test]
fn twenty_simultaneous_adds_get_distinct_addresses_and_dels_leave_nothing() {
    let node = Ns::new("cn");
    let pods: Vec<Ns> = (0..20).map(|i| Ns::new(&format!("c{i}"))).collect();
    let data = std::env::temp_dir().join(format!("qc-conc-{}", std::process::id()));
    let conf = json!({
        "cniVersion": "1.0.0", "name": "quark", "type": "qnet-cni", "mode": "ptp",
        "ipam": {"type": "host-local", "ranges": [[{"subnet": "10.83.0.0/24"}]], "dataDir": data},
    })
    .to_string();
    let run_all = |command: &'static str| -> Vec<Out> {
        std::thread::scope(|s| {
            let handles: Vec<_> = pods
                .iter()
                .enumerate()
                .map(|(i, pod)| {
                    let (conf, node) = (&conf, &node);
                    s.spawn(move || {
                        let netns = format!("/run/netns/{}", pod.0);
                        let id = format!("conc{i}");
                        call(
                            "qnet-cni",
                            Some(&node.0),
                            &attachment(command, &id, &netns),
                            conf,
                        )
                    })
                })
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).collect()
        })
    };
    let added = run_all("ADD");
    let mut ips: Vec<String> = added
        .iter()
        .map(|o| {
            assert!(o.ok, "ADD: {}", o.raw);
            o.json.as_ref().unwrap()["ips"][0]["address"]
                .as_str()
                .unwrap()
                .to_string()
        })
        .collect();
    ips.sort();
    ips.dedup();
    assert_eq!(ips.len(), 20, "addresses shared: {ips:?}");
    for ip in &ips {
        let ip = ip.split('/').next().unwrap();
        let ping = Command::new("ip")
            .args(["netns", "exec", &node.0, "ping", "-c", "1", "-W", "2", ip])
            .output()
            .unwrap();
        assert!(ping.status.success(), "ping {ip}");
    }
    for o in run_all("DEL") {
        assert!(o.ok, "DEL: {}", o.raw);
    }
    let links = links_of(&node);
    assert!(!links.contains("qv"));
    let left: Vec<String> = std::fs::read_dir(data.join("quark"))
        .map(|d| {
            d.filter_map(|e| e.ok())
                .map(|e| e.file_name().to_string_lossy().to_string())
                .filter(|n| n.starts_with("10."))
                .collect()
        })
        .unwrap_or_default();
    assert!(left.is_empty(), "reservations left: {left:?}");
    let _ = std::fs::remove_dir_all(&data);
}

/// Everything a pod's wiring could leave behind: links, addresses and routes on both sides, and
/// IPAM's reservation files.
fn footprint(node: &Ns, pod: &Ns, data: &std::path::Path) -> String {
    let mut out = String::new();
    for (ns, what) in [
        (&node.0, "link"),
        (&node.0, "addr"),
        (&node.0, "route"),
        (&pod.0, "link"),
        (&pod.0, "addr"),
        (&pod.0, "route"),
    ] {
        let o = Command::new("ip")
            .args(["-n", ns, "-o", what])
            .output()
            .unwrap();
        out.push_str(&String::from_utf8_lossy(&o.stdout));
    }
    if let Ok(d) = std::fs::read_dir(data.join("quark")) {
        let mut names: Vec<String> = d
            .filter_map(|e| e.ok())
            .map(|e| e.file_name().to_string_lossy().to_string())
            .filter(|n| n.starts_with("10."))
            .collect();
        names.sort();
        out.push_str(&names.join("\n"));
    }
    out
}

#[test]
fn a_thousand_ptp_add_del_cycles_leak_nothing() {
    let node = Ns::new("ln");
    let pod = Ns::new("lp");
    let netns = format!("/run/netns/{}", pod.0);
    let data = std::env::temp_dir().join(format!("qc-leak-{}", std::process::id()));
    let conf = json!({
        "cniVersion": "1.0.0", "name": "quark", "type": "qnet-cni", "mode": "ptp",
        "ipam": {"type": "host-local", "ranges": [[{"subnet": "10.81.0.0/24"}]],
                 "routes": [{"dst": "0.0.0.0/0"}], "dataDir": data},
    })
    .to_string();
    let before = footprint(&node, &pod, &data);
    for i in 0..1000 {
        let id = format!("leak{i}");
        let o = call(
            "qnet-cni",
            Some(&node.0),
            &attachment("ADD", &id, &netns),
            &conf,
        );
        assert!(o.ok, "cycle {i} ADD: {}", o.raw);
        let o = call(
            "qnet-cni",
            Some(&node.0),
            &attachment("DEL", &id, &netns),
            &conf,
        );
        assert!(o.ok, "cycle {i} DEL: {}", o.raw);
    }
    assert_eq!(footprint(&node, &pod, &data), before);
    let _ = std::fs::remove_dir_all(&data);
}

#[test]
fn chained_between_bridge_and_tuning_and_portmap_as_a_conflist_runs() {
    let node = Ns::new("chn");
    let pod = Ns::new("chp");
    let netns = format!("/run/netns/{}", pod.0);
    let data = std::env::temp_dir().join(format!("qc-chain-{}", std::process::id()));
    // The plugins of one conflist, in order, as a runtime runs them: each gets the network's
    // name and version, its own entry, and the previous plugin's result.
    let entries = [
        json!({"type": "bridge", "bridge": "qcchain0", "isGateway": true,
               "ipam": {"type": "host-local", "ranges": [[{"subnet": "10.80.0.0/24"}]],
                        "routes": [{"dst": "0.0.0.0/0"}], "dataDir": data}}),
        json!({"type": "qnet-cni", "mode": "chained"}),
        json!({"type": "tuning", "sysctl": {"net.core.somaxconn": "777"}}),
        json!({"type": "portmap", "capabilities": {"portMappings": true},
               "runtimeConfig": {"portMappings": [
                   {"hostPort": 18080, "containerPort": 80, "protocol": "tcp"}]}}),
    ];
    let conf_of = |entry: &Value, prev: Option<&Value>| {
        let mut c = entry.clone();
        c["cniVersion"] = json!("1.0.0");
        c["name"] = json!("quark");
        if let Some(p) = prev {
            c["prevResult"] = p.clone();
        }
        c.to_string()
    };
    let add = attachment("ADD", "chain", &netns);
    let mut prev: Option<Value> = None;
    for entry in &entries {
        let ty = entry["type"].as_str().unwrap();
        let o = call(ty, Some(&node.0), &add, &conf_of(entry, prev.as_ref()));
        assert!(o.ok, "{ty} ADD: {}", o.raw);
        prev = Some(o.json.unwrap_or_else(|| panic!("{ty} gave no result")));
    }
    let result = prev.unwrap();
    assert!(result["ips"][0]["address"]
        .as_str()
        .unwrap()
        .starts_with("10.80.0."));
    let sysctl = Command::new("ip")
        .args([
            "netns",
            "exec",
            &pod.0,
            "sysctl",
            "-n",
            "net.core.somaxconn",
        ])
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&sysctl.stdout).trim(), "777");
    let nat = || {
        let o = Command::new("ip")
            .args(["netns", "exec", &node.0, "iptables", "-t", "nat", "-S"])
            .output()
            .unwrap();
        String::from_utf8_lossy(&o.stdout).to_string()
    };
    assert!(nat().contains("18080"), "portmap's DNAT: {}", nat());
    // DEL runs the list in reverse, each with the cached result.
    let del = attachment("DEL", "chain", &netns);
    for entry in entries.iter().rev() {
        let ty = entry["type"].as_str().unwrap();
        let o = call(ty, Some(&node.0), &del, &conf_of(entry, Some(&result)));
        assert!(o.ok, "{ty} DEL: {}", o.raw);
    }
    assert!(!nat().contains("18080"), "portmap left: {}", nat());
    let _ = std::fs::remove_dir_all(&data);
}

#[test]
fn vpc_mode_makes_pods_endpoints_of_a_qnetd_vpc_and_del_removes_them() {
    let node = Ns::new("vn");
    let dir = std::env::temp_dir().join(format!("qc-vpc-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let node_path = format!("/run/netns/{}", node.0);
    let socket =
        quark_tests::overlay::start_qnetd_in(&node_path, "127.0.0.1".parse().unwrap(), &dir);
    let (status, body) = qnetd::api::call(
        &socket,
        qnetd::api::Method::POST,
        "/v1/vpcs",
        Some(&json!({"name": "red", "vni": 42, "cidr": "10.44.0.0/24"})),
    )
    .expect("calling qnetd");
    assert_eq!(status, 201, "{body}");
    let data = dir.join("ipam");
    let conf = |vpc: &str, sock: &std::path::Path| {
        json!({
            "cniVersion": "1.0.0", "name": "quark", "type": "qnet-cni", "mode": "vpc",
            "vpc": vpc, "qnetdSocket": sock,
            "ipam": {"type": "host-local", "ranges": [[{"subnet": "10.44.0.0/24", "rangeStart": "10.44.0.10"}]],
                     "dataDir": data},
        })
        .to_string()
    };
    let pods = [Ns::new("vp1"), Ns::new("vp2")];
    let mut ips = Vec::new();
    for (i, pod) in pods.iter().enumerate() {
        let netns = format!("/run/netns/{}", pod.0);
        let id = format!("vpc{i}");
        let o = call(
            "qnet-cni",
            None,
            &attachment("ADD", &id, &netns),
            &conf("red", &socket),
        );
        assert!(o.ok, "ADD: {}", o.raw);
        let result = o.json.unwrap();
        assert_eq!(result["interfaces"][0]["name"], "eth0");
        assert_eq!(result["interfaces"][0]["sandbox"], json!(netns));
        assert!(result["interfaces"][0]["mac"]
            .as_str()
            .unwrap()
            .starts_with("0a:58:0a:2c:00:"));
        assert_eq!(result["ips"][0]["gateway"], "10.44.0.1");
        let ip = pod_ip_of(&result);
        assert!(result["ips"][0]["address"]
            .as_str()
            .unwrap()
            .ends_with("/24"));
        // CHECK finds what ADD made.
        let mut check = serde_json::from_str::<Value>(&conf("red", &socket)).unwrap();
        check["prevResult"] = result.clone();
        let o = call(
            "qnet-cni",
            None,
            &attachment("CHECK", &id, &netns),
            &check.to_string(),
        );
        assert!(o.ok, "CHECK: {}", o.raw);
        ips.push(ip);
    }
    // The two pods reach each other and the gateway through qnetd.
    let ping = |from: &Ns, ip: &str| {
        Command::new("ip")
            .args(["netns", "exec", &from.0, "ping", "-c", "1", "-W", "1", ip])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    };
    assert!(ping(&pods[0], &ips[1]), "pod 1 -> pod 2 ({})", ips[1]);
    assert!(ping(&pods[1], "10.44.0.1"), "pod 2 -> the VPC gateway");

    // Errors: no VPC named, an unknown VPC, qnetd not there (the address goes back to IPAM).
    let spare = Ns::new("vp3");
    let netns = format!("/run/netns/{}", spare.0);
    let add = attachment("ADD", "vpc-err", &netns);
    let mut no_name = serde_json::from_str::<Value>(&conf("red", &socket)).unwrap();
    no_name.as_object_mut().unwrap().remove("vpc");
    let o = call("qnet-cni", None, &add, &no_name.to_string());
    assert_eq!(error_code(&o), 7, "{}", o.raw);
    let o = call("qnet-cni", None, &add, &conf("blue", &socket));
    assert_eq!(error_code(&o), 7, "{}", o.raw);
    assert!(o.raw.contains("no VPC \\\"blue\\\""), "{}", o.raw);
    let o = call(
        "qnet-cni",
        None,
        &add,
        &conf("red", &dir.join("nobody.sock")),
    );
    assert_eq!(error_code(&o), 11, "{}", o.raw);
    let held = std::fs::read_dir(data.join("quark"))
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| {
            e.file_name()
                .to_string_lossy()
                .parse::<std::net::Ipv4Addr>()
                .is_ok()
        })
        .count();
    assert_eq!(held, 2, "only the two pods' addresses are held");

    // GC (CNI 1.1.0) with only the first pod valid: the second's endpoint and interface go;
    // host-local, whose VERSION predates GC, is not asked.
    let mut gc = serde_json::from_str::<Value>(&conf("red", &socket)).unwrap();
    gc["cniVersion"] = "1.1.0".into();
    gc["cni.dev/valid-attachments"] = json!([{"containerID": "vpc0", "ifname": "eth0"}]);
    let env = [("CNI_COMMAND", "GC"), ("CNI_PATH", CNI_DIR)];
    let o = call("qnet-cni", None, &env, &gc.to_string());
    assert!(o.ok, "GC: {}", o.raw);
    let (_, eps) =
        qnetd::api::call(&socket, qnetd::api::Method::GET, "/v1/endpoints", None).unwrap();
    assert_eq!(eps.matches("\"name\"").count(), 1, "{eps}");
    assert!(ping(&pods[0], "10.44.0.1"), "the valid pod is untouched");
    assert!(!ping(&pods[1], "10.44.0.1"), "the collected pod is cut off");

    // DEL (twice: it is idempotent) removes the endpoint, the interface and the address.
    for (i, pod) in pods.iter().enumerate() {
        let netns = format!("/run/netns/{}", pod.0);
        for _ in 0..2 {
            let o = call(
                "qnet-cni",
                None,
                &attachment("DEL", &format!("vpc{i}"), &netns),
                &conf("red", &socket),
            );
            assert!(o.ok, "DEL: {}", o.raw);
        }
        assert!(!reserved(&data, &ips[i]), "{} still reserved", ips[i]);
    }
    let (_, eps) =
        qnetd::api::call(&socket, qnetd::api::Method::GET, "/v1/endpoints", None).unwrap();
    assert_eq!(eps.trim(), "[]");
    let end = std::time::Instant::now() + std::time::Duration::from_secs(5);
    loop {
        if !links_of(&pods[0]).contains("eth0") {
            break;
        }
        assert!(std::time::Instant::now() < end, "eth0 stayed after DEL");
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn gc_deletes_the_links_of_attachments_no_longer_valid_and_only_those() {
    let node = Ns::new("gn");
    let pods = [Ns::new("gp0"), Ns::new("gp1"), Ns::new("gp2")];
    let data = std::env::temp_dir().join(format!("qc-gc-{}", std::process::id()));
    let conf = |version: &str, network: &str, subnet: &str| {
        json!({
            "cniVersion": version, "name": network, "type": "qnet-cni", "mode": "ptp",
            "ipam": {"type": "host-local", "ranges": [[{"subnet": subnet}]], "dataDir": data},
        })
    };
    // Two pods of network "quark", one of network "other".
    let mut host_ends = Vec::new();
    for (i, (pod, network, subnet)) in [
        (&pods[0], "quark", "10.86.9.0/24"),
        (&pods[1], "quark", "10.86.9.0/24"),
        (&pods[2], "other", "10.86.10.0/24"),
    ]
    .into_iter()
    .enumerate()
    {
        let netns = format!("/run/netns/{}", pod.0);
        let id = format!("gc{i}");
        let add = attachment("ADD", &id, &netns);
        let o = call(
            "qnet-cni",
            Some(&node.0),
            &add,
            &conf("1.0.0", network, subnet).to_string(),
        );
        assert!(o.ok, "ADD: {}", o.raw);
        host_ends.push(
            o.json.unwrap()["interfaces"][0]["name"]
                .as_str()
                .unwrap()
                .to_string(),
        );
    }
    // GC of "quark" with only gc0 valid.
    let mut gc = conf("1.1.0", "quark", "10.86.9.0/24");
    gc["cni.dev/valid-attachments"] = json!([{"containerID": "gc0", "ifname": "eth0"}]);
    let env = [("CNI_COMMAND", "GC"), ("CNI_PATH", CNI_DIR)];
    let o = call("qnet-cni", Some(&node.0), &env, &gc.to_string());
    assert!(o.ok, "GC: {}", o.raw);
    let links = links_of(&node);
    assert!(
        links.contains(&host_ends[0]),
        "the valid pod's link stays: {links}"
    );
    assert!(
        !links.contains(&host_ends[1]),
        "the stale pod's link goes: {links}"
    );
    assert!(
        links.contains(&host_ends[2]),
        "another network's link is not this GC's: {links}"
    );
    let pod_links = |pod: &Ns| links_of(pod).contains("eth0");
    assert!(pod_links(&pods[0]) && !pod_links(&pods[1]) && pod_links(&pods[2]));
    for (i, (pod, network, subnet)) in [
        (&pods[0], "quark", "10.86.9.0/24"),
        (&pods[2], "other", "10.86.10.0/24"),
    ]
    .into_iter()
    .enumerate()
    {
        let netns = format!("/run/netns/{}", pod.0);
        let id = if i == 0 { "gc0" } else { "gc2" };
        let o = call(
            "qnet-cni",
            Some(&node.0),
            &attachment("DEL", id, &netns),
            &conf("1.0.0", network, subnet).to_string(),
        );
        assert!(o.ok, "DEL: {}", o.raw);
    }
    let _ = std::fs::remove_dir_all(&data);
}

#[test]
fn ip_masq_lets_a_ptp_pod_reach_beyond_the_node_as_the_node() {
    let node = Ns::new("mn");
    let pod = Ns::new("mp");
    let ext = Ns::new("mx");
    let sh = |ns: &Ns, script: &str| {
        let o = Command::new("ip")
            .args(["netns", "exec", &ns.0, "sh", "-c", script])
            .output()
            .unwrap();
        assert!(
            o.status.success(),
            "{script}: {}",
            String::from_utf8_lossy(&o.stderr)
        );
        String::from_utf8_lossy(&o.stdout).to_string()
    };
    // The node's other side: a network the pod has no route back from.
    sh(
        &node,
        &format!(
            "ip link set lo up && ip link add mx0 type veth peer name eth9 netns {} \
        && ip addr add 10.98.0.1/24 dev mx0 && ip link set mx0 up",
            ext.0
        ),
    );
    sh(
        &ext,
        "ip link set lo up && ip addr add 10.98.0.2/24 dev eth9 && ip link set eth9 up",
    );
    let data = std::env::temp_dir().join(format!("qc-masq-{}", std::process::id()));
    let conf = json!({
        "cniVersion": "1.0.0", "name": "quark", "type": "qnet-cni", "mode": "ptp", "ipMasq": true,
        "ipam": {"type": "host-local", "ranges": [[{"subnet": "10.86.11.0/24"}]],
                 "routes": [{"dst": "0.0.0.0/0"}], "dataDir": data},
    })
    .to_string();
    let netns = format!("/run/netns/{}", pod.0);
    let o = call(
        "qnet-cni",
        Some(&node.0),
        &attachment("ADD", "masq0", &netns),
        &conf,
    );
    assert!(o.ok, "ADD: {}", o.raw);
    assert_eq!(sh(&node, "cat /proc/sys/net/ipv4/ip_forward").trim(), "1");

    // A server beyond the node says whom it sees: the node, not the pod.
    let server = "import socket\ns = socket.socket()\ns.bind(('10.98.0.2', 7777))\ns.listen(1)\n\
        print('ready', flush=True)\nc, a = s.accept()\nprint(a[0], flush=True)";
    let mut srv = Command::new("ip")
        .args(["netns", "exec", &ext.0, "python3", "-c", server])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut out = std::io::BufReader::new(srv.stdout.take().unwrap());
    let mut line = String::new();
    std::io::BufRead::read_line(&mut out, &mut line).unwrap();
    assert_eq!(line, "ready\n");
    let client = "import socket; socket.create_connection(('10.98.0.2', 7777), timeout=3).close()";
    sh(&pod, &format!("python3 -c \"{client}\""));
    line.clear();
    std::io::BufRead::read_line(&mut out, &mut line).unwrap();
    let _ = srv.wait();
    assert_eq!(
        line.trim(),
        "10.98.0.1",
        "the server saw the node's address"
    );

    // DEL takes the masquerading away.
    let o = call(
        "qnet-cni",
        Some(&node.0),
        &attachment("DEL", "masq0", &netns),
        &conf,
    );
    assert!(o.ok, "DEL: {}", o.raw);
    let nat = sh(&node, "iptables -w -t nat -S");
    assert!(!nat.contains("masq0") && !nat.contains("QNET-"), "{nat}");
    let _ = std::fs::remove_dir_all(&data);
}

#[test]
fn a_bridge_vlan_is_refused_clearly_and_leaves_nothing() {
    let node = Ns::new("vl");
    let pod = Ns::new("vlp");
    let data = std::env::temp_dir().join(format!("qc-vlan-{}", std::process::id()));
    let conf = json!({
        "cniVersion": "1.0.0", "name": "quark", "type": "qnet-cni", "mode": "bridge",
        "bridge": "qvbrv", "vlan": 100,
        "ipam": {"type": "host-local", "ranges": [[{"subnet": "10.86.12.0/24"}]], "dataDir": data},
    });
    let netns = format!("/run/netns/{}", pod.0);
    let o = call(
        "qnet-cni",
        Some(&node.0),
        &attachment("ADD", "vl0", &netns),
        &conf.to_string(),
    );
    assert_eq!(error_code(&o), 7, "{}", o.raw);
    assert!(o.raw.contains("VLANs are not supported"), "{}", o.raw);
    assert!(
        !reserved(&data, "10.86.12.2"),
        "the address went back to IPAM"
    );
    assert!(!links_of(&node).contains("qv"), "nothing was made");
    let _ = std::fs::remove_dir_all(&data);
}

/// `ip -o link` in namespace `ns`.
fn links_of(ns: &Ns) -> String {
    let o = Command::new("ip")
        .args(["-n", &ns.0, "-o", "link"])
        .output()
        .unwrap();
    String::from_utf8_lossy(&o.stdout).to_string()
}

/// A plugin call's environment variables.
type Env<'a> = &'a [(&'a str, &'a str)];

/// The pod's routes as reference plugin `plugin` makes them from `conf` (ADD, read, DEL).
fn reference_routes(
    plugin: &str,
    node: &Ns,
    pod: &Ns,
    (add, del): (Env<'_>, Env<'_>),
    conf: &str,
) -> Vec<String> {
    let o = call(plugin, Some(&node.0), add, conf);
    assert!(o.ok, "reference {plugin} ADD: {}", o.raw);
    let routes = pod_routes(pod, &pod_ip_of(&o.json.unwrap()));
    let o = call(plugin, Some(&node.0), del, conf);
    assert!(o.ok, "reference {plugin} DEL: {}", o.raw);
    routes
}

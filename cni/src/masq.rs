//! `"ipMasq": true` (ptp and bridge modes): traffic from the pod to anywhere but its own
//! subnet (and multicast) leaves with the node's address, as the reference plugins do it: a
//! nat chain per attachment, jumped to from POSTROUTING for the pod's address, with a comment
//! naming the network and container so DEL and GC find it again. Uses the node's `iptables`.

use std::process::Command as Process;

use qnet_netns::Ipv4Net;
use serde_json::Value;

use crate::spec::{CniError, Code, Env, NetConf};

/// Whether the configuration asks for it.
pub fn wanted(conf: &NetConf) -> bool {
    conf.rest
        .get("ipMasq")
        .and_then(Value::as_bool)
        .unwrap_or(false)
}

/// The attachment's chain: at most 28 characters, as iptables allows.
fn chain(network: &str, container_id: &str) -> String {
    format!("QNET-{:016x}", crate::ptp::pair_hash(network, container_id))
}

fn comment(network: &str, container_id: &str) -> String {
    format!("name: {network} id: {container_id}")
}

fn iptables(args: &[&str]) -> Result<String, CniError> {
    let out = Process::new("iptables")
        .args(["-w", "-t", "nat"])
        .args(args)
        .output()
        .map_err(|e| CniError::new(Code::IO, "running iptables (is it installed?)").details(e))?;
    if !out.status.success() {
        return Err(CniError::new(
            Code::IO,
            format!(
                "iptables {}: {}",
                args.join(" "),
                String::from_utf8_lossy(&out.stderr).trim()
            ),
        ));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Masquerades what `addr` (the pod's address and subnet) sends beyond its subnet.
pub fn setup(conf: &NetConf, env: &Env, addr: Ipv4Net) -> Result<(), CniError> {
    let chain = chain(&conf.name, &env.container_id);
    let comment = comment(&conf.name, &env.container_id);
    // A chain left by an interrupted ADD is emptied and reused.
    if iptables(&["-N", &chain]).is_err() {
        iptables(&["-F", &chain])?;
    }
    let subnet = addr.network().to_string();
    iptables(&[
        "-A",
        &chain,
        "-d",
        &subnet,
        "-j",
        "ACCEPT",
        "-m",
        "comment",
        "--comment",
        &comment,
    ])?;
    iptables(&[
        "-A",
        &chain,
        "!",
        "-d",
        "224.0.0.0/4",
        "-j",
        "MASQUERADE",
        "-m",
        "comment",
        "--comment",
        &comment,
    ])?;
    let source = format!("{}/32", addr.addr);
    iptables(&[
        "-A",
        "POSTROUTING",
        "-s",
        &source,
        "-j",
        &chain,
        "-m",
        "comment",
        "--comment",
        &comment,
    ])?;
    Ok(())
}

/// Removes the container's masquerading, if any (DEL: idempotent).
pub fn teardown(network: &str, container_id: &str) -> Result<(), CniError> {
    let chain = chain(network, container_id);
    let rules = iptables(&["-S", "POSTROUTING"])?;
    for rule in rules
        .lines()
        .filter(|r| r.split_whitespace().any(|w| w == chain))
    {
        let Some(spec) = rule.strip_prefix("-A POSTROUTING ") else {
            continue;
        };
        let words = shell_words(spec);
        let mut args = vec!["-D", "POSTROUTING"];
        args.extend(words.iter().map(String::as_str));
        iptables(&args)?;
    }
    if iptables(&["-F", &chain]).is_ok() {
        iptables(&["-X", &chain])?;
    }
    Ok(())
}

/// The containers of `network` that have masquerading on this node (GC's view).
pub fn containers(network: &str) -> Result<Vec<String>, CniError> {
    let rules = iptables(&["-S", "POSTROUTING"])?;
    let prefix = format!("name: {network} id: ");
    Ok(rules
        .lines()
        .filter_map(|r| {
            let words = shell_words(r);
            let at = words.iter().position(|w| w == "--comment")?;
            words.get(at + 1)?.strip_prefix(&prefix).map(String::from)
        })
        .collect())
}

/// Splits a line of `iptables -S` into words, honouring the double quotes around comments.
fn shell_words(line: &str) -> Vec<String> {
    let mut words = Vec::new();
    let mut word = String::new();
    let mut quoted = false;
    let mut any = false;
    for c in line.chars() {
        match c {
            '"' => {
                quoted = !quoted;
                any = true;
            }
            ' ' if !quoted => {
                if any {
                    words.push(std::mem::take(&mut word));
                    any = false;
                }
            }
            _ => {
                word.push(c);
                any = true;
            }
        }
    }
    if any {
        words.push(word);
    }
    words
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chains_fit_iptables_and_rules_split_like_a_shell() {
        assert!(chain("a-very-long-network-name", &"f".repeat(64)).len() <= 28);
        assert_ne!(chain("n", "a"), chain("n", "b"));
        let rule =
            r#"-A POSTROUTING -s 10.0.0.2/32 -m comment --comment "name: quark id: c1" -j QNET-00"#;
        let words = shell_words(rule);
        assert_eq!(words[6], "--comment");
        assert_eq!(words[7], "name: quark id: c1");
        assert_eq!(words.last().unwrap(), "QNET-00");
    }
}

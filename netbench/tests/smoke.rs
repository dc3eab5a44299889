//! The benchmark suites stay runnable: very short runs report every figure, each measured.

use std::process::Command;

/// Runs `netbench ARGS --json`; its figures, each with a value and a baseline above zero.
fn figures_of(args: &[&str]) -> Vec<serde_json::Value> {
    let out = Command::new(env!("CARGO_BIN_EXE_netbench"))
        .args(args)
        .arg("--json")
        .output()
        .expect("running netbench");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "netbench {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let figures: Vec<serde_json::Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).expect("a JSON figure per line"))
        .collect();
    for f in &figures {
        let (v, b) = (
            f["value"].as_f64().unwrap(),
            f["baseline"].as_f64().unwrap(),
        );
        assert!(v > 0.0 && b > 0.0, "a figure without a measurement: {f}");
    }
    figures
}

#[test]
fn the_guest_suite_reports_every_figure() {
    let figures = figures_of(&["guest", "--duration", "0.3", "--rounds", "1"]);
    assert_eq!(figures.len(), 5, "{figures:?}");
}

#[test]
fn the_vpc_suite_reports_every_figure() {
    let figures = figures_of(&["vpc", "--duration", "0.3", "--rounds", "1"]);
    assert_eq!(figures.len(), 8, "{figures:?}");
}

#[test]
fn the_cni_suite_reports_its_figure() {
    assert_eq!(figures_of(&["cni", "--cycles", "2"]).len(), 1);
}

#[test]
fn the_containerd_suite_reports_its_figure() {
    assert_eq!(figures_of(&["containerd", "--runs", "1"]).len(), 1);
}

/// `netbench all`, very short, on the kernel (native), Quark and gVisor (with the proxy and
/// overlay suites): every scenario has a row for every runtime; native's and Quark's are measured (gVisor's may be reported failed,
/// with its reason, where this runsc cannot do something); `--out` holds the raw runs, the
/// report and a plot per figure.
#[test]
fn the_harness_reports_every_scenario_on_every_runtime() {
    let dir = std::env::temp_dir().join(format!("netbench-smoke-{}", std::process::id()));
    let out = Command::new(env!("CARGO_BIN_EXE_netbench"))
        .args(["all", "--runtimes", "native,quark,gvisor"])
        .args([
            "--duration",
            "0.5",
            "--rounds",
            "1",
            "--runs",
            "1",
            "--json",
        ])
        .arg("--out")
        .arg(&dir)
        .output()
        .expect("running netbench");
    assert!(
        out.status.success(),
        "netbench all failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let rows: Vec<serde_json::Value> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).expect("a JSON row per line"))
        .collect();
    let of = |suite: &str| rows.iter().filter(|r| r["suite"] == suite).count();
    // 10 scenarios, 15 metrics: 13 on every runtime, qhttp's 2 on Quark only.
    assert_eq!(of("net"), 13 * 3 + 2, "{rows:#?}");
    assert_eq!(of("startup"), 2 * 3, "{rows:#?}");
    assert_eq!(of("proxy"), 3 * 3, "{rows:#?}");
    assert_eq!(of("overlay"), 3 * 2, "{rows:#?}");
    for r in &rows {
        let measured = r["rounds"].as_u64() == Some(1) && r["median"].as_f64().unwrap_or(0.0) > 0.0;
        let failed = r["error"].as_str().is_some_and(|e| !e.is_empty());
        match r["runtime"].as_str() {
            Some(
                "native" | "quark" | "qhttp" | "nginx" | "qnet (no proxy)" | "qnetd"
                | "kernel vxlan",
            ) => {
                assert!(measured, "not measured: {r}")
            }
            _ => assert!(measured || failed, "neither measured nor failed: {r}"),
        }
        // qhttp's row has no native counterpart (the proxy suite compares it with nginx).
        let has_baseline = rows.iter().any(|b| {
            b["runtime"] == "native" && b["scenario"] == r["scenario"] && b["metric"] == r["metric"]
        });
        if has_baseline && measured {
            assert!(
                r["ratio"].as_f64().is_some_and(|x| x > 0.0),
                "no ratio: {r}"
            );
        }
    }
    let report = std::fs::read_to_string(dir.join("report.md")).expect("report.md");
    let raw: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.join("raw.json")).expect("raw.json")).unwrap();
    assert_eq!(raw["rows"].as_array().map(Vec::len), Some(rows.len()));
    let svgs: Vec<String> = std::fs::read_dir(&dir)
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .filter(|n| n.ends_with(".svg"))
        .collect();
    assert!(svgs.len() >= 15, "{svgs:?}");
    assert!(svgs.iter().any(|s| s.starts_with("cdf-")), "{svgs:?}");
    for s in &svgs {
        assert!(report.contains(s.as_str()), "{s} is not in the report");
    }
    let _ = std::fs::remove_dir_all(&dir);
}

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
fn the_cni_suite_reports_its_figure() {
    assert_eq!(figures_of(&["cni", "--cycles", "2"]).len(), 1);
}

#[test]
fn the_containerd_suite_reports_its_figure() {
    assert_eq!(figures_of(&["containerd", "--runs", "1"]).len(), 1);
}

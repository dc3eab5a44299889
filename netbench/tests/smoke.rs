//! The benchmark suites stay runnable: a very short guest run reports every figure.

use std::process::Command;

#[test]
fn the_guest_suite_reports_every_figure() {
    let out = Command::new(env!("CARGO_BIN_EXE_netbench"))
        .args(["guest", "--duration", "0.3", "--rounds", "1", "--json"])
        .output()
        .expect("running netbench");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "netbench guest failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let figures: Vec<serde_json::Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).expect("a JSON figure per line"))
        .collect();
    assert_eq!(figures.len(), 5, "{text}");
    for f in &figures {
        let (v, b) = (
            f["value"].as_f64().unwrap(),
            f["baseline"].as_f64().unwrap(),
        );
        assert!(v > 0.0 && b > 0.0, "a figure without a measurement: {f}");
    }
}

#[test]
fn the_cni_suite_reports_its_figure() {
    let out = Command::new(env!("CARGO_BIN_EXE_netbench"))
        .args(["cni", "--cycles", "2", "--json"])
        .output()
        .expect("running netbench");
    assert!(
        out.status.success(),
        "netbench cni failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let f: serde_json::Value = serde_json::from_slice(&out.stdout).expect("one JSON figure");
    assert!(f["value"].as_f64().unwrap() > 0.0 && f["baseline"].as_f64().unwrap() > 0.0);
}

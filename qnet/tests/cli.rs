//! `qnet serve` refuses bad configuration with one clear line and exit code 2, before it
//! creates anything.

use std::process::Command;

fn serve(args: &[&str]) -> (i32, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_qnet"))
        .arg("serve")
        .args(args)
        .output()
        .expect("running qnet");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stderr).trim().to_string(),
    )
}

#[test]
fn bad_configuration_is_one_clear_line() {
    let cases: &[(&[&str], &str)] = &[
        (&["--addr", "10.0.0.2"], "needs a prefix length"),
        (&["--addr", "10.0.0.300/24"], "invalid IPv4 address"),
        (
            &["--addr", "10.0.0.2/24", "--mtu", "70000"],
            "MTU 70000 out of range",
        ),
        (
            &["--addr", "10.0.0.2/24", "--mac", "zz:00:00:00:00:01"],
            "invalid MAC",
        ),
        (
            &["--addr", "10.0.0.2/24", "--gateway", "10.0.1.1"],
            "is not inside",
        ),
        (
            &["--addr", "10.0.0.2/24", "--netns", "qnet-no-such-namespace"],
            "network namespace \"qnet-no-such-namespace\" not found",
        ),
        (
            &["--addr", "10.0.0.2/24", "--tap", "name/with/slashes"],
            "interface name",
        ),
    ];
    for (args, want) in cases {
        let (code, err) = serve(args);
        assert_eq!(code, 2, "{args:?}: {err}");
        assert_eq!(err.lines().count(), 1, "{args:?}: one line, got {err}");
        assert!(
            err.starts_with("qnet: ") && err.contains(want),
            "{args:?}: {err}"
        );
        assert!(!err.contains("panicked"), "{err}");
    }
}

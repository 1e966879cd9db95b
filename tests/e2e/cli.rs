//! The `portcullis` binary: `check`, `token`, `explain` as an operator runs them.

use std::path::Path;
use std::process::{Command, Output};

fn portcullis(args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_portcullis"));
    cmd.args(args).current_dir(env!("CARGO_MANIFEST_DIR"));
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.output().unwrap()
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

#[test]
fn check_accepts_the_shipped_configs() {
    let out = portcullis(
        &["check", "--config", "config/demo.toml"],
        &[("PORTCULLIS_DEMO_SECRET", "s3cret")],
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(text(&out.stdout).contains("config/demo.toml: ok (11 routes, 1 upstreams)"));
    let out = portcullis(
        &["check", "--config", "config/gateway.example.toml"],
        &[("JWT_SECRET", "s3cret")],
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
}

#[test]
fn check_reports_a_missing_secret_with_a_hint() {
    let out = portcullis(&["check", "--config", "config/gateway.example.toml"], &[]);
    assert_eq!(out.status.code(), Some(1));
    let err = text(&out.stderr);
    assert!(err.contains("JWT_SECRET"), "{err}");
    assert!(err.contains("config/gateway.example.toml:"), "{err}");
}

#[test]
fn check_prints_all_three_mistakes_with_lines() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("gateway.toml");
    let demo =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("config/demo.toml"))
            .unwrap();
    // Three mistakes far apart: an unknown upstream, a partial wildcard, an unknown role.
    let bad = demo
        .replacen(
            "permission = \"campaigns.delete\"\nupstream = \"api\"",
            "permission = \"campaigns.delete\"\nupstream = \"apii\"",
            1,
        )
        .replacen(
            "permissions = [\"*.view\"]",
            "permissions = [\"camp*.view\"]",
            1,
        )
        .replacen("roles = [\"agent\"]", "roles = [\"agnet\"]", 1);
    assert_ne!(bad, demo);
    std::fs::write(&path, &bad).unwrap();
    let line_of = |needle: &str| bad.lines().position(|l| l.contains(needle)).unwrap() + 1;
    let out = portcullis(
        &["check", "--config", path.to_str().unwrap()],
        &[("PORTCULLIS_DEMO_SECRET", "s3cret")],
    );
    assert_eq!(out.status.code(), Some(1));
    let err = text(&out.stderr);
    let file = path.display().to_string();
    for (needle, what) in [
        ("upstream = \"apii\"", "apii"),
        ("camp*.view", "camp*"),
        ("roles = [\"agnet\"]", "agnet"),
    ] {
        let location = format!("{file}:{}:", line_of(needle));
        assert!(
            err.contains(&location),
            "no error at {location} for {what}:\n{err}"
        );
        assert!(err.contains(what), "{err}");
    }
    assert!(err.contains("3 error"), "{err}");
}

#[test]
fn token_and_explain_agree_with_the_config() {
    let env = [("PORTCULLIS_DEMO_SECRET", "s3cret")];
    let out = portcullis(
        &[
            "token",
            "--config",
            "config/demo.toml",
            "--sub",
            "bob",
            "--tenant",
            "acme",
        ],
        &env,
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    let token = text(&out.stdout);
    assert_eq!(token.trim().split('.').count(), 3, "a JWT: {token}");

    let out = portcullis(
        &[
            "explain",
            "--config",
            "config/demo.toml",
            "--tenant",
            "acme",
            "--subject",
            "bob",
            "--method",
            "DELETE",
            "--path",
            "/api/campaigns/42",
        ],
        &env,
    );
    let answer: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(answer["decision"], "deny");
    assert_eq!(answer["status"], 403);
    assert_eq!(answer["reason"], "missing_permission");
    assert_eq!(answer["required_permission"], "campaigns.delete");
    assert_eq!(answer["route"], "/api/campaigns/{id}");
    assert_eq!(
        out.status.code(),
        Some(2),
        "a deny exits 2 so scripts can branch"
    );

    let out = portcullis(
        &[
            "explain",
            "--config",
            "config/demo.toml",
            "--tenant",
            "acme",
            "--subject",
            "dan",
            "--path",
            "/api/calls",
        ],
        &env,
    );
    let answer: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(answer["decision"], "allow");
    assert_eq!(answer["scope"], "own");
    assert!(out.status.success());
}

/// The binary allocates with mimalloc, built with lazily committed arenas: its `override`
/// feature replaces `malloc` (without it nothing links mimalloc in, and this prints nothing),
/// and `.cargo/config.toml`'s define keeps 10,000 idle connections within the memory goal.
/// mimalloc reports both at start-up when asked to.
#[test]
fn the_binary_runs_on_mimalloc_with_lazy_arena_commit() {
    let out = Command::new(env!("CARGO_BIN_EXE_portcullis"))
        .arg("--version")
        .env("MIMALLOC_VERBOSE", "1")
        .env_remove("MIMALLOC_ARENA_EAGER_COMMIT")
        .output()
        .unwrap();
    let stderr = text(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(stderr.contains("mimalloc: v"), "{stderr}");
    assert!(
        stderr.contains("option 'arena_eager_commit': 0"),
        "{stderr}"
    );
}

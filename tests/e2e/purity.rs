//! `route` and `policy` are pure (STYLE.md §2.2): no async, no sockets, files or Redis.
//! This reads their sources and fails on any such import, so the boundary cannot erode.

use std::path::Path;

const FORBIDDEN: &[&str] = &[
    "tokio",
    "hyper",
    "redis",
    "std::net",
    "std::fs",
    "std::io",
    "async fn",
    ".await",
    "tracing::",
    "std::env",
    "std::time::SystemTime",
    "Instant::now",
];

fn sources(dir: &Path, out: &mut Vec<std::path::PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            sources(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

#[test]
fn pure_modules_do_no_io() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    for module in ["route", "policy"] {
        sources(&root.join(module), &mut files);
    }
    assert!(
        files.len() >= 4,
        "expected the route and policy sources, found {files:?}"
    );
    let mut violations = Vec::new();
    for file in &files {
        let text = std::fs::read_to_string(file).unwrap();
        for (n, line) in text.lines().enumerate() {
            let code = line.split("//").next().unwrap_or_default();
            for word in FORBIDDEN {
                if code.contains(word) {
                    violations.push(format!("{}:{}: `{word}`", file.display(), n + 1));
                }
            }
        }
    }
    assert!(
        violations.is_empty(),
        "I/O in a pure module:\n{}",
        violations.join("\n")
    );
}

//! `portcullis`: parse the command line, start the runtime, map the result to an exit code.

use clap::Parser;
use portcullis::cli::{Cli, Command, flush_logs, init_logging, run};

// mimalloc (v2) instead of glibc's allocator: ~10 % less CPU per proxied request at peak
// (benches/README.md, 2026-12-06). Its arenas are committed lazily (`.cargo/config.toml`),
// which keeps 10,000 idle connections within the memory goal. It replaces `malloc` itself
// (the crate's `override` feature), and Rust's default allocator calls `malloc`: mimalloc's
// fast path. `mimalloc::MiMalloc` as the global allocator went through `mi_malloc_aligned`
// for every allocation, about 30 instructions more each (benches/README.md, fifteenth session).
use mimalloc as _;

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    // One process-wide rustls provider for anything that uses the default (Redis TLS, later
    // sinks); the gateway's own TLS code passes aws-lc-rs explicitly.
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    // `run` sets logging up from the config's `[log]` once it is loaded.
    if !matches!(cli.command, Command::Run { .. }) {
        init_logging(None, false);
    }
    // `PORTCULLIS_WORKER_THREADS`: size of the request runtime (default: one per CPU the
    // process may run on). Benchmarks set it to match the peer's worker count. One thread is a
    // current-thread runtime: the same single thread of request work, without the
    // work-stealing scheduler's cross-thread wake-ups (benches/README.md, 2026-12-06).
    let workers = std::env::var("PORTCULLIS_WORKER_THREADS")
        .ok()
        .and_then(|v| v.trim().parse::<usize>().ok())
        .filter(|&n| n > 0)
        .or_else(|| std::thread::available_parallelism().ok().map(usize::from))
        .unwrap_or(1);
    let mut builder = if workers == 1 {
        tokio::runtime::Builder::new_current_thread()
    } else {
        let mut builder = tokio::runtime::Builder::new_multi_thread();
        builder.worker_threads(workers);
        builder
    };
    // A request thread out of work commits the burst of audit events its requests wait for:
    // one group commit, without a hand-off to the writer thread (see `audit::commit_pending`).
    builder.on_thread_park(portcullis::audit::commit_pending);
    let runtime = match builder.enable_all().build() {
        Ok(runtime) => runtime,
        Err(err) => {
            eprintln!("error: cannot start the runtime: {err}");
            return std::process::ExitCode::from(1);
        }
    };
    let result = runtime.block_on(run(cli));
    flush_logs();
    match result {
        Ok(code) => std::process::ExitCode::from(u8::try_from(code).unwrap_or(1)),
        Err(err) => {
            eprintln!("error: {err:#}");
            std::process::ExitCode::from(1)
        }
    }
}

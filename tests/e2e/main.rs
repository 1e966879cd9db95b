//! The integration suite: one test binary (one link, one process) for every end-to-end
//! scenario. Each module drives the gateway through real sockets; `support` is the harness.

mod support;

mod audit_crash;
mod audit_sinks;
mod audit_syslog;
mod audit_verify;
mod cli;
mod demo;
mod e2e_admin;
mod e2e_admin_roles;
mod e2e_decisions;
mod e2e_grants_redis;
mod e2e_identity;
mod e2e_idle;
mod e2e_limits;
mod e2e_ops;
mod e2e_redis_sentinel;
mod e2e_tls;
mod e2e_upstreams;
mod e2e_websocket;
mod explain_consistency;
mod purity;
mod security_headers;
mod security_jwt;
mod security_path;
mod security_smuggling;
mod seeds;

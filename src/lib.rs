//! Portcullis: an authorization enforcement gateway.
//!
//! A request flows one way through the stages below (DESIGN.md §1); each stage is a module
//! that owns its types and consumes only what the stage before produced:
//!
//! `proxy` (accept) → `route` (canonicalize, match) → `identity` → `grants` (resolve) →
//! `policy` (decide, pure) → `audit` → `proxy` (forward, only with a `policy::Grant`).
//!
//! `route` and `policy` are pure: no I/O, no async (checked by a test in `tests/e2e/purity.rs`).

pub mod admin;
pub mod audit;
pub mod cli;
pub mod config;
pub mod grants;
pub mod identity;
pub mod metrics;
pub mod policy;
pub mod proxy;
pub mod route;
pub mod runtime;

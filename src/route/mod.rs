//! Request target → canonical path → route (DESIGN.md §3, security.md R2–R4).
//!
//! Pure: no I/O. `canonical` turns the raw request path into the one form that is both matched
//! and forwarded, or rejects it; `table` matches (method, canonical path) with one matchit
//! router per method.

#![deny(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

pub mod canonical;
pub mod table;

pub use canonical::{PathError, canonicalize, decode_segment};
pub use table::{RouteConflict, RouteMatch, RouteTable, RouteTableBuilder};

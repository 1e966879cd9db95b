//! JWT verification details.

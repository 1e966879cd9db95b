//! The data plane: listener, pipeline, header hygiene, forwarding, and the single
//! refusal → response mapping (`respond`).

pub mod cors;
pub mod forward;
pub mod headers;
pub mod limits;
pub mod me;
pub mod pipeline;
pub mod respond;
pub mod server;
pub mod tls;

use std::sync::Arc;

use crate::audit::{AuditLog, AuditSetupError};
use crate::config::{Snapshot, StoreSettings};
use crate::grants::redis::RedisSetupError;
use crate::grants::{FileStore, RedisStore, Store};

pub use pipeline::{ConnInfo, Evaluation, Gateway};

/// The gateway could not be assembled from a validated config.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    Audit(#[from] AuditSetupError),
    #[error(transparent)]
    Upstream(#[from] forward::ForwardError),
    #[error(transparent)]
    Redis(#[from] RedisSetupError),
    #[error(transparent)]
    Tls(#[from] Box<tls::TlsError>),
}

impl Gateway {
    /// Assemble the runtime (store, upstream pools, audit writer) from a snapshot. With Redis
    /// this must run inside a Tokio runtime; it returns at once (the store connects in the
    /// background and answers 503 until Redis is reachable).
    pub fn build(snapshot: Snapshot) -> Result<Gateway, StartError> {
        let store = match &snapshot.grants.store {
            StoreSettings::File(data) => Store::File(FileStore::build(&snapshot.policy, data).0),
            StoreSettings::Redis(redis) => {
                Store::Redis(RedisStore::start(redis, &snapshot.grants)?)
            }
        };
        let upstreams = forward::Upstreams::build(&snapshot.upstreams, snapshot.limits.max_body)?;
        let tls = match &snapshot.server.tls {
            Some(settings) => Some(Arc::new(
                tls::Terminator::build(settings).map_err(Box::new)?,
            )),
            None => None,
        };
        let audit = AuditLog::start(&snapshot.audit)?;
        Ok(Gateway {
            authenticator: snapshot.authenticator.clone(),
            snapshot,
            store,
            upstreams,
            audit,
            tls,
        })
    }

    /// A gateway for offline decisions (`explain`, policy tests): the same decision path, but
    /// audit goes nowhere, so it never opens the spool a running gateway owns nor contacts a SIEM.
    pub fn build_offline(mut snapshot: Snapshot) -> Result<Gateway, StartError> {
        snapshot.audit.sinks.clear();
        snapshot.audit.spool = None;
        snapshot.audit.hmac_key = None;
        Self::build(snapshot)
    }

    pub fn into_shared(self) -> Arc<Gateway> {
        Arc::new(self)
    }
}

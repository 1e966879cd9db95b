//! The data plane: listener, pipeline, header hygiene, forwarding, and the single
//! refusal → response mapping (`respond`).

pub mod cors;
pub mod forward;
pub mod headers;
pub mod limits;
pub mod pipeline;
pub mod respond;
pub mod server;
pub mod tls;

use std::sync::Arc;

use crate::audit::{AuditLog, AuditSetupError};
use crate::config::{Snapshot, StoreSettings};
use crate::grants::{FileStore, Store};

pub use pipeline::{ConnInfo, Evaluation, Gateway};

/// The gateway could not be assembled from a validated config.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    Audit(#[from] AuditSetupError),
    #[error(transparent)]
    Upstream(#[from] forward::ForwardError),
    #[error(transparent)]
    Tls(#[from] Box<tls::TlsError>),
    #[error("grants.store = \"redis\" is not implemented yet; use store = \"file\"")]
    RedisUnsupported,
}

impl Gateway {
    /// Assemble the runtime (store, upstream pools, audit writer) from a snapshot.
    pub fn build(snapshot: Snapshot) -> Result<Gateway, StartError> {
        let store = match &snapshot.grants.store {
            StoreSettings::File(data) => Store::File(FileStore::build(&snapshot.policy, data).0),
            StoreSettings::Redis { .. } => return Err(StartError::RedisUnsupported),
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

    pub fn into_shared(self) -> Arc<Gateway> {
        Arc::new(self)
    }
}

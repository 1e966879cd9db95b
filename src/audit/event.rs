//! The canonical audit event (DESIGN.md §6) and the hash chain that seals it.
//!
//! The writer is the only place that assigns `seq` and `prev` and computes `hash`, so the
//! chain follows spool order exactly. The hash covers the exact bytes of the event as
//! serialized without its `hash` member; the sealed line is those bytes with
//! `,"hash":"..."}` in place of the closing brace, so a verifier can recompute it from the
//! line alone, without re-serializing (and so without depending on field order or escaping).

use std::sync::Arc;
use std::time::SystemTime;

use hmac::{Hmac, Mac};
use serde::Serialize;
use sha2::{Digest, Sha256};

/// Bumped when a field changes meaning; lets SIEM parsers branch.
pub const SCHEMA_VERSION: u32 = 1;
/// `prev` of the first event a spool ever holds.
pub const GENESIS: &str = "genesis";

/// One audit event. `seq` and `prev` are set by the writer; the rest when it is recorded.
#[derive(Debug, Clone, Serialize)]
pub struct AuditEvent {
    pub id: String,
    pub seq: u64,
    pub time: String,
    #[serde(flatten)]
    pub body: EventBody,
    pub gateway: Arc<str>,
    pub schema_version: u32,
    pub prev: String,
}

impl AuditEvent {
    /// A fresh event with a UUIDv7 id and the current time; `seq`/`prev` are the writer's.
    pub fn new(gateway: Arc<str>, body: EventBody) -> AuditEvent {
        AuditEvent {
            id: uuid::Uuid::now_v7().to_string(),
            seq: 0,
            time: humantime::format_rfc3339_micros(SystemTime::now()).to_string(),
            body,
            gateway,
            schema_version: SCHEMA_VERSION,
            prev: String::new(),
        }
    }
}

/// The event types; `type` in JSON.
#[derive(Debug, Clone, Serialize)]
#[serde(tag = "type")]
pub enum EventBody {
    #[serde(rename = "authz.decision")]
    Decision(Decision),
    #[serde(rename = "role.change")]
    RoleChange(RoleChange),
    #[serde(rename = "config.reload")]
    ConfigReload(ConfigReload),
    #[serde(rename = "audit.sink_failure")]
    SinkFailure(SinkFailure),
    #[serde(rename = "audit.checkpoint")]
    Checkpoint(Checkpoint),
    /// Events that were never written (`on_full = "drop"`); they have no `seq`.
    #[serde(rename = "audit.loss")]
    Loss(Loss),
}

impl EventBody {
    pub fn type_name(&self) -> &'static str {
        match self {
            EventBody::Decision(_) => "authz.decision",
            EventBody::RoleChange(_) => "role.change",
            EventBody::ConfigReload(_) => "config.reload",
            EventBody::SinkFailure(_) => "audit.sink_failure",
            EventBody::Checkpoint(_) => "audit.checkpoint",
            EventBody::Loss(_) => "audit.loss",
        }
    }
}

/// One authorization decision. No header other than `User-Agent` is ever copied in, and the
/// path is the canonical path without its query, so credentials cannot reach an event.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Decision {
    /// `allow`, `deny` or `error` (the gateway could not decide: 400, 503, 502, ...).
    pub decision: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<&'static str>,
    pub required: Vec<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tenant: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub subject: Option<String>,
    pub roles: Vec<String>,
    pub method: String,
    pub path: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub route: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub upstream: Option<String>,
    pub status: u16,
    pub client_ip: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub user_agent: Option<String>,
    pub request_id: String,
    pub latency_us: u64,
    pub mode: &'static str,
}

/// A grant change (`portcullis roles ...`, an admin API); flushed before it commits.
#[derive(Debug, Clone, Serialize)]
pub struct RoleChange {
    /// Who made the change.
    pub actor: String,
    pub tenant: String,
    pub subject: String,
    /// `assign`, `revoke`, `grant`, `deny`, `role_create`, ...
    pub change: String,
    pub roles: Vec<String>,
    pub permissions: Vec<String>,
}

/// A configuration (re)load attempt.
#[derive(Debug, Clone, Serialize)]
pub struct ConfigReload {
    pub source: String,
    /// SHA-256 of the config text, so an auditor can match the exact file.
    pub sha256: String,
    /// `applied` or `rejected`.
    pub outcome: &'static str,
    pub errors: usize,
}

/// A sink could not deliver (emitted once per outage, not per retry).
#[derive(Debug, Clone, Serialize)]
pub struct SinkFailure {
    pub sink: String,
    pub error: String,
    pub retriable: bool,
    /// Events the sink had not delivered when it failed.
    pub pending: u64,
}

/// A periodic statement of the chain head; with an HMAC key it is signed like every event.
#[derive(Debug, Clone, Serialize)]
pub struct Checkpoint {
    pub head_seq: u64,
    pub head_hash: String,
    pub events_since_last: u64,
    pub dropped_since_last: u64,
}

/// Events dropped before they were sequenced (spool full with `on_full = "drop"`).
#[derive(Debug, Clone, Serialize)]
pub struct Loss {
    pub count: u64,
    pub cause: &'static str,
}

/// The chain state: previous hash and optional HMAC key.
pub struct Chain {
    prev: String,
    key: Option<Vec<u8>>,
}

impl Chain {
    pub fn new(prev: String, key: Option<Vec<u8>>) -> Chain {
        Chain { prev, key }
    }

    pub fn prev(&self) -> &str {
        &self.prev
    }

    /// Go back to `prev` (a batch that was sealed but could not be written).
    pub fn restore(&mut self, prev: String) {
        self.prev = prev;
    }

    /// Serialize `event` with `prev` set, hash it and append the `hash` member. Advances the
    /// chain only on success.
    pub fn seal(
        &mut self,
        event: &mut AuditEvent,
        out: &mut Vec<u8>,
    ) -> Result<(), serde_json::Error> {
        event.prev.clone_from(&self.prev);
        let start = out.len();
        serde_json::to_writer(&mut *out, event)?;
        let hash = digest(self.key.as_deref(), out.get(start..).unwrap_or_default());
        // INVARIANT: serde_json writes an object, so the last byte is `}`.
        out.pop();
        out.extend_from_slice(b",\"hash\":\"");
        out.extend_from_slice(hash.as_bytes());
        out.extend_from_slice(b"\"}");
        self.prev = hash;
        Ok(())
    }
}

/// `sha256:<hex>` or, with a key, `hmac-sha256:<hex>` of `bytes`.
pub fn digest(key: Option<&[u8]>, bytes: &[u8]) -> String {
    match key {
        None => format!("sha256:{}", hex::encode(Sha256::digest(bytes))),
        Some(key) => match Hmac::<Sha256>::new_from_slice(key) {
            Ok(mut mac) => {
                mac.update(bytes);
                format!("hmac-sha256:{}", hex::encode(mac.finalize().into_bytes()))
            }
            // HMAC accepts keys of any length; unreachable, but never emit an unsealed event.
            Err(_) => format!("sha256:{}", hex::encode(Sha256::digest(bytes))),
        },
    }
}

/// Split a sealed line into (hashed bytes, stated hash): the line must end with
/// `,"hash":"<hash>"}`. Returns `None` for anything else.
pub fn unseal(line: &str) -> Option<(String, &str)> {
    let body = line.strip_suffix("\"}")?;
    let at = body.rfind(",\"hash\":\"")?;
    let hash = body.get(at + 9..)?;
    if hash.contains('"') {
        return None;
    }
    let mut hashed = body.get(..at)?.to_owned();
    hashed.push('}');
    Some((hashed, hash))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sealed_line_verifies_and_detects_edits() {
        let mut chain = Chain::new(GENESIS.into(), None);
        let mut event = AuditEvent::new(
            "gw".into(),
            EventBody::Loss(Loss {
                count: 3,
                cause: "spool_full",
            }),
        );
        event.seq = 7;
        let mut out = Vec::new();
        chain.seal(&mut event, &mut out).unwrap();
        let line = String::from_utf8(out).unwrap();
        let value: serde_json::Value = serde_json::from_str(&line).unwrap();
        assert_eq!(value["type"], "audit.loss");
        assert_eq!(value["prev"], GENESIS);
        let (hashed, stated) = unseal(&line).unwrap();
        assert_eq!(digest(None, hashed.as_bytes()), stated);
        assert_eq!(chain.prev(), stated);
        let edited = line.replace("\"count\":3", "\"count\":2");
        let (hashed, stated) = unseal(&edited).unwrap();
        assert_ne!(digest(None, hashed.as_bytes()), stated);
    }

    #[test]
    fn hmac_differs_from_plain_hash() {
        let a = digest(Some(b"k"), b"x");
        assert!(a.starts_with("hmac-sha256:"));
        assert_ne!(a, digest(Some(b"other"), b"x"));
    }
}

//! `portcullis audit verify FILE`: check the hash chain and sequence of JSON-lines events.
//!
//! Per gateway, events must carry consecutive `seq`s; each event's `prev` must equal the hash
//! of the event before it; each `hash` must match the event's bytes. A missing `seq` is a
//! gap (deletion or loss), a `seq` lower than one already seen is a reordering, a hash that
//! does not match is an alteration. Exact duplicates (at-least-once delivery) are allowed.

use std::collections::BTreeMap;

use serde_json::Value;

use super::event::{digest, unseal};

/// One finding, with the 1-based line it refers to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Finding {
    Unreadable {
        line: usize,
        reason: String,
    },
    Altered {
        line: usize,
        seq: u64,
    },
    Reordered {
        line: usize,
        seq: u64,
        after: u64,
    },
    Gap {
        gateway: String,
        from: u64,
        to: u64,
    },
    ChainBroken {
        line: usize,
        seq: u64,
    },
    Conflict {
        line: usize,
        seq: u64,
    },
    /// An `audit.loss` record: `count` events were never written (`cause`); with
    /// `at_most` (a crash counted at restart) the count is an upper bound.
    Loss {
        line: usize,
        count: u64,
        cause: String,
        at_most: bool,
    },
    /// HMAC-sealed events without a key to check them.
    Unverifiable {
        line: usize,
        seq: u64,
    },
}

impl std::fmt::Display for Finding {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Finding::Unreadable { line, reason } => {
                write!(f, "line {line}: not a sealed audit event ({reason})")
            }
            Finding::Altered { line, seq } => write!(
                f,
                "line {line}: event seq {seq} was altered (hash does not match its content)"
            ),
            Finding::Reordered { line, seq, after } => write!(
                f,
                "line {line}: event seq {seq} is out of order (after seq {after})"
            ),
            Finding::Gap { gateway, from, to } if from == to => {
                write!(f, "gateway {gateway}: event seq {from} is missing")
            }
            Finding::Gap { gateway, from, to } => {
                write!(f, "gateway {gateway}: events seq {from}..={to} are missing")
            }
            Finding::ChainBroken { line, seq } => write!(
                f,
                "line {line}: event seq {seq} does not chain to the event before it (prev differs)"
            ),
            Finding::Conflict { line, seq } => {
                write!(f, "line {line}: two different events claim seq {seq}")
            }
            Finding::Loss {
                line,
                count,
                cause,
                at_most: true,
            } => write!(
                f,
                "line {line}: the gateway recorded that at most {count} events were lost (audit.loss, cause {cause}; an upper bound)"
            ),
            Finding::Loss {
                line, count, cause, ..
            } => write!(
                f,
                "line {line}: the gateway recorded {count} dropped events (audit.loss, cause {cause})"
            ),
            Finding::Unverifiable { line, seq } => write!(
                f,
                "line {line}: event seq {seq} is HMAC-sealed; pass the key to verify it"
            ),
        }
    }
}

/// The result of a verification.
#[derive(Debug, Default)]
pub struct Report {
    pub events: usize,
    pub duplicates: usize,
    pub findings: Vec<Finding>,
}

impl Report {
    pub fn ok(&self) -> bool {
        self.findings.is_empty()
    }
}

struct Seen {
    line: usize,
    hash: String,
    prev: String,
}

/// Verify `text` (JSON lines). `key` checks HMAC-sealed events.
pub fn verify(text: &str, key: Option<&[u8]>) -> Report {
    let mut report = Report::default();
    // gateway -> seq -> event
    let mut streams: BTreeMap<String, BTreeMap<u64, Seen>> = BTreeMap::new();
    let mut max_seen: BTreeMap<String, u64> = BTreeMap::new();
    for (i, line) in text.lines().enumerate() {
        let n = i + 1;
        let line = line.trim_end_matches('\r');
        if line.trim().is_empty() {
            continue;
        }
        let value: Value = match serde_json::from_str(line) {
            Ok(v) => v,
            Err(err) => {
                report.findings.push(Finding::Unreadable {
                    line: n,
                    reason: err.to_string(),
                });
                continue;
            }
        };
        let (Some(seq), Some(gateway), Some(prev)) = (
            value.get("seq").and_then(Value::as_u64),
            value.get("gateway").and_then(Value::as_str),
            value.get("prev").and_then(Value::as_str),
        ) else {
            report.findings.push(Finding::Unreadable {
                line: n,
                reason: "no seq, gateway or prev".into(),
            });
            continue;
        };
        let Some((hashed, stated)) = unseal(line) else {
            report.findings.push(Finding::Unreadable {
                line: n,
                reason: "no trailing hash".into(),
            });
            continue;
        };
        report.events += 1;
        let recomputed = if stated.starts_with("hmac-sha256:") {
            match key {
                Some(k) => Some(digest(Some(k), hashed.as_bytes())),
                None => {
                    report.findings.push(Finding::Unverifiable { line: n, seq });
                    None
                }
            }
        } else {
            Some(digest(None, hashed.as_bytes()))
        };
        if recomputed.as_deref().is_some_and(|h| h != stated) {
            report.findings.push(Finding::Altered { line: n, seq });
        }
        if value.get("type").and_then(Value::as_str) == Some("audit.loss") {
            let count = value.get("count").and_then(Value::as_u64).unwrap_or(0);
            report.findings.push(Finding::Loss {
                line: n,
                count,
                cause: value
                    .get("cause")
                    .and_then(Value::as_str)
                    .unwrap_or_default()
                    .to_owned(),
                at_most: value.get("bound").and_then(Value::as_str) == Some("at_most"),
            });
        }
        let stream = streams.entry(gateway.to_owned()).or_default();
        if let Some(existing) = stream.get(&seq) {
            if existing.hash == stated {
                report.duplicates += 1;
            } else {
                report.findings.push(Finding::Conflict { line: n, seq });
            }
            continue;
        }
        let max = max_seen.entry(gateway.to_owned()).or_insert(0);
        if seq < *max {
            report.findings.push(Finding::Reordered {
                line: n,
                seq,
                after: *max,
            });
        }
        *max = (*max).max(seq);
        stream.insert(
            seq,
            Seen {
                line: n,
                hash: stated.to_owned(),
                prev: prev.to_owned(),
            },
        );
    }
    for (gateway, stream) in &streams {
        let mut before: Option<(u64, &Seen)> = None;
        for (seq, seen) in stream {
            if let Some((prev_seq, prev_seen)) = before {
                if *seq > prev_seq + 1 {
                    report.findings.push(Finding::Gap {
                        gateway: gateway.clone(),
                        from: prev_seq + 1,
                        to: seq - 1,
                    });
                } else if seen.prev != prev_seen.hash {
                    report.findings.push(Finding::ChainBroken {
                        line: seen.line,
                        seq: *seq,
                    });
                }
            }
            before = Some((*seq, seen));
        }
    }
    report
}

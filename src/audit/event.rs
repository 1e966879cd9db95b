//! The canonical audit event (DESIGN.md §6) and the hash chain that seals it.
//!
//! The writer is the only place that assigns `seq` and `prev` and computes `hash`, so the
//! chain follows spool order exactly. The hash covers the exact bytes of the event as
//! serialized without its `hash` member; the sealed line is those bytes with
//! `,"hash":"..."}` in place of the closing brace, so a verifier can recompute it from the
//! line alone, without re-serializing (and so without depending on field order or escaping).

use std::cell::Cell;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use hmac::{Hmac, Mac};
use serde::Serialize;
use sha2::{Digest, Sha256};

pub use super::text::Text;

/// Bumped when a field changes meaning; lets SIEM parsers branch.
pub const SCHEMA_VERSION: u32 = 1;
/// `prev` of the first event a spool ever holds.
pub const GENESIS: &str = "genesis";

/// One audit event. `seq` is set by the writer (and `prev` passed to `Chain::seal`); the rest
/// when it is recorded. Building one allocates nothing beyond the body: the id and the time
/// are plain values, formatted by the writer straight into the spool batch.
#[derive(Debug, Clone)]
pub struct AuditEvent {
    /// UUIDv7 (its timestamp is `time` in milliseconds).
    pub id: uuid::Uuid,
    pub seq: u64,
    pub time: SystemTime,
    pub body: EventBody,
    pub gateway: Arc<str>,
    pub schema_version: u32,
}

impl AuditEvent {
    /// A fresh event with a UUIDv7 id and the current time; `seq`/`prev` are the writer's.
    /// No system call beyond the clock: the id's random bits come from a thread-local PRNG
    /// (ids must be unique, not secret).
    pub fn new(gateway: Arc<str>, body: EventBody) -> AuditEvent {
        let time = SystemTime::now();
        let millis = time
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
        let mut random = [0u8; 10];
        random[..8].copy_from_slice(&fastrand::u64(..).to_le_bytes());
        random[8..].copy_from_slice(&fastrand::u16(..).to_le_bytes());
        AuditEvent {
            id: uuid::Builder::from_unix_timestamp_millis(millis, &random).into_uuid(),
            seq: 0,
            time,
            body,
            gateway,
            schema_version: SCHEMA_VERSION,
        }
    }

    /// Append the event as one JSON object, with `prev`, without `hash`. Field order is the
    /// canonical one: id, seq, time, type, the body's fields, gateway, schema_version, prev.
    pub fn write_json(&self, prev: &str, out: &mut Vec<u8>) -> Result<(), serde_json::Error> {
        self.write_json_after(prev.as_bytes(), is_clean(prev.as_bytes()), out)
    }

    /// `write_json` with `prev_clean`: whether `prev` has nothing to escape (the chain knows
    /// its own hashes are hex).
    fn write_json_after(
        &self,
        prev: &[u8],
        prev_clean: bool,
        out: &mut Vec<u8>,
    ) -> Result<(), serde_json::Error> {
        out.extend_from_slice(b"{\"id\":\"");
        write_uuid(out, &self.id);
        out.extend_from_slice(b"\",\"seq\":");
        write_u64(out, self.seq);
        out.extend_from_slice(b",\"time\":\"");
        out.extend_from_slice(&rfc3339_micros(self.time));
        out.extend_from_slice(b"\",");
        match &self.body {
            // Every request's event: written by hand (a third of serde's instructions), the
            // same bytes (`decision_json_is_serde_json` checks it).
            EventBody::Decision(d) => {
                out.extend_from_slice(b"\"type\":\"authz.decision\"");
                d.write_members(out);
            }
            body => {
                // The body serializes as `{"type":"...",...}`: splice it in without its braces.
                let at = out.len();
                serde_json::to_writer(&mut *out, body)?;
                // INVARIANT: an internally tagged enum serializes as an object with at least `type`.
                out.remove(at);
                out.pop();
            }
        }
        out.extend_from_slice(b",\"gateway\":\"");
        json_contents(out, self.gateway.as_bytes());
        out.extend_from_slice(b"\",\"schema_version\":");
        write_u64(out, u64::from(self.schema_version));
        out.extend_from_slice(b",\"prev\":\"");
        if prev_clean {
            out.extend_from_slice(prev);
        } else {
            json_contents(out, prev);
        }
        out.extend_from_slice(b"\"}");
        Ok(())
    }
}

/// A JSON string's contents without its quotes, escaped exactly as `serde_json` escapes
/// them: `"` and `\` and the control characters below 0x20 (`\b \t \n \f \r` by name, the
/// rest as `\u00xx`, lowercase); everything else, DEL and non-ASCII included, as is. Only
/// ASCII bytes are ever escaped, so the output is as valid UTF-8 as the input. The quotes go
/// into the member names around it (`,"tenant":"`): one copy per member instead of three.
fn json_contents(out: &mut Vec<u8>, bytes: &[u8]) {
    // Nearly every value has nothing to escape: one check, one copy.
    if is_clean(bytes) {
        out.extend_from_slice(bytes);
        return;
    }
    json_escaped(out, bytes);
}

/// Whether `bytes` has nothing JSON escapes. Sixteen bytes at a time, written so that the
/// compiler turns each block into a few vector compares (no branch per byte), the last block
/// overlapping the one before it; shorter values as one or two overlapping words.
fn is_clean(bytes: &[u8]) -> bool {
    let word = |chunk: &[u8]| u64::from_le_bytes(<[u8; 8]>::try_from(chunk).unwrap_or_default());
    let block_escapes = |chunk: &[u8]| {
        <&[u8; 16]>::try_from(chunk).map_or(true, |block| {
            // `|`, not `any`: no early exit, so the block is one vector compare.
            block.iter().fold(false, |found, &b| found | escapes(b))
        })
    };
    let len = bytes.len();
    // Missing bytes read as 0, which escapes: the exact (slow) path then decides.
    let byte = |at: usize| u64::from(bytes.get(at).copied().unwrap_or(0));
    let half = |at: usize| {
        bytes
            .get(at..at + 4)
            .and_then(|h| <[u8; 4]>::try_from(h).ok())
            .map_or(0, |h| u64::from(u32::from_le_bytes(h)))
    };
    // Short values as one word: the bytes themselves (overlapping where that covers them
    // all), the rest filled with `a`.
    if len == 0 {
        return true;
    }
    if len < 4 {
        let word = byte(0) | byte(len / 2) << 8 | byte(len - 1) << 16 | 0x6161_6161_6100_0000;
        return !needs_escape_in(word);
    }
    if len < 8 {
        return !needs_escape_in(half(0) | half(len - 4) << 32);
    }
    if len < 16 {
        return !needs_escape_in(word(bytes.get(..8).unwrap_or_default()))
            && !needs_escape_in(word(bytes.get(len - 8..).unwrap_or_default()));
    }
    !bytes.chunks_exact(16).any(block_escapes) && !bytes.get(len - 16..).is_none_or(block_escapes)
}

/// Whether JSON escapes the byte: below 0x20, `"`, `\`.
fn escapes(b: u8) -> bool {
    (b < 0x20) | (b == b'"') | (b == b'\\')
}

/// `json_contents` of bytes with something to escape.
#[cold]
fn json_escaped(out: &mut Vec<u8>, bytes: &[u8]) {
    out.reserve(bytes.len());
    let mut rest = bytes;
    while let Some(at) = first_escape(rest) {
        let (Some(clean), Some(&b), Some(tail)) =
            (rest.get(..at), rest.get(at), rest.get(at + 1..))
        else {
            break;
        };
        out.extend_from_slice(clean);
        let short = match b {
            b'"' => b'"',
            b'\\' => b'\\',
            0x08 => b'b',
            b'\t' => b't',
            b'\n' => b'n',
            0x0c => b'f',
            b'\r' => b'r',
            _ => b'u',
        };
        if short == b'u' {
            const HEX: &[u8; 16] = b"0123456789abcdef";
            out.extend_from_slice(&[
                b'\\',
                b'u',
                b'0',
                b'0',
                HEX[usize::from(b >> 4)],
                HEX[usize::from(b & 0xf)],
            ]);
        } else {
            out.extend_from_slice(&[b'\\', short]);
        }
        rest = tail;
    }
    out.extend_from_slice(rest);
}

/// The offset of the first byte JSON escapes (below 0x20, `"`, `\`), if any. Eight bytes at
/// a time: most text has nothing to escape.
fn first_escape(bytes: &[u8]) -> Option<usize> {
    let mut clean = 0;
    for word in bytes.chunks_exact(8) {
        // A chunk is 8 bytes; the fallback (all zero) only sends it to the byte scan below.
        let word = u64::from_le_bytes(<[u8; 8]>::try_from(word).unwrap_or_default());
        if needs_escape_in(word) {
            break;
        }
        clean += 8;
    }
    bytes
        .get(clean..)?
        .iter()
        .position(|&b| escapes(b))
        .map(|at| clean + at)
}

/// Whether any of the eight bytes in `word` is below 0x20, `"` or `\`. Exact as to whether
/// there is one (the borrow of a found byte may flag its neighbours, which is not looked at).
fn needs_escape_in(word: u64) -> bool {
    const ONES: u64 = 0x0101_0101_0101_0101;
    const HIGH: u64 = ONES * 0x80;
    let zero_byte = |v: u64| v.wrapping_sub(ONES) & !v & HIGH;
    let below_space = word.wrapping_sub(ONES * 0x20) & !word & HIGH;
    (below_space
        | zero_byte(word ^ (ONES * u64::from(b'"')))
        | zero_byte(word ^ (ONES * u64::from(b'\\'))))
        != 0
}

/// An address as `IpAddr`'s `Display` writes it; IPv4 (the common case) without the
/// formatter, which costs more than the rest of the event's request-path fields together.
pub fn ip_text(ip: std::net::IpAddr) -> Text {
    match ip {
        std::net::IpAddr::V4(v4) => {
            let mut out = [0u8; 15];
            let mut n = 0;
            for (i, octet) in v4.octets().into_iter().enumerate() {
                // `.` and up to three digits, right-aligned.
                let mut digits = [b'.'; 4];
                let mut at = digits.len();
                let mut v = octet;
                loop {
                    at -= 1;
                    digits[at] = b'0' + v % 10;
                    v /= 10;
                    if v == 0 {
                        break;
                    }
                }
                // A digit went to 3 at least, so `at >= 1`: the byte before it is a `.`.
                let from = if i > 0 { at - 1 } else { at };
                let part = digits.get(from..).unwrap_or_default();
                if let Some(to) = out.get_mut(n..n + part.len()) {
                    to.copy_from_slice(part);
                }
                n += part.len();
            }
            // Digits and dots only.
            Text::new(std::str::from_utf8(out.get(..n).unwrap_or_default()).unwrap_or_default())
        }
        std::net::IpAddr::V6(_) => ip.to_string().into(),
    }
}

/// `["a","b"]`.
fn json_text_array(out: &mut Vec<u8>, values: &[String]) {
    let Some((first, rest)) = values.split_first() else {
        out.extend_from_slice(b"[]");
        return;
    };
    out.extend_from_slice(b"[\"");
    json_contents(out, first.as_bytes());
    for v in rest {
        out.extend_from_slice(b"\",\"");
        json_contents(out, v.as_bytes());
    }
    out.extend_from_slice(b"\"]");
}

/// Decimal digits of `n`, without allocating.
pub(crate) fn write_u64(out: &mut Vec<u8>, n: u64) {
    out.extend_from_slice(itoa::Buffer::new().format(n).as_bytes());
}

thread_local! {
    /// The whole second `rfc3339_micros` formatted last, and its `YYYY-MM-DDTHH:MM:SS.`:
    /// events come many to a second, and the calendar arithmetic was most of their time field.
    static LAST_SECOND: Cell<(u64, [u8; 20])> = const { Cell::new((u64::MAX, [0; 20])) };
}

/// `YYYY-MM-DDTHH:MM:SS.ffffffZ` (what `humantime::format_rfc3339_micros` writes), on the
/// stack. Times before 1970 print as the epoch (a clock that far off is not an audit time).
pub fn rfc3339_micros(time: SystemTime) -> [u8; 27] {
    let d = time.duration_since(UNIX_EPOCH).unwrap_or_default();
    let secs = d.as_secs();
    let (cached, mut prefix) = LAST_SECOND.get();
    if cached != secs {
        prefix = seconds_prefix(secs);
        LAST_SECOND.set((secs, prefix));
    }
    let mut out = *b"0000-00-00T00:00:00.000000Z";
    out[..20].copy_from_slice(&prefix);
    let mut micros = d.subsec_micros();
    for digit in out[20..26].iter_mut().rev() {
        *digit = b'0' + (micros % 10) as u8;
        micros /= 10;
    }
    out
}

/// `YYYY-MM-DDTHH:MM:SS.` of `secs` since the epoch.
fn seconds_prefix(secs: u64) -> [u8; 20] {
    let days = i64::try_from(secs / 86_400).unwrap_or(0);
    let rem = secs % 86_400;
    // Howard Hinnant's civil_from_days.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    let mut out = *b"0000-00-00T00:00:00.";
    let mut put = |at: usize, width: usize, mut v: u64| {
        for i in (at..at + width).rev() {
            out[i] = b'0' + (v % 10) as u8;
            v /= 10;
        }
    };
    put(0, 4, u64::try_from(year).unwrap_or(0));
    put(5, 2, u64::try_from(month).unwrap_or(0));
    put(8, 2, u64::try_from(day).unwrap_or(0));
    put(11, 2, rem / 3600);
    put(14, 2, rem / 60 % 60);
    put(17, 2, rem % 60);
    out
}

/// The event types; `type` in JSON.
#[derive(Debug, Clone, Serialize)]
#[serde(tag = "type")]
#[expect(
    clippy::large_enum_variant,
    reason = "a decision is the event of every request and its `Text` fields are inline on \
              purpose: boxing it would add an allocation per request; the body is moved \
              into the event's own box once"
)]
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
    #[serde(rename = "access.review")]
    AccessReview(AccessReview),
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
            EventBody::AccessReview(_) => "access.review",
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
    /// Shared with the route (`config::RouteEntry::required`).
    pub required: Arc<[String]>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tenant: Option<Text>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub subject: Option<Text>,
    /// Shared with the cached principal (`PrincipalGrants::role_names_shared`).
    pub roles: Arc<[String]>,
    pub method: Text,
    pub path: Text,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub route: Option<Text>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub upstream: Option<Text>,
    pub status: u16,
    pub client_ip: Text,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub user_agent: Option<Text>,
    pub request_id: Text,
    pub latency_us: u64,
    pub mode: &'static str,
}

impl Decision {
    /// The members after `type`, each preceded by a comma, in declaration order and skipping
    /// what serde skips: byte for byte what `#[derive(Serialize)]` writes.
    fn write_members(&self, out: &mut Vec<u8>) {
        let Decision {
            decision,
            reason,
            required,
            tenant,
            subject,
            roles,
            method,
            path,
            route,
            upstream,
            status,
            client_ip,
            user_agent,
            request_id,
            latency_us,
            mode,
        } = self;
        // Each string member's name carries the value's opening quote, and the value is
        // followed by its closing one: Text is UTF-8 already, its bytes are not checked again.
        let string = |out: &mut Vec<u8>, name: &[u8], value: &[u8]| {
            out.extend_from_slice(name);
            json_contents(out, value);
            out.push(b'"');
        };
        let opt = |out: &mut Vec<u8>, name: &[u8], value: &Option<Text>| {
            if let Some(v) = value {
                string(out, name, v.as_bytes());
            }
        };
        string(out, b",\"decision\":\"", decision.as_bytes());
        if let Some(reason) = reason {
            string(out, b",\"reason\":\"", reason.as_bytes());
        }
        out.extend_from_slice(b",\"required\":");
        json_text_array(out, required);
        opt(out, b",\"tenant\":\"", tenant);
        opt(out, b",\"subject\":\"", subject);
        out.extend_from_slice(b",\"roles\":");
        json_text_array(out, roles);
        string(out, b",\"method\":\"", method.as_bytes());
        string(out, b",\"path\":\"", path.as_bytes());
        opt(out, b",\"route\":\"", route);
        opt(out, b",\"upstream\":\"", upstream);
        out.extend_from_slice(b",\"status\":");
        write_u64(out, u64::from(*status));
        string(out, b",\"client_ip\":\"", client_ip.as_bytes());
        opt(out, b",\"user_agent\":\"", user_agent);
        string(out, b",\"request_id\":\"", request_id.as_bytes());
        out.extend_from_slice(b",\"latency_us\":");
        write_u64(out, *latency_us);
        string(out, b",\"mode\":\"", mode.as_bytes());
    }
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
    /// The written Redis record as it was before the change, read where the write happens
    /// (the commit checks under `WATCH` that it is still this): for a principal
    /// `{"roles":[..],"grant":[..],"deny":[..],"scopes":[..]}`; for a tenant custom role its
    /// stored definition `{"permissions":[..],"own":[..],"inherits":[..]}` (`null`: none); for
    /// `tier`/`features` the tenant's entitlements `{"tier":"..."|null,"features":[..]}`.
    pub before: serde_json::Value,
    /// The same record as the change leaves it (same shape as `before`).
    pub after: serde_json::Value,
}

/// An access-review snapshot was taken (`portcullis review export`); recorded before the
/// document is printed.
#[derive(Debug, Clone, Serialize)]
pub struct AccessReview {
    /// Who took the review.
    pub actor: String,
    pub tenant: String,
    /// Principals listed in the exported document.
    pub principals: u64,
    /// `json` or `csv`.
    pub format: String,
    /// SHA-256 (hex) of the exported document, exactly the bytes printed, so an auditor can
    /// match a stored export to this event.
    pub sha256: String,
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

/// Events that were never written: dropped before they were sequenced (`spool_full`, spool
/// full with `on_full = "drop"`; exact), or lost with the in-memory queue when the previous
/// run crashed (`crash`, counted at restart; `bound = "at_most"`: an upper bound).
#[derive(Debug, Clone, Serialize)]
pub struct Loss {
    pub count: u64,
    pub cause: &'static str,
    /// `"at_most"` when `count` is an upper bound; absent when it is exact.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub bound: Option<&'static str>,
}

/// The chain state: previous hash and optional HMAC key.
pub struct Chain {
    /// UTF-8: a `str` given to `new`/`restore`, or a hash this chain wrote.
    prev: Vec<u8>,
    /// `prev` has nothing JSON escapes (always, once it is a hash this chain computed).
    prev_clean: bool,
    /// The HMAC with its key already absorbed (two compressions), cloned per event.
    mac: Option<Hmac<Sha256>>,
}

/// Longest hash text: `hmac-sha256:` + 64 hex digits.
const HASH_MAX: usize = 12 + 64;

impl Chain {
    pub fn new(prev: String, key: Option<Vec<u8>>) -> Chain {
        Chain {
            prev_clean: is_clean(prev.as_bytes()),
            prev: prev.into_bytes(),
            mac: key.as_deref().and_then(keyed),
        }
    }

    pub fn prev(&self) -> &str {
        // Never empty by failure: see the field's invariant.
        std::str::from_utf8(&self.prev).unwrap_or_default()
    }

    /// Go back to `prev` (a batch that was sealed but could not be written).
    pub fn restore(&mut self, prev: &str) {
        self.prev.clear();
        self.prev.extend_from_slice(prev.as_bytes());
        self.prev_clean = is_clean(prev.as_bytes());
    }

    /// Serialize `event` with `prev` into `out`, hash those bytes and append the `hash`
    /// member. Advances the chain only on success. Allocates nothing once `out` and the
    /// chain's own buffer have grown to size.
    pub fn seal(&mut self, event: &AuditEvent, out: &mut Vec<u8>) -> Result<(), serde_json::Error> {
        let start = out.len();
        if let Err(err) = event.write_json_after(&self.prev, self.prev_clean, out) {
            out.truncate(start);
            return Err(err);
        }
        let mut hash = [0u8; HASH_MAX];
        let hash = digest_into(
            self.mac.as_ref(),
            out.get(start..).unwrap_or_default(),
            &mut hash,
        );
        // INVARIANT: write_json ends the object with `}`.
        out.pop();
        out.extend_from_slice(b",\"hash\":\"");
        out.extend_from_slice(hash);
        out.extend_from_slice(b"\"}");
        self.prev.clear();
        self.prev.extend_from_slice(hash);
        // A prefix and hex digits.
        self.prev_clean = true;
        Ok(())
    }
}

/// An HMAC-SHA256 with `key` absorbed. HMAC takes keys of any length, so this is never
/// `None`; if it were, events would be sealed `sha256:`, which `audit verify` with a key
/// reports, rather than under some other key.
fn keyed(key: &[u8]) -> Option<Hmac<Sha256>> {
    Hmac::<Sha256>::new_from_slice(key).ok()
}

/// `digest`, written into `buf` (no allocation): ASCII, so it goes into the chain and the
/// line without a UTF-8 check.
fn digest_into<'b>(
    mac: Option<&Hmac<Sha256>>,
    bytes: &[u8],
    buf: &'b mut [u8; HASH_MAX],
) -> &'b [u8] {
    let (prefix, sum): (&str, [u8; 32]) = match mac {
        None => ("sha256:", Sha256::digest(bytes).into()),
        Some(mac) => {
            let mut mac = mac.clone();
            mac.update(bytes);
            ("hmac-sha256:", mac.finalize().into_bytes().into())
        }
    };
    let n = prefix.len() + 64;
    buf[..prefix.len()].copy_from_slice(prefix.as_bytes());
    // Lowercase hex, as `hex::encode` writes it: one lookup per byte.
    for (pair, byte) in buf[prefix.len()..n].chunks_exact_mut(2).zip(sum) {
        pair.copy_from_slice(&HEX_PAIRS[usize::from(byte)]);
    }
    &buf[..n]
}

/// The id as `Uuid`'s lowercase hyphenated text, through the hex table.
fn write_uuid(out: &mut Vec<u8>, id: &uuid::Uuid) {
    let mut text = [b'-'; uuid::fmt::Hyphenated::LENGTH];
    let mut at = 0;
    for (i, &byte) in id.as_bytes().iter().enumerate() {
        // 8-4-4-4-12 digits.
        if matches!(i, 4 | 6 | 8 | 10) {
            at += 1;
        }
        if let Some(pair) = text.get_mut(at..at + 2) {
            pair.copy_from_slice(&HEX_PAIRS[usize::from(byte)]);
        }
        at += 2;
    }
    out.extend_from_slice(&text);
}

/// Every byte's two lowercase hex digits.
static HEX_PAIRS: [[u8; 2]; 256] = {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut table = [[0u8; 2]; 256];
    let mut i = 0;
    while i < 256 {
        table[i] = [HEX[i >> 4], HEX[i & 0xf]];
        i += 1;
    }
    table
};

/// `sha256:<hex>` or, with a key, `hmac-sha256:<hex>` of `bytes`.
pub fn digest(key: Option<&[u8]>, bytes: &[u8]) -> String {
    let mut buf = [0u8; HASH_MAX];
    // A prefix and hex digits: ASCII.
    String::from_utf8_lossy(digest_into(key.and_then(keyed).as_ref(), bytes, &mut buf)).into_owned()
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

    /// A `GET` decision event of `gateway`, numbered `seq`.
    fn get_event(gateway: &str, decision: &'static str, seq: u64) -> AuditEvent {
        let mut event = AuditEvent::new(
            gateway.into(),
            EventBody::Decision(Decision {
                decision,
                method: "GET".into(),
                ..Decision::default()
            }),
        );
        event.seq = seq;
        event
    }

    /// `value` as a whole JSON string.
    fn json_str(out: &mut Vec<u8>, value: &str) {
        out.push(b'"');
        json_contents(out, value.as_bytes());
        out.push(b'"');
    }

    #[test]
    fn sealed_line_verifies_and_detects_edits() {
        let mut chain = Chain::new(GENESIS.into(), None);
        let mut event = AuditEvent::new(
            "gw".into(),
            EventBody::Loss(Loss {
                count: 3,
                cause: "spool_full",
                bound: None,
            }),
        );
        event.seq = 7;
        let mut out = Vec::new();
        chain.seal(&event, &mut out).unwrap();
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
    fn time_is_formatted_like_humantime() {
        use std::time::Duration;
        let mut t = 0u64;
        for _ in 0..2000 {
            // Spread over 1970..2400, with microseconds.
            t = t
                .wrapping_mul(6_364_136_223_846_793_005)
                .wrapping_add(1_442_695_040_888_963_407);
            let micros = t % 13_569_465_600_000_000;
            let time = UNIX_EPOCH + Duration::from_micros(micros);
            assert_eq!(
                std::str::from_utf8(&rfc3339_micros(time)).unwrap(),
                humantime::format_rfc3339_micros(time).to_string()
            );
        }
        // Within one second (the cached prefix), into the next, and back again.
        let second = 1_796_600_000_000_000;
        for edge in [
            0,
            951_782_400_000_000,
            4_107_542_399_999_999,
            second,
            second + 1,
            second + 999_999,
            second + 1_000_000,
            second + 7,
        ] {
            let time = UNIX_EPOCH + Duration::from_micros(edge);
            assert_eq!(
                std::str::from_utf8(&rfc3339_micros(time)).unwrap(),
                humantime::format_rfc3339_micros(time).to_string()
            );
        }
    }

    #[test]
    fn digests_are_lowercase_hex_of_sha256_and_hmac() {
        assert_eq!(
            digest(None, b"abc"),
            format!("sha256:{}", hex::encode(Sha256::digest(b"abc")))
        );
        let mut mac = Hmac::<Sha256>::new_from_slice(b"key").unwrap();
        mac.update(b"abc");
        assert_eq!(
            digest(Some(b"key"), b"abc"),
            format!("hmac-sha256:{}", hex::encode(mac.finalize().into_bytes()))
        );
    }

    #[test]
    fn canonical_layout_is_unchanged() {
        let event = get_event("gw\"1", "deny", 42);
        let mut out = Vec::new();
        Chain::new(GENESIS.into(), None)
            .seal(&event, &mut out)
            .unwrap();
        let line = String::from_utf8(out).unwrap();
        let value: serde_json::Value = serde_json::from_str(&line).unwrap();
        assert!(line.starts_with("{\"id\":\""), "{line}");
        let at: Vec<usize> = [
            "\"seq\":42,\"time\":\"",
            "\",\"type\":\"authz.decision\",\"decision\":\"deny\"",
            "\"gateway\":",
            "\"schema_version\":1,\"prev\":\"genesis\",\"hash\":\"sha256:",
        ]
        .iter()
        .map(|k| line.find(k).unwrap_or_else(|| panic!("{k} in {line}")))
        .collect();
        assert!(at.windows(2).all(|w| w[0] < w[1]), "{line}");
        assert_eq!(value["gateway"], "gw\"1");
        assert_eq!(value["id"], event.id.to_string());
        assert_eq!(event.id.get_version_num(), 7);
        assert_eq!(value["seq"], 42);
    }

    /// The hand-written `Decision` JSON is what serde's derive writes, escaping included.
    #[test]
    fn strings_escape_as_serde_json_does_at_every_length_and_offset() {
        for len in 0..40 {
            let clean = "abcdefghijklmnopqrstuvwxyz0123456789-._~"
                .get(..len)
                .unwrap();
            let mut cases = vec![clean.to_owned()];
            for at in 0..len {
                for special in ['"', '\\', '\n', '\u{1}', '\u{1f}', '\u{7f}', 'é'] {
                    let mut s: Vec<char> = clean.chars().collect();
                    s[at] = special;
                    cases.push(s.into_iter().collect());
                }
            }
            for case in cases {
                let mut ours = Vec::new();
                json_str(&mut ours, &case);
                assert_eq!(
                    String::from_utf8(ours).unwrap(),
                    serde_json::to_string(&case).unwrap(),
                    "{case:?}"
                );
            }
        }
    }

    /// The fast check is exact both ways: a clean value takes the one-copy path (the escape
    /// tests above would pass even if it never did), and any byte JSON escapes, at any offset
    /// and length, is seen.
    #[test]
    fn clean_check_is_exact_at_every_length_and_offset() {
        for len in 0..70 {
            // DEL and non-ASCII bytes are not escaped either.
            const CLEAN: &[u8] = b"az09-._~ /\x7f\xc3\xa9";
            let clean: Vec<u8> = (0..len).map(|i| CLEAN[i % CLEAN.len()]).collect();
            assert!(is_clean(&clean), "{clean:?}");
            for at in 0..len {
                for b in 0u8..=0xff {
                    let mut s = clean.clone();
                    s[at] = b;
                    assert_eq!(is_clean(&s), !escapes(b), "{s:?}");
                }
            }
        }
    }

    #[test]
    fn decision_json_is_serde_json() {
        let odd: Vec<String> = (0u8..0x80)
            .map(|b| format!("a{}z", char::from(b)))
            .chain(["", "\"\\", "é\u{7f}\u{2028}😀", "\\u0000\u{0}\u{1f}"].map(String::from))
            .collect();
        let mut cases = vec![Decision::default()];
        for (i, s) in odd.iter().enumerate() {
            let t = || Text::from(s.as_str());
            let some = |k: usize| (i % k != 0).then(t);
            cases.push(Decision {
                decision: "allow",
                reason: (i % 2 == 0).then_some("missing_permission"),
                required: odd.iter().take(i % 4).cloned().collect(),
                tenant: some(2),
                subject: some(3),
                roles: vec![s.clone(); i % 3].into(),
                method: t(),
                path: format!("/p/{s}{}", "x".repeat(i)).into(),
                route: some(5),
                upstream: some(7),
                status: u16::try_from(i * 97).unwrap_or(u16::MAX),
                client_ip: t(),
                user_agent: some(4),
                request_id: t(),
                latency_us: u64::MAX - i as u64,
                mode: "monitor",
            });
        }
        for d in cases {
            let mut ours = b"{\"type\":\"authz.decision\"".to_vec();
            d.write_members(&mut ours);
            ours.push(b'}');
            let serde = serde_json::to_vec(&EventBody::Decision(d.clone())).unwrap();
            assert_eq!(
                String::from_utf8_lossy(&ours),
                String::from_utf8_lossy(&serde)
            );
        }
        for s in &odd {
            let mut ours = Vec::new();
            json_str(&mut ours, s);
            assert_eq!(ours, serde_json::to_vec(s).unwrap());
        }
        // Every byte value at every offset of a word, and runs longer than a word.
        for b in 0u8..0x80 {
            for at in 0..20 {
                let mut s = "x".repeat(20);
                s.insert(at, char::from(b));
                s.push_str("é\"\u{1}abcdefghijk");
                let mut ours = Vec::new();
                json_str(&mut ours, &s);
                assert_eq!(ours, serde_json::to_vec(&s).unwrap(), "{s:?}");
            }
        }
    }

    #[test]
    fn ip_text_is_display() {
        for ip in [
            "0.0.0.0",
            "203.0.113.9",
            "255.255.255.255",
            "10.0.100.1",
            "::1",
            "fe80::1",
        ] {
            let ip: std::net::IpAddr = ip.parse().unwrap();
            assert_eq!(ip_text(ip), *ip.to_string());
        }
        for n in [0u32, 1, 9, 10, 99, 100, 255, 256, 0x0a00_6401, u32::MAX] {
            let ip = std::net::IpAddr::V4(n.into());
            assert_eq!(ip_text(ip), *ip.to_string());
        }
    }

    /// The keyed chain (its HMAC prepared once, cloned per event) seals each line with the
    /// HMAC of exactly its bytes, linked by `prev`; a `prev` that needs escaping (recovered
    /// from a spool) is escaped, and the chain's own hashes after it are written as they are.
    #[test]
    fn keyed_chain_links_hmacs_and_escapes_a_recovered_prev() {
        let key = b"audit-key".to_vec();
        let mut chain = Chain::new("odd\"prev\\".into(), Some(key.clone()));
        let mut prev = "odd\"prev\\".to_owned();
        assert!(!chain.prev_clean);
        for seq in 1..=3 {
            let event = get_event("gw", "allow", seq);
            let mut out = Vec::new();
            chain.seal(&event, &mut out).unwrap();
            let line = String::from_utf8(out).unwrap();
            let value: serde_json::Value = serde_json::from_str(&line).unwrap();
            assert_eq!(value["prev"], prev.as_str(), "{line}");
            let (hashed, stated) = unseal(&line).unwrap();
            assert_eq!(digest(Some(&key), hashed.as_bytes()), stated);
            assert!(stated.starts_with("hmac-sha256:"));
            prev = stated.to_owned();
            // Its own hash is written as it is, without another scan.
            assert!(chain.prev_clean);
        }
        assert_eq!(chain.prev(), prev);
    }

    #[test]
    fn uuid_text_is_hyphenated_lowercase() {
        for _ in 0..1000 {
            let id = uuid::Uuid::from_u128(fastrand::u128(..));
            let mut out = b"x".to_vec();
            write_uuid(&mut out, &id);
            assert_eq!(out, format!("x{id}").into_bytes());
        }
    }

    #[test]
    fn hmac_differs_from_plain_hash() {
        let a = digest(Some(b"k"), b"x");
        assert!(a.starts_with("hmac-sha256:"));
        assert_ne!(a, digest(Some(b"other"), b"x"));
    }
}

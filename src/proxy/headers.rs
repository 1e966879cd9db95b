//! Header hygiene (security.md R5–R7): strip, then set.
//!
//! Order matters: hop-by-hop headers and every header the client named in `Connection` go
//! first, then client copies of identity, override, internal and forwarding headers; only
//! then does the pipeline add the gateway's own. So a `Connection: x-authz-subject` can only
//! ever remove the client's forged copy, never the header the gateway sets.

use http::header::{self, HeaderMap, HeaderName, HeaderValue};

use crate::config::HeaderNames;

/// Hop-by-hop headers (RFC 9110 §7.6.1) plus the framing headers the upstream client
/// re-derives from the body (R6: never copy `Content-Length`/`Transfer-Encoding`). Lower-case
/// names.
fn hop_by_hop(name: &str) -> bool {
    matches!(
        name,
        "connection"
            | "keep-alive"
            | "proxy-connection"
            | "proxy-authenticate"
            | "proxy-authorization"
            | "te"
            | "trailer"
            | "transfer-encoding"
            | "upgrade"
            | "http2-settings"
            | "content-length"
    )
}

/// Client headers that would let a caller pick the identity, method, URL or client address
/// the upstream believes in (lower-case names), and the gateway's own identity headers.
fn is_spoofable(name: &str, names: &HeaderNames) -> bool {
    let listed = match name.strip_prefix("x-") {
        Some(rest) => {
            matches!(
                rest,
                "real-ip"
                    | "client-ip"
                    | "http-method-override"
                    | "http-method"
                    | "method-override"
                    | "original-url"
                    | "rewrite-url"
                    | "original-uri"
                    | "original-method"
                    | "roles"
                    | "permissions"
                    | "scopes"
                    | "remote-user"
                    | "middleware-subrequest"
            ) || [
                "forwarded-",
                "envoy-",
                "authz-",
                "user-",
                "tenant-",
                "auth-request-",
                "consumer-",
                "authenticated-",
            ]
            .iter()
            .any(|p| rest.starts_with(p))
        }
        None => matches!(name, "forwarded" | "true-client-ip" | "remote-user"),
    };
    listed
        || name == names.subject
        || name == names.tenant
        || name == names.roles
        || name == names.scope
        || name == names.request_id
}

/// Names listed in the `Connection` header(s), lower-cased; tokens may be padded with spaces
/// or tabs (RFC 9110 §5.6.1: a value with a tab was skipped whole before). Hop-by-hop names
/// both sanitizers remove anyway (`keep-alive`, the usual token) are left out: a `HeaderName`
/// for a non-standard name is an allocation per request.
fn connection_tokens(headers: &HeaderMap) -> Vec<HeaderName> {
    let mut tokens = Vec::new();
    for value in headers.get_all(header::CONNECTION) {
        for token in value.as_bytes().split(|&b| b == b',') {
            let token = token.trim_ascii();
            // Lower-cased on the stack: the longest hop-by-hop name has 19 bytes.
            let mut lower = [0u8; 24];
            let removed_anyway = lower.get_mut(..token.len()).is_some_and(|lower| {
                lower.copy_from_slice(token);
                lower.make_ascii_lowercase();
                std::str::from_utf8(lower)
                    .is_ok_and(|name| name != "content-length" && hop_by_hop(name))
            });
            if removed_anyway || token.is_empty() {
                continue;
            }
            if let Ok(name) = HeaderName::from_bytes(token) {
                tokens.push(name);
            }
        }
    }
    tokens
}

/// Remove from the client's headers everything the upstream must not receive from the client.
/// In place: the usual request has nothing to remove, and rebuilding the map cost a hash and
/// an insert per kept header. Whether anything was removed.
pub fn sanitize_request(headers: &mut HeaderMap, names: &HeaderNames) -> bool {
    let named = connection_tokens(headers);
    let dropped: Vec<HeaderName> = headers
        .keys()
        .filter(|name| {
            let s = name.as_str();
            hop_by_hop(s) || named.contains(name) || is_spoofable(s, names)
        })
        .cloned()
        .collect();
    let removed = !dropped.is_empty();
    for name in dropped {
        headers.remove(name);
    }
    removed
}

/// The gateway's own request headers (forwarding, request id, identity), set after the
/// client's map was sanitized (R5), which removed every client copy of these names. Kept
/// apart from that map: the lean HTTP/1 client writes them after it, where inserting each
/// into the map hashed and probed it (and grew it first); every other path inserts them.
#[derive(Debug, Default)]
pub struct Added(Vec<(HeaderName, HeaderValue)>);

impl Added {
    pub fn with_capacity(n: usize) -> Added {
        Added(Vec::with_capacity(n))
    }

    /// Add a field. Every name is set once: the forwarding names are constants and
    /// `[headers]` names are distinct and not among them (`config` refuses both), so release
    /// builds do not check (comparing custom names byte by byte took ~400 instructions a
    /// request).
    pub fn set(&mut self, name: HeaderName, value: HeaderValue) {
        debug_assert!(self.0.iter().all(|(n, _)| *n != name), "`{name}` set twice");
        self.0.push((name, value));
    }

    pub fn iter(&self) -> impl Iterator<Item = (&HeaderName, &HeaderValue)> {
        self.0.iter().map(|(n, v)| (n, v))
    }

    /// Into `headers`, replacing any field of the same name.
    pub fn insert_into(self, headers: &mut HeaderMap) {
        for (name, value) in self.0 {
            headers.insert(name, value);
        }
    }
}

/// Upstream response headers minus hop-by-hop ones and any forged `x-authz-source`
/// (only responses the gateway generates itself carry it).
pub fn sanitize_response(headers: &mut HeaderMap) {
    for name in connection_tokens(headers) {
        headers.remove(name);
    }
    // Find what to drop in one pass over the (few) response headers: removing each of the
    // eleven names blindly hashes every one of them on every response.
    let dropped = |name: &HeaderName| {
        let s = name.as_str();
        (s != "content-length" && hop_by_hop(s)) || s == "x-authz-source"
    };
    while let Some(name) = headers.keys().find(|n| dropped(n)).cloned() {
        headers.remove(&name);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names() -> HeaderNames {
        HeaderNames {
            subject: HeaderName::from_static("x-authz-subject"),
            tenant: HeaderName::from_static("x-authz-tenant"),
            roles: HeaderName::from_static("x-authz-roles"),
            scope: HeaderName::from_static("x-authz-scope"),
            request_id: HeaderName::from_static("x-request-id"),
        }
    }

    #[test]
    fn forwarded_set_is_client_minus_denylist_minus_connection_named() {
        let mut h = HeaderMap::new();
        for (k, v) in [
            ("accept", "application/json"),
            ("x-custom", "1"),
            ("x-custom", "2"),
            ("authorization", "Bearer t"),
            ("connection", "keep-alive, X-Secret-Hop, x-authz-subject"),
            ("x-secret-hop", "gone"),
            ("x-authz-subject", "admin"),
            ("X-Forwarded-For", "1.2.3.4"),
            ("x-http-method-override", "DELETE"),
            ("x-original-url", "/admin"),
            ("x-envoy-original-path", "/admin"),
            ("x-user-id", "root"),
            ("transfer-encoding", "chunked"),
            ("content-length", "5"),
            ("upgrade", "h2c"),
            ("http2-settings", "AAA"),
            ("te", "trailers"),
            ("x-request-id", "client-chosen"),
        ] {
            h.append(
                HeaderName::from_bytes(k.as_bytes()).unwrap(),
                HeaderValue::from_static(v),
            );
        }
        sanitize_request(&mut h, &names());
        let mut kept: Vec<String> = h.keys().map(|k| k.to_string()).collect();
        kept.sort();
        assert_eq!(kept, ["accept", "authorization", "x-custom"]);
        assert_eq!(h.get_all("x-custom").iter().count(), 2);
        assert_eq!(h.len(), 4, "every value of a removed name is gone");
    }

    #[test]
    fn every_listed_name_is_classified_and_ordinary_ones_are_not() {
        let names = names();
        for name in [
            "forwarded",
            "x-real-ip",
            "true-client-ip",
            "x-client-ip",
            "x-http-method-override",
            "x-http-method",
            "x-method-override",
            "x-original-url",
            "x-rewrite-url",
            "x-original-uri",
            "x-original-method",
            "x-roles",
            "x-permissions",
            "x-scopes",
            "remote-user",
            "x-remote-user",
            "x-middleware-subrequest",
            "x-forwarded-port",
            "x-envoy-original-path",
            "x-authz-anything",
            "x-user-email",
            "x-tenant-id",
            "x-auth-request-groups",
            "x-consumer-id",
            "x-authenticated-scope",
            "x-request-id",
        ] {
            assert!(is_spoofable(name, &names), "{name}");
        }
        for name in [
            "connection",
            "keep-alive",
            "proxy-connection",
            "proxy-authenticate",
            "proxy-authorization",
            "te",
            "trailer",
            "transfer-encoding",
            "upgrade",
            "http2-settings",
            "content-length",
        ] {
            assert!(hop_by_hop(name), "{name}");
        }
        for name in [
            "accept",
            "authorization",
            "host",
            "x-custom",
            "x-forwarded",
            "x-user",
            "user-agent",
            "content-type",
        ] {
            assert!(!is_spoofable(name, &names) && !hop_by_hop(name), "{name}");
        }
    }

    #[test]
    fn connection_tokens_are_read_case_insensitively_and_skip_what_goes_anyway() {
        let mut h = HeaderMap::new();
        h.append(
            header::CONNECTION,
            HeaderValue::from_static("Keep-Alive, X-Secret ,, TE,\tUpgrade"),
        );
        h.append(
            header::CONNECTION,
            HeaderValue::from_static("content-length"),
        );
        let tokens: Vec<String> = connection_tokens(&h)
            .iter()
            .map(|n| n.to_string())
            .collect();
        // `content-length` named in `Connection` goes too (the response sanitizer keeps it
        // otherwise); the other hop-by-hop names are removed anyway.
        assert_eq!(tokens, ["x-secret", "content-length"]);
    }

    #[test]
    fn response_loses_hop_by_hop_and_forged_source() {
        let mut h = HeaderMap::new();
        h.insert("connection", HeaderValue::from_static("x-drop"));
        h.insert("x-drop", HeaderValue::from_static("1"));
        h.insert("x-authz-source", HeaderValue::from_static("gateway"));
        h.insert("content-type", HeaderValue::from_static("text/plain"));
        h.insert("content-length", HeaderValue::from_static("3"));
        sanitize_response(&mut h);
        let mut kept: Vec<String> = h.keys().map(|k| k.to_string()).collect();
        kept.sort();
        assert_eq!(kept, ["content-length", "content-type"]);
    }

    #[test]
    fn response_loses_every_hop_by_hop_header_and_each_repeated_value() {
        let mut h = HeaderMap::new();
        for (k, v) in [
            ("connection", "keep-alive"),
            ("connection", "close"),
            ("keep-alive", "timeout=5"),
            ("proxy-connection", "keep-alive"),
            ("proxy-authenticate", "Basic"),
            ("proxy-authorization", "Basic eA=="),
            ("te", "trailers"),
            ("trailer", "x-t"),
            ("transfer-encoding", "chunked"),
            ("transfer-encoding", "gzip"),
            ("upgrade", "websocket"),
            ("http2-settings", "AAA"),
            ("x-authz-source", "gateway"),
            ("x-authz-source", "gateway"),
            ("etag", "\"1\""),
            ("content-length", "3"),
        ] {
            h.append(
                HeaderName::from_bytes(k.as_bytes()).unwrap(),
                HeaderValue::from_static(v),
            );
        }
        sanitize_response(&mut h);
        let mut kept: Vec<String> = h.keys().map(|k| k.to_string()).collect();
        kept.sort();
        assert_eq!(kept, ["content-length", "etag"]);

        // A length the upstream itself named as hop-by-hop goes too (as before).
        let mut h = HeaderMap::new();
        h.insert("connection", HeaderValue::from_static("content-length"));
        h.insert("content-length", HeaderValue::from_static("3"));
        sanitize_response(&mut h);
        assert!(h.is_empty(), "{h:?}");
    }
}

//! HTTP sinks over one hyper client: `splunk_hec` (`/services/collector/event`, concatenated
//! envelopes, `Authorization: Splunk <token>`), `http` (NDJSON batches, configurable
//! headers) and `elasticsearch` (`_bulk` with `create` and `_id` = event id, so a resend
//! answers 409 per item instead of duplicating).
//!
//! Acknowledged means: HEC 200 with code 0 (a 200 with another code is a failure), any 2xx
//! for NDJSON, and for `_bulk` every item 200/201/409.

use std::time::Duration;

use bytes::Bytes;
use http::header::{CONTENT_TYPE, HeaderName, HeaderValue, RETRY_AFTER};
use http::{Method, Request};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use serde_json::{Value, json};

use super::{Rejected, SinkError, tls_config};
use crate::audit::format;
use crate::audit::spool::Record;
use crate::audit::{AuditSetupError, read_secret};
use crate::config::{AuditFormat, SinkKind, SinkSettings};

const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
/// Response bodies read at most (error messages, `_bulk` items).
const MAX_RESPONSE: usize = 16 << 20;

type HttpsClient = Client<hyper_rustls::HttpsConnector<HttpConnector>, Full<Bytes>>;

enum Protocol {
    Hec {
        index: Option<String>,
        source: String,
        sourcetype: String,
    },
    Ndjson,
    Bulk {
        index: String,
    },
}

pub(crate) struct HttpSink {
    client: HttpsClient,
    uri: http::Uri,
    headers: Vec<(HeaderName, HeaderValue)>,
    protocol: Protocol,
    format: AuditFormat,
}

impl HttpSink {
    pub fn new(settings: &SinkSettings) -> Result<HttpSink, AuditSetupError> {
        let err = |reason: String| AuditSetupError::Sink {
            sink: settings.name.clone(),
            reason,
        };
        let header =
            |name: &str, value: &[u8]| -> Result<(HeaderName, HeaderValue), AuditSetupError> {
                let name = HeaderName::from_bytes(name.as_bytes())
                    .map_err(|_| err(format!("invalid header name `{name}`")))?;
                let mut value = HeaderValue::from_bytes(value)
                    .map_err(|_| err(format!("invalid value for header `{name}`")))?;
                value.set_sensitive(true);
                Ok((name, value))
            };
        let (url, tls, protocol, headers) = match &settings.kind {
            SinkKind::SplunkHec {
                url,
                token,
                index,
                source,
                sourcetype,
                tls,
            } => {
                let token = read_secret(token, &format!("HEC token of sink `{}`", settings.name))?;
                let mut auth = b"Splunk ".to_vec();
                auth.extend_from_slice(&token);
                let headers = vec![
                    header("authorization", &auth)?,
                    // One channel per sink instance: required with indexer acknowledgement,
                    // harmless without (research/siem.md §1.1).
                    header(
                        "x-splunk-request-channel",
                        uuid::Uuid::now_v7().to_string().as_bytes(),
                    )?,
                ];
                (
                    format!("{url}/services/collector/event"),
                    tls,
                    Protocol::Hec {
                        index: index.clone(),
                        source: source.clone(),
                        sourcetype: sourcetype.clone(),
                    },
                    headers,
                )
            }
            SinkKind::Http {
                url,
                headers,
                headers_env,
                tls,
            } => {
                let mut out = Vec::new();
                for (k, v) in headers {
                    out.push(header(k, v.as_bytes())?);
                }
                for (k, env) in headers_env {
                    let value = read_secret(
                        &crate::config::SecretSource::Env(env.clone()),
                        &format!("header `{k}` of sink `{}`", settings.name),
                    )?;
                    out.push(header(k, &value)?);
                }
                (url.clone(), tls, Protocol::Ndjson, out)
            }
            SinkKind::Elasticsearch {
                url,
                index,
                api_key,
                tls,
            } => {
                let mut out = Vec::new();
                if let Some(key) = api_key {
                    let key = read_secret(key, &format!("API key of sink `{}`", settings.name))?;
                    let mut auth = b"ApiKey ".to_vec();
                    auth.extend_from_slice(&key);
                    out.push(header("authorization", &auth)?);
                }
                (
                    format!("{url}/_bulk"),
                    tls,
                    Protocol::Bulk {
                        index: index.clone(),
                    },
                    out,
                )
            }
            _ => return Err(err("not an HTTP sink".into())),
        };
        let uri: http::Uri = url
            .parse()
            .map_err(|_| err(format!("invalid url `{url}`")))?;
        let config = tls_config(tls, false).map_err(err)?;
        let mut http = HttpConnector::new();
        http.enforce_http(false);
        http.set_connect_timeout(Some(Duration::from_secs(10)));
        http.set_nodelay(true);
        let connector = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(config)
            .https_or_http()
            .enable_http1()
            .wrap_connector(http);
        let client = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(Duration::from_secs(30))
            .build(connector);
        Ok(HttpSink {
            client,
            uri,
            headers,
            protocol,
            format: settings.format,
        })
    }

    fn body(&self, batch: &[Record]) -> Vec<u8> {
        let mut body = Vec::with_capacity(batch.len() * 800);
        for record in batch {
            let event = format::parse(&record.payload).unwrap_or_default();
            let rendered = format::render_parsed(self.format, &record.payload, &event);
            let doc: Value = if self.format.is_json() {
                serde_json::from_slice(&rendered).unwrap_or(Value::Null)
            } else {
                Value::String(String::from_utf8_lossy(&rendered).into_owned())
            };
            match &self.protocol {
                Protocol::Hec {
                    index,
                    source,
                    sourcetype,
                } => {
                    let millis = format::epoch_millis(&event);
                    let mut envelope = json!({
                        "time": format!("{}.{:03}", millis / 1000, millis % 1000).parse::<f64>().unwrap_or(0.0),
                        "host": event.get("gateway").cloned().unwrap_or(Value::Null),
                        "source": source,
                        "sourcetype": sourcetype,
                        "fields": {"type": event.get("type").cloned().unwrap_or(Value::Null), "id": event.get("id").cloned().unwrap_or(Value::Null)},
                        "event": doc,
                    });
                    if let (Some(index), Some(obj)) = (index, envelope.as_object_mut()) {
                        obj.insert("index".into(), index.clone().into());
                    }
                    let _ = serde_json::to_writer(&mut body, &envelope);
                    body.push(b'\n');
                }
                Protocol::Ndjson => {
                    if self.format.is_json() {
                        body.extend_from_slice(&rendered);
                    } else {
                        let _ = serde_json::to_writer(&mut body, &doc);
                    }
                    body.push(b'\n');
                }
                Protocol::Bulk { index } => {
                    let id = event.get("id").and_then(Value::as_str).unwrap_or_default();
                    let _ = serde_json::to_writer(
                        &mut body,
                        &json!({"create": {"_index": index, "_id": id}}),
                    );
                    body.push(b'\n');
                    body.extend_from_slice(&rendered);
                    body.push(b'\n');
                }
            }
        }
        body
    }

    pub async fn send(&mut self, batch: &[Record]) -> Result<Rejected, SinkError> {
        let body = self.body(batch);
        let content_type = match self.protocol {
            Protocol::Hec { .. } => "application/json",
            Protocol::Ndjson | Protocol::Bulk { .. } => "application/x-ndjson",
        };
        let mut request = Request::builder()
            .method(Method::POST)
            .uri(self.uri.clone())
            .header(CONTENT_TYPE, content_type);
        for (k, v) in &self.headers {
            request = request.header(k, v);
        }
        let request = request
            .body(Full::new(Bytes::from(body)))
            .map_err(|e| SinkError::Rejected(e.to_string()))?;
        let response = tokio::time::timeout(REQUEST_TIMEOUT, self.client.request(request))
            .await
            .map_err(|_| SinkError::Timeout)?
            .map_err(|e| SinkError::Connect {
                address: self.uri.to_string(),
                reason: error_chain(&e),
            })?;
        let status = response.status().as_u16();
        let retry_after = response
            .headers()
            .get(RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<u64>().ok())
            .map(|s| Duration::from_secs(s.min(300)));
        let body = tokio::time::timeout(
            REQUEST_TIMEOUT,
            http_body_util::Limited::new(response.into_body(), MAX_RESPONSE).collect(),
        )
        .await
        .map_err(|_| SinkError::Timeout)?
        .map(|b| b.to_bytes())
        .unwrap_or_default();
        match &self.protocol {
            Protocol::Hec { .. } => classify_hec(status, &body, retry_after).map(|()| Vec::new()),
            Protocol::Ndjson => classify_status(status, &body, retry_after).map(|()| Vec::new()),
            Protocol::Bulk { .. } => {
                classify_status(status, &body, retry_after)?;
                classify_bulk(&body, batch.len())
            }
        }
    }
}

fn error_chain(err: &dyn std::error::Error) -> String {
    let mut out = err.to_string();
    let mut source = err.source();
    while let Some(s) = source {
        out.push_str(": ");
        out.push_str(&s.to_string());
        source = s.source();
    }
    out
}

fn snippet(body: &[u8]) -> String {
    String::from_utf8_lossy(body.get(..512).unwrap_or(body)).into_owned()
}

/// Generic HTTP: any 2xx is delivered; 413 splits; the rest is classified by `SinkError`.
fn classify_status(
    status: u16,
    body: &[u8],
    retry_after: Option<Duration>,
) -> Result<(), SinkError> {
    match status {
        200..=299 => Ok(()),
        413 => Err(SinkError::TooLarge),
        _ => Err(SinkError::Status {
            status,
            body: snippet(body),
            retry_after,
        }),
    }
}

/// Splunk HEC: success only on 2xx with `code` 0 (or 24/25, "approaching capacity", which
/// still accepted the data). A 200 with any other code is a failure.
pub fn classify_hec(
    status: u16,
    body: &[u8],
    retry_after: Option<Duration>,
) -> Result<(), SinkError> {
    let parsed: Option<Value> = serde_json::from_slice(body).ok();
    let code = parsed
        .as_ref()
        .and_then(|v| v.get("code"))
        .and_then(Value::as_i64);
    let text = parsed
        .as_ref()
        .and_then(|v| v.get("text"))
        .and_then(Value::as_str)
        .map_or_else(|| snippet(body), str::to_owned);
    match (status, code) {
        (200..=299, None | Some(0 | 24 | 25)) => Ok(()),
        (413, _) => Err(SinkError::TooLarge),
        (_, Some(code)) => Err(SinkError::Hec { status, code, text }),
        (429 | 500..=599, None) => Err(SinkError::Status {
            status,
            body: text,
            retry_after,
        }),
        (_, None) => Err(SinkError::Hec {
            status,
            code: -1,
            text,
        }),
    }
}

/// `_bulk` answers 200 even when items fail: walk `items`. 201/200/409 (already there, from
/// an earlier attempt) are delivered; 429/5xx items make the whole batch retry (the items
/// that succeeded answer 409 next time); other 4xx items are rejected.
fn classify_bulk(body: &[u8], expected: usize) -> Result<Rejected, SinkError> {
    let parsed: Value = serde_json::from_slice(body).map_err(|e| SinkError::Status {
        status: 200,
        body: format!("unreadable _bulk response: {e}"),
        retry_after: None,
    })?;
    if parsed.get("errors").and_then(Value::as_bool) == Some(false) {
        return Ok(Vec::new());
    }
    let items = parsed
        .get("items")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    if items.len() != expected {
        return Err(SinkError::Status {
            status: 200,
            body: format!(
                "_bulk answered {} items for {expected} documents",
                items.len()
            ),
            retry_after: None,
        });
    }
    let mut rejected = Vec::new();
    let mut retry = None;
    for (i, item) in items.iter().enumerate() {
        let result = item.get("create").or_else(|| item.get("index"));
        let status = result
            .and_then(|r| r.get("status"))
            .and_then(Value::as_u64)
            .unwrap_or(0);
        match status {
            200 | 201 | 409 => {}
            429 | 500..=599 => retry = Some(status),
            _ => rejected.push(i),
        }
    }
    if let Some(status) = retry {
        return Err(SinkError::Status {
            status: u16::try_from(status).unwrap_or(503),
            body: "some _bulk items must be retried".into(),
            retry_after: None,
        });
    }
    Ok(rejected)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hec_200_with_error_code_is_a_failure() {
        assert!(classify_hec(200, br#"{"text":"Success","code":0}"#, None).is_ok());
        let err = classify_hec(200, br#"{"text":"Server is busy","code":9}"#, None).unwrap_err();
        assert!(err.is_retriable(), "{err}");
        let err = classify_hec(
            400,
            br#"{"text":"Invalid data format","code":6,"invalid-event-number":0}"#,
            None,
        )
        .unwrap_err();
        assert!(!err.is_retriable(), "bad data is dead-lettered: {err}");
        let err = classify_hec(503, b"", None).unwrap_err();
        assert!(err.is_retriable());
        let err = classify_hec(403, br#"{"text":"Invalid token","code":4}"#, None).unwrap_err();
        assert!(
            err.is_retriable(),
            "a config error keeps the backlog until it is fixed"
        );
    }

    #[test]
    fn bulk_items_are_walked() {
        let ok = br#"{"took":1,"errors":true,"items":[{"create":{"status":201}},{"create":{"status":409}},{"create":{"status":400}}]}"#;
        assert_eq!(classify_bulk(ok, 3).unwrap(), vec![2]);
        let retry =
            br#"{"errors":true,"items":[{"create":{"status":201}},{"create":{"status":429}}]}"#;
        assert!(classify_bulk(retry, 2).unwrap_err().is_retriable());
        assert!(
            classify_bulk(br#"{"errors":false,"items":[]}"#, 2)
                .unwrap()
                .is_empty()
        );
    }
}

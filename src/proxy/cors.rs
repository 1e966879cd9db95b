//! CORS (`[cors]`): the gateway answers browser preflights itself and adds the
//! `Access-Control-*` headers to responses for allowed origins.
//!
//! Without `[cors]` nothing here runs and a preflight is an ordinary `OPTIONS` request that
//! needs a route. With it, the gateway is the only authority: upstream `Access-Control-*`
//! response headers are replaced, so an upstream that echoes any origin cannot widen the list.
//! An origin is echoed only when it is listed; `"*"` is answered as `*` and never combined
//! with credentials (validation refuses that config).

use http::header::{self, HeaderName, HeaderValue};
use http::{HeaderMap, Method, Request, Response};

use super::respond::Refusal;
use crate::config::{AllowOrigins, CorsSettings};

const ALLOW_ORIGIN: HeaderName = header::ACCESS_CONTROL_ALLOW_ORIGIN;

/// The `Access-Control-Allow-Origin` value for `origin`, or `None` when it is not allowed.
fn allowed_origin(cors: &CorsSettings, origin: &HeaderValue) -> Option<HeaderValue> {
    match &cors.allow_origins {
        AllowOrigins::Any => Some(HeaderValue::from_static("*")),
        AllowOrigins::List(list) => {
            let o = origin.to_str().ok()?;
            list.iter()
                .any(|allowed| allowed.eq_ignore_ascii_case(o))
                .then(|| origin.clone())
        }
    }
}

fn join<T: AsRef<str>>(items: &[T]) -> Option<HeaderValue> {
    let s = items
        .iter()
        .map(AsRef::as_ref)
        .collect::<Vec<_>>()
        .join(", ");
    HeaderValue::from_str(&s).ok()
}

/// A browser preflight: `OPTIONS` with `Origin` and `Access-Control-Request-Method`.
pub fn is_preflight<B>(request: &Request<B>) -> bool {
    request.method() == Method::OPTIONS
        && request.headers().contains_key(header::ORIGIN)
        && request
            .headers()
            .contains_key(header::ACCESS_CONTROL_REQUEST_METHOD)
}

/// Answer a preflight (as `Err(Refusal::Preflight)`, the gateway-answer path, so it is audited
/// like every other gateway answer); `Ok(())` lets any other request through.
pub fn answer_preflight<B>(
    request: &Request<B>,
    cors: Option<&CorsSettings>,
) -> Result<(), Refusal> {
    let Some(cors) = cors else { return Ok(()) };
    if !is_preflight(request) {
        return Ok(());
    }
    let headers = request.headers();
    let mut out = Vec::new();
    if matches!(cors.allow_origins, AllowOrigins::List(_)) {
        out.push((header::VARY, HeaderValue::from_static("origin")));
    }
    let origin = headers
        .get(header::ORIGIN)
        .and_then(|o| allowed_origin(cors, o));
    let method_ok = headers
        .get(header::ACCESS_CONTROL_REQUEST_METHOD)
        .and_then(|m| Method::from_bytes(m.as_bytes()).ok())
        .is_some_and(|m| cors.allow_methods.contains(&m));
    let headers_ok = headers
        .get_all(header::ACCESS_CONTROL_REQUEST_HEADERS)
        .iter()
        .all(|v| {
            v.to_str().is_ok_and(|list| {
                list.split(',')
                    .map(str::trim)
                    .filter(|h| !h.is_empty())
                    .all(|h| {
                        cors.allow_headers
                            .iter()
                            .any(|a| a.as_str().eq_ignore_ascii_case(h))
                    })
            })
        });
    let (Some(origin), true, true) = (origin, method_ok, headers_ok) else {
        // Answered without CORS headers: the browser fails the preflight; nothing is forwarded.
        return Err(Refusal::Preflight {
            allowed: false,
            headers: out,
        });
    };
    out.push((ALLOW_ORIGIN, origin));
    if let Some(v) = join(
        &cors
            .allow_methods
            .iter()
            .map(Method::as_str)
            .collect::<Vec<_>>(),
    ) {
        out.push((header::ACCESS_CONTROL_ALLOW_METHODS, v));
    }
    if !cors.allow_headers.is_empty()
        && let Some(v) = join(&cors.allow_headers)
    {
        out.push((header::ACCESS_CONTROL_ALLOW_HEADERS, v));
    }
    if cors.allow_credentials {
        out.push((
            header::ACCESS_CONTROL_ALLOW_CREDENTIALS,
            HeaderValue::from_static("true"),
        ));
    }
    if let Some(age) = cors.max_age {
        out.push((
            header::ACCESS_CONTROL_MAX_AGE,
            HeaderValue::from(age.as_secs()),
        ));
    }
    Err(Refusal::Preflight {
        allowed: true,
        headers: out,
    })
}

/// Replace the response's CORS headers (not for preflights: `answer_preflight` set theirs) with the gateway's for the request's `origin`.
pub fn decorate<B>(cors: &CorsSettings, origin: Option<&HeaderValue>, response: &mut Response<B>) {
    let h: &mut HeaderMap = response.headers_mut();
    for name in [
        ALLOW_ORIGIN,
        header::ACCESS_CONTROL_ALLOW_CREDENTIALS,
        header::ACCESS_CONTROL_EXPOSE_HEADERS,
    ] {
        h.remove(name);
    }
    if matches!(cors.allow_origins, AllowOrigins::List(_)) {
        h.append(header::VARY, HeaderValue::from_static("origin"));
    }
    let Some(value) = origin.and_then(|o| allowed_origin(cors, o)) else {
        return;
    };
    h.insert(ALLOW_ORIGIN, value);
    if cors.allow_credentials {
        h.insert(
            header::ACCESS_CONTROL_ALLOW_CREDENTIALS,
            HeaderValue::from_static("true"),
        );
    }
    if !cors.expose_headers.is_empty()
        && let Some(v) = join(&cors.expose_headers)
    {
        h.insert(header::ACCESS_CONTROL_EXPOSE_HEADERS, v);
    }
}

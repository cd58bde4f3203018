//! The HTTP client of the CLI, the testnet tooling and the tests, which only ever
//! talk plain HTTP to a node's own port: ureq (no TLS), one call per request, a
//! timeout on the whole call and a bound on the body read.

use std::time::Duration;
use thiserror::Error;

/// Largest response body read (`/metrics` of a large group is well under it).
pub const MAX_BODY_BYTES: u64 = 16 * 1024 * 1024;

#[derive(Debug, Error)]
pub enum HttpError {
    #[error("bad node URL {0:?} (expected http://HOST:PORT)")]
    BadUrl(String),
    #[error("cannot reach {url}: {reason}")]
    Unreachable { url: String, reason: String },
    #[error("bad response from {url}: {reason}")]
    BadResponse { url: String, reason: String },
    #[error("unsupported method {0}")]
    Method(String),
}

/// `http://host:port[/...]`, checked before any call.
fn check_base(url: &str) -> Result<&str, HttpError> {
    let rest = url
        .strip_prefix("http://")
        .ok_or_else(|| HttpError::BadUrl(url.to_string()))?;
    let host = rest.split('/').next().unwrap_or_default();
    if host.is_empty() || !host.contains(':') {
        return Err(HttpError::BadUrl(url.to_string()));
    }
    Ok(url.trim_end_matches('/'))
}

/// Send `method` (GET, PUT or POST, with `body` as JSON) to `base` + `path`; return
/// the status code and the body, whatever the status.
///
/// # Errors
/// Bad URL, connection failure or timeout, a body over [`MAX_BODY_BYTES`] or not
/// UTF-8.
pub fn request(
    method: &str,
    base: &str,
    path: &str,
    body: Option<&str>,
    headers: &[(&str, &str)],
    timeout: Duration,
) -> Result<(u16, String), HttpError> {
    let url = format!("{}{path}", check_base(base)?);
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .timeout_global(Some(timeout))
        .http_status_as_error(false)
        // Our nodes are reached directly, never through a proxy from the environment.
        .proxy(None)
        .build()
        .into();
    let unreachable = |e: ureq::Error| HttpError::Unreachable {
        url: url.clone(),
        reason: e.to_string(),
    };
    let sent = match method {
        "GET" => with_headers(agent.get(&url), headers).call(),
        "PUT" | "POST" => {
            let req = if method == "PUT" {
                agent.put(&url)
            } else {
                agent.post(&url)
            };
            with_headers(req, headers)
                .content_type("application/json")
                .send(body.unwrap_or(""))
        }
        other => return Err(HttpError::Method(other.to_string())),
    };
    let mut response = sent.map_err(unreachable)?;
    let code = response.status().as_u16();
    let text = response
        .body_mut()
        .with_config()
        .limit(MAX_BODY_BYTES)
        .read_to_string()
        .map_err(|e| HttpError::BadResponse {
            url: url.clone(),
            reason: e.to_string(),
        })?;
    Ok((code, text))
}

fn with_headers<B>(
    mut req: ureq::RequestBuilder<B>,
    headers: &[(&str, &str)],
) -> ureq::RequestBuilder<B> {
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    req
}

/// GET with a timeout.
///
/// # Errors
/// As [`request`].
pub fn get(base: &str, path: &str, timeout: Duration) -> Result<(u16, String), HttpError> {
    request("GET", base, path, None, &[], timeout)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};
    use std::net::TcpListener;

    /// Serve one connection with `response` (raw bytes) and return the base URL.
    fn serve_once(response: Vec<u8>) -> String {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        std::thread::spawn(move || {
            let (mut s, _) = listener.accept().unwrap();
            let mut buf = [0u8; 4096];
            let _ = s.read(&mut buf);
            let _ = s.write_all(&response);
        });
        base
    }

    #[test]
    fn urls_are_checked_before_any_call() {
        assert!(matches!(
            get("127.0.0.1:80", "/", Duration::from_millis(200)),
            Err(HttpError::BadUrl(_))
        ));
        assert!(matches!(
            get("http://nohost", "/", Duration::from_millis(200)),
            Err(HttpError::BadUrl(_))
        ));
        assert!(matches!(
            get("http://127.0.0.1:1", "/", Duration::from_millis(200)),
            Err(HttpError::Unreachable { .. })
        ));
    }

    #[test]
    fn chunked_bodies_are_joined_and_error_statuses_returned() {
        let base = serve_once(
            b"HTTP/1.1 404 Not Found\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n"
                .to_vec(),
        );
        let (code, body) = get(&base, "/x", Duration::from_secs(5)).unwrap();
        assert_eq!((code, body.as_str()), (404, "abcde"));
    }

    #[test]
    fn a_body_over_the_bound_is_refused_not_read() {
        let claimed = MAX_BODY_BYTES + 1;
        let base = serve_once(
            format!("HTTP/1.1 200 OK\r\nContent-Length: {claimed}\r\n\r\nxxxx").into_bytes(),
        );
        assert!(matches!(
            get(&base, "/", Duration::from_secs(5)),
            Err(HttpError::BadResponse { .. })
        ));
    }

    #[test]
    fn a_body_that_is_not_utf8_is_an_error_not_a_panic() {
        let base = serve_once(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n\xff\xfe".to_vec());
        assert!(matches!(
            get(&base, "/", Duration::from_secs(5)),
            Err(HttpError::BadResponse { .. })
        ));
    }
}

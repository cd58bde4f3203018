//! A minimal HTTP/1.1 client for the CLI and testnet tooling, which only ever talk to
//! a node's own HTTP port on this machine: GET (and PUT/POST later) with a timeout.

use std::io::{Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::time::Duration;
use thiserror::Error;

#[derive(Debug, Error)]
pub enum HttpError {
    #[error("bad node URL {0:?} (expected http://HOST:PORT)")]
    BadUrl(String),
    #[error("cannot reach {url}: {reason}")]
    Unreachable { url: String, reason: String },
    #[error("bad response from {0}")]
    BadResponse(String),
}

/// `http://host:port[/...]` -> "host:port".
fn authority(url: &str) -> Result<&str, HttpError> {
    let rest = url
        .strip_prefix("http://")
        .ok_or_else(|| HttpError::BadUrl(url.to_string()))?;
    let host = rest.split('/').next().unwrap_or_default();
    if host.is_empty() || !host.contains(':') {
        return Err(HttpError::BadUrl(url.to_string()));
    }
    Ok(host)
}

/// Send a request; return (status code, body).
///
/// # Errors
/// Bad URL, connection failure or timeout, unparsable response.
pub fn request(
    method: &str,
    base: &str,
    path: &str,
    body: Option<&str>,
    headers: &[(&str, &str)],
    timeout: Duration,
) -> Result<(u16, String), HttpError> {
    let base = base.trim_end_matches('/');
    let host = authority(base)?;
    let url = format!("{base}{path}");
    let unreachable = |e: std::io::Error| HttpError::Unreachable {
        url: url.clone(),
        reason: e.to_string(),
    };
    let addr = host
        .to_socket_addrs()
        .map_err(unreachable)?
        .next()
        .ok_or_else(|| HttpError::BadUrl(base.to_string()))?;
    let mut stream = TcpStream::connect_timeout(&addr, timeout).map_err(unreachable)?;
    stream
        .set_read_timeout(Some(timeout))
        .map_err(unreachable)?;
    stream
        .set_write_timeout(Some(timeout))
        .map_err(unreachable)?;
    let body = body.unwrap_or("");
    let mut req = format!(
        "{method} {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\nContent-Length: {}\r\n",
        body.len()
    );
    if !body.is_empty() {
        req.push_str("Content-Type: application/json\r\n");
    }
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    req.push_str(body);
    stream.write_all(req.as_bytes()).map_err(unreachable)?;
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw).map_err(unreachable)?;
    let text = String::from_utf8_lossy(&raw);
    let (head, rest) = text
        .split_once("\r\n\r\n")
        .ok_or_else(|| HttpError::BadResponse(url.clone()))?;
    let code: u16 = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| HttpError::BadResponse(url.clone()))?;
    let chunked = head.lines().any(|l| {
        l.to_ascii_lowercase()
            .starts_with("transfer-encoding: chunked")
    });
    let body = if chunked {
        dechunk(rest)
    } else {
        rest.to_string()
    };
    Ok((code, body))
}

/// GET with a timeout.
///
/// # Errors
/// As [`request`].
pub fn get(base: &str, path: &str, timeout: Duration) -> Result<(u16, String), HttpError> {
    request("GET", base, path, None, &[], timeout)
}

fn dechunk(mut s: &str) -> String {
    let mut out = String::new();
    while let Some((size, rest)) = s.split_once("\r\n") {
        let Ok(n) = usize::from_str_radix(size.trim(), 16) else {
            break;
        };
        if n == 0 || rest.len() < n {
            break;
        }
        out.push_str(&rest[..n]);
        s = rest[n..].trim_start_matches("\r\n");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_are_checked() {
        assert!(matches!(
            authority("127.0.0.1:80"),
            Err(HttpError::BadUrl(_))
        ));
        assert_eq!(
            authority("http://127.0.0.1:8000/x").unwrap(),
            "127.0.0.1:8000"
        );
        assert!(matches!(
            get("http://127.0.0.1:1", "/", Duration::from_millis(200)),
            Err(HttpError::Unreachable { .. })
        ));
    }

    #[test]
    fn chunked_bodies_are_joined() {
        assert_eq!(dechunk("3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n"), "abcde");
    }
}

//! The CLI side of the admin routes: `bftnode byzantine set|clear` and
//! `bftnode generals propose`, over the node's HTTP port.

use crate::control::{BehaviourView, GeneralsView};
use crate::http_client;
use anyhow::{bail, Context as _};
use std::collections::BTreeMap;
use std::time::{Duration, Instant};

const HTTP_TIMEOUT: Duration = Duration::from_secs(5);
/// How long after the decision time to wait for lieutenants' reports.
const REPORT_GRACE: Duration = Duration::from_secs(5);

/// The admin token: `--token`, else `BFTNODE_ADMIN_TOKEN`.
///
/// # Errors
/// Neither is set.
pub fn token(flag: Option<String>) -> anyhow::Result<String> {
    flag.or_else(|| std::env::var("BFTNODE_ADMIN_TOKEN").ok())
        .context("no admin token: pass --token or set BFTNODE_ADMIN_TOKEN")
}

/// A JSON error body's message, or the raw body.
fn reason(body: &str) -> String {
    serde_json::from_str::<serde_json::Value>(body)
        .ok()
        .and_then(|v| v.get("error").and_then(|e| e.as_str()).map(str::to_string))
        .unwrap_or_else(|| body.trim().to_string())
}

fn call(
    method: &str,
    node: &str,
    path: &str,
    body: Option<&str>,
    token: Option<&str>,
) -> anyhow::Result<String> {
    let auth = token.map(|t| format!("Bearer {t}"));
    let headers: Vec<(&str, &str)> = auth
        .as_deref()
        .map(|a| vec![("Authorization", a)])
        .unwrap_or_default();
    let (code, text) = http_client::request(method, node, path, body, &headers, HTTP_TIMEOUT)?;
    match code {
        200..=299 => Ok(text),
        401 => bail!("{node}: unauthorized: {}", reason(&text)),
        _ => bail!("{node}: HTTP {code}: {}", reason(&text)),
    }
}

/// Switch `node` to `behaviour` with numeric `params`.
///
/// # Errors
/// Unreachable node, a refused token, an unknown behaviour.
pub fn set_behaviour(
    node: &str,
    token: &str,
    behaviour: &str,
    params: &BTreeMap<String, u64>,
) -> anyhow::Result<BehaviourView> {
    let mut body = serde_json::Map::new();
    body.insert("behaviour".into(), behaviour.into());
    for (k, v) in params {
        body.insert(k.clone(), (*v).into());
    }
    let text = call(
        "PUT",
        node,
        "/byzantine",
        Some(&serde_json::Value::Object(body).to_string()),
        Some(token),
    )?;
    serde_json::from_str(&text).with_context(|| format!("{node}: bad /byzantine answer"))
}

/// Parse `K=V` parameters (V a non-negative integer).
///
/// # Errors
/// A malformed pair.
pub fn parse_params(pairs: &[String]) -> anyhow::Result<BTreeMap<String, u64>> {
    pairs
        .iter()
        .map(|p| {
            let (k, v) = p
                .split_once('=')
                .with_context(|| format!("--param {p:?} is not KEY=VALUE"))?;
            let v: u64 = v
                .parse()
                .with_context(|| format!("--param {k}: {v:?} is not a non-negative integer"))?;
            Ok((k.to_string(), v))
        })
        .collect()
}

/// Start a generals round with `node` as commander; wait for the decisions.
///
/// # Errors
/// Unreachable node, a refused token, a bad value or m.
pub fn propose(
    node: &str,
    token: &str,
    value: &str,
    m: Option<u32>,
) -> anyhow::Result<GeneralsView> {
    let mut body = serde_json::json!({ "value": value });
    if let Some(m) = m {
        body["m"] = m.into();
    }
    let text = call(
        "POST",
        node,
        "/generals",
        Some(&body.to_string()),
        Some(token),
    )?;
    let started: GeneralsView =
        serde_json::from_str(&text).with_context(|| format!("{node}: bad /generals answer"))?;
    let wait = Duration::from_millis(
        started
            .decide_at_ms
            .saturating_sub(crate::generals_node::unix_now().as_millis() as u64),
    );
    let deadline = Instant::now() + wait + REPORT_GRACE;
    let path = format!("/generals/{}", started.id);
    loop {
        let view: GeneralsView = serde_json::from_str(&call("GET", node, &path, None, None)?)
            .with_context(|| format!("{node}: bad {path} answer"))?;
        if view.reports.len() >= view.n || Instant::now() > deadline {
            return Ok(view);
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// One line per replica: `replica <id>: <value or none>`.
#[must_use]
pub fn decision_lines(view: &GeneralsView) -> Vec<String> {
    (0..view.n)
        .map(|i| match view.reports.get(&i.to_string()) {
            Some(Some(v)) => format!("replica {i}: {v}"),
            Some(None) => format!("replica {i}: none"),
            None => format!("replica {i}: none (no report)"),
        })
        .collect()
}

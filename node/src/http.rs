//! The replica's HTTP interface (INTERFACE.md): probes, status, metrics and the
//! committed log here;
//! the admin routes (behaviours, generals) in [`crate::http_admin`].

use crate::committed_log::CommittedPage;
use crate::control::Control;
use crate::metrics::Metrics;
use crate::status::Status;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, oneshot, watch};

/// The event loop ticks every 100 ms; this much silence means it is stuck.
const HEALTH_STALE: Duration = Duration::from_secs(3);
/// How long `/status` waits for the event loop to answer.
const STATUS_WAIT: Duration = Duration::from_secs(2);

#[derive(Clone)]
pub struct HttpState {
    pub status: watch::Receiver<Status>,
    pub heartbeat: Arc<AtomicU64>,
    pub start: Instant,
    /// Replicas (including this one) that must be connected for `/ready`.
    pub quorum: usize,
    pub metrics: Arc<Metrics>,
    pub control: mpsc::Sender<Control>,
    /// Bearer token for the admin routes; None disables them.
    pub admin_token: Option<String>,
}

pub fn router(state: HttpState) -> Router {
    use crate::http_admin::{get_behaviour, get_general, propose_general, put_behaviour};
    Router::new()
        .route("/health", get(health))
        .route("/ready", get(ready))
        .route("/status", get(status))
        .route("/metrics", get(metrics))
        .route("/committed", get(committed))
        .route("/byzantine", get(get_behaviour).put(put_behaviour))
        .route("/generals", post(propose_general))
        .route("/generals/{id}", get(get_general))
        .with_state(state)
}

/// 200 while the event loop is alive (it refreshed its heartbeat recently).
async fn health(State(s): State<HttpState>) -> impl IntoResponse {
    let last = Duration::from_millis(s.heartbeat.load(Ordering::Relaxed));
    if s.start.elapsed().saturating_sub(last) < HEALTH_STALE {
        (StatusCode::OK, "ok")
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "event loop stalled")
    }
}

/// 200 when connected to a quorum (2f+1 including itself) and not in state transfer.
async fn ready(State(s): State<HttpState>) -> impl IntoResponse {
    let st = s.status.borrow().clone();
    if st.peers_connected + 1 >= s.quorum && !st.in_state_transfer {
        (StatusCode::OK, "ready".to_string())
    } else {
        let why = format!(
            "not ready: {} of {} peers connected, state transfer: {}",
            st.peers_connected,
            s.quorum - 1,
            st.in_state_transfer
        );
        (StatusCode::SERVICE_UNAVAILABLE, why)
    }
}

/// The status, asked of the event loop so that its state digest is of the state
/// it reports (`last_executed`); 503 if the loop is gone or does not answer within
/// [`STATUS_WAIT`] (`/health` says whether it is stuck).
async fn status(State(s): State<HttpState>) -> Response {
    let ask = async {
        let (reply, answer) = oneshot::channel();
        s.control.send(Control::Status { reply }).await.ok()?;
        answer.await.ok()
    };
    match tokio::time::timeout(STATUS_WAIT, ask).await {
        Ok(Some(status)) => Json::<Status>(status).into_response(),
        Ok(None) => (StatusCode::SERVICE_UNAVAILABLE, "event loop not running").into_response(),
        Err(_) => (StatusCode::SERVICE_UNAVAILABLE, "event loop did not answer").into_response(),
    }
}

/// `GET /committed?from=S&limit=N` (defaults 0 and 1,000; at most
/// [`crate::committed_log::MAX_PAGE`]).
#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct CommittedQuery {
    #[serde(default)]
    from: u64,
    #[serde(default = "default_committed_limit")]
    limit: usize,
}

fn default_committed_limit() -> usize {
    1_000
}

/// The batches executed since start (see [`crate::committed_log`]); 503 if the
/// event loop is gone, 400 for a malformed query.
async fn committed(
    State(s): State<HttpState>,
    query: Result<Query<CommittedQuery>, QueryRejection>,
) -> Response {
    let Ok(Query(q)) = query else {
        return (
            StatusCode::BAD_REQUEST,
            "query must be ?from=SEQ&limit=N (both optional, non-negative integers)",
        )
            .into_response();
    };
    let (reply, answer) = oneshot::channel();
    let asked = s.control.send(Control::Committed {
        from: q.from,
        limit: q.limit,
        reply,
    });
    match (asked.await, answer.await) {
        (Ok(()), Ok(page)) => Json::<CommittedPage>(page).into_response(),
        _ => (StatusCode::SERVICE_UNAVAILABLE, "event loop not running").into_response(),
    }
}

async fn metrics(State(s): State<HttpState>) -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        s.metrics.render(),
    )
}

//! Admin routes: `GET/PUT /byzantine` and `POST /generals`, `GET /generals/{id}`.
//! Changing anything needs `Authorization: Bearer <admin_token>` (401 otherwise);
//! a request the node cannot honour is 400 with a one-line reason.

use crate::control::{BehaviourView, Control, GeneralsView};
use crate::http::HttpState;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use bft_consensus::byzantine::Params;
use bft_consensus::generals::InstanceId;
use serde::Deserialize;
use tokio::sync::oneshot;

/// A refusal: status code and a one-line reason, served as `{"error": ...}`.
struct ApiError(StatusCode, String);

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.0, Json(serde_json::json!({ "error": self.1 }))).into_response()
    }
}

fn error(code: StatusCode, msg: impl Into<String>) -> Response {
    ApiError(code, msg.into()).into_response()
}

/// Compare in constant time, so the token cannot be guessed byte by byte.
fn same(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

fn authorize(s: &HttpState, headers: &HeaderMap) -> Result<(), ApiError> {
    let unauthorized = |m: &str| ApiError(StatusCode::UNAUTHORIZED, m.to_string());
    let Some(token) = s.admin_token.as_deref() else {
        return Err(unauthorized(
            "admin routes are disabled: no http.admin_token in the config",
        ));
    };
    let given = headers
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    match given {
        Some(g) if same(g.as_bytes(), token.as_bytes()) => Ok(()),
        Some(_) => Err(unauthorized("wrong admin token")),
        None => Err(unauthorized(
            "missing header Authorization: Bearer <admin_token>",
        )),
    }
}

/// Ask the event loop; 503 if it is gone.
async fn ask<T>(
    s: &HttpState,
    make: impl FnOnce(oneshot::Sender<T>) -> Control,
) -> Result<T, Response> {
    let (tx, rx) = oneshot::channel();
    let gone = || error(StatusCode::SERVICE_UNAVAILABLE, "event loop not running");
    s.control.send(make(tx)).await.map_err(|_| gone())?;
    rx.await.map_err(|_| gone())
}

pub async fn get_behaviour(State(s): State<HttpState>) -> Json<BehaviourView> {
    let st = s.status.borrow().clone();
    Json(BehaviourView {
        behaviour: st.behaviour,
        params: st.behaviour_params,
    })
}

/// `{"behaviour": NAME, ...params}`: every other key is a numeric parameter.
pub async fn put_behaviour(
    State(s): State<HttpState>,
    headers: HeaderMap,
    body: Option<Json<serde_json::Value>>,
) -> Response {
    if let Err(e) = authorize(&s, &headers) {
        return e.into_response();
    }
    let Some(Json(serde_json::Value::Object(mut obj))) = body else {
        return error(
            StatusCode::BAD_REQUEST,
            "body must be a JSON object {\"behaviour\": NAME, ...}",
        );
    };
    let name = match obj.remove("behaviour") {
        Some(serde_json::Value::String(n)) => n,
        _ => {
            return error(
                StatusCode::BAD_REQUEST,
                "missing string field \"behaviour\"",
            )
        }
    };
    let mut params = Params::new();
    for (k, v) in obj {
        match v.as_u64() {
            Some(n) => {
                params.insert(k, n);
            }
            None => {
                return error(
                    StatusCode::BAD_REQUEST,
                    format!("parameter {k:?} must be a non-negative integer"),
                )
            }
        }
    }
    match ask(&s, |reply| Control::SetBehaviour {
        name: name.clone(),
        params: params.clone(),
        reply,
    })
    .await
    {
        Ok(Ok(())) => Json(BehaviourView {
            behaviour: name,
            params,
        })
        .into_response(),
        Ok(Err(why)) => error(StatusCode::BAD_REQUEST, why),
        Err(e) => e.into_response(),
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProposeBody {
    value: String,
    /// Traitors to tolerate (default n-2, the most SM(m) can with n replicas).
    m: Option<u32>,
}

pub async fn propose_general(
    State(s): State<HttpState>,
    headers: HeaderMap,
    body: Result<Json<ProposeBody>, axum::extract::rejection::JsonRejection>,
) -> Response {
    if let Err(e) = authorize(&s, &headers) {
        return e.into_response();
    }
    let Ok(Json(body)) = body else {
        return error(
            StatusCode::BAD_REQUEST,
            "body must be {\"value\": STRING} (optional \"m\")",
        );
    };
    match ask(&s, |reply| Control::ProposeGeneral {
        value: body.value,
        m: body.m,
        reply,
    })
    .await
    {
        Ok(Ok(view)) => (StatusCode::CREATED, Json(view)).into_response(),
        Ok(Err(why)) => error(StatusCode::BAD_REQUEST, why),
        Err(e) => e.into_response(),
    }
}

pub async fn get_general(State(s): State<HttpState>, Path(id): Path<String>) -> Response {
    let id: InstanceId = match id.parse() {
        Ok(id) => id,
        Err(why) => return error(StatusCode::BAD_REQUEST, why),
    };
    match ask(&s, |reply| Control::GetGeneral { id, reply }).await {
        Ok(Some(view)) => Json::<GeneralsView>(view).into_response(),
        Ok(None) => error(
            StatusCode::NOT_FOUND,
            format!("no generals instance {id} here"),
        ),
        Err(e) => e.into_response(),
    }
}

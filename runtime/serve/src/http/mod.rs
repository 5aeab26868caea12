//! The HTTP/REST side of the Open Inference Protocol (KServe v2, as Triton serves it), plus
//! `/metrics`, PNG endpoints and the web page. [`router`] can be mounted in any axum service.

mod images;
pub(crate) mod infer;
mod openapi;
mod page;

use std::collections::HashMap;
use std::sync::Arc;

use axum::extract::{DefaultBodyLimit, FromRequestParts, Path, Query, State};
use axum::http::request::Parts;
use axum::http::{header, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, MethodRouter};
use axum::{Json, Router};
use serde_json::{json, Value};
use tower_http::catch_panic::CatchPanicLayer;

use crate::error::ServeError;
use crate::metrics;
use crate::model::Model;
use crate::state::ServerState;
use crate::tensor::DataType;

/// The state every handler gets.
type Shared = Arc<ServerState>;

/// Every route the server answers: method, path (axum's syntax, which is also the OpenAPI
/// document's) and handler. [`route_table`] lists the same pairs, and a test holds the OpenAPI
/// document to them.
fn routes() -> Vec<(Method, &'static str, MethodRouter<Shared>)> {
    // Each model route, plain and with `/versions/{version}` (the protocol's optional part).
    let model = |method: Method, plain, versioned, handler: MethodRouter<Shared>| {
        [
            (method.clone(), plain, handler.clone()),
            (method, versioned, handler),
        ]
    };
    let mut all = vec![
        (Method::GET, "/", get(page::index)),
        (Method::GET, "/openapi.json", get(openapi::document)),
        (Method::GET, "/v2", get(server_metadata)),
        (Method::GET, "/v2/", get(server_metadata)),
        (Method::GET, "/v2/health/live", get(live)),
        (Method::GET, "/v2/health/ready", get(ready)),
        (Method::POST, "/v2/repository/index", post(repository_index)),
        (Method::GET, "/metrics", get(metrics_page)),
    ];
    for pair in [
        model(
            Method::GET,
            "/v2/models/{name}",
            "/v2/models/{name}/versions/{version}",
            get(model_metadata),
        ),
        model(
            Method::GET,
            "/v2/models/{name}/ready",
            "/v2/models/{name}/versions/{version}/ready",
            get(model_ready),
        ),
        model(
            Method::GET,
            "/v2/models/{name}/config",
            "/v2/models/{name}/versions/{version}/config",
            get(model_config),
        ),
        model(
            Method::POST,
            "/v2/models/{name}/infer",
            "/v2/models/{name}/versions/{version}/infer",
            post(infer::infer),
        ),
        model(
            Method::GET,
            "/v2/models/{name}/generate",
            "/v2/models/{name}/versions/{version}/generate",
            get(images::generate),
        ),
        model(
            Method::GET,
            "/v2/models/{name}/walk",
            "/v2/models/{name}/versions/{version}/walk",
            get(images::walk),
        ),
    ] {
        all.extend(pair);
    }
    all
}

/// The (method, path) of every route, as the OpenAPI document must list them.
pub fn route_table() -> Vec<(Method, String)> {
    routes()
        .into_iter()
        .map(|(method, path, _)| (method, path.to_string()))
        .collect()
}

/// The server's HTTP routes over `state`.
pub fn router(state: Shared) -> Router {
    let body_limit = state.options.max_body_bytes;
    routes()
        .into_iter()
        .fold(Router::new(), |router, (_, path, handler)| {
            router.route(path, handler)
        })
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(DefaultBodyLimit::max(body_limit))
        .layer(CatchPanicLayer::custom(panic_response))
        .with_state(state)
}

impl IntoResponse for ServeError {
    /// The protocol's error body `{"error": "..."}` with the error's status.
    fn into_response(self) -> Response {
        let status =
            StatusCode::from_u16(self.http_status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        (status, Json(json!({ "error": self.to_string() }))).into_response()
    }
}

fn panic_response(_: Box<dyn std::any::Any + Send + 'static>) -> Response {
    ServeError::Internal("the request's handler panicked".into()).into_response()
}

async fn not_found(uri: Uri) -> ServeError {
    ServeError::NotFound(format!("no endpoint `{}`", uri.path()))
}

/// 405 with the protocol's error body (axum adds the `Allow` header).
async fn method_not_allowed(method: Method, uri: Uri) -> Response {
    let body = json!({ "error": format!("`{}` does not take {method}", uri.path()) });
    (StatusCode::METHOD_NOT_ALLOWED, Json(body)).into_response()
}

/// A route's `{name}` and optional `{version}`; a path that does not decode is a 400 with the
/// protocol's error body (axum's own rejection is plain text).
pub(crate) struct ModelPath(HashMap<String, String>);

impl<S: Send + Sync> FromRequestParts<S> for ModelPath {
    type Rejection = ServeError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ServeError> {
        Path::<HashMap<String, String>>::from_request_parts(parts, state)
            .await
            .map(|Path(params)| Self(params))
            .map_err(|e| ServeError::bad(format!("the request's path: {}", e.body_text())))
    }
}

/// The query string as a map; one that does not decode is a 400 with the protocol's error body.
pub(crate) struct QueryMap(pub(crate) HashMap<String, String>);

impl<S: Send + Sync> FromRequestParts<S> for QueryMap {
    type Rejection = ServeError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ServeError> {
        Query::<HashMap<String, String>>::from_request_parts(parts, state)
            .await
            .map(|Query(query)| Self(query))
            .map_err(|e| ServeError::bad(format!("the query string: {}", e.body_text())))
    }
}

/// The model named by a route's `{name}` and optional `{version}`.
fn model_of<'a>(state: &'a ServerState, path: &ModelPath) -> Result<&'a Arc<Model>, ServeError> {
    let name = path.0.get("name").map(String::as_str).unwrap_or_default();
    state
        .models
        .get(name, path.0.get("version").map(String::as_str))
}

/// `{"live": true}`: the process answers (the protocol's `$live_server_response`).
async fn live() -> Json<Value> {
    Json(json!({ "live": true }))
}

/// 200 `{"ready": true}`, or 503 `{"ready": false}` while the server has no model or drains
/// (the protocol's `$ready_server_response`; Triton's clients read the status alone).
async fn ready(State(state): State<Shared>) -> Response {
    let ready = state.is_ready();
    (readiness_status(ready), Json(json!({ "ready": ready }))).into_response()
}

fn readiness_status(ready: bool) -> StatusCode {
    if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    }
}

async fn server_metadata() -> Json<Value> {
    Json(json!({
        "name": crate::SERVER_NAME,
        "version": env!("CARGO_PKG_VERSION"),
        "extensions": crate::EXTENSIONS,
    }))
}

/// The optional body of a repository index request (Triton's): `{"ready": true}` lists only the
/// models ready for inference. Every model a Gantry server holds is loaded, so both list all.
#[derive(serde::Deserialize)]
struct IndexRequest {
    #[serde(default)]
    #[allow(dead_code)] // read for validation: every model Gantry holds is ready
    ready: bool,
}

async fn repository_index(
    State(state): State<Shared>,
    body: axum::body::Bytes,
) -> Result<Json<Value>, ServeError> {
    if !body.iter().all(u8::is_ascii_whitespace) {
        let bad = |e: String| ServeError::bad(format!("the repository index request: {e}"));
        let value: Value = serde_json::from_slice(&body).map_err(|e| bad(e.to_string()))?;
        if !value.is_object() {
            return Err(bad("must be an object such as {\"ready\": true}".into()));
        }
        serde_json::from_value::<IndexRequest>(value).map_err(|e| bad(e.to_string()))?;
    }
    let models: Vec<Value> = state
        .models
        .iter()
        .map(|m| json!({ "name": m.name(), "version": m.version(), "state": "READY" }))
        .collect();
    Ok(Json(Value::Array(models)))
}

/// `{"name": ..., "ready": bool}` (the protocol's `$ready_model_response`), 503 while draining.
async fn model_ready(State(state): State<Shared>, path: ModelPath) -> Result<Response, ServeError> {
    let model = model_of(&state, &path)?;
    let ready = state.is_ready();
    let body = json!({ "name": model.name(), "ready": ready });
    Ok((readiness_status(ready), Json(body)).into_response())
}

/// `-1` for a dynamic dimension, as the protocol writes it.
fn dims(shape: &[Option<usize>]) -> Vec<i64> {
    shape.iter().map(|d| d.map_or(-1, |d| d as i64)).collect()
}

async fn model_metadata(
    State(state): State<Shared>,
    path: ModelPath,
) -> Result<Json<Value>, ServeError> {
    let model = model_of(&state, &path)?;
    let info = model.generator().info();
    let tensors = |list: &[gantry_runtime::TensorInfo]| -> Vec<Value> {
        list.iter()
            .map(|t| json!({ "name": t.name, "datatype": DataType::name_of_element(&t.element), "shape": dims(&t.shape) }))
            .collect()
    };
    Ok(Json(json!({
        "name": model.name(),
        "versions": state.models.versions(model.name()),
        "platform": crate::PLATFORM,
        "inputs": tensors(&info.inputs),
        "outputs": tensors(&info.outputs),
    })))
}

/// The model's configuration as Triton's `/config` gives it (the fields Gantry honours), plus
/// a `gantry` object with what the web page needs.
async fn model_config(
    State(state): State<Shared>,
    path: ModelPath,
) -> Result<Json<Value>, ServeError> {
    let model = model_of(&state, &path)?;
    let info = model.generator().info();
    let policy = model.policy();
    let tensor = |t: &gantry_runtime::TensorInfo| json!({ "name": t.name, "data_type": format!("TYPE_{}", DataType::name_of_element(&t.element)), "dims": dims(&t.shape) });
    let mut config = json!({
        "name": model.name(),
        "platform": crate::PLATFORM,
        "max_batch_size": policy.max_batch_size,
        "input": info.inputs.iter().map(tensor).collect::<Vec<_>>(),
        "output": info.outputs.iter().map(tensor).collect::<Vec<_>>(),
        "parameters": info.metadata.iter().map(|(k, v)| (k.clone(), json!({ "string_value": v }))).collect::<serde_json::Map<_, _>>(),
        "gantry": {
            "version": model.version(),
            "latent_dim": info.signature.latent_dim,
            "conditional": info.signature.label_input.is_some(),
            "num_classes": info.num_classes,
            "provider": model.generator().providers().active.ort_name(),
            "max_png_images": state.options.max_png_images,
        },
    });
    if policy.dynamic {
        config["dynamic_batching"] = json!({
            "max_queue_delay_microseconds": policy.max_queue_delay.as_micros() as u64,
            "default_queue_policy": { "max_queue_size": policy.max_queue_size },
        });
    }
    Ok(Json(config))
}

async fn metrics_page(State(state): State<Shared>) -> Response {
    let labelled: Vec<metrics::Labelled<'_>> = state
        .models
        .iter()
        .map(|m| metrics::Labelled {
            model: m.name(),
            version: m.version(),
            provider: m.generator().providers().active.ort_name(),
            metrics: m.metrics(),
        })
        .collect();
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        metrics::render(&labelled),
    )
        .into_response()
}

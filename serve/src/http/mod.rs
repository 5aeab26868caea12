//! The HTTP/REST side of the Open Inference Protocol (KServe v2, as Triton serves it), plus
//! `/metrics`, PNG endpoints and the web page. [`router`] can be mounted in any axum service.

mod images;
mod infer;
mod page;

use std::collections::HashMap;
use std::sync::Arc;

use axum::extract::{DefaultBodyLimit, Path, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::{json, Value};
use tower_http::catch_panic::CatchPanicLayer;

use crate::error::ServeError;
use crate::metrics;
use crate::model::Model;
use crate::state::ServerState;
use crate::tensor::DataType;

/// The server's HTTP routes over `state`.
pub fn router(state: Arc<ServerState>) -> Router {
    let body_limit = state.options.max_body_bytes;
    Router::new()
        .route("/", get(page::index))
        .route("/v2", get(server_metadata))
        .route("/v2/health/live", get(live))
        .route("/v2/health/ready", get(ready))
        .route("/v2/repository/index", post(repository_index))
        .route("/v2/models/{name}", get(model_metadata))
        .route("/v2/models/{name}/versions/{version}", get(model_metadata))
        .route("/v2/models/{name}/ready", get(model_ready))
        .route(
            "/v2/models/{name}/versions/{version}/ready",
            get(model_ready),
        )
        .route("/v2/models/{name}/config", get(model_config))
        .route(
            "/v2/models/{name}/versions/{version}/config",
            get(model_config),
        )
        .route("/v2/models/{name}/infer", post(infer::infer))
        .route(
            "/v2/models/{name}/versions/{version}/infer",
            post(infer::infer),
        )
        .route("/v2/models/{name}/generate", get(images::generate))
        .route(
            "/v2/models/{name}/versions/{version}/generate",
            get(images::generate),
        )
        .route("/v2/models/{name}/walk", get(images::walk))
        .route(
            "/v2/models/{name}/versions/{version}/walk",
            get(images::walk),
        )
        .route("/metrics", get(metrics_page))
        .fallback(not_found)
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

async fn not_found(uri: axum::http::Uri) -> ServeError {
    ServeError::NotFound(format!("no endpoint `{}`", uri.path()))
}

/// The model named by a route's `{name}` and optional `{version}`.
fn model_of<'a>(
    state: &'a ServerState,
    params: &HashMap<String, String>,
) -> Result<&'a Arc<Model>, ServeError> {
    let name = params.get("name").map(String::as_str).unwrap_or_default();
    state
        .models
        .get(name, params.get("version").map(String::as_str))
}

async fn live() -> StatusCode {
    StatusCode::OK
}

async fn ready(State(state): State<Arc<ServerState>>) -> StatusCode {
    if state.is_ready() {
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

async fn repository_index(State(state): State<Arc<ServerState>>) -> Json<Value> {
    let models: Vec<Value> = state
        .models
        .iter()
        .map(|m| json!({ "name": m.name(), "version": m.version(), "state": "READY" }))
        .collect();
    Json(Value::Array(models))
}

async fn model_ready(
    State(state): State<Arc<ServerState>>,
    Path(params): Path<HashMap<String, String>>,
) -> Result<StatusCode, ServeError> {
    model_of(&state, &params)?;
    Ok(if state.is_ready() {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    })
}

/// `-1` for a dynamic dimension, as the protocol writes it.
fn dims(shape: &[Option<usize>]) -> Vec<i64> {
    shape.iter().map(|d| d.map_or(-1, |d| d as i64)).collect()
}

async fn model_metadata(
    State(state): State<Arc<ServerState>>,
    Path(params): Path<HashMap<String, String>>,
) -> Result<Json<Value>, ServeError> {
    let model = model_of(&state, &params)?;
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
    State(state): State<Arc<ServerState>>,
    Path(params): Path<HashMap<String, String>>,
) -> Result<Json<Value>, ServeError> {
    let model = model_of(&state, &params)?;
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

async fn metrics_page(State(state): State<Arc<ServerState>>) -> Response {
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

//! PNG endpoints for people: `generate` (a grid from a seed, as `runtime generate` makes it) and
//! `walk` (one image on the spherical path between two seeds' latents, for the page's slider).

use std::collections::HashMap;
use std::str::FromStr;
use std::sync::Arc;

use axum::extract::State;
use axum::http::header;
use axum::response::{IntoResponse, Response};
use gantry_runtime::{output, slerp, GenerateRequest, LatentStream};
use ndarray::Array2;

use super::{model_of, ModelPath, QueryMap};
use crate::error::{Result, ServeError};
use crate::model::Model;
use crate::state::ServerState;
use crate::tensor::ModelInputs;

/// A query parameter parsed into `T`, or `default` when absent.
fn param<T: FromStr>(
    query: &HashMap<String, String>,
    key: &str,
    default: Option<T>,
) -> Result<Option<T>> {
    match query.get(key).map(|v| v.trim()).filter(|v| !v.is_empty()) {
        None => Ok(default),
        Some(v) => v.parse().map(Some).map_err(|_| {
            ServeError::bad(format!(
                "query parameter `{key}`: `{v}` is not a valid value"
            ))
        }),
    }
}

/// `GET .../generate?n=16&seed=7&class=3&truncation=1.5`: a PNG grid (one PNG for `n=1`) of
/// the same images `runtime generate -n N --seed S` writes.
pub(super) async fn generate(
    State(state): State<Arc<ServerState>>,
    path: ModelPath,
    QueryMap(query): QueryMap,
) -> Result<Response> {
    let model = model_of(&state, &path)?.clone();
    let n = param(&query, "n", Some(16))?.unwrap_or(16);
    let limit = state.options.max_png_images;
    if n > limit {
        return Err(ServeError::bad(format!(
            "n = {n} is over this endpoint's limit of {limit} images"
        )));
    }
    let mut request = GenerateRequest::new(n, param(&query, "seed", Some(0))?.unwrap_or(0));
    request.class = param(&query, "class", None)?;
    // Checked in f64, as written (the OpenAPI minimum), before it is rounded to f32.
    let truncation: Option<f64> = param(&query, "truncation", None)?;
    if let Some(t) = truncation.filter(|&t| t < 0.01) {
        return Err(ServeError::bad(format!(
            "query parameter `truncation`: {t} is below the minimum of 0.01"
        )));
    }
    request.truncation = truncation.map(|t| t as f32);
    request.validate()?;
    let generator = model.generator();
    let z =
        LatentStream::new(request.seed, generator.latent_dim(), request.truncation).next_batch(n);
    let labels = generator.labels(request.class, 0, n)?;
    png_response(&state, &model, ModelInputs { z, labels }, true).await
}

/// `GET .../walk?from=1&to=2&t=0.5&class=3`: the image at `t` in [0, 1] along the spherical
/// path from seed `from`'s latent to seed `to`'s (as `runtime interpolate` draws them).
pub(super) async fn walk(
    State(state): State<Arc<ServerState>>,
    path: ModelPath,
    QueryMap(query): QueryMap,
) -> Result<Response> {
    let model = model_of(&state, &path)?.clone();
    let from = param(&query, "from", Some(1u64))?.unwrap_or(1);
    let to = param(&query, "to", Some(2u64))?.unwrap_or(2);
    // Checked in f64, as written: a tiny negative number would round to -0.0 in f32.
    let t = param(&query, "t", Some(0.0f64))?.unwrap_or(0.0);
    if !(0.0..=1.0).contains(&t) {
        return Err(ServeError::bad(format!(
            "query parameter `t`: {t} is not in [0, 1]"
        )));
    }
    let t = t as f32;
    let class: Option<usize> = param(&query, "class", None)?;
    let generator = model.generator();
    let dim = generator.latent_dim();
    let a = LatentStream::new(from, dim, None).next_batch(1);
    let b = LatentStream::new(to, dim, None).next_batch(1);
    let point = slerp(&a.row(0).to_vec(), &b.row(0).to_vec(), t);
    let z =
        Array2::from_shape_vec((1, dim), point).map_err(|e| ServeError::Internal(e.to_string()))?;
    let labels = match (&generator.info().signature.label_input, class) {
        (Some(_), None) => generator.labels(Some(0), 0, 1)?,
        _ => generator.labels(class, 0, 1)?,
    };
    png_response(&state, &model, ModelInputs { z, labels }, false).await
}

/// Runs `inputs` through the model's queue and encodes the images as one PNG (a grid of
/// several with `grid`).
async fn png_response(
    state: &ServerState,
    model: &Model,
    inputs: ModelInputs,
    grid: bool,
) -> Result<Response> {
    let images = model.infer(inputs, state.options.request_timeout).await?;
    let png = tokio::task::spawn_blocking(move || -> Result<Vec<u8>> {
        let pictures = images.to_image_batch()?.to_images();
        let picture = match pictures.as_slice() {
            [one] => one.clone(),
            _ if grid => output::grid(&pictures, 2),
            _ => return Err(ServeError::Internal("expected one image".into())),
        };
        Ok(output::png_bytes(&picture)?)
    })
    .await
    .map_err(|e| ServeError::Internal(format!("PNG encoding: {e}")))??;
    Ok((
        [
            (header::CONTENT_TYPE, "image/png"),
            (header::CACHE_CONTROL, "no-store"),
        ],
        png,
    )
        .into_response())
}

//! [`GenerateRequest`]: what to generate, and its validation.

use crate::error::{RequestField, Result, RuntimeError};

/// Largest number of images one request may ask for.
pub const MAX_IMAGES: usize = 1_000_000;
/// Largest number of images along one interpolation.
pub const MAX_INTERPOLATION_STEPS: usize = 4096;
/// Smallest truncation threshold: latent values are redrawn until they fall inside it, and
/// below this that would take hundreds of draws per value (and forever as it nears 0).
pub const MIN_TRUNCATION: f32 = 0.01;
/// Default images per inference call.
pub const DEFAULT_BATCH_SIZE: usize = 64;

/// What to generate: `count` images from the latents of `seed`. Start from
/// [`GenerateRequest::new`] and set the other fields.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct GenerateRequest {
    /// Number of images, 1..=[`MAX_IMAGES`].
    pub count: usize,
    /// Seed of the latents: image `i` of a seed is the same whatever the batch size.
    pub seed: u64,
    /// Class of every image (conditional models); `None` cycles through the classes.
    pub class: Option<usize>,
    /// Redraw latent values whose magnitude exceeds this (at least [`MIN_TRUNCATION`]).
    pub truncation: Option<f32>,
    /// Images per inference call (bounds memory for any count).
    pub batch_size: usize,
}

impl GenerateRequest {
    /// `count` images from `seed` with defaults for the rest.
    pub fn new(count: usize, seed: u64) -> Self {
        Self {
            count,
            seed,
            class: None,
            truncation: None,
            batch_size: DEFAULT_BATCH_SIZE,
        }
    }

    /// Checks the values that do not depend on the model.
    pub fn validate(&self) -> Result<()> {
        if self.count == 0 {
            return Err(RuntimeError::invalid(
                RequestField::Count,
                "must be at least 1, got 0",
            ));
        }
        if self.count > MAX_IMAGES {
            return Err(RuntimeError::invalid(
                RequestField::Count,
                format!(
                    "{} is too many: at most {MAX_IMAGES} images per request (split larger jobs by seed)",
                    self.count
                ),
            ));
        }
        if self.batch_size == 0 {
            return Err(RuntimeError::invalid(
                RequestField::BatchSize,
                "must be at least 1, got 0",
            ));
        }
        if let Some(t) = self.truncation {
            if !(t >= MIN_TRUNCATION && t.is_finite()) {
                return Err(RuntimeError::invalid(
                    RequestField::Truncation,
                    format!("must be a number of at least {MIN_TRUNCATION}, got {t}"),
                ));
            }
        }
        Ok(())
    }
}

/// Checks the number of images along an interpolation.
pub(crate) fn validate_steps(steps: usize) -> Result<()> {
    if steps < 2 {
        return Err(RuntimeError::invalid(
            RequestField::Steps,
            format!("must be at least 2, got {steps}"),
        ));
    }
    if steps > MAX_INTERPOLATION_STEPS {
        return Err(RuntimeError::invalid(
            RequestField::Steps,
            format!("{steps} is too many (at most {MAX_INTERPOLATION_STEPS})"),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn field_of(r: &GenerateRequest) -> Option<RequestField> {
        match r.validate() {
            Err(RuntimeError::InvalidRequest { field, .. }) => Some(field),
            _ => None,
        }
    }

    #[test]
    fn each_bad_value_is_named() {
        let ok = GenerateRequest::new(10, 1);
        assert_eq!(field_of(&ok), None);
        let mut r = ok.clone();
        r.count = 0;
        assert_eq!(field_of(&r), Some(RequestField::Count));
        r.count = MAX_IMAGES + 1;
        assert_eq!(field_of(&r), Some(RequestField::Count));
        let mut r = ok.clone();
        r.batch_size = 0;
        assert_eq!(field_of(&r), Some(RequestField::BatchSize));
        for t in [0.0, 1e-8, -1.0, f32::NAN, f32::INFINITY] {
            let mut r = ok.clone();
            r.truncation = Some(t);
            assert_eq!(field_of(&r), Some(RequestField::Truncation), "{t}");
        }
        assert!(validate_steps(1).is_err() && validate_steps(2).is_ok());
        assert!(validate_steps(MAX_INTERPOLATION_STEPS + 1).is_err());
    }
}

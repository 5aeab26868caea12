//! The one place where the library's errors meet this command line's flags.

use gantry_runtime::{RequestField, RuntimeError};

/// The flag that sets a request's value.
pub fn flag(field: RequestField) -> &'static str {
    match field {
        RequestField::Count => "-n",
        RequestField::BatchSize => "--batch-size",
        RequestField::Class => "--class",
        RequestField::Truncation => "--truncation",
        RequestField::Steps => "--steps",
        RequestField::Iterations => "--iterations",
        _ => "the request",
    }
}

/// The one-line message of an error, naming flags where the library names values.
pub fn render(e: &anyhow::Error) -> String {
    match e.downcast_ref::<RuntimeError>() {
        Some(RuntimeError::InvalidRequest { field, problem }) => {
            format!("{} {problem}", flag(*field))
        }
        Some(RuntimeError::Library { .. }) => format!("{}; or pass --ort-lib PATH", chain(e)),
        _ => chain(e),
    }
}

/// The error and its causes on one line, leaving out a cause whose text is already there (an
/// error that shows its cause in its own message).
fn chain(e: &anyhow::Error) -> String {
    let mut text = String::new();
    for cause in e.chain() {
        let part = cause.to_string();
        if !text.contains(&part) {
            if !text.is_empty() {
                text.push_str(": ");
            }
            text.push_str(&part);
        }
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_errors_name_the_flag() {
        let e = anyhow::Error::new(
            gantry_runtime::GenerateRequest::new(0, 1)
                .validate()
                .unwrap_err(),
        );
        assert_eq!(render(&e), "-n must be at least 1, got 0");
    }
}

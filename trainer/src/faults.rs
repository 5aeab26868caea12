//! Faults injected on purpose, for the tests of what a data-parallel job does when one rank goes
//! wrong: `GANTRY_FAULT=<kind>@<rank>:<step>` makes rank `<rank>` misbehave at step `<step>`
//! (1 for the first). Kinds: `nan` (its real images become NaN, so its losses diverge) and
//! `drift` (its generator's first weight moves by 1e-3 after the update, so its replica no
//! longer equals rank 0's). Unset, nothing happens; a value that does not parse is ignored.
//! Only with the `fault-injection` feature (the CLI's tests turn it on); without it
//! [`injected`] is always false and reads no environment.

/// A fault to inject.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    Nan,
    Drift,
}

#[cfg_attr(not(feature = "fault-injection"), allow(dead_code))]
fn parse(spec: &str) -> Option<(Fault, usize, u64)> {
    let (kind, at) = spec.split_once('@')?;
    let (rank, step) = at.split_once(':')?;
    let kind = match kind {
        "nan" => Fault::Nan,
        "drift" => Fault::Drift,
        _ => return None,
    };
    Some((kind, rank.parse().ok()?, step.parse().ok()?))
}

/// Whether `fault` is to happen on `rank` at `step` (never without the `fault-injection` feature).
#[cfg(not(feature = "fault-injection"))]
pub fn injected(_fault: Fault, _rank: usize, _step: u64) -> bool {
    false
}

/// Whether `fault` is to happen on `rank` at `step`.
#[cfg(feature = "fault-injection")]
pub fn injected(fault: Fault, rank: usize, step: u64) -> bool {
    static SPEC: std::sync::OnceLock<Option<(Fault, usize, u64)>> = std::sync::OnceLock::new();
    let spec = SPEC.get_or_init(|| {
        std::env::var("GANTRY_FAULT")
            .ok()
            .as_deref()
            .and_then(parse)
    });
    *spec == Some((fault, rank, step))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn specs_parse_or_are_ignored() {
        assert_eq!(parse("nan@1:7"), Some((Fault::Nan, 1, 7)));
        assert_eq!(parse("drift@0:3"), Some((Fault::Drift, 0, 3)));
        assert_eq!(parse("nan@x:7"), None);
        assert_eq!(parse("fire@1:7"), None);
        assert_eq!(parse(""), None);
    }
}

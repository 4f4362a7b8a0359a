//! How the reports write their values: counts, ratios, lists, ranges and vectors.

/// A figure and its ratio to the baseline's, e.g. `12.3 (1.05×)`.
pub(super) fn with_ratio(value: Option<f64>, base: Option<f64>, digits: usize) -> String {
    match value {
        None => "–".to_owned(),
        Some(v) => match base {
            Some(b) if b > 0.0 => format!("{v:.digits$} ({:.2}×)", v / b),
            _ => format!("{v:.digits$}"),
        },
    }
}

/// A count, or a median of counts (which may be a half).
pub(super) fn count(v: Option<f64>) -> String {
    match v {
        None => "–".to_owned(),
        Some(v) if v.fract() == 0.0 => format!("{v:.0}"),
        Some(v) => format!("{v:.1}"),
    }
}

/// Values of every run, e.g. `21.3, 150.2, –`.
pub(super) fn list(values: &[Option<f64>], digits: usize) -> String {
    values
        .iter()
        .map(|v| v.map(|v| format!("{v:.digits$}")).unwrap_or_else(|| "–".to_owned()))
        .collect::<Vec<_>>()
        .join(", ")
}

/// `min–max` of the values, or the one value.
pub(super) fn range(values: &[f64], digits: usize) -> String {
    let lo = values.iter().copied().fold(f64::INFINITY, f64::min);
    let hi = values.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    match values.len() {
        0 => "–".to_owned(),
        1 => format!("{lo:.digits$}"),
        _ => format!("{lo:.digits$}–{hi:.digits$}"),
    }
}

/// `[2, 0]`.
pub(super) fn vector(v: &[u64]) -> String {
    format!("[{}]", v.iter().map(u64::to_string).collect::<Vec<_>>().join(", "))
}

/// The items in their order, each once.
pub(super) fn dedup<T: PartialEq>(items: impl Iterator<Item = T>) -> Vec<T> {
    let mut out = Vec::new();
    for i in items {
        if !out.contains(&i) {
            out.push(i);
        }
    }
    out
}

/// A share as a percentage, e.g. `42%`.
pub(super) fn percent(v: Option<f64>) -> String {
    v.map(|v| format!("{:.0}%", v * 100.0)).unwrap_or_else(|| "–".to_owned())
}

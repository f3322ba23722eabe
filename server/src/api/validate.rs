//! Input validation with field-level errors.

use super::ApiError;

pub const DEFAULT_PAGE_SIZE: usize = 100;
pub const MAX_PAGE_SIZE: usize = 1000;

/// `page_size`: 0 means the default; negative or over the maximum is refused (not clamped, so a
/// caller that asked for 5000 learns that it will not get them in one page).
pub fn page_size(value: i32) -> Result<usize, ApiError> {
    match value {
        0 => Ok(DEFAULT_PAGE_SIZE),
        v if v < 0 => Err(ApiError::invalid("page_size", format!("must not be negative (got {v})"))),
        v if v as usize > MAX_PAGE_SIZE => {
            Err(ApiError::invalid("page_size", format!("must be at most {MAX_PAGE_SIZE} (got {v})")))
        }
        v => Ok(v as usize),
    }
}

/// A node or cluster name: 1–63 characters of lowercase letters, digits and '-', starting and
/// ending with a letter or digit (a DNS label, so names are safe in URLs, logs and hostnames).
pub fn name(field: &str, value: &str) -> Result<(), ApiError> {
    match hangar::domain::dns_label_problem(value) {
        Some(problem) => Err(ApiError::invalid(field, problem)),
        None => Ok(()),
    }
}

/// An optional name: empty means `default`.
pub fn name_or_default(field: &str, value: &str, default: &str) -> Result<String, ApiError> {
    if value.is_empty() {
        return Ok(default.to_string());
    }
    name(field, value)?;
    Ok(value.to_string())
}

/// A node id: non-empty and of sane length (ids are opaque; existence is checked by the store).
pub fn id(field: &str, value: &str) -> Result<(), ApiError> {
    if value.is_empty() {
        return Err(ApiError::invalid(field, "must not be empty"));
    }
    if value.len() > 128 {
        return Err(ApiError::invalid(field, format!("must be at most 128 characters (got {})", value.len())));
    }
    Ok(())
}

/// Labels: at most 64, keys and values of bounded size.
pub fn labels<'a>(field: &str, labels: impl IntoIterator<Item = (&'a String, &'a String)>) -> Result<(), ApiError> {
    let mut violations = Vec::new();
    let mut count = 0;
    for (key, value) in labels {
        count += 1;
        if key.is_empty() || key.len() > 63 {
            violations.push((format!("{field}[{key:?}]"), "keys must be 1–63 characters".to_string()));
        }
        if value.len() > 256 {
            violations.push((format!("{field}[{key:?}]"), "values must be at most 256 characters".to_string()));
        }
    }
    if count > 64 {
        violations.push((field.to_string(), format!("at most 64 labels (got {count})")));
    }
    if violations.is_empty() { Ok(()) } else { Err(ApiError::InvalidArgument(violations)) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn page_size_defaults_and_limits() {
        assert_eq!(page_size(0).unwrap(), DEFAULT_PAGE_SIZE);
        assert_eq!(page_size(1000).unwrap(), 1000);
        assert!(page_size(1001).is_err());
        assert!(page_size(-1).is_err());
    }

    #[test]
    fn names_are_dns_labels() {
        assert!(name("name", "drone-1").is_ok());
        for bad in ["", "-a", "a-", "Drone", "a_b", &"x".repeat(64)] {
            assert!(name("name", bad).is_err(), "{bad:?} accepted");
        }
    }
}

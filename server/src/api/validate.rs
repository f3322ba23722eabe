//! Input validation with field-level errors: the API's side of the rules in
//! `hangar::domain` (`fields`, names, keys, spawn configs, identities), each problem reported as a
//! `BadRequest` field violation, every problem of a request at once.

use super::ApiError;
use hangar::domain::{
    address_problem, dns_label_problem, duration_in, id_problem, label_violations, url_problem, version_problem,
};
use std::time::Duration;

pub const DEFAULT_PAGE_SIZE: usize = 100;
pub const MAX_PAGE_SIZE: usize = 1000;
/// Most values in one repeated filter field (states, kinds): more than there are values means
/// repeats, and a filter of a million repeats is someone testing the server.
pub const MAX_FILTER_VALUES: usize = 32;
/// Most backends a drone may take: a bound far above any host, so that a count from the wire
/// stays meaningful in every sum the scheduler makes.
pub const MAX_BACKEND_CAPACITY: u32 = 100_000;

/// The problems of one request, collected field by field and refused together.
#[derive(Debug, Default)]
pub struct Violations(Vec<(String, String)>);

impl Violations {
    /// Records `problem` under `field`, if there is one.
    pub fn check(&mut self, field: impl Into<String>, problem: Option<String>) -> &mut Self {
        if let Some(problem) = problem {
            self.0.push((field.into(), problem));
        }
        self
    }

    /// Records the violations of an [`ApiError::InvalidArgument`]; any other error is a bug in
    /// a validator and is recorded under `field` by its message.
    pub fn absorb(&mut self, field: &str, result: Result<(), ApiError>) -> &mut Self {
        match result {
            Ok(()) => {}
            Err(ApiError::InvalidArgument(violations)) => self.0.extend(violations),
            Err(other) => self.0.push((field.to_string(), other.to_string())),
        }
        self
    }

    pub fn extend(&mut self, violations: impl IntoIterator<Item = (String, String)>) -> &mut Self {
        self.0.extend(violations);
        self
    }

    pub fn into_result(self) -> Result<(), ApiError> {
        if self.0.is_empty() { Ok(()) } else { Err(ApiError::InvalidArgument(self.0)) }
    }
}

fn refuse(field: &str, problem: Option<String>) -> Result<(), ApiError> {
    match problem {
        Some(problem) => Err(ApiError::invalid(field, problem)),
        None => Ok(()),
    }
}

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
    refuse(field, dns_label_problem(value))
}

/// A name that may be left empty (a filter's, which then matches everything; a node's cluster,
/// which then is `default`); anything else must be a name that could exist.
pub fn filter_name(field: &str, value: &str) -> Result<(), ApiError> {
    if value.is_empty() { Ok(()) } else { name(field, value) }
}

/// An id (of a node, backend, action or event): 1–128 printable characters; whether it names
/// something is the store's to say.
pub fn id(field: &str, value: &str) -> Result<(), ApiError> {
    refuse(field, id_problem(value))
}

/// An id a filter matches: empty matches everything.
pub fn filter_id(field: &str, value: &str) -> Result<(), ApiError> {
    if value.is_empty() { Ok(()) } else { id(field, value) }
}

/// Labels: at most 64, keys of 1–63 characters and values of at most 256, no control
/// characters.
pub fn labels<'a>(field: &str, labels: impl IntoIterator<Item = (&'a String, &'a String)>) -> Result<(), ApiError> {
    let violations = label_violations(field, labels);
    if violations.is_empty() { Ok(()) } else { Err(ApiError::InvalidArgument(violations)) }
}

/// A repeated filter field of `count` values.
pub fn filter_values(field: &str, count: usize) -> Result<(), ApiError> {
    if count > MAX_FILTER_VALUES {
        return Err(ApiError::invalid(field, format!("at most {MAX_FILTER_VALUES} values (got {count})")));
    }
    Ok(())
}

/// A software version a node reports: at most 128 printable characters.
pub fn version(field: &str, value: &str) -> Result<(), ApiError> {
    refuse(field, version_problem(value))
}

/// A `host:port` a backend answers on; empty while unknown.
pub fn address(field: &str, value: &str) -> Result<(), ApiError> {
    refuse(field, address_problem(value))
}

/// A URL a node announces; empty when none.
pub fn url(field: &str, value: &str) -> Result<(), ApiError> {
    refuse(field, url_problem(value))
}

/// A duration: `None` when unset or zero, else between `min` and `max`.
pub fn duration(
    field: &str,
    value: Option<&prost_types::Duration>,
    min: Duration,
    max: Duration,
) -> Result<Option<Duration>, ApiError> {
    duration_in(value, min, max).map_err(|problem| ApiError::invalid(field, problem))
}

#[cfg(test)]
mod tests {
    use super::*;
    use hangar::domain::DURATION_MAX;

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
        assert!(filter_name("filter.cluster", "").is_ok(), "an empty filter matches everything");
        assert!(filter_name("filter.cluster", "EU").is_err());
    }

    #[test]
    fn violations_gather_every_problem_of_a_request() {
        let mut violations = Violations::default();
        violations
            .check("a", None)
            .check("b", Some("bad".into()))
            .absorb("c", id("c", ""))
            .absorb("d", filter_values("d", 33));
        let Err(ApiError::InvalidArgument(all)) = violations.into_result() else { panic!("refused") };
        let fields: Vec<_> = all.iter().map(|(f, _)| f.as_str()).collect();
        assert_eq!(fields, ["b", "c", "d"]);
        assert!(Violations::default().into_result().is_ok());
    }

    #[test]
    fn durations_are_bounded_so_no_time_arithmetic_can_overflow() {
        let huge = prost_types::Duration { seconds: i64::MAX, nanos: 0 };
        let bounded = |d| duration("lifetime", Some(&d), Duration::ZERO, DURATION_MAX);
        assert!(bounded(huge).is_err());
        let hour = prost_types::Duration { seconds: 3600, nanos: 0 };
        assert_eq!(bounded(hour).unwrap(), Some(Duration::from_secs(3600)));
    }
}

//! What the executor accepts before a runtime sees it: the same rules the controller applies to a
//! spawn config (`hangar::domain`), on what a drone sends over the socket, every problem reported
//! as a field violation at once. A runtime checks again what only it can (that an image exists).

use crate::runtime::{BackendSpec, validate_backend_id};
use hangar::domain::{EnvRules, argv_violations, duration_from_proto, image_problem, label_violations, spawn_limits};
use hangar::error::invalid_argument;
use std::time::Duration;
use tonic::Status;

/// Longest stop grace or stats interval a call may ask for: longer ones are mistakes, and a
/// bound keeps every deadline computed from them far from overflowing.
pub(super) const MAX_CALL_DURATION: Duration = Duration::from_secs(3600);

/// A start's spec: backend id, image, command and args, environment (Hangar's variables
/// included), resources and labels.
pub(super) fn spec(spec: &BackendSpec) -> Result<(), Status> {
    let mut violations = Vec::new();
    if let Err(err) = validate_backend_id(&spec.backend_id) {
        violations.extend(hangar::error::field_violations(&Status::from(err)));
    }
    if let Some(problem) = image_problem(&spec.image, spawn_limits::IMAGE_MAX) {
        violations.push(("spec.image".into(), problem));
    }
    violations.extend(argv_violations(&spec.command, "spec.command", true));
    violations.extend(argv_violations(&spec.args, "spec.args", false));
    violations.extend(EnvRules::BACKEND.violations("spec.env", &spec.env));
    violations.extend(spec.resources.violations("spec.resources"));
    violations.extend(label_violations("spec.labels", &spec.labels));
    if violations.is_empty() { Ok(()) } else { Err(invalid_argument(violations)) }
}

/// An image to prepare.
pub(super) fn image(image: &str) -> Result<(), Status> {
    match image_problem(image, spawn_limits::IMAGE_MAX) {
        Some(problem) => Err(invalid_argument(vec![("image".into(), problem)])),
        None => Ok(()),
    }
}

/// A duration argument: unset means zero; negative, malformed or over [`MAX_CALL_DURATION`] is
/// refused.
pub(super) fn duration(field: &str, duration: Option<prost_types::Duration>) -> Result<Duration, Status> {
    let Some(duration) = duration else { return Ok(Duration::ZERO) };
    match duration_from_proto(&duration) {
        Some(d) if d <= MAX_CALL_DURATION => Ok(d),
        _ => Err(invalid_argument(vec![(
            field.into(),
            format!("must be a non-negative duration of at most {MAX_CALL_DURATION:?}"),
        )])),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use hangar::error::field_violations;

    fn fields(status: Status) -> Vec<String> {
        field_violations(&status).into_iter().map(|(field, _)| field).collect()
    }

    #[test]
    fn a_spec_is_held_to_the_spawn_configs_rules_with_hangars_variables_allowed() {
        let good = BackendSpec {
            backend_id: "bk-1".into(),
            image: "/usr/bin/backend".into(),
            env: [("HANGAR_STATIC_TOKEN".to_string(), "t".to_string()), ("PORT".to_string(), "1".to_string())].into(),
            ..Default::default()
        };
        assert!(spec(&good).is_ok());
        let bad = BackendSpec {
            backend_id: "../etc".into(),
            image: "./relative".into(),
            command: vec![String::new()],
            args: vec!["a\0b".into()],
            env: [("A=B".to_string(), "v".to_string())].into(),
            resources: hangar::domain::ResourceLimits { memory_bytes: 1, ..Default::default() },
            labels: [(String::new(), "v".to_string())].into(),
            ..Default::default()
        };
        assert_eq!(
            fields(spec(&bad).unwrap_err()),
            [
                "backend_id",
                "spec.image",
                "spec.command[0]",
                "spec.args[0]",
                "spec.env[\"A=B\"]",
                "spec.resources.memory_bytes",
                "spec.labels[\"\"]"
            ]
        );
    }

    #[test]
    fn durations_are_non_negative_and_bounded() {
        assert_eq!(duration("grace", None).unwrap(), Duration::ZERO);
        let d = |seconds| Some(prost_types::Duration { seconds, nanos: 0 });
        assert_eq!(duration("grace", d(10)).unwrap(), Duration::from_secs(10));
        for bad in [d(-1), d(3601), d(i64::MAX)] {
            assert_eq!(fields(duration("grace", bad).unwrap_err()), ["grace"]);
        }
        assert_eq!(fields(image("Bad/Image").unwrap_err()), ["image"]);
    }
}

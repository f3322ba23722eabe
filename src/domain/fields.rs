//! The rules for the plain fields that cross Hangar's boundaries (the API, the drone and proxy
//! links, the executor socket): ids, labels, versions, addresses, URLs and durations. Each rule
//! is a function that says what is wrong with a value, if anything, so that every boundary
//! refuses the same values with the same words, field by field.

use std::time::Duration;

/// Longest id (of a node, backend, action or event). Hangar's own are under 40 characters.
pub const ID_MAX: usize = 128;
/// Most labels on one node or backend.
pub const LABELS_MAX: usize = 64;
pub const LABEL_KEY_MAX: usize = 63;
pub const LABEL_VALUE_MAX: usize = 256;
/// Longest software version a node reports.
pub const VERSION_MAX: usize = 128;
/// Longest `host:port` address.
pub const ADDRESS_MAX: usize = 255;
/// Longest URL a node announces (a proxy's public URL).
pub const URL_MAX: usize = 256;
/// Longest duration any request may ask for: ten years is longer than any backend or drain
/// should last, and far from where adding it to a time could overflow.
pub const DURATION_MAX: Duration = Duration::from_secs(10 * 365 * 24 * 3600);

/// Why an id cannot be one, if it cannot: 1–128 characters of printable ASCII, no spaces. Ids
/// are opaque; whether one names something is the store's to say.
pub fn id_problem(value: &str) -> Option<String> {
    if value.is_empty() {
        Some("must not be empty".into())
    } else if value.len() > ID_MAX {
        Some(format!("must be at most {ID_MAX} characters (got {})", value.len()))
    } else if !value.bytes().all(|b| b.is_ascii_graphic()) {
        Some("may contain only printable ASCII characters without spaces".into())
    } else {
        None
    }
}

/// Every problem of a set of labels, each under `field[key]` (or `field` for their number):
/// at most 64, keys of 1–63 characters, values of at most 256, no control characters.
pub fn label_violations<'a>(
    field: &str,
    labels: impl IntoIterator<Item = (&'a String, &'a String)>,
) -> Vec<(String, String)> {
    let mut violations = Vec::new();
    let mut count = 0;
    for (key, value) in labels {
        count += 1;
        // Only the first few: a thousand bad labels need not make a thousand violations.
        if violations.len() >= LABELS_MAX {
            continue;
        }
        let at = format!("{field}[{key:?}]");
        if key.is_empty() || key.len() > LABEL_KEY_MAX {
            violations.push((at, format!("keys must be 1–{LABEL_KEY_MAX} characters (got {})", key.len())));
        } else if value.len() > LABEL_VALUE_MAX {
            violations.push((at, format!("values must be at most {LABEL_VALUE_MAX} characters (got {})", value.len())));
        } else if key.chars().chain(value.chars()).any(char::is_control) {
            violations.push((at, "keys and values must not contain control characters".into()));
        }
    }
    if count > LABELS_MAX {
        violations.push((field.to_string(), format!("at most {LABELS_MAX} labels (got {count})")));
    }
    violations
}

/// Why a version string cannot be one, if it cannot: at most 128 characters of printable ASCII.
pub fn version_problem(value: &str) -> Option<String> {
    printable_problem(value, VERSION_MAX)
}

/// Why an address cannot be `host:port`, if it cannot; empty is allowed (not known yet).
pub fn address_problem(value: &str) -> Option<String> {
    if value.is_empty() {
        return None;
    }
    if value.len() > ADDRESS_MAX {
        return Some(format!("must be at most {ADDRESS_MAX} characters (got {})", value.len()));
    }
    if !value.bytes().all(|b| b.is_ascii_graphic()) {
        return Some("may contain only printable ASCII characters without spaces".into());
    }
    let port = value.rsplit_once(':').and_then(|(host, port)| (!host.is_empty()).then_some(port));
    match port.map(str::parse::<u16>) {
        Some(Ok(_)) => None,
        _ => Some(format!("{value:?} is not host:port")),
    }
}

/// Why a URL a node announces cannot be one, if it cannot; empty is allowed (none announced).
pub fn url_problem(value: &str) -> Option<String> {
    if value.is_empty() {
        return None;
    }
    if let Some(problem) = printable_problem(value, URL_MAX) {
        return Some(problem);
    }
    if !(value.starts_with("http://") || value.starts_with("https://")) {
        return Some("must start with http:// or https://".into());
    }
    None
}

/// A duration from the wire: `Ok(None)` when unset or zero, `Ok(Some)` within `min..=max`, the
/// problem otherwise (negative, malformed, or out of range).
pub fn duration_in(
    value: Option<&prost_types::Duration>,
    min: Duration,
    max: Duration,
) -> Result<Option<Duration>, String> {
    let Some(value) = value else { return Ok(None) };
    match super::duration_from_proto(value) {
        Some(d) if d.is_zero() => Ok(None),
        Some(d) if d >= min && d <= max => Ok(Some(d)),
        _ => Err(format!("must be unset, 0, or at least {min:?} and at most {}", humane(max))),
    }
}

/// `max` in the largest whole unit that fits, for messages.
fn humane(max: Duration) -> String {
    let secs = max.as_secs();
    match secs {
        s if s >= 365 * 24 * 3600 && s % (365 * 24 * 3600) == 0 => format!("{} years", s / (365 * 24 * 3600)),
        s if s >= 24 * 3600 && s % (24 * 3600) == 0 => format!("{} days", s / (24 * 3600)),
        s if s >= 3600 && s % 3600 == 0 => format!("{} hours", s / 3600),
        _ => format!("{max:?}"),
    }
}

fn printable_problem(value: &str, max: usize) -> Option<String> {
    if value.len() > max {
        Some(format!("must be at most {max} characters (got {})", value.len()))
    } else if !value.bytes().all(|b| b == b' ' || b.is_ascii_graphic()) {
        Some("may contain only printable ASCII characters".into())
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    #[test]
    fn ids_are_short_printable_and_without_spaces() {
        for good in ["bk-0192f3", "nd-1", "ev-x.y_z", &"x".repeat(ID_MAX)] {
            assert_eq!(id_problem(good), None, "{good:?}");
        }
        for bad in ["", "bk 1", "bk-\n", "bk-é", &"x".repeat(ID_MAX + 1)] {
            assert!(id_problem(bad).is_some(), "{bad:?} accepted");
        }
    }

    #[test]
    fn labels_are_bounded_in_number_size_and_characters() {
        let labels = |pairs: &[(&str, &str)]| -> BTreeMap<String, String> {
            pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
        };
        assert!(label_violations("labels", &labels(&[("zone", "a"), ("hangar.dev/runtime", "")])).is_empty());
        let bad = labels(&[("", "x"), ("long", &"v".repeat(257)), ("tab", "a\tb")]);
        let fields: Vec<_> = label_violations("labels", &bad).into_iter().map(|(f, _)| f).collect();
        assert_eq!(fields, ["labels[\"\"]", "labels[\"long\"]", "labels[\"tab\"]"]);
        let many: BTreeMap<String, String> = (0..65).map(|i| (format!("k{i}"), String::new())).collect();
        assert_eq!(label_violations("labels", &many), [("labels".into(), "at most 64 labels (got 65)".into())]);
        let all_bad: BTreeMap<String, String> = (0..10_000).map(|i| (format!("k{i}\n"), String::new())).collect();
        assert!(label_violations("labels", &all_bad).len() <= LABELS_MAX + 1, "violations are bounded too");
    }

    #[test]
    fn addresses_are_host_and_port_and_urls_are_http() {
        for good in ["", "127.0.0.1:8080", "[::1]:80", "backend.local:1"] {
            assert_eq!(address_problem(good), None, "{good:?}");
        }
        for bad in ["127.0.0.1", ":80", "host:99999", "host:port", "a b:1", &format!("{}:1", "h".repeat(300))] {
            assert!(address_problem(bad).is_some(), "{bad:?} accepted");
        }
        assert_eq!(url_problem("https://edge-1.example:7080"), None);
        assert!(url_problem("ftp://x").is_some() && url_problem("http://a\nb").is_some());
    }

    #[test]
    fn durations_are_unset_zero_or_in_range_and_never_overflow() {
        let d = |seconds: i64, nanos: i32| prost_types::Duration { seconds, nanos };
        let (min, max) = (Duration::from_secs(1), DURATION_MAX);
        assert_eq!(duration_in(None, min, max), Ok(None));
        assert_eq!(duration_in(Some(&d(0, 0)), min, max), Ok(None));
        assert_eq!(duration_in(Some(&d(5, 0)), min, max), Ok(Some(Duration::from_secs(5))));
        for bad in [d(0, 1), d(-1, 0), d(1, -1), d(1, 1_000_000_000), d(i64::MAX, 999_999_999)] {
            let problem = duration_in(Some(&bad), min, max).unwrap_err();
            assert!(problem.contains("10 years"), "{problem}");
        }
    }
}

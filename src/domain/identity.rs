//! The identity a Connect asserts for its connection token (`user` and `auth` claims), which the
//! proxy hands to the backend as `x-verified-user` and `x-verified-<name>` headers. The rules
//! here make every one of them a valid header, so none is dropped on the way; the controller
//! refuses what breaks them, and the CLI checks its flags with the same rules.

use super::dns_label_problem;

/// Claims one Connect may carry.
pub const MAX_CLAIMS: usize = 64;

/// Longest `user` or claim value.
pub const MAX_IDENTITY_VALUE: usize = 256;

/// Why a claim name cannot be `x-verified-<name>`, if it cannot: 1–63 characters of lowercase
/// letters, digits and '-', starting and ending with a letter or digit, and not `user` (that
/// header carries `user`).
pub fn claim_name_problem(name: &str) -> Option<String> {
    if name == "user" {
        return Some("\"user\" is reserved for x-verified-user; set the user instead".to_string());
    }
    dns_label_problem(name)
}

/// Why a `user` or claim value cannot be a header value, if it cannot: at most 256 characters of
/// printable ASCII (spaces included).
pub fn identity_value_problem(value: &str) -> Option<String> {
    if value.len() > MAX_IDENTITY_VALUE {
        return Some(format!("must be at most {MAX_IDENTITY_VALUE} characters (got {})", value.len()));
    }
    if !value.bytes().all(|b| b == b' ' || b.is_ascii_graphic()) {
        return Some("may contain only printable ASCII characters (it becomes an HTTP header)".to_string());
    }
    None
}

/// Every problem of a Connect's identity, as `(field, description)` violations.
pub fn identity_violations<'a>(
    user: &str,
    auth: impl IntoIterator<Item = (&'a String, &'a String)>,
) -> Vec<(String, String)> {
    let mut violations = Vec::new();
    if let Some(problem) = identity_value_problem(user) {
        violations.push(("user".to_string(), problem));
    }
    let mut count = 0;
    for (name, value) in auth {
        count += 1;
        if let Some(problem) = claim_name_problem(name) {
            violations.push((format!("auth[{name:?}]"), format!("claim name {problem}")));
        }
        if let Some(problem) = identity_value_problem(value) {
            violations.push((format!("auth[{name:?}]"), format!("claim value {problem}")));
        }
    }
    if count > MAX_CLAIMS {
        violations.push(("auth".to_string(), format!("at most {MAX_CLAIMS} claims (got {count})")));
    }
    violations
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    fn claims(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    #[test]
    fn header_safe_claims_and_users_pass() {
        let auth = claims(&[("team", "blue"), ("org-id", "42"), ("role", "editor of docs")]);
        assert_eq!(identity_violations("alice@example.com", &auth), vec![]);
        assert_eq!(identity_violations("", &BTreeMap::new()), vec![]);
    }

    #[test]
    fn claim_names_that_are_not_header_safe_are_named() {
        for bad in ["Team", "team_id", "", "-team", "x y", "tëam", &"x".repeat(64)] {
            let violations = identity_violations("", &claims(&[(bad, "v")]));
            assert_eq!(violations.len(), 1, "{bad:?}: {violations:?}");
            assert_eq!(violations[0].0, format!("auth[{bad:?}]"));
            assert!(violations[0].1.starts_with("claim name "), "{violations:?}");
        }
        let violations = identity_violations("", &claims(&[("user", "mallory")]));
        assert!(violations[0].1.contains("reserved"), "{violations:?}");
    }

    #[test]
    fn values_that_cannot_be_headers_are_refused() {
        let violations = identity_violations("al\nice", &claims(&[("team", "bl\u{e9}u"), ("tier", &"x".repeat(257))]));
        let fields: Vec<_> = violations.iter().map(|(f, _)| f.as_str()).collect();
        assert_eq!(fields, ["user", "auth[\"team\"]", "auth[\"tier\"]"], "{violations:?}");
    }

    #[test]
    fn at_most_64_claims() {
        let many: BTreeMap<String, String> = (0..65).map(|i| (format!("c{i}"), "v".to_string())).collect();
        assert_eq!(
            identity_violations("", &many),
            vec![("auth".to_string(), "at most 64 claims (got 65)".to_string())]
        );
    }
}

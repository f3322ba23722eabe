//! What `Executable.image` may name: a container image reference (docker runtime) or the
//! absolute path of a program (process runtime). The controller does not know which runtime the
//! chosen drone has, so it accepts either and refuses what neither could run — a relative path
//! above all, which means nothing on a drone.

use std::fmt;

/// Longest `[registry/]path` of a reference, as distribution/reference allows.
const NAME_MAX: usize = 255;
/// Longest tag, as distribution/reference allows.
const TAG_MAX: usize = 128;

/// An image reference in the grammar `docker pull` accepts (distribution/reference):
/// `[registry[:port]/]path[:tag][@digest]`, with lowercase path components.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ImageReference<'a> {
    /// `host[:port]`, when the first component names one (it holds a `.` or `:`, is `localhost`,
    /// or has an uppercase letter); `None` means Docker Hub.
    pub registry: Option<&'a str>,
    pub path: &'a str,
    pub tag: Option<&'a str>,
    /// `algorithm:hex`, e.g. `sha256:…`.
    pub digest: Option<&'a str>,
}

impl<'a> ImageReference<'a> {
    /// Parses a reference; the error says which part is wrong and how.
    pub fn parse(reference: &'a str) -> Result<Self, String> {
        let (rest, digest) = match reference.split_once('@') {
            Some((rest, digest)) => {
                digest_problem(digest).map_or(Ok(()), Err)?;
                (rest, Some(digest))
            }
            None => (reference, None),
        };
        // A ':' after the last '/' starts the tag; one before it belongs to a registry's port.
        let last_slash = rest.rfind('/').map_or(0, |i| i + 1);
        let (name, tag) = match rest[last_slash..].rfind(':') {
            Some(i) => (&rest[..last_slash + i], Some(&rest[last_slash + i + 1..])),
            None => (rest, None),
        };
        if name.is_empty() {
            return Err("has no repository name".into());
        }
        if name.len() > NAME_MAX {
            return Err(format!("repository name must be at most {NAME_MAX} characters"));
        }
        if let Some(tag) = tag {
            tag_problem(tag).map_or(Ok(()), Err)?;
        }
        let (registry, path) = match name.split_once('/') {
            Some((first, path)) if names_registry(first) => (Some(first), path),
            _ => (None, name),
        };
        if let Some(registry) = registry {
            registry_problem(registry).map_or(Ok(()), Err)?;
        }
        for component in path.split('/') {
            path_component_problem(component).map_or(Ok(()), Err)?;
        }
        Ok(ImageReference { registry, path, tag, digest })
    }
}

impl fmt::Display for ImageReference<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(registry) = self.registry {
            write!(f, "{registry}/")?;
        }
        f.write_str(self.path)?;
        if let Some(tag) = self.tag {
            write!(f, ":{tag}")?;
        }
        if let Some(digest) = self.digest {
            write!(f, "@{digest}")?;
        }
        Ok(())
    }
}

/// Why `image` names nothing a runtime could start: an image reference and an absolute program
/// path are accepted, anything else is described (`None` when it is fine). `max_len` bounds the
/// whole value.
pub fn image_problem(image: &str, max_len: usize) -> Option<String> {
    if image.is_empty() {
        return Some("must not be empty: give an image reference or an absolute program path".into());
    }
    if image.len() > max_len {
        return Some(format!("must be at most {max_len} characters"));
    }
    if image.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Some(format!("{image:?} must not contain whitespace or control characters"));
    }
    if image.starts_with('/') {
        return image.ends_with('/').then(|| format!("{image:?} names a directory, not a program"));
    }
    if image.starts_with("./") || image.starts_with("../") || image == "." || image == ".." || image.starts_with('~') {
        return Some(format!(
            "{image:?} is a relative path, which means nothing on a drone: give an image reference \
             (e.g. ghcr.io/acme/server:1) or an absolute program path (e.g. /usr/local/bin/server)"
        ));
    }
    ImageReference::parse(image).err().map(|problem| {
        format!(
            "{image:?} is not an image reference ([registry[:port]/]path[:tag][@digest]): {problem}; \
             the process runtime needs an absolute program path instead"
        )
    })
}

/// The first component of a name is a registry when Docker would read it as one.
fn names_registry(first: &str) -> bool {
    first.contains(['.', ':']) || first == "localhost" || first.chars().any(|c| c.is_ascii_uppercase())
}

fn alphanumeric_lower(c: char) -> bool {
    c.is_ascii_lowercase() || c.is_ascii_digit()
}

/// `[a-z0-9]+` runs joined by `.`, `_`, `__` or any number of `-`.
fn path_component_problem(component: &str) -> Option<String> {
    if component.is_empty() {
        return Some("has an empty path component (`//`, or a trailing `/`)".into());
    }
    if component.chars().any(|c| c.is_ascii_uppercase()) {
        return Some(format!("repository name must be lowercase (`{component}`)"));
    }
    let bytes = component.as_bytes();
    if !alphanumeric_lower(bytes[0] as char) || !alphanumeric_lower(bytes[bytes.len() - 1] as char) {
        return Some(format!("path component `{component}` must start and end with a lowercase letter or digit"));
    }
    let mut i = 0;
    while i < bytes.len() {
        let c = bytes[i] as char;
        if alphanumeric_lower(c) {
            i += 1;
            continue;
        }
        let run = bytes[i..].iter().take_while(|b| !alphanumeric_lower(**b as char)).count();
        let separator = &component[i..i + run];
        let valid = matches!(separator, "." | "_" | "__") || separator.bytes().all(|b| b == b'-');
        if !valid {
            return Some(format!(
                "path component `{component}` may join lowercase letters and digits only with `.`, `_`, `__` or `-`"
            ));
        }
        i += run;
    }
    None
}

/// `host[:port]`: DNS-like components (letters, digits, inner `-`) joined by `.`, or `[IPv6]`.
fn registry_problem(registry: &str) -> Option<String> {
    let (host, port) = if let Some(rest) = registry.strip_prefix('[') {
        let Some((ipv6, after)) = rest.split_once(']') else {
            return Some(format!("registry `{registry}` has an unclosed `[`"));
        };
        if ipv6.is_empty() || !ipv6.chars().all(|c| c.is_ascii_hexdigit() || c == ':' || c == '.') {
            return Some(format!("registry `{registry}` is not a bracketed IPv6 address"));
        }
        match after {
            "" => return None,
            _ => match after.strip_prefix(':') {
                Some(port) => ("", Some(port)),
                None => return Some(format!("registry `{registry}` has text after `]` that is not a port")),
            },
        }
    } else {
        match registry.split_once(':') {
            Some((host, port)) => (host, Some(port)),
            None => (registry, None),
        }
    };
    if let Some(port) = port
        && (port.is_empty() || !port.bytes().all(|b| b.is_ascii_digit()) || port.len() > 5)
    {
        return Some(format!("registry `{registry}` has an invalid port `{port}`"));
    }
    if host.is_empty() && !registry.starts_with('[') {
        return Some(format!("registry `{registry}` has no host"));
    }
    let label_ok = |label: &str| {
        !label.is_empty()
            && label.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
            && !label.starts_with('-')
            && !label.ends_with('-')
    };
    if !host.is_empty() && !host.split('.').all(label_ok) {
        return Some(format!(
            "registry host `{host}` must be letters, digits and inner `-`, in components joined by `.`"
        ));
    }
    None
}

/// `[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}`.
fn tag_problem(tag: &str) -> Option<String> {
    let word = |c: char| c.is_ascii_alphanumeric() || c == '_';
    if tag.is_empty() {
        return Some("has an empty tag after `:`".into());
    }
    if tag.len() > TAG_MAX {
        return Some(format!("tag must be at most {TAG_MAX} characters"));
    }
    if !tag.starts_with(word) || !tag.chars().all(|c| word(c) || c == '.' || c == '-') {
        return Some(format!(
            "tag `{tag}` must be letters, digits, `_`, `.` and `-`, and must not start with `.` or `-`"
        ));
    }
    None
}

/// `algorithm:hex`: at least 32 hex digits, exactly 64 for sha256 and 128 for sha512.
fn digest_problem(digest: &str) -> Option<String> {
    let Some((algorithm, hex)) = digest.split_once(':') else {
        return Some(format!("digest `{digest}` must be algorithm:hex, e.g. sha256:…"));
    };
    let component_ok =
        |c: &str| c.starts_with(|ch: char| ch.is_ascii_alphabetic()) && c.bytes().all(|b| b.is_ascii_alphanumeric());
    if !algorithm.split(['+', '.', '-', '_']).all(component_ok) {
        return Some(format!("digest algorithm `{algorithm}` is not valid"));
    }
    let wanted = match algorithm {
        "sha256" => Some(64),
        "sha512" => Some(128),
        _ => None,
    };
    let hex_ok = hex.bytes().all(|b| b.is_ascii_hexdigit())
        && match wanted {
            Some(n) => hex.len() == n,
            None => hex.len() >= 32,
        };
    if !hex_ok {
        let length = wanted.map_or("at least 32".to_string(), |n| n.to_string());
        return Some(format!("digest of `{algorithm}` must be {length} hex digits"));
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    const SHA: &str = "sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

    #[test]
    fn references_split_into_registry_path_tag_and_digest() {
        let digested = format!("localhost:5000/acme/editor:2@{SHA}");
        let reference = |registry, path, tag, digest| ImageReference { registry, path, tag, digest };
        let cases = [
            ("python", reference(None, "python", None, None)),
            ("python:3.12-slim", reference(None, "python", Some("3.12-slim"), None)),
            ("hangar-test-backend:dev", reference(None, "hangar-test-backend", Some("dev"), None)),
            ("library/ubuntu", reference(None, "library/ubuntu", None, None)),
            ("ghcr.io/acme/editor:2", reference(Some("ghcr.io"), "acme/editor", Some("2"), None)),
            (&digested, reference(Some("localhost:5000"), "acme/editor", Some("2"), Some(SHA))),
            ("localhost/x", reference(Some("localhost"), "x", None, None)),
            ("[::1]:5000/a_b.c__d---e", reference(Some("[::1]:5000"), "a_b.c__d---e", None, None)),
            ("Registry/app", reference(Some("Registry"), "app", None, None)),
        ];
        for (text, expected) in cases {
            let parsed = ImageReference::parse(text).unwrap_or_else(|e| panic!("{text}: {e}"));
            assert_eq!(parsed, expected);
            assert_eq!(parsed.to_string(), text, "round trip");
            assert_eq!(image_problem(text, 512), None, "{text}");
        }
    }

    #[test]
    fn bad_references_and_relative_paths_are_refused_with_the_reason() {
        let long_tag = format!("app:{}", "t".repeat(129));
        let long_name = "a/".repeat(128) + "a";
        let cases: Vec<(&str, &str)> = vec![
            ("./my-server", "relative path"),
            ("../bin/server", "relative path"),
            ("~/server", "relative path"),
            (".", "relative path"),
            ("Ubuntu", "must be lowercase"),
            ("acme/Editor:2", "must be lowercase"),
            ("acme//editor", "empty path component"),
            ("acme/editor/", "empty path component"),
            ("-acme/editor", "must start and end"),
            ("acme/editor-", "must start and end"),
            ("acme/ed..itor", "only with"),
            ("acme/ed___itor", "only with"),
            ("app:", "empty tag"),
            ("app:-rc1", "tag `-rc1`"),
            (&long_tag, "tag must be at most 128"),
            ("app@sha256:abc", "64 hex digits"),
            ("app@md5", "algorithm:hex"),
            ("app@1sha:0123456789abcdef0123456789abcdef", "algorithm `1sha`"),
            ("reg.io:port/app", "invalid port"),
            ("re_g.io/app", "registry host"),
            ("[::1/app", "unclosed"),
            (":tag", "no repository name"),
            (&long_name, "at most 255"),
            ("my server", "whitespace"),
            ("", "must not be empty"),
            ("/usr/local/bin/", "names a directory"),
        ];
        for (image, expected) in cases {
            let problem = image_problem(image, 512).unwrap_or_else(|| panic!("{image:?} was accepted"));
            assert!(problem.contains(expected), "{image:?}: {problem:?} does not say {expected:?}");
        }
        let relative = image_problem("./my-server", 512).unwrap();
        assert!(relative.contains("image reference") && relative.contains("absolute program path"), "{relative}");
        assert!(image_problem(&"x".repeat(513), 512).unwrap().contains("at most 512"));
    }

    #[test]
    fn absolute_program_paths_are_accepted_for_the_process_runtime() {
        for path in ["/usr/local/bin/my-server", "/opt/App/Server.bin", "/a", "/srv/../bin/x"] {
            assert_eq!(image_problem(path, 512), None, "{path}");
        }
    }
}

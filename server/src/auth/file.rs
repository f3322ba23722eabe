//! The auth file (`hangar-server controller --auth-file PATH`): who may call the controller, as
//! TOML. `[[token]]` entries name bearer tokens, `[[certificate]]` entries name client
//! certificates (mTLS) by their subject's common name; each gets a role.
//!
//! ```toml
//! [[token]]
//! name = "ci"
//! role = "client"
//! sha256 = "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08"
//!
//! [[token]]
//! name = "drone-a"
//! role = "drone"
//! secret = "…"
//! nodes = ["drone-a"]
//!
//! [[certificate]]
//! common_name = "drone-b"
//! role = "drone"
//! ```
//!
//! Only SHA-256 digests of the secrets are kept in memory, and a presented token is compared
//! with every one of them in constant time, so neither the answer's timing nor a memory dump of
//! the controller gives a secret away.

use super::{PeerCertificate, Principal, Role, Source};
use hangar::secret::Secret;
use serde::Deserialize;
use sha2::{Digest, Sha256};
use std::path::{Path, PathBuf};
use subtle::{ConditionallySelectable, ConstantTimeEq};

/// Secrets shorter than this are refused: a bearer token must not be guessable.
pub const MIN_SECRET_BYTES: usize = 16;

/// Why an auth file was refused. [`AuthFileError::Entry`] names the entry and field
/// (`token[2].role: unknown role "superuser"…`).
#[derive(Debug, thiserror::Error)]
pub enum AuthFileError {
    #[error("cannot read auth file {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("auth file {path} is not valid TOML for an auth file: {message}")]
    Syntax { path: PathBuf, message: String },
    #[error("auth file {path}: {}", .problems.join("; "))]
    Entries { path: PathBuf, problems: Vec<String> },
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFile {
    #[serde(default)]
    token: Vec<RawToken>,
    #[serde(default)]
    certificate: Vec<RawCertificate>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawToken {
    name: Option<String>,
    role: Option<String>,
    secret: Option<String>,
    sha256: Option<String>,
    nodes: Option<Vec<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawCertificate {
    common_name: Option<String>,
    role: Option<String>,
    nodes: Option<Vec<String>>,
}

/// A bearer token of the auth file: its principal and the SHA-256 of its secret.
#[derive(Debug, Clone)]
struct TokenEntry {
    principal: Principal,
    digest: [u8; 32],
}

/// The parsed auth file: every principal the controller knows. Immutable; a reload builds a new
/// one and swaps it in.
#[derive(Debug, Clone, Default)]
pub struct AuthFile {
    tokens: Vec<TokenEntry>,
    /// Certificate principals by common name.
    certificates: Vec<Principal>,
    /// Things worth an operator's attention that do not make the file wrong (clear secrets in a
    /// file others can read).
    warnings: Vec<String>,
}

impl AuthFile {
    /// Reads and checks the file at `path`.
    pub fn load(path: &Path) -> Result<AuthFile, AuthFileError> {
        let text =
            std::fs::read_to_string(path).map_err(|source| AuthFileError::Read { path: path.to_path_buf(), source })?;
        let mut file = AuthFile::parse(&text).map_err(|err| err.at(path))?;
        if file.tokens_in_clear > 0 && readable_by_others(path) {
            file.file.warnings.push(format!(
                "{} holds {} clear `secret`s and can be read by other users; use `sha256` entries \
                 (`hangar-server token generate`) or chmod 600 it",
                path.display(),
                file.tokens_in_clear
            ));
        }
        Ok(file.file)
    }

    /// Parses the text of an auth file; errors carry no path yet.
    fn parse(text: &str) -> Result<Parsed, ParseError> {
        let raw: RawFile = toml::from_str(text).map_err(|err| ParseError::Syntax(err.to_string()))?;
        let mut problems = Vec::new();
        let mut tokens = Vec::new();
        let mut tokens_in_clear = 0;
        for (index, raw) in raw.token.into_iter().enumerate() {
            let at = |field: &str| format!("token[{index}].{field}");
            let mut problem = |field: &str, message: String| problems.push(format!("{}: {message}", at(field)));
            let name = required_name(raw.name, "name", &mut problem);
            let role = role(raw.role, &mut problem);
            let nodes = nodes(raw.nodes, role, &mut problem);
            let digest = match (raw.secret, raw.sha256) {
                (Some(_), Some(_)) => {
                    problem("secret", "give either `secret` or `sha256`, not both".into());
                    None
                }
                (None, None) => {
                    problem(
                        "sha256",
                        "missing: every token needs `sha256` (hex SHA-256 of its secret) or `secret`".into(),
                    );
                    None
                }
                (Some(secret), None) => {
                    tokens_in_clear += 1;
                    if secret.is_empty() {
                        problem("secret", "must not be empty".into());
                        None
                    } else if secret.len() < MIN_SECRET_BYTES {
                        problem(
                            "secret",
                            format!(
                                "too short: at least {MIN_SECRET_BYTES} bytes (`hangar-server token generate` makes one)"
                            ),
                        );
                        None
                    } else {
                        Some(secret_digest(&secret))
                    }
                }
                (None, Some(hex)) => match hex_digest(&hex) {
                    Some(digest) => Some(digest),
                    None => {
                        problem("sha256", "must be 64 hexadecimal digits (the SHA-256 of the secret)".into());
                        None
                    }
                },
            };
            if let (Some(name), Some(role), Some(digest)) = (name, role, digest) {
                tokens.push(TokenEntry { principal: Principal { name, role, nodes, source: Source::Token }, digest });
            }
        }
        for (index, entry) in tokens.iter().enumerate() {
            let earlier = &tokens[..index];
            if let Some(first) = earlier.iter().position(|e| e.principal.name == entry.principal.name) {
                problems.push(format!(
                    "token[{index}].name: {:?} is already the name of token[{first}]",
                    entry.principal.name
                ));
            }
            // Two principals behind one secret: the caller would be whichever came first.
            if let Some(first) = earlier.iter().position(|e| e.digest == entry.digest) {
                problems.push(format!("token[{index}]: the same secret as token[{first}]; every token needs its own"));
            }
        }

        let mut certificates: Vec<Principal> = Vec::new();
        for (index, raw) in raw.certificate.into_iter().enumerate() {
            let at = |field: &str| format!("certificate[{index}].{field}");
            let mut problem = |field: &str, message: String| problems.push(format!("{}: {message}", at(field)));
            let common_name = required_name(raw.common_name, "common_name", &mut problem);
            let role = role(raw.role, &mut problem);
            let nodes = nodes(raw.nodes, role, &mut problem);
            let (Some(name), Some(role)) = (common_name, role) else { continue };
            if let Some(first) = certificates.iter().position(|p| p.name == name) {
                problem("common_name", format!("{name:?} is already the common name of certificate[{first}]"));
                continue;
            }
            // A drone's or proxy's certificate names the node it is, unless the entry says more.
            let nodes = match (nodes, role) {
                (None, Role::Drone | Role::Proxy) => Some(vec![name.clone()]),
                (nodes, _) => nodes,
            };
            certificates.push(Principal { name, role, nodes, source: Source::Certificate });
        }
        if !problems.is_empty() {
            return Err(ParseError::Entries(problems));
        }
        Ok(Parsed { file: AuthFile { tokens, certificates, warnings: Vec::new() }, tokens_in_clear })
    }

    /// The principal whose token is `secret`, if any. Every entry is compared, in constant time,
    /// whatever matches: how long this takes says nothing about which entry (or how much of one)
    /// matched.
    pub fn authenticate_token(&self, secret: &str) -> Option<Principal> {
        let digest = secret_digest(secret);
        let mut found = subtle::Choice::from(0);
        let mut index = 0u64;
        for (i, entry) in self.tokens.iter().enumerate() {
            let equal = entry.digest.ct_eq(&digest);
            index.conditional_assign(&(i as u64), equal);
            found |= equal;
        }
        bool::from(found).then(|| self.tokens[index as usize].principal.clone())
    }

    /// The principal a verified client certificate is mapped to, by its subject's common name.
    pub fn authenticate_certificate(&self, certificate: &PeerCertificate) -> Option<Principal> {
        let common_name = certificate.common_name.as_deref()?;
        self.certificates.iter().find(|p| p.name == common_name).cloned()
    }

    /// How many token and certificate principals the file names.
    pub fn counts(&self) -> (usize, usize) {
        (self.tokens.len(), self.certificates.len())
    }

    /// What the file does that it should not, without being wrong; to be logged.
    pub fn warnings(&self) -> &[String] {
        &self.warnings
    }

    /// An auth file parsed from `text`, for tests and tools that hold the file in memory.
    pub fn from_toml(text: &str) -> Result<AuthFile, AuthFileError> {
        AuthFile::parse(text).map(|parsed| parsed.file).map_err(|err| err.at(Path::new("<memory>")))
    }
}

struct Parsed {
    file: AuthFile,
    tokens_in_clear: usize,
}

enum ParseError {
    Syntax(String),
    Entries(Vec<String>),
}

impl ParseError {
    fn at(self, path: &Path) -> AuthFileError {
        let path = path.to_path_buf();
        match self {
            ParseError::Syntax(message) => AuthFileError::Syntax { path, message },
            ParseError::Entries(problems) => AuthFileError::Entries { path, problems },
        }
    }
}

fn required_name(value: Option<String>, field: &str, problem: &mut impl FnMut(&str, String)) -> Option<String> {
    match value {
        None => {
            problem(field, "missing".into());
            None
        }
        Some(name) if name.trim().is_empty() => {
            problem(field, "must not be empty".into());
            None
        }
        Some(name) if name.len() > 256 || name.chars().any(char::is_control) => {
            problem(field, "must be at most 256 characters, none of them control characters".into());
            None
        }
        Some(name) => Some(name),
    }
}

fn role(value: Option<String>, problem: &mut impl FnMut(&str, String)) -> Option<Role> {
    match value {
        None => {
            problem("role", "missing".into());
            None
        }
        Some(text) => text.parse::<Role>().inspect_err(|err| problem("role", err.clone())).ok(),
    }
}

/// `nodes`: node names a drone or proxy principal may attach as. Only those roles attach, so on
/// any other role the list would be a mistake that silently means nothing.
fn nodes(
    value: Option<Vec<String>>,
    role: Option<Role>,
    problem: &mut impl FnMut(&str, String),
) -> Option<Vec<String>> {
    let names = value?;
    if let Some(role) = role
        && !matches!(role, Role::Drone | Role::Proxy)
    {
        problem("nodes", format!("only drone and proxy principals attach as nodes; a {role} has no use for it"));
    }
    if names.is_empty() {
        problem("nodes", "must name at least one node (leave it out to allow any node name)".into());
    }
    for (i, name) in names.iter().enumerate() {
        if let Some(why) = hangar::domain::dns_label_problem(name) {
            problem(&format!("nodes[{i}]"), why.to_string());
        }
    }
    Some(names)
}

fn secret_digest(secret: &str) -> [u8; 32] {
    Sha256::digest(secret.as_bytes()).into()
}

/// The hex SHA-256 of `secret`, as a `sha256 = …` line of the auth file wants it.
pub fn secret_sha256_hex(secret: &str) -> String {
    secret_digest(secret).iter().map(|b| format!("{b:02x}")).collect()
}

/// A fresh token for `hangar-server token generate`: 32 random bytes, base64url, and the
/// `[[token]]` entry that names it by its SHA-256 (the secret itself is in no file).
pub fn generate_token(name: &str, role: Role, nodes: &[String]) -> (Secret, String) {
    use base64::Engine;
    use rand::RngCore;
    let mut bytes = [0u8; 32];
    rand::rng().fill_bytes(&mut bytes);
    let secret = Secret::new(base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes));
    let quoted = |text: &str| toml::Value::String(text.to_string()).to_string();
    let mut entry = format!(
        "[[token]]\nname = {}\nrole = {}\nsha256 = {}\n",
        quoted(name),
        quoted(role.as_str()),
        quoted(&secret_sha256_hex(secret.expose()))
    );
    if !nodes.is_empty() {
        let nodes: Vec<String> = nodes.iter().map(|n| quoted(n)).collect();
        entry.push_str(&format!("nodes = [{}]\n", nodes.join(", ")));
    }
    (secret, entry)
}

fn hex_digest(hex: &str) -> Option<[u8; 32]> {
    let hex = hex.trim();
    if hex.len() != 64 || !hex.is_ascii() {
        return None;
    }
    let mut digest = [0u8; 32];
    for (i, byte) in digest.iter_mut().enumerate() {
        *byte = u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).ok()?;
    }
    Some(digest)
}

fn readable_by_others(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path).is_ok_and(|m| m.permissions().mode() & 0o077 != 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET_A: &str = "secret-a-0123456789abcdef";
    const SECRET_B: &str = "secret-b-0123456789abcdef";

    fn problems(text: &str) -> Vec<String> {
        match AuthFile::from_toml(text) {
            Err(AuthFileError::Entries { problems, .. }) => problems,
            other => panic!("expected entry problems, got {other:?}"),
        }
    }

    #[test]
    fn tokens_by_secret_or_digest_and_certificates_by_common_name() {
        let file = AuthFile::from_toml(&format!(
            r#"
            [[token]]
            name = "ci"
            role = "client"
            secret = "{SECRET_A}"

            [[token]]
            name = "drone-a"
            role = "drone"
            sha256 = "{}"
            nodes = ["drone-a"]

            [[certificate]]
            common_name = "drone-b"
            role = "drone"

            [[certificate]]
            common_name = "ops"
            role = "operator"
            "#,
            secret_sha256_hex(SECRET_B).to_uppercase()
        ))
        .unwrap();
        assert_eq!(file.counts(), (2, 2));
        let ci = file.authenticate_token(SECRET_A).unwrap();
        assert_eq!((ci.name.as_str(), ci.role, ci.source, ci.nodes), ("ci", Role::Client, Source::Token, None));
        let drone = file.authenticate_token(SECRET_B).unwrap();
        assert_eq!(drone.nodes, Some(vec!["drone-a".to_string()]));
        assert!(file.authenticate_token("secret-c-0123456789abcdef").is_none());
        assert!(file.authenticate_token("").is_none());

        let cert = |cn: Option<&str>| PeerCertificate { common_name: cn.map(Into::into), der: Vec::new() };
        let drone_b = file.authenticate_certificate(&cert(Some("drone-b"))).unwrap();
        assert_eq!(
            (drone_b.role, drone_b.source, drone_b.nodes),
            (Role::Drone, Source::Certificate, Some(vec!["drone-b".to_string()]))
        );
        assert_eq!(file.authenticate_certificate(&cert(Some("ops"))).unwrap().nodes, None);
        assert!(file.authenticate_certificate(&cert(Some("stranger"))).is_none());
        assert!(file.authenticate_certificate(&cert(None)).is_none());
    }

    #[test]
    fn an_empty_file_knows_nobody() {
        let file = AuthFile::from_toml("").unwrap();
        assert_eq!(file.counts(), (0, 0));
        assert!(file.authenticate_token(SECRET_A).is_none());
    }

    #[test]
    fn errors_name_the_entry_and_the_field() {
        let found = problems(&format!(
            r#"
            [[token]]
            name = "ok"
            role = "reader"
            secret = "{SECRET_A}"

            [[token]]
            name = "x"
            role = "superuser"
            secret = "{SECRET_B}"
            "#
        ));
        assert_eq!(found.len(), 1, "{found:?}");
        assert!(found[0].starts_with("token[1].role: unknown role \"superuser\""), "{found:?}");
    }

    #[test]
    fn short_empty_missing_and_doubled_secrets_are_refused() {
        let found = problems(&format!(
            r#"
            [[token]]
            name = "short"
            role = "reader"
            secret = "tooshort"
            [[token]]
            name = "empty"
            role = "reader"
            secret = ""
            [[token]]
            name = "none"
            role = "reader"
            [[token]]
            name = "both"
            role = "reader"
            secret = "{SECRET_A}"
            sha256 = "{}"
            [[token]]
            name = "bad-hex"
            role = "reader"
            sha256 = "xyz"
            "#,
            secret_sha256_hex(SECRET_A)
        ));
        let expected = ["token[0].secret: too short", "token[1].secret: must not be empty", "token[2].sha256: missing"];
        for (problem, prefix) in found.iter().zip(expected) {
            assert!(problem.starts_with(prefix), "{problem:?} does not start with {prefix:?}");
        }
        assert!(found[3].starts_with("token[3].secret: give either"), "{found:?}");
        assert!(found[4].starts_with("token[4].sha256: must be 64 hexadecimal digits"), "{found:?}");
        assert_eq!(found.len(), 5, "{found:?}");
    }

    #[test]
    fn duplicate_names_secrets_and_common_names_are_refused() {
        let found = problems(&format!(
            r#"
            [[token]]
            name = "a"
            role = "reader"
            secret = "{SECRET_A}"
            [[token]]
            name = "a"
            role = "reader"
            secret = "{SECRET_B}"
            [[token]]
            name = "c"
            role = "admin"
            sha256 = "{}"
            [[certificate]]
            common_name = "d"
            role = "drone"
            [[certificate]]
            common_name = "d"
            role = "proxy"
            "#,
            secret_sha256_hex(SECRET_A)
        ));
        assert_eq!(
            found,
            [
                "token[1].name: \"a\" is already the name of token[0]",
                "token[2]: the same secret as token[0]; every token needs its own",
                "certificate[1].common_name: \"d\" is already the common name of certificate[0]",
            ]
        );
    }

    #[test]
    fn nodes_belong_to_drones_and_proxies_and_are_node_names() {
        let found = problems(&format!(
            r#"
            [[token]]
            name = "r"
            role = "reader"
            secret = "{SECRET_A}"
            nodes = ["drone-a"]
            [[token]]
            name = "d"
            role = "drone"
            secret = "{SECRET_B}"
            nodes = []
            [[certificate]]
            common_name = "p"
            role = "proxy"
            nodes = ["Not A Name"]
            "#
        ));
        assert!(found[0].starts_with("token[0].nodes: only drone and proxy principals"), "{found:?}");
        assert!(found[1].starts_with("token[1].nodes: must name at least one node"), "{found:?}");
        assert!(found[2].starts_with("certificate[0].nodes[0]: "), "{found:?}");
        assert_eq!(found.len(), 3, "{found:?}");
    }

    #[test]
    fn unknown_fields_and_sections_are_refused_not_ignored() {
        for text in ["[[token]]\nname = \"a\"\nrole = \"reader\"\nsecrett = \"x\"\n", "[[tokens]]\nname = \"a\"\n"] {
            match AuthFile::from_toml(text) {
                Err(AuthFileError::Syntax { message, .. }) => assert!(message.contains("unknown field"), "{message}"),
                other => panic!("expected a syntax error for {text:?}, got {other:?}"),
            }
        }
    }

    #[test]
    fn a_file_others_can_read_with_clear_secrets_is_warned_about() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("auth.toml");
        std::fs::write(&path, format!("[[token]]\nname = \"a\"\nrole = \"reader\"\nsecret = \"{SECRET_A}\"\n"))
            .unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        let file = AuthFile::load(&path).unwrap();
        assert_eq!(file.warnings().len(), 1);
        assert!(file.warnings()[0].contains("chmod 600"), "{:?}", file.warnings());
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        assert!(AuthFile::load(&path).unwrap().warnings().is_empty());
    }

    #[test]
    fn a_missing_file_says_which() {
        let err = AuthFile::load(Path::new("/nonexistent/auth.toml")).unwrap_err();
        assert!(err.to_string().starts_with("cannot read auth file /nonexistent/auth.toml"), "{err}");
    }

    #[test]
    fn a_generated_token_is_long_random_and_its_entry_names_it_by_digest() {
        let (secret, entry) = generate_token("drone-a", Role::Drone, &["drone-a".to_string()]);
        let (other, _) = generate_token("drone-a", Role::Drone, &[]);
        assert_eq!(secret.expose().len(), 43, "32 bytes in base64url without padding");
        assert_ne!(secret, other);
        assert!(!entry.contains(secret.expose()), "{entry}");
        let file = AuthFile::from_toml(&entry).unwrap();
        let principal = file.authenticate_token(secret.expose()).expect("the entry names the secret");
        assert_eq!((principal.name.as_str(), principal.role), ("drone-a", Role::Drone));
        assert_eq!(principal.nodes, Some(vec!["drone-a".to_string()]));
    }

    #[test]
    fn no_secret_reaches_a_debug_dump() {
        let file =
            AuthFile::from_toml(&format!("[[token]]\nname = \"a\"\nrole = \"reader\"\nsecret = \"{SECRET_A}\"\n"))
                .unwrap();
        assert!(!format!("{file:?}").contains(SECRET_A));
    }
}

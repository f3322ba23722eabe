//! The CLI's credentials: the flags are global, a token never shows in a dump of the arguments,
//! and mistakes are reported before any connection, with what to pass instead.

use super::*;
use clap::Parser;
use std::path::Path;
use std::process::ExitCode;

#[test]
fn credential_flags_go_before_or_after_the_command() {
    let cli =
        Cli::try_parse_from(["hangar", "nodes", "list", "--tls-ca", "/ca.pem", "--token-file", "/token"]).unwrap();
    assert_eq!(cli.credentials.tls_ca.as_deref(), Some(Path::new("/ca.pem")));
    assert_eq!(cli.credentials.token_file.as_deref(), Some(Path::new("/token")));
    let cli = Cli::try_parse_from([
        "hangar",
        "--tls-cert",
        "/c.pem",
        "--tls-key",
        "/k.pem",
        "--token",
        "s3cret-value",
        "backends",
        "list",
    ])
    .unwrap();
    assert_eq!(cli.credentials.tls_key.as_deref(), Some(Path::new("/k.pem")));
    let dump = format!("{cli:?}");
    assert!(!dump.contains("s3cret-value") && dump.contains("<redacted>"), "{dump}");
}

#[tokio::test]
async fn a_certificate_without_its_key_is_refused_before_connecting() {
    let cli =
        Cli::try_parse_from(["hangar", "--controller", "https://127.0.0.1:1", "--tls-cert", "/c.pem", "nodes", "list"])
            .unwrap();
    let err = execute(&cli).await.unwrap_err();
    assert_eq!(err.exit_code(), ExitCode::from(1));
    let text = render::error(&err, &cli.controller);
    assert!(text.contains("/c.pem comes without its key"), "{text}");
    assert!(text.contains("hint: check --token, --token-file, --tls-ca"), "{text}");
}

#[tokio::test]
async fn tls_options_on_an_http_controller_are_refused_with_a_hint() {
    let cli = Cli::try_parse_from([
        "hangar",
        "--controller",
        "http://127.0.0.1:1",
        "--tls-ca",
        "/ca.pem",
        "nodes",
        "get",
        "x",
    ])
    .unwrap();
    let err = execute(&cli).await.unwrap_err();
    let text = render::error(&err, &cli.controller);
    assert!(text.contains("http://127.0.0.1:1 is plain http://") && text.contains("use an https:// URL"), "{text}");
    assert!(text.contains("hint: pass --controller https://HOST:PORT"), "{text}");
}

#[tokio::test]
async fn a_missing_ca_file_is_named() {
    let cli = Cli::try_parse_from([
        "hangar",
        "--controller",
        "https://127.0.0.1:1",
        "--tls-ca",
        "/no/ca.pem",
        "nodes",
        "list",
    ])
    .unwrap();
    let err = execute(&cli).await.unwrap_err();
    assert!(err.to_string().starts_with("cannot read the CA certificate /no/ca.pem"), "{err}");
}

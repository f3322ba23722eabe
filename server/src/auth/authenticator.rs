//! [`Authenticator`]: names the principal behind a call and decides whether it may make it, from
//! the auth file in force (swapped whole on reload) and the one authorization table.

use super::file::{AuthFile, AuthFileError};
use super::table::{self, Access, Reflection};
use super::{PeerIdentity, Principal};
use crate::api::ApiError;
use arc_swap::ArcSwapOption;
use http::HeaderValue;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// A call the authenticator refused: the error for the caller and, when the caller was
/// identified, who it was (for the audit line).
#[derive(Debug)]
pub struct Refusal {
    pub principal: Option<Principal>,
    pub error: ApiError,
}

/// The controller's authentication and authorization. Without an auth file everyone is
/// [`Principal::anonymous_admin`]; with one, callers are named by their bearer token or client
/// certificate and checked against [`table::access`].
pub struct Authenticator {
    /// The auth file, re-read by [`Authenticator::reload`]; `None`: authentication is off.
    path: Option<PathBuf>,
    file: ArcSwapOption<AuthFile>,
    reflection: Reflection,
    anonymous_admin: Arc<Principal>,
    anonymous: Arc<Principal>,
}

impl Authenticator {
    /// Authentication off: every caller is an anonymous admin (Hangar before it had auth).
    pub fn disabled(reflection: Reflection) -> Authenticator {
        Authenticator {
            path: None,
            file: ArcSwapOption::empty(),
            reflection,
            anonymous_admin: Arc::new(Principal::anonymous_admin()),
            anonymous: Arc::new(Principal::anonymous()),
        }
    }

    /// Authentication by the auth file at `path`; fails, naming the entry and field, when the
    /// file is wrong.
    pub fn from_file(path: &Path, reflection: Reflection) -> Result<Authenticator, AuthFileError> {
        let file = AuthFile::load(path)?;
        log_loaded(path, &file, "auth file loaded");
        let authenticator = Authenticator { path: Some(path.to_path_buf()), ..Authenticator::disabled(reflection) };
        authenticator.file.store(Some(Arc::new(file)));
        Ok(authenticator)
    }

    /// Whether callers must prove who they are (an auth file is in force).
    pub fn enabled(&self) -> bool {
        self.path.is_some()
    }

    pub fn reflection(&self) -> Reflection {
        self.reflection
    }

    /// Reads the auth file again and puts it in force for new calls; calls already running
    /// (open streams included) keep the principal they were admitted as. A file that does not
    /// load leaves the one in force as it is. Without an auth file there is nothing to read.
    pub fn reload(&self) -> Result<(), AuthFileError> {
        let Some(path) = &self.path else { return Ok(()) };
        let file = AuthFile::load(path)?;
        log_loaded(path, &file, "auth file reloaded");
        self.file.store(Some(Arc::new(file)));
        Ok(())
    }

    /// The principal a call to `method` (its path) runs as, or why it may not be made.
    /// `authorization` is the request's header; `peer` what the transport knows of the
    /// connection (its verified client certificate).
    pub fn admit(
        &self,
        method: &str,
        authorization: Option<&HeaderValue>,
        peer: Option<&PeerIdentity>,
    ) -> Result<Arc<Principal>, Box<Refusal>> {
        let Some(file) = self.file.load_full() else { return Ok(self.anonymous_admin.clone()) };
        let refuse = |principal: Option<Principal>, error| Err(Box::new(Refusal { principal, error }));
        let identified = identify(&file, authorization, peer);
        match table::access(method, self.reflection) {
            // Whatever the credentials, even wrong ones: health probes must never fail on them.
            Access::Open => Ok(identified.ok().flatten().map(Arc::new).unwrap_or_else(|| self.anonymous.clone())),
            access => match identified {
                Err(error) => refuse(None, error),
                Ok(None) => refuse(None, ApiError::Unauthenticated { method: method_name(method) }),
                Ok(Some(principal)) => match access {
                    Access::Least(required) if !principal.role.includes(required) => {
                        let error =
                            ApiError::RoleNotAllowed { role: principal.role, required, method: method_name(method) };
                        refuse(Some(principal), error)
                    }
                    _ => Ok(Arc::new(principal)),
                },
            },
        }
    }
}

/// `package.Service/Method`, as errors and audit lines name a method.
pub fn method_name(path: &str) -> String {
    path.trim_start_matches('/').to_string()
}

/// Who the credentials name: a bearer token if the call has an `authorization` header, else the
/// client certificate if the connection has one, else nobody (`None`). Credentials that name
/// nobody are an error rather than nobody, so that a revoked token is told it is no longer
/// valid.
fn identify(
    file: &AuthFile,
    authorization: Option<&HeaderValue>,
    peer: Option<&PeerIdentity>,
) -> Result<Option<Principal>, ApiError> {
    if let Some(header) = authorization {
        let token = header
            .to_str()
            .ok()
            .and_then(|value| value.split_once(' '))
            .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
            .map(|(_, token)| token.trim())
            .filter(|token| !token.is_empty())
            .ok_or(ApiError::TokenInvalid)?;
        return file.authenticate_token(token).map(Some).ok_or(ApiError::TokenInvalid);
    }
    match peer.and_then(|peer| peer.certificate.as_deref()) {
        None => Ok(None),
        Some(certificate) => file.authenticate_certificate(certificate).map(Some).ok_or_else(|| {
            ApiError::CertificateNotMapped { common_name: certificate.common_name.clone().unwrap_or_default() }
        }),
    }
}

fn log_loaded(path: &Path, file: &AuthFile, what: &str) {
    let (tokens, certificates) = file.counts();
    tracing::info!(path = %path.display(), tokens, certificates, "{what}");
    for warning in file.warnings() {
        tracing::warn!(path = %path.display(), "{warning}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::{PeerCertificate, Role, Source};
    use tonic::Code;

    const READER: &str = "reader-secret-0123456789";
    const DRONE: &str = "drone-secret-0123456789a";

    fn authenticator(reflection: Reflection) -> (Authenticator, tempfile::TempDir) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("auth.toml");
        std::fs::write(
            &path,
            format!(
                "[[token]]\nname = \"r\"\nrole = \"reader\"\nsecret = \"{READER}\"\n\
                 [[token]]\nname = \"d\"\nrole = \"drone\"\nsecret = \"{DRONE}\"\nnodes = [\"drone-a\"]\n\
                 [[certificate]]\ncommon_name = \"ops\"\nrole = \"operator\"\n"
            ),
        )
        .unwrap();
        (Authenticator::from_file(&path, reflection).unwrap(), dir)
    }

    fn bearer(secret: &str) -> HeaderValue {
        HeaderValue::from_str(&format!("Bearer {secret}")).unwrap()
    }

    fn code(result: Result<Arc<Principal>, Box<Refusal>>) -> Code {
        match result {
            Ok(_) => Code::Ok,
            Err(refusal) => tonic::Status::from(refusal.error).code(),
        }
    }

    const LIST: &str = "/hangar.v1.NodeService/ListNodes";
    const DRAIN: &str = "/hangar.v1.NodeService/DrainNode";

    #[test]
    fn without_an_auth_file_everyone_is_an_anonymous_admin() {
        let auth = Authenticator::disabled(Reflection::Open);
        let principal = auth.admit(DRAIN, None, None).unwrap();
        assert_eq!(*principal, Principal::anonymous_admin());
        // A token is not looked at: there is nothing to look it up in.
        assert_eq!(*auth.admit(DRAIN, Some(&bearer("whatever")), None).unwrap(), Principal::anonymous_admin());
    }

    #[test]
    fn a_token_names_its_principal_and_its_role_decides() {
        let (auth, _dir) = authenticator(Reflection::Open);
        let reader = auth.admit(LIST, Some(&bearer(READER)), None).unwrap();
        assert_eq!((reader.name.as_str(), reader.role, reader.source), ("r", Role::Reader, Source::Token));
        let refusal = auth.admit(DRAIN, Some(&bearer(READER)), None).unwrap_err();
        assert_eq!(refusal.principal.map(|p| p.name), Some("r".to_string()));
        let status = tonic::Status::from(refusal.error);
        assert_eq!(status.code(), Code::PermissionDenied);
        let (reason, meta) = hangar::error::error_info(&status).unwrap();
        assert_eq!(reason, "ROLE_NOT_ALLOWED");
        assert_eq!(
            (meta["role"].as_str(), meta["required_role"].as_str(), meta["method"].as_str()),
            ("reader", "operator", "hangar.v1.NodeService/DrainNode")
        );
    }

    #[test]
    fn no_wrong_and_malformed_tokens_are_unauthenticated_and_never_echoed() {
        let (auth, _dir) = authenticator(Reflection::Open);
        assert_eq!(code(auth.admit(LIST, None, None)), Code::Unauthenticated);
        for header in [
            bearer("not-the-secret-0123456789"),
            HeaderValue::from_static("Bearer "),
            HeaderValue::from_str(READER).unwrap(),
            HeaderValue::from_str(&format!("Basic {READER}")).unwrap(),
        ] {
            let refusal = auth.admit(LIST, Some(&header), None).unwrap_err();
            let status = tonic::Status::from(refusal.error);
            assert_eq!(status.code(), Code::Unauthenticated, "{header:?}");
            assert_eq!(hangar::error::error_info(&status).unwrap().0, "TOKEN_INVALID");
            assert!(!status.message().contains("0123456789"), "{}", status.message());
        }
        // The scheme is case-insensitive, as HTTP's are.
        assert!(auth.admit(LIST, Some(&HeaderValue::from_str(&format!("bearer {READER}")).unwrap()), None).is_ok());
    }

    #[test]
    fn health_is_open_whatever_the_credentials_and_reflection_follows_its_setting() {
        let (auth, _dir) = authenticator(Reflection::Authenticated);
        let check = "/grpc.health.v1.Health/Check";
        assert_eq!(auth.admit(check, None, None).unwrap().source, Source::Anonymous);
        assert_eq!(auth.admit(check, Some(&bearer("wrong-wrong-wrong-wrong")), None).unwrap().role, Role::Reader);
        let reflect = "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo";
        assert_eq!(code(auth.admit(reflect, None, None)), Code::Unauthenticated);
        // Any principal, even one whose role reaches nothing else here.
        assert_eq!(code(auth.admit(reflect, Some(&bearer(DRONE)), None)), Code::Ok);
        let (open, _dir) = authenticator(Reflection::Open);
        assert_eq!(code(open.admit(reflect, None, None)), Code::Ok);
    }

    #[test]
    fn a_mapped_certificate_is_its_principal_and_an_unmapped_one_is_refused() {
        let (auth, _dir) = authenticator(Reflection::Open);
        let peer = |cn: &str| PeerIdentity {
            remote_addr: None,
            certificate: Some(Arc::new(PeerCertificate { common_name: Some(cn.into()), der: Vec::new() })),
        };
        let ops = auth.admit(DRAIN, None, Some(&peer("ops"))).unwrap();
        assert_eq!((ops.role, ops.source), (Role::Operator, Source::Certificate));
        let refusal = auth.admit(LIST, None, Some(&peer("stranger"))).unwrap_err();
        assert!(
            matches!(refusal.error, ApiError::CertificateNotMapped { ref common_name } if common_name == "stranger")
        );
        // A token beats the certificate of the connection it comes over.
        let reader = auth.admit(LIST, Some(&bearer(READER)), Some(&peer("ops"))).unwrap();
        assert_eq!(reader.name, "r");
        // A connection without a certificate is nobody.
        let plain = PeerIdentity::default();
        assert_eq!(code(auth.admit(LIST, None, Some(&plain))), Code::Unauthenticated);
    }

    #[test]
    fn a_reload_revokes_for_new_calls_and_a_broken_file_keeps_the_old_one() {
        let (auth, dir) = authenticator(Reflection::Open);
        let path = dir.path().join("auth.toml");
        std::fs::write(&path, "[[token]]\nname = \"r\"\nrole = \"nonsense\"\n").unwrap();
        let err = auth.reload().unwrap_err();
        assert!(err.to_string().contains("token[0].role"), "{err}");
        assert_eq!(code(auth.admit(LIST, Some(&bearer(READER)), None)), Code::Ok);
        std::fs::write(&path, format!("[[token]]\nname = \"d\"\nrole = \"drone\"\nsecret = \"{DRONE}\"\n")).unwrap();
        auth.reload().unwrap();
        assert_eq!(code(auth.admit(LIST, Some(&bearer(READER)), None)), Code::Unauthenticated);
        // And the new entry has no node restriction any more.
        assert_eq!(auth.admit("/hangar.v1.DroneService/Attach", Some(&bearer(DRONE)), None).unwrap().nodes, None);
    }
}

//! Server reflection on the executor socket, so `grpcurl -unix -plaintext PATH list` shows what
//! an executor serves: `hangar.executor.v1` and reflection itself (v1 and v1alpha), nothing
//! more. Like every call on the socket it is refused to a peer outside the allow-list; unlike
//! the executor's calls it needs no handshake, which grpcurl cannot make.

use tonic::service::interceptor::InterceptedService;
use tonic::{Request, Status};
use tonic_reflection::server::{v1, v1alpha};

use super::allowed_peer;

/// Refuses a reflection call from a peer whose uid is not allowed.
#[derive(Clone)]
pub(super) struct AllowedPeers(Vec<u32>);

impl tonic::service::Interceptor for AllowedPeers {
    fn call(&mut self, request: Request<()>) -> Result<Request<()>, Status> {
        allowed_peer(request.extensions(), &self.0)?;
        Ok(request)
    }
}

/// Reflection v1 and v1alpha, each listing exactly the services of the executor socket.
pub(super) fn services(
    allowed_uids: Vec<u32>,
) -> (
    InterceptedService<v1::ServerReflectionServer<impl v1::ServerReflection>, AllowedPeers>,
    InterceptedService<v1alpha::ServerReflectionServer<impl v1alpha::ServerReflection>, AllowedPeers>,
) {
    // Each version would otherwise list only itself.
    let builder = || {
        tonic_reflection::server::Builder::configure()
            .include_reflection_service(false)
            .register_encoded_file_descriptor_set(hangar::executor::v1::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_reflection::pb::v1::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_reflection::pb::v1alpha::FILE_DESCRIPTOR_SET)
    };
    // The sets are compiled in; one that does not decode is a build defect, caught by every test.
    let v1 = builder().build_v1().expect("the built-in descriptor sets decode");
    let v1alpha = builder().build_v1alpha().expect("the built-in descriptor sets decode");
    let peers = AllowedPeers(allowed_uids);
    (InterceptedService::new(v1, peers.clone()), InterceptedService::new(v1alpha, peers))
}

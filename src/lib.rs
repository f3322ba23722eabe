//! The Hangar API crate: generated protobuf types and tonic services for `hangar.v1` and
//! `hangar.executor.v1`, each with its encoded descriptor set for server reflection, and the
//! domain types that every component shares together with their protobuf conversions.

pub mod codec;
pub mod domain;
pub mod error;
mod redact;
pub mod secret;
pub mod wire;

/// Generated code for `hangar.v1`.
pub mod v1 {
    #![allow(clippy::all, missing_docs)]
    tonic::include_proto!("hangar.v1");
    pub use crate::wire::{
        EncodedBackend, EncodedNode, ListNodesResponse, ListedNode, WatchBackendsResponse, WatchNodesResponse,
    };

    /// Encoded `FileDescriptorSet` of `hangar.v1` and the files it imports, for the controller's
    /// server reflection (`hangar.executor.v1` is not in it: the controller does not serve it).
    pub const FILE_DESCRIPTOR_SET: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/hangar_v1_descriptor.bin"));
}

/// Generated code for `hangar.executor.v1` and the protocol version it implements.
pub mod executor {
    /// Protocol major version of `hangar.executor.v1`; both sides must agree on it.
    pub const PROTOCOL_MAJOR: u32 = 1;
    /// Protocol minor version; a newer minor only adds fields and capabilities. 1 added
    /// `BackendSpec.command` (the entrypoint override).
    pub const PROTOCOL_MINOR: u32 = 1;

    pub mod v1 {
        #![allow(clippy::all, missing_docs)]
        tonic::include_proto!("hangar.executor.v1");

        /// Encoded `FileDescriptorSet` of `hangar.executor.v1` and the files it imports, for an
        /// executor's server reflection.
        pub const FILE_DESCRIPTOR_SET: &[u8] =
            include_bytes!(concat!(env!("OUT_DIR"), "/hangar_executor_v1_descriptor.bin"));
    }
}

/// Version of the Hangar binaries, reported in Hello messages and handshakes.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");

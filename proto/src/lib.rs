//! The `taskrouter.v1` gRPC contract: messages, clients and servers generated from
//! `proto/taskrouter/v1/*.proto`, plus the descriptor set for server reflection.

/// Generated code for package `taskrouter.v1`.
pub mod v1 {
    #![allow(
        missing_docs,
        clippy::large_enum_variant,
        clippy::doc_lazy_continuation
    )]
    tonic::include_proto!("taskrouter.v1");
}

/// Encoded `FileDescriptorSet` of every taskrouter.v1 file, for tonic-reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/taskrouter_v1_descriptor.bin"));

/// Current schema version written into every stored `SessionState`.
pub const SESSION_SCHEMA_VERSION: u32 = 1;

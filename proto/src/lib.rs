//! Wire contract of tidemark.
//!
//! Every tidemark role speaks the types defined here: ingest produces [`v1::Signal`]s, the
//! correlator consumes them. The source of truth is `protos/tidemark/v1/*.proto`; the Rust types
//! are generated at build time by prost, with serde implementations that follow the canonical
//! protobuf JSON mapping (pbjson), so a signal printed as JSON reads the same in every language.
//!
//! Field numbers are never reused: removed fields are listed as `reserved` in the `.proto` file.

/// Version 1 of the tidemark wire contract (`tidemark.v1`).
#[allow(missing_docs, unreachable_pub, clippy::all)]
pub mod v1 {
    include!(concat!(env!("OUT_DIR"), "/tidemark.v1.rs"));
    include!(concat!(env!("OUT_DIR"), "/tidemark.v1.serde.rs"));
}

/// The encoded `FileDescriptorSet` of every `.proto` file here and its imports, for gRPC server
/// reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/tidemark_descriptor.bin"));

mod keys;

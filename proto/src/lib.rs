//! The versioned gRPC API (`oneiro.v1`): messages, client and server stubs.

pub mod v1 {
    tonic::include_proto!("oneiro.v1");

    /// Encoded `FileDescriptorSet` of the API, for gRPC server reflection.
    pub const FILE_DESCRIPTOR_SET: &[u8] =
        include_bytes!(concat!(env!("OUT_DIR"), "/oneiro_descriptor.bin"));
}

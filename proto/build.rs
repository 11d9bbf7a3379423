//! Generates the gRPC code from `oneiro/v1/oneiro.proto` with the pure-Rust `protox`
//! compiler, so building needs no `protoc` on the machine.
use prost::Message;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let proto = "oneiro/v1/oneiro.proto";
    println!("cargo:rerun-if-changed={proto}");
    let fds = protox::compile([proto], ["."])?;
    let out = std::path::PathBuf::from(std::env::var("OUT_DIR")?);
    // Served by the reflection service so that grpcurl and friends need no .proto.
    std::fs::write(out.join("oneiro_descriptor.bin"), fds.encode_to_vec())?;
    tonic_prost_build::configure().compile_fds(fds)?;
    Ok(())
}

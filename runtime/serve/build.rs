//! Generates the gRPC service and messages of the Open Inference Protocol (needs `protoc`,
//! which `scripts/setup-tools.sh` installs; candle-onnx needs it too).

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=proto/inference.proto");
    tonic_prost_build::configure()
        .build_client(false)
        .compile_protos(&["proto/inference.proto"], &["proto"])?;
    Ok(())
}

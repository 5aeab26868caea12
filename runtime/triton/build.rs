//! Compiles the Triton model-configuration subset with prost, and keeps its descriptor set for
//! the text-format reader and writer (prost-reflect).

fn main() -> std::io::Result<()> {
    let out = std::path::PathBuf::from(std::env::var_os("OUT_DIR").expect("cargo sets OUT_DIR"));
    prost_build::Config::new()
        .file_descriptor_set_path(out.join("model_config.bin"))
        .compile_protos(&["proto/model_config.proto"], &["proto"])?;
    println!("cargo:rerun-if-changed=proto/model_config.proto");
    Ok(())
}

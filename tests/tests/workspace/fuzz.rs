//! Fuzz target for the deployment side's reading of an ONNX file: any bytes given as a model
//! (a byte-edited or truncated valid generator, or arbitrary bytes) must be opened by the
//! runtime library (ONNX Runtime's parser, then Gantry's `gantry.*` metadata and signature
//! reading) or refused with an error naming the file, never a panic or a hang; a model that
//! opens must generate an image or say why not.

use gantry_exporter::{OutputFormat, Precision};
use gantry_runtime::Generator;
use gantry_testkit::export_tiny_model_in;

#[test]
fn fuzz_onnx_model_files() {
    let scratch = tempfile::tempdir().unwrap();
    let conditional = export_tiny_model_in(
        scratch.path(),
        Some(3),
        OutputFormat::Float,
        Precision::Fp32,
    );
    let uint8 = export_tiny_model_in(scratch.path(), None, OutputFormat::Uint8, Precision::Fp16);
    let bases = [
        std::fs::read(conditional).unwrap(),
        std::fs::read(uint8).unwrap(),
    ];
    let path = scratch.path().join("fuzzed.onnx");
    let open = |path: &std::path::Path| Generator::builder().model(path).build();
    for base in &bases {
        std::fs::write(&path, base).unwrap();
        assert!(
            open(&path).unwrap().generate(1, 0).is_ok(),
            "the valid bases run"
        );
    }
    gantry_fuzz::target!(|input| {
        let Some((&which, rest)) = input.split_last() else {
            return;
        };
        let base = &bases[which as usize % bases.len()];
        std::fs::write(&path, gantry_fuzz::fuzzed_file(base, rest)).unwrap();
        match open(&path) {
            Ok(generator) => {
                let _ = generator.generate(1, 0);
            }
            Err(e) => assert!(e.to_string().contains("fuzzed.onnx"), "{e}"),
        }
    });
}

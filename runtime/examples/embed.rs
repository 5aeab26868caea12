//! Embedding Gantry's runtime in another program: load a generator once, share it between
//! worker threads, and save what they generate.
//!
//! cargo run -p gantry-runtime --example embed -- generator.onnx out_dir

use std::path::PathBuf;
use std::sync::Arc;

use gantry_runtime::{GenerateRequest, Generator, ProviderChoice};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let model = PathBuf::from(args.next().ok_or("usage: embed MODEL.onnx OUT_DIR")?);
    let out = PathBuf::from(args.next().ok_or("usage: embed MODEL.onnx OUT_DIR")?);
    std::fs::create_dir_all(&out)?;

    let generator = Arc::new(
        Generator::builder()
            .model(&model)
            .providers(ProviderChoice::Auto)
            .build()?,
    );
    println!("{} on {}", model.display(), generator.providers());

    // Four workers, each with its own seed: the generator is Send + Sync.
    let workers: Vec<_> = (0..4u64)
        .map(|worker| {
            let generator = Arc::clone(&generator);
            let out = out.clone();
            std::thread::spawn(move || -> Result<usize, gantry_runtime::RuntimeError> {
                let mut request = GenerateRequest::new(8, 1000 + worker);
                request.truncation = Some(2.0);
                let images = generator.generate_request(&request)?;
                for (i, img) in images.iter().enumerate() {
                    gantry_runtime::output::save_png(
                        img,
                        &out.join(format!("worker{worker}_{i}.png")),
                    )?;
                }
                Ok(images.len())
            })
        })
        .collect();
    let mut total = 0;
    for w in workers {
        total += w.join().expect("worker thread")?;
    }
    println!("wrote {total} images to {}", out.display());
    Ok(())
}

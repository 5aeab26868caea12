//! `runtime serve`: the command line over `gantry-serve`.

use std::net::IpAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, Context};
use clap::Args;
use gantry_serve::{BatchPolicy, BoundServer, Listen, ModelSource, RequestLimits};

/// The flags of `runtime serve`.
#[derive(Args)]
pub struct ServeArgs {
    /// One generator ONNX file to serve.
    #[arg(long, conflicts_with = "model_repository")]
    model: Option<PathBuf>,
    /// The name to serve --model under (default: the file's stem).
    #[arg(long, requires = "model")]
    name: Option<String>,
    /// A Triton model repository (as `exporter --triton-repo` writes): every model in it, with
    /// its config.pbtxt's max_batch_size, dynamic_batching and version_policy.
    #[arg(long)]
    model_repository: Option<PathBuf>,
    /// Address to listen on (default: this machine only).
    #[arg(long, default_value = "127.0.0.1")]
    host: IpAddr,
    /// HTTP/REST port (0: any free port; the bound ports are printed).
    #[arg(long, default_value_t = 8000)]
    http_port: u16,
    /// gRPC port (0: any free port).
    #[arg(long, default_value_t = 8001)]
    grpc_port: u16,
    /// Most images per ONNX Runtime execution for --model (and repository models without a
    /// config.pbtxt); 1 turns dynamic batching off.
    #[arg(long, default_value_t = 64)]
    max_batch_size: usize,
    /// How long the oldest queued request waits for others to join its batch (--model).
    #[arg(long, default_value_t = 2000)]
    max_queue_delay_us: u64,
    /// Request pieces a model's queue holds; beyond it requests get 503 / UNAVAILABLE at once.
    #[arg(long, default_value_t = gantry_serve::DEFAULT_MAX_QUEUE_SIZE)]
    max_queue_size: usize,
    /// Longest a request may take, queue and execution, in milliseconds.
    #[arg(long, default_value_t = 60_000)]
    request_timeout_ms: u64,
    /// Largest request body (HTTP) or message (gRPC), in MiB.
    #[arg(long, default_value_t = 64)]
    max_body_mb: usize,
    /// Most images one PNG `generate` request may ask for.
    #[arg(long, default_value_t = 256)]
    max_png_images: usize,
    /// After Ctrl-C or SIGTERM, keep serving this long while readiness answers not-ready (HTTP
    /// 503 `{"ready": false}`, gRPC `ready: false`), so load balancers stop sending requests
    /// before the ports close; then requests in flight finish.
    #[arg(long, default_value_t = 0)]
    drain_delay_ms: u64,
}

/// Loads the models, binds the ports, prints them, and serves until Ctrl-C or SIGTERM.
pub fn run(
    args: ServeArgs,
    load: impl Fn(&std::path::Path) -> Result<gantry_runtime::Generator, gantry_runtime::RuntimeError>,
) -> anyhow::Result<()> {
    if args.max_batch_size == 0 {
        bail!("--max-batch-size must be at least 1");
    }
    if args.max_queue_size == 0 {
        bail!("--max-queue-size must be at least 1");
    }
    if args.request_timeout_ms == 0 {
        bail!("--request-timeout-ms must be at least 1");
    }
    let mut policy = BatchPolicy::dynamic(
        args.max_batch_size,
        Duration::from_micros(args.max_queue_delay_us),
    );
    policy.max_queue_size = args.max_queue_size;
    let sources = match (&args.model, &args.model_repository) {
        (Some(model), None) => vec![ModelSource::file(model, args.name.as_deref(), policy)?],
        (None, Some(repo)) => gantry_serve::scan_repository(repo, policy)?,
        _ => bail!("give --model FILE or --model-repository DIR"),
    };
    let models = gantry_serve::load_models(&sources, load)?;
    for m in models.iter() {
        let p = m.policy();
        let batching = if p.dynamic {
            format!(
                "dynamic batching up to {} images, queue delay {} us",
                p.max_batch_size,
                p.max_queue_delay.as_micros()
            )
        } else if p.max_batch_size > 0 {
            format!("batches of up to {} images, no merging", p.max_batch_size)
        } else {
            "no batching".to_string()
        };
        eprintln!(
            "model {} version {}: {} on {} ({batching})",
            m.name(),
            m.version(),
            m.generator().info().path.display(),
            m.generator().providers().active.ort_name(),
        );
    }
    let mut limits = RequestLimits::default();
    limits.request_timeout = Duration::from_millis(args.request_timeout_ms);
    limits.max_body_bytes = args.max_body_mb.saturating_mul(1 << 20);
    limits.max_png_images = args.max_png_images;
    let mut listen = Listen::default();
    listen.host = args.host;
    listen.http_port = args.http_port;
    listen.grpc_port = args.grpc_port;
    let drain_delay = Duration::from_millis(args.drain_delay_ms);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    runtime.block_on(async move {
        let server = BoundServer::bind(models, &listen, limits)
            .await?
            .drain_delay(drain_delay);
        let (http, grpc) = (server.http_addr()?, server.grpc_addr()?);
        println!("HTTP: http://{http}");
        println!("gRPC: {grpc}");
        println!("page: http://{http}/   metrics: http://{http}/metrics");
        use std::io::Write as _;
        std::io::stdout().flush()?;
        server.run(gantry_serve::shutdown_signal()).await?;
        eprintln!("stopped: requests in flight were answered");
        anyhow::Ok(())
    })
}

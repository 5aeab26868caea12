//! `runtime serve` against real clients: the `tritonclient` package and KServe's SDK over HTTP and
//! gRPC, schemathesis from the OpenAPI document, headless Chromium on the web page, raw HTTP for
//! the queue bound and a graceful shutdown. The images are checked against the gantry-runtime
//! library's for the same latents.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use gantry_exporter::{OutputFormat, TritonOptions};
use gantry_runtime::{Generator, LatentStream};
use gantry_testkit::{export_tiny, onnx_python};
use ndarray::{Array1, Array2};

/// A `runtime serve` process on free ports; killed when dropped.
struct Server {
    child: Child,
    http: String,
    grpc: String,
    stderr: Arc<Mutex<String>>,
}

impl Server {
    fn start(args: &[&str]) -> Server {
        let mut child = Command::new(env!("CARGO_BIN_EXE_runtime"))
            .arg("serve")
            .args(["--http-port", "0", "--grpc-port", "0"])
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("runtime serve starts");
        let stderr = Arc::new(Mutex::new(String::new()));
        let mut pipe = child.stderr.take().unwrap();
        let sink = stderr.clone();
        std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            while let Ok(n) = pipe.read(&mut buf) {
                if n == 0 {
                    break;
                }
                sink.lock()
                    .unwrap()
                    .push_str(&String::from_utf8_lossy(&buf[..n]));
            }
        });
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        let (mut http, mut grpc) = (None, None);
        while http.is_none() || grpc.is_none() {
            match lines.next() {
                Some(Ok(line)) => {
                    if let Some(a) = line.strip_prefix("HTTP: http://") {
                        http = Some(a.to_string());
                    } else if let Some(a) = line.strip_prefix("gRPC: ") {
                        grpc = Some(a.to_string());
                    }
                }
                _ => {
                    std::thread::sleep(Duration::from_millis(200));
                    panic!("runtime serve did not start:\n{}", stderr.lock().unwrap());
                }
            }
        }
        std::thread::spawn(move || for _ in lines {});
        Server {
            child,
            http: http.unwrap(),
            grpc: grpc.unwrap(),
            stderr,
        }
    }

    /// Sends SIGTERM and waits (at most 20 s) for the process to end.
    fn terminate(&mut self) -> ExitStatus {
        let pid = self.child.id().to_string();
        assert!(Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .unwrap()
            .success());
        self.wait_for_exit("SIGTERM")
    }

    /// Waits (at most 20 s) for the process to end after `what`.
    fn wait_for_exit(&mut self, what: &str) -> ExitStatus {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "the server did not stop after {what}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn stderr(&self) -> String {
        self.stderr.lock().unwrap().clone()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A GET over a fresh connection: (status, body).
fn http_get(addr: &str, path: &str) -> (u16, Vec<u8>) {
    let (status, _, body) = http_request(addr, "GET", path, b"");
    (status, body)
}

/// A request over a fresh connection: (status, header block, body).
fn http_request(addr: &str, method: &str, path: &str, body: &[u8]) -> (u16, String, Vec<u8>) {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
        body.len()
    )
    .unwrap();
    s.write_all(body).unwrap();
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).unwrap();
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("a header");
    let head = String::from_utf8_lossy(&raw[..split]).to_string();
    let status = head.split_whitespace().nth(1).unwrap().parse().unwrap();
    let mut body = raw[split + 4..].to_vec();
    if head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        body = dechunk(&body);
    }
    (status, head, body)
}

fn dechunk(mut b: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    loop {
        let end = b.windows(2).position(|w| w == b"\r\n").unwrap();
        let size =
            usize::from_str_radix(std::str::from_utf8(&b[..end]).unwrap().trim(), 16).unwrap();
        if size == 0 {
            return out;
        }
        out.extend_from_slice(&b[end + 2..end + 2 + size]);
        b = &b[end + 4 + size..];
    }
}

/// A Triton repository of three tiny generators: `digits` (FP32, versions 1 and 2 both served),
/// `bytes` (UINT8 NHWC) and `classes` (conditional, 10 classes); max batch 8 each.
fn repository(dir: &Path) -> PathBuf {
    let repo = dir.join("repo");
    for (seed, name, classes, output) in [
        (1, "digits", None, OutputFormat::Float),
        (2, "bytes", None, OutputFormat::Uint8),
        (3, "classes", Some(10), OutputFormat::Float),
    ] {
        let triton = TritonOptions {
            repo: repo.clone(),
            name: name.into(),
            max_batch_size: 8,
        };
        export_tiny(dir, name, classes, output, seed, None, Some(triton));
    }
    let digits = repo.join("digits");
    std::fs::create_dir_all(digits.join("2")).unwrap();
    std::fs::copy(digits.join("1/model.onnx"), digits.join("2/model.onnx")).unwrap();
    let mut config = std::fs::read_to_string(digits.join("config.pbtxt")).unwrap();
    config.push_str("version_policy: { all { } }\n");
    std::fs::write(digits.join("config.pbtxt"), config).unwrap();
    repo
}

fn library(path: &Path) -> Generator {
    Generator::builder().model(path).build().unwrap()
}

/// Writes `values` as raw little-endian bytes.
fn write_f32(path: &Path, values: impl IntoIterator<Item = f32>) {
    let bytes: Vec<u8> = values.into_iter().flat_map(f32::to_le_bytes).collect();
    std::fs::write(path, bytes).unwrap();
}

fn write_i64(path: &Path, values: &Array1<i64>) {
    let bytes: Vec<u8> = values.iter().flat_map(|v| v.to_le_bytes()).collect();
    std::fs::write(path, bytes).unwrap();
}

/// The library's output for `z` (and labels): raw FP32 NCHW or UINT8 NHWC, written to `path`;
/// returns the output's shape.
fn expected(
    g: &Generator,
    z: &Array2<f32>,
    labels: Option<&Array1<i64>>,
    path: &Path,
) -> Vec<usize> {
    if g.info().signature.layout == gantry_runtime::OutputLayout::Uint8Nhwc {
        let b = g.generate_from_latents(z, labels).unwrap();
        let shape = vec![b.count(), b.height(), b.width(), b.channels()];
        std::fs::write(path, b.pixels()).unwrap();
        shape
    } else {
        let out = g.raw_output(z, labels).unwrap();
        write_f32(path, out.iter().copied());
        out.shape().to_vec()
    }
}

fn json_list<T: std::fmt::Display>(v: &[T]) -> String {
    format!(
        "[{}]",
        v.iter()
            .map(|x| format!("{x}"))
            .collect::<Vec<_>>()
            .join(", ")
    )
}

fn run_python(script: &str, args: &[&str]) -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/serve")
        .join(script);
    let out = Command::new(onnx_python())
        .arg(path)
        .args(args)
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success() && text.contains("ALL OK"),
        "{script} failed:\n{text}"
    );
    text
}

#[test]
fn tritonclient_and_a_browser_get_the_library_s_images() {
    let dir = tempfile::tempdir().unwrap();
    let repo = repository(dir.path());
    let server = Server::start(&[
        "--model-repository",
        repo.to_str().unwrap(),
        "--max-body-mb",
        "2",
    ]);
    let work = dir.path();
    let mut models = Vec::new();
    for (name, seed) in [("digits", 11u64), ("bytes", 12), ("classes", 13)] {
        let g = library(&repo.join(name).join("1/model.onnx"));
        let sig = &g.info().signature;
        let n = 5;
        let z = LatentStream::new(seed, g.latent_dim(), None).next_batch(n);
        let labels = sig
            .label_input
            .as_ref()
            .map(|_| Array1::from_iter((0..n as i64).map(|i| (i * 3) % 10)));
        write_f32(&work.join(format!("{name}_z.bin")), z.iter().copied());
        if let Some(l) = &labels {
            write_i64(&work.join(format!("{name}_labels.bin")), l);
        }
        let shape = expected(
            &g,
            &z,
            labels.as_ref(),
            &work.join(format!("{name}_out.bin")),
        );
        let (datatype, dtype) = match sig.layout {
            gantry_runtime::OutputLayout::Uint8Nhwc => ("UINT8", "uint8"),
            _ => ("FP32", "float32"),
        };
        let versions = if name == "digits" {
            "[\"1\", \"2\"]"
        } else {
            "[\"1\"]"
        };
        models.push(format!(
            r#""{name}": {{"latent_input": "{}", "label_input": {}, "output": "{}", "latents": "{name}_z.bin",
                "latents_shape": [{n}, {}], "labels": {}, "expected": "{name}_out.bin", "expected_shape": {},
                "image_shape": {}, "datatype": "{datatype}", "dtype": "{dtype}", "versions": {versions},
                "tolerance": 0}}"#,
            sig.latent_input,
            sig.label_input.as_ref().map_or("null".into(), |l| format!("\"{l}\"")),
            sig.output,
            g.latent_dim(),
            labels.as_ref().map_or("null".into(), |_| format!("\"{name}_labels.bin\"")),
            json_list(&shape),
            json_list(&shape[1..]),
        ));
    }
    // Concurrency: 24 clients x 3 images of the conditional model, each its own latents and labels.
    let (clients, per) = (24, 3);
    let g = library(&repo.join("classes/1/model.onnx"));
    let z = LatentStream::new(99, g.latent_dim(), None).next_batch(clients * per);
    let labels = Array1::from_iter((0..(clients * per) as i64).map(|i| (i * 7) % 10));
    write_f32(&work.join("conc_z.bin"), z.iter().copied());
    write_i64(&work.join("conc_labels.bin"), &labels);
    let shape = expected(&g, &z, Some(&labels), &work.join("conc_out.bin"));
    let manifest = format!(
        r#"{{"http": "{}", "grpc": "{}", "models": {{{}}},
            "concurrency": {{"model": "classes", "clients": {clients}, "per_client": {per}, "repeats": 2,
                "latents": "conc_z.bin", "latents_shape": [{}, {}], "labels": "conc_labels.bin",
                "expected": "conc_out.bin", "expected_shape": {}}},
            "pngs": [["/v2/models/digits/generate?n=6&seed=7", "grid6.png"],
                     ["/v2/models/classes/generate?n=1&seed=3&class=4", "one.png"],
                     ["/v2/models/digits/walk?from=1&to=2&t=0", "walk0.png"]]}}"#,
        server.http,
        server.grpc,
        models.join(",\n"),
        clients * per,
        g.latent_dim(),
        json_list(&shape),
    );
    std::fs::write(work.join("manifest.json"), manifest).unwrap();
    let report = run_python(
        "client_check.py",
        &[work.join("manifest.json").to_str().unwrap()],
    );
    assert!(report.contains("requests were merged"), "{report}");
    // KServe's own SDK clients (REST JSON and binary, gRPC) and its data models of the protocol.
    let report = run_python(
        "kserve_check.py",
        &[work.join("manifest.json").to_str().unwrap()],
    );
    assert!(report.contains("rest: server live"), "{report}");

    // The PNG endpoints give what `runtime generate` writes for the same seed.
    let cli = |args: &[&str], out: &str| {
        let o = gantry_testkit::run(
            env!("CARGO_BIN_EXE_runtime"),
            &[args, &["--out", work.join(out).to_str().unwrap()]].concat(),
        );
        assert!(o.status.success(), "{}", gantry_testkit::stderr(&o));
    };
    let digits = repo.join("digits/2/model.onnx");
    let classes = repo.join("classes/1/model.onnx");
    cli(
        &[
            "generate",
            "-n",
            "6",
            "--seed",
            "7",
            "--model",
            digits.to_str().unwrap(),
        ],
        "cli6",
    );
    cli(
        &[
            "generate",
            "-n",
            "1",
            "--seed",
            "3",
            "--class",
            "4",
            "--model",
            classes.to_str().unwrap(),
        ],
        "cli1",
    );
    cli(
        &[
            "generate",
            "-n",
            "1",
            "--seed",
            "1",
            "--model",
            digits.to_str().unwrap(),
        ],
        "cliw",
    );
    for (served, written) in [
        ("grid6.png", "cli6/grid.png"),
        ("one.png", "cli1/000000.png"),
        ("walk0.png", "cliw/000000.png"),
    ] {
        let a = image::open(work.join(served)).unwrap().to_luma8();
        let b = image::open(work.join(written)).unwrap().to_luma8();
        assert_eq!(a.dimensions(), b.dimensions(), "{served} vs {written}");
        let worst = a
            .pixels()
            .zip(b.pixels())
            .map(|(x, y)| x[0].abs_diff(y[0]))
            .max()
            .unwrap();
        assert!(
            worst <= 1,
            "{served} differs from `runtime generate`'s {written} by {worst} levels"
        );
    }

    // The web page in a real browser; the screenshot is kept.
    let shot = Path::new(env!("CARGO_TARGET_TMPDIR")).join("serve-page.png");
    let url = format!("http://{}/", server.http);
    run_python("page_check.py", &[&url, shot.to_str().unwrap(), "32"]);
    assert!(image::open(&shot).unwrap().width() > 500);
    let stderr = server.stderr();
    assert!(stderr.contains("model digits version 2"), "{stderr}");
}

#[test]
fn a_full_queue_is_refused_and_shutdown_drains_requests_in_flight() {
    let dir = tempfile::tempdir().unwrap();
    let model = gantry_testkit::export_tiny_model(dir.path(), None, OutputFormat::Float);
    // Requests wait up to 1.5 s for company; the queue holds two.
    let mut server = Server::start(&[
        "--model",
        model.to_str().unwrap(),
        "--name",
        "g",
        "--max-queue-delay-us",
        "1500000",
        "--max-queue-size",
        "2",
    ]);
    let addr = server.http.clone();
    let in_flight: Vec<_> = (0..2)
        .map(|seed| {
            let addr = addr.clone();
            std::thread::spawn(move || {
                http_get(&addr, &format!("/v2/models/g/generate?n=1&seed={seed}"))
            })
        })
        .collect();
    std::thread::sleep(Duration::from_millis(400));
    let (status, body) = http_get(&addr, "/v2/models/g/generate?n=1&seed=9");
    let text = String::from_utf8_lossy(&body);
    assert_eq!(status, 503, "a third request finds the queue full: {text}");
    assert!(
        text.contains("\"error\"") && text.contains("queue is full"),
        "{text}"
    );
    let exit = server.terminate();
    for t in in_flight {
        let (status, body) = t.join().unwrap();
        assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
        assert_eq!(
            image::load_from_memory(&body).unwrap().width(),
            32,
            "a whole PNG came back"
        );
    }
    assert!(exit.success(), "exit {exit:?}: {}", server.stderr());
    assert!(server.stderr().contains("stopped"), "{}", server.stderr());
    assert!(TcpStream::connect(&addr).is_err(), "no longer listening");
}

#[test]
fn serve_refuses_bad_setups_with_a_named_error() {
    let dir = tempfile::tempdir().unwrap();
    let empty = dir.path().join("empty");
    std::fs::create_dir_all(&empty).unwrap();
    let bad_config = dir.path().join("bad");
    std::fs::create_dir_all(bad_config.join("m/1")).unwrap();
    std::fs::write(bad_config.join("m/1/model.onnx"), b"not onnx").unwrap();
    std::fs::write(
        bad_config.join("m/config.pbtxt"),
        "max_batch_size: 0\ndynamic_batching { }\n",
    )
    .unwrap();
    let not_onnx = bad_config.join("m/1/model.onnx");
    let busy = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let busy_port = busy.local_addr().unwrap().port().to_string();
    let model = gantry_testkit::export_tiny_model(dir.path(), None, OutputFormat::Float);
    for (args, want) in [
        (
            vec!["--model-repository", empty.to_str().unwrap()],
            "no models",
        ),
        (
            vec!["--model-repository", bad_config.to_str().unwrap()],
            "needs max_batch_size > 0",
        ),
        (vec!["--model", not_onnx.to_str().unwrap()], "model.onnx"),
        (
            vec![
                "--model",
                model.to_str().unwrap(),
                "--http-port",
                &busy_port,
            ],
            "HTTP port",
        ),
        (
            vec!["--model", model.to_str().unwrap(), "--max-batch-size", "0"],
            "--max-batch-size",
        ),
        (vec![], "--model"),
    ] {
        let mut all = vec!["serve", "--grpc-port", "0"];
        if !args.contains(&"--http-port") {
            all.extend(["--http-port", "0"]);
        }
        all.extend(&args);
        let o = gantry_testkit::run(env!("CARGO_BIN_EXE_runtime"), &all);
        let err = gantry_testkit::stderr(&o);
        assert!(!o.status.success() && err.contains(want), "{args:?}: {err}");
        assert!(!err.contains("panicked"), "{err}");
    }
}

/// A model whose output is NaN (broken weights): every request gets 500 with the reason over
/// HTTP (JSON and the images endpoint) and INTERNAL over gRPC, is counted as a failure, and the
/// server keeps serving.
#[test]
fn a_nan_output_is_a_500_and_the_server_keeps_serving() {
    let dir = tempfile::tempdir().unwrap();
    let model = dir.path().join("nan.onnx");
    gantry_testkit::nan_model(&model);
    let server = Server::start(&["--model", model.to_str().unwrap(), "--name", "bad"]);
    let z = json_list(&[0.5f32; 8]);
    let body = format!(
        r#"{{"inputs":[{{"name":"input","shape":[1,8,1,1],"datatype":"FP32","data":{z}}}]}}"#
    );
    for _ in 0..2 {
        let (status, _, reply) = http_request(
            &server.http,
            "POST",
            "/v2/models/bad/infer",
            body.as_bytes(),
        );
        let text = String::from_utf8_lossy(&reply);
        assert_eq!(status, 500, "{text}");
        assert!(
            text.contains("\"error\"") && text.contains("finite"),
            "{text}"
        );
    }
    let (status, reply) = http_get(&server.http, "/v2/models/bad/generate?n=2");
    assert_eq!(status, 500, "{}", String::from_utf8_lossy(&reply));
    let report = run_python("grpc_status_check.py", &[&server.grpc, "bad", "INTERNAL"]);
    assert!(report.contains("finite"), "{report}");
    let (_, metrics) = http_get(&server.http, "/metrics");
    let metrics = String::from_utf8_lossy(&metrics);
    assert!(
        metrics.contains("gantry_inference_request_failure{model=\"bad\",version=\"1\"} 4"),
        "{metrics}"
    );
    let (status, _) = http_get(&server.http, "/v2/health/ready");
    assert_eq!(status, 200, "still serving");
    let (status, _) = http_get(&server.http, "/v2/models/bad/ready");
    assert_eq!(status, 200, "the model is still loaded");
}

#[test]
fn a_request_past_its_timeout_gets_504_and_is_counted_as_a_failure() {
    let dir = tempfile::tempdir().unwrap();
    let model = gantry_testkit::export_tiny_model(dir.path(), None, OutputFormat::Float);
    // The batch would wait 5 s for company; the request gives up after 300 ms.
    let server = Server::start(&[
        "--model",
        model.to_str().unwrap(),
        "--name",
        "g",
        "--max-queue-delay-us",
        "5000000",
        "--request-timeout-ms",
        "300",
    ]);
    let started = Instant::now();
    let (status, body) = http_get(&server.http, "/v2/models/g/generate?n=1");
    let waited = started.elapsed();
    let text = String::from_utf8_lossy(&body);
    assert_eq!(status, 504, "{text}");
    assert!(text.contains("did not answer within 300 ms"), "{text}");
    assert!(waited < Duration::from_secs(3), "answered after {waited:?}");
    let (_, metrics) = http_get(&server.http, "/metrics");
    let metrics = String::from_utf8_lossy(&metrics);
    assert!(
        metrics.contains("gantry_inference_request_failure{model=\"g\",version=\"1\"} 1"),
        "{metrics}"
    );
    // The same over gRPC: DEADLINE_EXCEEDED, as docs/serving.md says.
    let report = run_python(
        "grpc_status_check.py",
        &[&server.grpc, "g", "DEADLINE_EXCEEDED"],
    );
    assert!(report.contains("did not answer within 300 ms"), "{report}");
    let (status, _) = http_get(&server.http, "/v2/health/ready");
    assert_eq!(status, 200, "still serving");
}

#[test]
fn draining_answers_not_ready_to_every_client_then_stops() {
    let dir = tempfile::tempdir().unwrap();
    let model = gantry_testkit::export_tiny_model(dir.path(), None, OutputFormat::Float);
    let mut server = Server::start(&[
        "--model",
        model.to_str().unwrap(),
        "--name",
        "g",
        "--drain-delay-ms",
        "4000",
    ]);
    let pid = server.child.id().to_string();
    // The script sends SIGTERM itself, then asks KServe's REST and gRPC clients for readiness.
    let report = run_python(
        "kserve_check.py",
        &["--drain", &server.http, &server.grpc, &pid],
    );
    assert!(report.contains("rest: draining -> 503"), "{report}");
    let status = server.wait_for_exit("SIGTERM and its drain delay");
    assert!(status.success(), "exit {status:?}: {}", server.stderr());
    assert!(
        TcpStream::connect(&server.http).is_err(),
        "no longer listening"
    );
}

/// The OpenAPI document against the running server: schemathesis generates valid and invalid
/// requests for every operation (a bounded number each, fixed seed) and checks that none gets
/// a 5xx, every response conforms to the document (bodies, status codes, content types,
/// headers), invalid requests are refused with 4xx and the protocol's error body, and
/// undocumented methods get 405. `positive_data_acceptance` is left out: a schema-valid
/// inference request still has random tensor shapes, which the model rightly refuses (400).
#[test]
fn schemathesis_finds_every_response_as_the_openapi_document_says() {
    let dir = tempfile::tempdir().unwrap();
    let repo = repository(dir.path());
    let server = Server::start(&[
        "--model-repository",
        repo.to_str().unwrap(),
        "--max-png-images",
        "16",
    ]);
    let examples = std::env::var("GANTRY_SCHEMATHESIS_EXAMPLES").unwrap_or_else(|_| "12".into());
    let out = schemathesis(&server.http, &examples, dir.path());
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "schemathesis failed:\n{text}");
    let (status, _) = http_get(&server.http, "/v2/health/ready");
    assert_eq!(status, 200, "still serving after schemathesis");
}

/// Runs the tools virtualenv's schemathesis against the server's own `/openapi.json`.
fn schemathesis(http: &str, examples: &str, dir: &Path) -> std::process::Output {
    let bin = gantry_testkit::onnx_python().with_file_name("schemathesis");
    Command::new(bin)
        .args([
            "run",
            &format!("http://{http}/openapi.json"),
            "--checks",
            "all",
            "--exclude-checks",
            "positive_data_acceptance",
            "--max-examples",
            examples,
            "--seed",
            "20261206",
            "--workers",
            "2",
            "--request-timeout",
            "30",
            "--report",
            "junit",
            "--report-dir",
        ])
        .arg(dir.join("schemathesis-report"))
        .env("SCHEMATHESIS_HOOKS", "")
        .current_dir(dir)
        .output()
        .expect("schemathesis runs (scripts/setup-tools.sh installs it)")
}

/// What schemathesis found, kept: each request violates the OpenAPI document and was once
/// answered 200 (a struct read from a JSON array or from `null`, a tiny negative `t` rounded
/// to -0.0 in f32, a truncation below the minimum rounded up to it); and the protocol's bodies
/// that KServe's client needs (health) or any client reads (405, an undecodable path).
#[test]
fn requests_outside_the_openapi_document_get_the_protocol_s_error_body() {
    let dir = tempfile::tempdir().unwrap();
    let model = gantry_testkit::export_tiny_model(dir.path(), None, OutputFormat::Float);
    let server = Server::start(&["--model", model.to_str().unwrap(), "--name", "g"]);
    let addr = &server.http;
    let z: Vec<String> = (0..library(&model).latent_dim())
        .map(|_| "0.5".into())
        .collect();
    let input = format!(
        r#"{{"name": "z", "shape": [1, {}], "datatype": "FP32", "data": [{}]}}"#,
        z.len(),
        z.join(",")
    );
    let good = format!(r#"{{"inputs": [{input}]}}"#);
    let (status, _, body) = http_request(addr, "POST", "/v2/models/g/infer", good.as_bytes());
    assert_eq!(
        status,
        200,
        "the control request: {}",
        String::from_utf8_lossy(&body)
    );
    for (method, path, body, want) in [
        (
            "POST",
            "/v2/repository/index",
            "[null, null]".to_string(),
            400,
        ),
        ("POST", "/v2/repository/index", "[]".to_string(), 400),
        (
            "POST",
            "/v2/repository/index",
            r#"{"ready": null}"#.to_string(),
            400,
        ),
        (
            "GET",
            "/v2/models/g/walk?t=-1.468282969170787e-178",
            String::new(),
            400,
        ),
        (
            "GET",
            "/v2/models/g/generate?n=1&truncation=0.00999999999",
            String::new(),
            400,
        ),
        (
            "POST",
            "/v2/models/g/infer",
            format!(r#"{{"id": null, "inputs": [{input}]}}"#),
            400,
        ),
        (
            "POST",
            "/v2/models/g/infer",
            format!(r#"{{"outputs": null, "inputs": [{input}]}}"#),
            400,
        ),
        (
            "POST",
            "/v2/models/g/infer",
            format!("[null, null, [{input}]]"),
            400,
        ),
        (
            "POST",
            "/v2/models/g/infer",
            r#"{"inputs": [["z", [1, 2], "FP32", {}, [0, 0]]]}"#.to_string(),
            400,
        ),
        ("PUT", "/v2/health/live", String::new(), 405),
        ("GET", "/v2/models/%FF%FE", String::new(), 400),
        ("GET", "/v2/no/such/endpoint", String::new(), 404),
    ] {
        let (status, head, answer) = http_request(addr, method, path, body.as_bytes());
        let text = String::from_utf8_lossy(&answer);
        assert_eq!(status, want, "{method} {path} {body}: {text}");
        let json: serde_json::Value = serde_json::from_slice(&answer)
            .unwrap_or_else(|e| panic!("{method} {path}: not JSON ({e}): {text}"));
        assert!(json["error"].is_string(), "{method} {path}: {text}");
        assert!(
            head.to_ascii_lowercase()
                .contains("content-type: application/json"),
            "{head}"
        );
        if want == 405 {
            assert!(head.to_ascii_lowercase().contains("allow: get"), "{head}");
        }
    }
    for (path, body) in [
        ("/v2/health/live", serde_json::json!({"live": true})),
        ("/v2/health/ready", serde_json::json!({"ready": true})),
        (
            "/v2/models/g/ready",
            serde_json::json!({"name": "g", "ready": true}),
        ),
    ] {
        let (status, answer) = http_get(addr, path);
        assert_eq!(status, 200, "{path}");
        assert_eq!(
            serde_json::from_slice::<serde_json::Value>(&answer).unwrap(),
            body,
            "{path}"
        );
    }
    let (status, answer) = http_get(addr, "/openapi.json");
    let doc: serde_json::Value = serde_json::from_slice(&answer).unwrap();
    assert_eq!(status, 200);
    assert_eq!(
        doc["components"]["parameters"]["ModelName"]["schema"]["enum"],
        serde_json::json!(["g"])
    );
}

/// A full queue over gRPC is UNAVAILABLE (as docs/serving.md says): one request waits (10 s for
/// company) in a queue of one, so the next is refused at once.
#[test]
fn a_full_queue_is_unavailable_over_grpc() {
    let dir = tempfile::tempdir().unwrap();
    let model = gantry_testkit::export_tiny_model(dir.path(), None, OutputFormat::Float);
    let server = Server::start(&[
        "--model",
        model.to_str().unwrap(),
        "--name",
        "g",
        "--max-queue-delay-us",
        "10000000",
        "--max-queue-size",
        "1",
    ]);
    let addr = server.http.clone();
    // Left waiting: the server is killed when the test ends.
    std::thread::spawn(move || http_get(&addr, "/v2/models/g/generate?n=1&seed=1"));
    std::thread::sleep(Duration::from_millis(300));
    let report = run_python("grpc_status_check.py", &[&server.grpc, "g", "UNAVAILABLE"]);
    assert!(report.contains("queue is full"), "{report}");
}

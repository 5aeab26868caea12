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

    /// Exports the tiny float model into `dir` and serves it as `g`, with `extra` flags; returns
    /// the server and the model's path.
    fn tiny(dir: &Path, extra: &[&str]) -> (Server, PathBuf) {
        let model = gantry_testkit::export_tiny_model(dir, None, OutputFormat::Float);
        let mut args = vec!["--model", model.to_str().unwrap(), "--name", "g"];
        args.extend_from_slice(extra);
        (Server::start(&args), model)
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

mod clients;
mod failures;

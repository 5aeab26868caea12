//! The real clients on a running server: tritonclient (HTTP and gRPC), KServe's SDK and a
//! browser get the library's images; schemathesis checks every response against the OpenAPI
//! document; requests outside it get the protocol's error body.

use super::*;

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
    let (server, model) = Server::tiny(dir.path(), &[]);
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

//! The server's failure paths: a full queue (HTTP and gRPC), bad setups, a NaN output, a
//! request past its timeout, draining; each answered with its status and the server serving on.

use super::*;

#[test]
fn a_full_queue_is_refused_and_shutdown_drains_requests_in_flight() {
    let dir = tempfile::tempdir().unwrap();
    // Requests wait up to 1.5 s for company; the queue holds two.
    let (mut server, _) = Server::tiny(
        dir.path(),
        &["--max-queue-delay-us", "1500000", "--max-queue-size", "2"],
    );
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
    // The batch would wait 5 s for company; the request gives up after 300 ms.
    let (server, _) = Server::tiny(
        dir.path(),
        &[
            "--max-queue-delay-us",
            "5000000",
            "--request-timeout-ms",
            "300",
        ],
    );
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
    let (mut server, _) = Server::tiny(dir.path(), &["--drain-delay-ms", "4000"]);
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

/// A full queue over gRPC is UNAVAILABLE (as docs/serving.md says): one request waits (10 s for
/// company) in a queue of one, so the next is refused at once.
#[test]
fn a_full_queue_is_unavailable_over_grpc() {
    let dir = tempfile::tempdir().unwrap();
    let (server, _) = Server::tiny(
        dir.path(),
        &["--max-queue-delay-us", "10000000", "--max-queue-size", "1"],
    );
    let addr = server.http.clone();
    // Left waiting: the server is killed when the test ends.
    std::thread::spawn(move || http_get(&addr, "/v2/models/g/generate?n=1&seed=1"));
    std::thread::sleep(Duration::from_millis(300));
    let report = run_python("grpc_status_check.py", &[&server.grpc, "g", "UNAVAILABLE"]);
    assert!(report.contains("queue is full"), "{report}");
}

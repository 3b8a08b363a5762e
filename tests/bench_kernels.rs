//! `dcl bench kernels --device cpu` at a tiny size: the table lists every op with finite,
//! positive numbers, and `--json` writes the same rows. Also: asking for CUDA where there is
//! none is one line on stderr and exit status 1, never a panic.
use std::process::Command;

fn dcl(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_dcl"))
        .args(args)
        .output()
        .expect("runs the dcl binary")
}

#[test]
fn bench_kernels_cpu_tiny_lists_every_op() {
    let dir = tempfile::tempdir().unwrap();
    let json = dir.path().join("bench.json");
    let out = dcl(&[
        "bench",
        "kernels",
        "--device",
        "cpu",
        "--size",
        "32",
        "--batch",
        "2",
        "--width-mult",
        "0.125",
        "--reps",
        "1",
        "--warmup",
        "0",
        "--json",
        json.to_str().unwrap(),
    ]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let ops = [
        "conv3x3 3->8",
        "max_pool2d",
        "batch_norm2d (train)",
        "relu",
        "upsample_bilinear align_corners=false",
        "upsample_bilinear align_corners=true",
        "gmp_sample cpu",
        "gmp cpu",
        "concat_channels",
        "count_l1_loss",
        "mse_loss",
        "adam (all counter params)",
        "counter training step",
        "localizer training step",
    ];
    for op in ops {
        assert!(
            stdout.lines().any(|l| l.starts_with(op)),
            "{op} missing from\n{stdout}"
        );
    }
    for pass in ["fwd GEMM", "dW GEMM", "dX GEMM", "im2col", "col2im"] {
        assert!(stdout.contains(pass), "conv {pass} missing");
    }
    assert!(stdout.contains("ceilings: copy"), "{stdout}");
    // every data row: the median and min columns parse as finite positive numbers
    let header = stdout
        .lines()
        .position(|l| l.starts_with("op "))
        .expect("a header line");
    let rows: Vec<&str> = stdout.lines().skip(header + 1).collect();
    assert!(rows.len() > 40, "{} rows", rows.len());
    let rep: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).expect("valid JSON");
    let jrows = rep["rows"].as_array().unwrap();
    assert_eq!(jrows.len(), rows.len(), "table and JSON hold the same rows");
    for (line, r) in rows.iter().zip(jrows) {
        let op = r["op"].as_str().unwrap();
        assert!(line.starts_with(op), "{line} vs {op}");
        for key in ["median_ms", "min_ms"] {
            let v = r[key].as_f64().unwrap();
            assert!(v.is_finite() && v > 0.0, "{op} {key} = {v}");
        }
        for key in ["gb_per_s", "tflop_per_s", "pct_of_ceiling"] {
            if let Some(v) = r[key].as_f64() {
                assert!(v.is_finite() && v > 0.0, "{op} {key} = {v}");
            }
        }
        assert!(
            r["gb_per_s"].is_f64() || r["tflop_per_s"].is_f64() || op.contains("step"),
            "{op}: neither GB/s nor TFLOP/s"
        );
        // the median printed in the table is the JSON's
        let printed: f64 = line
            .split_whitespace()
            .find_map(|w| w.parse::<f64>().ok().filter(|_| w.contains('.')))
            .expect("a number on the row");
        assert!(printed > 0.0, "{line}");
    }
    for key in ["copy_gb_per_s", "gemm_tflop_per_s"] {
        let v = rep["ceilings"][key].as_f64().unwrap();
        assert!(v.is_finite() && v > 0.0, "{key} = {v}");
    }
}

#[test]
fn cuda_without_a_gpu_is_one_line_and_exit_1() {
    if dcl::device::cuda::CudaLibraries::probe().driver {
        eprintln!("skipped: this machine has a CUDA driver");
        return;
    }
    for args in [
        &["train", "--device", "cuda", "--epochs", "1"][..],
        &["bench", "kernels", "--device", "cuda:0"],
        &[
            "train",
            "--device",
            "cuda:1",
            "--gmp-kernel",
            "naive",
            "--tf32",
        ],
    ] {
        let out = dcl(args);
        assert_eq!(out.status.code(), Some(1), "{args:?}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(err.trim_end().lines().count(), 1, "{args:?}: {err}");
        assert!(err.starts_with("error: CUDA unavailable"), "{err}");
        assert!(!err.contains("panicked"), "{err}");
    }
}

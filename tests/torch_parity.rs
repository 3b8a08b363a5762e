//! The PyTorch parity tooling. `dcl init-checkpoint` and `dcl export-io` are checked here on
//! their own (no PyTorch needed): what export-io writes is what the library computes. With
//! `DCL_TORCH_PYTHON` pointing to a python that has torch, scripts/torch_parity.py then
//! compares our CPU networks with PyTorch modules built from DESIGN §1 (every variant, 64x64
//! and 256x256), and must also reject an export whose z was altered by 0.1 %.
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use dcl::checkpoint::{load_counter, read_tensors, write_tensors};
use dcl::cli::export::synthetic_batch;
use dcl::tensor::Tensor;

fn dcl_bin() -> PathBuf {
    // On the GPU machine the binary is carried, not where cargo built it.
    std::env::var_os("DCL_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_BIN_EXE_dcl")))
}

fn dcl(args: &[&str]) -> std::process::Output {
    let out = Command::new(dcl_bin())
        .args(args)
        .output()
        .expect("run dcl");
    out
}

fn dcl_ok(args: &[&str]) {
    let out = dcl(args);
    assert!(
        out.status.success(),
        "dcl {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn s(p: &Path) -> &str {
    p.to_str().expect("utf-8 temp path")
}

fn max_rel(a: &[f32], b: &[f32]) -> f64 {
    assert_eq!(a.len(), b.len());
    let scale = b.iter().fold(0f64, |m, &v| m.max(v.abs() as f64));
    let err = a
        .iter()
        .zip(b)
        .fold(0f64, |m, (&x, &y)| m.max((x as f64 - y as f64).abs()));
    err / scale
}

#[test]
fn export_io_writes_what_the_library_computes() {
    let d = tempfile::tempdir().unwrap();
    let c = d.path().join("c.safetensors");
    let c2 = d.path().join("c2.safetensors");
    let l = d.path().join("l.safetensors");
    let io = d.path().join("io.safetensors");
    let base = [
        "init-checkpoint",
        "--model",
        "counter",
        "--width-mult",
        "0.0625",
        "--gmp-points",
        "4",
        "--seed",
        "3",
        "--out",
    ];
    dcl_ok(&[&base[..], &[s(&c)]].concat());
    dcl_ok(&[&base[..], &[s(&c2)]].concat());
    // Same seed, same tensors (the header's metadata order is a HashMap's, so not the bytes).
    let (t1, t2) = (read_tensors(&c).unwrap(), read_tensors(&c2).unwrap());
    assert!(
        t1.1 == t2.1 && t1.2 == t2.2,
        "init-checkpoint is not deterministic"
    );
    dcl_ok(&[
        "init-checkpoint",
        "--model",
        "localizer",
        "--width-mult",
        "0.0625",
        "--out",
        s(&l),
    ]);
    dcl_ok(&[
        "export-io",
        "--counter",
        s(&c),
        "--localizer",
        s(&l),
        "--out",
        s(&io),
        "--images",
        "2",
        "--size",
        "32",
        "--seed",
        "5",
    ]);

    // Eval-mode BatchNorm is exercised: statistics are neither PyTorch's defaults nor shared.
    let (_, floats, ints) = read_tensors(&c).unwrap();
    let (_, mean) = &floats["counter.features.1.running_mean"];
    let (_, var) = &floats["counter.features.1.running_var"];
    assert!(mean.iter().all(|&m| m != 0.0), "running_mean left at 0");
    assert!(
        var.iter().all(|&v| v > 0.0 && v != 1.0),
        "running_var {var:?}"
    );
    assert_ne!(floats["counter.features.1.weight"].1[0], 1.0);
    assert!(floats["counter.features.0.bias"]
        .1
        .iter()
        .any(|&b| b != 0.0));
    assert_eq!(ints["counter.features.1.num_batches_tracked"], 1);

    let (meta, t, _) = read_tensors(&io).unwrap();
    let names: Vec<&str> = t.keys().map(String::as_str).collect();
    assert_eq!(names, ["density", "input", "localizer_input", "z"]);
    assert_eq!(t["input"].0, [2, 3, 32, 32]);
    assert_eq!(t["z"].0, [2, 1, 4, 4]);
    assert_eq!(t["localizer_input"].0, [2, 4, 32, 32]);
    assert_eq!(t["density"].0, [2, 1, 32, 32]);
    assert!(meta["dcl.export"].contains("\"size\":32"));
    // The inputs are the normalised synthetic images, and z is the library's forward pass.
    let images = synthetic_batch(2, 32, 5).unwrap();
    assert_eq!(t["input"].1, images.to_vec());
    let (counter, _) = load_counter(&c).unwrap();
    let z = counter.infer(images).unwrap().value().to_vec();
    assert!(max_rel(&t["z"].1, &z) < 1e-6);
    assert!(t["z"].1.iter().any(|&v| v != 0.0));
    // The 4th input channel sums to the count times density_scale (default 100).
    let count: f64 = t["z"].1.iter().map(|v| v.abs() as f64).sum();
    let fourth: f64 = (0..2)
        .map(|i| t["localizer_input"].1[(i * 4 + 3) * 1024..(i * 4 + 4) * 1024].iter())
        .flat_map(|it| it.map(|&v| v as f64))
        .sum();
    assert!(
        (fourth / 100.0 - count).abs() < 1e-3 * count,
        "{fourth} vs {count}"
    );

    // Bad input is refused with a message, not a panic.
    let bad = dcl(&[
        "export-io",
        "--counter",
        s(&c),
        "--out",
        s(&io),
        "--size",
        "40",
    ]);
    let err = String::from_utf8_lossy(&bad.stderr);
    assert!(
        !bad.status.success() && err.contains("multiple of 16"),
        "{err}"
    );
    let bad = dcl(&["export-io", "--counter", s(&l), "--out", s(&io)]);
    let err = String::from_utf8_lossy(&bad.stderr);
    assert!(!bad.status.success() && err.contains("Localizer"), "{err}");
}

#[test]
fn matches_pytorch() {
    let Some(python) = std::env::var_os("DCL_TORCH_PYTHON") else {
        eprintln!(
            "matches_pytorch: skipped (set DCL_TORCH_PYTHON to a python with torch to compare with PyTorch)"
        );
        return;
    };
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/torch_parity.py");
    let d = tempfile::tempdir().unwrap();
    let run = |args: &[&str]| {
        let out = Command::new(&python)
            .arg(&script)
            .args(args)
            .output()
            .expect("run python");
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        eprintln!("{text}");
        (out.status.code(), text)
    };
    let bin = dcl_bin();
    let (code, text) = run(&[
        "suite",
        "--dcl",
        s(&bin),
        "--workdir",
        s(d.path()),
        "--sizes",
        "64",
        "256",
    ]);
    assert_eq!(code, Some(0), "PyTorch parity failed:\n{text}");
    assert!(
        text.contains("10/10 comparisons within rel 0.0001"),
        "{text}"
    );

    // The checker must notice a 0.1 % change of one network's output.
    let io = d.path().join("io-vgg19_bn-k8-64.safetensors");
    let (meta, t, _) = read_tensors(&io).unwrap();
    let owned: Vec<(String, Tensor)> = t
        .into_iter()
        .map(|(n, (dims, mut v))| {
            if n == "z" {
                v.iter_mut().for_each(|x| *x *= 1.001);
            }
            (n, Tensor::from_vec(v, &dims).unwrap())
        })
        .collect();
    let refs: Vec<(String, &Tensor)> = owned.iter().map(|(n, t)| (n.clone(), t)).collect();
    let bad = d.path().join("bad.safetensors");
    write_tensors(
        &bad,
        &refs,
        &[],
        meta.into_iter().collect::<HashMap<_, _>>(),
    )
    .unwrap();
    let ckpt = d.path().join("counter-vgg19_bn-k8.safetensors");
    let (code, text) = run(&["compare", "--io", s(&bad), "--counter", s(&ckpt)]);
    assert_eq!(code, Some(1), "an altered z passed:\n{text}");
    assert!(text.contains("FAIL counter vgg19_bn K=8"), "{text}");
}

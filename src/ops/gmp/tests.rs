//! Tests of the GMP sampler on the CPU reference: golden values in pixel units
//! (grid_sample(align_corners=True, zeros) semantics), gradient checks, the blocked loops against
//! direct per-sample formulas, non-finite moves and shape errors.
use super::*;
use crate::ops::gradcheck::{check_gradients_with, random_input, GradcheckOptions};
use crate::rng::Rng;

const H: usize = 3;
const W: usize = 4;

/// x[i, j] = 10·(i+1) + (j+1): every value distinct, so a wrong tap shows.
fn grid() -> Tensor {
    let v = (0..H * W)
        .map(|p| (10 * (p / W + 1) + p % W + 1) as f32)
        .collect();
    Tensor::from_vec(v, &[1, 1, H, W]).unwrap()
}

fn at(i: isize, j: isize) -> f32 {
    if (0..H as isize).contains(&i) && (0..W as isize).contains(&j) {
        (10 * (i + 1) + j + 1) as f32
    } else {
        0.0
    }
}

/// Offsets `[1, 2K, H, W]` with the same moves (u_k, v_k) at every position.
fn constant_offsets(moves: &[(f32, f32)]) -> Tensor {
    let mut v = Vec::new();
    for &(u, vv) in moves {
        v.extend(std::iter::repeat_n(u, H * W));
        v.extend(std::iter::repeat_n(vv, H * W));
    }
    Tensor::from_vec(v, &[1, 2 * moves.len(), H, W]).unwrap()
}

fn expect(moves: &[(f32, f32)], f: impl Fn(isize, isize) -> f32) {
    let y = gmp_sample_forward(&grid(), &constant_offsets(moves)).unwrap();
    assert_eq!(y.dims(), &[1, 1, H, W]);
    let y = y.to_vec();
    for i in 0..H as isize {
        for j in 0..W as isize {
            let (got, want) = (y[i as usize * W + j as usize], f(i, j));
            assert!(
                (got - want).abs() < 1e-5,
                "moves {moves:?} at ({i},{j}): got {got}, want {want}"
            );
        }
    }
}

/// Hand-derived values, grid_sample(align_corners=True, zeros) semantics in pixel units.
#[test]
fn golden_integer_border_and_half_offsets() {
    // (0,0) is the identity.
    expect(&[(0.0, 0.0)], at);
    // u = 1 reads column j+1: a left shift, zeros entering at the right border.
    expect(&[(1.0, 0.0)], |i, j| at(i, j + 1));
    // v = -1 reads row i-1: a down shift, zeros entering at the top.
    expect(&[(0.0, -1.0)], |i, j| at(i - 1, j));
    // u = 0.5 averages horizontal neighbours; past the right border only half remains.
    expect(&[(0.5, 0.0)], |i, j| 0.5 * (at(i, j) + at(i, j + 1)));
    // u = -0.5: at j = 0 the sample sits at x = -0.5 and gets half of column 0.
    expect(&[(-0.5, 0.0)], |i, j| 0.5 * (at(i, j - 1) + at(i, j)));
    // K = 2 averages its samples; (0.25, 0.75) weighs the four corners (1-u)(1-v)…
    expect(&[(1.0, 0.0), (0.25, 0.75)], |i, j| {
        let s1 = at(i, j + 1);
        let s2 = 0.75 * 0.25 * at(i, j)
            + 0.25 * 0.25 * at(i, j + 1)
            + 0.75 * 0.75 * at(i + 1, j)
            + 0.25 * 0.75 * at(i + 1, j + 1);
        0.5 * (s1 + s2)
    });
    // Moves of whole maps land outside: all zero.
    expect(&[(W as f32, 0.0)], |_, _| 0.0);
    expect(&[(0.0, -(H as f32))], |_, _| 0.0);
}

/// Samples exactly on the border: x = W-1 reads the last column with full weight; x = -1 or
/// x = W (one pixel outside) read nothing.
#[test]
fn golden_exact_border_samples() {
    let x = grid();
    let mut off = vec![0.0f32; 2 * H * W];
    // Position (0,0) samples the bottom-right corner pixel exactly; (0,1) samples x = -1;
    // (0,2) samples x = W; (1,0) samples y = H-1, x = 0.
    off[0] = (W - 1) as f32;
    off[H * W] = (H - 1) as f32;
    off[1] = -2.0;
    off[2] = (W - 2) as f32;
    off[H * W + W] = (H - 2) as f32;
    let o = Tensor::from_vec(off, &[1, 2, H, W]).unwrap();
    let y = gmp_sample_forward(&x, &o).unwrap().to_vec();
    assert_eq!(y[0], at(H as isize - 1, W as isize - 1));
    assert_eq!(y[1], 0.0);
    assert_eq!(y[2], 0.0);
    assert_eq!(y[W], at(H as isize - 1, 0));
    assert_eq!(y[3], at(0, 3)); // untouched positions stay the identity
}

/// At integer positions the offset gradient uses the floor cell (right/lower neighbour), as
/// grid_sample: d out / d u = x(j+1) − x(j), and −x(j) at the right border (zero padding).
#[test]
fn offset_gradient_at_integer_positions_uses_floor_cell() {
    let x = grid();
    let o = constant_offsets(&[(0.0, 0.0)]);
    let dy = Tensor::full(&[1, 1, H, W], 1.0, &crate::device::Device::Cpu);
    let g = gmp_sample_backward(&x, &o, &dy, true, true).unwrap();
    assert_eq!(
        g.dx.unwrap().to_vec(),
        x.to_vec().iter().map(|_| 1.0).collect::<Vec<_>>()
    );
    let d = g.doffsets.unwrap().to_vec();
    for i in 0..H as isize {
        for j in 0..W as isize {
            let p = i as usize * W + j as usize;
            assert_eq!(d[p], at(i, j + 1) - at(i, j), "du at ({i},{j})");
            assert_eq!(d[H * W + p], at(i + 1, j) - at(i, j), "dv at ({i},{j})");
        }
    }
}

/// Offsets = integer + fraction in [0.1, 0.9], integers in [-3, 3]: samples fully inside,
/// straddling a border, and fully outside, none within 0.1 of a kink.
fn kink_free_offsets(dims: &[usize], seed: u64) -> Tensor {
    let mut rng = Rng::new(seed);
    let n: usize = dims.iter().product();
    let v = (0..n)
        .map(|_| (rng.below(7) as f32 - 3.0) + rng.range(0.1, 0.9))
        .collect();
    Tensor::from_vec(v, dims).unwrap()
}

#[test]
fn gradcheck_gmp() {
    let (n, c, h, w, k) = (2, 3, 4, 5, 3);
    let x = random_input(&[n, c, h, w], 21);
    let o = kink_free_offsets(&[n, 2 * k, h, w], 22);
    // The test covers the three cases it claims.
    let ov = o.to_vec();
    let (mut inside, mut straddle, mut outside) = (0, 0, 0);
    for b in 0..n {
        for kk in 0..k {
            for p in 0..h * w {
                let px = (p % w) as f32 + ov[((b * 2 * k + 2 * kk) * h * w) + p];
                let py = (p / w) as f32 + ov[((b * 2 * k + 2 * kk + 1) * h * w) + p];
                let cx = |v: f32, m: usize| {
                    if v > 0.0 && v < (m - 1) as f32 {
                        0
                    } else if v > -1.0 && v < m as f32 {
                        1
                    } else {
                        2
                    }
                };
                match cx(px, w).max(cx(py, h)) {
                    0 => inside += 1,
                    1 => straddle += 1,
                    _ => outside += 1,
                }
            }
        }
    }
    assert!(
        inside > 5 && straddle > 5 && outside > 5,
        "{inside} {straddle} {outside}"
    );
    let opts = GradcheckOptions {
        max_probes: 120,
        ..Default::default()
    };
    check_gradients_with("gmp_sample", &opts, vec![x, o], |t, v| {
        gmp_sample(t, &v[0], &v[1])
    })
    .unwrap();
}

/// Direct per-sample formulas (no tables, no channel blocks), the check on the blocked loops:
/// value and position derivatives of the zero-padded bilinear interpolant of one plane.
fn naive_sample(plane: &[f32], h: usize, w: usize, px: f32, py: f32) -> (f32, f32, f32) {
    let (x0, y0) = (px.floor(), py.floor());
    let (fx, fy) = (px - x0, py - y0);
    let get = |y: f32, x: f32| {
        if y >= 0.0 && y < h as f32 && x >= 0.0 && x < w as f32 {
            plane[y as usize * w + x as usize]
        } else {
            0.0
        }
    };
    let (a, b) = (get(y0, x0), get(y0, x0 + 1.0));
    let (c, d) = (get(y0 + 1.0, x0), get(y0 + 1.0, x0 + 1.0));
    let v = a * (1.0 - fx) * (1.0 - fy) + b * fx * (1.0 - fy) + c * (1.0 - fx) * fy + d * fx * fy;
    let dpx = (b - a) * (1.0 - fy) + (d - c) * fy;
    let dpy = (c - a) * (1.0 - fx) + (d - b) * fx;
    (v, dpx, dpy)
}

/// C = 11 spans one full block of channels and a partial one; N = 2 checks per-image tables.
#[test]
fn blocked_loops_match_naive_reference() {
    let (n, c, h, w, k) = (2, 11, 5, 6, 3);
    let x = random_input(&[n, c, h, w], 51);
    let o = kink_free_offsets(&[n, 2 * k, h, w], 52);
    let dy = random_input(&[n, c, h, w], 53);
    let (xv, ov, gv) = (x.to_vec(), o.to_vec(), dy.to_vec());
    let hw = h * w;
    let mut out = vec![0.0f32; n * c * hw];
    let mut dx = vec![0.0f32; n * c * hw];
    let mut doff = vec![0.0f64; n * 2 * k * hw];
    for b in 0..n {
        for ch in 0..c {
            let base = (b * c + ch) * hw;
            let plane = &xv[base..base + hw];
            for p in 0..hw {
                for kk in 0..k {
                    let px = (p % w) as f32 + ov[(b * 2 * k + 2 * kk) * hw + p];
                    let py = (p / w) as f32 + ov[(b * 2 * k + 2 * kk + 1) * hw + p];
                    let (v, dpx, dpy) = naive_sample(plane, h, w, px, py);
                    out[base + p] += v / k as f32;
                    doff[(b * 2 * k + 2 * kk) * hw + p] += (gv[base + p] * dpx / k as f32) as f64;
                    doff[(b * 2 * k + 2 * kk + 1) * hw + p] +=
                        (gv[base + p] * dpy / k as f32) as f64;
                    // dx: scatter dy with the same explicit corner weights (zero padding
                    // drops corners outside the map).
                    let (x0, y0) = (px.floor(), py.floor());
                    let (fx, fy) = (px - x0, py - y0);
                    for (dyy, dxx, wt) in [
                        (0.0, 0.0, (1.0 - fx) * (1.0 - fy)),
                        (0.0, 1.0, fx * (1.0 - fy)),
                        (1.0, 0.0, (1.0 - fx) * fy),
                        (1.0, 1.0, fx * fy),
                    ] {
                        let (yy, xx) = (y0 + dyy, x0 + dxx);
                        if yy >= 0.0 && yy < h as f32 && xx >= 0.0 && xx < w as f32 {
                            dx[base + yy as usize * w + xx as usize] +=
                                wt * gv[base + p] / k as f32;
                        }
                    }
                }
            }
        }
    }
    let close = |got: &[f32], want: &[f32], what: &str| {
        assert_eq!(got.len(), want.len());
        for (i, (g, e)) in got.iter().zip(want).enumerate() {
            assert!(
                (g - e).abs() < 1e-4 * (1.0 + e.abs()),
                "{what}[{i}]: {g} vs {e}"
            );
        }
    };
    close(&gmp_sample_forward(&x, &o).unwrap().to_vec(), &out, "out");
    let g = gmp_sample_backward(&x, &o, &dy, true, true).unwrap();
    close(&g.dx.unwrap().to_vec(), &dx, "dx");
    let doff: Vec<f32> = doff.iter().map(|&v| v as f32).collect();
    close(&g.doffsets.unwrap().to_vec(), &doff, "doffsets");
}

/// Non-finite moves do not panic: the sample (and every gradient it touches) is NaN, while
/// a huge finite move is simply outside the map. The CUDA kernels reproduce this exactly.
#[test]
fn non_finite_offsets_give_nan_samples_without_panicking() {
    let x = grid();
    for (u, nan) in [
        (f32::NAN, true),
        (f32::INFINITY, true),
        (f32::NEG_INFINITY, true),
        (1e30, false),
    ] {
        let o = constant_offsets(&[(u, 0.0)]);
        let y = gmp_sample_forward(&x, &o).unwrap().to_vec();
        assert!(y.iter().all(|v| v.is_nan() == nan), "{u}: {y:?}");
        if !nan {
            assert!(y.iter().all(|&v| v == 0.0), "{u}: {y:?}");
        }
        let dy = Tensor::full(&[1, 1, H, W], 1.0, &crate::device::Device::Cpu);
        let g = gmp_sample_backward(&x, &o, &dy, true, true).unwrap();
        assert_eq!(g.dx.unwrap().to_vec().iter().any(|v| v.is_nan()), nan);
    }
}

/// Only the requested gradients are computed.
#[test]
fn backward_honours_needs() {
    let x = random_input(&[1, 2, 3, 3], 1);
    let o = kink_free_offsets(&[1, 2, 3, 3], 2);
    let dy = random_input(&[1, 2, 3, 3], 3);
    let g = gmp_sample_backward(&x, &o, &dy, false, true).unwrap();
    assert!(g.dx.is_none() && g.doffsets.is_some());
    let g = gmp_sample_backward(&x, &o, &dy, true, false).unwrap();
    assert!(g.dx.is_some() && g.doffsets.is_none());
}

#[test]
fn errors_name_the_op() {
    let x = random_input(&[2, 3, 4, 5], 1);
    for bad in [
        &[2, 3, 4, 5][..],
        &[2, 0, 4, 5],
        &[1, 2, 4, 5],
        &[2, 2, 5, 4],
        &[2, 2, 4],
    ] {
        let o = random_input(bad, 2);
        let e = gmp_sample_forward(&x, &o).unwrap_err().to_string();
        assert!(e.contains(OP), "{bad:?}: {e}");
    }
    let o = random_input(&[2, 4, 4, 5], 2);
    let dy = random_input(&[2, 3, 4, 4], 3);
    let e = gmp_sample_backward(&x, &o, &dy, true, true)
        .unwrap_err()
        .to_string();
    assert!(e.contains(OP) && e.contains("dy"), "{e}");
    // an empty map is an error, not a panic in the CPU loops
    let x0 = Tensor::from_vec(vec![], &[2, 0, 4, 5]).unwrap();
    let e = gmp_sample_forward(&x0, &o).unwrap_err().to_string();
    assert!(e.contains(OP) && e.contains("empty"), "{e}");
}

/// One geometry serves the CPU and every kernel: its sizes, one channel group by default, and
/// the refusals of the checks it is built with.
#[test]
fn geometry_sizes_and_refusals() {
    let g = GmpGeometry::new(2, 3, 4, 5, 6).unwrap();
    assert_eq!((g.n, g.c, g.h, g.w, g.k, g.c_per_group), (2, 3, 4, 5, 6, 3));
    assert_eq!((g.plane(), g.positions(), g.sample_points()), (20, 40, 240));
    assert_eq!((g.x_len(), g.off_len()), (120, 480));
    let x = random_input(&[2, 3, 4, 5], 1);
    let o = random_input(&[2, 12, 4, 5], 2);
    assert_eq!(GmpGeometry::of(&x, &o).unwrap(), g);
    for (dims, what) in [
        ([0, 3, 4, 5, 1], "empty"),
        ([2, 3, 4, 5, 0], "K = 0"),
        ([1, 1, 1 << 16, 1 << 15, 1], "too large"),
        ([1 << 32, 1, 1, 1, 1], "N ="),
    ] {
        let [n, c, h, w, k] = dims;
        let e = GmpGeometry::new(n, c, h, w, k).unwrap_err().to_string();
        assert!(e.contains(OP) && e.contains(what), "{dims:?}: {e}");
    }
}

/// The GMP layer's op, y = x + gmp_sample(x, offsets), by finite differences: dx carries the
/// residual's identity as well as the scatter.
#[test]
fn gradcheck_gmp_residual() {
    let (n, c, h, w, k) = (2, 3, 4, 5, 3);
    let x = random_input(&[n, c, h, w], 31);
    let o = kink_free_offsets(&[n, 2 * k, h, w], 32);
    let opts = GradcheckOptions {
        max_probes: 120,
        ..Default::default()
    };
    check_gradients_with("gmp_residual", &opts, vec![x, o], |t, v| {
        gmp_residual(t, &v[0], &v[1])
    })
    .unwrap();
}

/// On the CPU the fused op is the composition it replaced in the layer, bit for bit: forward
/// (`add(x, gmp_sample(x, o))`) and, on a tape where x also feeds another op (as it feeds the
/// offsets' conv in the layer), the accumulated gradients of x and of the offsets.
#[test]
fn residual_op_is_the_composition_bit_for_bit() {
    use crate::ops::elementwise::{abs, add, scale, sum};
    let (n, c, h, w, k) = (2, 5, 6, 7, 4);
    let x = random_input(&[n, c, h, w], 41);
    let o = kink_free_offsets(&[n, 2 * k, h, w], 42);
    let dy = random_input(&[n, c, h, w], 43);
    let (y, saved) = gmp_residual_forward(&x, &o).unwrap();
    let a = gmp_sample_forward(&x, &o).unwrap();
    let want = crate::ops::elementwise::add_tensors(&x, &a).unwrap();
    assert_eq!(y.to_vec(), want.to_vec());
    assert!(!saved.has_channels_last());
    let g = gmp_residual_backward(&x, &o, &saved, &dy, true, true).unwrap();
    let s = gmp_sample_backward(&x, &o, &dy, true, true).unwrap();
    let mut dx = dy.clone();
    dx.add_assign(s.dx.as_ref().unwrap()).unwrap();
    assert_eq!(g.dx.unwrap().to_vec(), dx.to_vec());
    assert_eq!(g.doffsets.unwrap().to_vec(), s.doffsets.unwrap().to_vec());
    let only = gmp_residual_backward(&x, &o, &saved, &dy, false, true).unwrap();
    assert!(only.dx.is_none() && only.doffsets.is_some());

    // loss = Σ |0.5·x + y(x, o)|: x's gradient is accumulated from two ops
    let grads = |fused: bool| {
        let t = Tape::new();
        let (xv, ov) = (t.leaf(x.clone()), t.leaf(o.clone()));
        let side = scale(&t, &xv, 0.5).unwrap();
        let y = if fused {
            gmp_residual(&t, &xv, &ov).unwrap()
        } else {
            let a = gmp_sample(&t, &xv, &ov).unwrap();
            add(&t, &xv, &a).unwrap()
        };
        let l = sum(&t, &abs(&t, &add(&t, &side, &y).unwrap()).unwrap()).unwrap();
        let g = t.backward(&l).unwrap();
        (
            l.value().to_vec(),
            g.get(&xv).unwrap().to_vec(),
            g.get(&ov).unwrap().to_vec(),
        )
    };
    assert_eq!(grads(true), grads(false));
}

/// Shape and device errors name the layer's op.
#[test]
fn residual_errors_name_the_op() {
    let x = random_input(&[2, 3, 4, 5], 1);
    let o = random_input(&[2, 3, 4, 5], 2);
    let e = gmp_residual_forward(&x, &o).err().unwrap().to_string();
    assert!(e.contains("gmp_sample") && e.contains("2K"), "{e}");
    let o = random_input(&[2, 4, 4, 5], 2);
    let (_, saved) = gmp_residual_forward(&x, &o).unwrap();
    let dy = random_input(&[2, 3, 4, 4], 3);
    let e = gmp_residual_backward(&x, &o, &saved, &dy, true, true)
        .unwrap_err()
        .to_string();
    assert!(e.contains("gmp") && e.contains("dy"), "{e}");
}

/// The channels-last fast path (each instruction set this CPU has) against the reference
/// loops: odd channel counts and map sizes, samples on and off the map; forward and dx bit for
/// bit, doffsets within rounding (its channel sum runs in lanes).
#[test]
fn fast_path_matches_reference_loops() {
    use crate::device::cpu::simd::Isa;
    for isa in [Isa::Avx2, Isa::Avx512]
        .into_iter()
        .filter(|i| i.available())
    {
        for (n, c, h, w, k) in [(2, 3, 5, 7, 3), (1, 70, 4, 9, 8), (2, 17, 6, 6, 2)] {
            let g = GmpGeometry::new(n, c, h, w, k).unwrap();
            let x = crate::ops::gradcheck::random_input(&[n, c, h, w], 61).to_vec();
            let dy = crate::ops::gradcheck::random_input(&[n, c, h, w], 62).to_vec();
            let off: Vec<f32> = crate::ops::gradcheck::random_input(&[n, 2 * k, h, w], 63)
                .to_vec()
                .iter()
                .map(|v| v * 4.0)
                .collect();
            let what = format!("{isa:?} {:?}", (n, c, h, w, k));
            assert_eq!(
                super::cpu_fast::forward(&x, &off, &g, isa),
                super::cpu::forward_reference(&x, &off, &g),
                "{what} forward"
            );
            assert_eq!(
                super::cpu_fast::backward_x(&dy, &off, &g, isa),
                super::cpu::backward_x_reference(&dy, &off, &g),
                "{what} dx"
            );
            let a = super::cpu_fast::backward_offsets(&x, &off, &dy, &g, isa);
            let b = super::cpu::backward_offsets_reference(&x, &off, &dy, &g);
            for (i, (u, v)) in a.iter().zip(&b).enumerate() {
                assert!(
                    (u - v).abs() <= 1e-5 * (1.0 + v.abs()),
                    "{what} doff[{i}]: {u} vs {v}"
                );
            }
        }
    }
}

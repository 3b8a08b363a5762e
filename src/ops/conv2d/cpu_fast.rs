//! The CPU fast path of conv2d for stride-1 "same" convolutions with a k×k kernel, k ≥ 3 odd
//! and padding (k − 1)/2: every 3x3 convolution of both networks. It replaces im2col + GEMM
//! (`cpu.rs`, which stays the reference and the path of every other geometry) by implicit
//! GEMMs over padded planes with SIMD micro-kernels chosen at run time
//! (`device::cpu::kernels`).
//!
//! **The flat view.** Pad each input plane to `hp × wp` (= (H + 2p) × (W + 2p)) and number
//! the output positions `q = oh·wp + ow` over the padded width, so each row carries `wp − OW =
//! k − 1` positions that are computed and dropped. Then the im2col matrix row of reduction
//! index `r = (c, ki, kj)` is the padded input itself, shifted: `B[r][q] = xpad[c][q + ki·wp +
//! kj]`, contiguous in q for every r. So
//! - forward: `Y[o][q] = Σ_r W[o][r] · B[r][q]`, a GEMM whose B rows the micro-kernel reads in
//!   place from the padded planes through a table of row offsets (no column matrix: the rows of
//!   one channel overlap, so a tile's B is a few KB of L1), vectorised along the positions (the
//!   long dimension, whatever the channel count), and stored straight into NCHW: a vector's
//!   lanes that fall on the dropped positions are left out and the rest stored compacted (the
//!   valid positions of consecutive rows are adjacent in NCHW);
//! - dX: the same GEMM on dY padded by p, with the weights transposed and flipped
//!   (`dx = conv(dy, Wᵀ flipped)`, stride 1, padding k − 1 − p = p);
//! - dW: `dWᵀ[r][o] = Σ_n Σ_q B[r][q] · dYᵀ[q][o]`, with B's rows broadcast in place and dY
//!   transposed once per call to positions × channels (zero at the dropped positions), so the
//!   micro-kernel's vectors run along the output channels, aligned; with fewer output channels
//!   than a tile is wide, tiles of dot products along q between dY's padded rows (read at
//!   offset `p·wp + p`, where its dropped positions land on padding, so they are zero) and B's.
//!
//! Each output element is computed by one task, its sum in a fixed order that does not depend
//! on the number of threads, so results are identical run to run and at any thread count.
use rayon::prelude::*;

use super::{Conv2dGeometry, Conv2dGrads, Conv2dNeeds};
use crate::device::cpu::kernels::{prefetch, DotKernel, GemmKernel, Init, Segments, Span};
use crate::device::cpu::par::transpose;
use crate::device::cpu::scratch::{self, Scratch};
use crate::device::cpu::simd::{self, Isa};

/// Reduction rows per block of the forward and dX GEMMs (the A panel of a block, mr × KC,
/// stays in L1 while the tiles of the block's positions pass).
const KC: usize = 256;
/// Position tiles per GEMM task.
const TILES_PER_TASK: usize = 12;
/// Positions per reduction block of the dW GEMM.
const QC: usize = 256;

/// Whether the fast path handles `g`: stride 1, a square odd kernel of at least 3, padding
/// (k − 1)/2 (the output has the input's size).
pub fn supported(g: &Conv2dGeometry) -> bool {
    g.stride() == 1 && g.kh() == g.kw() && g.kh() >= 3 && g.kh() == 2 * g.pad() + 1
}

/// The instruction set the fast path would use for `g` in this process, or `None` when it does
/// not apply (geometry, or no vector kernels on this CPU).
pub fn isa_for(g: &Conv2dGeometry) -> Option<Isa> {
    let isa = simd::isa();
    (supported(g) && GemmKernel::for_isa(isa, g.o()).is_some()).then_some(isa)
}

/// A raw pointer that tasks writing disjoint parts of one buffer may share.
#[derive(Clone, Copy)]
struct SyncPtr(*mut f32);
unsafe impl Send for SyncPtr {}
unsafe impl Sync for SyncPtr {}
impl SyncPtr {
    /// (A method, so closures capture the whole wrapper, not its raw field.)
    fn get(self) -> *mut f32 {
        self.0
    }
}

/// A buffer of `len` floats, every one of which `fill` writes (through the pointer, once
/// each, possibly from several threads): allocated without zeroing.
fn written_by(len: usize, fill: impl FnOnce(SyncPtr)) -> Vec<f32> {
    let mut v = Vec::<f32>::with_capacity(len);
    fill(SyncPtr(v.as_mut_ptr()));
    // Safety: `fill` initialised all `len` floats (each caller's tiling covers its buffer).
    unsafe { v.set_len(len) };
    v
}

/// Images of `ch` planes, each zero-padded by `p` to `hp × wp`, followed by `slack` zeros, so
/// the shifted rows of the flat view may run past the last plane (a pooled scratch buffer).
struct Padded {
    data: Scratch,
    wp: usize,
    /// Floats of one padded plane, hp·wp.
    plane: usize,
    /// Floats of one image, ch·plane + slack.
    image: usize,
}

impl Padded {
    fn new(
        src: &[f32],
        images: usize,
        ch: usize,
        h: usize,
        w: usize,
        p: usize,
        slack: usize,
    ) -> Self {
        let (hp, wp) = (h + 2 * p, w + 2 * p);
        let plane = hp * wp;
        let image = ch * plane + slack;
        let mut data = scratch::take(images * image);
        data.par_chunks_mut(image)
            .zip(src.par_chunks(ch * h * w))
            .for_each(|(dst, img)| {
                let (planes, tail) = dst.split_at_mut(ch * plane);
                tail.fill(0.0);
                for (dp, sp) in planes.chunks_mut(plane).zip(img.chunks(h * w)) {
                    dp[..p * wp + p].fill(0.0);
                    for (i, row) in sp.chunks(w).enumerate() {
                        let at = (i + p) * wp + p;
                        dp[at..at + w].copy_from_slice(row);
                        // right padding of this row and left padding of the next
                        let end = if i + 1 < h { at + w + 2 * p } else { plane };
                        dp[at + w..end].fill(0.0);
                    }
                }
            });
        Padded {
            data,
            wp,
            plane,
            image,
        }
    }

    fn image(&self, n: usize) -> &[f32] {
        &self.data[n * self.image..][..self.image]
    }
}

/// The forward's A operand: W [O, K] row-major packed `[panel][K][mr]` (rows past O zero).
fn pack_a(w: &[f32], rows: usize, k: usize, mr: usize) -> Vec<f32> {
    let panels = rows.div_ceil(mr);
    let mut ap = vec![0.0f32; panels * k * mr];
    ap.par_chunks_mut(k * mr).enumerate().for_each(|(p, dst)| {
        for i in 0..mr.min(rows - p * mr) {
            let src = &w[(p * mr + i) * k..][..k];
            for (d, &v) in dst[i..].iter_mut().step_by(mr).zip(src) {
                *d = v;
            }
        }
    });
    ap
}

/// dX's A operand: A'[c][(o, t)] = W[o][c][kk² − 1 − t] (transposed, taps reversed) for a
/// kk×kk kernel, packed `[panel of c][O·kk²][mr]`.
fn pack_a_flipped(w: &[f32], o: usize, c: usize, kk: usize, mr: usize) -> Vec<f32> {
    let taps = kk * kk;
    let k = o * taps;
    let panels = c.div_ceil(mr);
    let mut ap = vec![0.0f32; panels * k * mr];
    ap.par_chunks_mut(k * mr).enumerate().for_each(|(p, dst)| {
        let live = mr.min(c - p * mr);
        for oi in 0..o {
            for i in 0..live {
                let src = &w[(oi * c + p * mr + i) * taps..][..taps];
                for (t, &v) in src.iter().rev().enumerate() {
                    dst[(oi * taps + t) * mr + i] = v;
                }
            }
        }
    });
    ap
}

/// Offsets of the reduction rows (c, ki, kj) of a k×k kernel over `ch` padded planes.
fn row_offsets(ch: usize, k: usize, plane: usize, wp: usize) -> Vec<usize> {
    let mut offs = Vec::with_capacity(ch * k * k);
    for c in 0..ch {
        for ki in 0..k {
            for kj in 0..k {
                offs.push(c * plane + ki * wp + kj);
            }
        }
    }
    offs
}

/// The spans of the tile of positions starting at flat position `q0`: per vector, the NCHW
/// offset (within the plane) of its first valid position and the mask of its valid lanes
/// (columns < ow of rows < oh).
fn spans(q0: usize, lanes: usize, wp: usize, ow: usize, q_len: usize) -> [Span; 2] {
    std::array::from_fn(|v| {
        let q = q0 + v * lanes;
        let (row, col) = (q / wp, q % wp);
        let mut mask = 0u32;
        for l in 0..lanes {
            let ql = q + l;
            if ql < q_len && ql % wp < ow {
                mask |= 1 << l;
            }
        }
        Span {
            off: row * ow + col.min(ow),
            mask,
        }
    })
}

/// One implicit GEMM `out[n][o][oh][ow] = Σ_r A[o][r] · input_n[offs[r] + oh·wp + ow] (+ bias)`.
struct FlatGemm<'a> {
    input: &'a Padded,
    images: usize,
    /// Offset of reduction row r within an image of `input`.
    offs: &'a [usize],
    /// Packed A, [panel][offs.len()][mr].
    ap: &'a [f32],
    rows: usize,
    oh: usize,
    ow: usize,
}

impl FlatGemm<'_> {
    fn run(&self, kern: GemmKernel, bias: Option<&[f32]>) -> Vec<f32> {
        let (mr, nr, lanes) = (kern.mr, kern.nr, kern.lanes());
        let (wp, oh, ow, rows) = (self.input.wp, self.oh, self.ow, self.rows);
        let plane_out = oh * ow;
        let k = self.offs.len();
        let q_len = oh * wp;
        let nc = TILES_PER_TASK * nr;
        let q_blocks = q_len.div_ceil(nc);
        let o_panels = rows.div_ceil(mr);
        // Split output channels when positions alone give too few tasks (small late maps).
        let want = 3 * rayon::current_num_threads();
        let base = self.images * q_blocks;
        let o_split = want.div_ceil(base).clamp(1, o_panels);
        let panels_per_o = o_panels.div_ceil(o_split);
        let o_blocks = o_panels.div_ceil(panels_per_o);
        let tasks = base * o_blocks;
        // Every row a tile reads, `img[offs[r] + q .. + nr]` with q < q_len rounded up to a
        // tile, lies in the image (its slack covers the overhang).
        let last = self.offs.iter().max().copied().unwrap_or(0) + q_len.div_ceil(nr) * nr;
        assert!(
            last <= self.input.image,
            "fast conv2d: input slack too small"
        );
        assert!(self.ap.len() >= o_panels * k * mr);
        written_by(self.images * rows * plane_out, |out| {
            (0..tasks).into_par_iter().for_each(|t| {
                let ob = t % o_blocks;
                let nq = t / o_blocks;
                let (n, qb) = (nq / q_blocks, nq % q_blocks);
                let q0 = qb * nc;
                let q1 = (q0 + nc).min(q_len);
                let (p0, p1) = (ob * panels_per_o, ((ob + 1) * panels_per_o).min(o_panels));
                let img = self.input.image(n);
                for kb in (0..k).step_by(KC) {
                    let kc = KC.min(k - kb);
                    let offs = self.offs[kb..kb + kc].as_ptr();
                    for q in (q0..q1).step_by(nr) {
                        let sp = spans(q, lanes, wp, ow, q_len);
                        let bptr = img[q..].as_ptr();
                        // The next tile's rows (first and last float of each), while this
                        // tile's calls run: they come from memory in a large layer.
                        let next = bptr.wrapping_add(nr);
                        for &o in &self.offs[kb..kb + kc] {
                            prefetch(next.wrapping_add(o));
                            prefetch(next.wrapping_add(o + nr - 1));
                        }
                        for op in p0..p1 {
                            let a = self.ap[(op * k + kb) * mr..][..kc * mr].as_ptr();
                            let o0 = op * mr;
                            let init = match (kb, bias) {
                                (0, None) => Init::Zero,
                                (0, Some(b)) => Init::Bias(b[o0..].as_ptr()),
                                _ => Init::Load,
                            };
                            // Safety: rows o0..o0+valid of image n are this task's; the spans
                            // address positions of the tile inside each plane; A, B and the
                            // offsets were checked above.
                            unsafe {
                                let c = out.get().add((n * rows + o0) * plane_out);
                                kern.gather(kc, a, bptr, offs, c, plane_out, rows - o0, &sp, init);
                            }
                        }
                    }
                }
            })
        })
    }
}

/// y [N, O, H, W] of a supported geometry (see [`supported`]) with the kernels of `isa`.
pub fn forward(x: &[f32], w: &[f32], b: Option<&[f32]>, g: &Conv2dGeometry, isa: Isa) -> Vec<f32> {
    let kern = GemmKernel::for_isa(isa, g.o()).expect("fast conv2d needs vector kernels");
    assert!(supported(g), "fast conv2d: unsupported geometry {g:?}");
    let (kk, p) = (g.kh(), g.pad());
    let xp = Padded::new(x, g.n(), g.c(), g.h(), g.w(), p, kk + kern.nr);
    let offs = row_offsets(g.c(), kk, xp.plane, xp.wp);
    let ap = pack_a(w, g.o(), g.col_rows(), kern.mr);
    FlatGemm {
        input: &xp,
        images: g.n(),
        offs: &offs,
        ap: &ap,
        rows: g.o(),
        oh: g.oh(),
        ow: g.ow(),
    }
    .run(kern, b)
}

/// The gradients of a supported geometry with the kernels of `isa`; db as the reference (f64
/// sums per channel).
pub fn backward(
    x: &[f32],
    w: &[f32],
    dy: &[f32],
    g: &Conv2dGeometry,
    needs: Conv2dNeeds,
    isa: Isa,
) -> Conv2dGrads<Vec<f32>> {
    assert!(supported(g), "fast conv2d: unsupported geometry {g:?}");
    let (kk, p, c, o) = (g.kh(), g.pad(), g.c(), g.o());
    let dx = needs.dx.then(|| {
        let kern = GemmKernel::for_isa(isa, c).expect("fast conv2d needs vector kernels");
        let dyp = Padded::new(dy, g.n(), o, g.oh(), g.ow(), p, kk + kern.nr);
        let offs = row_offsets(o, kk, dyp.plane, dyp.wp);
        let ap = pack_a_flipped(w, o, c, kk, kern.mr);
        FlatGemm {
            input: &dyp,
            images: g.n(),
            offs: &offs,
            ap: &ap,
            rows: c,
            oh: g.h(),
            ow: g.w(),
        }
        .run(kern, None)
    });
    let dw = needs.dw.then(|| weight_grad(x, dy, g, isa));
    let db = needs.db.then(|| super::cpu::bias_grad(dy, g));
    Conv2dGrads { dx, dw, db }
}

/// `dy` [N, O, OH, OW] as positions × channels over the flat view: image n's block is
/// `[OH·wp][o_pad]`, row `oh·wp + ow` holding dy[n, ·, oh, ow], zero at the dropped positions
/// (ow ≥ OW) and the padded channels (≥ O); the buffer starts 64-byte aligned (returned with
/// the offset of its first float) and each row is `o_pad` floats.
fn transpose_dy(dy: &[f32], g: &Conv2dGeometry, wp: usize, o_pad: usize) -> (Scratch, usize) {
    let (o, oh, ow) = (g.o(), g.oh(), g.ow());
    let q_len = oh * wp;
    let per = q_len * o_pad;
    let mut buf = scratch::take(g.n() * per + 16);
    let a0 = (16 - (buf.as_ptr() as usize / 4) % 16) % 16;
    // the slack before and after the rows holds stale values of an earlier use: zero it
    buf[..a0].fill(0.0);
    buf[a0 + g.n() * per..].fill(0.0);
    buf[a0..a0 + g.n() * per]
        .par_chunks_mut(wp * o_pad)
        .enumerate()
        .for_each(|(row, dst)| {
            let (n, r) = (row / oh, row % oh);
            let src = &dy[n * o * oh * ow..][..o * oh * ow];
            for (col, d) in dst.chunks_mut(o_pad).enumerate() {
                if col >= ow {
                    d.fill(0.0);
                    continue;
                }
                for (c, v) in d.iter_mut().enumerate() {
                    *v = if c < o {
                        src[(c * oh + r) * ow + col]
                    } else {
                        0.0
                    };
                }
            }
        });
    (buf, a0)
}

/// dW [O, C·k·k] of a supported geometry: dWᵀ[r][o] = Σ_n Σ_q xpad_n[offs[r] + q] ·
/// dyᵀ_n[q][o], the A rows (reduction rows r, shifted input rows) broadcast in place, dyᵀ as
/// the B rows; tasks own blocks of r and run over every image and position in order.
fn weight_grad(x: &[f32], dy: &[f32], g: &Conv2dGeometry, isa: Isa) -> Vec<f32> {
    let (kk, p, o) = (g.kh(), g.pad(), g.o());
    let kdim = g.col_rows();
    let kern = GemmKernel::for_isa(isa, kdim).expect("fast conv2d needs vector kernels");
    if o < kern.nr {
        // Fewer output channels than the tile is wide: dot products along the positions.
        let dot = DotKernel::for_isa(isa).expect("fast conv2d needs vector kernels");
        let xp = Padded::new(x, g.n(), g.c(), g.h(), g.w(), p, kk + QC_DOT);
        let dyp = Padded::new(dy, g.n(), o, g.oh(), g.ow(), p, kk + QC_DOT);
        let offs = row_offsets(g.c(), kk, xp.plane, xp.wp);
        return weight_grad_dot(
            &xp,
            &dyp,
            &offs,
            o,
            g.n(),
            g.oh() * xp.wp,
            p * xp.wp + p,
            dot,
        );
    }
    let (mr, nr) = (kern.mr, kern.nr);
    let xp = Padded::new(x, g.n(), g.c(), g.h(), g.w(), p, kk + QC);
    let offs = row_offsets(g.c(), kk, xp.plane, xp.wp);
    let q_len = g.oh() * xp.wp;
    let o_pad = o.div_ceil(nr) * nr;
    let (dyt, a0) = transpose_dy(dy, g, xp.wp, o_pad);
    let dyt = &dyt[a0..];
    let per_image = q_len * o_pad;
    let r_tiles = kdim.div_ceil(mr);
    let o_tiles = o_pad / nr;
    let want = 3 * rayon::current_num_threads();
    let tiles_per = r_tiles.div_ceil(want).max(1);
    let blocks = r_tiles.div_ceil(tiles_per);
    // dWᵀ, [r_tiles·mr][o_pad]; each task writes its rows.
    let k_pad = r_tiles * mr;
    let dwt = written_by(k_pad * o_pad, |out| {
        (0..blocks).into_par_iter().for_each(|blk| {
            let (t0, t1) = (blk * tiles_per, ((blk + 1) * tiles_per).min(r_tiles));
            let mut rows = vec![std::ptr::null::<f32>(); mr];
            for n in 0..g.n() {
                let img = xp.image(n);
                let dyn_ = &dyt[n * per_image..][..per_image];
                for q0 in (0..q_len).step_by(QC) {
                    let len = QC.min(q_len - q0);
                    let first = n == 0 && q0 == 0;
                    for rt in t0..t1 {
                        for (i, ptr) in rows.iter_mut().enumerate() {
                            // rows past the end repeat the last one; their sums are dropped
                            let r = (rt * mr + i).min(kdim - 1);
                            *ptr = img[offs[r] + q0..][..len].as_ptr();
                            // the next tile's rows, one line in 16 floats
                            let rn = ((rt + 1) * mr + i).min(kdim - 1);
                            let next = img[offs[rn] + q0..].as_ptr();
                            for l in (0..len).step_by(16) {
                                prefetch(next.wrapping_add(l));
                            }
                        }
                        for ot in 0..o_tiles {
                            let b = dyn_[q0 * o_pad + ot * nr..].as_ptr();
                            let init = if first { Init::Zero } else { Init::Load };
                            // Safety: each row pointer covers `len` floats (sliced above), dyᵀ
                            // rows q0..q0+len of this tile are in `dyn_`, and C rows
                            // rt·mr.. of dWᵀ belong to this task.
                            unsafe {
                                let c = out.get().add(rt * mr * o_pad + ot * nr);
                                kern.rows(len, &rows, b, o_pad, c, o_pad, init);
                            }
                        }
                    }
                }
            }
        })
    });
    // dWᵀ [k_pad][o_pad] → [o_pad][k_pad], then the [O][K] corner.
    let full = transpose(isa, &dwt, 1, k_pad, o_pad);
    let mut dw = Vec::with_capacity(o * kdim);
    for row in full.chunks(k_pad).take(o) {
        dw.extend_from_slice(&row[..kdim]);
    }
    dw
}

/// Positions per chunk of the dot-product dW (a multiple of every vector width).
const QC_DOT: usize = 1024;
/// Tiles of reduction rows and of output channels per dot-product dW block: a block's
/// lane-wise partial sums stay in L2 while its operand rows stream through L1.
const DW_KT: usize = 16;
const DW_OT: usize = 16;
/// Dot-product dW tasks wanted: when the blocks are fewer, the positions are split too, by a
/// count fixed by the geometry (never by the thread count), so the order of the sums is fixed.
const DW_MIN_TASKS: usize = 8;

/// dW[o][r] = Σ_n Σ_{q < q_len} dyp_n[o·plane + dy_off + q] · xp_n[offs[r] + q], as tiles of
/// dot products along q (for few output channels, where dyᵀ's vectors would be mostly
/// padding).
#[allow(clippy::too_many_arguments)]
fn weight_grad_dot(
    xp: &Padded,
    dyp: &Padded,
    offs: &[usize],
    rows: usize,
    images: usize,
    q_len: usize,
    dy_off: usize,
    dot: DotKernel,
) -> Vec<f32> {
    let (ta, tb, lanes) = (dot.ta, dot.tb, dot.isa.lanes());
    let k = offs.len();
    let (o_tiles, k_tiles) = (rows.div_ceil(ta), k.div_ceil(tb));
    let (kb_n, ob_n) = (k_tiles.div_ceil(DW_KT), o_tiles.div_ceil(DW_OT));
    // Units of positions: `per_call` whole images of a short row in one call, or chunks of
    // QC_DOT positions of one image.
    let (chunk, per_call) = if q_len >= QC_DOT {
        (QC_DOT, 1)
    } else {
        (q_len, (QC_DOT / q_len).clamp(1, images))
    };
    let chunks = q_len.div_ceil(chunk);
    let units = images.div_ceil(per_call) * chunks;
    let blocks = kb_n * ob_n;
    let splits = DW_MIN_TASKS.div_ceil(blocks).clamp(1, units);
    let units_per = units.div_ceil(splits);
    let splits = units.div_ceil(units_per);
    let tile = ta * tb * lanes;
    // Per task: its block's sums over its share of the positions, lanes reduced, [o][r] of
    // the block.
    let partial: Vec<Vec<f32>> = (0..blocks * splits)
        .into_par_iter()
        .map(|t| {
            let (blk, sp) = (t / splits, t % splits);
            let (kb, ob) = (blk / ob_n, blk % ob_n);
            let (kt0, kt1) = (kb * DW_KT, ((kb + 1) * DW_KT).min(k_tiles));
            let (ot0, ot1) = (ob * DW_OT, ((ob + 1) * DW_OT).min(o_tiles));
            let (nk, no) = (kt1 - kt0, ot1 - ot0);
            let mut acc = vec![0.0f32; nk * no * tile];
            let mut a = vec![std::ptr::null::<f32>(); ta];
            let mut b = vec![std::ptr::null::<f32>(); tb];
            for u in sp * units_per..((sp + 1) * units_per).min(units) {
                let (ig, ch) = (u / chunks, u % chunks);
                let n0 = ig * per_call;
                let count = per_call.min(images - n0);
                let q0 = ch * chunk;
                let len = chunk.min(q_len - q0);
                let seg = Segments {
                    count,
                    a_stride: dyp.image,
                    b_stride: xp.image,
                };
                // Row `off` of segment s is data[(n0 + s)·image + off ..][.. len]; checked for
                // the last segment, the others lie below it in the same buffer.
                let row = |p: &Padded, off: usize| {
                    let start = n0 * p.image + off;
                    assert!(start + (count - 1) * p.image + len <= p.data.len());
                    p.data[start..].as_ptr()
                };
                for kt in kt0..kt1 {
                    for (j, bj) in b.iter_mut().enumerate() {
                        // rows past the end repeat the last row; their sums are dropped
                        let r = (kt * tb + j).min(k - 1);
                        *bj = row(xp, offs[r] + q0);
                    }
                    for ot in ot0..ot1 {
                        for (i, ai) in a.iter_mut().enumerate() {
                            let oi = (ot * ta + i).min(rows - 1);
                            *ai = row(dyp, oi * dyp.plane + dy_off + q0);
                        }
                        let at = ((kt - kt0) * no + (ot - ot0)) * tile;
                        // Safety: every segment of every row is in bounds (checked above).
                        unsafe { dot.run_lanes(len, seg, &a, &b, &mut acc[at..at + tile]) };
                    }
                }
            }
            let (r0, r1) = (kt0 * tb, (kt1 * tb).min(k));
            let (o0, o1) = (ot0 * ta, (ot1 * ta).min(rows));
            let mut out = vec![0.0f32; (o1 - o0) * (r1 - r0)];
            for oi in o0..o1 {
                for r in r0..r1 {
                    let (ot, i, kt, j) = (oi / ta, oi % ta, r / tb, r % tb);
                    let at = ((kt - kt0) * no + (ot - ot0)) * tile + (i * tb + j) * lanes;
                    out[(oi - o0) * (r1 - r0) + (r - r0)] = acc[at..at + lanes].iter().sum();
                }
            }
            out
        })
        .collect();
    let mut dw = vec![0.0f32; rows * k];
    for (t, part) in partial.iter().enumerate() {
        let blk = t / splits;
        let (kb, ob) = (blk / ob_n, blk % ob_n);
        let (r0, r1) = (kb * DW_KT * tb, ((kb + 1) * DW_KT * tb).min(k));
        let (o0, o1) = (ob * DW_OT * ta, ((ob + 1) * DW_OT * ta).min(rows));
        for oi in o0..o1 {
            let src = &part[(oi - o0) * (r1 - r0)..][..r1 - r0];
            for (d, &v) in dw[oi * k + r0..oi * k + r1].iter_mut().zip(src) {
                *d += v; // splits of one block in order, from zero
            }
        }
    }
    dw
}

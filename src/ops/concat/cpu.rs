//! Channel concatenation of NCHW tensors: per image, each input contributes one contiguous
//! block of `C_t·H·W` values, so both directions are block copies.

/// `xs[t]` has `chans[t]` channels of `hw` values per image, for `n` images.
pub fn forward(xs: &[&[f32]], chans: &[usize], n: usize, hw: usize) -> Vec<f32> {
    let total: usize = chans.iter().sum();
    let mut out = Vec::with_capacity(n * total * hw);
    for b in 0..n {
        for (x, &c) in xs.iter().zip(chans) {
            out.extend_from_slice(&x[b * c * hw..(b + 1) * c * hw]);
        }
    }
    out
}

/// Splits dy back into one block per input.
pub fn backward(dy: &[f32], chans: &[usize], n: usize, hw: usize) -> Vec<Vec<f32>> {
    let total: usize = chans.iter().sum();
    let mut outs: Vec<Vec<f32>> = chans
        .iter()
        .map(|&c| Vec::with_capacity(n * c * hw))
        .collect();
    for b in 0..n {
        let mut start = b * total * hw;
        for (o, &c) in outs.iter_mut().zip(chans) {
            o.extend_from_slice(&dy[start..start + c * hw]);
            start += c * hw;
        }
    }
    outs
}

//! Channel concatenation of NCHW tensors: per image, each input contributes one contiguous
//! block (its [`ConcatPart`]), so both directions are block copies.
use super::ConcatPart;

/// `xs[t]` laid out by `parts[t]`.
pub fn forward(xs: &[&[f32]], parts: &[ConcatPart]) -> Vec<f32> {
    let mut out = vec![0.0f32; parts[0].whole_len()];
    for (x, p) in xs.iter().zip(parts) {
        let (part, whole, offset) = (p.part as usize, p.whole as usize, p.offset as usize);
        for (img, block) in x
            .chunks_exact(part.max(1))
            .take(p.images as usize)
            .enumerate()
        {
            out[img * whole + offset..][..part].copy_from_slice(block);
        }
    }
    out
}

/// Splits dy back into one block per input.
pub fn backward(dy: &[f32], parts: &[ConcatPart]) -> Vec<Vec<f32>> {
    parts
        .iter()
        .map(|p| {
            let (part, whole, offset) = (p.part as usize, p.whole as usize, p.offset as usize);
            let mut dx = Vec::with_capacity(p.len());
            for img in 0..p.images as usize {
                dx.extend_from_slice(&dy[img * whole + offset..][..part]);
            }
            dx
        })
        .collect()
}

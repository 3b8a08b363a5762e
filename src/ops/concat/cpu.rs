//! Channel concatenation of NCHW tensors: per image, each input contributes one contiguous
//! block (its [`ConcatPart`]), so both directions are block copies, split into parallel tasks
//! of whole blocks (images of the output forward, images of each input backward) or, when the
//! images are few, of pieces of the blocks.
use rayon::prelude::*;

use super::ConcatPart;

/// Floats per parallel copy task.
const PIECE: usize = 1 << 15;

/// `xs[t]` laid out by `parts[t]`.
pub fn forward(xs: &[&[f32]], parts: &[ConcatPart]) -> Vec<f32> {
    let whole = parts[0].whole as usize;
    let len = parts[0].whole_len();
    let mut out = vec![0.0f32; len];
    if whole == 0 {
        return out;
    }
    out.par_chunks_mut(whole)
        .enumerate()
        .for_each(|(img, dst)| {
            for (x, p) in xs.iter().zip(parts) {
                let (part, offset) = (p.part as usize, p.offset as usize);
                if img < p.images as usize && part > 0 {
                    let src = &x[img * part..][..part];
                    dst[offset..offset + part]
                        .par_chunks_mut(PIECE)
                        .zip(src.par_chunks(PIECE))
                        .for_each(|(d, s)| d.copy_from_slice(s));
                }
            }
        });
    out
}

/// Splits dy back into one block per input.
pub fn backward(dy: &[f32], parts: &[ConcatPart]) -> Vec<Vec<f32>> {
    parts
        .iter()
        .map(|p| {
            let (part, whole, offset) = (p.part as usize, p.whole as usize, p.offset as usize);
            let mut dx = vec![0.0f32; p.len()];
            if part > 0 {
                dx.par_chunks_mut(part).enumerate().for_each(|(img, d)| {
                    let src = &dy[img * whole + offset..][..part];
                    d.par_chunks_mut(PIECE)
                        .zip(src.par_chunks(PIECE))
                        .for_each(|(d, s)| d.copy_from_slice(s));
                });
            }
            dx
        })
        .collect()
}

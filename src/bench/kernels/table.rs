//! The kernel report as an aligned text table.
use super::KernelReport;

/// The report as an aligned table.
pub fn format_table(rep: &KernelReport) -> String {
    let mut s = format!(
        "dcl bench kernels on {} ({})\nbatch {}, {}x{}, width x{}; {} timed reps after {} warm-up, median; timing: {}\n",
        rep.device, rep.device_info, rep.batch, rep.size, rep.size, rep.width_mult, rep.reps, rep.warmup, rep.timing
    );
    for n in &rep.notes {
        s += &format!("note: {n}\n");
    }
    let c = &rep.ceilings;
    s += &format!(
        "ceilings: copy {:.1} GB/s ({:.0} MiB read + written), GEMM {:.2} TFLOP/s ({}, {})\n",
        c.copy_gb_per_s,
        c.copy_bytes / (1u64 << 20) as f64,
        c.gemm_tflop_per_s,
        c.gemm_shape,
        c.gemm_math
    );
    let headers = [
        "op",
        "pass",
        "shape",
        "median ms",
        "min ms",
        "GB/s",
        "TFLOP/s",
        "% ceiling",
        "note",
    ];
    let cells: Vec<[String; 9]> = rep
        .rows
        .iter()
        .map(|r| {
            [
                r.op.clone(),
                r.pass.clone(),
                r.shape.clone(),
                format!("{:.4}", r.median_ms),
                format!("{:.4}", r.min_ms),
                r.gb_per_s.map(|v| format!("{v:.1}")).unwrap_or_default(),
                r.tflop_per_s.map(|v| format!("{v:.3}")).unwrap_or_default(),
                r.pct_of_ceiling
                    .map(|v| format!("{v:.0}%"))
                    .unwrap_or_default(),
                r.note.clone(),
            ]
        })
        .collect();
    let mut width = headers.map(|h| h.chars().count());
    for row in &cells {
        for (w, c) in width.iter_mut().zip(row) {
            *w = (*w).max(c.chars().count());
        }
    }
    let line = |cols: &[String]| -> String {
        let mut l = String::new();
        for (i, (c, w)) in cols.iter().zip(width).enumerate() {
            let pad = w - c.chars().count();
            // text columns left-aligned, numbers right-aligned, the note last and unpadded
            if i == 8 {
                l += c;
            } else if (3..8).contains(&i) {
                l += &" ".repeat(pad);
                l += c;
                l += "  ";
            } else {
                l += c;
                l += &" ".repeat(pad + 2);
            }
        }
        l.trim_end().to_string() + "\n"
    };
    s += &line(&headers.map(String::from));
    for row in &cells {
        s += &line(row);
    }
    s
}

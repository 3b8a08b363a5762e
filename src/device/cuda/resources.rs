//! What a compiled kernel needs from a multiprocessor, read from NVRTC's output without a GPU:
//! registers, spills, stack and static shared memory from ptxas's `-v` report, parameter sizes
//! from the PTX, and how many of a launch's blocks then fit on one SM of an architecture. CI
//! checks these against each launcher's plan (tests/nvrtc_kernels.rs), so a kernel that would
//! run at a fraction of the intended occupancy, spill, or take a u32 where the launcher passes
//! a u64 fails there, not on a GPU.
use std::collections::BTreeMap;

/// ptxas's report for one entry point.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct KernelResources {
    pub name: String,
    pub registers: u32,
    pub spill_stores: u32,
    pub spill_loads: u32,
    pub stack_bytes: u32,
    pub static_smem_bytes: u32,
}

fn number_before(line: &str, unit: &str) -> Option<u32> {
    let end = line.find(unit)?;
    line[..end]
        .trim_end()
        .rsplit(|c: char| !c.is_ascii_digit())
        .next()
        .and_then(|n| n.parse().ok())
}

/// Parses the `ptxas info` lines of an NVRTC log compiled with `--ptxas-options=-v`.
pub fn parse_ptxas_report(log: &str) -> Vec<KernelResources> {
    let mut out: Vec<KernelResources> = Vec::new();
    for line in log.lines() {
        if let Some(rest) = line.split("Compiling entry function '").nth(1) {
            let name = rest.split('\'').next().unwrap_or("").to_string();
            out.push(KernelResources {
                name,
                ..Default::default()
            });
            continue;
        }
        let Some(k) = out.last_mut() else { continue };
        if line.contains("bytes stack frame") {
            k.stack_bytes = number_before(line, "bytes stack frame").unwrap_or(0);
            k.spill_stores = number_before(line, "bytes spill stores").unwrap_or(0);
            k.spill_loads = number_before(line, "bytes spill loads").unwrap_or(0);
        } else if line.contains("Used") && line.contains("registers") {
            k.registers = number_before(line, "registers").unwrap_or(0);
            k.static_smem_bytes = number_before(line, "bytes smem").unwrap_or(0);
        }
    }
    out
}

/// Bytes of each parameter of every `.entry` in a PTX module, in order.
pub fn ptx_entry_params(ptx: &str) -> BTreeMap<String, Vec<usize>> {
    let mut out = BTreeMap::new();
    let mut lines = ptx.lines();
    while let Some(line) = lines.next() {
        let Some(rest) = line.split(".entry ").nth(1) else {
            continue;
        };
        let name = rest.split('(').next().unwrap_or("").trim().to_string();
        let mut sizes = Vec::new();
        for p in lines.by_ref() {
            let p = p.trim();
            if p.starts_with(')') {
                break;
            }
            if !p.starts_with(".param") {
                continue;
            }
            let size = if let Some(arr) = p.split('[').nth(1) {
                // `.param .align A .b8 name[N]`: a struct of N bytes
                arr.split(']')
                    .next()
                    .and_then(|n| n.parse().ok())
                    .unwrap_or(0)
            } else {
                let ty = p.split_whitespace().nth(1).unwrap_or("");
                match ty.get(2..) {
                    Some("64") => 8,
                    Some("32") => 4,
                    Some("16") => 2,
                    Some("8") => 1,
                    _ => 0,
                }
            };
            sizes.push(size);
        }
        out.insert(name, sizes);
    }
    out
}

/// The per-SM limits of an architecture that decide how many blocks fit.
#[derive(Clone, Copy, Debug)]
pub struct SmLimits {
    pub arch: &'static str,
    pub registers: u32,
    pub max_threads: u32,
    pub max_blocks: u32,
    /// Shared memory one block may use without opting in.
    pub smem_per_block: u32,
    pub smem_per_sm: u32,
}

/// The CI targets (CUDA C Programming Guide, "Technical Specifications per Compute
/// Capability").
pub const TARGETS: [SmLimits; 4] = [
    SmLimits {
        arch: "sm_80",
        registers: 65536,
        max_threads: 2048,
        max_blocks: 32,
        smem_per_block: 48 << 10,
        smem_per_sm: 164 << 10,
    },
    SmLimits {
        arch: "sm_86",
        registers: 65536,
        max_threads: 1536,
        max_blocks: 16,
        smem_per_block: 48 << 10,
        smem_per_sm: 100 << 10,
    },
    SmLimits {
        arch: "sm_89",
        registers: 65536,
        max_threads: 1536,
        max_blocks: 24,
        smem_per_block: 48 << 10,
        smem_per_sm: 100 << 10,
    },
    SmLimits {
        arch: "sm_90",
        registers: 65536,
        max_threads: 2048,
        max_blocks: 32,
        smem_per_block: 48 << 10,
        smem_per_sm: 228 << 10,
    },
];

/// Blocks of `threads` that fit on one SM with `r`'s registers and shared memory (plus
/// `dynamic_smem` per block). Registers are allocated per warp in units of 256.
pub fn blocks_per_sm(r: &KernelResources, threads: u32, dynamic_smem: u32, sm: &SmLimits) -> u32 {
    let warps = threads.div_ceil(32).max(1);
    let regs_per_warp = (r.registers.max(1) * 32).div_ceil(256) * 256;
    let by_regs = sm.registers / (regs_per_warp * warps);
    let by_threads = sm.max_threads / (warps * 32);
    let smem = r.static_smem_bytes + dynamic_smem;
    let by_smem = sm.smem_per_sm.checked_div(smem).unwrap_or(u32::MAX);
    by_regs.min(by_threads).min(sm.max_blocks).min(by_smem)
}

#[cfg(test)]
mod tests {
    use super::*;

    const LOG: &str = "ptxas info    : 0 bytes gmem\n\
ptxas info    : Compiling entry function 'gmp_fused16_bwd_f32' for 'sm_90'\n\
ptxas info    : Function properties for gmp_fused16_bwd_f32\n\
ptxas         .     0 bytes stack frame, 0 bytes spill stores, 0 bytes spill loads\n\
ptxas info    : Used 226 registers, used 0 barriers\n\
ptxas info    : Compile time = 280.104 ms\n\
ptxas info    : Compiling entry function 'sum_partial_f32' for 'sm_90'\n\
ptxas info    : Function properties for sum_partial_f32\n\
ptxas         .     8 bytes stack frame, 12 bytes spill stores, 16 bytes spill loads\n\
ptxas info    : Used 18 registers, used 1 barriers, 132 bytes smem\n";

    #[test]
    fn ptxas_report_is_read_per_kernel() {
        let r = parse_ptxas_report(LOG);
        assert_eq!(r.len(), 2);
        assert_eq!(
            (r[0].name.as_str(), r[0].registers),
            ("gmp_fused16_bwd_f32", 226)
        );
        assert_eq!(r[0].static_smem_bytes, 0);
        assert_eq!(
            (
                r[1].registers,
                r[1].stack_bytes,
                r[1].spill_stores,
                r[1].spill_loads
            ),
            (18, 8, 12, 16)
        );
        assert_eq!(r[1].static_smem_bytes, 132);
    }

    #[test]
    fn ptx_parameters_have_their_sizes() {
        let ptx = ".visible .entry bn_fwd_f32(\n\t.param .align 8 .b8 bn_fwd_f32_param_0[16],\n\
                   \t.param .u64 .ptr .align 1 bn_fwd_f32_param_1,\n\t.param .f32 bn_fwd_f32_param_2,\n\
                   \t.param .u32 bn_fwd_f32_param_3\n)\n{\n}\n.visible .entry k2(\n)\n{\n}\n";
        let p = ptx_entry_params(ptx);
        assert_eq!(p["bn_fwd_f32"], vec![16, 8, 4, 4]);
        assert_eq!(p["k2"], Vec::<usize>::new());
    }

    #[test]
    fn occupancy_follows_registers_threads_and_shared_memory() {
        let sm90 = &TARGETS[3];
        let r = |registers, static_smem_bytes| KernelResources {
            registers,
            static_smem_bytes,
            ..Default::default()
        };
        // 226 registers x 256 threads: 58 KiB of the 64 Ki registers, one block
        assert_eq!(blocks_per_sm(&r(226, 0), 256, 0, sm90), 1);
        assert_eq!(blocks_per_sm(&r(128, 0), 256, 0, sm90), 2);
        // 32 registers: the thread limit (2048 / 256) decides
        assert_eq!(blocks_per_sm(&r(32, 0), 256, 0, sm90), 8);
        assert_eq!(blocks_per_sm(&r(32, 0), 256, 0, &TARGETS[1]), 6);
        // shared memory
        assert_eq!(blocks_per_sm(&r(16, 100 << 10), 256, 0, sm90), 2);
    }
}

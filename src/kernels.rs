//! The CUDA C kernels the GPU checks use (`kernels/`), embedded as source so that NVRTC can
//! compile them at run time (tests/nvrtc.rs does, for the H200's `compute_90`) and the GPU
//! kit (`scripts/gpu/`) can carry them; plus their PTX when the build machine had `nvcc`.
//!
//! - `cudalloc_fill_tag(u64 *block, u64 words, u64 owner)`: every word gets a tag derived
//!   from its own address and the owner;
//! - `cudalloc_verify_tag(const u64 *block, u64 words, u64 owner, u64 *mismatches)`: adds the
//!   count of words that lost their tag;
//! - `cudalloc_poison(u64 *block, u64 words)`: a pattern no tag takes, for freed blocks.
//!
//! This module only hands out text: it must not load a driver or compile anything (the
//! allocator never runs kernels; only checks of it do).

/// One kernel source file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Source {
    /// The file name under `kernels/`.
    pub file: &'static str,
    /// Its CUDA C text (no `#include`s: NVRTC compiles it alone).
    pub text: &'static str,
    /// The `extern "C"` kernels it defines.
    pub kernels: &'static [&'static str],
}

/// Every kernel source of the crate.
pub const SOURCES: &[Source] = &[Source {
    file: "tag.cu",
    text: include_str!("../kernels/tag.cu"),
    kernels: &[
        "cudalloc_fill_tag",
        "cudalloc_verify_tag",
        "cudalloc_poison",
    ],
}];

/// The word `cudalloc_poison` writes; `cudalloc_fill_tag` never does.
pub const POISON: u64 = 0xdead_beef_dead_beef;

/// `kernels/tag.cu` compiled to PTX for `compute_90` by `nvcc` at build time, when the build
/// machine had one (`None` otherwise: compile [`SOURCES`] with NVRTC instead).
pub const TAG_PTX: Option<&str> = {
    #[cfg(cudalloc_kernels_ptx)]
    {
        Some(include_str!(concat!(env!("OUT_DIR"), "/tag.ptx")))
    }
    #[cfg(not(cudalloc_kernels_ptx))]
    {
        None
    }
};

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_named_kernel_is_defined_extern_c() {
        for s in SOURCES {
            assert!(
                !s.text.contains("#include"),
                "{} must compile alone",
                s.file
            );
            for k in s.kernels {
                let decl = format!("extern \"C\" __global__ void {k}(");
                assert!(s.text.contains(&decl), "{} lacks {decl}", s.file);
            }
        }
        assert!(SOURCES[0].text.contains("0xdeadbeefdeadbeefULL"));
        if let Some(ptx) = TAG_PTX {
            for k in SOURCES[0].kernels {
                assert!(
                    ptx.contains(&format!(".entry {k}(")),
                    "build.rs's PTX lacks {k}"
                );
            }
        }
        assert_eq!(POISON, 0xdeadbeefdeadbeef);
    }
}

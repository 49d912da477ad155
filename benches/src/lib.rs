//! Benchmarks of the outpaint crates; the code lives in `benches/*.rs`, the scripts and the
//! recorded figures in `benches/RESULTS.md`.
//!
//! ```sh
//! cargo bench -p outpaint-benches --bench infill
//! ```

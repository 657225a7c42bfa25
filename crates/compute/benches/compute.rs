//! Compute benchmarks (filled in below).
fn main() {}

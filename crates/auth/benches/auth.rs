//! Login and verify throughput (written next).

fn main() {}

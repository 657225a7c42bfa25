//! Reads and writes per second (written next).

fn main() {}

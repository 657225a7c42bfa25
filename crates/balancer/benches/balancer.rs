//! The balancer against nginx (written next).
fn main() {}

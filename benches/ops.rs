//! Placeholder, filled in by the benchmark suite.
fn main() {}

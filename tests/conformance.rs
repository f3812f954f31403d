//! Conformance client: see below.
fn main() {}

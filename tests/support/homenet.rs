//! Test support binary: the emulated home network (to be written).
fn main() {}

//! taskctl (in progress).
fn main() {}

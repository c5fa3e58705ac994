//! `luxtensor-node`: the full node binary.

fn main() {}

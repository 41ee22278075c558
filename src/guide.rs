//! The guide's pages (`docs/guide/`), compiled here as doctests so that every Rust block in
//! them builds: this module exists only under `cargo test`'s doctest pass.

#[doc = include_str!("../docs/guide/python.md")]
pub struct ComingFromPython;

#[doc = include_str!("../docs/guide/procspawn.md")]
pub struct ComingFromProcspawn;

#[doc = include_str!("../docs/guide/operating.md")]
pub struct Operating;

#[doc = include_str!("../docs/guide/cookbook.md")]
pub struct Cookbook;

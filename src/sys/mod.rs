//! Operating-system and runtime primitives that every other layer builds on: signalling a
//! process through a pidfd, the executable's own path, waiting with a deadline, and turning a
//! panic into data.

pub(crate) mod exe;
pub(crate) mod panic;
pub(crate) mod signal;
pub(crate) mod wait;

//! Operating-system and runtime primitives that every other layer builds on: signalling a
//! process group (and the stopper a cancel fires), the executable's own path, waiting with a
//! deadline, turning a panic into data, the driver's own poller and executor, shared memory
//! for large frames, and `SIGPIPE` for a worker that serves before `main`.

pub(crate) mod exe;
pub(crate) mod panic;
#[cfg(any(target_os = "linux", target_os = "android"))]
pub(crate) mod poller;
#[cfg(not(any(target_os = "linux", target_os = "android")))]
#[path = "poller_elsewhere.rs"]
pub(crate) mod poller;
pub(crate) mod reactor;
#[cfg(any(target_os = "linux", target_os = "android"))]
pub(crate) mod region;
#[cfg(not(any(target_os = "linux", target_os = "android")))]
#[path = "region_elsewhere.rs"]
pub(crate) mod region;
pub(crate) mod signal;
#[cfg(feature = "before-main")]
pub(crate) mod sigpipe;
pub(crate) mod wait;

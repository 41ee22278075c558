//! A task: its shared state, its [`TaskStatus`], its [`TaskInfo`] snapshot and its handle,
//! [`ProcessTask`]. Nothing here knows how a pool schedules or runs it.

pub(crate) mod args;
pub(crate) mod blocking;
mod handle;
mod info;
pub(crate) mod options;
mod report;
pub(crate) mod shared;
mod status;
pub(crate) mod stream;

pub(crate) use handle::hand_end_to_driver;
pub use handle::ProcessTask;
pub use info::TaskInfo;
pub use report::{Progress, TaskOutput};
pub use status::TaskStatus;
pub use stream::ProcessStream;

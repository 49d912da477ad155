//! [`SqliteStore`]: the embedded store, one SQLite file in WAL mode.
//!
//! PLACEHOLDER: the implementation is being written on the `queue` branch.

use std::path::PathBuf;

use crate::CallbackRenderer;

/// How to open the SQLite store.
#[derive(Debug, Clone)]
pub struct SqliteOptions {
    /// The database file; created with its folder when missing.
    pub path: PathBuf,
    /// Whether each commit waits for the disk (`synchronous=FULL`): acknowledged tasks then
    /// survive power loss, not only crashes.
    pub durable_commits: bool,
}

/// The embedded store.
pub struct SqliteStore {
    _renderer: CallbackRenderer,
}

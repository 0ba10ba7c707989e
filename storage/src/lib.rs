//! Project file storage.
//!
//! - [`paths`]: where a project's files may live on this server. Roots derive only
//!   from the project's storage policy and must stay inside an allowed base
//!   (no `..`, no symlink escapes).
//! - [`ObjectStore`]: an opendal operator behind project-scoped, validated keys;
//!   local filesystem by default, S3-compatible optionally, memory in tests.

//! - [`ProjectFiles`]: one project's files across its local root and its
//!   optional S3 prefix (written to the primary, read from where each lives).

mod deferred;
pub mod paths;
mod project;
mod store;

pub use deferred::{Unsynced, sync_files};
pub use project::{ProjectFiles, S3Location};
pub use store::{LocalWriter, ObjectKey, ObjectStore, RemoteObject, S3Config, StorageError};

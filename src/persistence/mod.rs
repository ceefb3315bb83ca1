//! Durable state on SQLite: the journal, key snapshots, order records, the group-commit writer,
//! backup and restore. Nothing here knows about actors, HTTP or the cluster.

pub mod backup;
pub mod codec;
pub mod compactor;
pub mod keys;
pub mod store;
pub mod tails;
pub mod writer;

pub use store::{
    ExportCursor, ExportPass, KeyImage, LoadedKey, OrderImage, SegmentImage, StorageError,
};
pub use writer::{ExportPage, Request, Writer, WriterHandle};

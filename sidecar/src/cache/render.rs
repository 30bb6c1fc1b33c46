//! Between a dialect's buffered answer and its stream: a stream miss is assembled into the
//! buffered answer it stands for, and a stream hit is rendered from it as the same events a live
//! stream has.

use bytes::Bytes;

use crate::dialect::Dialect;
use crate::usage::Usage;

/// The buffered answer a complete stream of `dialect`'s events stands for.
pub fn assemble(_dialect: Dialect, _events: &[u8]) -> Option<Bytes> {
    None
}

/// The events of a stream answering with `body`.
pub fn stream(
    _dialect: Dialect,
    _body: &[u8],
    _usage: &Usage,
    _include_usage: bool,
) -> Option<Bytes> {
    None
}

/// Whether `body` is a refusal or was filtered (never stored).
pub fn refused(_dialect: Dialect, _body: &[u8]) -> bool {
    false
}

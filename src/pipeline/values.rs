//! The header values made for each request (its id, a started `traceparent`, the identity
//! headers) cut from one per-thread block instead of an allocation each (issue 15).
//!
//! A [`HeaderValue`] owns its bytes as [`bytes::Bytes`]: made from a slice, each is an
//! allocation, and the request id (sent to the upstream and to the caller) one more when
//! it is first shared. Here the bytes go into the thread's current block and the value is a
//! counted slice of it: no allocation per value, a reference count instead, and one block
//! allocation per few dozen values. A block is freed when the last value cut from it is
//! dropped; a long-lived request (a WebSocket) keeps at most one block of [`BLOCK`] bytes.
use std::cell::RefCell;

use bytes::BytesMut;
use http::header::{HeaderValue, InvalidHeaderValue};

/// One block's bytes: about forty of a request's values (ids of 32 bytes, `traceparent`
/// of 55, an address or a credential name of a few dozen).
const BLOCK: usize = 4096;

/// Longer values are copied on their own: one large value does not take a block.
const LARGEST: usize = 256;

thread_local! {
    static CURRENT: RefCell<BytesMut> = RefCell::new(BytesMut::new());
}

/// `text` as a header value, checked as [`HeaderValue::from_bytes`] checks it.
pub fn value(text: &[u8]) -> Result<HeaderValue, InvalidHeaderValue> {
    if text.len() > LARGEST {
        return HeaderValue::from_bytes(text);
    }
    CURRENT
        .try_with(|current| {
            let Ok(mut block) = current.try_borrow_mut() else {
                return HeaderValue::from_bytes(text);
            };
            if block.capacity() < text.len() {
                *block = BytesMut::with_capacity(BLOCK);
            }
            block.extend_from_slice(text);
            // `split` leaves the rest of the block's room behind for the next value.
            HeaderValue::from_maybe_shared(block.split().freeze())
        })
        .unwrap_or_else(|_| HeaderValue::from_bytes(text))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_keep_their_bytes_across_blocks() {
        // Enough values to fill several blocks, each checked after all were made.
        let texts: Vec<String> = (0..1000).map(|i| format!("value-{i}-{}", "x".repeat(i % 60))).collect();
        let values: Vec<HeaderValue> = texts.iter().map(|t| value(t.as_bytes()).unwrap()).collect();
        for (t, v) in texts.iter().zip(&values) {
            assert_eq!(v.as_bytes(), t.as_bytes());
        }
        // A value outlives the block it was cut from being replaced, and a clone shares it.
        let kept = values[3].clone();
        drop(values);
        assert_eq!(kept.as_bytes(), texts[3].as_bytes());
    }

    #[test]
    fn refuses_what_from_bytes_refuses_and_leaves_the_next_value_whole() {
        for bad in [&b"a\r\nb"[..], b"\0", b"x\ny"] {
            assert!(value(bad).is_err());
            assert!(HeaderValue::from_bytes(bad).is_err());
        }
        assert_eq!(value(b"after").unwrap(), "after");
        let long = "l".repeat(LARGEST + 1);
        assert_eq!(value(long.as_bytes()).unwrap(), long.as_str());
        assert_eq!(value(b"").unwrap(), "");
    }
}

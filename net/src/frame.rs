//! Length-prefixed frames: a 4-byte big-endian length, then that many bytes.

use futures::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use thiserror::Error;

#[derive(Debug, Error)]
pub enum FrameError {
    #[error("frame of {len} bytes exceeds the {max}-byte bound")]
    TooLarge { len: usize, max: usize },
    #[error("stream closed")]
    Closed,
    #[error("i/o: {0}")]
    Io(#[from] std::io::Error),
}

/// Read one frame, refusing any longer than `max` before allocating for it.
///
/// # Errors
/// [`FrameError::Closed`] at a clean end of stream, `TooLarge`, or I/O errors.
pub async fn read_frame<R: AsyncRead + Unpin>(
    r: &mut R,
    max: usize,
) -> Result<Vec<u8>, FrameError> {
    let mut len = [0u8; 4];
    match r.read_exact(&mut len).await {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Err(FrameError::Closed),
        Err(e) => return Err(e.into()),
    }
    let len = u32::from_be_bytes(len) as usize;
    if len > max {
        return Err(FrameError::TooLarge { len, max });
    }
    // The buffer grows with the bytes that actually arrive, a chunk at a time: a
    // peer that claims a large frame and sends a few bytes holds one chunk of ours,
    // not `len`. (Reserving exactly each chunk keeps the capacity at `len`.)
    let mut buf = Vec::new();
    while buf.len() < len {
        let from = buf.len();
        let chunk = (len - from).min(FRAME_CHUNK);
        buf.reserve_exact(chunk);
        buf.resize(from + chunk, 0);
        r.read_exact(&mut buf[from..]).await?;
    }
    Ok(buf)
}

/// How much of a frame's buffer is allocated ahead of its bytes (most consensus
/// messages fit in one chunk).
pub const FRAME_CHUNK: usize = 64 * 1024;

/// Write several frames with one flush.
///
/// # Errors
/// I/O errors, or `TooLarge` for a frame whose length does not fit in 4 bytes.
pub async fn write_frames<W: AsyncWrite + Unpin>(
    w: &mut W,
    frames: &[std::sync::Arc<Vec<u8>>],
) -> Result<(), FrameError> {
    let total: usize = frames.iter().map(|f| f.len() + 4).sum();
    let mut buf = Vec::with_capacity(total);
    for f in frames {
        let len = u32::try_from(f.len()).map_err(|_| FrameError::TooLarge {
            len: f.len(),
            max: u32::MAX as usize,
        })?;
        buf.extend_from_slice(&len.to_be_bytes());
        buf.extend_from_slice(f);
    }
    w.write_all(&buf).await?;
    w.flush().await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[tokio::test]
    async fn frames_round_trip_and_oversize_is_refused() {
        let mut buf = Vec::new();
        write_frames(&mut buf, &[Arc::new(b"hello".to_vec()), Arc::new(vec![])])
            .await
            .unwrap();
        let mut r = futures::io::Cursor::new(buf.clone());
        assert_eq!(read_frame(&mut r, 100).await.unwrap(), b"hello");
        assert_eq!(read_frame(&mut r, 100).await.unwrap(), b"");
        assert!(matches!(
            read_frame(&mut r, 100).await,
            Err(FrameError::Closed)
        ));
        let mut r = futures::io::Cursor::new(buf);
        assert!(matches!(
            read_frame(&mut r, 3).await,
            Err(FrameError::TooLarge { len: 5, max: 3 })
        ));
        // A length prefix promising more than is there is an error, not a hang.
        let mut r = futures::io::Cursor::new(vec![0, 0, 0, 9, 1, 2]);
        assert!(matches!(
            read_frame(&mut r, 100).await,
            Err(FrameError::Io(_))
        ));
    }

    #[tokio::test]
    async fn a_large_frame_arriving_in_pieces_is_read_whole() {
        // Larger than the initial capacity, delivered a few bytes per read: the
        // buffer grows as bytes come and the frame is returned intact.
        let payload: Vec<u8> = (0..3 * FRAME_CHUNK + 7).map(|i| (i % 251) as u8).collect();
        let mut wire = Vec::new();
        write_frames(&mut wire, &[Arc::new(payload.clone())])
            .await
            .unwrap();
        let mut r = Trickle {
            bytes: futures::io::Cursor::new(wire),
        };
        assert_eq!(read_frame(&mut r, payload.len()).await.unwrap(), payload);
    }

    /// A reader that hands out at most 1,000 bytes per read, like a slow peer.
    struct Trickle {
        bytes: futures::io::Cursor<Vec<u8>>,
    }

    impl futures::AsyncRead for Trickle {
        fn poll_read(
            mut self: std::pin::Pin<&mut Self>,
            cx: &mut std::task::Context<'_>,
            buf: &mut [u8],
        ) -> std::task::Poll<std::io::Result<usize>> {
            let n = buf.len().min(1000);
            std::pin::Pin::new(&mut self.bytes).poll_read(cx, &mut buf[..n])
        }
    }
}

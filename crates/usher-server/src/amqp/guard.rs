//! The byte stream a client sends, run through `usher_proto::amqp::FrameGuard` before
//! fe2o3-amqp's decoders see it.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use usher_proto::amqp::FrameGuard;

/// An I/O stream whose reads fail (`InvalidData`) once the client sends a frame the guard refuses.
#[derive(Debug)]
pub(super) struct Guarded<Io> {
    io: Io,
    guard: FrameGuard,
}

impl<Io> Guarded<Io> {
    pub(super) fn new(io: Io) -> Self {
        Self {
            io,
            guard: FrameGuard::new(),
        }
    }
}

impl<Io: AsyncRead + Unpin> AsyncRead for Guarded<Io> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let this = &mut *self;
        match Pin::new(&mut this.io).poll_read(cx, buf) {
            Poll::Ready(Ok(())) => {
                let fresh = buf.filled().get(before..).unwrap_or_default();
                match this.guard.check(fresh) {
                    Ok(()) => Poll::Ready(Ok(())),
                    Err(e) => {
                        // Nothing of the refused read reaches the decoder.
                        buf.set_filled(before);
                        Poll::Ready(Err(io::Error::new(io::ErrorKind::InvalidData, e)))
                    }
                }
            }
            other => other,
        }
    }
}

impl<Io: AsyncWrite + Unpin> AsyncWrite for Guarded<Io> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

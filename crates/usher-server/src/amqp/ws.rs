//! AMQP over WebSockets (subprotocol `AMQPWSB10`): after the upgrade, binary messages carry the
//! same byte stream the TLS listener reads, in pieces of any size.

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::task::{Context, Poll};

use axum::extract::ws::{Message, WebSocket};
use bytes::Bytes;
use futures_util::{Sink, SinkExt as _, Stream, StreamExt as _};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio_util::io::{CopyToBytes, SinkWriter, StreamReader};

use crate::app::{App, Protocol};

type Input = Pin<Box<dyn Stream<Item = io::Result<Bytes>> + Send>>;
type Output = Pin<Box<dyn Sink<Bytes, Error = io::Error> + Send>>;

/// A WebSocket seen as a byte stream, which is what fe2o3-amqp's acceptor reads and writes.
/// tokio-util provides both halves; only joining them into one `AsyncRead + AsyncWrite` (with
/// the `Debug` the acceptor asks for) is written here.
struct WsStream {
    reader: StreamReader<Input, Bytes>,
    writer: SinkWriter<CopyToBytes<Output>>,
}

impl std::fmt::Debug for WsStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("WsStream")
    }
}

impl AsyncRead for WsStream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.reader).poll_read(cx, buf)
    }
}

impl AsyncWrite for WsStream {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.writer).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.writer).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.writer).poll_shutdown(cx)
    }
}

/// Serves one AMQP connection on an upgraded WebSocket.
pub(crate) async fn session(
    app: App,
    endpoint: super::Endpoint,
    socket: WebSocket,
    peer: SocketAddr,
    chain: crate::x509::ClientChain,
) {
    let (sink, stream) = socket.split();
    let output: Output = Box::pin(
        sink.sink_map_err(io::Error::other)
            .with(|b: Bytes| async move { Ok::<_, io::Error>(Message::Binary(b)) }),
    );
    let input: Input = Box::pin(
        stream
            .take_while(|m| std::future::ready(!matches!(m, Ok(Message::Close(_)))))
            .filter_map(|m| {
                std::future::ready(match m {
                    Ok(Message::Binary(b)) => Some(Ok(b)),
                    Ok(Message::Text(t)) => Some(Ok(Bytes::copy_from_slice(t.as_str().as_bytes()))),
                    Ok(_) => None,
                    Err(e) => Some(Err(io::Error::other(e))),
                })
            }),
    );
    let io = WsStream {
        reader: StreamReader::new(input),
        writer: SinkWriter::new(CopyToBytes::new(output)),
    };
    let shutdown = app.shutdown.clone();
    super::serve(app, &endpoint, io, peer, chain, Protocol::AmqpWs, shutdown).await;
}

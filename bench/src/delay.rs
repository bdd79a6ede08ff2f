//! A user-space delay proxy, for measuring against a runner that is far away on a machine
//! whose kernel has no `netem`: a TCP listener on 127.0.0.1 that, per accepted connection,
//! connects to the upstream address and copies bytes both ways, each chunk released half a
//! round trip after it was read, in order and unchanged (TLS passes through end to end).
//!
//! The TCP handshake of a new connection is completed by the kernel on loopback before the
//! proxy sees it, so the proxy charges it instead: a connection's first chunk towards the
//! upstream is held until one round trip after the accept plus the usual half, which is when
//! it would arrive had SYN and SYN-ACK crossed the link first.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;

use crate::Failed;

/// Chunks read but not yet released, per direction (at most this many reads ahead).
const IN_FLIGHT: usize = 1024;
/// The largest chunk one read takes.
const CHUNK: usize = 64 * 1024;

/// A running delay proxy; dropping it stops the listener and every connection.
pub struct DelayProxy {
    /// The proxy's own address (127.0.0.1, an ephemeral port).
    pub addr: SocketAddr,
    /// The simulated round trip.
    pub rtt: Duration,
    stop: Option<oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl DelayProxy {
    /// Listens on 127.0.0.1 and forwards to `upstream` with `rtt` (half each way), on a
    /// thread and runtime of its own so that the bench's other work does not hold it up.
    pub fn start(upstream: SocketAddr, rtt: Duration) -> Result<DelayProxy, Failed> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| Failed(format!("cannot start the delay proxy's runtime: {e}")))?;
        let listener = runtime
            .block_on(TcpListener::bind("127.0.0.1:0"))
            .map_err(|e| Failed(format!("the delay proxy cannot listen on 127.0.0.1: {e}")))?;
        let addr = listener
            .local_addr()
            .map_err(|e| Failed(format!("the delay proxy has no address: {e}")))?;
        let (stop, stopped) = oneshot::channel();
        let thread = std::thread::Builder::new()
            .name("delay-proxy".to_owned())
            .spawn(move || {
                runtime.block_on(async move {
                    tokio::select! {
                        () = serve(listener, upstream, rtt) => {}
                        _ = stopped => {}
                    }
                });
                // Dropping the runtime here ends every connection task.
            })
            .map_err(|e| Failed(format!("cannot start the delay proxy's thread: {e}")))?;
        Ok(DelayProxy {
            addr,
            rtt,
            stop: Some(stop),
            thread: Some(thread),
        })
    }

    /// `https://127.0.0.1:PORT`: the proxy as an HTTPS origin (the runner's certificate names
    /// 127.0.0.1, so any port will do).
    pub fn https_origin(&self) -> String {
        format!("https://{}", self.addr)
    }
}

impl Drop for DelayProxy {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

async fn serve(listener: TcpListener, upstream: SocketAddr, rtt: Duration) {
    loop {
        let Ok((client, _)) = listener.accept().await else {
            continue;
        };
        let accepted = Instant::now();
        tokio::spawn(async move {
            let Ok(server) = TcpStream::connect(upstream).await else {
                return;
            };
            let _ = client.set_nodelay(true);
            let _ = server.set_nodelay(true);
            let half = rtt / 2;
            let (client_read, client_write) = client.into_split();
            let (server_read, server_write) = server.into_split();
            let up = pipe(client_read, server_write, half, accepted + rtt);
            let down = pipe(server_read, client_write, half, accepted);
            tokio::join!(up, down);
        });
    }
}

/// Copies `from` to `to`, each chunk released `delay` after it was read and never before
/// `not_before + delay`; an end of input is passed on (as a write shutdown) the same way.
async fn pipe(mut from: OwnedReadHalf, to: OwnedWriteHalf, delay: Duration, not_before: Instant) {
    let (tx, rx) = mpsc::channel::<(Instant, Option<Vec<u8>>)>(IN_FLIGHT);
    let writer = tokio::spawn(release(rx, to));
    let mut buf = vec![0u8; CHUNK];
    loop {
        let read = from.read(&mut buf).await;
        let due = Instant::now().max(not_before) + delay;
        let chunk = match read {
            Ok(0) | Err(_) => None,
            Ok(n) => Some(buf[..n].to_vec()),
        };
        let end = chunk.is_none();
        if tx.send((due, chunk)).await.is_err() || end {
            break;
        }
    }
    drop(tx);
    let _ = writer.await;
}

/// Writes each chunk at its due time, in the order read; shuts the write side down at the end.
async fn release(mut rx: mpsc::Receiver<(Instant, Option<Vec<u8>>)>, mut to: OwnedWriteHalf) {
    while let Some((due, chunk)) = rx.recv().await {
        tokio::time::sleep_until(due).await;
        match chunk {
            Some(bytes) => {
                if to.write_all(&bytes).await.is_err() {
                    return;
                }
            }
            None => break,
        }
    }
    let _ = to.shutdown().await;
}

#[cfg(test)]
mod tests {
    use std::io::{Read as _, Write as _};
    use std::net::TcpListener as StdListener;
    use std::sync::mpsc as std_mpsc;
    use std::time::Instant as StdInstant;

    use super::*;

    /// An upstream that echoes what it reads and reports when each chunk arrived.
    fn echo_upstream() -> (SocketAddr, std_mpsc::Receiver<(StdInstant, usize)>) {
        let listener = StdListener::bind("127.0.0.1:0").expect("bind");
        let addr = listener.local_addr().expect("addr");
        let (tx, rx) = std_mpsc::channel();
        std::thread::spawn(move || {
            let (mut stream, _) = listener.accept().expect("accept");
            stream.set_nodelay(true).expect("nodelay");
            let mut buf = vec![0u8; 1 << 16];
            loop {
                let n = stream.read(&mut buf).expect("read");
                if n == 0 {
                    break;
                }
                let _ = tx.send((StdInstant::now(), n));
                stream.write_all(&buf[..n]).expect("echo");
            }
        });
        (addr, rx)
    }

    #[test]
    fn bytes_pass_unchanged_and_never_before_their_due_time() {
        let rtt = Duration::from_millis(40);
        let half = rtt / 2;
        let (upstream, arrivals) = echo_upstream();
        let proxy = DelayProxy::start(upstream, rtt).expect("proxy");
        let connected = StdInstant::now();
        let mut client = std::net::TcpStream::connect(proxy.addr).expect("connect");
        client.set_nodelay(true).expect("nodelay");

        // A first small chunk: it waits for the charged handshake, then half a round trip up
        // and half a round trip back.
        let sent = StdInstant::now();
        client.write_all(b"hello").expect("write");
        let mut got = [0u8; 5];
        client.read_exact(&mut got).expect("read");
        let back = StdInstant::now();
        assert_eq!(&got, b"hello");
        let (arrived, _) = arrivals.recv().expect("upstream saw the chunk");
        assert!(
            arrived >= connected + rtt + half,
            "the first chunk reached the upstream {:?} after connecting, before the handshake \
             round trip and half a round trip",
            arrived - connected
        );
        assert!(
            back >= arrived + half,
            "the echo came back {:?} after the upstream got it, before half a round trip",
            back - arrived
        );
        assert!(back >= sent + rtt);

        // Then a megabyte of varied bytes, written while the echo is read: identical, in order.
        let data: Vec<u8> = (0..1_000_000u32)
            .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
            .collect();
        let mut writer = client.try_clone().expect("clone");
        let to_send = data.clone();
        let sending = std::thread::spawn(move || {
            let start = StdInstant::now();
            writer.write_all(&to_send).expect("write");
            start
        });
        let mut echoed = vec![0u8; data.len()];
        client.read_exact(&mut echoed).expect("read the echo");
        let done = StdInstant::now();
        let start = sending.join().expect("sender");
        assert!(
            echoed == data,
            "the bytes came back changed or out of order"
        );
        assert!(done >= start + rtt);
    }

    #[test]
    fn an_end_of_input_reaches_the_far_side() {
        let (upstream, _arrivals) = echo_upstream();
        let proxy = DelayProxy::start(upstream, Duration::from_millis(4)).expect("proxy");
        let mut client = std::net::TcpStream::connect(proxy.addr).expect("connect");
        client.write_all(b"bye").expect("write");
        client
            .shutdown(std::net::Shutdown::Write)
            .expect("shutdown");
        let mut all = Vec::new();
        client.read_to_end(&mut all).expect("read to the end");
        assert_eq!(all, b"bye");
    }
}

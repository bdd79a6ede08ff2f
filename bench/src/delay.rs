//! A user-space delay proxy, for measuring against a runner that is far away on a machine
//! whose kernel has no `netem`: a TCP listener on 127.0.0.1 that, per accepted connection,
//! connects to the upstream address and copies bytes both ways, each chunk released half a
//! round trip after it was read, in order and unchanged (TLS passes through end to end).
//!
//! The TCP handshake of a new connection is completed by the kernel on loopback before the
//! proxy sees it, so the proxy charges it instead: a connection's first chunk towards the
//! upstream is held until one round trip after the accept plus the usual half, which is when
//! it would arrive had SYN and SYN-ACK crossed the link first.

use std::io::{Read as _, Write as _};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, mpsc};
use std::time::{Duration, Instant};

use crate::Failed;

/// Chunks read but not yet released, per direction (at most this many reads ahead).
const IN_FLIGHT: usize = 1024;
/// The largest chunk one read takes.
const CHUNK: usize = 64 * 1024;

/// A running delay proxy; dropping it stops the listener and ends every connection.
///
/// Each direction of each connection has a reading and a releasing thread: the releaser
/// sleeps with the kernel's high-resolution timer until a chunk is due, so the delay is not
/// rounded up to an async runtime's millisecond ticks.
pub struct DelayProxy {
    /// The proxy's own address (127.0.0.1, an ephemeral port).
    pub addr: SocketAddr,
    /// The simulated round trip.
    pub rtt: Duration,
    stopping: Arc<AtomicBool>,
    /// Both ends of every connection accepted, shut down when the proxy stops (a bench makes
    /// a few dozen, so closed ones are not pruned).
    open: Arc<Mutex<Vec<TcpStream>>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl DelayProxy {
    /// Listens on 127.0.0.1 and forwards to `upstream` with `rtt` (half each way).
    pub fn start(upstream: SocketAddr, rtt: Duration) -> Result<DelayProxy, Failed> {
        let listener = TcpListener::bind("127.0.0.1:0")
            .map_err(|e| Failed(format!("the delay proxy cannot listen on 127.0.0.1: {e}")))?;
        let addr = listener
            .local_addr()
            .map_err(|e| Failed(format!("the delay proxy has no address: {e}")))?;
        let stopping = Arc::new(AtomicBool::new(false));
        let open = Arc::new(Mutex::new(Vec::new()));
        let (stop, streams) = (stopping.clone(), open.clone());
        let thread = std::thread::Builder::new()
            .name("delay-proxy".to_owned())
            .spawn(move || serve(&listener, upstream, rtt, &stop, &streams))
            .map_err(|e| Failed(format!("cannot start the delay proxy's thread: {e}")))?;
        Ok(DelayProxy {
            addr,
            rtt,
            stopping,
            open,
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
        self.stopping.store(true, Ordering::SeqCst);
        // Wakes the listener so that it sees the flag.
        let _ = TcpStream::connect(self.addr);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
        for stream in self
            .open
            .lock()
            .map(|mut v| v.split_off(0))
            .unwrap_or_default()
        {
            let _ = stream.shutdown(Shutdown::Both);
        }
    }
}

fn serve(
    listener: &TcpListener,
    upstream: SocketAddr,
    rtt: Duration,
    stopping: &AtomicBool,
    open: &Mutex<Vec<TcpStream>>,
) {
    for client in listener.incoming() {
        if stopping.load(Ordering::SeqCst) {
            return;
        }
        let accepted = Instant::now();
        let Ok(client) = client else { continue };
        let Ok(server) = TcpStream::connect(upstream) else {
            continue;
        };
        let _ = client.set_nodelay(true);
        let _ = server.set_nodelay(true);
        let half = rtt / 2;
        let ends = [&client, &server].map(TcpStream::try_clone);
        let [Ok(client_out), Ok(server_out)] = ends else {
            continue;
        };
        if let Ok(mut list) = open.lock() {
            list.extend(client.try_clone().ok());
            list.extend(server.try_clone().ok());
        }
        pipe(client, server_out, half, accepted + rtt);
        pipe(server, client_out, half, accepted);
    }
}

/// Copies `from` to `to` on two threads, each chunk released `delay` after it was read and
/// never before `not_before + delay`; an end of input is passed on (as a write shutdown) the
/// same way.
fn pipe(mut from: TcpStream, mut to: TcpStream, delay: Duration, not_before: Instant) {
    let (tx, rx) = mpsc::sync_channel::<(Instant, Option<Vec<u8>>)>(IN_FLIGHT);
    let _ = std::thread::Builder::new()
        .name("delay-release".to_owned())
        .spawn(move || {
            while let Ok((due, chunk)) = rx.recv() {
                let now = Instant::now();
                if due > now {
                    std::thread::sleep(due - now);
                }
                match chunk {
                    Some(bytes) if to.write_all(&bytes).is_ok() => {}
                    _ => break,
                }
            }
            let _ = to.shutdown(Shutdown::Write);
        });
    let _ = std::thread::Builder::new()
        .name("delay-read".to_owned())
        .spawn(move || {
            let mut buf = vec![0u8; CHUNK];
            loop {
                let read = from.read(&mut buf);
                let due = Instant::now().max(not_before) + delay;
                let chunk = match read {
                    Ok(0) | Err(_) => None,
                    Ok(n) => Some(buf[..n].to_vec()),
                };
                let end = chunk.is_none();
                if tx.send((due, chunk)).is_err() || end {
                    break;
                }
            }
        });
}

#[cfg(test)]
mod tests {
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

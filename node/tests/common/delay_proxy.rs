//! A TCP proxy that holds every chunk it forwards for a random delay (mean +-
//! jitter, uniform), keeping the stream's order: a delayed link without `netem`,
//! which this kernel lacks. A namespace replica's connections reach it through
//! `NetnsPlan::redirect`.

use rand::Rng;
use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, SocketAddrV4, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

pub struct DelayProxy {
    pub addr: SocketAddrV4,
    /// Bytes forwarded so far, both ways: a drill checks its link really ran
    /// through the proxy.
    pub bytes: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
}

impl DelayProxy {
    /// Listen on `bind` (port 0: any) and forward each connection to `target`.
    pub fn start(
        bind: SocketAddrV4,
        target: SocketAddrV4,
        mean: Duration,
        jitter: Duration,
    ) -> Self {
        let listener = TcpListener::bind(bind).expect("bind the delay proxy");
        let SocketAddr::V4(addr) = listener.local_addr().unwrap() else {
            unreachable!("bound to an IPv4 address")
        };
        listener.set_nonblocking(true).unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let bytes = Arc::new(AtomicU64::new(0));
        let (s, b) = (stop.clone(), bytes.clone());
        std::thread::spawn(move || {
            while !s.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok((inbound, _)) => {
                        inbound.set_nonblocking(false).unwrap();
                        if let Ok(outbound) = TcpStream::connect(target) {
                            let _ = outbound.set_nodelay(true);
                            let _ = inbound.set_nodelay(true);
                            pump(&inbound, &outbound, mean, jitter, b.clone());
                            pump(&outbound, &inbound, mean, jitter, b.clone());
                        }
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(10)),
                }
            }
        });
        Self { addr, bytes, stop }
    }
}

impl Drop for DelayProxy {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// Forward `from` to `to`: a reader stamps each chunk with its delivery time (never
/// before the previous chunk's), a writer delivers it then.
fn pump(from: &TcpStream, to: &TcpStream, mean: Duration, jitter: Duration, bytes: Arc<AtomicU64>) {
    let (mut from, mut to) = (from.try_clone().unwrap(), to.try_clone().unwrap());
    // Bounded: a writer that falls behind holds the reader back, as TCP would.
    let (tx, rx) = mpsc::sync_channel::<(Instant, Vec<u8>)>(1024);
    std::thread::spawn(move || {
        let mut rng = rand::thread_rng();
        let mut last = Instant::now();
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            match from.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    let spread = jitter.as_micros() as i64;
                    let offset = rng.gen_range(-spread..=spread);
                    let delay = (mean.as_micros() as i64 + offset).max(0) as u64;
                    last = last.max(Instant::now() + Duration::from_micros(delay));
                    if tx.send((last, buf[..n].to_vec())).is_err() {
                        break;
                    }
                }
            }
        }
    });
    std::thread::spawn(move || {
        for (at, chunk) in rx {
            std::thread::sleep(at.saturating_duration_since(Instant::now()));
            if to.write_all(&chunk).is_err() {
                break;
            }
            bytes.fetch_add(chunk.len() as u64, Ordering::Relaxed);
        }
        let _ = to.shutdown(Shutdown::Write);
    });
}

//! The light-load request loop of a shard, on three runtimes: what one small request costs in
//! CPU and round-trip time when requests arrive one at a time at a fixed rate. Run with
//! `cargo bench -p strom-perf --bench request_loop` (`-- --test` runs a few hundred requests).
//!
//! The server, pinned to the first online CPU, reads length-prefixed 1 KiB requests from one
//! loopback connection, appends each to a file with `pwrite` (as the broker's inline appends
//! do) and answers 16 bytes with `send` on the non-blocking socket (as `ResponseSender`
//! does):
//! - `glommio`: a glommio 0.9 executor built like a shard (5 ms preemption timer, a 20 ms tick
//!   task), reading through `glommio::net::TcpStream`;
//! - `io_uring`: one thread with a ring of its own (the `io-uring` crate), one RECV in flight,
//!   `submit_and_wait(1)` between requests: the floor of any io_uring executor;
//! - `blocking`: a plain thread in a blocking `recv`: the floor of the machine.
//!
//! The client, pinned to the second CPU, sends at a fixed rate (sleeping until each due time)
//! and times each round trip. A second pass runs it as `rdkafka_performance` does on a small
//! machine: the client unpinned, beside a thread that spins on a CPU for the whole run (its
//! pacing loop polls without sleeping), so the server competes for CPU with both. The server's CPU time comes from `getrusage(RUSAGE_THREAD)` on
//! its own thread. Printed per runtime: CPU microseconds per request, and round-trip
//! p50/p90/p99/p99.9/max.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::fd::{AsRawFd, RawFd};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use futures_lite::AsyncReadExt;
use glommio::{CpuSet, LocalExecutorBuilder, Placement};
use hdrhistogram::Histogram;

const REQUEST_BYTES: usize = 1024;
const RESPONSE: [u8; 16] = [7; 16];
const RATE_PER_S: u64 = 5_000;

fn thread_cpu() -> Duration {
    // SAFETY: an all-zero rusage is a valid value of this plain C struct.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: getrusage fills the struct it is given; no other memory is touched.
    unsafe { libc::getrusage(libc::RUSAGE_THREAD, &mut ru) };
    let us = |t: libc::timeval| {
        Duration::from_secs(t.tv_sec as u64) + Duration::from_micros(t.tv_usec as u64)
    };
    us(ru.ru_utime) + us(ru.ru_stime)
}

fn pin(cpu: usize) {
    // SAFETY: a zeroed cpu_set_t with one bit set, for the calling thread.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        libc::sched_setaffinity(0, size_of::<libc::cpu_set_t>(), &set);
    }
}

fn pwrite_all(fd: RawFd, data: &[u8], pos: u64) {
    // SAFETY: `data` is a live slice; `fd` is an open file.
    let n = unsafe { libc::pwrite(fd, data.as_ptr().cast(), data.len(), pos as libc::off_t) };
    assert_eq!(n as usize, data.len(), "pwrite");
}

fn send_response(fd: RawFd) {
    // SAFETY: a live 16-byte buffer; the socket is open. Loopback takes 16 bytes at once.
    let n = unsafe {
        libc::send(
            fd,
            RESPONSE.as_ptr().cast(),
            RESPONSE.len(),
            libc::MSG_NOSIGNAL,
        )
    };
    assert_eq!(n as usize, RESPONSE.len(), "send");
}

/// The request handling all three servers share: whole frames out of the bytes read, each
/// appended to the file and answered; a partial frame waits for the next read.
struct Handler {
    file: std::fs::File,
    sock: RawFd,
    buf: Vec<u8>,
    pos: u64,
    served: u64,
}

impl Handler {
    fn new(file: std::fs::File, sock: RawFd) -> Handler {
        Handler {
            file,
            sock,
            buf: Vec::new(),
            pos: 0,
            served: 0,
        }
    }

    fn on_bytes(&mut self, bytes: &[u8]) {
        assert!(!bytes.is_empty(), "client closed early");
        self.buf.extend_from_slice(bytes);
        let mut at = 0;
        while self.buf.len() - at >= 4 {
            let len = u32::from_be_bytes([
                self.buf[at],
                self.buf[at + 1],
                self.buf[at + 2],
                self.buf[at + 3],
            ]) as usize;
            if self.buf.len() - at < 4 + len {
                break;
            }
            pwrite_all(
                self.file.as_raw_fd(),
                &self.buf[at + 4..at + 4 + len],
                self.pos,
            );
            self.pos += len as u64;
            send_response(self.sock);
            self.served += 1;
            at += 4 + len;
        }
        self.buf.drain(..at);
    }
}

/// What the server thread reports: CPU time spent and requests served.
type Report = (Duration, u64);

fn serve_glommio(listener: TcpListener, cpu: usize, file: std::fs::File, n: u64) -> Report {
    let handle = LocalExecutorBuilder::new(Placement::Fixed(cpu))
        .preempt_timer(Duration::from_millis(5))
        .spawn(move || async move {
            let tick = glommio::spawn_local(async {
                loop {
                    glommio::timer::sleep(Duration::from_millis(20)).await;
                }
            })
            .detach();
            listener.set_nonblocking(true).expect("nonblocking");
            // SAFETY: the glommio listener takes over a listening socket this closure owns.
            let listener = unsafe {
                <glommio::net::TcpListener as std::os::fd::FromRawFd>::from_raw_fd(
                    std::os::fd::IntoRawFd::into_raw_fd(listener),
                )
            };
            let mut stream = listener.accept().await.expect("accept");
            let mut h = Handler::new(file, stream.as_raw_fd());
            let start = thread_cpu();
            let mut chunk = vec![0u8; 64 << 10];
            while h.served < n {
                let got = stream.read(&mut chunk).await.expect("read");
                h.on_bytes(&chunk[..got]);
            }
            let cpu = thread_cpu() - start;
            tick.cancel();
            (cpu, h.served)
        })
        .expect("start the executor");
    handle.join().expect("executor ran")
}

fn serve_io_uring(listener: TcpListener, cpu: usize, file: std::fs::File, n: u64) -> Report {
    pin(cpu);
    let (stream, _) = listener.accept().expect("accept");
    stream.set_nonblocking(true).expect("nonblocking");
    let sock = stream.as_raw_fd();
    let mut h = Handler::new(file, sock);
    let mut ring = io_uring::IoUring::new(8).expect("ring");
    let start = thread_cpu();
    let mut chunk = vec![0u8; 64 << 10];
    while h.served < n {
        let recv = io_uring::opcode::Recv::new(
            io_uring::types::Fd(sock),
            chunk.as_mut_ptr(),
            chunk.len() as u32,
        )
        .build();
        // SAFETY: `chunk` outlives the operation: we wait for its completion right here.
        unsafe { ring.submission().push(&recv).expect("queue RECV") };
        ring.submit_and_wait(1).expect("submit_and_wait");
        let cqe = ring.completion().next().expect("one completion");
        assert!(cqe.result() >= 0, "recv: {}", cqe.result());
        h.on_bytes(&chunk[..cqe.result() as usize]);
    }
    (thread_cpu() - start, h.served)
}

fn serve_blocking(listener: TcpListener, cpu: usize, file: std::fs::File, n: u64) -> Report {
    pin(cpu);
    let (mut stream, _) = listener.accept().expect("accept");
    let mut h = Handler::new(file, stream.as_raw_fd());
    let start = thread_cpu();
    let mut chunk = vec![0u8; 64 << 10];
    while h.served < n {
        let got = stream.read(&mut chunk).expect("read");
        h.on_bytes(&chunk[..got]);
    }
    (thread_cpu() - start, h.served)
}

/// Sends `n` requests at `RATE_PER_S` and times each round trip (microseconds). `cpu`: pin the
/// client there, or leave it to the kernel.
fn client(port: u16, cpu: Option<usize>, n: u64) -> Histogram<u64> {
    if let Some(cpu) = cpu {
        pin(cpu);
    }
    let mut s = TcpStream::connect(("127.0.0.1", port)).expect("connect");
    s.set_nodelay(true).expect("nodelay");
    let mut frame = (REQUEST_BYTES as u32).to_be_bytes().to_vec();
    frame.extend_from_slice(&[1u8; REQUEST_BYTES]);
    let mut h = Histogram::new_with_bounds(1, 60_000_000, 3).expect("bounds");
    let mut resp = [0u8; RESPONSE.len()];
    let interval = Duration::from_nanos(1_000_000_000 / RATE_PER_S);
    let begin = Instant::now();
    for i in 0..n {
        let due = begin + interval * i as u32;
        if let Some(wait) = due.checked_duration_since(Instant::now()) {
            thread::sleep(wait);
        }
        let sent = Instant::now();
        s.write_all(&frame).expect("send");
        s.read_exact(&mut resp).expect("response");
        h.saturating_record(sent.elapsed().as_micros() as u64);
    }
    h
}

fn run(
    name: &str,
    server: fn(TcpListener, usize, std::fs::File, u64) -> Report,
    cpus: (usize, usize),
    n: u64,
    contended: bool,
) {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = listener.local_addr().expect("address").port();
    let file = tempfile::tempfile().expect("a temporary file");
    let (tx, rx) = mpsc::channel();
    let srv = thread::spawn(move || {
        let _ = tx.send(server(listener, cpus.0, file, n));
    });
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let spinner = contended.then(|| {
        let stop = stop.clone();
        thread::spawn(move || {
            // Bounded by the run: the client's last round trip sets `stop`.
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                std::hint::spin_loop();
            }
        })
    });
    let h = client(port, if contended { None } else { Some(cpus.1) }, n);
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    if let Some(s) = spinner {
        s.join().expect("spinner");
    }
    let (cpu, served) = rx
        .recv_timeout(Duration::from_secs(60))
        .expect("the server finishes");
    srv.join().expect("server thread");
    let name = if contended {
        format!("{name}+spin")
    } else {
        name.to_string()
    };
    println!(
        "request_loop/{name:<13} {n} requests at {RATE_PER_S}/s: server CPU {:.1} us per request; round trip (us) p50 {} p90 {} p99 {} p99.9 {} max {}",
        cpu.as_secs_f64() * 1e6 / served as f64,
        h.value_at_quantile(0.5),
        h.value_at_quantile(0.9),
        h.value_at_quantile(0.99),
        h.value_at_quantile(0.999),
        h.max()
    );
}

fn main() {
    let cpus: Vec<usize> = CpuSet::online()
        .expect("list online CPUs")
        .iter()
        .map(|l| l.cpu)
        .collect();
    if cpus.len() < 2 {
        eprintln!("request_loop: skipped, it needs two online CPUs");
        return;
    }
    let n: u64 = if std::env::args().any(|a| a == "--test") {
        300
    } else {
        20_000
    };
    let rounds = if n > 1000 { 2 } else { 1 };
    for contended in [false, true] {
        for _ in 0..rounds {
            run("glommio", serve_glommio, (cpus[0], cpus[1]), n, contended);
            run("io_uring", serve_io_uring, (cpus[0], cpus[1]), n, contended);
            run("blocking", serve_blocking, (cpus[0], cpus[1]), n, contended);
        }
    }
}

//! Facts for reports: the machine, this build's git revision, and the broker process's CPU
//! time and memory when it runs on this machine.

use std::net::{IpAddr, Ipv6Addr, ToSocketAddrs};
use std::path::Path;

use serde_json::{json, Value};

fn read(path: &str) -> Option<String> {
    std::fs::read_to_string(path)
        .ok()
        .map(|s| s.trim().to_string())
}

/// Hostname, kernel, CPUs and memory of this machine.
pub fn machine() -> Value {
    let cpuinfo = read("/proc/cpuinfo").unwrap_or_default();
    let model = cpuinfo.lines().find_map(|l| {
        l.strip_prefix("model name")
            .map(|r| r.trim_start_matches([' ', '\t', ':']).to_string())
    });
    let mem_kib = read("/proc/meminfo").and_then(|m| {
        m.lines().find_map(|l| {
            l.strip_prefix("MemTotal:")
                .and_then(|r| r.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        })
    });
    json!({
        "hostname": read("/proc/sys/kernel/hostname"),
        "kernel": read("/proc/sys/kernel/osrelease"),
        "cpus": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1),
        "cpu_model": model,
        "memory_gib": mem_kib.map(|k| (k as f64 / 1024.0 / 1024.0 * 10.0).round() / 10.0),
    })
}

/// The git revision of the checkout this binary was built in (it lives in `target/`), with
/// "-dirty" when files differ from it; "unknown" outside a checkout.
pub fn git_revision() -> String {
    let dir = std::env::current_exe()
        .ok()
        .and_then(|p| p.parent().map(Path::to_path_buf))
        .unwrap_or_else(|| ".".into());
    let git = |args: &[&str]| {
        std::process::Command::new("git")
            .arg("-C")
            .arg(&dir)
            .args(args)
            .output()
            .ok()
            .filter(|o| o.status.success())
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
    };
    match git(&["rev-parse", "--short=12", "HEAD"]) {
        Some(rev) => match git(&["status", "--porcelain", "--untracked-files=no"]) {
            Some(s) if !s.is_empty() => format!("{rev}-dirty"),
            _ => rev,
        },
        None => "unknown".to_string(),
    }
}

/// The broker's process, found by the port it listens on (or given by pid).
pub struct BrokerProcess {
    pub pid: u32,
    ticks_per_s: f64,
    page_bytes: u64,
}

/// CPU seconds used so far and resident memory.
#[derive(Clone, Copy, Debug)]
pub struct ProcessSample {
    pub cpu_s: f64,
    pub rss_bytes: u64,
}

impl BrokerProcess {
    pub fn new(pid: u32) -> Option<BrokerProcess> {
        // SAFETY: sysconf has no preconditions.
        let (ticks, page) = unsafe {
            (
                libc::sysconf(libc::_SC_CLK_TCK),
                libc::sysconf(libc::_SC_PAGESIZE),
            )
        };
        let p = BrokerProcess {
            pid,
            ticks_per_s: ticks.max(1) as f64,
            page_bytes: page.max(1) as u64,
        };
        p.sample().map(|_| p)
    }

    /// The local process listening on `addr` (host:port), if any: preferably the socket bound
    /// to that very address (several brokers of a local cluster share a port on different
    /// loopback addresses), else one bound to every address, else any on that port.
    pub fn find(addr: &str) -> Option<BrokerProcess> {
        let port: u16 = addr.rsplit(':').next()?.parse().ok()?;
        let ips: Vec<IpAddr> = addr
            .to_socket_addrs()
            .map(|it| it.map(|a| a.ip()).collect())
            .unwrap_or_default();
        let inode = listening_inode(port, &ips)?;
        let target = format!("socket:[{inode}]");
        for entry in std::fs::read_dir("/proc").ok()?.flatten() {
            let Some(pid) = entry
                .file_name()
                .to_str()
                .and_then(|n| n.parse::<u32>().ok())
            else {
                continue;
            };
            let Ok(fds) = std::fs::read_dir(entry.path().join("fd")) else {
                continue;
            };
            for fd in fds.flatten() {
                if std::fs::read_link(fd.path()).is_ok_and(|l| l.to_string_lossy() == target) {
                    return BrokerProcess::new(pid);
                }
            }
        }
        None
    }

    pub fn sample(&self) -> Option<ProcessSample> {
        let stat = std::fs::read_to_string(format!("/proc/{}/stat", self.pid)).ok()?;
        // Fields after the command name (which may hold spaces) start at state (field 3).
        let rest = &stat[stat.rfind(')')? + 2..];
        let f: Vec<&str> = rest.split_whitespace().collect();
        let utime: u64 = f.get(11)?.parse().ok()?;
        let stime: u64 = f.get(12)?.parse().ok()?;
        let rss_pages: u64 = f.get(21)?.parse().ok()?;
        Some(ProcessSample {
            cpu_s: (utime + stime) as f64 / self.ticks_per_s,
            rss_bytes: rss_pages * self.page_bytes,
        })
    }
}

/// The socket inode of a TCP socket listening on `port` (IPv4 or IPv6): one bound to one of
/// `ips` if there is one, else one bound to the unspecified address, else the first.
fn listening_inode(port: u16, ips: &[IpAddr]) -> Option<u64> {
    let mut listeners: Vec<(Option<IpAddr>, u64)> = Vec::new();
    for table in ["/proc/net/tcp", "/proc/net/tcp6"] {
        let Ok(text) = std::fs::read_to_string(table) else {
            continue;
        };
        for line in text.lines().skip(1) {
            let f: Vec<&str> = line.split_whitespace().collect();
            let (Some(local), Some(state), Some(inode)) = (f.get(1), f.get(3), f.get(9)) else {
                continue;
            };
            let Some((ip, local_port)) = local.rsplit_once(':') else {
                continue;
            };
            if *state == "0A" && u16::from_str_radix(local_port, 16).ok() == Some(port) {
                if let Ok(inode) = inode.parse() {
                    listeners.push((proc_net_ip(ip), inode));
                }
            }
        }
    }
    listeners
        .iter()
        .find(|(ip, _)| ip.is_some_and(|ip| ips.contains(&ip)))
        .or_else(|| {
            listeners
                .iter()
                .find(|(ip, _)| ip.is_some_and(|ip| ip.is_unspecified()))
        })
        .or(listeners.first())
        .map(|&(_, inode)| inode)
}

/// An address as /proc/net/tcp{,6} prints it: the bytes of each 32-bit word in host order, in
/// hex.
fn proc_net_ip(hex: &str) -> Option<IpAddr> {
    let word = |i: usize| {
        hex.get(i * 8..i * 8 + 8)
            .and_then(|w| u32::from_str_radix(w, 16).ok())
            .map(u32::to_ne_bytes)
    };
    match hex.len() {
        8 => Some(IpAddr::from(word(0)?)),
        32 => {
            let mut b = [0u8; 16];
            for i in 0..4 {
                b[i * 4..i * 4 + 4].copy_from_slice(&word(i)?);
            }
            let v6 = Ipv6Addr::from(b);
            Some(v6.to_ipv4_mapped().map_or(IpAddr::V6(v6), IpAddr::V4))
        }
        _ => None,
    }
}

/// CPU seconds this process has used (user + system).
pub fn own_cpu_s() -> f64 {
    // SAFETY: `libc::rusage` is plain integers, for which all-zero bytes are a valid value.
    let mut u: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: getrusage fills the struct it is given and touches no other memory.
    unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut u) };
    let tv = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    tv(u.ru_utime) + tv(u.ru_stime)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_proc_net_addresses() {
        let ip = |s: &str| proc_net_ip(s).map(|ip| ip.to_string());
        if cfg!(target_endian = "little") {
            assert_eq!(ip("0100007F").as_deref(), Some("127.0.0.1"));
            assert_eq!(ip("0201007F").as_deref(), Some("127.0.1.2"));
            assert_eq!(
                ip("00000000000000000000000001000000").as_deref(),
                Some("::1")
            );
            assert_eq!(
                ip("0000000000000000FFFF00000100007F").as_deref(),
                Some("127.0.0.1")
            );
        }
        assert_eq!(ip("00000000").as_deref(), Some("0.0.0.0"));
        assert_eq!(ip("zz"), None);
    }

    #[test]
    fn finds_a_process_listening_on_a_port_and_samples_it() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let p = BrokerProcess::find(&addr).expect("this process listens there");
        assert_eq!(p.pid, std::process::id());
        let s = p.sample().unwrap();
        assert!(s.rss_bytes > 0 && s.cpu_s >= 0.0);
        assert!(machine()["cpus"].as_u64().unwrap() >= 1);
    }
}

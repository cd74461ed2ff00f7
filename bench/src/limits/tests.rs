//! Unit tests of `limits`: defaults, JSON keys, helpers.

use super::*;
use clap::Parser;

#[derive(Parser)]
struct TestCli {
    #[command(flatten)]
    args: LimitsArgs,
}

fn fake() -> Limits {
    let t = |mb: u64| Throughput {
        bytes: mb * 1_000_000,
        seconds: 1.0,
        stopped_early: false,
    };
    Limits {
        dir: PathBuf::from("/data"),
        device: Some("vda".into()),
        write_mib: 1024,
        writers: 4,
        syncs: 200,
        sendfile_mib: 1024,
        max_seconds: 30.0,
        direct_write: t(900),
        direct_write_qd1: t(500),
        direct_write_then_fdatasync: t(490),
        final_fdatasync_ms: 2.5,
        direct_write_fdatasync_each_mib: Throughput {
            bytes: 3 * MIB as u64,
            seconds: 0.0,
            stopped_early: true,
        },
        fdatasync_4k_us: Percentiles {
            p50: 100,
            p90: 200,
            p99: 300,
            p999: 400,
            max: 500,
            count: 200,
            stopped_early: false,
        },
        buffered_write_then_fdatasync: t(400),
        loopback_sendfile: t(4000),
        loopback_sendfile_server_cpu_s: Some(0.1),
        loopback_sendfile_client_cpu_s: None,
    }
}

#[test]
fn cli_defaults_match_default() {
    let parsed = TestCli::parse_from(["limits"]).args;
    assert_eq!(parsed, LimitsArgs::default());
    let parsed = TestCli::parse_from([
        "limits",
        "--write-mib",
        "256",
        "--sendfile-mib",
        "512",
        "--dir",
        "/x",
    ])
    .args;
    assert_eq!(parsed.write_mib, 256);
    assert_eq!(parsed.sendfile_mib, 512);
    assert_eq!(parsed.dir, Some(PathBuf::from("/x")));
}

#[test]
fn json_has_unit_suffixed_keys() {
    let v = fake().to_json();
    let o = v.as_object().unwrap();
    for key in [
        "dir",
        "device",
        "write_mib",
        "writers",
        "syncs",
        "sendfile_mib",
        "max_seconds",
        "direct_write_mb_s",
        "direct_write_qd1_mb_s",
        "direct_write_fdatasync_each_mib_mb_s",
        "buffered_write_then_fdatasync_mb_s",
        "direct_write_then_fdatasync_mb_s",
        "direct_write_in_flight",
        "direct_write_mode",
        "final_fdatasync_ms",
        "fdatasync_4k_us",
        "fdatasync_4k_count",
        "loopback_sendfile_mb_s",
        "loopback_sendfile_server_cpu_s",
        "loopback_sendfile_client_cpu_s",
        "stopped_early",
    ] {
        assert!(o.contains_key(key), "missing {key}");
    }
    assert_eq!(o["direct_write_mb_s"], json!(900.0));
    assert_eq!(o["direct_write_fdatasync_each_mib_mb_s"], json!(0.0));
    assert_eq!(o["direct_write_fdatasync_each_mib_mib"], json!(3.0));
    assert_eq!(
        o["fdatasync_4k_us"],
        json!({"p50": 100, "p90": 200, "p99": 300, "p999": 400, "max": 500})
    );
    assert_eq!(o["loopback_sendfile_client_cpu_s"], Value::Null);
    assert_eq!(
        o["stopped_early"],
        json!(["direct_write_fdatasync_each_mib"])
    );
    // Flat apart from the percentiles.
    let nested: Vec<_> = o
        .iter()
        .filter(|(_, v)| v.is_object())
        .map(|(k, _)| k.as_str())
        .collect();
    assert_eq!(nested, ["fdatasync_4k_us"]);
}

#[test]
fn throughput_mb_s() {
    assert_eq!(
        Throughput {
            bytes: 2_000_000,
            seconds: 2.0,
            stopped_early: false
        }
        .mb_s(),
        1.0
    );
    assert_eq!(
        Throughput {
            bytes: 5,
            seconds: 0.0,
            stopped_early: false
        }
        .mb_s(),
        0.0
    );
}

#[test]
fn dir_falls_back_to_existing_ancestor() {
    let tmp = std::env::temp_dir();
    assert_eq!(resolve_dir(Some(&tmp)).unwrap(), tmp);
    assert_eq!(
        resolve_dir(Some(&tmp.join("no-such-dir-strom/sub"))).unwrap(),
        tmp
    );
    assert_eq!(
        resolve_dir(Some(Path::new("no-such-dir-strom"))).unwrap(),
        PathBuf::from(".")
    );
    assert_eq!(
        resolve_dir(Some(Path::new(""))).unwrap(),
        PathBuf::from(".")
    );
}

#[test]
fn validation() {
    assert!(validate(&LimitsArgs::default()).is_ok());
    assert!(validate(&LimitsArgs {
        write_mib: 0,
        ..LimitsArgs::default()
    })
    .is_err());
    assert!(validate(&LimitsArgs {
        writers: 0,
        ..LimitsArgs::default()
    })
    .is_err());
    assert!(validate(&LimitsArgs {
        max_seconds: f64::NAN,
        ..LimitsArgs::default()
    })
    .is_err());
    assert!(validate(&LimitsArgs {
        max_seconds: 0.0,
        ..LimitsArgs::default()
    })
    .is_err());
}

#[test]
fn aligned_buffer() {
    let b = AlignedBuf::new(MIB, 7).unwrap();
    assert_eq!(b.as_slice().len(), MIB);
    assert_eq!(b.as_slice().as_ptr() as usize % ALIGN, 0);
    assert!(b.as_slice().iter().any(|&x| x != 0));
}

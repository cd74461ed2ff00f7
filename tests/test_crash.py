"""Crash safety: SIGKILL while producing with acks=all (log.flush.on.ack=true), and torn or
corrupted tails of the active segment. Every acknowledged record must survive, in order, and
nothing corrupt may ever be served."""

import os
import random
import re
import struct
import threading
import time

import pytest

import kafka_raw as kr
from conftest import unique

VALUE_RE = re.compile(rb"^rec-(\d+)-(\d{8})-([0-9a-f]{8})-(x*)$")


def value_for(partition: int, seq: int) -> bytes:
    pad = b"x" * (seq * 7 % 300)
    check = f"{(partition * 1_000_003 + seq * 7919) & 0xFFFFFFFF:08x}".encode()
    return b"rec-%d-%08d-%s-%s" % (partition, seq, check, pad)


def parse_value(v: bytes):
    m = VALUE_RE.match(v or b"")
    assert m, f"corrupt record value {v[:80]!r}"
    part, seq = int(m.group(1)), int(m.group(2))
    assert v == value_for(part, seq), f"record {part}/{seq} has damaged contents"
    return part, seq


class Producer(threading.Thread):
    """Produces numbered records with acks=all on one connection until the connection fails
    or `stop` is set; records what was acknowledged."""

    def __init__(self, broker, topic, partitions, next_seq, rnd, acked):
        super().__init__(daemon=True)
        self.broker, self.topic, self.partitions = broker, topic, partitions
        self.next_seq = next_seq  # per partition, shared with the test
        self.rnd = rnd
        self.acked = acked  # partition -> {offset: seq}
        self.stop = threading.Event()
        self.error = None
        self.batches = 0

    def run(self):
        try:
            c = self.broker.conn(timeout=10)
        except OSError as e:
            self.error = e
            return
        try:
            deadline = time.monotonic() + 30
            while not self.stop.is_set() and time.monotonic() < deadline:
                parts = {}
                firsts = {}
                for p in range(self.partitions):
                    n = self.rnd.randint(1, 20)
                    first = self.next_seq[p]
                    self.next_seq[p] += n
                    firsts[p] = (first, n)
                    parts[(self.topic, p)] = kr.simple_batch([value_for(p, first + i) for i in range(n)])
                res = c.produce_many(parts, acks=-1)
                for p, (first, n) in firsts.items():
                    r = res[(self.topic, p)]
                    if r["error_code"] != 0:
                        raise AssertionError(f"produce error {r}")
                    for i in range(n):
                        self.acked[p][r["base_offset"] + i] = first + i
                self.batches += 1
        except (kr.ConnectionClosed, OSError, ValueError, struct.error):
            pass  # the broker was killed mid-request
        except Exception as e:  # noqa: BLE001 - reported by the test
            self.error = e
        finally:
            c.close()


def verify(broker, topic, partitions, acked):
    """Every acknowledged record is there at its offset; every stored record is well-formed,
    offsets are contiguous from 0 and sequence numbers strictly increase per partition."""
    ends = []
    with broker.conn(timeout=30) as c:
        for p in range(partitions):
            recs = c.fetch_records(topic, p)
            offsets = [r.offset for r in recs]
            assert offsets == list(range(len(recs))), f"partition {p}: offsets not contiguous"
            seqs = []
            for r in recs:
                part, seq = parse_value(r.value)
                assert part == p, f"record of partition {part} found in partition {p}"
                seqs.append(seq)
            assert all(a < b for a, b in zip(seqs, seqs[1:])), f"partition {p}: records out of order"
            by_offset = dict(zip(offsets, seqs))
            for off, seq in acked[p].items():
                assert off in by_offset, f"partition {p}: acknowledged offset {off} (seq {seq}) lost"
                assert by_offset[off] == seq, f"partition {p}: offset {off} holds seq {by_offset[off]}, acked {seq}"
            ends.append(len(recs))
            assert c.latest_offset(topic, p) == len(recs)
    return ends


@pytest.mark.timeout(240)
@pytest.mark.parametrize("cores", [1, 2])
def test_sigkill_while_producing(broker_factory, cores):
    rnd = random.Random(20240611 + cores)
    partitions = 3
    broker = broker_factory(cores=cores, settings={"log.flush.on.ack": "true"})
    topic = unique("crash")
    with broker.conn() as c:
        c.create_topic(topic, partitions=partitions)
    acked = {p: {} for p in range(partitions)}
    next_seq = [0] * partitions
    total_batches = 0
    for round_ in range(5):
        prod = Producer(broker, topic, partitions, next_seq, random.Random(rnd.random()), acked)
        prod.start()
        time.sleep(rnd.uniform(0.2, 1.5))
        broker.kill()
        prod.join(15)
        assert not prod.is_alive(), "producer thread hung after the broker was killed"
        assert prod.error is None, f"round {round_}: {prod.error!r}"
        total_batches += prod.batches
        broker.start()
        ends = verify(broker, topic, partitions, acked)
        # The log continues right after what survived.
        with broker.conn() as c:
            for p in range(partitions):
                seq = next_seq[p]
                next_seq[p] += 1
                r = c.produce(topic, p, kr.simple_batch([value_for(p, seq)]), acks=-1)
                assert r["error_code"] == 0 and r["base_offset"] == ends[p], (r, ends)
                acked[p][r["base_offset"]] = seq
    assert total_batches > 0, "nothing was acknowledged in any round"
    assert sum(len(a) for a in acked.values()) > 5 * partitions
    broker.stop()
    broker.start()
    verify(broker, topic, partitions, acked)


# ---------------------------------------------------------------------------------------------
# Torn / corrupted tails


def segment_path(broker, topic):
    d = broker.partition_dir(topic, 0)
    logs = sorted(d.glob("*.log"))
    assert logs, f"no .log segment in {d} (found {sorted(os.listdir(d)) if d.exists() else 'no dir'})"
    return logs[-1]


def valid_end(data: bytes) -> int:
    """Byte position after the last intact batch at the start of a segment file."""
    batches = kr.parse_batches(data, decode_records=False, strict=False)
    ends = 0
    for b in batches:
        if not b.crc_ok:
            break
        ends += len(b.raw)
    return ends


def damage_garbage(path, end, data, rnd):
    with open(path, "r+b") as f:
        f.seek(end)
        f.write(bytes(rnd.getrandbits(8) for _ in range(333)))
    return 0  # records lost


def damage_cut(path, end, data, rnd):
    batches = kr.parse_batches(data[:end], decode_records=False)
    last = batches[-1]
    os.truncate(path, end - 7)
    return last.record_count


def damage_bad_crc_copy(path, end, data, rnd):
    """Append a copy of the last batch with the next offset and one payload byte flipped: it
    looks like a batch, but its CRC does not match."""
    batches = kr.parse_batches(data[:end], decode_records=False)
    last = bytearray(batches[-1].raw)
    struct.pack_into(">q", last, 0, batches[-1].next_offset)
    last[-1] ^= 0x20
    with open(path, "r+b") as f:
        f.seek(end)
        f.write(bytes(last))
    return 0


def damage_zero_tail(path, end, data, rnd):
    """Zeros after the data, as after a crash with preallocated or extended files."""
    with open(path, "r+b") as f:
        f.seek(end)
        f.write(b"\x00" * 4096)
    return 0


def damage_huge_length(path, end, data, rnd):
    """A batch header whose length field points far past the end of the file."""
    with open(path, "r+b") as f:
        f.seek(end)
        f.write(struct.pack(">qi", 10**6, 0x7FFFFF00) + b"\x00" * 40)
    return 0


DAMAGE = {"garbage": damage_garbage, "cut": damage_cut, "bad-crc-copy": damage_bad_crc_copy,
          "zero-tail": damage_zero_tail, "huge-length": damage_huge_length}


@pytest.mark.timeout(120)
@pytest.mark.parametrize("kind", sorted(DAMAGE))
def test_torn_tail_recovery(broker_factory, kind):
    rnd = random.Random(kind)
    broker = broker_factory(settings={"log.flush.on.ack": "true"})
    topic = unique("torn")
    values = []
    with broker.conn() as c:
        c.create_topic(topic)
        for b in range(20):
            n = 1 + b % 5
            batch_vals = [value_for(0, len(values) + i) for i in range(n)]
            r = c.produce(topic, 0, kr.simple_batch(batch_vals), acks=-1)
            assert r["error_code"] == 0 and r["base_offset"] == len(values)
            values.extend(batch_vals)
    # A crash (no clean-shutdown marker), then damage to the tail of the active segment.
    broker.kill()
    seg = segment_path(broker, topic)
    data = seg.read_bytes()
    end = valid_end(data)
    assert end > 0, f"{seg} does not start with record batches"
    assert len(kr.parse_batches(data[:end], decode_records=False)) == 20
    lost = DAMAGE[kind](seg, end, data, rnd)
    survivors = values[:len(values) - lost]

    broker.start()
    with broker.conn() as c:
        recs = c.fetch_records(topic, 0)
        assert [r.value for r in recs] == survivors
        assert [r.offset for r in recs] == list(range(len(survivors)))
        assert c.latest_offset(topic) == len(survivors)
        r = c.produce(topic, 0, kr.simple_batch([b"after-recovery-1", b"after-recovery-2"]), acks=-1)
        assert r["error_code"] == 0 and r["base_offset"] == len(survivors), r
        recs = c.fetch_records(topic, 0)
        assert [x.value for x in recs] == survivors + [b"after-recovery-1", b"after-recovery-2"]
    # And the repaired log survives a further crash and a clean restart.
    broker.kill()
    broker.start()
    broker.restart()
    with broker.conn() as c:
        recs = c.fetch_records(topic, 0)
        assert [x.value for x in recs] == survivors + [b"after-recovery-1", b"after-recovery-2"]

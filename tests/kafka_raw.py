"""A small, independent Kafka wire-protocol client used by the black-box tests.

It speaks just enough of the protocol to drive the broker by hand: request headers v1/v2,
ApiVersions v0/v3, Metadata v1/v4, Produce v3/v7, Fetch v4, ListOffsets v1 and CreateTopics v2,
plus record batches (magic 2) with a pure-Python CRC-32C, and the consumer-group APIs
(FindCoordinator, JoinGroup, SyncGroup, Heartbeat, LeaveGroup, OffsetCommit, OffsetFetch,
ListGroups, DescribeGroups, DeleteGroups, OffsetDelete) in their classic and flexible versions,
DeleteRecords v0-v2 and DescribeLogDirs v0-v4. It deliberately shares no code with
the broker or with the client libraries, so that it can serve as a second opinion.
"""

import gzip
import socket
import struct
import time
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence, Tuple

# ---------------------------------------------------------------------------------------------
# Constants

API_PRODUCE = 0
API_FETCH = 1
API_LIST_OFFSETS = 2
API_METADATA = 3
API_API_VERSIONS = 18
API_CREATE_TOPICS = 19
API_DELETE_TOPICS = 20
API_DELETE_RECORDS = 21
API_DESCRIBE_LOG_DIRS = 35

NONE = 0
OFFSET_OUT_OF_RANGE = 1
CORRUPT_MESSAGE = 2
UNKNOWN_TOPIC_OR_PARTITION = 3
LEADER_NOT_AVAILABLE = 5
MESSAGE_TOO_LARGE = 10
INVALID_TOPIC_EXCEPTION = 17
INVALID_REQUIRED_ACKS = 21
UNSUPPORTED_VERSION = 35
TOPIC_ALREADY_EXISTS = 36
INVALID_PARTITIONS = 37
INVALID_REPLICATION_FACTOR = 38
INVALID_CONFIG = 40
KAFKA_STORAGE_ERROR = 56
INVALID_RECORD = 87

EARLIEST = -2
LATEST = -1

CODEC_NONE = 0
CODEC_GZIP = 1
CODEC_SNAPPY = 2
CODEC_LZ4 = 3
CODEC_ZSTD = 4
CODEC_NAMES = {"none": 0, "gzip": 1, "snappy": 2, "lz4": 3, "zstd": 4}

# ---------------------------------------------------------------------------------------------
# CRC-32C (Castagnoli), table driven, reflected polynomial 0x82F63B78.


def _crc32c_table():
    table = []
    for i in range(256):
        c = i
        for _ in range(8):
            c = (c >> 1) ^ 0x82F63B78 if c & 1 else c >> 1
        table.append(c)
    return tuple(table)


_CRC_TABLE = _crc32c_table()


def crc32c(data: bytes, crc: int = 0) -> int:
    table = _CRC_TABLE
    crc ^= 0xFFFFFFFF
    for b in data:
        crc = table[(crc ^ b) & 0xFF] ^ (crc >> 8)
    return crc ^ 0xFFFFFFFF


assert crc32c(b"123456789") == 0xE3069283

# ---------------------------------------------------------------------------------------------
# Primitive encoding


def zigzag(n: int) -> int:
    return (n << 1) ^ (n >> 63)


def unzigzag(n: int) -> int:
    return (n >> 1) ^ -(n & 1)


def uvarint(n: int) -> bytes:
    if n < 0:
        raise ValueError("uvarint of a negative number")
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        if n:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)


def varint(n: int) -> bytes:
    return uvarint(zigzag(n) & 0xFFFFFFFFFFFFFFFF)


class Writer:
    def __init__(self):
        self.buf = bytearray()

    def int8(self, v):
        self.buf += struct.pack(">b", v)
        return self

    def int16(self, v):
        self.buf += struct.pack(">h", v)
        return self

    def int32(self, v):
        self.buf += struct.pack(">i", v)
        return self

    def int64(self, v):
        self.buf += struct.pack(">q", v)
        return self

    def boolean(self, v):
        self.buf += b"\x01" if v else b"\x00"
        return self

    def string(self, s: Optional[str]):
        if s is None:
            return self.int16(-1)
        b = s.encode() if isinstance(s, str) else bytes(s)
        self.int16(len(b))
        self.buf += b
        return self

    def bytes_(self, b: Optional[bytes]):
        if b is None:
            return self.int32(-1)
        self.int32(len(b))
        self.buf += b
        return self

    def array(self, items, fn):
        if items is None:
            return self.int32(-1)
        self.int32(len(items))
        for it in items:
            fn(self, it)
        return self

    def uvarint(self, v):
        self.buf += uvarint(v)
        return self

    def compact_string(self, s: Optional[str]):
        if s is None:
            return self.uvarint(0)
        b = s.encode()
        self.uvarint(len(b) + 1)
        self.buf += b
        return self

    def tagged_fields(self):
        return self.uvarint(0)

    def raw(self, b: bytes):
        self.buf += b
        return self

    def done(self) -> bytes:
        return bytes(self.buf)


class Reader:
    def __init__(self, data: bytes, pos: int = 0):
        self.data = data
        self.pos = pos

    def remaining(self) -> int:
        return len(self.data) - self.pos

    def _take(self, n):
        if self.pos + n > len(self.data):
            raise ValueError(f"truncated: need {n} bytes at {self.pos}, have {len(self.data) - self.pos}")
        b = self.data[self.pos:self.pos + n]
        self.pos += n
        return b

    def int8(self):
        return struct.unpack(">b", self._take(1))[0]

    def int16(self):
        return struct.unpack(">h", self._take(2))[0]

    def int32(self):
        return struct.unpack(">i", self._take(4))[0]

    def uint32(self):
        return struct.unpack(">I", self._take(4))[0]

    def int64(self):
        return struct.unpack(">q", self._take(8))[0]

    def boolean(self):
        return self._take(1) != b"\x00"

    def string(self):
        n = self.int16()
        if n < 0:
            return None
        return self._take(n).decode()

    def bytes_(self):
        n = self.int32()
        if n < 0:
            return None
        return bytes(self._take(n))

    def array(self, fn):
        n = self.int32()
        if n < 0:
            return None
        return [fn(self) for _ in range(n)]

    def uvarint(self):
        shift = 0
        result = 0
        while True:
            b = self._take(1)[0]
            result |= (b & 0x7F) << shift
            if not b & 0x80:
                return result
            shift += 7
            if shift > 63:
                raise ValueError("varint too long")

    def varint(self):
        return unzigzag(self.uvarint())

    def compact_array(self, fn):
        n = self.uvarint()
        if n == 0:
            return None
        return [fn(self) for _ in range(n - 1)]

    def compact_string(self):
        n = self.uvarint()
        if n == 0:
            return None
        return self._take(n - 1).decode()

    def tagged_fields(self):
        for _ in range(self.uvarint()):
            self.uvarint()  # tag
            size = self.uvarint()
            self._take(size)


# ---------------------------------------------------------------------------------------------
# Record batches (magic 2)


@dataclass
class Record:
    value: Optional[bytes]
    key: Optional[bytes] = None
    headers: List[Tuple[str, Optional[bytes]]] = field(default_factory=list)
    timestamp: Optional[int] = None  # absolute, ms
    offset: Optional[int] = None  # filled when decoding


def _encode_record(rec: Record, offset_delta: int, base_ts: int) -> bytes:
    body = bytearray()
    body += b"\x00"  # attributes
    ts = rec.timestamp if rec.timestamp is not None else base_ts
    body += varint(ts - base_ts)
    body += varint(offset_delta)
    if rec.key is None:
        body += varint(-1)
    else:
        body += varint(len(rec.key)) + rec.key
    if rec.value is None:
        body += varint(-1)
    else:
        body += varint(len(rec.value)) + rec.value
    body += varint(len(rec.headers))
    for hk, hv in rec.headers:
        hkb = hk.encode()
        body += varint(len(hkb)) + hkb
        if hv is None:
            body += varint(-1)
        else:
            body += varint(len(hv)) + hv
    return varint(len(body)) + bytes(body)


def compress(codec: int, data: bytes) -> bytes:
    if codec == CODEC_NONE:
        return data
    if codec == CODEC_GZIP:
        return gzip.compress(data)
    from kafka import codec as kc  # optional codecs come from kafka-python's helpers

    if codec == CODEC_SNAPPY:
        return kc.snappy_encode(data)
    if codec == CODEC_LZ4:
        return kc.lz4_encode(data)
    if codec == CODEC_ZSTD:
        return kc.zstd_encode(data)
    raise ValueError(f"unknown codec {codec}")


def decompress(codec: int, data: bytes) -> bytes:
    if codec == CODEC_NONE:
        return data
    if codec == CODEC_GZIP:
        return gzip.decompress(data)
    from kafka import codec as kc

    if codec == CODEC_SNAPPY:
        return kc.snappy_decode(data)
    if codec == CODEC_LZ4:
        return kc.lz4_decode(data)
    if codec == CODEC_ZSTD:
        try:
            import zstandard

            return zstandard.ZstdDecompressor().decompressobj().decompress(data)
        except ImportError:
            return kc.zstd_decode(data)
    raise ValueError(f"unknown codec {codec}")


def build_batch(records: Sequence[Record], base_offset: int = 0, codec: int = CODEC_NONE,
                base_timestamp: Optional[int] = None, producer_id: int = -1,
                producer_epoch: int = -1, base_sequence: int = -1,
                partition_leader_epoch: int = -1, timestamp_type: int = 0) -> bytes:
    """Encode a v2 record batch with a correct CRC-32C."""
    if not records:
        raise ValueError("a batch needs at least one record")
    now = int(time.time() * 1000)
    stamps = [r.timestamp if r.timestamp is not None else (base_timestamp if base_timestamp is not None else now)
              for r in records]
    base_ts = base_timestamp if base_timestamp is not None else min(stamps)
    max_ts = max(stamps)
    recs = bytearray()
    for i, r in enumerate(records):
        recs += _encode_record(Record(r.value, r.key, r.headers, stamps[i]), i, base_ts)
    payload = compress(codec, bytes(recs))
    attributes = (codec & 0x07) | ((timestamp_type & 1) << 3)
    after_crc = struct.pack(">hiqqqhii", attributes, len(records) - 1, base_ts, max_ts, producer_id,
                            producer_epoch, base_sequence, len(records)) + payload
    crc = crc32c(after_crc)
    batch_length = 4 + 1 + 4 + len(after_crc)
    return struct.pack(">qiibI", base_offset, batch_length, partition_leader_epoch, 2, crc) + after_crc


def simple_batch(values: Sequence[bytes], keys: Optional[Sequence[Optional[bytes]]] = None, **kw) -> bytes:
    keys = keys if keys is not None else [None] * len(values)
    return build_batch([Record(v, k) for k, v in zip(keys, values)], **kw)


BATCH_HEADER_LEN = 61  # up to and including the record count


@dataclass
class Batch:
    base_offset: int
    batch_length: int
    partition_leader_epoch: int
    magic: int
    crc: int
    attributes: int
    last_offset_delta: int
    base_timestamp: int
    max_timestamp: int
    producer_id: int
    producer_epoch: int
    base_sequence: int
    record_count: int
    raw: bytes  # the whole batch as stored / received
    crc_ok: bool
    records: List[Record]

    @property
    def codec(self) -> int:
        return self.attributes & 0x07

    @property
    def crc_region(self) -> bytes:
        """The bytes the CRC covers: from attributes to the end of the batch."""
        return self.raw[21:]

    @property
    def next_offset(self) -> int:
        return self.base_offset + self.last_offset_delta + 1


def _decode_records(data: bytes, count: int, base_offset: int, base_ts: int) -> List[Record]:
    r = Reader(data)
    out = []
    for _ in range(count):
        length = r.varint()
        end = r.pos + length
        r.int8()  # attributes
        ts_delta = r.varint()
        off_delta = r.varint()
        klen = r.varint()
        key = None if klen < 0 else bytes(r._take(klen))
        vlen = r.varint()
        value = None if vlen < 0 else bytes(r._take(vlen))
        headers = []
        for _ in range(r.varint()):
            hklen = r.varint()
            hk = bytes(r._take(hklen)).decode()
            hvlen = r.varint()
            hv = None if hvlen < 0 else bytes(r._take(hvlen))
            headers.append((hk, hv))
        if r.pos != end:
            raise ValueError(f"record length mismatch: {r.pos} != {end}")
        out.append(Record(value, key, headers, base_ts + ts_delta, base_offset + off_delta))
    if r.remaining():
        raise ValueError(f"{r.remaining()} trailing bytes after {count} records")
    return out


def parse_batches(data: bytes, decode_records: bool = True, strict: bool = True) -> List[Batch]:
    """Split a record set into batches. A trailing partial batch (allowed in fetch responses)
    is dropped. With strict, a batch that fails its CRC or magic check raises ValueError."""
    batches = []
    pos = 0
    while pos + 12 <= len(data):
        base_offset, batch_length = struct.unpack_from(">qi", data, pos)
        if batch_length < BATCH_HEADER_LEN - 12:
            if strict:
                raise ValueError(f"bad batch length {batch_length} at {pos}")
            break
        end = pos + 12 + batch_length
        if end > len(data):
            break  # partial trailing batch
        raw = bytes(data[pos:end])
        (ple, magic, crc, attributes, lod, base_ts, max_ts, pid, pepoch, bseq,
         count) = struct.unpack_from(">ibIhiqqqhii", raw, 12)
        if magic != 2:
            if strict:
                raise ValueError(f"unexpected magic {magic} at {pos}")
            break
        crc_ok = crc32c(raw[21:]) == crc
        if strict and not crc_ok:
            raise ValueError(f"CRC mismatch in batch at base offset {base_offset}")
        records = []
        if decode_records and crc_ok:
            payload = decompress(attributes & 0x07, raw[BATCH_HEADER_LEN:])
            records = _decode_records(payload, count, base_offset, base_ts)
        batches.append(Batch(base_offset, batch_length, ple, magic, crc, attributes, lod, base_ts, max_ts,
                             pid, pepoch, bseq, count, raw, crc_ok, records))
        pos = end
    return batches


def records_of(data: bytes) -> List[Record]:
    out = []
    for b in parse_batches(data):
        out.extend(b.records)
    return out


# ---------------------------------------------------------------------------------------------
# Connection


class ConnectionClosed(Exception):
    pass


class KafkaConn:
    """One TCP connection to the broker; requests may be pipelined with send()/recv()."""

    def __init__(self, host: str = "127.0.0.1", port: int = 9092, timeout: float = 15.0,
                 client_id: Optional[str] = "strom-raw-test", source_address: Optional[Tuple[str, int]] = None):
        self.host, self.port = host, port
        self.client_id = client_id
        self.sock = socket.create_connection((host, port), timeout=timeout, source_address=source_address)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.sock.settimeout(timeout)
        self.next_corr = 1
        self.pending: List[int] = []

    def close(self):
        try:
            self.sock.close()
        except OSError:
            pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    # -- framing --

    def send_raw(self, data: bytes):
        self.sock.sendall(data)

    def send(self, api_key: int, api_version: int, body: bytes, header_version: int = 1,
             corr: Optional[int] = None, expect_response: bool = True) -> int:
        if corr is None:
            corr = self.next_corr
            self.next_corr += 1
        w = Writer().int16(api_key).int16(api_version).int32(corr).string(self.client_id)
        if header_version >= 2:
            w.tagged_fields()
        w.raw(body)
        frame = w.done()
        self.sock.sendall(struct.pack(">i", len(frame)) + frame)
        if expect_response:
            self.pending.append(corr)
        return corr

    def _recv_exact(self, n: int) -> bytes:
        buf = bytearray()
        while len(buf) < n:
            try:
                chunk = self.sock.recv(n - len(buf))
            except ConnectionResetError as e:
                raise ConnectionClosed(str(e)) from e
            if not chunk:
                raise ConnectionClosed(f"connection closed after {len(buf)} of {n} bytes")
            buf += chunk
        return bytes(buf)

    def recv_frame(self) -> bytes:
        (size,) = struct.unpack(">i", self._recv_exact(4))
        if size < 4 or size > 512 * 1024 * 1024:
            raise ValueError(f"bad response size {size}")
        return self._recv_exact(size)

    def recv(self, header_version: int = 0) -> Tuple[int, Reader]:
        frame = self.recv_frame()
        r = Reader(frame)
        corr = r.int32()
        if header_version >= 1:
            r.tagged_fields()
        if self.pending and self.pending[0] == corr:
            self.pending.pop(0)
        return corr, r

    def request(self, api_key: int, api_version: int, body: bytes, header_version: int = 1,
                response_header_version: int = 0) -> Reader:
        corr = self.send(api_key, api_version, body, header_version)
        got, r = self.recv(response_header_version)
        if got != corr:
            raise AssertionError(f"correlation id {got} != expected {corr}")
        return r

    def wait_closed(self, timeout: float = 5.0) -> bool:
        """True if the peer closes the connection (EOF or reset) within timeout. Any bytes the
        peer sends before closing are read and discarded."""
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            self.sock.settimeout(left)
            try:
                chunk = self.sock.recv(65536)
            except socket.timeout:
                return False
            except (ConnectionResetError, BrokenPipeError):
                return True
            if not chunk:
                return True

    # -- ApiVersions --

    def api_versions(self, version: int = 0) -> dict:
        if version >= 3:
            body = Writer().compact_string("strom-tests").compact_string("1.0").tagged_fields().done()
            r = self.request(API_API_VERSIONS, version, body, header_version=2)
        else:
            r = self.request(API_API_VERSIONS, version, b"")
        return parse_api_versions(r, version)

    # -- Metadata --

    def metadata(self, topics: Optional[Sequence[str]] = None, version: int = 1,
                 allow_auto_topic_creation: bool = True) -> dict:
        w = Writer().array(topics, lambda w, t: w.string(t))
        if version >= 4:
            w.boolean(allow_auto_topic_creation)
        r = self.request(API_METADATA, version, w.done())
        out = {"brokers": [], "topics": {}}
        if version >= 3:
            out["throttle_time_ms"] = r.int32()

        def broker(r):
            return {"node_id": r.int32(), "host": r.string(), "port": r.int32(), "rack": r.string()}

        out["brokers"] = r.array(broker)
        if version >= 2:
            out["cluster_id"] = r.string()
        out["controller_id"] = r.int32()

        def partition(r):
            p = {"error_code": r.int16(), "partition": r.int32(), "leader": r.int32()}
            p["replicas"] = r.array(lambda r: r.int32())
            p["isr"] = r.array(lambda r: r.int32())
            if version >= 5:
                p["offline"] = r.array(lambda r: r.int32())
            return p

        def topic(r):
            t = {"error_code": r.int16(), "name": r.string(), "is_internal": r.boolean()}
            t["partitions"] = {p["partition"]: p for p in r.array(partition)}
            return t

        for t in r.array(topic):
            out["topics"][t["name"]] = t
        return out

    # -- Produce --

    def produce_send(self, parts: Dict[Tuple[str, int], Optional[bytes]], acks: int = -1,
                     timeout_ms: int = 30000, version: int = 3) -> int:
        by_topic: Dict[str, List[Tuple[int, Optional[bytes]]]] = {}
        for (t, p), batch in parts.items():
            by_topic.setdefault(t, []).append((p, batch))
        w = Writer().string(None).int16(acks).int32(timeout_ms)
        w.array(list(by_topic.items()), lambda w, tp: (
            w.string(tp[0]),
            w.array(tp[1], lambda w, pb: (w.int32(pb[0]), w.bytes_(pb[1])))))
        return self.send(API_PRODUCE, version, w.done(), expect_response=(acks != 0))

    @staticmethod
    def parse_produce(r: Reader, version: int = 3) -> Dict[Tuple[str, int], dict]:
        out = {}

        def part(r):
            p = {"partition": r.int32(), "error_code": r.int16(), "base_offset": r.int64(),
                 "log_append_time": r.int64()}
            if version >= 5:
                p["log_start_offset"] = r.int64()
            if version >= 8:
                p["record_errors"] = r.array(lambda r: (r.int32(), r.string()))
                p["error_message"] = r.string()
            return p

        for t in r.array(lambda r: (r.string(), r.array(part))):
            for p in t[1]:
                out[(t[0], p["partition"])] = p
        r.int32()  # throttle_time_ms
        return out

    def produce_many(self, parts: Dict[Tuple[str, int], Optional[bytes]], acks: int = -1,
                     timeout_ms: int = 30000, version: int = 3) -> Optional[Dict[Tuple[str, int], dict]]:
        corr = self.produce_send(parts, acks, timeout_ms, version)
        if acks == 0:
            return None
        got, r = self.recv()
        if got != corr:
            raise AssertionError(f"correlation id {got} != expected {corr}")
        return self.parse_produce(r, version)

    def produce(self, topic: str, partition: int, batch: Optional[bytes], acks: int = -1,
                timeout_ms: int = 30000, version: int = 3) -> Optional[dict]:
        res = self.produce_many({(topic, partition): batch}, acks, timeout_ms, version)
        if res is None:
            return None
        return res[(topic, partition)]

    # -- Fetch --

    def fetch_send(self, parts: Dict[Tuple[str, int], int], max_wait_ms: int = 0, min_bytes: int = 1,
                   max_bytes: int = 64 * 1024 * 1024, partition_max_bytes: int = 16 * 1024 * 1024,
                   version: int = 4) -> int:
        by_topic: Dict[str, List[Tuple[int, int]]] = {}
        for (t, p), off in parts.items():
            by_topic.setdefault(t, []).append((p, off))
        w = Writer().int32(-1).int32(max_wait_ms).int32(min_bytes).int32(max_bytes).int8(0)
        w.array(list(by_topic.items()), lambda w, tp: (
            w.string(tp[0]),
            w.array(tp[1], lambda w, po: (w.int32(po[0]), w.int64(po[1]), w.int32(partition_max_bytes)))))
        return self.send(API_FETCH, version, w.done())

    @staticmethod
    def parse_fetch(r: Reader) -> Dict[Tuple[str, int], dict]:
        r.int32()  # throttle
        out = {}

        def part(r):
            p = {"partition": r.int32(), "error_code": r.int16(), "high_watermark": r.int64(),
                 "last_stable_offset": r.int64()}
            p["aborted"] = r.array(lambda r: (r.int64(), r.int64()))
            p["records"] = r.bytes_()
            return p

        for t in r.array(lambda r: (r.string(), r.array(part))):
            for p in t[1]:
                out[(t[0], p["partition"])] = p
        return out

    def fetch_many(self, parts: Dict[Tuple[str, int], int], **kw) -> Dict[Tuple[str, int], dict]:
        corr = self.fetch_send(parts, **kw)
        got, r = self.recv()
        if got != corr:
            raise AssertionError(f"correlation id {got} != expected {corr}")
        return self.parse_fetch(r)

    def fetch(self, topic: str, partition: int, offset: int, **kw) -> dict:
        return self.fetch_many({(topic, partition): offset}, **kw)[(topic, partition)]

    def fetch_batches(self, topic: str, partition: int, start: int = 0, end: Optional[int] = None,
                      deadline_s: float = 30.0, decode_records: bool = True) -> List[Batch]:
        """All batches from the one containing `start` up to the high watermark (or `end`)."""
        out: List[Batch] = []
        offset = start
        deadline = time.monotonic() + deadline_s
        while True:
            res = self.fetch(topic, partition, offset)
            if res["error_code"] != NONE:
                raise KafkaError(res["error_code"], f"fetch {topic}-{partition}@{offset}")
            hwm = res["high_watermark"]
            stop = hwm if end is None else min(end, hwm)
            if offset >= stop:
                return out
            batches = parse_batches(res["records"] or b"", decode_records=decode_records)
            progressed = False
            for b in batches:
                if b.next_offset <= offset:
                    continue
                out.append(b)
                offset = b.next_offset
                progressed = True
            if not progressed and time.monotonic() > deadline:
                raise AssertionError(f"fetch made no progress at offset {offset} (hwm {hwm})")
            if time.monotonic() > deadline:
                raise AssertionError(f"fetch did not reach {stop} within {deadline_s}s (at {offset})")

    def fetch_records(self, topic: str, partition: int, start: int = 0, **kw) -> List[Record]:
        recs = []
        for b in self.fetch_batches(topic, partition, start, **kw):
            recs.extend(r for r in b.records if r.offset >= start)
        return recs

    # -- ListOffsets --

    def list_offsets_many(self, parts: Dict[Tuple[str, int], int]) -> Dict[Tuple[str, int], dict]:
        by_topic: Dict[str, List[Tuple[int, int]]] = {}
        for (t, p), ts in parts.items():
            by_topic.setdefault(t, []).append((p, ts))
        w = Writer().int32(-1)
        w.array(list(by_topic.items()), lambda w, tp: (
            w.string(tp[0]), w.array(tp[1], lambda w, pt: (w.int32(pt[0]), w.int64(pt[1])))))
        r = self.request(API_LIST_OFFSETS, 1, w.done())
        out = {}

        def part(r):
            return {"partition": r.int32(), "error_code": r.int16(), "timestamp": r.int64(), "offset": r.int64()}

        for t in r.array(lambda r: (r.string(), r.array(part))):
            for p in t[1]:
                out[(t[0], p["partition"])] = p
        return out

    def list_offsets(self, topic: str, partition: int, timestamp: int = LATEST) -> dict:
        return self.list_offsets_many({(topic, partition): timestamp})[(topic, partition)]

    def latest_offset(self, topic: str, partition: int = 0) -> int:
        res = self.list_offsets(topic, partition, LATEST)
        if res["error_code"] != NONE:
            raise KafkaError(res["error_code"], f"list offsets {topic}-{partition}")
        return res["offset"]

    # -- CreateTopics --

    def create_topics(self, topics: Sequence[Tuple[str, int, int, Dict[str, str]]], timeout_ms: int = 10000,
                      validate_only: bool = False) -> Dict[str, Tuple[int, Optional[str]]]:
        w = Writer()
        w.array(list(topics), lambda w, t: (
            w.string(t[0]), w.int32(t[1]), w.int16(t[2]),
            w.array([], None),
            w.array(list(t[3].items()), lambda w, kv: (w.string(kv[0]), w.string(kv[1])))))
        w.int32(timeout_ms).boolean(validate_only)
        r = self.request(API_CREATE_TOPICS, 2, w.done())
        r.int32()  # throttle
        out = {}
        for name, err, msg in r.array(lambda r: (r.string(), r.int16(), r.string())):
            out[name] = (err, msg)
        return out

    def create_topic(self, name: str, partitions: int = 1, configs: Optional[Dict[str, str]] = None,
                     wait: bool = True):
        res = self.create_topics([(name, partitions, 1, configs or {})])
        err, msg = res[name]
        if err != NONE:
            raise KafkaError(err, f"create topic {name}: {msg}")
        if wait:
            self.wait_topic(name, partitions)

    def wait_topic(self, name: str, partitions: int, timeout: float = 15.0):
        deadline = time.monotonic() + timeout
        while True:
            md = self.metadata([name], version=4, allow_auto_topic_creation=False)
            t = md["topics"].get(name)
            if t and t["error_code"] == NONE and len(t["partitions"]) == partitions and all(
                    p["error_code"] == NONE and p["leader"] >= 0 for p in t["partitions"].values()):
                return md
            if time.monotonic() > deadline:
                raise AssertionError(f"topic {name} not ready with {partitions} partitions: {t}")
            time.sleep(0.05)


    # -- Consumer-group APIs (encoders and parsers at the end of this module) --

    def group_send(self, api_key: int, version: int, body: bytes) -> "PendingResponse":
        """Send one group request; `.result()` on the returned object reads and parses the
        answer. Requests of one connection are answered in order, so a blocking JoinGroup or
        SyncGroup is best sent on a connection of its own."""
        flexible = is_flexible(api_key, version)
        corr = self.send(api_key, version, body, header_version=2 if flexible else 1)
        return PendingResponse(self, api_key, version, corr)

    def group_call(self, api_key: int, version: int, body: bytes) -> dict:
        return self.group_send(api_key, version, body).result()

    def find_coordinator(self, key: str, version: int = 1, key_type: int = 0,
                         keys: Optional[Sequence[str]] = None) -> dict:
        return self.group_call(API_FIND_COORDINATOR, version,
                               encode_find_coordinator(version, key, key_type, keys))

    def join_group_send(self, group: str, member_id: str = "", protocols=(), version: int = 5,
                        protocol_type: str = "consumer", session_timeout_ms: int = 10000,
                        rebalance_timeout_ms: int = 30000, group_instance_id: Optional[str] = None,
                        reason: Optional[str] = None) -> "PendingResponse":
        return self.group_send(API_JOIN_GROUP, version, encode_join_group(
            version, group, member_id, protocols, protocol_type, session_timeout_ms,
            rebalance_timeout_ms, group_instance_id, reason))

    def join_group(self, group: str, member_id: str = "", protocols=(), version: int = 5, **kw) -> dict:
        return self.join_group_send(group, member_id, protocols, version, **kw).result()

    def sync_group_send(self, group: str, generation_id: int, member_id: str,
                        assignments: Optional[Dict[str, bytes]] = None, version: int = 3,
                        group_instance_id: Optional[str] = None, protocol_type: Optional[str] = None,
                        protocol_name: Optional[str] = None) -> "PendingResponse":
        return self.group_send(API_SYNC_GROUP, version, encode_sync_group(
            version, group, generation_id, member_id, assignments or {}, group_instance_id,
            protocol_type, protocol_name))

    def sync_group(self, group: str, generation_id: int, member_id: str,
                   assignments: Optional[Dict[str, bytes]] = None, version: int = 3, **kw) -> dict:
        return self.sync_group_send(group, generation_id, member_id, assignments, version, **kw).result()

    def heartbeat(self, group: str, generation_id: int, member_id: str, version: int = 3,
                  group_instance_id: Optional[str] = None) -> dict:
        return self.group_call(API_HEARTBEAT, version, encode_heartbeat(
            version, group, generation_id, member_id, group_instance_id))

    def leave_group(self, group: str, members: Sequence[Tuple[str, Optional[str]]], version: int = 3) -> dict:
        """`members` is a list of (member_id, group_instance_id); v0-v2 take exactly one."""
        return self.group_call(API_LEAVE_GROUP, version, encode_leave_group(version, group, members))

    def offset_commit(self, group: str, offsets: Dict[Tuple[str, int], tuple], generation_id: int = -1,
                      member_id: str = "", version: int = 2, group_instance_id: Optional[str] = None,
                      retention_time_ms: int = -1) -> Dict[Tuple[str, int], int]:
        """`offsets` maps (topic, partition) to (offset, metadata) or (offset, metadata,
        leader_epoch). Returns the error code of each partition."""
        res = self.group_call(API_OFFSET_COMMIT, version, encode_offset_commit(
            version, group, offsets, generation_id, member_id, group_instance_id, retention_time_ms))
        return res["partitions"]

    def offset_fetch(self, group: str, partitions: Optional[Sequence[Tuple[str, int]]], version: int = 1,
                     require_stable: bool = False) -> dict:
        """Returns {"error_code": top-level error (v2+), "partitions": {(topic, partition):
        {"offset", "metadata", "leader_epoch", "error_code"}}}."""
        return self.group_call(API_OFFSET_FETCH, version,
                               encode_offset_fetch(version, group, partitions, require_stable))

    def list_groups(self, version: int = 0, states_filter: Optional[Sequence[str]] = None) -> dict:
        return self.group_call(API_LIST_GROUPS, version, encode_list_groups(version, states_filter))

    def describe_groups(self, groups: Sequence[str], version: int = 0) -> Dict[str, dict]:
        res = self.group_call(API_DESCRIBE_GROUPS, version, encode_describe_groups(version, groups))
        return {g["group_id"]: g for g in res["groups"]}

    def delete_groups(self, groups: Sequence[str], version: int = 1) -> Dict[str, int]:
        res = self.group_call(API_DELETE_GROUPS, version, encode_delete_groups(version, groups))
        return {g: e for g, e in res["results"]}

    def offset_delete(self, group: str, partitions: Sequence[Tuple[str, int]], version: int = 0) -> dict:
        return self.group_call(API_OFFSET_DELETE, version, encode_offset_delete(version, group, partitions))

    # -- DeleteRecords (21) and DescribeLogDirs (35); both are flexible from v2 --

    def delete_records(self, offsets: Dict[Tuple[str, int], int], version: int = 1,
                       timeout_ms: int = 30000) -> Dict[Tuple[str, int], dict]:
        """`offsets` maps (topic, partition) to the offset to delete before (-1: the high
        watermark). Returns {(topic, partition): {"error_code", "low_watermark"}}."""
        flexible = version >= 2
        w = VWriter(flexible)
        topics = _by_topic([(t, p, o) for (t, p), o in offsets.items()])
        w.arr(topics, lambda w, t: (
            w.str_(t[0]),
            w.arr(t[1], lambda w, po: (w.int32(po[0]), w.int64(po[1]), w.tags())),
            w.tags()))
        w.int32(timeout_ms).tags()
        r = VReader(self.request(API_DELETE_RECORDS, version, w.done(), header_version=2 if flexible else 1,
                                 response_header_version=1 if flexible else 0), flexible)
        r.int32()  # throttle_time_ms
        out = {}

        def part(r):
            p = {"partition": r.int32(), "low_watermark": r.int64(), "error_code": r.int16()}
            r.tags()
            return p

        def topic(r):
            t = (r.str_(), r.arr(part))
            r.tags()
            return t

        for name, parts in r.arr(topic) or []:
            for p in parts or []:
                out[(name, p["partition"])] = p
        r.tags()
        r.end("DeleteRecords")
        return out

    def describe_log_dirs(self, topics: Optional[Dict[str, Sequence[int]]] = None, version: int = 1) -> dict:
        """`topics` None asks for every topic. Returns {"throttle_time_ms", "error_code" (v3+,
        else 0), "results": [{"error_code", "log_dir", "topics": {name: {partition:
        {"size", "offset_lag", "is_future_key"}}}, "total_bytes", "usable_bytes" (v4+, else
        None)}]}."""
        flexible = version >= 2
        w = VWriter(flexible)
        items = None if topics is None else list(topics.items())
        w.arr(items, lambda w, t: (w.str_(t[0]), w.arr(list(t[1]), lambda w, p: w.int32(p)), w.tags()))
        w.tags()
        r = VReader(self.request(API_DESCRIBE_LOG_DIRS, version, w.done(), header_version=2 if flexible else 1,
                                 response_header_version=1 if flexible else 0), flexible)
        out = {"throttle_time_ms": r.int32(), "error_code": r.int16() if version >= 3 else 0}

        def part(r):
            p = (r.int32(), {"size": r.int64(), "offset_lag": r.int64(), "is_future_key": r.boolean()})
            r.tags()
            return p

        def topic(r):
            t = (r.str_(), dict(r.arr(part) or []))
            r.tags()
            return t

        def result(r):
            d = {"error_code": r.int16(), "log_dir": r.str_(), "topics": dict(r.arr(topic) or [])}
            d["total_bytes"] = r.int64() if version >= 4 else None
            d["usable_bytes"] = r.int64() if version >= 4 else None
            r.tags()
            return d

        out["results"] = r.arr(result) or []
        r.tags()
        r.end("DescribeLogDirs")
        return out


class KafkaError(Exception):
    def __init__(self, code: int, what: str = ""):
        super().__init__(f"{what}: error code {code}")
        self.code = code


def parse_api_versions(r: Reader, version: int) -> dict:
    out = {"error_code": r.int16(), "api_keys": {}}
    if version >= 3:
        keys = r.compact_array(lambda r: (r.int16(), r.int16(), r.int16(), r.tagged_fields()))
    else:
        keys = r.array(lambda r: (r.int16(), r.int16(), r.int16()))
    for k in keys or []:
        out["api_keys"][k[0]] = (k[1], k[2])
    if version >= 1:
        out["throttle_time_ms"] = r.int32()
    if version >= 3:
        r.tagged_fields()
    return out


# ---------------------------------------------------------------------------------------------
# Consumer groups (classic protocol): FindCoordinator, JoinGroup, SyncGroup, Heartbeat,
# LeaveGroup, OffsetCommit, OffsetFetch, ListGroups, DescribeGroups, DeleteGroups, OffsetDelete.
# Field layouts follow Apache Kafka's message schemas (clients/src/main/resources/common/message).

API_OFFSET_COMMIT = 8
API_OFFSET_FETCH = 9
API_FIND_COORDINATOR = 10
API_JOIN_GROUP = 11
API_HEARTBEAT = 12
API_LEAVE_GROUP = 13
API_SYNC_GROUP = 14
API_DESCRIBE_GROUPS = 15
API_LIST_GROUPS = 16
API_DELETE_GROUPS = 42
API_OFFSET_DELETE = 47

OFFSET_METADATA_TOO_LARGE = 12
COORDINATOR_NOT_AVAILABLE = 15
NOT_COORDINATOR = 16
ILLEGAL_GENERATION = 22
INCONSISTENT_GROUP_PROTOCOL = 23
INVALID_GROUP_ID = 24
UNKNOWN_MEMBER_ID = 25
INVALID_SESSION_TIMEOUT = 26
REBALANCE_IN_PROGRESS = 27
INVALID_REQUEST = 42
NON_EMPTY_GROUP = 68
GROUP_ID_NOT_FOUND = 69
MEMBER_ID_REQUIRED = 79
GROUP_MAX_SIZE_REACHED = 81
FENCED_INSTANCE_ID = 82
GROUP_SUBSCRIBED_TO_TOPIC = 86
UNKNOWN_SERVER_ERROR = -1

# First flexible version (compact strings/arrays, tagged fields, request header v2, response
# header v1) of each API; OffsetDelete has none.
FLEXIBLE_FROM = {
    API_OFFSET_COMMIT: 8,
    API_OFFSET_FETCH: 6,
    API_FIND_COORDINATOR: 3,
    API_JOIN_GROUP: 6,
    API_HEARTBEAT: 4,
    API_LEAVE_GROUP: 4,
    API_SYNC_GROUP: 4,
    API_DESCRIBE_GROUPS: 5,
    API_LIST_GROUPS: 3,
    API_DELETE_GROUPS: 2,
    API_OFFSET_DELETE: 1 << 15,
}


def is_flexible(api_key: int, version: int) -> bool:
    return version >= FLEXIBLE_FROM.get(api_key, 1 << 15)


def _raw_text(s) -> bytes:
    return s if isinstance(s, (bytes, bytearray)) else s.encode()


class VWriter(Writer):
    """A Writer that picks the classic or the compact (flexible) encoding of strings, bytes and
    arrays, and writes tagged-field sections only in flexible versions."""

    def __init__(self, flexible: bool):
        super().__init__()
        self.flexible = flexible

    def str_(self, s):
        """A string or nullable string (None is null); bytes are written as given."""
        if not self.flexible:
            return self.string(s)
        if s is None:
            return self.uvarint(0)
        b = _raw_text(s)
        self.uvarint(len(b) + 1)
        self.buf += b
        return self

    def blob(self, b: Optional[bytes]):
        if not self.flexible:
            return self.bytes_(b)
        if b is None:
            return self.uvarint(0)
        self.uvarint(len(b) + 1)
        self.buf += b
        return self

    def arr(self, items, fn):
        if not self.flexible:
            return self.array(items, fn)
        if items is None:
            return self.uvarint(0)
        items = list(items)
        self.uvarint(len(items) + 1)
        for it in items:
            fn(self, it)
        return self

    def tags(self):
        if self.flexible:
            self.uvarint(0)
        return self


class VReader:
    """Reads classic or compact encodings from a Reader, by version."""

    def __init__(self, r: Reader, flexible: bool):
        self.r = r
        self.flexible = flexible

    def __getattr__(self, name):  # int8/int16/int32/int64/boolean/...
        return getattr(self.r, name)

    def str_(self):
        return self.r.compact_string() if self.flexible else self.r.string()

    def blob(self):
        if not self.flexible:
            return self.r.bytes_()
        n = self.r.uvarint()
        if n == 0:
            return None
        return bytes(self.r._take(n - 1))

    def arr(self, fn):
        if not self.flexible:
            return self.r.array(lambda _r: fn(self))
        n = self.r.uvarint()
        if n == 0:
            return None
        return [fn(self) for _ in range(n - 1)]

    def tags(self):
        if self.flexible:
            self.r.tagged_fields()

    def end(self, what: str):
        if self.r.remaining():
            raise ValueError(f"{what}: {self.r.remaining()} trailing bytes in the response")


class PendingResponse:
    """A group request that has been sent; result() reads and parses its response."""

    def __init__(self, conn: "KafkaConn", api_key: int, version: int, corr: int):
        self.conn, self.api_key, self.version, self.corr = conn, api_key, version, corr

    def result(self) -> dict:
        flexible = is_flexible(self.api_key, self.version)
        got, r = self.conn.recv(1 if flexible else 0)
        if got != self.corr:
            raise AssertionError(f"correlation id {got} != expected {self.corr}")
        return PARSERS[self.api_key](VReader(r, flexible), self.version)


# -- FindCoordinator (10) --


def encode_find_coordinator(version: int, key: str, key_type: int = 0,
                            keys: Optional[Sequence[str]] = None) -> bytes:
    w = VWriter(is_flexible(API_FIND_COORDINATOR, version))
    if version <= 3:
        w.str_(key)
        if version >= 1:
            w.int8(key_type)
    else:
        w.int8(key_type)
        w.arr(list(keys) if keys is not None else [key], lambda w, k: w.str_(k))
    return w.tags().done()


def parse_find_coordinator(r: VReader, version: int) -> dict:
    out = {}
    if version >= 1:
        out["throttle_time_ms"] = r.int32()
    if version <= 3:
        out["error_code"] = r.int16()
        if version >= 1:
            out["error_message"] = r.str_()
        out["node_id"] = r.int32()
        out["host"] = r.str_()
        out["port"] = r.int32()
    else:
        def coord(r):
            c = {"key": r.str_(), "node_id": r.int32(), "host": r.str_(), "port": r.int32(),
                 "error_code": r.int16(), "error_message": r.str_()}
            r.tags()
            return c

        out["coordinators"] = r.arr(coord)
    r.tags()
    r.end("FindCoordinator")
    return out


# -- JoinGroup (11) --


def encode_join_group(version: int, group: str, member_id: str, protocols: Sequence[Tuple[str, bytes]],
                      protocol_type: str = "consumer", session_timeout_ms: int = 10000,
                      rebalance_timeout_ms: int = 30000, group_instance_id: Optional[str] = None,
                      reason: Optional[str] = None) -> bytes:
    w = VWriter(is_flexible(API_JOIN_GROUP, version))
    w.str_(group).int32(session_timeout_ms)
    if version >= 1:
        w.int32(rebalance_timeout_ms)
    w.str_(member_id)
    if version >= 5:
        w.str_(group_instance_id)
    w.str_(protocol_type)
    w.arr(list(protocols), lambda w, p: (w.str_(p[0]), w.blob(p[1]), w.tags()))
    if version >= 8:
        w.str_(reason)
    return w.tags().done()


def parse_join_group(r: VReader, version: int) -> dict:
    out = {}
    if version >= 2:
        out["throttle_time_ms"] = r.int32()
    out["error_code"] = r.int16()
    out["generation_id"] = r.int32()
    if version >= 7:
        out["protocol_type"] = r.str_()
    out["protocol_name"] = r.str_()
    out["leader"] = r.str_()
    if version >= 9:
        out["skip_assignment"] = r.boolean()
    out["member_id"] = r.str_()

    def member(r):
        m = {"member_id": r.str_()}
        if version >= 5:
            m["group_instance_id"] = r.str_()
        m["metadata"] = r.blob()
        r.tags()
        return m

    out["members"] = r.arr(member)
    r.tags()
    r.end("JoinGroup")
    return out


# -- SyncGroup (14) --


def encode_sync_group(version: int, group: str, generation_id: int, member_id: str,
                      assignments: Dict[str, bytes], group_instance_id: Optional[str] = None,
                      protocol_type: Optional[str] = None, protocol_name: Optional[str] = None) -> bytes:
    w = VWriter(is_flexible(API_SYNC_GROUP, version))
    w.str_(group).int32(generation_id).str_(member_id)
    if version >= 3:
        w.str_(group_instance_id)
    if version >= 5:
        w.str_(protocol_type).str_(protocol_name)
    w.arr(list(assignments.items()), lambda w, a: (w.str_(a[0]), w.blob(a[1]), w.tags()))
    return w.tags().done()


def parse_sync_group(r: VReader, version: int) -> dict:
    out = {}
    if version >= 1:
        out["throttle_time_ms"] = r.int32()
    out["error_code"] = r.int16()
    if version >= 5:
        out["protocol_type"] = r.str_()
        out["protocol_name"] = r.str_()
    out["assignment"] = r.blob()
    r.tags()
    r.end("SyncGroup")
    return out


# -- Heartbeat (12) --


def encode_heartbeat(version: int, group: str, generation_id: int, member_id: str,
                     group_instance_id: Optional[str] = None) -> bytes:
    w = VWriter(is_flexible(API_HEARTBEAT, version))
    w.str_(group).int32(generation_id).str_(member_id)
    if version >= 3:
        w.str_(group_instance_id)
    return w.tags().done()


def parse_heartbeat(r: VReader, version: int) -> dict:
    out = {}
    if version >= 1:
        out["throttle_time_ms"] = r.int32()
    out["error_code"] = r.int16()
    r.tags()
    r.end("Heartbeat")
    return out


# -- LeaveGroup (13) --


def encode_leave_group(version: int, group: str, members: Sequence[Tuple[str, Optional[str]]]) -> bytes:
    w = VWriter(is_flexible(API_LEAVE_GROUP, version))
    w.str_(group)
    if version <= 2:
        if len(members) != 1:
            raise ValueError("LeaveGroup v0-v2 carry exactly one member id")
        w.str_(members[0][0])
    else:
        def member(w, m):
            w.str_(m[0]).str_(m[1])
            if version >= 5:
                w.str_(None)  # reason
            w.tags()

        w.arr(list(members), member)
    return w.tags().done()


def parse_leave_group(r: VReader, version: int) -> dict:
    out = {}
    if version >= 1:
        out["throttle_time_ms"] = r.int32()
    out["error_code"] = r.int16()
    if version >= 3:
        def member(r):
            m = {"member_id": r.str_(), "group_instance_id": r.str_(), "error_code": r.int16()}
            r.tags()
            return m

        out["members"] = r.arr(member)
    r.tags()
    r.end("LeaveGroup")
    return out


# -- OffsetCommit (8) --


def _by_topic(items):
    """[(topic, partition, value...)] grouped into [(topic, [(partition, value...)])], keeping the
    first-seen order of topics."""
    out: Dict[str, list] = {}
    for it in items:
        out.setdefault(it[0], []).append(it[1:])
    return list(out.items())


def encode_offset_commit(version: int, group: str, offsets: Dict[Tuple[str, int], tuple],
                         generation_id: int = -1, member_id: str = "",
                         group_instance_id: Optional[str] = None, retention_time_ms: int = -1) -> bytes:
    w = VWriter(is_flexible(API_OFFSET_COMMIT, version))
    w.str_(group)
    if version >= 1:
        w.int32(generation_id).str_(member_id)
    if version >= 7:
        w.str_(group_instance_id)
    if 2 <= version <= 4:
        w.int64(retention_time_ms)

    def part(w, p):
        index, v = p
        offset, metadata = v[0], v[1]
        epoch = v[2] if len(v) > 2 else -1
        w.int32(index).int64(offset)
        if version >= 6:
            w.int32(epoch)
        if version == 1:
            w.int64(-1)  # commit timestamp
        w.str_(metadata)
        w.tags()

    topics = _by_topic([(t, p, v) for (t, p), v in offsets.items()])
    w.arr(topics, lambda w, t: (w.str_(t[0]), w.arr([(p, v) for p, v in t[1]], part), w.tags()))
    return w.tags().done()


def parse_offset_commit(r: VReader, version: int) -> dict:
    out = {"partitions": {}}
    if version >= 3:
        out["throttle_time_ms"] = r.int32()

    def part(r):
        p = (r.int32(), r.int16())
        r.tags()
        return p

    def topic(r):
        t = (r.str_(), r.arr(part))
        r.tags()
        return t

    for name, parts in r.arr(topic) or []:
        for index, err in parts or []:
            out["partitions"][(name, index)] = err
    r.tags()
    r.end("OffsetCommit")
    return out


# -- OffsetFetch (9) --


def encode_offset_fetch(version: int, group: str, partitions: Optional[Sequence[Tuple[str, int]]],
                        require_stable: bool = False) -> bytes:
    """`partitions` None asks for every committed offset of the group (v2+)."""
    w = VWriter(is_flexible(API_OFFSET_FETCH, version))
    topics = None if partitions is None else _by_topic([(t, p) for t, p in partitions])

    def topic(w, t):
        w.str_(t[0])
        w.arr([p[0] for p in t[1]], lambda w, i: w.int32(i))
        w.tags()

    if version <= 7:
        w.str_(group)
        w.arr(topics, topic)
    else:
        def grp(w, _):
            w.str_(group)
            if version >= 9:
                w.str_(None).int32(-1)  # member id, member epoch
            w.arr(topics, topic)
            w.tags()

        w.arr([group], grp)
    if version >= 7:
        w.boolean(require_stable)
    return w.tags().done()


def parse_offset_fetch(r: VReader, version: int) -> dict:
    out = {"partitions": {}, "error_code": 0}
    if version >= 3:
        out["throttle_time_ms"] = r.int32()

    def part(r):
        p = {"partition": r.int32(), "offset": r.int64()}
        p["leader_epoch"] = r.int32() if version >= 5 else -1
        p["metadata"] = r.str_()
        p["error_code"] = r.int16()
        r.tags()
        return p

    def topic(r):
        t = (r.str_(), r.arr(part))
        r.tags()
        return t

    def collect(topics):
        for name, parts in topics or []:
            for p in parts or []:
                out["partitions"][(name, p["partition"])] = p

    if version <= 7:
        collect(r.arr(topic))
        if version >= 2:
            out["error_code"] = r.int16()
    else:
        def grp(r):
            g = {"group_id": r.str_(), "topics": r.arr(topic), "error_code": r.int16()}
            r.tags()
            return g

        groups = r.arr(grp) or []
        if len(groups) != 1:
            raise ValueError(f"OffsetFetch v{version}: expected one group, got {len(groups)}")
        collect(groups[0]["topics"])
        out["error_code"] = groups[0]["error_code"]
    r.tags()
    r.end("OffsetFetch")
    return out


# -- ListGroups (16) --


def encode_list_groups(version: int, states_filter: Optional[Sequence[str]] = None) -> bytes:
    w = VWriter(is_flexible(API_LIST_GROUPS, version))
    if version >= 4:
        w.arr(list(states_filter or []), lambda w, s: w.str_(s))
    if version >= 5:
        w.arr([], lambda w, s: w.str_(s))  # types filter
    return w.tags().done()


def parse_list_groups(r: VReader, version: int) -> dict:
    out = {}
    if version >= 1:
        out["throttle_time_ms"] = r.int32()
    out["error_code"] = r.int16()

    def grp(r):
        g = {"group_id": r.str_(), "protocol_type": r.str_()}
        if version >= 4:
            g["group_state"] = r.str_()
        if version >= 5:
            g["group_type"] = r.str_()
        r.tags()
        return g

    out["groups"] = {g["group_id"]: g for g in r.arr(grp) or []}
    r.tags()
    r.end("ListGroups")
    return out


# -- DescribeGroups (15) --


def encode_describe_groups(version: int, groups: Sequence[str], include_authorized_operations: bool = False) -> bytes:
    w = VWriter(is_flexible(API_DESCRIBE_GROUPS, version))
    w.arr(list(groups), lambda w, g: w.str_(g))
    if version >= 3:
        w.boolean(include_authorized_operations)
    return w.tags().done()


def parse_describe_groups(r: VReader, version: int) -> dict:
    out = {}
    if version >= 1:
        out["throttle_time_ms"] = r.int32()

    def member(r):
        m = {"member_id": r.str_()}
        if version >= 4:
            m["group_instance_id"] = r.str_()
        m["client_id"] = r.str_()
        m["client_host"] = r.str_()
        m["metadata"] = r.blob()
        m["assignment"] = r.blob()
        r.tags()
        return m

    def grp(r):
        g = {"error_code": r.int16()}
        if version >= 6:
            g["error_message"] = r.str_()
        g["group_id"] = r.str_()
        g["state"] = r.str_()
        g["protocol_type"] = r.str_()
        g["protocol_data"] = r.str_()
        g["members"] = r.arr(member) or []
        if version >= 3:
            g["authorized_operations"] = r.int32()
        r.tags()
        return g

    out["groups"] = r.arr(grp) or []
    r.tags()
    r.end("DescribeGroups")
    return out


# -- DeleteGroups (42) --


def encode_delete_groups(version: int, groups: Sequence[str]) -> bytes:
    w = VWriter(is_flexible(API_DELETE_GROUPS, version))
    w.arr(list(groups), lambda w, g: w.str_(g))
    return w.tags().done()


def parse_delete_groups(r: VReader, version: int) -> dict:
    out = {"throttle_time_ms": r.int32()}

    def res(r):
        x = (r.str_(), r.int16())
        r.tags()
        return x

    out["results"] = r.arr(res) or []
    r.tags()
    r.end("DeleteGroups")
    return out


# -- OffsetDelete (47) --


def encode_offset_delete(version: int, group: str, partitions: Sequence[Tuple[str, int]]) -> bytes:
    w = VWriter(False)
    w.str_(group)
    topics = _by_topic([(t, p) for t, p in partitions])
    w.arr(topics, lambda w, t: (w.str_(t[0]), w.arr([p[0] for p in t[1]], lambda w, i: w.int32(i))))
    return w.done()


def parse_offset_delete(r: VReader, version: int) -> dict:
    out = {"error_code": r.int16(), "throttle_time_ms": r.int32(), "partitions": {}}
    for name, parts in r.arr(lambda r: (r.str_(), r.arr(lambda r: (r.int32(), r.int16())))) or []:
        for index, err in parts or []:
            out["partitions"][(name, index)] = err
    r.end("OffsetDelete")
    return out


PARSERS = {
    API_FIND_COORDINATOR: parse_find_coordinator,
    API_JOIN_GROUP: parse_join_group,
    API_SYNC_GROUP: parse_sync_group,
    API_HEARTBEAT: parse_heartbeat,
    API_LEAVE_GROUP: parse_leave_group,
    API_OFFSET_COMMIT: parse_offset_commit,
    API_OFFSET_FETCH: parse_offset_fetch,
    API_LIST_GROUPS: parse_list_groups,
    API_DESCRIBE_GROUPS: parse_describe_groups,
    API_DELETE_GROUPS: parse_delete_groups,
    API_OFFSET_DELETE: parse_offset_delete,
}


# -- The "consumer" embedded protocol (ConsumerProtocolSubscription / ConsumerProtocolAssignment),
# as carried in JoinGroup metadata and SyncGroup assignments: an int16 version, then the fields.


def consumer_subscription(topics: Sequence[str], user_data: Optional[bytes] = None, version: int = 0,
                          owned: Optional[Dict[str, Sequence[int]]] = None) -> bytes:
    w = Writer().int16(version)
    w.array(list(topics), lambda w, t: w.string(t))
    w.bytes_(user_data)
    if version >= 1:
        w.array(list((owned or {}).items()),
                lambda w, tp: (w.string(tp[0]), w.array(list(tp[1]), lambda w, p: w.int32(p))))
    if version >= 2:
        w.int32(-1)  # generation id
    if version >= 3:
        w.string(None)  # rack id
    return w.done()


def parse_consumer_subscription(data: bytes) -> dict:
    r = Reader(data)
    out = {"version": r.int16(), "topics": r.array(lambda r: r.string()), "user_data": r.bytes_()}
    return out


def consumer_assignment(partitions: Dict[str, Sequence[int]], user_data: Optional[bytes] = None) -> bytes:
    w = Writer().int16(0)
    w.array(list(partitions.items()),
            lambda w, tp: (w.string(tp[0]), w.array(list(tp[1]), lambda w, p: w.int32(p))))
    w.bytes_(user_data)
    return w.done()


def parse_consumer_assignment(data: bytes) -> dict:
    r = Reader(data)
    r.int16()
    parts = r.array(lambda r: (r.string(), r.array(lambda r: r.int32())))
    return {t: sorted(ps) for t, ps in parts or []}


# ---------------------------------------------------------------------------------------------
# Idempotent producers: InitProducerId (22) v0..v5 and Produce with producer id, epoch and base
# sequence in the batch header (the CRC covers those fields, so build_batch computes it after
# they are set). Layouts follow InitProducerIdRequest/Response.json: v2+ are flexible; v3+ carry
# the producer id and epoch to bump.

API_INIT_PRODUCER_ID = 22

OUT_OF_ORDER_SEQUENCE_NUMBER = 45
DUPLICATE_SEQUENCE_NUMBER = 46
INVALID_PRODUCER_EPOCH = 47
INVALID_PRODUCER_ID_MAPPING = 49
INVALID_TRANSACTION_TIMEOUT = 50
UNKNOWN_PRODUCER_ID = 59
PRODUCER_FENCED = 90

FLEXIBLE_FROM[API_INIT_PRODUCER_ID] = 2


def encode_init_producer_id(version: int, transactional_id: Optional[str] = None,
                            transaction_timeout_ms: int = 60000, producer_id: int = -1,
                            producer_epoch: int = -1) -> bytes:
    w = VWriter(is_flexible(API_INIT_PRODUCER_ID, version))
    w.str_(transactional_id).int32(transaction_timeout_ms)
    if version >= 3:
        w.int64(producer_id).int16(producer_epoch)
    return w.tags().done()


def parse_init_producer_id(r: VReader, version: int) -> dict:
    out = {"throttle_time_ms": r.int32(), "error_code": r.int16(), "producer_id": r.int64(),
           "producer_epoch": r.int16()}
    r.tags()
    r.end("InitProducerId")
    return out


PARSERS[API_INIT_PRODUCER_ID] = parse_init_producer_id


def idempotent_batch(values: Sequence[bytes], producer_id: int, producer_epoch: int, base_sequence: int,
                     keys: Optional[Sequence[Optional[bytes]]] = None, **kw) -> bytes:
    """A v2 batch of len(values) records from (producer_id, producer_epoch) whose first record has
    sequence `base_sequence`."""
    return simple_batch(values, keys, producer_id=producer_id, producer_epoch=producer_epoch,
                        base_sequence=base_sequence, **kw)


def _init_producer_id(self: KafkaConn, version: int = 1, transactional_id: Optional[str] = None,
                      transaction_timeout_ms: int = 60000, producer_id: int = -1,
                      producer_epoch: int = -1) -> dict:
    """InitProducerId; returns {"throttle_time_ms", "error_code", "producer_id",
    "producer_epoch"}."""
    return self.group_call(API_INIT_PRODUCER_ID, version, encode_init_producer_id(
        version, transactional_id, transaction_timeout_ms, producer_id, producer_epoch))


def _new_producer(self: KafkaConn, version: int = 1) -> Tuple[int, int]:
    """A fresh (producer_id, producer_epoch) from InitProducerId, asserting success."""
    res = self.init_producer_id(version)
    if res["error_code"] != NONE:
        raise KafkaError(res["error_code"], f"InitProducerId v{version}")
    return res["producer_id"], res["producer_epoch"]


def _produce_idempotent(self: KafkaConn, topic: str, partition: int, producer_id: int, producer_epoch: int,
                        base_sequence: int, values: Sequence[bytes],
                        keys: Optional[Sequence[Optional[bytes]]] = None, acks: int = -1,
                        version: int = 3, **batch_kw) -> dict:
    """Produce one idempotent batch; returns the partition's response (error_code, base_offset,
    ...)."""
    batch = idempotent_batch(values, producer_id, producer_epoch, base_sequence, keys, **batch_kw)
    return self.produce(topic, partition, batch, acks=acks, version=version)


KafkaConn.init_producer_id = _init_producer_id
KafkaConn.new_producer = _new_producer
KafkaConn.produce_idempotent = _produce_idempotent


# ---------------------------------------------------------------------------------------------
# Batches whose header says something the records do not (for the broker's batch checks).

INVALID_TXN_STATE = 48

ATTR_TRANSACTIONAL = 0x10
ATTR_CONTROL = 0x20


def reseal_batch(batch: bytes, attributes_or: int = 0, records_count: Optional[int] = None,
                 last_offset_delta: Optional[int] = None) -> bytes:
    """A copy of a v2 batch with attribute bits added and/or recordsCount and lastOffsetDelta
    replaced, and the CRC-32C recomputed: well-formed bytes whose header lies."""
    b = bytearray(batch)
    attributes = struct.unpack_from(">h", b, 21)[0]
    struct.pack_into(">h", b, 21, attributes | attributes_or)
    if last_offset_delta is not None:
        struct.pack_into(">i", b, 23, last_offset_delta)
    if records_count is not None:
        struct.pack_into(">i", b, 57, records_count)
    struct.pack_into(">I", b, 17, crc32c(bytes(b[21:])))
    return bytes(b)

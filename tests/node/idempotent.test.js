'use strict';
// kafkajs idempotent producer against a broker that drops every 3rd Produce response (the
// request is appended, then the connection is closed without an answer, so the client retries).
// Without idempotence the retries store duplicates, which shows the fault is hit; with
// `idempotent: true` every record is stored exactly once, in per-key order, at the offset the
// producer was told. Records are read back with kcat, an independent client.
//
// Broker address from STROM_BOOTSTRAP (which must then run with
// test.fault.produce.drop.response.every=3); without it the test starts target/release/strom (or
// STROM_BIN) itself on a free loopback port with a temporary data directory.

const { test, before, after } = require('node:test');
const assert = require('node:assert/strict');
const { unique, kcatRead, startBroker } = require('./strom_broker');

process.env.KAFKAJS_NO_PARTITIONER_WARNING = '1';
const { Kafka, Partitioners, logLevel } = require('kafkajs');

const BROKER_SETTINGS = { 'test.fault.produce.drop.response.every': '3' };
const PARTITIONS = 4;
const NKEYS = 10;
const N = 500; // records per run, sent 10 per request

let bootstrap = null;
let broker = null;

// A Kafka client whose logger counts the Produce requests it sends and keeps its errors.
function countingKafka(clientId) {
  const stats = { produceRequests: 0, errors: [] };
  const kafka = new Kafka({
    clientId,
    brokers: [bootstrap],
    logLevel: logLevel.DEBUG,
    logCreator: () => ({ level, log }) => {
      if (log.message && log.message.startsWith('Request Produce')) stats.produceRequests += 1;
      if (level <= logLevel.ERROR && stats.errors.length < 50) stats.errors.push(log.message);
    },
    retry: { retries: 5, initialRetryTime: 100 },
    connectionTimeout: 5000,
    requestTimeout: 30000,
  });
  return { kafka, stats };
}

// Sends N keyed records (keys k0..k9, value "<key>:<per-key counter>"), 10 per send() call.
// Returns the sends: [{ messages, result }].
async function produceKeyed(producer, topic) {
  const sends = [];
  for (let i = 0; i < N; i += NKEYS) {
    const messages = [];
    for (let j = i; j < i + NKEYS; j++) {
      const key = `k${j % NKEYS}`;
      messages.push({ key, value: `${key}:${Math.floor(j / NKEYS)}` });
    }
    const result = await producer.send({ topic, acks: -1, messages });
    assert.ok(result.every((r) => r.errorCode === 0), JSON.stringify(result));
    sends.push({ messages, result });
  }
  return sends;
}

before(async () => {
  broker = await startBroker(BROKER_SETTINGS);
  bootstrap = broker.bootstrap;
});

after(async () => {
  if (broker) await broker.stop();
});

async function createTopic(topic) {
  const { kafka } = countingKafka('strom-node-idem-admin');
  const admin = kafka.admin();
  await admin.connect();
  try {
    await admin.createTopics({ topics: [{ topic, numPartitions: PARTITIONS }], waitForLeaders: true });
  } finally {
    await admin.disconnect();
  }
}

test('without idempotence the dropped responses produce duplicates (the fault is hit)',
  { timeout: 120000 }, async () => {
    const topic = unique('js-idem-ctl');
    await createTopic(topic);
    const { kafka, stats } = countingKafka('strom-node-idem-ctl');
    const producer = kafka.producer({
      createPartitioner: Partitioners.DefaultPartitioner, idempotent: false, maxInFlightRequests: 1,
      retry: { retries: 10, initialRetryTime: 50, maxRetryTime: 1000 },
    });
    await producer.connect();
    try {
      await produceKeyed(producer, topic);
    } finally {
      await producer.disconnect();
    }
    const got = kcatRead(bootstrap, topic);
    const seen = new Map();
    for (const m of got) seen.set(m.payload, (seen.get(m.payload) || 0) + 1);
    const dups = [...seen.entries()].filter(([, n]) => n > 1);
    assert.ok(stats.produceRequests > N / NKEYS,
      `${stats.produceRequests} Produce requests for ${N / NKEYS} sends: no retries`);
    assert.ok(got.length > N && dups.length > 0,
      `${got.length} records stored for ${N} sent, ${dups.length} duplicated: the dropped responses were not retried`);
  });

test('idempotent producer stores every record exactly once while responses are dropped',
  { timeout: 120000 }, async () => {
    const topic = unique('js-idem');
    await createTopic(topic);
    const { kafka, stats } = countingKafka('strom-node-idem');
    const producer = kafka.producer({
      createPartitioner: Partitioners.DefaultPartitioner, idempotent: true, maxInFlightRequests: 1,
      retry: { retries: 10, initialRetryTime: 50, maxRetryTime: 1000 },
    });
    await producer.connect();
    let sends;
    try {
      sends = await produceKeyed(producer, topic);
    } finally {
      await producer.disconnect();
    }
    // Each send() is one Produce request unless it was retried.
    assert.ok(stats.produceRequests > sends.length,
      `${stats.produceRequests} Produce requests for ${sends.length} sends: no retries (errors: ${stats.errors.slice(0, 5)})`);

    const got = kcatRead(bootstrap, topic);
    const seen = new Map();
    for (const m of got) seen.set(m.payload, (seen.get(m.payload) || 0) + 1);
    const dups = [...seen.entries()].filter(([, n]) => n > 1);
    assert.deepEqual(dups, [], `records stored more than once: ${JSON.stringify(dups.slice(0, 5))}`);
    assert.equal(got.length, N, `${got.length} records stored, expected ${N}`);

    // Per partition: contiguous offsets; per key: one partition, counters 0.. in offset order.
    const byPartition = new Map();
    for (const m of got) {
      if (!byPartition.has(m.partition)) byPartition.set(m.partition, []);
      byPartition.get(m.partition).push(m);
    }
    const keyPartition = new Map();
    const counters = new Map();
    const stored = new Map(); // "partition/offset" -> payload
    for (const [p, msgs] of byPartition) {
      msgs.sort((a, b) => a.offset - b.offset);
      assert.deepEqual(msgs.map((m) => m.offset), msgs.map((_, i) => i), `partition ${p}: offsets not contiguous`);
      for (const m of msgs) {
        const [k, c] = m.payload.split(':');
        assert.equal(k, m.key, `record ${m.payload} under key ${m.key}`);
        if (!keyPartition.has(k)) keyPartition.set(k, p);
        assert.equal(keyPartition.get(k), p, `key ${k} in partitions ${keyPartition.get(k)} and ${p}`);
        if (!counters.has(k)) counters.set(k, []);
        counters.get(k).push(Number(c));
        stored.set(`${p}/${m.offset}`, m.payload);
      }
    }
    assert.equal(counters.size, NKEYS);
    for (const [k, cs] of counters) {
      assert.deepEqual(cs, cs.map((_, i) => i), `key ${k}: counters out of order or missing`);
      assert.equal(cs.length, N / NKEYS);
    }

    // The base offset each send() reported points at that send's records.
    for (const { messages, result } of sends) {
      for (const r of result) {
        const mine = messages.filter((m) => keyPartition.get(m.key) === r.partition);
        mine.forEach((m, i) => {
          const at = `${r.partition}/${Number(r.baseOffset) + i}`;
          assert.equal(stored.get(at), m.value, `send reported base offset ${r.baseOffset} on partition ${r.partition}, but ${at} holds ${stored.get(at)}`);
        });
      }
    }
  });

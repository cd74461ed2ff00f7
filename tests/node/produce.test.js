'use strict';
// kafkajs against the broker: admin topic lifecycle, keyed JSON produce with headers (read back
// with kcat, an independent client), gzip batches.
//
// Broker address from STROM_BOOTSTRAP; without it the test starts target/release/strom (or
// STROM_BIN) itself on a free loopback port with a temporary data directory.

const { test, before, after } = require('node:test');
const assert = require('node:assert/strict');
const { unique, waitFor, kcatRead, startBroker } = require('./strom_broker');

process.env.KAFKAJS_NO_PARTITIONER_WARNING = '1';
const { Kafka, Partitioners, CompressionTypes, logLevel } = require('kafkajs');

let bootstrap = null;
let broker = null;
let kafka = null;

before(async () => {
  broker = await startBroker();
  bootstrap = broker.bootstrap;
  kafka = new Kafka({
    clientId: 'strom-node-tests',
    brokers: [bootstrap],
    logLevel: logLevel.ERROR,
    retry: { retries: 5, initialRetryTime: 100 },
    connectionTimeout: 5000,
    requestTimeout: 30000,
  });
});

after(async () => {
  if (broker) await broker.stop();
});

test('admin creates, lists and deletes topics', { timeout: 90000 }, async () => {
  const admin = kafka.admin();
  await admin.connect();
  try {
    const t1 = unique('js-admin');
    const t2 = unique('js-admin');
    const created = await admin.createTopics({
      topics: [{ topic: t1, numPartitions: 3 }, { topic: t2, numPartitions: 1, configEntries: [{ name: 'retention.ms', value: '60000' }] }],
      waitForLeaders: true,
    });
    assert.equal(created, true);
    const topics = await admin.listTopics();
    assert.ok(topics.includes(t1) && topics.includes(t2), `listTopics: ${topics}`);
    const md = await admin.fetchTopicMetadata({ topics: [t1] });
    assert.deepEqual(md.topics[0].partitions.map((p) => p.partitionId).sort(), [0, 1, 2]);
    // Creating an existing topic reports it (kafkajs returns false).
    assert.equal(await admin.createTopics({ topics: [{ topic: t1, numPartitions: 3 }] }), false);

    await admin.deleteTopics({ topics: [t1], timeout: 10000 });
    await waitFor(async () => !(await admin.listTopics()).includes(t1), 'topic deletion');
    assert.ok((await admin.listTopics()).includes(t2));
  } finally {
    await admin.disconnect();
  }
});

test('keyed JSON messages with correlation-id headers round-trip', { timeout: 90000 }, async () => {
  const topic = unique('js-produce');
  const admin = kafka.admin();
  await admin.connect();
  const producer = kafka.producer({ createPartitioner: Partitioners.DefaultPartitioner, allowAutoTopicCreation: false });
  await producer.connect();
  try {
    await admin.createTopics({ topics: [{ topic, numPartitions: 1 }], waitForLeaders: true });
    const n = 120;
    const sent = [];
    const bases = [];
    for (let batch = 0; batch < 6; batch++) {
      const messages = [];
      for (let i = batch * 20; i < (batch + 1) * 20; i++) {
        const m = { key: `order-${i}`, value: JSON.stringify({ id: i, item: 'widget', qty: i % 7 }), headers: { 'correlation-id': `cid-${i}` } };
        messages.push(m);
        sent.push(m);
      }
      const res = await producer.send({ topic, acks: -1, messages });
      assert.equal(res.length, 1);
      assert.equal(res[0].errorCode, 0);
      bases.push(Number(res[0].baseOffset));
    }
    assert.deepEqual(bases, [0, 20, 40, 60, 80, 100]);

    const offsets = await admin.fetchTopicOffsets(topic);
    assert.equal(offsets.length, 1);
    assert.equal(offsets[0].high, String(n));
    assert.equal(offsets[0].low, '0');

    const got = kcatRead(bootstrap, topic);
    assert.equal(got.length, n);
    got.forEach((m, i) => {
      assert.equal(m.offset, i);
      assert.equal(m.key, sent[i].key);
      assert.deepEqual(JSON.parse(m.payload), JSON.parse(sent[i].value));
      assert.deepEqual(m.headers, ['correlation-id', `cid-${i}`]);
    });
  } finally {
    await producer.disconnect();
    await admin.disconnect();
  }
});

test('gzip batches from kafkajs are readable', { timeout: 90000 }, async () => {
  const topic = unique('js-gzip');
  const admin = kafka.admin();
  await admin.connect();
  const producer = kafka.producer({ createPartitioner: Partitioners.DefaultPartitioner });
  await producer.connect();
  try {
    await admin.createTopics({ topics: [{ topic, numPartitions: 1 }], waitForLeaders: true });
    const messages = Array.from({ length: 50 }, (_, i) => ({ key: `k${i}`, value: `compressible ${'abc'.repeat(i)}` }));
    await producer.send({ topic, acks: -1, compression: CompressionTypes.GZIP, messages });
    const got = kcatRead(bootstrap, topic);
    assert.deepEqual(got.map((m) => m.payload), messages.map((m) => m.value));
    assert.deepEqual(got.map((m) => m.key), messages.map((m) => m.key));
  } finally {
    await producer.disconnect();
    await admin.disconnect();
  }
});

test('producing to a new topic auto-creates it', { timeout: 90000 }, async () => {
  const topic = unique('js-auto');
  const producer = kafka.producer({ createPartitioner: Partitioners.DefaultPartitioner, allowAutoTopicCreation: true });
  await producer.connect();
  try {
    const res = await producer.send({ topic, acks: 1, messages: [{ value: 'first' }, { value: 'second' }] });
    assert.equal(res[0].errorCode, 0);
    const got = kcatRead(bootstrap, topic);
    assert.deepEqual(got.map((m) => m.payload), ['first', 'second']);
  } finally {
    await producer.disconnect();
  }
});

'use strict';
// kafkajs against the broker: admin topic lifecycle, keyed JSON produce with headers (read back
// with kcat, an independent client), gzip batches.
//
// Broker address from STROM_BOOTSTRAP; without it the test starts target/release/strom (or
// STROM_BIN) itself on a free loopback port with a temporary data directory.

const { test, before, after } = require('node:test');
const assert = require('node:assert/strict');
const { spawn, spawnSync } = require('node:child_process');
const crypto = require('node:crypto');
const fs = require('node:fs');
const net = require('node:net');
const os = require('node:os');
const path = require('node:path');

process.env.KAFKAJS_NO_PARTITIONER_WARNING = '1';
const { Kafka, Partitioners, CompressionTypes, logLevel } = require('kafkajs');

let bootstrap = process.env.STROM_BOOTSTRAP;
let brokerProc = null;
let brokerExit = null;
let tmpDir = null;
let kafka = null;

function unique(prefix) {
  return `${prefix}-${crypto.randomBytes(5).toString('hex')}`;
}

function freePort() {
  return new Promise((resolve, reject) => {
    const srv = net.createServer();
    srv.on('error', reject);
    srv.listen(0, '127.0.0.1', () => {
      const { port } = srv.address();
      srv.close(() => resolve(port));
    });
  });
}

function tryConnect(host, port) {
  return new Promise((resolve) => {
    const s = net.connect({ host, port });
    s.setTimeout(1000);
    s.on('connect', () => { s.destroy(); resolve(true); });
    s.on('error', () => resolve(false));
    s.on('timeout', () => { s.destroy(); resolve(false); });
  });
}

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

function brokerLog() {
  if (!tmpDir) return '';
  try {
    return fs.readFileSync(path.join(tmpDir, 'strom.log'), 'utf8').split('\n').slice(-60).join('\n');
  } catch (e) {
    return '';
  }
}

async function waitFor(pred, what, timeoutMs = 15000) {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    if (await pred()) return;
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await sleep(100);
  }
}

function kcatRead(topic) {
  const r = spawnSync('kcat', ['-b', bootstrap, '-C', '-t', topic, '-o', 'beginning', '-e', '-J'],
    { timeout: 60000, encoding: 'utf8' });
  if (r.error) throw new Error(`kcat could not run (install it: apt-get install kcat): ${r.error.message}`);
  assert.equal(r.status, 0, `kcat failed: ${r.stderr}`);
  return r.stdout.split('\n').filter((l) => l.trim()).map((l) => JSON.parse(l));
}

before(async () => {
  if (!bootstrap) {
    const bin = process.env.STROM_BIN || path.resolve(__dirname, '../../target/release/strom');
    assert.ok(fs.existsSync(bin), `broker binary ${bin} not found (cargo build --release)`);
    tmpDir = fs.mkdtempSync(path.join(os.tmpdir(), 'strom-node-'));
    const port = await freePort();
    bootstrap = `127.0.0.1:${port}`;
    const log = fs.openSync(path.join(tmpDir, 'strom.log'), 'a');
    brokerProc = spawn(bin, ['--listen', bootstrap, '--advertise', bootstrap,
      '--data-dir', path.join(tmpDir, 'data'), '--cores', '1'],
    { stdio: ['ignore', log, log], env: { RUST_LOG: 'info', ...process.env } });
    fs.closeSync(log);
    brokerExit = new Promise((resolve) => brokerProc.on('exit', (code, sig) => resolve({ code, sig })));
    // Never leave a broker behind, whatever happens to this test process.
    process.on('exit', () => { if (brokerProc.exitCode === null) brokerProc.kill('SIGKILL'); });
    const deadline = Date.now() + 30000;
    while (!(await tryConnect('127.0.0.1', port))) {
      if (brokerProc.exitCode !== null) throw new Error(`broker exited ${brokerProc.exitCode}:\n${brokerLog()}`);
      if (Date.now() > deadline) throw new Error(`broker did not listen within 30 s:\n${brokerLog()}`);
      await sleep(50);
    }
  }
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
  if (brokerProc && brokerProc.exitCode === null) {
    brokerProc.kill('SIGTERM');
    let timer;
    const timeout = new Promise((resolve) => { timer = setTimeout(() => resolve(null), 10000); });
    const res = await Promise.race([brokerExit, timeout]);
    clearTimeout(timer);
    if (res === null) {
      brokerProc.kill('SIGKILL');
      throw new Error(`broker did not exit within 10 s of SIGTERM:\n${brokerLog()}`);
    }
    assert.equal(res.code, 0, `broker exit code ${res.code} (signal ${res.sig}) after SIGTERM:\n${brokerLog()}`);
  }
  if (tmpDir) fs.rmSync(tmpDir, { recursive: true, force: true });
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

    const got = kcatRead(topic);
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
    const got = kcatRead(topic);
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
    const got = kcatRead(topic);
    assert.deepEqual(got.map((m) => m.payload), ['first', 'second']);
  } finally {
    await producer.disconnect();
  }
});

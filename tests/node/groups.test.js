'use strict';
// kafkajs consumer groups against the broker, with the consumer.run({ eachMessage }) pattern:
// one consumer reads a 3-partition topic exactly once and commits, a second consumer joining
// triggers a rebalance that splits the partitions, and a new consumer of the group resumes from
// the committed offsets without re-delivery.
//
// Broker address from STROM_BOOTSTRAP (which should then run with
// group.initial.rebalance.delay.ms=0); without it the test starts target/release/strom (or
// STROM_BIN) itself on a free loopback port with a temporary data directory.

const { test, before, after } = require('node:test');
const assert = require('node:assert/strict');
const { unique, sleep, waitFor, startBroker } = require('./strom_broker');

process.env.KAFKAJS_NO_PARTITIONER_WARNING = '1';
const { Kafka, Partitioners, AssignerProtocol, logLevel } = require('kafkajs');

// Broker settings (`-o key=value`): joins complete as soon as every member has joined.
const BROKER_SETTINGS = { 'group.initial.rebalance.delay.ms': '0' };

let bootstrap = null;
let broker = null;
let kafka = null;

before(async () => {
  broker = await startBroker(BROKER_SETTINGS);
  bootstrap = broker.bootstrap;
  kafka = new Kafka({
    clientId: 'strom-node-groups',
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

// A consumer of `groupId` that records what it receives, its group joins and any crash.
class GroupConsumer {
  constructor(groupId, name) {
    this.name = name;
    this.received = []; // { partition, offset, value }
    this.joins = []; // GROUP_JOIN payloads
    this.crashes = [];
    this.consumer = kafka.consumer({
      groupId,
      sessionTimeout: 10000,
      rebalanceTimeout: 20000,
      heartbeatInterval: 500,
      maxWaitTimeInMs: 250,
      retry: { retries: 5, initialRetryTime: 100 },
    });
    this.consumer.on(this.consumer.events.GROUP_JOIN, (e) => this.joins.push(e.payload));
    this.consumer.on(this.consumer.events.CRASH, (e) => this.crashes.push(e.payload.error));
  }

  async start(topic) {
    await this.consumer.connect();
    await this.consumer.subscribe({ topics: [topic], fromBeginning: true });
    await this.consumer.run({
      eachMessage: async ({ partition, message }) => {
        this.received.push({ partition, offset: Number(message.offset), value: message.value.toString() });
      },
    });
  }

  // Partitions of `topic` assigned in the latest join.
  assignment(topic) {
    const last = this.joins[this.joins.length - 1];
    return last ? [...(last.memberAssignment[topic] || [])].sort() : null;
  }

  status() {
    return `${this.name}: ${this.received.length} received, ${this.joins.length} joins, ` +
      `assignment ${JSON.stringify(this.joins.map((j) => j.memberAssignment))}, crashes ${this.crashes.map(String)}`;
  }

  async stop() {
    await this.consumer.disconnect();
  }
}

async function produce(producer, topic, from, to) {
  const messages = [];
  for (let i = from; i < to; i++) messages.push({ partition: i % 3, key: `k${i}`, value: `v${i}` });
  const res = await producer.send({ topic, acks: -1, messages });
  assert.ok(res.every((r) => r.errorCode === 0), JSON.stringify(res));
}

const values = (from, to) => Array.from({ length: to - from }, (_, i) => `v${from + i}`);

async function committed(admin, groupId, topic) {
  const res = await admin.fetchOffsets({ groupId, topics: [topic] });
  assert.equal(res.length, 1);
  const out = {};
  for (const p of res[0].partitions) out[p.partition] = Number(p.offset);
  return out;
}

function assertOncePerValue(received, expected, who) {
  const got = received.map((m) => m.value).sort();
  assert.deepEqual(got, [...expected].sort(), `${who}: received ${got.length}, expected ${expected.length} distinct values`);
}

test('consumer group: consume once, rebalance across two members, resume from committed offsets',
  { timeout: 120000 }, async () => {
    const topic = unique('js-group');
    const groupId = unique('js-group-g');
    const admin = kafka.admin();
    await admin.connect();
    const producer = kafka.producer({ createPartitioner: Partitioners.DefaultPartitioner, allowAutoTopicCreation: false });
    await producer.connect();
    const consumers = [];
    const make = (name) => { const c = new GroupConsumer(groupId, name); consumers.push(c); return c; };
    try {
      await admin.createTopics({ topics: [{ topic, numPartitions: 3 }], waitForLeaders: true });
      await produce(producer, topic, 0, 90);

      // One member: all partitions, every record once, offsets committed.
      const c1 = make('c1');
      await c1.start(topic);
      await waitFor(() => c1.received.length >= 90, `90 records (${c1.status()})`);
      assert.deepEqual(c1.assignment(topic), [0, 1, 2]);
      await waitFor(async () => {
        const o = await committed(admin, groupId, topic);
        return o[0] === 30 && o[1] === 30 && o[2] === 30;
      }, 'committed offsets 30/30/30');
      await sleep(500);
      assertOncePerValue(c1.received, values(0, 90), 'c1');
      for (const p of [0, 1, 2]) {
        const offs = c1.received.filter((m) => m.partition === p).map((m) => m.offset);
        assert.deepEqual(offs, Array.from({ length: 30 }, (_, i) => i), `partition ${p} offsets in order`);
      }

      // A second member: both rejoin and split the partitions.
      const c1JoinsBefore = c1.joins.length;
      const c2 = make('c2');
      await c2.start(topic);
      await waitFor(() => {
        if (c1.joins.length <= c1JoinsBefore || c2.joins.length === 0) return false;
        const a1 = c1.assignment(topic);
        const a2 = c2.assignment(topic);
        return a1.length > 0 && a2.length > 0 && [...a1, ...a2].sort().join() === '0,1,2';
      }, `a rebalance splitting partitions 0-2 between two members (${c1.status()}; ${c2.status()})`);
      const a1 = c1.assignment(topic);
      const a2 = c2.assignment(topic);

      const described = await admin.describeGroups([groupId]);
      const g = described.groups[0];
      assert.equal(g.groupId, groupId);
      assert.equal(g.state, 'Stable');
      assert.equal(g.protocolType, 'consumer');
      assert.equal(g.protocol, c1.joins[c1.joins.length - 1].groupProtocol);
      assert.equal(g.members.length, 2);
      const assignedByMember = {};
      for (const m of g.members) {
        assert.equal(m.clientId, 'strom-node-groups');
        const decoded = AssignerProtocol.MemberAssignment.decode(m.memberAssignment);
        assignedByMember[m.memberId] = [...(decoded.assignment[topic] || [])].sort();
      }
      assert.deepEqual(assignedByMember[c1.joins[c1.joins.length - 1].memberId], a1);
      assert.deepEqual(assignedByMember[c2.joins[c2.joins.length - 1].memberId], a2);
      const listed = await admin.listGroups();
      assert.ok(listed.groups.some((x) => x.groupId === groupId && x.protocolType === 'consumer'),
        JSON.stringify(listed.groups));

      // New records go to whichever member owns their partition, once; nothing is redelivered.
      const c1Before = c1.received.length;
      await produce(producer, topic, 90, 150);
      await waitFor(() => c1.received.length - c1Before + c2.received.length >= 60,
        `60 new records across both members (${c1.status()}; ${c2.status()})`);
      await sleep(500);
      const c1New = c1.received.slice(c1Before);
      assertOncePerValue([...c1New, ...c2.received], values(90, 150), 'c1+c2 after the rebalance');
      assert.ok(c1New.every((m) => a1.includes(m.partition)), `c1 got a partition outside ${a1}`);
      assert.ok(c2.received.every((m) => a2.includes(m.partition)), `c2 got a partition outside ${a2}`);
      assert.ok(c2.received.every((m) => m.offset >= 30), 'c2 was given records committed before it joined');

      await c1.stop();
      await c2.stop();
      await waitFor(async () => {
        const o = await committed(admin, groupId, topic);
        return o[0] === 50 && o[1] === 50 && o[2] === 50;
      }, 'committed offsets 50/50/50 after both members left');
      await waitFor(async () => (await admin.describeGroups([groupId])).groups[0].state === 'Empty',
        'the group to be empty once both members left', 15000);

      // A new member resumes from the committed offsets.
      await produce(producer, topic, 150, 180);
      const c3 = make('c3');
      await c3.start(topic);
      await waitFor(() => c3.received.length >= 30, `30 records for the resuming member (${c3.status()})`);
      await sleep(1000);
      assertOncePerValue(c3.received, values(150, 180), 'c3');
      for (const p of [0, 1, 2]) {
        const offs = c3.received.filter((m) => m.partition === p).map((m) => m.offset);
        assert.deepEqual(offs, Array.from({ length: 10 }, (_, i) => 50 + i), `partition ${p} resumes at 50`);
      }
      await c3.stop();
      await waitFor(async () => {
        const o = await committed(admin, groupId, topic);
        return o[0] === 60 && o[1] === 60 && o[2] === 60;
      }, 'committed offsets 60/60/60');

      // An empty group can be deleted, and its offsets go with it.
      await admin.deleteGroups([groupId]);
      const after = await committed(admin, groupId, topic);
      assert.deepEqual(after, { 0: -1, 1: -1, 2: -1 });
      for (const c of consumers) assert.deepEqual(c.crashes, [], `${c.name} crashed`);
    } finally {
      for (const c of consumers) await c.stop().catch(() => {});
      await producer.disconnect();
      await admin.disconnect();
    }
  });

'use strict';
// kafkajs against a Strom cluster (run by tests/test_replication.py): creates a topic with
// replication factor 3, produces with acks=all, reads everything back with a consumer group and
// prints what it acknowledged and read as JSON. Bootstrap list in STROM_BOOTSTRAP, topic in
// STROM_TOPIC, record count in STROM_COUNT.

process.env.KAFKAJS_NO_PARTITIONER_WARNING = '1';
const { Kafka, logLevel } = require('kafkajs');

async function main() {
  const topic = process.env.STROM_TOPIC;
  const count = Number(process.env.STROM_COUNT || '200');
  const kafka = new Kafka({
    clientId: 'strom-cluster-test',
    brokers: process.env.STROM_BOOTSTRAP.split(','),
    logLevel: logLevel.ERROR,
    retry: { retries: 8, initialRetryTime: 100 },
  });
  const admin = kafka.admin();
  await admin.connect();
  await admin.createTopics({
    topics: [{ topic, numPartitions: 3, replicationFactor: 3 }],
    waitForLeaders: true,
  });
  const md = await admin.fetchTopicMetadata({ topics: [topic] });
  await admin.disconnect();

  const producer = kafka.producer({ idempotent: true });
  await producer.connect();
  for (let i = 0; i < count; i += 20) {
    const messages = [];
    for (let j = i; j < Math.min(count, i + 20); j++) {
      messages.push({ key: `k${j % 7}`, value: `v${j}` });
    }
    const results = await producer.send({ topic, acks: -1, messages });
    for (const r of results) {
      if (r.errorCode !== 0) throw new Error(`produce: ${JSON.stringify(r)}`);
    }
  }
  await producer.disconnect();

  const consumer = kafka.consumer({ groupId: `${topic}-readers` });
  await consumer.connect();
  await consumer.subscribe({ topic, fromBeginning: true });
  const read = [];
  const done = new Promise((resolve) => {
    consumer.run({
      eachMessage: async ({ partition, message }) => {
        read.push([partition, Number(message.offset), message.value.toString()]);
        if (read.length >= count) resolve();
      },
    });
  });
  const timeout = new Promise((_, reject) => setTimeout(() => reject(new Error(`read ${read.length} of ${count}`)), 60000));
  await Promise.race([done, timeout]);
  await consumer.disconnect();
  const partitions = md.topics[0].partitions.map((p) => ({ id: p.partitionId, leader: p.leader, replicas: p.replicas, isr: p.isr }));
  console.log(JSON.stringify({ partitions, read }));
}

main().then(() => process.exit(0), (e) => { console.error(e); process.exit(1); });

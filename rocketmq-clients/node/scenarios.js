// Runs the RocketMQ scenario matrix with the official Node.js client
// (rocketmq-client-nodejs, from npm) against one endpoint.
//
// It grades nothing itself: it prints one JSON line per message it sent,
// received or acknowledged (scenario, message id, the body as hex, and what
// the scenario needs to check); the Rust test that starts the broker checks
// them.
//
// Usage: node scenarios.js ENDPOINT RUN_ID SCENARIO...
// Topics and groups are named <scenario>-<RUN_ID>; the test creates them.
'use strict';

const { Producer, SimpleConsumer, PushConsumer, ConsumeResult, FilterExpression } = require('rocketmq-client-nodejs');
const { TransactionResolution, FilterType } = require('rocketmq-client-nodejs/proto/apache/rocketmq/v2/definition_pb');

// Long polls of two seconds: long enough for the broker to answer one.
const AWAIT_MS = 2000;
const DEADLINE_MS = 60000;

function emit(fields) {
  process.stdout.write(JSON.stringify(fields) + '\n');
}

function line(event, scenario, id, body, extra = {}) {
  emit({ event, scenario, id, body: Buffer.from(body).toString('hex'), ...extra });
}

async function producer(endpoint, topic, checker) {
  const p = new Producer({ endpoints: endpoint, topic, checker });
  await p.startup();
  return p;
}

async function consumer(endpoint, group, topic, filter) {
  const subscriptions = new Map().set(topic, filter || FilterExpression.SUB_ALL);
  const c = new SimpleConsumer({ endpoints: endpoint, consumerGroup: group, subscriptions, awaitDuration: AWAIT_MS });
  await c.startup();
  return c;
}

// Receives until `count` messages came (or `within` ms passed), acking each.
async function receiveAll(c, scenario, count, { ack = true, within = DEADLINE_MS } = {}) {
  const got = [];
  const deadline = Date.now() + within;
  while (got.length < count && Date.now() < deadline) {
    const messages = await c.receive(32, 10000);
    for (const m of messages) {
      line('received', scenario, m.messageId, m.body, {
        tag: m.tag ?? null,
        keys: [...m.keys].sort(),
        properties: Object.fromEntries(m.properties),
        group: m.messageGroup ?? null,
        attempt: m.deliveryAttempt,
        at_ms: Date.now(),
      });
      if (ack) {
        await c.ack(m);
        line('acked', scenario, m.messageId, m.body);
      }
      got.push(m);
    }
  }
  return got;
}

const scenarios = {
  async normal(endpoint, name) {
    const p = await producer(endpoint, name);
    for (let i = 0; i < 20; i++) {
      const body = Buffer.from(`normal-${i}`.repeat(i + 1));
      const r = await p.send({ topic: name, body, tag: 'TagA', keys: [`key-${i}`], properties: new Map([[ 'n', `${i}` ]]) });
      line('sent', 'normal', r.messageId, body, { tag: 'TagA' });
    }
    await p.shutdown();
    const c = await consumer(endpoint, name, name);
    await receiveAll(c, 'normal', 20);
    await c.shutdown();
  },

  async fifo(endpoint, name) {
    const p = await producer(endpoint, name);
    for (let i = 0; i < 5; i++) {
      for (const g of [ 'g1', 'g2', 'g3' ]) {
        const body = Buffer.from(`${g}-${i}`);
        const r = await p.send({ topic: name, body, messageGroup: g });
        line('sent', 'fifo', r.messageId, body, { group: g, seq: i });
      }
    }
    await p.shutdown();
    const c = await consumer(endpoint, name, name);
    await receiveAll(c, 'fifo', 15);
    await c.shutdown();
  },

  async delay(endpoint, name) {
    const p = await producer(endpoint, name);
    const due = Date.now() + 3000;
    for (let i = 0; i < 3; i++) {
      const body = Buffer.from(`delay-${i}`);
      const r = await p.send({ topic: name, body, deliveryTimestamp: new Date(due) });
      line('sent', 'delay', r.messageId, body, { due_ms: due });
    }
    await p.shutdown();
    const c = await consumer(endpoint, name, name);
    await receiveAll(c, 'delay', 3);
    await c.shutdown();
  },

  async transaction(endpoint, name) {
    let checked;
    const wasChecked = new Promise(resolve => { checked = resolve; });
    const checker = {
      async check(m) {
        line('checked', 'transaction', m.messageId, m.body);
        checked();
        return TransactionResolution.COMMIT;
      },
    };
    const p = await producer(endpoint, name, checker);
    for (const outcome of [ 'commit', 'rollback', 'check' ]) {
      const body = Buffer.from(`tx-${outcome}`);
      const t = p.beginTransaction();
      const r = await p.send({ topic: name, body }, t);
      line('sent', 'transaction', r.messageId, body, { outcome });
      if (outcome === 'commit') await t.commit();
      if (outcome === 'rollback') await t.rollback();
    }
    // The third stays open until the broker checks it back.
    await Promise.race([ wasChecked, new Promise(resolve => setTimeout(resolve, DEADLINE_MS)) ]);
    const c = await consumer(endpoint, name, name);
    await receiveAll(c, 'transaction', 2);
    // Nothing else arrives: the rolled-back one never does.
    await receiveAll(c, 'transaction', 1, { within: 3000 });
    await c.shutdown();
    await p.shutdown();
  },

  async redeliver(endpoint, name) {
    const p = await producer(endpoint, name);
    const body = Buffer.from('redeliver-me');
    const r = await p.send({ topic: name, body });
    line('sent', 'redeliver', r.messageId, body);
    await p.shutdown();
    const c = await consumer(endpoint, name, name);
    const first = await receiveAll(c, 'redeliver', 1, { ack: false });
    if (first.length > 0) {
      // Visible again in a second instead of the ten asked for at receive.
      await c.changeInvisibleDuration(first[0], 1000);
    }
    await receiveAll(c, 'redeliver', 1);
    await c.shutdown();
  },

  async filters(endpoint, name) {
    const p = await producer(endpoint, name);
    for (let i = 0; i < 6; i++) {
      const tag = i % 2 === 0 ? 'TagA' : 'TagB';
      const body = Buffer.from(`filter-${i}`);
      const r = await p.send({ topic: name, body, tag, properties: new Map([[ 'n', `${i}` ]]) });
      line('sent', 'filters', r.messageId, body, { tag, n: i });
    }
    await p.shutdown();
    const tags = await consumer(endpoint, `${name}-tag`, name, new FilterExpression('TagB'));
    await receiveAll(tags, 'filters-tag', 3);
    await tags.shutdown();
    const sql = await consumer(endpoint, `${name}-sql`, name, new FilterExpression('n > 3', FilterType.SQL));
    await receiveAll(sql, 'filters-sql', 2);
    await sql.shutdown();
  },

  // Sends for our SDK to receive.
  async 'interop-send'(endpoint, name) {
    const p = await producer(endpoint, name);
    for (let i = 0; i < 5; i++) {
      const body = Buffer.from(Array.from({ length: 200 }, (_, j) => (i + j) & 0xff));
      const r = await p.send({ topic: name, body, tag: 'FromNode', keys: [ `node-${i}` ], properties: new Map([[ 'lang', 'node' ]]) });
      line('sent', 'interop-send', r.messageId, body);
    }
    await p.shutdown();
  },

  // A push consumer whose failing message is retried, then dead-lettered
  // (the group allows three attempts).
  async 'push-dlq'(endpoint, name) {
    const good = Buffer.from('push-ok');
    const bad = Buffer.from('push-fails');
    const p = await producer(endpoint, name);
    for (const [ body, fails ] of [[ good, false ], [ bad, true ]]) {
      const r = await p.send({ topic: name, body });
      line('sent', 'push-dlq', r.messageId, body, { fails });
    }
    await p.shutdown();
    let third;
    const thirdCame = new Promise(resolve => { third = resolve; });
    const messageListener = {
      consume(m) {
        line('received', 'push-dlq', m.messageId, m.body, { attempt: m.deliveryAttempt });
        if (Buffer.from(m.body).equals(bad)) {
          if (m.deliveryAttempt >= 3) third();
          return ConsumeResult.FAILURE;
        }
        line('acked', 'push-dlq', m.messageId, m.body);
        return ConsumeResult.SUCCESS;
      },
    };
    const subscriptions = new Map().set(name, FilterExpression.SUB_ALL);
    const c = new PushConsumer({ endpoints: endpoint, consumerGroup: name, subscriptions, messageListener });
    await c.startup();
    await Promise.race([ thirdCame, new Promise(resolve => setTimeout(resolve, DEADLINE_MS)) ]);
    // Time for the broker to dead-letter it after its last attempt.
    await new Promise(resolve => setTimeout(resolve, 3000));
    await c.shutdown();
  },

  // Receives what our SDK sent (the test sent 5 first).
  async 'interop-receive'(endpoint, name) {
    const c = await consumer(endpoint, name, name);
    await receiveAll(c, 'interop-receive', 5);
    await c.shutdown();
  },
};

async function main() {
  const [ endpoint, run, ...names ] = process.argv.slice(2);
  for (const scenario of names) {
    await scenarios[scenario](endpoint, `${scenario}-${run}`);
    emit({ event: 'done', scenario });
  }
  process.exit(0);
}

main().catch(e => {
  console.error(e);
  process.exit(1);
});

// `npm run bench:memory`: MemoryBank updates per second (overwrite / append / blend) at batch 1, 64
// and 4,096 users on the native CPU (and CUDA when present), and bytes stored per user against a
// full per-layer KV cache of the same history; beside it, the same updates (and reads) through
// RedisMemoryStore on loopback, on one redis-server and on a 3-node Redis Cluster started here, with
// the bytes each user takes in Redis. Table + JSON under bench/results/.
import * as fs from 'fs';
import * as os from 'os';
import * as path from 'path';
import { backends, MemoryBank, RedisMemoryStore, tensor } from '../lib/index';
import type { Device, RedisClientLike } from '../lib/index';
import { randomFloats, timeIt } from './ort-peer';
import { RedisClusterServers, RedisServer, redisUnavailable } from './redis-servers';

const USERS = 100_000, SLOTS = 4, WIDTH = 64;  // Rec2PM: C = 4 Preference Memory tokens of d = 64

async function main() {
  const info = backends();
  const devices: Device[] = info.cuda.available ? ['cpu', 'cuda'] : ['cpu'];
  console.log(`lifelong-kernels bench: MemoryBank, ${USERS} users x ${SLOTS} slots x ${WIDTH} float32, ${os.cpus().length} CPU threads`);
  console.log(`CUDA: ${info.cuda.available ? info.cuda.devices.map((d) => d.name).join(', ') : 'unavailable (' + info.cuda.reason + ')'}\n`);
  const rows: Record<string, unknown>[] = [];
  console.log('device  op          batch   ms/call   users/s');
  for (const device of devices) {
    for (const op of ['overwrite', 'append', 'blend'] as const) {
      const bank = new MemoryBank({ users: USERS, slots: op === 'append' ? SLOTS * 4 : SLOTS, width: WIDTH, device,
        mode: op === 'append' ? 'append' : 'overwrite', overflow: 'evict-oldest' });
      for (const batch of [1, 64, 4096]) {
        const ids = Int32Array.from({ length: batch }, (_, i) => (i * 7919) % USERS);
        const tokens = tensor(randomFloats(batch * SLOTS * WIDTH, batch), [batch * SLOTS, WIDTH], { device });
        const counts = new Int32Array(batch).fill(SLOTS);
        if (op === 'blend') await bank.update(ids, tokens, counts);
        const t = await timeIt(() => bank.update(ids, tokens, counts, op === 'blend' ? { blend: 0.5 } : {}), { minMs: 300 });
        const usersPerSecond = batch / (t.medianMs / 1000);
        rows.push({ device, op, batch, msPerCall: t.medianMs, usersPerSecond });
        console.log(`${device.padEnd(7)} ${op.padEnd(10)} ${String(batch).padStart(6)} ${t.medianMs.toFixed(3).padStart(9)} ${usersPerSecond.toExponential(2).padStart(9)}`);
        tokens.dispose();
      }
      bank.dispose();
    }
  }
  const redis = await redisRows(rows);
  // Storage per user: Rec2PM's C x d tokens vs a per-layer K/V cache of the same history (16 layers,
  // K and V of d = 64 for the 4 memory positions, as in PAPERS.md's 1 KB vs 32 KB).
  const memoryBytes = SLOTS * WIDTH * 4;
  const kvBytes = 16 * 2 * SLOTS * WIDTH * 4;
  const historyKvBytes = 16 * 2 * 1147 * WIDTH * 4;  // full-history KV cache at the average history length 1,147
  console.log(`\nbytes per user: Preference Memory ${memoryBytes} B; per-layer KV memory of the same tokens ${kvBytes} B (x${kvBytes / memoryBytes}); full KV cache of a 1,147-item history ${(historyKvBytes / 1e6).toFixed(1)} MB`);
  const dir = path.join(__dirname, '..', '..', 'bench', 'results');
  fs.mkdirSync(dir, { recursive: true });
  const file = path.join(dir, `memory-bank-${new Date().toISOString().replace(/[:.]/g, '-')}.json`);
  fs.writeFileSync(file, JSON.stringify({ bench: 'MemoryBank.update', date: new Date().toISOString(), users: USERS, slots: SLOTS, width: WIDTH, rows,
    bytesPerUser: { preferenceMemory: memoryBytes, perLayerKvMemory: kvBytes, fullHistoryKvCache: historyKvBytes }, redis }, null, 2));
  console.log(`wrote ${path.relative(process.cwd(), file)}`);
}

// The same updates through RedisMemoryStore (CPU kernels), and reads, on a single node and on a
// 3-node cluster. Every phase of a call sends all its users' commands at once: the pipeline depth
// is the batch size, one round trip per node per phase (an update: read, then compare-and-set).
async function redisRows(rows: Record<string, unknown>[]): Promise<Record<string, unknown>> {
  const reason = redisUnavailable();
  if (reason) {
    console.log(`\nRedisMemoryStore: skipped (${reason})`);
    return { skipped: reason };
  }
  const { createClient, createCluster } = await import('redis');
  const single = await RedisServer.start();
  const cluster = await RedisClusterServers.start(3);
  const out: Record<string, unknown> = { pipelineDepth: 'batch size (all of a phase in flight at once)', roundTripsPerUpdate: '2 per node' };
  try {
    console.log(`\nRedisMemoryStore on loopback (redis-server ${(await single.cli('info', 'server')).match(/redis_version:(\S+)/)?.[1]}), ${SLOTS} x ${WIDTH} float32 per user, CPU kernels;`);
    console.log('pipeline depth = batch (one round trip per node per phase; an update is a read phase and a compare-and-set phase)');
    console.log('target        op          batch   ms/call   users/s');
    for (const [target, connect, nodes] of [
      ['redis-single', () => createClient({ url: single.url }), [single]],
      ['redis-cluster', () => createCluster({ rootNodes: cluster.rootNodes }), cluster.nodes],
    ] as const) {
      const client = connect();
      client.on('error', () => undefined);
      await client.connect();
      for (const op of ['overwrite', 'append', 'blend', 'read'] as const) {
        const store = new RedisMemoryStore(client as unknown as RedisClientLike, { slots: op === 'append' ? SLOTS * 4 : SLOTS, width: WIDTH,
          mode: op === 'append' ? 'append' : 'overwrite', overflow: 'evict-oldest', keyPrefix: `bench:${op}:`, timeoutMs: 120000 });
        for (const batch of [1, 64, 4096]) {
          const ids = Array.from({ length: batch }, (_, i) => (i * 7919) % USERS);
          const tokens = tensor(randomFloats(batch * SLOTS * WIDTH, batch), [batch * SLOTS, WIDTH]);
          const counts = new Int32Array(batch).fill(SLOTS);
          if (op === 'blend' || op === 'read') await store.update(ids, tokens, counts);
          const t = await timeIt(async () => {
            if (op === 'read') (await store.read(ids)).tokens.dispose();
            else await store.update(ids, tokens, counts, op === 'blend' ? { blend: 0.5 } : {});
          }, { minMs: 500 });
          const usersPerSecond = batch / (t.medianMs / 1000);
          rows.push({ device: target, op, batch, pipelineDepth: batch, msPerCall: t.medianMs, usersPerSecond });
          console.log(`${target.padEnd(13)} ${op.padEnd(10)} ${String(batch).padStart(6)} ${t.medianMs.toFixed(3).padStart(9)} ${usersPerSecond.toExponential(2).padStart(9)}`);
          tokens.dispose();
        }
      }
      // The floor under an update: node-redis alone, a pipelined GET then a pipelined SET of a
      // record-sized value per user (no check, no kernel, no compare-and-set).
      const raw = (client as unknown as RedisClientLike).withCommandOptions({ typeMapping: { 36: Buffer } } as never) as {
        get(k: string): Promise<unknown>; set(k: string, v: Buffer): Promise<unknown> };
      const value = Buffer.alloc(SLOTS * WIDTH * 4 + 36, 7);
      for (const batch of [1, 64, 4096]) {
        const keys = Array.from({ length: batch }, (_, i) => `bench:raw:${(i * 7919) % USERS}`);
        const t = await timeIt(async () => {
          await Promise.all(keys.map((k) => raw.get(k)));
          await Promise.all(keys.map((k) => raw.set(k, value)));
        }, { minMs: 500 });
        const usersPerSecond = batch / (t.medianMs / 1000);
        rows.push({ device: target, op: 'node-redis GET+SET', batch, pipelineDepth: batch, msPerCall: t.medianMs, usersPerSecond });
        console.log(`${target.padEnd(13)} ${'GET+SET'.padEnd(10)} ${String(batch).padStart(6)} ${t.medianMs.toFixed(3).padStart(9)} ${usersPerSecond.toExponential(2).padStart(9)}  (node-redis alone: the floor)`);
      }
      // Bytes per user in Redis: the record, and the server's memory per key (record, key, overheads).
      const users = 20000;
      const store = new RedisMemoryStore(client as unknown as RedisClientLike, { slots: SLOTS, width: WIDTH, mode: 'overwrite', keyPrefix: 'bench:size:', timeoutMs: 120000 });
      const used = async () => (await Promise.all(nodes.map((n) => n.cli('info', 'memory'))))
        .reduce((sum, info) => sum + Number(/used_memory:(\d+)/.exec(info)![1]), 0);
      const before = await used();
      for (let at = 0; at < users; at += 4096) {
        const ids = Array.from({ length: Math.min(4096, users - at) }, (_, i) => at + i);
        await store.update(ids, tensor(randomFloats(ids.length * SLOTS * WIDTH, at + 1), [ids.length * SLOTS, WIDTH]), new Int32Array(ids.length).fill(SLOTS));
      }
      const perUser = (await used() - before) / users;
      out[target] = { recordBytes: store.bytesPerUser, serverBytesPerUser: perUser };
      console.log(`${target}: record ${store.bytesPerUser} B per user (${SLOTS * WIDTH * 4} B of tokens + 36 B header and checksum); server memory ${perUser.toFixed(0)} B per user (${users} users; key and allocator overhead included)`);
      client.destroy();
    }
  } finally {
    await Promise.all([single.stop(), cluster.stop()]);
  }
  return out;
}

main().catch((e) => { console.error(e); process.exit(1); });

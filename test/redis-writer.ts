// A writer process for the RedisMemoryStore concurrency test: connects to the server or cluster
// given in argv, waits for a line on stdin (so that every writer starts at once), then appends one
// token per user per step to every user, the token's value naming the writer and the step, and
// prints a line of JSON when done.
import { createClient, createCluster } from 'redis';
import { RedisMemoryStore, tensor } from '../lib/index';

async function main() {
  const [target, writer, users, steps, width, keyPrefix] = process.argv.slice(2);
  const endpoints = JSON.parse(target) as { url?: string; rootNodes?: { url: string }[] };
  const client = endpoints.rootNodes ? createCluster({ rootNodes: endpoints.rootNodes }) : createClient({ url: endpoints.url });
  client.on('error', () => undefined);
  await client.connect();
  const n = Number(users), w = Number(width), slots = 2 * Number(steps);
  const store = new RedisMemoryStore(client, { slots, width: w, mode: 'append', overflow: 'error', keyPrefix, timeoutMs: 60000 });
  const ids = Array.from({ length: n }, (_, u) => (u % 2 ? u : `user-${u}`));
  await new Promise((resolve) => process.stdin.once('data', resolve));
  process.stdin.destroy();
  for (let step = 0; step < Number(steps); step++) {
    const value = Number(writer) * 1000 + step;
    await store.update(ids, tensor(new Float32Array(n * w).fill(value), [n, w]), new Int32Array(n).fill(1));
  }
  process.stdout.write(JSON.stringify({ writer: Number(writer), done: true }) + '\n');
  client.destroy();
}

main().catch((e) => { console.error(e); process.exit(1); });

// `npm run bench:memory`: MemoryBank updates per second (overwrite / append / blend) at batch 1, 64
// and 4,096 users on the native CPU (and CUDA when present), and bytes stored per user against a
// full per-layer KV cache of the same history. Table + JSON under bench/results/.
import * as fs from 'fs';
import * as os from 'os';
import * as path from 'path';
import { backends, MemoryBank, tensor } from '../lib/index';
import type { Device } from '../lib/index';
import { randomFloats, timeIt } from './ort-peer';

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
    bytesPerUser: { preferenceMemory: memoryBytes, perLayerKvMemory: kvBytes, fullHistoryKvCache: historyKvBytes } }, null, 2));
  console.log(`wrote ${path.relative(process.cwd(), file)}`);
}

main().catch((e) => { console.error(e); process.exit(1); });

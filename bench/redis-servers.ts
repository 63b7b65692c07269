// Real Redis servers for RedisMemoryStore's tests and benchmark: a single redis-server, or a Redis
// Cluster of several, each on a free loopback port in a temporary folder, stopped (and the folder
// removed) by stop(). Needs the Debian packages redis-server and redis-tools (.ci/run installs them).
import { ChildProcess, execFile, spawn, spawnSync } from 'child_process';
import { promises as fsp } from 'fs';
import * as net from 'net';
import * as os from 'os';
import * as path from 'path';
import { promisify } from 'util';

const run = promisify(execFile);
const sleep = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms));

/** Why no Redis server can be started here, or undefined when one can. */
export function redisUnavailable(): string | undefined {
  for (const tool of ['redis-server', 'redis-cli'])
    if (spawnSync(tool, ['--version'], { encoding: 'utf8' }).status !== 0)
      return `${tool} is not installed (Debian: apt-get install -y redis-server redis-tools)`;
  return undefined;
}

// Servers die with the process that started them, however it ends (ava ends a timed-out worker
// with a signal).
const live = new Set<ChildProcess>();
const killLive = () => { for (const p of live) { p.kill('SIGCONT'); p.kill('SIGKILL'); } };
process.on('exit', killLive);
for (const signal of ['SIGTERM', 'SIGINT', 'SIGHUP'] as const)
  process.once(signal, () => { killLive(); process.kill(process.pid, signal); });

function portIsFree(port: number): Promise<boolean> {
  return new Promise((resolve) => {
    const s = net.createServer();
    s.once('error', () => resolve(false));
    s.listen(port, '127.0.0.1', () => s.close(() => resolve(true)));
  });
}

/** A port that is free, with its cluster bus port (port + 10000) free too. */
async function freePort(): Promise<number> {
  for (;;) {
    const port = 20000 + Math.floor(Math.random() * 30000);
    if (await portIsFree(port) && await portIsFree(port + 10000)) return port;
  }
}

/** PING over a raw socket: true once the server answers +PONG. */
function ping(port: number): Promise<boolean> {
  return new Promise((resolve) => {
    const s = net.connect(port, '127.0.0.1');
    let got = '';
    const done = (ok: boolean) => { s.destroy(); resolve(ok); };
    s.setTimeout(1000, () => done(false));
    s.on('error', () => done(false));
    s.on('connect', () => s.write('PING\r\n'));
    s.on('data', (d) => { got += d.toString(); if (got.includes('\r\n')) done(got.startsWith('+PONG')); });
  });
}

export interface RedisServerOptions {
  /** Cluster mode (`--cluster-enabled yes`). */
  cluster?: boolean;
  /** Append-only file with fsync before every reply, so what was acknowledged survives SIGKILL. */
  durable?: boolean;
}

export class RedisServer {
  #proc: ChildProcess | undefined;
  private constructor(readonly port: number, readonly dir: string, readonly options: RedisServerOptions) {}

  static async start(options: RedisServerOptions = {}, port?: number, dir?: string): Promise<RedisServer> {
    const server = new RedisServer(port ?? await freePort(), dir ?? await fsp.mkdtemp(path.join(os.tmpdir(), 'lk-redis-')), options);
    await server.#launch();
    return server;
  }

  get url(): string { return `redis://127.0.0.1:${this.port}`; }
  get pid(): number | undefined { return this.#proc?.pid; }

  async #launch(): Promise<void> {
    const args = ['--port', String(this.port), '--bind', '127.0.0.1', '--dir', this.dir, '--save', '', '--daemonize', 'no',
      '--logfile', path.join(this.dir, 'redis.log'), '--appendonly', this.options.durable ? 'yes' : 'no', '--appendfsync', 'always'];
    if (this.options.cluster)
      args.push('--cluster-enabled', 'yes', '--cluster-config-file', path.join(this.dir, 'nodes.conf'), '--cluster-node-timeout', '2000');
    const proc = spawn('redis-server', args, { stdio: 'ignore' });
    this.#proc = proc;
    live.add(proc);
    proc.once('exit', () => live.delete(proc));
    for (let i = 0; i < 200; i++) {
      if (proc.exitCode !== null) break;
      if (await ping(this.port)) return;
      await sleep(50);
    }
    throw new Error(`redis-server on port ${this.port} did not start (log: ${path.join(this.dir, 'redis.log')})`);
  }

  /** Sends `signal` to the server (SIGKILL: dies at once, mid-command; SIGSTOP / SIGCONT: hangs / resumes). */
  signal(signal: NodeJS.Signals): void { this.#proc?.kill(signal); }

  async #exited(): Promise<void> {
    const proc = this.#proc;
    if (!proc || proc.exitCode !== null || proc.signalCode !== null) return;
    await new Promise((resolve) => proc.once('exit', resolve));
  }

  /** Kills the server with SIGKILL and waits until it is gone. */
  async kill(): Promise<void> {
    this.signal('SIGKILL');
    await this.#exited();
  }

  /** Starts it again on the same port and folder (a durable server reloads its append-only file). */
  async restart(): Promise<void> {
    await this.#exited();
    await this.#launch();
  }

  async cli(...args: string[]): Promise<string> {
    return (await run('redis-cli', ['-p', String(this.port), ...args])).stdout;
  }

  async stop(): Promise<void> {
    this.signal('SIGCONT');
    await this.kill();
    await fsp.rm(this.dir, { recursive: true, force: true });
  }
}

/** A Redis Cluster of `size` masters (no replicas) covering all 16,384 slots. */
export class RedisClusterServers {
  private constructor(readonly nodes: RedisServer[]) {}

  static async start(size = 3, options: { durable?: boolean } = {}): Promise<RedisClusterServers> {
    const nodes: RedisServer[] = [];
    try {
      for (let i = 0; i < size; i++) nodes.push(await RedisServer.start({ cluster: true, durable: options.durable }));
      await run('redis-cli', ['--cluster', 'create', ...nodes.map((n) => `127.0.0.1:${n.port}`), '--cluster-replicas', '0', '--cluster-yes']);
      for (let i = 0; i < 200; i++) {
        const states = await Promise.all(nodes.map((n) => n.cli('cluster', 'info')));
        if (states.every((s) => s.includes('cluster_state:ok'))) return new RedisClusterServers(nodes);
        await sleep(100);
      }
      throw new Error('the Redis Cluster did not reach cluster_state:ok');
    } catch (e) {
      await Promise.all(nodes.map((n) => n.stop()));
      throw e;
    }
  }

  get rootNodes(): { url: string }[] { return this.nodes.map((n) => ({ url: n.url })); }

  async stop(): Promise<void> {
    await Promise.all(this.nodes.map((n) => n.stop()));
  }
}

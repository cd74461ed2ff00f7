'use strict';
// Shared by the kafkajs tests: start (or reuse, via STROM_BOOTSTRAP) a strom broker on a free
// loopback port with a temporary data directory, stop it with SIGTERM (exit 0 within 10 s), and
// small helpers (unique names, bounded waits, reading a topic back with kcat).

const assert = require('node:assert/strict');
const { spawn, spawnSync } = require('node:child_process');
const crypto = require('node:crypto');
const fs = require('node:fs');
const net = require('node:net');
const os = require('node:os');
const path = require('node:path');

function unique(prefix) {
  return `${prefix}-${crypto.randomBytes(5).toString('hex')}`;
}

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

async function waitFor(pred, what, timeoutMs = 30000) {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    if (await pred()) return;
    if (Date.now() > deadline) throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}`);
    await sleep(100);
  }
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

/** Reads a whole topic with kcat (JSON envelopes). */
function kcatRead(bootstrap, topic) {
  const r = spawnSync('kcat', ['-b', bootstrap, '-C', '-t', topic, '-o', 'beginning', '-e', '-J'],
    { timeout: 60000, encoding: 'utf8', maxBuffer: 64 * 1024 * 1024 });
  if (r.error) throw new Error(`kcat could not run (install it: apt-get install kcat): ${r.error.message}`);
  assert.equal(r.status, 0, `kcat failed: ${r.stderr}`);
  return r.stdout.split('\n').filter((l) => l.trim()).map((l) => JSON.parse(l));
}

/**
 * A broker for one test file: `STROM_BOOTSTRAP` if set, else target/release/strom (or
 * STROM_BIN) started with `settings` as `-o key=value`. Returns { bootstrap, log(), stop() }.
 */
async function startBroker(settings = {}) {
  if (process.env.STROM_BOOTSTRAP) {
    return { bootstrap: process.env.STROM_BOOTSTRAP, log: () => '', stop: async () => {} };
  }
  const bin = process.env.STROM_BIN || path.resolve(__dirname, '../../target/release/strom');
  assert.ok(fs.existsSync(bin), `broker binary ${bin} not found (cargo build --release)`);
  const tmpDir = fs.mkdtempSync(path.join(os.tmpdir(), 'strom-node-'));
  const port = await freePort();
  const bootstrap = `127.0.0.1:${port}`;
  const logPath = path.join(tmpDir, 'strom.log');
  const log = () => {
    try {
      return fs.readFileSync(logPath, 'utf8').split('\n').slice(-60).join('\n');
    } catch (e) {
      return '';
    }
  };
  const fd = fs.openSync(logPath, 'a');
  const opts = Object.entries(settings).flatMap(([k, v]) => ['-o', `${k}=${v}`]);
  const proc = spawn(bin, ['--listen', bootstrap, '--advertise', bootstrap,
    '--data-dir', path.join(tmpDir, 'data'), '--cores', '1', ...opts],
  { stdio: ['ignore', fd, fd], env: { RUST_LOG: 'info', ...process.env } });
  fs.closeSync(fd);
  const exited = new Promise((resolve) => proc.on('exit', (code, sig) => resolve({ code, sig })));
  // Never leave a broker behind, whatever happens to this test process.
  process.on('exit', () => { if (proc.exitCode === null) proc.kill('SIGKILL'); });
  const deadline = Date.now() + 30000;
  while (!(await tryConnect('127.0.0.1', port))) {
    if (proc.exitCode !== null) throw new Error(`broker exited ${proc.exitCode}:\n${log()}`);
    if (Date.now() > deadline) throw new Error(`broker did not listen within 30 s:\n${log()}`);
    await sleep(50);
  }
  const stop = async () => {
    if (proc.exitCode === null) {
      proc.kill('SIGTERM');
      let timer;
      const timeout = new Promise((resolve) => { timer = setTimeout(() => resolve(null), 10000); });
      const res = await Promise.race([exited, timeout]);
      clearTimeout(timer);
      if (res === null) {
        proc.kill('SIGKILL');
        throw new Error(`broker did not exit within 10 s of SIGTERM:\n${log()}`);
      }
      assert.equal(res.code, 0, `broker exit code ${res.code} (signal ${res.sig}) after SIGTERM:\n${log()}`);
    }
    fs.rmSync(tmpDir, { recursive: true, force: true });
  };
  return { bootstrap, log, stop };
}

module.exports = { unique, sleep, waitFor, kcatRead, startBroker };

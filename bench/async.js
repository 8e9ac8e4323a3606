#!/usr/bin/env node
'use strict';

/*
 * Async throughput: cordon's runner threads against isolated-vm's.
 *
 *   node bench/async.js [--quick]
 *
 * 1. `1+1` evaluated asynchronously, µs per operation, with 1 call in
 *    flight at a time (latency of the thread hop) and with 64 in flight
 *    (throughput): cordon `context.run` vs isolated-vm `context.eval`.
 * 2. CPU-bound jobs (a 2e7-iteration loop each) on one isolate versus
 *    spread over N isolates, N = the machine's parallelism: the speed-up
 *    of N isolates over one, for cordon and isolated-vm.
 *
 * Both libraries run in this one process, one after the other, so their
 * figures share the machine's load. isolated-vm needs --no-node-snapshot
 * on Node >= 20: the script re-executes itself with it.
 */
const { spawnSync } = require('node:child_process');
const os = require('node:os');

const FLAGS = ['--no-node-snapshot', '--expose-gc'];
if (!FLAGS.every((f) => process.execArgv.includes(f))) {
  const child = spawnSync(process.execPath, [...new Set([...process.execArgv, ...FLAGS]), __filename,
    ...process.argv.slice(2)], { stdio: 'inherit' });
  process.exit(child.status ?? 1);
}

const QUICK = process.argv.includes('--quick');
const cordon = require('..');
let ivm;
try {
  ivm = require('isolated-vm');
} catch (error) {
  console.log(`isolated-vm not loaded (${error.message.split('\n')[0]}); run \`npm --prefix bench install\``);
}

const now = () => Number(process.hrtime.bigint()) / 1e3; // µs

// µs per op of `op()` (a promise), `depth` in flight, over `total` ops.
async function pipeline(op, depth, total) {
  let started = 0;
  const worker = async () => {
    while (started < total) {
      started++;
      await op();
    }
  };
  const t0 = now();
  await Promise.all(Array.from({ length: depth }, worker));
  return (now() - t0) / total;
}

// The best of `rounds` rounds.
async function best(rounds, fn) {
  let min = Infinity;
  for (let i = 0; i < rounds; i++) min = Math.min(min, await fn());
  return min;
}

const LOOP = '(() => { let s = 0; for (let i = 0; i < 2e7; i++) s = (s + i) % 1000003; return s; })()';

async function main() {
  const rounds = QUICK ? 3 : 7;
  const ops = QUICK ? 5000 : 20000;
  const cores = Math.max(2, os.availableParallelism());
  const rows = [];

  // 1. eval('1+1')
  const iso = new cordon.Isolate();
  const ctx = iso.createContext();
  const cEval = (depth) => best(rounds, () => pipeline(() => ctx.run('1+1', { timeout: 1000 }), depth, ops));
  let iEval;
  let ivmIso;
  if (ivm) {
    ivmIso = new ivm.Isolate();
    const ictx = await ivmIso.createContext();
    iEval = (depth) => best(rounds, () => pipeline(() => ictx.eval('1+1', { timeout: 1000 }), depth, ops));
  }
  for (const depth of [1, 64]) {
    await cEval(depth); // warm up
    const c = await cEval(depth);
    const i = iEval ? await iEval(depth) : NaN;
    rows.push([`async eval 1+1, ${depth} in flight (µs/op)`, c.toFixed(2), i.toFixed(2), (c / i).toFixed(2)]);
  }

  // 2. N isolates on N cores
  const jobs = cores * (QUICK ? 2 : 4);
  const spread = async (contexts, run) => {
    const t0 = now();
    await Promise.all(Array.from({ length: jobs }, (_, k) => run(contexts[k % contexts.length])));
    return (now() - t0) / 1e3; // ms
  };
  const cIsos = Array.from({ length: cores }, () => new cordon.Isolate());
  const cCtxs = cIsos.map((i) => i.createContext());
  const cRun = (c) => c.run(LOOP);
  const c1 = await best(rounds > 3 ? 3 : rounds, () => spread(cCtxs.slice(0, 1), cRun));
  const cN = await best(rounds > 3 ? 3 : rounds, () => spread(cCtxs, cRun));
  let i1 = NaN;
  let iN = NaN;
  if (ivm) {
    const iIsos = Array.from({ length: cores }, () => new ivm.Isolate());
    const iCtxs = await Promise.all(iIsos.map((i) => i.createContext()));
    const iRun = (c) => c.eval(LOOP);
    i1 = await best(rounds > 3 ? 3 : rounds, () => spread(iCtxs.slice(0, 1), iRun));
    iN = await best(rounds > 3 ? 3 : rounds, () => spread(iCtxs, iRun));
    iIsos.forEach((i) => i.dispose());
  }
  rows.push([`${jobs} loops on 1 isolate (ms)`, c1.toFixed(0), i1.toFixed(0), (c1 / i1).toFixed(2)]);
  rows.push([`${jobs} loops on ${cores} isolates (ms)`, cN.toFixed(0), iN.toFixed(0), (cN / iN).toFixed(2)]);
  rows.push([`speed-up of ${cores} isolates over 1`, (c1 / cN).toFixed(2), (i1 / iN).toFixed(2), '']);
  cIsos.forEach((i) => i.dispose());
  iso.dispose();
  ivmIso?.dispose();

  const header = ['', 'cordon', 'isolated-vm', 'cordon/ivm'];
  const widths = header.map((h, k) => Math.max(h.length, ...rows.map((r) => r[k].length)));
  const line = (r) => r.map((c, k) => (k === 0 ? c.padEnd(widths[k]) : c.padStart(widths[k]))).join('  ');
  console.log(`node ${process.version}, ${os.cpus().length} CPUs (${cores} used), best of ${rounds} rounds`);
  console.log(line(header));
  for (const r of rows) console.log(line(r));
}

main().catch((error) => {
  console.error(error);
  process.exit(1);
});

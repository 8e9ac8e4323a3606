#!/usr/bin/env node
'use strict';

// The seeded fuzzer of cordon's public API. Each round is a child process
// (child.js) running a random sequence of calls over two isolates, in the
// main thread or a worker, ended cleanly, by process.exit() or by
// worker.terminate() at a random moment. A round fails on a crash, a hang,
// a sanitizer report, an error code cordon does not document, an uncoded
// error thrown by cordon's own code, or live records left behind.
//
//   node test/fuzz/run.js [--seed N] [--seconds S] [--rounds R] [--ops N] [--asan]
//
// The same seed replays the same rounds; a failing round prints the
// command that replays it alone. Ends with one summary line.
const { spawnSync } = require('node:child_process');
const path = require('node:path');
const { asanEnv } = require('../support/asan-env');

const args = process.argv.slice(2);
const option = (name, fallback) => {
  const i = args.indexOf(`--${name}`);
  return i >= 0 ? Number(args[i + 1]) : fallback;
};
const seed = option('seed', 1);
const seconds = option('seconds', 60);
const maxRounds = option('rounds', Infinity);
const ops = option('ops', 60);
const asan = args.includes('--asan');
const env = asan ? asanEnv() : process.env;
const child = path.join(__dirname, 'child.js');
// A round's calls are bounded (timeouts under 250 ms, 5 s to settle): a
// round still going after this is a hang.
const ROUND_TIMEOUT = (asan ? 120 : 45) * 1000;

function roundSeed(r) {
  let h = (seed * 0x9e3779b1 + r * 0x85ebca6b) >>> 0;
  h ^= h >>> 16;
  return Math.imul(h, 0x7feb352d) >>> 0 || 1;
}

const start = Date.now();
let rounds = 0;
let operations = 0;
const failures = [];
while (rounds < maxRounds && (Date.now() - start) / 1000 < seconds) {
  const s = roundSeed(rounds);
  const where = s % 4 === 0 ? 'worker' : 'main';
  const end = ['clean', 'clean', 'exit', 'terminate'][(s >>> 2) % 4];
  const shape = where === 'main' && end === 'terminate' ? 'clean' : end;
  const argv = ['--expose-gc', child, String(s), String(ops), where, shape];
  const r = spawnSync(process.execPath, argv, { env, encoding: 'utf8', timeout: ROUND_TIMEOUT, maxBuffer: 64 << 20 });
  rounds++;
  const problems = [];
  const expectStatus = where === 'main' && shape === 'exit' ? 7 : 0;
  if (r.error && r.error.code === 'ETIMEDOUT') problems.push(`hang: still running after ${ROUND_TIMEOUT / 1000} s`);
  else if (r.signal) problems.push(`killed by ${r.signal}`);
  else if (r.status !== expectStatus) problems.push(`exit status ${r.status}, expected ${expectStatus}`);
  if (/AddressSanitizer|Fatal error|FATAL ERROR|Segmentation fault|Assertion/.test(r.stderr)) {
    problems.push(`stderr: ${r.stderr.split('\n').filter((l) => /Sanitizer|Fatal|FATAL|Assert|#\d/.test(l)).slice(0, 12).join(' | ')}`);
  }
  const line = r.stdout.trim().split('\n').filter((l) => l.startsWith('{')).pop();
  if (line !== undefined) {
    const summary = JSON.parse(line);
    operations += summary.ops;
    problems.push(...summary.unexpected);
  } else if (shape === 'clean') {
    problems.push('no summary from a round that should have ended cleanly');
  } else {
    operations += ops; // ended by exit or terminate: counted as run
  }
  if (problems.length > 0) {
    failures.push({ round: rounds - 1, seed: s, where, end: shape, problems });
    console.log(`fuzz: round ${rounds - 1} failed (replay: node${asan ? ' (ASAN env)' : ''} --expose-gc ${path.relative(process.cwd(), child)} ${s} ${ops} ${where} ${shape})`);
    for (const p of problems) console.log(`  ${p}`);
  }
}
const took = ((Date.now() - start) / 1000).toFixed(1);
console.log(`fuzz: seed ${seed}, ${rounds} rounds, ${operations} operations in ${took} s${asan ? ' (AddressSanitizer)' : ''}, failures ${failures.length}`);
process.exit(failures.length > 0 ? 1 : 0);

#!/usr/bin/env node
'use strict';

/*
 * cordon benchmark harness.
 *
 * Compares per-operation cost of cordon against its peers:
 *   - node:vm             (built in; same isolate, so not a real isolation peer)
 *   - isolated-vm         (separate V8 isolates, like cordon)
 *   - quickjs-emscripten  (QuickJS compiled to WebAssembly)
 *
 * Usage:
 *   npm --prefix bench install        # once; builds isolated-vm from source if needed
 *   node bench/run.js [--quick] [--rounds=N] [FILTER]
 *
 *   FILTER      only run rows whose name contains this substring (case-insensitive)
 *   --quick     shorter warm-up and rounds (for smoke-testing the harness)
 *   --rounds=N  number of timed rounds (default 7; 5 with --quick)
 *
 * Method: for each (row, implementation) pair the harness runs `setup`, then
 * warms `op` up while calibrating how many calls fit in one round (~200 ms),
 * then times several rounds with process.hrtime.bigint() and reports the
 * median µs/op over the rounds (plus the spread: half the max-min range,
 * relative to the median). `teardown` runs afterwards, then a full GC.
 *
 * isolated-vm's README requires `--no-node-snapshot` on Node >= 20, so the
 * harness re-executes itself with that flag (and --expose-gc, to collect
 * garbage between measurements). All implementations, node:vm included, are
 * therefore measured in the same process under the same flags.
 *
 * Adding a row: append to ROWS below. Each row is
 *   { name, expect?, impls: { node_vm?, ivm?, quickjs?, cordon? } }
 * and each implementation is
 *   { setup?(lib) -> state, op(state) -> result, teardown?(state) }
 * `lib` is the loaded module for that implementation (see loadLibs()).
 * `op` is the timed operation; it should be as thin as possible. If the row
 * has `expect`, the first op() result is checked against it before timing
 * (an implementation whose op doesn't return a comparable value can supply
 * `check(state) -> result` instead). Missing implementations print "—".
 */

const path = require('node:path');
const { spawnSync } = require('node:child_process');

// ---------------------------------------------------------------------------
// Re-exec with the flags isolated-vm needs.

const REQUIRED_FLAGS = ['--no-node-snapshot', '--expose-gc'];
if (!REQUIRED_FLAGS.every((f) => process.execArgv.includes(f))) {
  const flags = [...new Set([...process.execArgv, ...REQUIRED_FLAGS])];
  const child = spawnSync(process.execPath, [...flags, __filename, ...process.argv.slice(2)], {
    stdio: 'inherit',
  });
  if (child.error) throw child.error;
  process.exit(child.status ?? 1);
}

const vm = require('node:vm');
const os = require('node:os');

// ---------------------------------------------------------------------------
// Options.

const argv = process.argv.slice(2);
if (argv.includes('--help') || argv.includes('-h')) {
  console.log('usage: node bench/run.js [--quick] [--rounds=N] [FILTER]');
  process.exit(0);
}
const QUICK = argv.includes('--quick');
const FILTER = argv.filter((a) => !a.startsWith('--')).join(' ').toLowerCase();

const MS = 1_000_000n; // ns per ms, as a BigInt
const OPTS = QUICK
  ? { warmupNs: 50n * MS, roundNs: 50n * MS, rounds: 5 }
  : { warmupNs: 300n * MS, roundNs: 200n * MS, rounds: 7 };
const roundsArg = argv.find((a) => a.startsWith('--rounds='));
if (roundsArg) {
  OPTS.rounds = Number(roundsArg.slice('--rounds='.length));
  if (!(Number.isInteger(OPTS.rounds) && OPTS.rounds > 0)) {
    console.error(`bad ${roundsArg}: expected a positive integer`);
    process.exit(2);
  }
}

// ---------------------------------------------------------------------------
// Implementations: display names, column order, and how to load each.

const IMPLS = [
  { key: 'node_vm', label: 'node:vm', peer: true },
  { key: 'ivm', label: 'isolated-vm', peer: true },
  { key: 'quickjs', label: 'quickjs', peer: true },
  { key: 'cordon', label: 'cordon', peer: false },
];

/**
 * Loads every implementation's module. Returns { libs, versions, missing }:
 * libs[key] is the module (undefined if it failed to load) and missing[key]
 * the reason it didn't load.
 */
async function loadLibs() {
  const libs = {};
  const versions = {};
  const missing = {};
  const attempt = async (key, load, version) => {
    try {
      libs[key] = await load();
      versions[key] = version();
    } catch (err) {
      missing[key] = firstLine(err);
    }
  };

  await attempt('node_vm', () => vm, () => process.version);
  await attempt('ivm', () => require('isolated-vm'), () => require('isolated-vm/package.json').version);
  await attempt(
    'quickjs',
    // getQuickJS() resolves to the shared RELEASE_SYNC WebAssembly module.
    () => require('quickjs-emscripten').getQuickJS(),
    () => require('quickjs-emscripten/package.json').version,
  );
  // cordon is the repository root's package.
  await attempt(
    'cordon',
    () => require('..'),
    () => require(path.join(__dirname, '..', 'package.json')).version,
  );
  return { libs, versions, missing };
}

// ---------------------------------------------------------------------------
// Helpers for quickjs-emscripten: a runtime + context pair, and an eval that
// throws on error and frees the result handle.

function qjsSetup(QuickJS) {
  const runtime = QuickJS.newRuntime();
  const context = runtime.newContext();
  return { runtime, context };
}

function qjsTeardown({ runtime, context }) {
  context.dispose();
  runtime.dispose();
}

/** evalCode + free the result; with `dump`, returns the result as a JS value. */
function qjsEval(context, code, dump = false) {
  const handle = context.unwrapResult(context.evalCode(code));
  const value = dump ? context.dump(handle) : undefined;
  handle.dispose();
  return value;
}

// Helpers for cordon: an isolate plus a context in it.
// (Adjust here if cordon's context-creation API differs.)
function cordonSetup(cordon) {
  const iso = new cordon.Isolate();
  const ctx = iso.createContext();
  return { cordon, iso, ctx };
}

function cordonTeardown({ iso, ctx }) {
  ctx.dispose();
  iso.dispose();
}

// (a, b) => a + b as a reference in isolated-vm, and as a compiled function
// with a timeout on every call in cordon, for the call rows.
function ivmAddSetup(ivm) {
  const isolate = new ivm.Isolate();
  const context = isolate.createContextSync();
  const fn = context.evalSync('(a, b) => a + b', { reference: true });
  return { isolate, context, fn };
}

function ivmAddTeardown(s) {
  s.fn.release();
  s.context.release();
  s.isolate.dispose();
}

const cordonAdd = {
  setup: (cordon) => {
    const iso = new cordon.Isolate();
    const fn = cordon.compileFunction('return a + b', ['a', 'b'],
      { parsingContext: iso.createContext(), timeout: 1000 });
    return { iso, fn };
  },
  // Called as a plain function: a receiver would be copied in.
  op: ({ fn }) => fn(1, 2),
  teardown: (s) => s.iso.dispose(),
};

// ---------------------------------------------------------------------------
// The rows.

// The tight loop is wrapped in a block so it can run repeatedly in one
// context: top-level `let s` would otherwise be redeclared on the second run
// ("Identifier 's' has already been declared"). The block's completion value
// is still `s`.
const TIGHT_LOOP = '{ let s=0; for (let i=0;i<3e6;i++) s+=i; s }';
const TIGHT_LOOP_RESULT = 4499998500000;

const ROWS = [
  {
    name: 'run 1+1 in a context, with timeout',
    expect: 2,
    impls: {
      node_vm: {
        setup: () => vm.createContext({}),
        op: (ctx) => vm.runInContext('1+1', ctx, { timeout: 1000 }),
      },
      ivm: {
        setup: (ivm) => {
          const isolate = new ivm.Isolate();
          return { isolate, context: isolate.createContextSync() };
        },
        op: (s) => s.context.evalSync('1+1', { timeout: 1000 }),
        teardown: (s) => {
          s.context.release();
          s.isolate.dispose();
        },
      },
      quickjs: {
        // quickjs-emscripten's evalCode has no per-call timeout option.
        setup: qjsSetup,
        op: (s) => qjsEval(s.context, '1+1'),
        check: (s) => qjsEval(s.context, '1+1', true),
        teardown: qjsTeardown,
      },
      cordon: {
        setup: cordonSetup,
        op: (s) => s.cordon.runInContext('1+1', s.ctx, { timeout: 1000 }),
        teardown: cordonTeardown,
      },
    },
  },

  {
    name: 'call a compiled (a, b) => a + b',
    expect: 3,
    // node:vm's function runs in the host's own isolate, unbounded.
    peers: ['ivm'],
    impls: {
      node_vm: {
        // node:vm cannot bound a call of a compiled function at all.
        setup: () => vm.compileFunction('return a + b', ['a', 'b']),
        op: (fn) => fn(1, 2),
      },
      ivm: {
        // applySync without a timeout (the DESIGN.md figure) ...
        setup: ivmAddSetup,
        op: (s) => s.fn.applySync(undefined, [1, 2]),
        teardown: ivmAddTeardown,
      },
      cordon: {
        // ... and cordon with a timeout armed on every call.
        ...cordonAdd,
      },
    },
  },

  {
    name: 'call with a timeout (ivm applySync timeout)',
    expect: 3,
    impls: {
      ivm: {
        setup: ivmAddSetup,
        op: (s) => s.fn.applySync(undefined, [1, 2], { timeout: 1000 }),
        teardown: ivmAddTeardown,
      },
      cordon: {
        ...cordonAdd,
      },
    },
  },

  {
    name: 'compileFunction (new source each time)',
    impls: {
      node_vm: {
        setup: () => ({ i: 0 }),
        op: (s) => vm.compileFunction(`return a + ${s.i++}`, ['a']),
      },
      cordon: {
        setup: (cordon) => {
          const iso = new cordon.Isolate();
          return { iso, cordon, ctx: iso.createContext(), i: 0 };
        },
        op: (s) => s.cordon.compileFunction(`return a + ${s.i++}`, ['a'], { parsingContext: s.ctx }),
        teardown: (s) => s.iso.dispose(),
      },
    },
  },

  {
    name: 'create a context',
    impls: {
      node_vm: {
        op: () => vm.createContext({}),
      },
      ivm: {
        setup: (ivm) => new ivm.Isolate(),
        op: (isolate) => isolate.createContextSync().release(),
        teardown: (isolate) => isolate.dispose(),
      },
      quickjs: {
        setup: (QuickJS) => QuickJS.newRuntime(),
        op: (runtime) => runtime.newContext().dispose(),
        teardown: (runtime) => runtime.dispose(),
      },
      cordon: {
        setup: (cordon) => new cordon.Isolate(),
        op: (iso) => {
          const c = iso.createContext();
          c.dispose();
        },
        teardown: (iso) => iso.dispose(),
      },
    },
  },

  {
    name: 'create an isolate',
    impls: {
      ivm: {
        setup: (ivm) => ivm,
        op: (ivm) => new ivm.Isolate().dispose(),
      },
      cordon: {
        setup: (cordon) => cordon,
        op: (cordon) => new cordon.Isolate().dispose(),
      },
    },
  },

  {
    name: 'tight loop 3e6 iterations',
    expect: TIGHT_LOOP_RESULT,
    impls: {
      node_vm: {
        setup: () => vm.createContext({}),
        op: (ctx) => vm.runInContext(TIGHT_LOOP, ctx),
      },
      ivm: {
        setup: (ivm) => {
          const isolate = new ivm.Isolate();
          return { isolate, context: isolate.createContextSync() };
        },
        op: (s) => s.context.evalSync(TIGHT_LOOP),
        teardown: (s) => {
          s.context.release();
          s.isolate.dispose();
        },
      },
      quickjs: {
        setup: qjsSetup,
        op: (s) => qjsEval(s.context, TIGHT_LOOP),
        check: (s) => qjsEval(s.context, TIGHT_LOOP, true),
        teardown: qjsTeardown,
      },
      cordon: {
        setup: cordonSetup,
        op: (s) => s.cordon.runInContext(TIGHT_LOOP, s.ctx),
        teardown: cordonTeardown,
      },
    },
  },
];

// ---------------------------------------------------------------------------
// Measurement.

const now = process.hrtime.bigint;

/** Calls op(state) n times; returns elapsed nanoseconds as a BigInt. */
function timeBatch(op, state, n) {
  const t0 = now();
  for (let i = 0; i < n; i++) op(state);
  return now() - t0;
}

/**
 * Warms op up for at least opts.warmupNs, doubling the batch size as it
 * goes, and returns the number of calls that should fill one round.
 */
function calibrate(op, state, opts) {
  const end = now() + opts.warmupNs;
  let n = 1;
  let dt;
  do {
    dt = timeBatch(op, state, n);
    if (dt * 8n < opts.roundNs) n *= 2;
  } while (now() < end);
  // Per-op cost from the last (warmest) batch; at least one call per round.
  const perOpNs = Number(dt) / n;
  return Math.max(1, Math.round(Number(opts.roundNs) / Math.max(perOpNs, 1)));
}

/**
 * Measures one implementation of one row. Returns { medianUs, spread, n }
 * where spread is (max-min)/2 relative to the median.
 */
async function measure(row, impl, lib, opts) {
  const state = impl.setup ? await impl.setup(lib) : undefined;
  try {
    // Correctness check (also the very first call).
    const result = impl.check ? impl.check(state) : impl.op(state);
    if ('expect' in row && result !== row.expect) {
      throw new Error(`expected ${row.expect}, got ${String(result)}`);
    }
    const n = calibrate(impl.op, state, opts);
    const perOpUs = [];
    for (let r = 0; r < opts.rounds; r++) {
      perOpUs.push(Number(timeBatch(impl.op, state, n)) / n / 1000);
    }
    perOpUs.sort((a, b) => a - b);
    const medianUs = median(perOpUs);
    const spread = (perOpUs[perOpUs.length - 1] - perOpUs[0]) / 2 / medianUs;
    return { medianUs, spread, n };
  } finally {
    if (impl.teardown) impl.teardown(state);
    global.gc();
  }
}

function median(sorted) {
  const mid = sorted.length >> 1;
  return sorted.length % 2 ? sorted[mid] : (sorted[mid - 1] + sorted[mid]) / 2;
}

// ---------------------------------------------------------------------------
// Output.

/** Shows what is being measured on an interactive terminal; '' clears it. */
function progress(text) {
  if (process.stderr.isTTY) process.stderr.write(`\x1b[2K${text}\r`);
}

function firstLine(err) {
  return String((err && err.message) || err).split('\n')[0];
}

/** µs with ~3 significant digits, thousands separated above 1000. */
function fmtUs(us) {
  if (us >= 1000) return Math.round(us).toLocaleString('en-US');
  if (us >= 100) return us.toFixed(0);
  if (us >= 10) return us.toFixed(1);
  if (us >= 1) return us.toFixed(2);
  return us.toFixed(3);
}

function fmtCell(cell) {
  if (cell.medianUs !== undefined) return `${fmtUs(cell.medianUs)} ±${Math.round(cell.spread * 100)}%`;
  return cell.text;
}

/** Prints rows of string cells as an aligned table (first column left-aligned). */
function printTable(header, rows) {
  const widths = header.map((h, i) => Math.max(h.length, ...rows.map((r) => r[i].length)));
  const line = (cells) =>
    cells.map((c, i) => (i === 0 ? c.padEnd(widths[i]) : c.padStart(widths[i]))).join('  ');
  console.log(line(header));
  console.log(widths.map((w) => '-'.repeat(w)).join('  '));
  for (const r of rows) console.log(line(r));
}

/**
 * "cordon vs best peer" as cordon/peer (below 1x means cordon is faster).
 * A row may name the peers that count (`peers`): those that preserve
 * isolation, where node:vm's figure would compare a different thing.
 */
function ratioCell(cells, row) {
  const cordon = cells.cordon;
  if (!cordon || cordon.medianUs === undefined) return 'n/a';
  let best;
  for (const { key, label, peer } of IMPLS) {
    const c = cells[key];
    if (row.peers && !row.peers.includes(key)) continue;
    if (peer && c && c.medianUs !== undefined && (!best || c.medianUs < best.us)) {
      best = { us: c.medianUs, label };
    }
  }
  if (!best) return 'no peer';
  const ratio = cordon.medianUs / best.us;
  return `${ratio >= 10 ? ratio.toFixed(0) : ratio.toFixed(2)}x vs ${best.label}`;
}

// ---------------------------------------------------------------------------
// Main.

async function main() {
  const rows = ROWS.filter((r) => r.name.toLowerCase().includes(FILTER));
  if (rows.length === 0) {
    console.error(`no row matches "${FILTER}"; rows are:\n  ${ROWS.map((r) => r.name).join('\n  ')}`);
    process.exit(2);
  }

  const { libs, versions, missing } = await loadLibs();

  console.log(`cordon bench — node ${process.version}, ${os.cpus().length}x ${os.cpus()[0]?.model ?? '?'}`);
  console.log(
    `  rounds: ${OPTS.rounds} x ${OPTS.roundNs / MS} ms after ${OPTS.warmupNs / MS} ms warm-up` +
      `${QUICK ? ' (--quick)' : ''}; flags: ${process.execArgv.join(' ')}`,
  );
  for (const { key, label } of IMPLS) {
    console.log(`  ${label}: ${key in libs ? versions[key] : `not loaded (${missing[key]})`}`);
  }
  console.log('');

  const errors = [];
  const tableRows = [];
  for (const row of rows) {
    const cells = {};
    for (const { key, label } of IMPLS) {
      const impl = row.impls[key];
      if (!impl) {
        cells[key] = { text: '—' };
      } else if (!(key in libs)) {
        cells[key] = { text: 'n/a' };
      } else {
        progress(`  ${row.name} / ${label} ...`);
        try {
          cells[key] = await measure(row, impl, libs[key], OPTS);
        } catch (err) {
          cells[key] = { text: 'error' };
          errors.push(`${row.name} / ${label}: ${firstLine(err)}`);
        }
        progress('');
      }
    }
    tableRows.push([row.name, ...IMPLS.map(({ key }) => fmtCell(cells[key])), ratioCell(cells, row)]);
  }

  console.log('µs/op (median of rounds ± half the range)\n');
  printTable(['', ...IMPLS.map((i) => i.label), 'cordon/best peer'], tableRows);
  if (errors.length) {
    console.log('\nerrors:');
    for (const e of errors) console.log(`  ${e}`);
  }
}

main().catch((err) => {
  console.error(err);
  process.exit(1);
});

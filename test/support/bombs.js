'use strict';

// Memory bombs for test/memory-bombs.test.js, run by bomb-child.js in a
// child process: each is sandbox code (or, for `host`, host calls) that
// would take more than any memory limit. `fits` marks the ones V8 makes as
// a single object that the run may briefly hold past its limit (see
// docs/design.md, "Memory limits"): they either stop or finish.
const wasmModule = (pages) => [
  0x00, 0x61, 0x73, 0x6d, 0x01, 0x00, 0x00, 0x00, // magic, version
  0x05, 0x03, 0x01, 0x00, pages & 0x7f, // memory section: one memory of `pages` (<128) pages
  0x07, 0x07, 0x01, 0x03, 0x6d, 0x65, 0x6d, 0x02, 0x00, // export "mem"
];

// A module with a memory of its own (no maximum) and `run()`, which grows
// it from WebAssembly code 100 pages at a time, writing to each new page's
// end, until memory.grow fails: growth no JS wrapper sees.
const innerGrowBody = [
  0x00, 0x02, 0x40, 0x03, 0x40, // no locals; block; loop
  0x41, 0xe4, 0x00, 0x40, 0x00, 0x41, 0x7f, 0x46, 0x0d, 0x01, // grow 100; == -1: break
  0x3f, 0x00, 0x41, 0x10, 0x74, 0x41, 0x04, 0x6b, 0x41, 0x01, 0x36, 0x02, 0x00, // store 1 at the end
  0x0c, 0x00, 0x0b, 0x0b, 0x0b, // br loop; end; end; end
];
const innerGrow = [
  0x00, 0x61, 0x73, 0x6d, 0x01, 0x00, 0x00, 0x00,
  0x01, 0x04, 0x01, 0x60, 0x00, 0x00, // type () -> ()
  0x03, 0x02, 0x01, 0x00, // one function
  0x05, 0x03, 0x01, 0x00, 0x00, // memory: 0 pages, no maximum
  0x07, 0x07, 0x01, 0x03, 0x72, 0x75, 0x6e, 0x00, 0x00, // export "run"
  0x0a, innerGrowBody.length + 2, 0x01, innerGrowBody.length, ...innerGrowBody,
];

const bombs = {
  // Growth in small pieces.
  push: 'const a = []; for (;;) a.push(1)',
  pushObjects: 'const a = []; for (;;) a.push({ n: a.length })',
  doubles: 'const a = []; for (let i = 0; ; i++) a.push(i + 0.5)',
  map: 'const m = new Map(); for (let i = 0; ; i++) m.set(i, i)',
  set: 'const s = new Set(); for (let i = 0; ; i++) s.add(i * 1.5)',
  keys: 'const o = {}; for (let i = 0; ; i++) o["k" + i] = i',
  strings: 'const a = []; for (;;) a.push("x".repeat(1e4) + Math.random())',
  chunks: 'const a = []; for (;;) a.push(new Array(1e6).fill(1.5))',
  // Huge steps.
  concat: 'let a = [1]; for (;;) a = a.concat(a)',
  replaceAll: "let s = 'a'.repeat(1e6); for (;;) s = s.replaceAll('a', 'aa')",
  sort: 'Array.from({ length: 3e7 }, (_, i) => i).sort((a, b) => b - a).length',
  split: "'a'.repeat(1e8).split('').length",
  json: "JSON.parse('[' + '1,'.repeat(5e7) + '1]').length",
  eval: "eval('[' + '1,'.repeat(5e7) + ']').length",
  arrayFrom: 'Array.from({ length: 3e7 }).length',
  // Memory outside the heap.
  buffers: 'const a = []; for (;;) a.push(new ArrayBuffer(1 << 20))',
  hugeBuffer: 'new ArrayBuffer(2 ** 32).byteLength',
  afterBuffers: 'const a = []; try { for (;;) a.push(new ArrayBuffer(1 << 20)) } catch {} new Uint8Array([1, 2, 3]).buffer.byteLength',
  afterBuffersWasm: `const a = []; try { for (;;) a.push(new ArrayBuffer(1 << 20)) } catch {}
    WebAssembly.compile(new Uint8Array([${wasmModule(1)}]))`,
  wasmMemories: 'const a = []; for (;;) a.push(new WebAssembly.Memory({ initial: 1000 }))',
  wasmGrow: 'const m = new WebAssembly.Memory({ initial: 1, maximum: 65536 }); for (;;) { m.grow(1000); new Uint8Array(m.buffer).fill(1) }',
  wasmModules: `const a = []; for (;;) a.push(new WebAssembly.Instance(new WebAssembly.Module(new Uint8Array([${wasmModule(100)}]))))`,
  wasmInner: `const m = new WebAssembly.Module(new Uint8Array([${innerGrow}])); const a = [];
    for (;;) { const i = new WebAssembly.Instance(m); a.push(i); i.exports.run() }`,
  wasmEmpty: 'const a = []; for (;;) a.push(new WebAssembly.Memory({ initial: 0 }))',
};

// Host-side patterns: what the host asks for, past the limit.
// Patterns that may end in a sandbox RangeError before they reach the
// limit: cordon's caps on live WebAssembly memories (8 a sandbox, their
// maxima 4x its limit together), or a
// memory's maximum (clamped to the limit).
const WASM_CAP = /at most 8 WebAssembly memories|would pass 4x the limit/;
const capped = {
  wasmModules: WASM_CAP,
  wasmInner: WASM_CAP,
  wasmEmpty: WASM_CAP,
  wasmGrow: /Maximum memory size exceeded/,
};

const host = {
  contexts: (cordon, iso) => {
    // 5 000 contexts are over 600 MB: past either limit (and no endless
    // loop if the limit failed to hold).
    const keep = [];
    for (let i = 0; i < 5000; i++) keep.push(iso.createContext());
    return keep;
  },
  bigScripts: (cordon, iso) => {
    const code = `'${'x'.repeat(100 << 20)}'.length`;
    const a = iso.compileScript(code);
    const b = iso.compileScript(code);
    iso.createContext();
    return [a, b];
  },
};

module.exports = { bombs, host, capped, innerGrow, fits: new Set(['sort', 'split', 'json', 'arrayFrom']) };

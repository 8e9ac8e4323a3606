'use strict';

// node seed000-child.js <one|new> <iterations>: seed 000's loop, synchronous
// and with no explicit collection anywhere (the process has no --expose-gc):
// compileFunction of a 1.2 MB source with an import callback, in one
// context or a new context per call. Prints the peak RSS growth, sampled
// every 100 calls, and the sandbox's live records and heap at the end.
const cordon = require('../..');

const [shape, n] = [process.argv[2], Number(process.argv[3])];
const iso = new cordon.Isolate();
const code = `console.log("${'hello world '.repeat(1e5)}");`;
const globals = () => ({ console: { log: () => {} } });
const ctx = iso.createContext(globals());
const base = process.memoryUsage().rss;
let peak = 0;
let heapPeak = 0;
for (let i = 0; i < n; i++) {
  const parsingContext = shape === 'new' ? iso.createContext(globals()) : ctx;
  cordon.compileFunction(code, [], { parsingContext, importModuleDynamically: () => {} });
  if (i % 100 === 0) {
    peak = Math.max(peak, process.memoryUsage().rss - base);
    heapPeak = Math.max(heapPeak, iso.getHeapStatistics().usedHeapSize);
  }
}
const stats = iso.getHeapStatistics();
console.log(JSON.stringify({ peak, heapPeak, functions: stats.functions, contexts: stats.contexts, importHosts: stats.importHosts }));

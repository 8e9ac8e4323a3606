'use strict';

// The environment that runs node against the AddressSanitizer build (npm
// run build:asan): libasan preloaded, leak detection off (V8 and Node keep
// process-lifetime allocations), and the ASAN addon selected.
const { execFileSync } = require('node:child_process');

function asanEnv(env = process.env) {
  const libasan = execFileSync('gcc', ['-print-file-name=libasan.so'], { encoding: 'utf8' }).trim();
  return {
    ...env,
    CORDON_ASAN: '1',
    LD_PRELOAD: libasan,
    // A small quarantine keeps RSS meaningful for the memory tests.
    ASAN_OPTIONS: 'detect_leaks=0:abort_on_error=1:quarantine_size_mb=16',
  };
}

module.exports = { asanEnv };

'use strict';

// Mocha's spec reporter, plus the run's counts written as JSON to the file
// named by CORDON_TEST_RESULTS, for .ci/run's closing "N passed, N failed".
const fs = require('node:fs');
const Spec = require('mocha/lib/reporters/spec');

class CiReporter extends Spec {
  constructor(runner, options) {
    super(runner, options);
    const out = process.env.CORDON_TEST_RESULTS;
    runner.once('end', () => {
      if (!out) return;
      const { passes = 0, failures = 0, pending = 0, tests = 0 } = this.stats;
      fs.writeFileSync(out, JSON.stringify({ passes, failures, pending, tests }));
    });
  }
}

module.exports = CiReporter;

'use strict';

// Helpers shared by the specs.
const { spawn } = require('node:child_process');

const tick = () => new Promise((resolve) => setImmediate(resolve));
const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

// Run node with `args`; resolves with { code, signal, stdout, stderr }.
function runNode(args, options = {}) {
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, args, { stdio: ['ignore', 'pipe', 'pipe'], ...options });
    let stdout = '';
    let stderr = '';
    child.stdout.on('data', (d) => { stdout += d; });
    child.stderr.on('data', (d) => { stderr += d; });
    child.on('error', reject);
    child.on('close', (code, signal) => resolve({ code, signal, stdout, stderr }));
  });
}

// Force GC in the host heap and let Node run the finalisers it deferred.
async function hostGc() {
  for (let i = 0; i < 3; i++) {
    global.gc();
    await tick();
  }
}

// The error a promise rejects with (fails if it fulfils).
async function rejection(promise) {
  try {
    await promise;
  } catch (error) {
    return error;
  }
  throw new Error('expected the promise to reject');
}

// Wait until `worker` posts 'spinning', terminate it and wait for its exit;
// resolves with the 'error' events it emitted.
async function terminateSpinning(worker) {
  const errors = [];
  worker.on('error', (e) => errors.push(e));
  const exited = new Promise((resolve) => worker.once('exit', resolve));
  const message = await new Promise((resolve) => worker.once('message', resolve));
  if (message !== 'spinning') throw new Error(`the worker said ${message}`);
  await worker.terminate();
  await exited;
  return errors;
}

module.exports = { tick, sleep, runNode, hostGc, rejection, terminateSpinning };

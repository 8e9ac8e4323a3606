'use strict';

// Cancellation: the AbortError cordon rejects with, and the `signal`
// option of the async APIs (context.run, script.run, applyAsync,
// module.evaluate). What an abort stops is the caller's (runAsync in
// index.js): this file only reads signals.

const { invalidArgType } = require('./errors');

// As Node's own AbortError (fs, timers/promises, fetch): name AbortError,
// code ABORT_ERR, the signal's reason as its cause.
class AbortError extends Error {
  constructor(message = 'The operation was aborted', options = undefined) {
    super(message, options);
    this.name = 'AbortError';
    this.code = 'ABORT_ERR';
  }
}

function abortError(signal) {
  return new AbortError(undefined, { cause: signal.reason });
}

// options.signal: undefined, or an AbortSignal.
function validateSignal(value, name) {
  if (value === undefined) return undefined;
  if (!(value instanceof AbortSignal)) throw invalidArgType(name, 'an instance of AbortSignal', value);
  return value;
}

// Call onAbort() once if `signal` aborts; returns what stops watching.
function watch(signal, onAbort) {
  if (signal === undefined) return noop;
  signal.addEventListener('abort', onAbort, { once: true });
  return () => signal.removeEventListener('abort', onAbort);
}

function noop() {}

module.exports = { AbortError, abortError, validateSignal, watch };

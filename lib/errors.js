'use strict';

// Errors cordon throws. Every one has a stable `code`.

class TimeoutError extends Error {
  /**
   * @param {number} timeout the bound that fired, in ms
   * @param {'wall'|'cpu'} [clock] wall-clock `timeout` or `cpuTimeout`
   */
  constructor(timeout, clock = 'wall') {
    const of = clock === 'cpu' ? ' of CPU time' : '';
    super(timeout > 0
      ? `Script execution timed out after ${timeout}ms${of}`
      : 'Script execution timed out');
    this.name = 'TimeoutError';
    this.code = 'ERR_SCRIPT_EXECUTION_TIMEOUT';
    this.timeout = timeout;
    this.clock = clock;
  }
}

class MemoryLimitError extends RangeError {
  constructor(limitMB) {
    super(`The sandbox exceeded its memory limit of ${limitMB} MB`);
    this.name = 'MemoryLimitError';
    this.code = 'ERR_MEMORY_LIMIT';
  }
}

class DisposedError extends Error {
  constructor(what = 'isolate') {
    super(`The ${what} has been disposed`);
    this.name = 'DisposedError';
    this.code = 'ERR_ISOLATE_DISPOSED';
  }
}

function withCode(error, code) {
  error.code = code;
  return error;
}

function invalidArgType(name, expected, actual) {
  return withCode(new TypeError(
    `The "${name}" argument must be ${expected}. Received ${describe(actual)}`),
  'ERR_INVALID_ARG_TYPE');
}

function invalidArgValue(name, reason, actual) {
  return withCode(new RangeError(
    `The "${name}" argument ${reason}. Received ${describe(actual)}`),
  'ERR_INVALID_ARG_VALUE');
}

function outOfRange(name, range, actual) {
  return withCode(new RangeError(
    `The value of "${name}" is out of range. It must be ${range}. Received ${typeof actual === 'number' ? actual : describe(actual)}`),
  'ERR_OUT_OF_RANGE');
}

function describe(value) {
  if (value === null) return 'null';
  switch (typeof value) {
    case 'undefined': return 'undefined';
    case 'function': return `function ${value.name || '<anonymous>'}`;
    case 'object': {
      let name;
      try {
        name = Object.getPrototypeOf(value)?.constructor?.name;
      } catch {
        // a hostile proxy or getter: say no more than its type
      }
      return typeof name === 'string' && name ? `an instance of ${name}` : 'an object';
    }
    case 'string': {
      const shown = value.length > 28 ? `${value.slice(0, 25)}...` : value;
      return `type string (${JSON.stringify(shown)})`;
    }
    case 'symbol': return 'type symbol';
    default: return `type ${typeof value} (${String(value)})`;
  }
}

module.exports = {
  TimeoutError,
  MemoryLimitError,
  DisposedError,
  withCode,
  invalidArgType,
  invalidArgValue,
  outOfRange,
  describe,
};

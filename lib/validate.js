'use strict';

// First-tier validation (the native layer trusts what passes these).

const { invalidArgType, invalidArgValue, outOfRange } = require('./errors');

const MAX_TIMEOUT = 2 ** 32 - 1;
const MAX_MEMORY_MB = 2 ** 20; // 1 TiB: beyond anything V8 accepts anyway
const MIN_MEMORY_MB = 8;
// V8's limit on a function's formal parameters; one more crashes V8's
// CompileFunction (node:vm's too).
const MAX_PARAMS = 65534;

function validateString(value, name) {
  if (typeof value !== 'string') throw invalidArgType(name, 'of type string', value);
}

function validateObject(value, name) {
  if (value === null || typeof value !== 'object') {
    throw invalidArgType(name, 'of type object', value);
  }
}

function validateInt32(value, name) {
  if (typeof value !== 'number') throw invalidArgType(name, 'of type number', value);
  if (!Number.isInteger(value) || value < -(2 ** 31) || value > 2 ** 31 - 1) {
    throw invalidArgValue(name, 'must be an integer between -2^31 and 2^31-1', value);
  }
}

// undefined -> 0 (no deadline); otherwise an integer in [1, 2^32-1] ms, as
// node:vm accepts.
function validateTimeout(value, name) {
  if (value === undefined) return 0;
  if (typeof value !== 'number') throw invalidArgType(name, 'of type number', value);
  if (!Number.isInteger(value) || value < 1 || value > MAX_TIMEOUT) {
    throw invalidArgValue(name, `must be an integer from 1 to ${MAX_TIMEOUT}`, value);
  }
  return value;
}

function validateMemoryLimit(value, name) {
  if (typeof value !== 'number') throw invalidArgType(name, 'of type number', value);
  if (!Number.isInteger(value) || value < MIN_MEMORY_MB || value > MAX_MEMORY_MB) {
    throw invalidArgValue(name, `must be an integer from ${MIN_MEMORY_MB} to ${MAX_MEMORY_MB}`, value);
  }
  return value;
}

function validateBoolean(value, name) {
  if (typeof value !== 'boolean') throw invalidArgType(name, 'of type boolean', value);
}

// An identifier as a parameter name. V8's CompileFunction takes parameter
// names as they are, so a reserved word would make a function that cannot
// be written in source: refuse it here.
const IDENTIFIER = /^[\p{ID_Start}$_][\p{ID_Continue}$\u200C\u200D]*$/u;
const RESERVED = new Set(('await break case catch class const continue debugger default delete do else enum ' +
  'export extends false finally for function if implements import in instanceof interface let new null ' +
  'package private protected public return static super switch this throw true try typeof var void while ' +
  'with yield arguments eval').split(' '));

function validateParams(params, name) {
  if (!Array.isArray(params)) throw invalidArgType(name, 'an array of strings', params);
  if (params.length > MAX_PARAMS) throw outOfRange(`${name}.length`, `<= ${MAX_PARAMS}`, params.length);
  const copy = [...params];
  if (copy.length > MAX_PARAMS) throw outOfRange(`${name}.length`, `<= ${MAX_PARAMS}`, copy.length);
  copy.forEach((param, i) => {
    if (typeof param !== 'string') throw invalidArgType(`${name}[${i}]`, 'of type string', param);
    if (!IDENTIFIER.test(param) || RESERVED.has(param)) {
      throw invalidArgValue(`${name}[${i}]`, 'must be an identifier that is not a reserved word', param);
    }
  });
  return copy;
}

function validateCachedData(value, name) {
  if (!ArrayBuffer.isView(value)) {
    throw invalidArgType(name, 'an instance of Buffer, TypedArray, or DataView', value);
  }
}

// Read one option, turning a throwing getter into a coded error rather than
// letting it escape half-way through a call.
function getOption(options, key, name) {
  try {
    return options[key];
  } catch (error) {
    throw invalidArgValue(name, `could not be read (${error?.message ?? error})`, undefined);
  }
}

module.exports = {
  validateString,
  validateObject,
  validateInt32,
  validateTimeout,
  validateMemoryLimit,
  validateBoolean,
  validateParams,
  validateCachedData,
  getOption,
};

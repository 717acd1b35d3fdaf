import {describe, expect, it} from 'vitest'
import {lazyModule} from '../../src/snapshot/lazy-module.js'

/**
 * The start-up snapshot holds stubs of packages oclif requires as it loads but hot commands do not
 * use (scripts/bundle.js). A stub must not load its package as CommonJS interop requires it, and
 * must then behave as the package on every path: a wrong stub shows up only on a rare path (an
 * error message, help), far from here.
 */
function counted<T>(make: () => T): {load: () => T; loads: () => number} {
  let loads = 0
  return {
    load: () => {
      loads++
      return make()
    },
    loads: () => loads,
  }
}

/** What `__importDefault` (tsc's CommonJS interop, as oclif's code is compiled) does with a required module. */
const importDefault = (module: unknown): {default: unknown} => ((module as {__esModule?: boolean}).__esModule ? (module as {default: unknown}) : {default: module})

describe('lazy module (a package loaded from outside the snapshot on first use)', () => {
  it('is not loaded by being required and wrapped, and is loaded once when first used', () => {
    const templates = counted(() => ({render: (template: string, data: {name: string}) => template.replace('<%= name %>', data.name), VERSION: '3'}))
    const stub = lazyModule(templates.load, {esModule: undefined, callable: false})
    const ejs = importDefault(stub)
    expect(typeof stub).toBe('object')
    expect(templates.loads()).toBe(0)
    const render = (ejs.default as {render: (t: string, d: {name: string}) => string}).render
    expect(render('hello <%= name %>', {name: 'lockctl'})).toBe('hello lockctl')
    expect((stub as {VERSION: string}).VERSION).toBe('3')
    expect(templates.loads()).toBe(1)
  })

  it('a transpiled ES module: __esModule is answered without loading, and its named exports are the real ones', () => {
    class Minimatch {
      constructor(readonly pattern: string) {}
    }
    const real = {minimatch: (path: string, pattern: string) => path === pattern, Minimatch, default: 'the default'}
    Object.defineProperty(real, '__esModule', {value: true})
    const glob = counted(() => real)
    const stub = lazyModule(glob.load, {esModule: true, callable: false}) as typeof real
    expect(importDefault(stub)).toBe(stub)
    expect(glob.loads()).toBe(0)
    expect(stub.minimatch('a', 'a')).toBe(true)
    expect(new stub.Minimatch('*.js')).toBeInstanceOf(Minimatch)
    expect(stub.default).toBe('the default')
    // Enumerating it (as esbuild's __toESM would) sees the real properties, the fixed one included.
    expect(Object.keys(stub).sort()).toEqual(['Minimatch', 'default', 'minimatch'])
    expect(Object.getOwnPropertyDescriptor(stub, '__esModule')).toMatchObject({value: true})
    expect('minimatch' in stub && !('nothing' in stub)).toBe(true)
    expect(glob.loads()).toBe(1)
  })

  it('a package that is a function (with properties): typeof, calls, construction and its properties', () => {
    function emojiRegex(): RegExp {
      return /x/g
    }
    emojiRegex.flags = 'g'
    const emoji = counted(() => emojiRegex)
    const stub = lazyModule(emoji.load, {esModule: undefined, callable: true}) as typeof emojiRegex
    expect(typeof stub).toBe('function')
    expect(emoji.loads()).toBe(0)
    expect(stub()).toEqual(/x/g)
    expect(stub.flags).toBe('g')
    expect(Object.keys(stub)).toContain('flags')
    class Spinner {
      frames = ['-', '\\']
    }
    const constructed = lazyModule(() => Spinner, {esModule: undefined, callable: true}) as typeof Spinner
    expect(new constructed().frames).toEqual(['-', '\\'])
    expect(emoji.loads()).toBe(1)
  })

  it('writes and deletes reach the package', () => {
    const real: Record<string, unknown> = {cache: 'on'}
    const stub = lazyModule(() => real, {esModule: undefined, callable: false}) as Record<string, unknown>
    stub.cache = 'off'
    delete stub.cache
    stub.added = 1
    expect(real).toEqual({added: 1})
  })

  it('a package that fails to load fails where it is used, every time, with its own error', () => {
    const stub = lazyModule(
      () => {
        throw Object.assign(new Error('Cannot find module lazy-ejs.cjs'), {code: 'MODULE_NOT_FOUND'})
      },
      {esModule: undefined, callable: false},
    ) as {render(): string}
    expect(importDefault(stub).default).toBe(stub)
    for (let i = 0; i < 2; i++) expect(() => stub.render()).toThrow(expect.objectContaining({code: 'MODULE_NOT_FOUND'}))
  })
})

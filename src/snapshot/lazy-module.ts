/**
 * A CommonJS module that is loaded the first time anything is read from it (docs/startup.md, "The
 * snapshot"). oclif requires some packages as it loads that no command run from the start-up
 * snapshot uses on its usual paths (help templates, command discovery by glob, spinner frames...);
 * every byte and object of the snapshot is deserialized by every run, so the snapshot holds a stub
 * of each instead (scripts/bundle.js) and the package is loaded, on first use, from a copy bundled
 * beside the snapshot.
 *
 * What a stub answers without loading is only what CommonJS interop asks as a module is required:
 * whether it is a transpiled ES module (`__esModule`, which `__importDefault` reads) and whether it
 * is a function (`typeof`). Both are read from the real package when the stub is built.
 */
export interface LazyModuleShape {
  /** The package's own `__esModule` value. */
  readonly esModule: unknown
  /** Whether the package's exports are a function (called or constructed as such). */
  readonly callable: boolean
}

export function lazyModule(load: () => unknown, shape: LazyModuleShape): unknown {
  let loaded: {exports: object} | undefined
  const real = (): object => (loaded ??= {exports: load() as object}).exports
  // A proxy is callable only if its target is; its target's non-configurable properties (a
  // function's prototype) must be reported as they are.
  const target: object = shape.callable ? function lazyModuleTarget() {} : {}
  const fixed = (key: string | symbol) => {
    const own = Reflect.getOwnPropertyDescriptor(target, key)
    return own && !own.configurable ? own : undefined
  }
  return new Proxy(target, {
    get: (_, key) => (key === '__esModule' ? shape.esModule : Reflect.get(real(), key)),
    set: (_, key, value) => Reflect.set(real(), key, value),
    has: (_, key) => Reflect.has(real(), key),
    deleteProperty: (_, key) => Reflect.deleteProperty(real(), key),
    ownKeys: () => [...new Set([...Reflect.ownKeys(real()), ...Reflect.ownKeys(target).filter((key) => fixed(key))])],
    getOwnPropertyDescriptor: (_, key) => {
      const own = fixed(key)
      if (own) return own
      const descriptor = Reflect.getOwnPropertyDescriptor(real(), key)
      // The target does not have the package's properties: the proxy may not call them fixed.
      return descriptor && {...descriptor, configurable: true}
    },
    getPrototypeOf: () => Reflect.getPrototypeOf(real()),
    apply: (_, self, args) => Reflect.apply(real() as (...args: unknown[]) => unknown, self, args),
    construct: (_, args) => Reflect.construct(real() as new (...args: unknown[]) => object, args),
  })
}

/** A handler's exception must not break the client: it is rethrown on its own, like a browser's event listener. */
function report(error: unknown): void {
  queueMicrotask(() => {
    throw error;
  });
}

/** A small typed event emitter: `on` returns the function that unsubscribes. */
export class Emitter<Events extends object> {
  private readonly handlers = new Map<keyof Events, Set<(payload: never) => void>>();

  on<K extends keyof Events>(event: K, handler: (payload: Events[K]) => void): () => void {
    let set = this.handlers.get(event);
    if (!set) {
      set = new Set();
      this.handlers.set(event, set);
    }
    const entry = handler as (payload: never) => void;
    set.add(entry);
    return () => {
      set.delete(entry);
    };
  }

  /** Calls `handler` once, on the next `event`. */
  once<K extends keyof Events>(event: K, handler: (payload: Events[K]) => void): () => void {
    const off = this.on(event, (payload) => {
      off();
      handler(payload);
    });
    return off;
  }

  protected emit<K extends keyof Events>(event: K, payload: Events[K]): void {
    const set = this.handlers.get(event);
    if (!set) return;
    for (const handler of [...set]) {
      try {
        (handler as (payload: Events[K]) => void)(payload);
      } catch (error) {
        report(error);
      }
    }
  }
}

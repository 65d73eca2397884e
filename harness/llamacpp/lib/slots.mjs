// A fixed pool of context sequences ("slots" in llama-server's words). A request holds one
// slot for its whole generation; when all are busy, requests wait in FIFO order. Sequences of
// one context are decoded together in shared batches by node-llama-cpp, so concurrent requests
// run in parallel rather than one after another.
export class SlotPool {
  constructor(sequences) {
    this.slots = sequences.map((seq, id) => ({ id, seq, busy: false }));
    this.waiters = [];
    this.closed = false;
  }

  get total() {
    return this.slots.length;
  }

  get idle() {
    return this.slots.filter((s) => !s.busy).length;
  }

  get queued() {
    return this.waiters.length;
  }

  // Resolves to a free slot; rejects if the pool is closed (server shutting down).
  acquire() {
    if (this.closed) return Promise.reject(new Error("server is shutting down"));
    const free = this.slots.find((s) => !s.busy);
    if (free) {
      free.busy = true;
      return Promise.resolve(free);
    }
    return new Promise((resolve, reject) => this.waiters.push({ resolve, reject }));
  }

  release(slot) {
    const next = this.waiters.shift();
    if (next) next.resolve(slot);  // hand over directly: stays busy
    else slot.busy = false;
  }

  close() {
    this.closed = true;
    for (const w of this.waiters.splice(0)) w.reject(new Error("server is shutting down"));
  }
}

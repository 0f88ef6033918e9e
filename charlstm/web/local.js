// The exported page's source of text: the model itself, stepped in this page with no server and no
// network. MODEL holds the model's facts, its vocabulary and where each weight lies in the
// "charlstm-weights" block (base64); "charlstm-step" holds step.wasm, the matrix product (step.wat).
//
// The step is charlstm's own (charlstm/sampling/stepper.py arranges the weights the same way for
// its compiled kernels): layer 0's input part is a row of a (V, 4Hp) table, each deeper layer one
// product over [x | h], gate rows reordered so that tanh alone gives every activation, sigmoid rows
// halved. The products and the gates run in WebAssembly SIMD (step.wat), in float32 with charlstm's
// own tanh, over blocks padded to multiples of 8 units. Greedy text equals charlstm sample's; the
// last digits of a logit may differ (the products' sums run in another order).
const RUNTIME = (() => {
  const LOCAL = (s) => { const e = document.getElementById(s); return e ? e.textContent : ""; };
  const { window: MAX_WINDOW, bias: BIAS_LIMIT, penalty: PENALTY } = MODEL.limits;  // charlstm's own (config/use.py)
  const SLICE_MS = 25;  // work between two yields to the page (painting, the Stop button)

  function bytesOf(base64) {
    const text = atob(base64.trim());
    const out = new Uint8Array(text.length);
    for (let i = 0; i < text.length; i++) out[i] = text.charCodeAt(i);
    return out;
  }

  // Vocabulary: own characters (ids 0..C-1), then byte tokens (MODEL.byte_values) when byte_fallback.
  const VOCAB = (() => {
    const chars = MODEL.chars, index = new Map(chars.map((c, i) => [c, i]));
    const byteIds = new Int32Array(256).fill(-1);
    MODEL.byte_values.forEach((b, i) => { byteIds[b] = chars.length + i; });
    const utf8 = new TextEncoder();
    const bytesOfToken = chars.map((c) => utf8.encode(c)).concat(MODEL.byte_values.map((b) => Uint8Array.of(b)));
    return {
      unknown(text) {
        if (MODEL.byte_fallback) return [];
        return [...new Set(Array.from(text).filter((c) => !index.has(c)))];
      },
      encode(text) {
        const ids = [];
        for (const c of text) {
          const own = index.get(c);
          if (own !== undefined) ids.push(own);
          else for (const b of utf8.encode(c)) ids.push(byteIds[b]);
        }
        return ids;
      },
      decoder() {  // ids of one stream to text; a character split between byte tokens comes out whole
        const utf = new TextDecoder("utf-8");
        return (id) => (MODEL.byte_fallback ? utf.decode(bytesOfToken[id], { stream: true }) : chars[id]);
      },
    };
  })();

  class Net {  // the model's weights and one stream's state in the WebAssembly memory, and its step
    constructor(exports, weights) {
      const s = MODEL.step, Hp = s.hidden_padded, t = s.tensors;
      this.s = s;
      this.wasm = exports;
      this.product = t.w0.dtype === "bf16" ? exports.matvec_bf16 : exports.matvec;
      let end = 0;
      const place = (bytes) => { const at = end; end += Math.ceil(bytes / 16) * 16; return at; };
      const bytes = (tensor) => tensor.size * (tensor.dtype === "bf16" ? 2 : 4);
      const tensors = [t.table, t.w0, ...t.deeper, t.head, ...t.biases, t.peep];
      const at = new Map(tensors.map((tensor) => [tensor, place(bytes(tensor))]));
      this.xh = Array.from({ length: s.layers }, () => place(8 * Hp));  // each layer's [x | h], float32
      this.c = Array.from({ length: s.layers }, () => place(4 * Hp));
      this.g = place(16 * Hp);  // the gates' pre-activations, 4 Hp
      this.logitsAt = place(4 * s.vocab_padded);
      const pages = Math.ceil(end / 65536) - exports.memory.buffer.byteLength / 65536;
      if (pages > 0) exports.memory.grow(pages);
      const memory = new Uint8Array(exports.memory.buffer);
      for (const tensor of tensors) memory.set(weights.subarray(tensor.offset, tensor.offset + bytes(tensor)), at.get(tensor));
      [this.table, this.w0, this.head, this.peep] = [t.table, t.w0, t.head, t.peep].map((tensor) => at.get(tensor));
      this.deeper = t.deeper.map((tensor) => at.get(tensor));
      this.biases = t.biases.map((tensor) => at.get(tensor));
      const floats = (tensor) => new Float32Array(weights.buffer, tensor.offset, tensor.size);
      this.headBias = floats(t.head_bias);
      this.warm = t.warm_h ? [floats(t.warm_h), t.warm_c ? floats(t.warm_c) : null] : null;  // the GRU has no c
      this.memory = exports.memory.buffer;
      this.logits = new Float32Array(this.memory, this.logitsAt, s.vocab_padded);
    }

    reset() {  // the state sampling starts from: the training's carried state (warm), or zeros
      const Hp = this.s.hidden_padded;
      for (let l = 0; l < this.s.layers; l++) {
        const xh = new Float32Array(this.memory, this.xh[l], 2 * Hp), c = new Float32Array(this.memory, this.c[l], Hp);
        xh.fill(0);
        c.fill(0);
        if (this.warm) xh.set(this.warm[0].subarray(l * Hp, (l + 1) * Hp), Hp);
        if (this.warm && this.warm[1]) c.set(this.warm[1].subarray(l * Hp, (l + 1) * Hp));
      }
    }

    step(token) {  // read one token: the logits of the next (this.logits, the first V)
      const s = this.s, Hp = s.hidden_padded, w = this.wasm, heap = new Float32Array(this.memory);
      for (let l = 0; l < s.layers; l++) {
        const h = this.xh[l] + 4 * Hp;  // this layer's h, after its input x
        if (l === 0) {
          this.product(this.w0, h, this.g, 4 * Hp, Hp);
        } else {
          heap.copyWithin(this.xh[l] / 4, (this.xh[l - 1] + 4 * Hp) / 4, (this.xh[l - 1] + 8 * Hp) / 4);  // x = h below
          this.product(this.deeper[l - 1], this.xh[l], this.g, 4 * Hp, 2 * Hp);
        }
        const bias = l === 0 ? this.table + 16 * Hp * token : this.biases[l - 1];
        if (s.cell === "gru") w.gru_cell(this.g, bias, h, Hp);
        else w.lstm_cell(this.g, bias, this.peep + 12 * Hp * l, this.c[l], h, Hp);  // the LSTM's peepholes are zeros
      }
      this.product(this.head, this.xh[s.layers - 1] + 4 * Hp, this.logitsAt, s.vocab_padded, Hp);
      const logits = this.logits, hb = this.headBias;
      for (let v = 0; v < s.vocab; v++) logits[v] += hb[v];
      return logits;
    }
  }

  // Random numbers in (0, 1] from a seed (up to 2^53 - 1): splitmix32 to seed xoshiro128**, 53 bits a number.
  function generator(seed) {
    let x = seed % 2 ** 32 >>> 0;
    const high = Math.floor(seed / 2 ** 32) >>> 0;
    const splitmix = () => {
      x = (x + 0x9e3779b9) >>> 0;
      let z = x;
      z = Math.imul(z ^ (z >>> 16), 0x85ebca6b);
      z = Math.imul(z ^ (z >>> 13), 0xc2b2ae35);
      return (z ^ (z >>> 16)) >>> 0;
    };
    const st = Uint32Array.of(splitmix(), splitmix() ^ high, splitmix(), splitmix());
    const next = () => {
      const r = Math.imul(((Math.imul(st[1], 5) << 7) | (Math.imul(st[1], 5) >>> 25)), 9) >>> 0;
      const t = st[1] << 9;
      st[2] ^= st[0]; st[3] ^= st[1]; st[1] ^= st[2]; st[0] ^= st[3]; st[2] ^= t;
      st[3] = (st[3] << 11) | (st[3] >>> 21);
      return r;
    };
    return () => 1 - ((next() >>> 5) * 67108864 + (next() >>> 6)) / 9007199254740992;
  }

  // The options of generate, checked once as charlstm sample checks its own: a bad one is a
  // TypeError (not an option, or of the wrong type) or a RangeError (out of range) naming it.
  const OPTIONS = ["prompt", "length", "temperature", "top_k", "top_p", "min_p", "presence_penalty", "frequency_penalty",
    "repetition_penalty", "repetition_window", "logit_bias", "ban", "seed", "onText", "signal"];
  const shown = (v) => {  // a value as a message quotes it
    if (typeof v === "string") return JSON.stringify(v);
    if (Array.isArray(v) || (v && Object.getPrototypeOf(v) === Object.prototype)) {
      try { return JSON.stringify(v); } catch (_) { /* a cycle: as JavaScript writes it */ }
    }
    return typeof v === "object" && v ? `a ${v.constructor ? v.constructor.name : "object"}` : String(v);
  };

  // extra: the options only the page's own controls give (logprobs, for the colours).
  function check(o, extra = []) {
    if (o === null || typeof o !== "object" || Array.isArray(o)) {
      throw new TypeError(`generate takes an object of options, such as { prompt: "ROMEO:", length: 200 }, not ${shown(o)}`);
    }
    const fail = (name, value, expected) => { throw new RangeError(`${name} must be ${expected}, not ${shown(value)}`); };
    const num = (name, dflt, ok, expected) => {
      const v = o[name] === undefined || o[name] === null ? dflt : o[name];
      if (v !== null && typeof v !== "number") throw new TypeError(`${name} must be a number, not ${shown(v)}`);
      if (v !== null && (!Number.isFinite(v) || !ok(v))) fail(name, v, expected);
      return v;
    };
    const int = (v) => Number.isSafeInteger(v);
    const unknownKeys = Object.keys(o).filter((key) => !OPTIONS.includes(key) && !extra.includes(key));
    if (unknownKeys.length) throw new TypeError(`unknown option ${shown(unknownKeys[0])}; expected one of ${OPTIONS.join(", ")}`);
    const prompt = o.prompt === undefined ? "" : o.prompt;
    if (typeof prompt !== "string") throw new TypeError(`prompt must be a string, not ${shown(prompt)}`);
    const unknown = VOCAB.unknown(prompt);
    if (unknown.length) throw new RangeError(`the prompt has characters the model never saw: ${unknown.slice(0, 10).map(shown).join(", ")}`);
    if (o.onText !== undefined && typeof o.onText !== "function") throw new TypeError(`onText must be a function, not ${shown(o.onText)}`);
    if (o.signal !== undefined && !(o.signal instanceof AbortSignal)) throw new TypeError(`signal must be an AbortSignal, not ${shown(o.signal)}`);
    const rule = {
      prompt,
      length: num("length", 500, (v) => int(v) && v >= 0, "a whole number >= 0"),
      temperature: num("temperature", 0.8, (v) => v >= 0, "a number >= 0 (0 means greedy)"),
      top_k: num("top_k", 0, (v) => int(v) && v >= 0, "a whole number >= 0 (0: off)"),
      top_p: num("top_p", 1, (v) => v > 0 && v <= 1, "a number in (0, 1]"),
      min_p: num("min_p", 0, (v) => v >= 0 && v <= 1, "a number in [0, 1]"),
      presence: num("presence_penalty", 0, (v) => Math.abs(v) <= PENALTY, `a number from -${PENALTY} to ${PENALTY}`),
      frequency: num("frequency_penalty", 0, (v) => Math.abs(v) <= PENALTY, `a number from -${PENALTY} to ${PENALTY}`),
      repetition: num("repetition_penalty", 1, (v) => v > 0, "a number > 0 (1 is off)"),
      window: num("repetition_window", 64, (v) => int(v) && v >= 1 && v <= MAX_WINDOW, `a whole number from 1 to ${MAX_WINDOW}`),
      seed: num("seed", null, (v) => int(v) && v >= 0, `a whole number from 0 to ${Number.MAX_SAFE_INTEGER}`),
      logprobs: num("logprobs", null, (v) => int(v) && v >= 0 && v <= MODEL.vocab_size, `a whole number from 0 to ${MODEL.vocab_size}`),
      bias: new Float64Array(MODEL.vocab_size),
    };
    const biases = o.logit_bias === undefined || o.logit_bias === null ? {} : o.logit_bias;
    if (typeof biases !== "object" || Array.isArray(biases)) throw new TypeError(`logit_bias must be an object of token ids, not ${shown(biases)}`);
    for (const [key, value] of Object.entries(biases)) {
      if (!/^[0-9]+$/.test(key) || Number(key) >= MODEL.vocab_size) {
        fail("logit_bias", key, `keyed by token ids from 0 to ${MODEL.vocab_size - 1} (info.tokens names them)`);
      }
      if (typeof value !== "number") throw new TypeError(`logit_bias[${key}] must be a number, not ${shown(value)}`);
      if (!(Math.abs(value) <= BIAS_LIMIT)) fail(`logit_bias[${key}]`, value, `a number from -${BIAS_LIMIT} to ${BIAS_LIMIT}`);
      rule.bias[Number(key)] = value <= -BIAS_LIMIT ? -Infinity : value;  // -100 bans
    }
    const ban = o.ban === undefined || o.ban === null ? "" : o.ban;
    if (typeof ban !== "string") throw new TypeError(`ban must be a string of characters, not ${shown(ban)}`);
    for (const c of ban) {
      const id = MODEL.tokens.indexOf(c);
      if (id < 0) fail("ban", c, "characters of this model (info.tokens)");
      rule.bias[id] = -Infinity;
    }
    if (rule.bias.every((b) => b === -Infinity)) throw new RangeError("ban and logit_bias leave no token to write");
    if (rule.seed === null) rule.seed = Math.floor(Math.random() * 2 ** 32);
    return rule;
  }

  // One id from the logits by the rule, in charlstm's order (sampling/kernels.py draw): the bias,
  // the repetition penalty on the ids among the recent ones, presence and frequency penalties on
  // those written, then temperature (0: the likeliest), top-k, top-p and min-p; u in (0, 1] picks.
  function draw(logits, rule, written, recent, u, z) {
    const V = z.length;
    for (let v = 0; v < V; v++) {
      let x = logits[v] + rule.bias[v];
      if (recent[v] > 0 && rule.repetition !== 1) x = x > 0 ? x / rule.repetition : x * rule.repetition;
      if (written[v] > 0) x -= rule.frequency * written[v] + rule.presence;
      z[v] = x;
    }
    let best = 0;
    for (let v = 1; v < V; v++) if (z[v] > z[best]) best = v;
    if (rule.temperature === 0) return best;
    const top = z[best];
    for (let v = 0; v < V; v++) z[v] = (z[v] - top) / rule.temperature;
    if (rule.top_k > 0 && rule.top_k < V) {
      const kth = Float64Array.from(z).sort()[V - rule.top_k];
      for (let v = 0; v < V; v++) if (z[v] < kth) z[v] = -Infinity;
    }
    if (rule.top_p < 1) {
      const order = Array.from(z.keys()).sort((a, b) => z[b] - z[a] || a - b);
      let total = 0;
      const probs = order.map((v) => { const p = Math.exp(z[v] - z[order[0]]); total += p; return p; });
      let ahead = 0;
      order.forEach((v, i) => { if (i && ahead >= rule.top_p) z[v] = -Infinity; ahead += probs[i] / total; });
    }
    if (rule.min_p > 0) {
      const cut = Math.log(rule.min_p);
      for (let v = 0; v < V; v++) if (z[v] < cut) z[v] = -Infinity;
    }
    let acc = 0;
    for (let v = 0; v < V; v++) { acc += Math.exp(z[v]); z[v] = acc; }
    const target = u * acc;
    for (let v = 0; v < V; v++) if (z[v] >= target) return v;
    return best;
  }

  function scored(logits, token, top) {  // the model's own log-probability of token, and the top likeliest
    const V = MODEL.vocab_size;
    let max = -Infinity, total = 0;
    for (let v = 0; v < V; v++) if (logits[v] > max) max = logits[v];
    for (let v = 0; v < V; v++) total += Math.exp(logits[v] - max);
    const norm = max + Math.log(total), alternatives = {};
    if (top) {
      const order = Array.from({ length: V }, (_, v) => v).sort((a, b) => logits[b] - logits[a] || a - b);
      for (const v of order.slice(0, top)) alternatives[MODEL.tokens[v]] = logits[v] - norm;
    }
    return [logits[token] - norm, alternatives];
  }

  const tick = () => new Promise((resolve) => { const ch = new MessageChannel(); ch.port1.onmessage = resolve; ch.port2.postMessage(0); });

  let net = null;
  const ready = (async () => {
    const step = bytesOf(LOCAL("charlstm-step"));
    if (!WebAssembly.validate(step)) {
      throw new Error("this browser cannot run the page's step: it needs WebAssembly SIMD (Chrome 91, Firefox 89, Safari 16.4 or newer)");
    }
    const { instance } = await WebAssembly.instantiate(step);
    net = new Net(instance.exports, bytesOf(LOCAL("charlstm-weights")));
  })();
  ready.catch(() => {});  // the page and each generate call say why

  // The text of one rule, piece by piece as it is made: { text, logprobs } in OpenAI's legacy shape.
  async function* pieces(rule, signal) {
    await ready;
    const V = MODEL.vocab_size, written = new Float64Array(V), recent = new Int32Array(V), z = new Float64Array(V);
    const ring = [], random = generator(rule.seed), decode = VOCAB.decoder();
    const remember = (id) => { ring.push(id); recent[id]++; if (ring.length > rule.window) recent[ring.shift()]--; };
    const newline = !rule.prompt.startsWith("\n") && !VOCAB.unknown("\n").length ? "\n" : "";
    let ids = VOCAB.encode(newline + rule.prompt);
    if (!ids.length) ids = [0];
    const stopped = () => { if (signal && signal.aborted) throw new DOMException("stopped", "AbortError"); };
    net.reset();
    let logits = null;
    for (let read = 0; read < ids.length; await tick()) {  // the prompt, in slices: the page stays live
      stopped();
      const until = performance.now() + SLICE_MS;
      do { logits = net.step(ids[read]); remember(ids[read]); read++; } while (read < ids.length && performance.now() < until);
    }
    let made = 0, offset = 0;
    while (made < rule.length) {
      stopped();
      const until = performance.now() + SLICE_MS;
      let text = "";
      const scores = rule.logprobs === null ? null : { tokens: [], token_logprobs: [], top_logprobs: [], text_offset: [] };
      do {
        const id = draw(logits, rule, written, recent, random(), z);
        if (scores) {
          const [lp, top] = scored(logits, id, rule.logprobs);
          scores.tokens.push(MODEL.tokens[id]); scores.token_logprobs.push(lp); scores.top_logprobs.push(top);
          scores.text_offset.push(offset);
        }
        const part = decode(id);
        text += part;
        offset += Array.from(part).length;
        written[id]++;
        remember(id);
        made++;
        if (made < rule.length) logits = net.step(id);
      } while (made < rule.length && performance.now() < until);
      yield { index: 0, text, logprobs: scores };
      await tick();
    }
  }

  let busy = Promise.resolve();  // one generation at a time: they share the model's state
  async function* alone(work, signal) {
    let release;
    const mine = new Promise((resolve) => { release = resolve; });
    const before = busy;
    busy = busy.then(() => mine);
    try {
      await new Promise((resolve, reject) => {  // the one before ends, or this one is stopped while it waits
        const stop = () => reject(new DOMException("stopped", "AbortError"));
        if (signal && signal.aborted) stop();
        if (signal) signal.addEventListener("abort", stop, { once: true });
        before.then(() => { if (signal) signal.removeEventListener("abort", stop); resolve(); });
      });
      yield* work;
    } finally {
      release();
    }
  }

  const frozen = (value) => {  // a deep copy that cannot be changed: what info hands out
    if (value && typeof value === "object") Object.values(value).forEach(frozen);
    return Object.freeze(value);
  };

  const api = {
    info: frozen(JSON.parse(JSON.stringify(Object.fromEntries(Object.entries(MODEL).filter(([key]) => !["step", "chars", "byte_values", "limits"].includes(key)))))),
    ready,
    // The prompt followed by the generated text, as Python's Model.generate; options.onText(piece)
    // sees each piece of the generated text as it comes, options.signal (an AbortSignal) stops it.
    async generate(options = {}) {
      await ready;
      const rule = check(options);
      let text = rule.prompt;
      for await (const piece of alone(pieces(rule, options.signal), options.signal)) {
        text += piece.text;
        if (options.onText) options.onText(piece.text);
      }
      return text;
    },
  };

  const SOURCE = {
    completions(body, signal) {  // the page's request, as OpenAI's completion fields
      const rule = check({
        prompt: body.prompt, length: body.max_tokens, temperature: body.temperature, top_k: body.top_k, top_p: body.top_p,
        min_p: body.min_p, presence_penalty: body.presence_penalty, frequency_penalty: body.frequency_penalty,
        repetition_penalty: body.repetition_penalty, repetition_window: body.repeat_last_n, logit_bias: body.logit_bias,
        seed: body.seed, logprobs: body.logprobs,
      }, ["logprobs"]);
      return alone(pieces(rule, signal), signal);
    },
  };
  return { api, SOURCE };
})();
const SOURCE = RUNTIME.SOURCE;
{
  const prompt = document.getElementById("prompt");  // the page's example prompt, unless the model cannot read it
  if (!MODEL.byte_fallback && Array.from(prompt.value).some((c) => !MODEL.chars.includes(c))) prompt.value = "";
}
window.charlstm = RUNTIME.api;

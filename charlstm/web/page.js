// The page's own code, shared by the server's playground (with playground.js) and the exported
// one-file page (with local.js): the controls, the request they make, and the text painted as it
// streams in, each character coloured by its probability. The other script defines SOURCE, whose
// completions(body, signal) yields the choices of an OpenAI completion (index, text, logprobs) as
// they are made, and MODEL, the model's facts.
const $ = (id) => document.getElementById(id);
let controller = null;
const LEVELS = 21;  // colour steps over the probability: 0.05 apart
const SURPRISE = [178, 24, 43];  // the red end of the explain page's scale; white is a sure character
const TOP = Math.max(0, Math.min(5, MODEL.vocab_size || 5));  // alternatives asked for each character
const scoreOf = new WeakMap();  // a character's span -> its score: { p, top: [[name, logprob], ...], tokens }
let pinned = null;  // the character chosen by a tap or the keyboard, whose tip stays shown
let tipFor = null;  // the character whose tip is shown

function levelRules() {
  const rules = [];
  for (let k = 0; k < LEVELS; k++) {
    const v = k / (LEVELS - 1);
    const rgb = SURPRISE.map((e) => Math.round(255 + (e - 255) * v)).join(",");
    rules.push(`#output .p${k}, .scale .p${k} { background: rgb(${rgb})${v > 0.6 ? "; color: #fff" : ""}; }`);
  }
  const style = document.createElement("style");
  style.textContent = rules.join("\n");
  document.head.appendChild(style);
  const scale = document.createDocumentFragment();
  for (let k = 0; k < LEVELS; k++) {
    const s = document.createElement("span");
    s.className = "p" + k;
    scale.appendChild(s);
  }
  $("scale").appendChild(scale);
}

function level(p) {  // 0 for a sure character, LEVELS - 1 for one the model thought impossible
  return Math.min(LEVELS - 1, Math.max(0, Math.round((1 - p) * (LEVELS - 1))));
}

function percent(p) {
  const v = 100 * p;
  if (v >= 1 || v === 0) return v.toFixed(1) + "%";
  return (v >= 0.01 ? v.toFixed(2) : v.toExponential(1)) + "%";
}

function label(c) {  // a character or a token's name as the tip writes it
  if (c.startsWith("bytes:")) return c.slice(6) + " (byte)";
  if (c === " ") return "\u2423";
  if (c === "\n") return "\u21b5";
  if (c === "\t") return "\u21e5";
  const code = c.codePointAt(0);
  if (c.length === 1 && code < 0x20) return String.fromCharCode(0x2400 + code);
  if (code === 0x7f) return "\u2421";
  return c;
}

function describe(span) {
  const score = scoreOf.get(span);
  const lines = [`'${label(span.textContent)}'  ${percent(score.p)}` + (score.tokens > 1 ? `  (${score.tokens} byte tokens)` : "")];
  if (score.top.length) {
    lines.push(score.tokens > 1 ? "likeliest at its first byte:" : "likeliest here:");
    for (const [name, lp] of score.top) lines.push(`  ${label(name)}  ${percent(Math.exp(lp))}${name === score.first ? "  \u25c2" : ""}`);
  }
  return lines.join("\n");
}

function showTip(span) {
  const tip = $("tip");
  tip.textContent = describe(span);
  tip.style.display = "block";
  tipFor = span;
  place();
}

function place() {
  if (!tipFor) return;
  const tip = $("tip"), box = tipFor.getBoundingClientRect();
  const x = Math.min(box.left, window.innerWidth - tip.offsetWidth - 4);
  const below = box.bottom + 6, above = box.top - tip.offsetHeight - 6;
  const y = below + tip.offsetHeight > window.innerHeight && above >= 0 ? above : below;
  tip.style.left = Math.max(x, 0) + "px";
  tip.style.top = Math.max(y, 0) + "px";
}

function hideTip() {
  $("tip").style.display = "none";
  tipFor = null;
}

function pin(span) {
  if (pinned) pinned.classList.remove("current");
  pinned = span;
  if (span) {
    span.classList.add("current");
    showTip(span);
  } else {
    hideTip();
  }
}

function scored(node) { return node && node.nodeType === 1 && scoreOf.has(node) ? node : null; }

function step(span, forward) {
  let next = span;
  do next = forward ? next.nextElementSibling : next.previousElementSibling; while (next && !scored(next));
  return next || span;
}

// One choice's text as it streams: each chunk's characters become spans, coloured by their score.
// text_offset counts code points from the start of the choice's text; the byte tokens of one
// character share its offset, and one sent before the text of its character waits for it.
function Painter(out) {
  this.out = out;
  this.seen = 0;  // code points shown so far
  this.waiting = [];  // tokens at offsets past the text shown
  this.last = null;  // the score of the latest token, for characters that have none of their own
}

Painter.prototype.add = function (text, logprobs) {
  const chars = Array.from(text), end = this.seen + chars.length;
  const at = new Map();
  if (!logprobs || !logprobs.tokens) this.last = null;  // no scores: plain text
  else {
    const waiting = this.waiting;
    this.waiting = [];
    const tokens = waiting.concat(logprobs.tokens.map((name, i) => ({
      name, offset: logprobs.text_offset[i], lp: logprobs.token_logprobs[i], top: logprobs.top_logprobs[i],
    })));
    for (const t of tokens) {
      if (t.offset >= end) { this.waiting.push(t); continue; }
      let score = at.get(t.offset);
      if (!score) {
        const top = Object.entries(t.top || {}).sort((a, b) => b[1] - a[1]);
        score = { lp: 0, known: true, top, first: t.name, tokens: 0 };
        at.set(t.offset, score);
      }
      if (t.lp === null || t.lp === undefined) score.known = false; else score.lp += t.lp;
      score.tokens += 1;
    }
  }
  const fragment = document.createDocumentFragment();
  let plain = "";
  chars.forEach((c, j) => {
    const own = at.get(this.seen + j);
    if (own) this.last = own.known ? { p: Math.exp(own.lp), top: own.top, first: own.first, tokens: own.tokens } : null;
    const score = this.last;  // its own, or the token's whose text it continues
    if (!score) { plain += c; return; }
    if (plain) { fragment.appendChild(document.createTextNode(plain)); plain = ""; }
    const span = document.createElement("span");
    span.className = "c p" + level(score.p) + (c === "\n" ? " nl" : "");
    span.textContent = c;
    scoreOf.set(span, score);
    fragment.appendChild(span);
  });
  if (plain) fragment.appendChild(document.createTextNode(plain));
  this.out.appendChild(fragment);
  this.seen = end;
};

function describeModel(m) {
  const loss = m.val_loss == null ? "" : `, val loss ${m.val_loss.toFixed(4)} nats/char`;
  return `${m.id}: ${m.cell} ${m.layers}x${m.hidden}, ${m.params.toLocaleString("en")} parameters, trained on ${m.corpus}${loss}`;
}

function request() {
  const body = { model: MODEL.id, prompt: $("prompt").value, stream: true, logprobs: TOP };
  const number = (id) => {  // the field's number as typed (the API says what it accepts), or null when empty
    const v = $(id).value.trim(), n = Number(v);
    if (Number.isNaN(n)) throw new Error(`${$(id).labels[0].textContent} is not a number: ${v}`);
    return v === "" ? null : n;
  };
  body.max_tokens = number("max_tokens");
  body.temperature = number("temperature");
  const k = number("top_k"); if (k !== null && k !== 0) body.top_k = k;
  const p = number("top_p"); if (p !== null && p !== 1) body.top_p = p;
  const seed = number("seed"); if (seed !== null) body.seed = seed;
  const minP = number("min_p"); if (minP) body.min_p = minP;
  const presence = number("presence_penalty"); if (presence) body.presence_penalty = presence;
  const frequency = number("frequency_penalty"); if (frequency) body.frequency_penalty = frequency;
  const repetition = number("repetition_penalty");
  if (repetition !== null && repetition !== 1) {
    body.repetition_penalty = repetition;
    const window = number("repeat_last_n"); if (window !== null && window !== 64) body.repeat_last_n = window;
  }
  const ban = [...$("ban").value];  // characters, as logit_bias by their token ids (MODEL.tokens names each id)
  if (ban.length) {
    body.logit_bias = {};
    for (const ch of ban) {
      const id = MODEL.tokens.indexOf(ch);
      if (id < 0) throw new Error(`${JSON.stringify(ch)} is not a character of this model: it cannot be banned`);
      body.logit_bias[id] = -100;
    }
  }
  for (const key of Object.keys(body)) if (body[key] === null) delete body[key];
  return body;
}

function count(n) { return Math.round(n).toLocaleString("en"); }

function setRunning(running) {
  $("generate").disabled = running;
  $("stop").disabled = !running;
}

function showError(e) {
  const span = document.createElement("span");
  span.className = "error";
  span.textContent = "error: " + e.message;
  $("status").replaceChildren(span);
}

async function generate() {
  let completions;
  controller = new AbortController();
  try {  // a request the source refuses at once leaves the last text where it is
    completions = SOURCE.completions(request(), controller.signal);
  } catch (e) {
    controller = null;
    showError(e);
    return;
  }
  const out = $("output");
  pin(null);
  out.textContent = "";
  const shown = document.createElement("span");
  shown.className = "prompt";
  shown.textContent = $("prompt").value;
  out.appendChild(shown);
  const painters = new Map();  // by choice index
  setRunning(true);
  $("status").textContent = "waiting for the first character...";
  const started = performance.now();
  let chars = 0, first = null;
  try {
    for await (const choice of completions) {
      if (first === null) first = performance.now();
      if (!painters.has(choice.index)) painters.set(choice.index, new Painter(out));
      painters.get(choice.index).add(choice.text, choice.logprobs);
      chars += Array.from(choice.text).length;
      const seconds = (performance.now() - (first || started)) / 1000;
      $("status").textContent = `${count(chars)} characters` + (seconds > 0.05 ? `, ${count(chars / seconds)} per second` : "");
    }
    const seconds = (performance.now() - (first || started)) / 1000;
    const rate = seconds > 0.05 ? `, ${count(chars / seconds)} per second` : "";  // too short a time says nothing
    $("status").textContent = `done: ${count(chars)} characters${rate}, first after ${count((first || performance.now()) - started)} ms`;
  } catch (e) {
    if (e.name === "AbortError") {
      $("status").textContent = `stopped after ${count(chars)} characters`;
    } else {
      showError(e);
    }
  } finally {
    controller = null;
    setRunning(false);
  }
}

$("facts").textContent = describeModel(MODEL);
levelRules();
if (MODEL.max_tokens) $("max_tokens").max = MODEL.max_tokens;
$("keyrow").hidden = !MODEL.key_required;
$("generate").addEventListener("click", generate);
$("stop").addEventListener("click", () => { if (controller) controller.abort(); });
const output = $("output");
output.addEventListener("mouseover", (e) => { const span = scored(e.target); if (span) showTip(span); });
output.addEventListener("mouseleave", () => { if (pinned) showTip(pinned); else hideTip(); });
output.addEventListener("click", (e) => { const span = scored(e.target); if (span) pin(span); });  // a tap, too
output.addEventListener("focus", () => {
  let keyboard = true;
  try { keyboard = output.matches(":focus-visible"); } catch (_) { /* an older browser: treat it as the keyboard */ }
  if (keyboard && !pinned) { const first = output.querySelector(".c"); if (first) pin(first); }
});
output.addEventListener("blur", () => pin(null));
output.addEventListener("keydown", (e) => {
  const chars = output.querySelectorAll(".c");
  if (!chars.length) return;
  let next = null;
  if (e.key === "ArrowRight") next = pinned ? step(pinned, true) : chars[0];
  else if (e.key === "ArrowLeft") next = pinned ? step(pinned, false) : chars[0];
  else if (e.key === "Home") next = chars[0];
  else if (e.key === "End") next = chars[chars.length - 1];
  else if (e.key === "Escape") { pin(null); return; }
  else return;
  e.preventDefault();
  pin(next);
  next.scrollIntoView({ block: "nearest" });
  place();
});
window.addEventListener("scroll", place, { passive: true });
window.addEventListener("resize", place);
$("prompt").addEventListener("keydown", (e) => { if (e.key === "Enter" && (e.ctrlKey || e.metaKey) && !controller) generate(); });

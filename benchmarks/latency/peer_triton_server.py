"""A Triton dynamic-batching peer for ``bench serve`` (target ``triton-peer``).

What a team would otherwise deploy with Triton: PyTriton (``nvidia-pytriton``, Triton
Inference Server with its Python backend) serving a model ``rank`` over the Open Inference
Protocol with Triton's **dynamic batcher**. Each batch Triton forms is tokenized (padded
to its longest text, as Triton batches are), encoded by the bundle's INT8 ONNX encoder in
ONNX Runtime (the same file and thread count explorank serves), and each request's
candidates are scored by dot product with the bundle's item embeddings; the top-k is
returned. No exploration, no event log: only what it takes to answer.

It is a standalone script: it needs numpy, onnxruntime, tokenizers and nvidia-pytriton,
not explorank (PyTriton 0.7 needs numpy < 2, so it usually lives in a virtual environment
of its own; ``bench serve --triton-python`` names that interpreter). It writes the gRPC
port to ``--port-file`` once Triton serves.

Model ``rank`` (max_batch_size 32; every input has the batch dimension first):

* inputs ``CONTEXT_TEXT`` BYTES [1], ``CANDIDATE_IDS`` BYTES [-1], ``TOP_K`` INT32 [1]
  (optional), ``USER_ID`` BYTES [1] (optional, ignored);
* outputs ``ITEM_IDS`` BYTES [-1], ``SCORES`` FP32 [-1].

Requests are batched together when their candidate lists have the same length (Triton
batches equal shapes only): the benchmark sends ``--candidates`` ids in every request.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import sys
import sysconfig
import threading
from pathlib import Path
from typing import Any

log = logging.getLogger("triton-peer")

MAX_BATCH_SIZE = 32


class RankModel:
    """Tokenize + encode + score a batch, as the Triton model function runs it."""

    def __init__(self, bundle: Path, threads: int) -> None:
        import numpy as np
        import onnxruntime as ort
        from tokenizers import Tokenizer

        manifest = json.loads((bundle / "manifest.json").read_text())
        self.max_len = int(manifest["max_seq_length"])
        self.tokenizer = Tokenizer.from_file(str(bundle / manifest["tokenizer"]["path"]))
        self.tokenizer.no_padding()
        self.tokenizer.enable_truncation(self.max_len)
        encoder = manifest["encoder"].get("int8") or manifest["encoder"]["fp32"]
        self.encoder_file = encoder
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = threads
        opts.inter_op_num_threads = 1
        opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        self.session = ort.InferenceSession(
            str(bundle / encoder), opts, providers=["CPUExecutionProvider"]
        )
        self.items = np.load(bundle / "item_embeddings.npy").astype(np.float32)
        ids = [
            json.loads(line)["id"]
            for line in (bundle / "items.jsonl").read_text().splitlines()
            if line.strip()
        ]
        self.row = {item_id: i for i, item_id in enumerate(ids)}

    def encode(self, texts: list[str]) -> Any:
        import numpy as np

        encs = self.tokenizer.encode_batch(texts)
        width = max(len(e.ids) for e in encs)
        ids = np.zeros((len(encs), width), dtype=np.int64)
        mask = np.zeros((len(encs), width), dtype=np.int64)
        for i, e in enumerate(encs):
            ids[i, : len(e.ids)] = e.ids
            mask[i, : len(e.ids)] = 1
        return self.session.run(None, {"input_ids": ids, "attention_mask": mask})[0]

    def rank(
        self, texts: list[str], candidates: list[list[str]], top_k: list[int]
    ) -> tuple[list[list[str]], list[Any]]:
        import numpy as np

        users = self.encode(texts)
        out_ids: list[list[str]] = []
        out_scores: list[Any] = []
        for user, cands, k in zip(users, candidates, top_k, strict=True):
            known = [c for c in cands if c in self.row]  # unknown ids are not ranked
            rows = [self.row[c] for c in known]
            if not rows:
                out_ids.append([])
                out_scores.append(np.zeros(0, np.float32))
                continue
            scores = self.items[rows] @ user
            k = min(k if k > 0 else 10, len(rows))
            top = np.argpartition(-scores, k - 1)[:k]
            top = top[np.argsort(-scores[top], kind="stable")]
            out_ids.append([known[i] for i in top])
            out_scores.append(scores[top].astype(np.float32))
        return out_ids, out_scores


def _strings(arr: Any) -> list[Any]:
    return [v.decode() if isinstance(v, bytes) else str(v) for v in arr]


def build_infer(model: RankModel) -> Any:
    import numpy as np
    from pytriton.decorators import batch

    @batch
    def infer(**inputs: Any) -> dict[str, Any]:
        texts = _strings(inputs["CONTEXT_TEXT"].reshape(-1))
        cands = [_strings(row) for row in inputs["CANDIDATE_IDS"]]
        n = len(texts)
        top_k = [int(v) for v in inputs["TOP_K"].reshape(-1)] if "TOP_K" in inputs else [10] * n
        ids, scores = model.rank(texts, cands, top_k)
        width = max((len(r) for r in ids), default=0)
        id_arr = np.full((n, width), b"", dtype=object)
        score_arr = np.zeros((n, width), dtype=np.float32)
        for i, (r, s) in enumerate(zip(ids, scores, strict=True)):
            id_arr[i, : len(r)] = [x.encode() for x in r]
            score_arr[i, : len(s)] = s
        return {"ITEM_IDS": id_arr, "SCORES": score_arr}

    return infer


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--bundle", type=Path, required=True)
    p.add_argument("--port", type=int, required=True, help="gRPC port")
    p.add_argument("--http-port", type=int, required=True)
    p.add_argument("--metrics-port", type=int, required=True, help="Triton's Prometheus metrics")
    p.add_argument("--port-file", type=Path, required=True)
    p.add_argument("--threads", type=int, default=0, help="encoder threads (default: CPUs)")
    p.add_argument("--max-queue-delay-us", type=int, default=2000)
    args = p.parse_args(argv)
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )

    # Triton's Python backend stub embeds libpython: let it find this interpreter's (a
    # pyenv or venv Python may not be where the system looks).
    libdir = sysconfig.get_config_var("LIBDIR") or ""
    if libdir:
        os.environ["LD_LIBRARY_PATH"] = os.pathsep.join(
            x for x in (libdir, os.environ.get("LD_LIBRARY_PATH", "")) if x
        )
    import numpy as np
    from pytriton.model_config import DynamicBatcher, ModelConfig, Tensor
    from pytriton.triton import Triton, TritonConfig

    threads = args.threads or len(os.sched_getaffinity(0))
    model = RankModel(args.bundle, threads)
    log.info("encoder %s, %d threads, %d items", model.encoder_file, threads, len(model.row))
    config = TritonConfig(
        grpc_address="127.0.0.1",
        http_address="127.0.0.1",
        grpc_port=args.port,
        http_port=args.http_port,
        metrics_port=args.metrics_port,
        log_verbose=0,
    )
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    with Triton(config=config) as triton:
        triton.bind(
            model_name="rank",
            infer_func=build_infer(model),
            inputs=[
                Tensor(name="CONTEXT_TEXT", dtype=bytes, shape=(1,)),
                Tensor(name="CANDIDATE_IDS", dtype=bytes, shape=(-1,)),
                Tensor(name="TOP_K", dtype=np.int32, shape=(1,), optional=True),
                Tensor(name="USER_ID", dtype=bytes, shape=(1,), optional=True),
            ],
            outputs=[
                Tensor(name="ITEM_IDS", dtype=bytes, shape=(-1,)),
                Tensor(name="SCORES", dtype=np.float32, shape=(-1,)),
            ],
            config=ModelConfig(
                max_batch_size=MAX_BATCH_SIZE,
                batcher=DynamicBatcher(max_queue_delay_microseconds=args.max_queue_delay_us),
            ),
            strict=False,
        )
        triton.run()
        args.port_file.write_text(str(args.port))
        log.info("triton-peer serving model rank on 127.0.0.1:%d", args.port)
        stop.wait()
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""The peer for ``bench serve``: the gRPC server a user would write without explorank.

It implements the same ``explorank.v1.Ranker`` Rank RPC the plain way: per request,
tokenize with the Hugging Face tokenizer, run ``AutoModel`` in PyTorch eager mode, mean
pool over the attention mask, L2-normalise, score the candidates by dot product against
the bundle's precomputed item embeddings (candidates given only as text are encoded in
the same forward pass) and return the top-k. That is the same work per request as
explorank's encoder + ``mf``-style scoring, minus exploration and event logging, which
only favours the peer.

Configuration is the peer's best on a small CPU machine, not a straw man: torch uses
all available CPUs per forward pass, and a lock serialises forward passes (concurrent
passes, each wanting every core, only oversubscribe the CPU and lose throughput); a
request whose client already gave up is skipped instead of computed. There is no
batching across requests: that is the point of comparison.

Run: ``python -m explorank.benchmarks.latency.peer_torch_server --bundle DIR --model HF_DIR --port 0 --port-file F``.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import threading
import uuid
from collections.abc import Sequence
from concurrent import futures
from pathlib import Path
from typing import Any

import grpc
import numpy as np
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from explorank.engine.bundle import Bundle, load_bundle
from explorank.v1 import ranker_pb2, ranker_pb2_grpc

__all__ = ["PeerServicer", "TorchEncoder", "build_server", "main"]

log = logging.getLogger("explorank.peer")
DEFAULT_TOP_K = 10


class TorchEncoder:
    """Hugging Face tokenizer + model, mean pooling, normalisation; one forward at a time."""

    def __init__(
        self, model_dir: str | Path, max_seq_length: int, threads: int | None = None
    ) -> None:
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        import torch
        from transformers import AutoModel, AutoTokenizer

        from explorank.engine.cpu import available_cpus

        self._torch = torch
        torch.set_num_threads(threads or available_cpus())
        self.tokenizer = AutoTokenizer.from_pretrained(str(model_dir))
        self.model = AutoModel.from_pretrained(str(model_dir)).eval()
        self.max_seq_length = int(max_seq_length)
        self.lock = threading.Lock()

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        torch = self._torch
        with self.lock, torch.inference_mode():
            enc = self.tokenizer(
                list(texts),
                padding=True,
                truncation=True,
                max_length=self.max_seq_length,
                return_tensors="pt",
            )
            hidden = self.model(**enc).last_hidden_state
            mask = enc["attention_mask"].unsqueeze(-1).to(hidden.dtype)
            pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
            return torch.nn.functional.normalize(pooled, dim=-1).numpy()


class PeerServicer(ranker_pb2_grpc.RankerServicer):
    def __init__(self, bundle: Bundle, encoder: Any) -> None:
        self.bundle = bundle
        self.encoder = encoder

    def _context(self, request: ranker_pb2.RankRequest, context: grpc.ServicerContext) -> str:
        parts = [request.context_text.strip()] if request.context_text.strip() else []
        for i, hid in enumerate(request.history_item_ids):
            row = self.bundle.index.get(hid)
            if row is None:
                context.abort(
                    grpc.StatusCode.NOT_FOUND, f"history_item_ids[{i}]: unknown item {hid!r}"
                )
            parts.append(self.bundle.items[row].text)
        if not parts:
            context.abort(
                grpc.StatusCode.INVALID_ARGUMENT, "context_text: send a context or history items"
            )
        return ". ".join(parts)

    def Rank(
        self, request: ranker_pb2.RankRequest, context: grpc.ServicerContext
    ) -> ranker_pb2.RankResponse:
        b = self.bundle
        text = self._context(request, context)
        if request.candidates:
            ids = [c.item_id for c in request.candidates]
            rows = [b.index.get(c.item_id) for c in request.candidates]
            new = [i for i, r in enumerate(rows) if r is None]
            for i in new:
                if not request.candidates[i].text.strip():
                    context.abort(
                        grpc.StatusCode.NOT_FOUND,
                        f"candidates[{i}]: item {ids[i]!r} is not in the catalog and has no text",
                    )
        else:
            ids, rows, new = [it.id for it in b.items], list(range(len(b.items))), []
        if not context.is_active():  # the client gave up while this request waited
            context.abort(grpc.StatusCode.CANCELLED, "client cancelled")
        emb = self.encoder.encode([text] + [request.candidates[i].text for i in new])
        user = emb[0]
        matrix = np.empty((len(ids), b.embedding_dim), dtype=np.float32)
        known = [i for i, r in enumerate(rows) if r is not None]
        matrix[known] = b.item_embeddings[[rows[i] for i in known]]
        for j, i in enumerate(new, 1):
            matrix[i] = emb[j]
        scores = matrix @ user
        k = min(int(request.top_k) or DEFAULT_TOP_K, len(ids))
        top = np.argpartition(-scores, k - 1)[:k] if k < len(ids) else np.arange(len(ids))
        top = top[np.argsort(-scores[top], kind="stable")]
        return ranker_pb2.RankResponse(
            event_id=request.event_id or uuid.uuid4().hex,
            items=[
                ranker_pb2.RankedItem(
                    item_id=ids[i], score=float(scores[i]), propensity=1.0, explored=False
                )
                for i in top
            ],
            model_version=f"torch-peer/{b.model_name}",
            scorer="dot",
            policy="greedy",
        )

    def Reward(
        self, request: ranker_pb2.RewardRequest, context: grpc.ServicerContext
    ) -> ranker_pb2.RewardResponse:
        return ranker_pb2.RewardResponse(accepted=True, duplicate=False)  # the peer learns nothing

    def GetInfo(
        self, request: ranker_pb2.GetInfoRequest, context: grpc.ServicerContext
    ) -> ranker_pb2.GetInfoResponse:
        b = self.bundle
        return ranker_pb2.GetInfoResponse(
            model_name=b.model_name,
            model_version=f"torch-peer/{b.model_name}",
            embedding_dim=b.embedding_dim,
            max_seq_length=b.max_seq_length,
            backend="pytorch",
            execution_provider="cpu",
            precision="fp32",
            catalog_size=len(b.items),
            version="peer",
        )


def build_server(
    bundle: Bundle, encoder: Any, host: str = "127.0.0.1", port: int = 0, workers: int = 16
) -> tuple[grpc.Server, int, health.HealthServicer]:
    """A started sync gRPC server (thread pool of ``workers``) and its bound port."""
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=workers))
    ranker_pb2_grpc.add_RankerServicer_to_server(PeerServicer(bundle, encoder), server)
    health_servicer = health.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    bound = server.add_insecure_port(f"{host}:{port}")
    server.start()
    for service in ("", "explorank.v1.Ranker"):
        health_servicer.set(service, health_pb2.HealthCheckResponse.SERVING)
    return server, bound, health_servicer


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="peer_torch_server", description=__doc__.splitlines()[0])
    p.add_argument("--bundle", type=Path, required=True, help="bundle (catalog + item embeddings)")
    p.add_argument("--model", type=Path, required=True, help="Hugging Face model directory")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=0)
    p.add_argument("--port-file", type=Path)
    p.add_argument("--threads", type=int, help="torch threads (default: CPUs available)")
    p.add_argument("--workers", type=int, default=16, help="gRPC worker threads")
    args = p.parse_args(argv)
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    bundle = load_bundle(args.bundle)
    encoder = TorchEncoder(args.model, bundle.max_seq_length, args.threads)
    encoder.encode(["warm up"])
    server, port, health_servicer = build_server(
        bundle, encoder, args.host, args.port, args.workers
    )
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    if args.port_file:
        tmp = args.port_file.with_name(args.port_file.name + ".tmp")
        tmp.write_text(str(port))
        tmp.replace(args.port_file)  # atomic: a reader never sees a partial port
    print(f"torch peer serving on {args.host}:{port}", flush=True)
    stop.wait()
    health_servicer.enter_graceful_shutdown()
    server.stop(5).wait()
    return 0


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())

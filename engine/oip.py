"""The Open Inference Protocol (KServe v2, ``inference.GRPCInferenceService``) on the gRPC port.

Two models, both thin layers over the :class:`~explorank.engine.pipeline.Engine`:

- ``encoder``: input ``TEXT`` (BYTES, shape ``[-1]``) -> output ``EMBEDDING`` (FP32,
  ``[-1, dim]``): :meth:`Engine.encode`, i.e. the tokenizer thread and the dynamic batcher
  with its admission control and deadlines, as Rank uses them.
- ``rank``: inputs ``CONTEXT_TEXT`` and, optional, ``USER_ID``, ``HISTORY_ITEM_IDS``,
  ``CANDIDATE_IDS``, ``CANDIDATE_TEXTS``, ``TOP_K``, ``POLICY``, ``SCORER``, ``EVENT_ID`` ->
  outputs ``ITEM_IDS``, ``SCORES``, ``PROPENSITIES``, ``EXPLORED``, ``EVENT_ID``:
  :meth:`Engine.rank`, the same path as ``explorank.v1.Ranker/Rank`` — the decision is
  logged, and the returned ``EVENT_ID`` is what ``Ranker/Reward`` takes.

Tensors arrive as ``raw_input_contents`` (what ``tritonclient`` sends) or typed
``contents``; outputs go back as ``raw_output_contents``, as Triton answers. Errors go
through the same mapping as the Ranker API (:mod:`explorank.engine.grpc_errors`); messages
name the tensor at fault (``inputs[TEXT][3]: is 9000 characters long; ...``).

ServerLive, ServerReady and ModelReady follow the health service (ready = SERVING); the auth
table (:mod:`explorank.engine.auth`) leaves them open like grpc.health, and puts the
metadata, config and inference calls under the ``rank`` scope.
"""

from __future__ import annotations

import re
import struct
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import grpc
import numpy as np

import explorank.oip as oip
from explorank import __version__
from explorank.engine.requests import CandidateInput, RankInput
from explorank.errors import InvalidArgumentError, NotFoundError

__all__ = ["MODELS", "OipServicer", "add_oip_service"]

SERVICE_NAME = oip.SERVICE_NAME
#: The methods explorank serves; the service's other methods answer UNIMPLEMENTED.
SERVED_METHODS = (
    "ServerLive",
    "ServerReady",
    "ModelReady",
    "ServerMetadata",
    "ModelMetadata",
    "ModelConfig",
    "ModelInfer",
)
PLATFORM = "explorank"

#: Triton's datatype names and their ModelConfig data types.
_CONFIG_TYPE = {
    "BYTES": "TYPE_STRING",
    "FP32": "TYPE_FP32",
    "FP64": "TYPE_FP64",
    "BOOL": "TYPE_BOOL",
}
_INT_TYPES = {"INT32": "<i4", "INT64": "<i8", "UINT32": "<u4", "UINT64": "<u8"}


@dataclass(frozen=True)
class Tensor:
    """One input or output of a model: name, datatype, shape (-1 = any), optional."""

    name: str
    datatype: str
    shape: tuple[int, ...]
    optional: bool = False
    doc: str = ""


def _models(dim: int) -> dict[str, tuple[tuple[Tensor, ...], tuple[Tensor, ...]]]:
    """model -> (inputs, outputs)."""
    return {
        "encoder": (
            (Tensor("TEXT", "BYTES", (-1,), doc="UTF-8 texts to encode"),),
            (
                Tensor(
                    "EMBEDDING", "FP32", (-1, dim), doc="L2-normalised embeddings, one row per text"
                ),
            ),
        ),
        "rank": (
            (
                Tensor(
                    "CONTEXT_TEXT", "BYTES", (1,), doc="what the user is looking for (may be empty)"
                ),
                Tensor("USER_ID", "BYTES", (1,), True),
                Tensor(
                    "HISTORY_ITEM_IDS",
                    "BYTES",
                    (-1,),
                    True,
                    "catalog items the user interacted with",
                ),
                Tensor(
                    "CANDIDATE_IDS", "BYTES", (-1,), True, "items to rank (default: the catalog)"
                ),
                Tensor(
                    "CANDIDATE_TEXTS",
                    "BYTES",
                    (-1,),
                    True,
                    "text per candidate, empty = catalog text",
                ),
                Tensor(
                    "TOP_K", "INT32", (1,), True, "items to return (default limits.default_top_k)"
                ),
                Tensor("POLICY", "BYTES", (1,), True, "exploration policy (default: the server's)"),
                Tensor("SCORER", "BYTES", (1,), True, "scorer (default: the server's)"),
                Tensor("EVENT_ID", "BYTES", (1,), True, "idempotency key; generated when absent"),
            ),
            (
                Tensor("ITEM_IDS", "BYTES", (-1,)),
                Tensor("SCORES", "FP32", (-1,)),
                Tensor(
                    "PROPENSITIES", "FP64", (-1,), doc="probability of each item at its position"
                ),
                Tensor("EXPLORED", "BOOL", (-1,)),
                Tensor("EVENT_ID", "BYTES", (1,), doc="pass to explorank.v1.Ranker/Reward"),
            ),
        ),
    }


MODELS = tuple(_models(0))

#: Ranker API field names -> the rank model's tensor names, for error messages.
_RANK_FIELDS = (
    (re.compile(r"^candidates\[(\d+)\]\.item_id"), r"inputs[CANDIDATE_IDS][\1]"),
    (re.compile(r"^candidates\[(\d+)\]\.text"), r"inputs[CANDIDATE_TEXTS][\1]"),
    (re.compile(r"^candidates\b"), "inputs[CANDIDATE_IDS]"),
    (re.compile(r"^history_item_ids"), "inputs[HISTORY_ITEM_IDS]"),
    (re.compile(r"^context_text"), "inputs[CONTEXT_TEXT]"),
    (re.compile(r"^user_id"), "inputs[USER_ID]"),
    (re.compile(r"^event_id"), "inputs[EVENT_ID]"),
    (re.compile(r"^top_k"), "inputs[TOP_K]"),
)


def _rank_field(text: str) -> str:
    for pattern, repl in _RANK_FIELDS:
        if pattern.match(text):
            return pattern.sub(repl, text, count=1)
    return text


def _with_rank_fields(exc: Exception) -> Exception:
    """``exc`` with the Ranker API's field names replaced by the rank model's tensors
    (``candidates[3].text`` -> ``inputs[CANDIDATE_TEXTS][3]``)."""
    if isinstance(exc, InvalidArgumentError):
        field = _rank_field(exc.field)
        if field != exc.field:
            return InvalidArgumentError(field, str(exc)[len(exc.field) + 2 :])
    elif isinstance(exc, NotFoundError):
        head, sep, rest = str(exc).partition(": ")
        field = _rank_field(head)
        if sep and field != head:
            return NotFoundError(f"{field}: {rest}")
    return exc


# ------------------------------------------------------------------------- tensors


def _shape(t: Any, where: str) -> tuple[int, ...]:
    shape = tuple(int(d) for d in t.shape)
    if any(d < 0 for d in shape):
        raise InvalidArgumentError(f"{where}.shape", f"{list(shape)} has a negative dimension")
    return shape


def _count(shape: tuple[int, ...]) -> int:
    n = 1
    for d in shape:
        n *= d
    return n


def _split_bytes(raw: bytes, count: int, where: str) -> list[bytes]:
    """Triton's raw BYTES layout: each element is a 4-byte little-endian length + its bytes."""
    out, pos = [], 0
    for i in range(count):
        if pos + 4 > len(raw):
            raise InvalidArgumentError(
                where,
                f"raw contents end after {i} of {count} elements (each is a 4-byte length + bytes)",
            )
        (n,) = struct.unpack_from("<I", raw, pos)
        pos += 4
        if pos + n > len(raw):
            raise InvalidArgumentError(
                where, f"element {i} says {n} bytes; only {len(raw) - pos} remain"
            )
        out.append(raw[pos : pos + n])
        pos += n
    if pos != len(raw):
        raise InvalidArgumentError(
            where, f"{len(raw) - pos} bytes left over after {count} elements"
        )
    return out


def _join_bytes(values: Sequence[bytes]) -> bytes:
    return b"".join(struct.pack("<I", len(v)) + v for v in values)


class _Inputs:
    """A ModelInferRequest's input tensors, checked against a model's declared inputs."""

    def __init__(self, request: Any, model: str, declared: Sequence[Tensor]) -> None:
        self.model = model
        self.declared = {t.name: t for t in declared}
        raw = list(request.raw_input_contents)
        if raw and len(raw) != len(request.inputs):
            raise InvalidArgumentError(
                "raw_input_contents",
                f"has {len(raw)} entries for {len(request.inputs)} inputs; send one per input, "
                "in the order of inputs, or none (typed contents)",
            )
        self.tensors: dict[str, tuple[Any, bytes | None]] = {}
        for i, t in enumerate(request.inputs):
            if t.name not in self.declared:
                raise InvalidArgumentError(
                    f"inputs[{i}].name",
                    f"model {model!r} has no input {t.name[:64]!r}; its inputs: "
                    f"{', '.join(self.declared)}",
                )
            if t.name in self.tensors:
                raise InvalidArgumentError(f"inputs[{t.name}]", "given more than once")
            self.tensors[t.name] = (t, raw[i] if raw else None)
        missing = [n for n, d in self.declared.items() if not d.optional and n not in self.tensors]
        if missing:
            raise InvalidArgumentError(
                f"inputs[{missing[0]}]", f"required by model {model!r} and missing"
            )

    def _get(self, name: str, kinds: Sequence[str]) -> tuple[Any, bytes | None, int] | None:
        found = self.tensors.get(name)
        if found is None:
            return None
        t, raw = found
        where = f"inputs[{name}]"
        if t.datatype not in kinds:
            raise InvalidArgumentError(
                f"{where}.datatype", f"is {t.datatype[:16]!r}; expected {' or '.join(kinds)}"
            )
        return t, raw, _count(_shape(t, where))

    def strings(self, name: str) -> list[str] | None:
        got = self._get(name, ("BYTES",))
        if got is None:
            return None
        t, raw, count = got
        where = f"inputs[{name}]"
        if raw is not None:
            values = _split_bytes(raw, count, where)
        else:
            values = list(t.contents.bytes_contents)
            if len(values) != count:
                raise InvalidArgumentError(
                    where,
                    f"shape {list(t.shape)} holds {count} elements but {len(values)} were sent",
                )
        out = []
        for i, v in enumerate(values):
            try:
                out.append(v.decode("utf-8"))
            except UnicodeDecodeError:
                raise InvalidArgumentError(f"{where}[{i}]", "is not valid UTF-8") from None
        return out

    def string(self, name: str) -> str | None:
        values = self.strings(name)
        if values is None:
            return None
        if len(values) != 1:
            raise InvalidArgumentError(
                f"inputs[{name}]", f"expected one element, got {len(values)}"
            )
        return values[0]

    def integer(self, name: str) -> int | None:
        got = self._get(name, tuple(_INT_TYPES))
        if got is None:
            return None
        t, raw, count = got
        where = f"inputs[{name}]"
        if count != 1:
            raise InvalidArgumentError(where, f"expected one element, got shape {list(t.shape)}")
        if raw is not None:
            dtype = np.dtype(_INT_TYPES[t.datatype])
            if len(raw) != dtype.itemsize:
                raise InvalidArgumentError(
                    where,
                    f"raw contents are {len(raw)} bytes; one {t.datatype} is {dtype.itemsize}",
                )
            return int(np.frombuffer(raw, dtype=dtype)[0])
        c = t.contents
        values = (
            list(c.int_contents)
            or list(c.int64_contents)
            or list(c.uint_contents)
            or list(c.uint64_contents)
        )
        if len(values) != 1:
            raise InvalidArgumentError(where, f"expected one value in contents, got {len(values)}")
        return int(values[0])


def _output(response: Any, name: str, datatype: str, shape: Sequence[int], raw: bytes) -> None:
    out = response.outputs.add()
    out.name = name
    out.datatype = datatype
    out.shape.extend(int(d) for d in shape)
    response.raw_output_contents.append(raw)


# ------------------------------------------------------------------------- servicer


class OipServicer:
    """``inference.GRPCInferenceService`` over an engine. ``ready()`` says whether the server
    reports SERVING (the health service's state); ``call`` is the Ranker servicers' shared
    error handling (``_Servicer._call``)."""

    def __init__(
        self,
        engine: Any,
        ready: Callable[[], bool],
        call: Callable[..., Any],
        deadline: Callable[[grpc.aio.ServicerContext], float],
    ) -> None:
        self.engine = engine
        self.ready = ready
        self._call = call
        self._deadline = deadline

    def _models(self) -> dict[str, tuple[tuple[Tensor, ...], tuple[Tensor, ...]]]:
        return _models(int(self.engine.bundle.embedding_dim))

    def _model(self, name: str, version: str) -> tuple[tuple[Tensor, ...], tuple[Tensor, ...]]:
        models = self._models()
        if name not in models:
            shown = name if len(name) <= 64 else name[:64] + "…"
            raise NotFoundError(
                f"model_name: unknown model {shown!r}; this server has {', '.join(models)}"
            )
        served = self.engine.bundle.model_version
        if version and version != served:
            raise NotFoundError(
                f"model_version: {version[:64]!r} is not served; model {name!r} is at version "
                f"{served!r} (leave model_version empty for it)"
            )
        return models[name]

    # -- health-like calls ---------------------------------------------------------------
    async def ServerLive(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        async def run() -> Any:
            return oip.ServerLiveResponse(live=True)

        return await self._call("ServerLive", context, request, run)

    async def ServerReady(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        async def run() -> Any:
            return oip.ServerReadyResponse(ready=bool(self.ready()))

        return await self._call("ServerReady", context, request, run)

    async def ModelReady(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        async def run() -> Any:
            self._model(request.name, request.version)
            return oip.ModelReadyResponse(ready=bool(self.ready()))

        return await self._call("ModelReady", context, request, run)

    # -- metadata ------------------------------------------------------------------------
    async def ServerMetadata(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        async def run() -> Any:
            return oip.ServerMetadataResponse(
                name="explorank", version=__version__, extensions=["model_configuration"]
            )

        return await self._call("ServerMetadata", context, request, run)

    async def ModelMetadata(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        async def run() -> Any:
            inputs, outputs = self._model(request.name, request.version)
            resp = oip.ModelMetadataResponse(
                name=request.name, versions=[self.engine.bundle.model_version], platform=PLATFORM
            )
            for src, dst in ((inputs, resp.inputs), (outputs, resp.outputs)):
                for t in src:
                    dst.add(name=t.name, datatype=t.datatype, shape=list(t.shape))
            return resp

        return await self._call("ModelMetadata", context, request, run)

    async def ModelConfig(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        async def run() -> Any:
            inputs, outputs = self._model(request.name, request.version)
            bc = self.engine.config.batching
            info = self.engine.info()
            cfg = oip.ModelConfig(name=request.name, platform=PLATFORM, backend=info["backend"])
            # Requests carry no implicit batch dimension (max_batch_size 0); the dynamic
            # batcher groups the texts of concurrent requests on the server side, and its
            # settings are listed as parameters.
            cfg.max_batch_size = 0
            for t in inputs:
                cfg.input.add(
                    name=t.name,
                    data_type=_CONFIG_TYPE.get(t.datatype, "TYPE_INT32"),
                    dims=list(t.shape),
                    optional=t.optional,
                )
            for t in outputs:
                cfg.output.add(name=t.name, data_type=_CONFIG_TYPE[t.datatype], dims=list(t.shape))
            params = {
                "model_version": self.engine.bundle.model_version,
                "execution_provider": str(info["execution_provider"]),
                "precision": str(info["precision"]),
                "batching.max_batch_size": str(bc.max_batch_size),
                "batching.max_queue_delay_ms": f"{bc.max_queue_delay_ms:g}",
                "batching.max_queue_wait_ms": str(bc.max_queue_wait_ms),
                "batching.deadline_share": f"{bc.deadline_share:g}",
            }
            if request.name == "rank":
                params["default_scorer"] = info["default_scorer"]
                params["default_policy"] = info["default_policy"]
                params["scorers"] = ",".join(info["scorers"])
                params["policies"] = ",".join(info["policies"])
            for key, value in params.items():
                cfg.parameters[key].string_value = value
            return oip.ModelConfigResponse(config=cfg)

        return await self._call("ModelConfig", context, request, run)

    # -- inference -----------------------------------------------------------------------
    async def ModelInfer(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        async def run() -> Any:
            inputs, outputs = self._model(request.model_name, request.model_version)
            wanted = self._requested(request, request.model_name, outputs)
            got = _Inputs(request, request.model_name, inputs)
            resp = oip.ModelInferResponse(
                model_name=request.model_name,
                model_version=self.engine.bundle.model_version,
                id=request.id,
            )
            if request.model_name == "encoder":
                await self._encode(got, resp, context, wanted)
            else:
                await self._rank(got, resp, context, wanted)
            return resp

        return await self._call("ModelInfer", context, request, run)

    @staticmethod
    def _requested(request: Any, model: str, outputs: Sequence[Tensor]) -> set[str]:
        names = {t.name for t in outputs}
        if not request.outputs:
            return names
        wanted = set()
        for i, o in enumerate(request.outputs):
            if o.name not in names:
                raise InvalidArgumentError(
                    f"outputs[{i}].name",
                    f"model {model!r} has no output {o.name[:64]!r}; its outputs: "
                    f"{', '.join(t.name for t in outputs)}",
                )
            if "classification" in o.parameters:
                raise InvalidArgumentError(
                    f"outputs[{o.name}].parameters", "classification is not supported"
                )
            wanted.add(o.name)
        return wanted

    async def _encode(
        self, got: _Inputs, resp: Any, context: grpc.aio.ServicerContext, wanted: set[str]
    ) -> None:
        texts = got.strings("TEXT") or []
        vecs, version = await self.engine.encode(
            texts, deadline=self._deadline(context), field="inputs[TEXT]"
        )
        resp.model_version = version
        if "EMBEDDING" in wanted:
            arr = np.ascontiguousarray(vecs, dtype="<f4")
            _output(resp, "EMBEDDING", "FP32", arr.shape, arr.tobytes())

    async def _rank(
        self, got: _Inputs, resp: Any, context: grpc.aio.ServicerContext, wanted: set[str]
    ) -> None:
        cand_ids = got.strings("CANDIDATE_IDS") or []
        cand_texts = got.strings("CANDIDATE_TEXTS")
        if cand_texts is not None and len(cand_texts) != len(cand_ids):
            raise InvalidArgumentError(
                "inputs[CANDIDATE_TEXTS]",
                f"has {len(cand_texts)} elements for {len(cand_ids)} CANDIDATE_IDS; send one "
                "text per candidate (empty for catalog items)",
            )
        top_k = got.integer("TOP_K")
        req = RankInput(
            user_id=got.string("USER_ID") or "",
            context_text=got.string("CONTEXT_TEXT") or "",
            history_item_ids=got.strings("HISTORY_ITEM_IDS") or [],
            candidates=[
                CandidateInput(c, cand_texts[i] if cand_texts else "")
                for i, c in enumerate(cand_ids)
            ],
            top_k=0 if top_k is None else top_k,
            scorer=got.string("SCORER") or "",
            policy=got.string("POLICY") or "",
            event_id=got.string("EVENT_ID") or "",
        )
        if top_k is not None and top_k < 1:
            raise InvalidArgumentError("inputs[TOP_K]", f"must be >= 1, got {top_k}")
        try:
            out = await self.engine.rank(req, deadline=self._deadline(context))
        except (InvalidArgumentError, NotFoundError) as exc:
            raise _with_rank_fields(exc) from exc
        resp.model_version = out.model_version
        k = len(out.items)
        if "ITEM_IDS" in wanted:
            _output(
                resp,
                "ITEM_IDS",
                "BYTES",
                (k,),
                _join_bytes([i.item_id.encode() for i in out.items]),
            )
        if "SCORES" in wanted:
            scores = np.array([i.score for i in out.items], dtype="<f4")
            _output(resp, "SCORES", "FP32", (k,), scores.tobytes())
        if "PROPENSITIES" in wanted:
            props = np.array([i.propensity for i in out.items], dtype="<f8")
            _output(resp, "PROPENSITIES", "FP64", (k,), props.tobytes())
        if "EXPLORED" in wanted:
            explored = np.array([i.explored for i in out.items], dtype=np.bool_)
            _output(resp, "EXPLORED", "BOOL", (k,), explored.tobytes())
        if "EVENT_ID" in wanted:
            _output(resp, "EVENT_ID", "BYTES", (1,), _join_bytes([out.event_id.encode()]))


def add_oip_service(
    servicer: OipServicer, server: grpc.aio.Server, safe: Callable[..., Any]
) -> None:
    """Register the served methods with decoders that never raise (``safe``: the server's
    :func:`~explorank.engine.server._safe`); the others stay UNIMPLEMENTED."""
    handlers = {}
    for method in oip.SERVICE.methods:
        if method.name not in SERVED_METHODS:
            continue
        request_cls = oip.message_class(method.input_type.name)
        response_cls = oip.message_class(method.output_type.name)
        handlers[method.name] = grpc.unary_unary_rpc_method_handler(
            getattr(servicer, method.name),
            request_deserializer=safe(request_cls.FromString),
            response_serializer=response_cls.SerializeToString,
        )
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE_NAME, handlers),))

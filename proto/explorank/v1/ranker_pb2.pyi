from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class ReloadRequest(_message.Message):
    __slots__ = ("bundle",)
    BUNDLE_FIELD_NUMBER: _ClassVar[int]
    bundle: str
    def __init__(self, bundle: _Optional[str] = ...) -> None: ...

class ReloadResponse(_message.Message):
    __slots__ = ("model_version", "previous_version", "catalog_size", "seconds")
    MODEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    PREVIOUS_VERSION_FIELD_NUMBER: _ClassVar[int]
    CATALOG_SIZE_FIELD_NUMBER: _ClassVar[int]
    SECONDS_FIELD_NUMBER: _ClassVar[int]
    model_version: str
    previous_version: str
    catalog_size: int
    seconds: float
    def __init__(self, model_version: _Optional[str] = ..., previous_version: _Optional[str] = ..., catalog_size: _Optional[int] = ..., seconds: _Optional[float] = ...) -> None: ...

class CatalogItem(_message.Message):
    __slots__ = ("item_id", "text")
    ITEM_ID_FIELD_NUMBER: _ClassVar[int]
    TEXT_FIELD_NUMBER: _ClassVar[int]
    item_id: str
    text: str
    def __init__(self, item_id: _Optional[str] = ..., text: _Optional[str] = ...) -> None: ...

class AddItemsRequest(_message.Message):
    __slots__ = ("items",)
    ITEMS_FIELD_NUMBER: _ClassVar[int]
    items: _containers.RepeatedCompositeFieldContainer[CatalogItem]
    def __init__(self, items: _Optional[_Iterable[_Union[CatalogItem, _Mapping]]] = ...) -> None: ...

class RemoveItemsRequest(_message.Message):
    __slots__ = ("item_ids",)
    ITEM_IDS_FIELD_NUMBER: _ClassVar[int]
    item_ids: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, item_ids: _Optional[_Iterable[str]] = ...) -> None: ...

class CatalogChangeResponse(_message.Message):
    __slots__ = ("added", "removed", "catalog_size")
    ADDED_FIELD_NUMBER: _ClassVar[int]
    REMOVED_FIELD_NUMBER: _ClassVar[int]
    CATALOG_SIZE_FIELD_NUMBER: _ClassVar[int]
    added: int
    removed: int
    catalog_size: int
    def __init__(self, added: _Optional[int] = ..., removed: _Optional[int] = ..., catalog_size: _Optional[int] = ...) -> None: ...

class Candidate(_message.Message):
    __slots__ = ("item_id", "text")
    ITEM_ID_FIELD_NUMBER: _ClassVar[int]
    TEXT_FIELD_NUMBER: _ClassVar[int]
    item_id: str
    text: str
    def __init__(self, item_id: _Optional[str] = ..., text: _Optional[str] = ...) -> None: ...

class RankRequest(_message.Message):
    __slots__ = ("event_id", "user_id", "context_text", "history_item_ids", "candidates", "top_k", "scorer", "policy", "include_text")
    EVENT_ID_FIELD_NUMBER: _ClassVar[int]
    USER_ID_FIELD_NUMBER: _ClassVar[int]
    CONTEXT_TEXT_FIELD_NUMBER: _ClassVar[int]
    HISTORY_ITEM_IDS_FIELD_NUMBER: _ClassVar[int]
    CANDIDATES_FIELD_NUMBER: _ClassVar[int]
    TOP_K_FIELD_NUMBER: _ClassVar[int]
    SCORER_FIELD_NUMBER: _ClassVar[int]
    POLICY_FIELD_NUMBER: _ClassVar[int]
    INCLUDE_TEXT_FIELD_NUMBER: _ClassVar[int]
    event_id: str
    user_id: str
    context_text: str
    history_item_ids: _containers.RepeatedScalarFieldContainer[str]
    candidates: _containers.RepeatedCompositeFieldContainer[Candidate]
    top_k: int
    scorer: str
    policy: str
    include_text: bool
    def __init__(self, event_id: _Optional[str] = ..., user_id: _Optional[str] = ..., context_text: _Optional[str] = ..., history_item_ids: _Optional[_Iterable[str]] = ..., candidates: _Optional[_Iterable[_Union[Candidate, _Mapping]]] = ..., top_k: _Optional[int] = ..., scorer: _Optional[str] = ..., policy: _Optional[str] = ..., include_text: bool = ...) -> None: ...

class RankedItem(_message.Message):
    __slots__ = ("item_id", "score", "propensity", "explored", "text")
    ITEM_ID_FIELD_NUMBER: _ClassVar[int]
    SCORE_FIELD_NUMBER: _ClassVar[int]
    PROPENSITY_FIELD_NUMBER: _ClassVar[int]
    EXPLORED_FIELD_NUMBER: _ClassVar[int]
    TEXT_FIELD_NUMBER: _ClassVar[int]
    item_id: str
    score: float
    propensity: float
    explored: bool
    text: str
    def __init__(self, item_id: _Optional[str] = ..., score: _Optional[float] = ..., propensity: _Optional[float] = ..., explored: bool = ..., text: _Optional[str] = ...) -> None: ...

class RankResponse(_message.Message):
    __slots__ = ("event_id", "items", "model_version", "scorer", "policy")
    EVENT_ID_FIELD_NUMBER: _ClassVar[int]
    ITEMS_FIELD_NUMBER: _ClassVar[int]
    MODEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    SCORER_FIELD_NUMBER: _ClassVar[int]
    POLICY_FIELD_NUMBER: _ClassVar[int]
    event_id: str
    items: _containers.RepeatedCompositeFieldContainer[RankedItem]
    model_version: str
    scorer: str
    policy: str
    def __init__(self, event_id: _Optional[str] = ..., items: _Optional[_Iterable[_Union[RankedItem, _Mapping]]] = ..., model_version: _Optional[str] = ..., scorer: _Optional[str] = ..., policy: _Optional[str] = ...) -> None: ...

class RewardRequest(_message.Message):
    __slots__ = ("event_id", "item_id", "value")
    EVENT_ID_FIELD_NUMBER: _ClassVar[int]
    ITEM_ID_FIELD_NUMBER: _ClassVar[int]
    VALUE_FIELD_NUMBER: _ClassVar[int]
    event_id: str
    item_id: str
    value: float
    def __init__(self, event_id: _Optional[str] = ..., item_id: _Optional[str] = ..., value: _Optional[float] = ...) -> None: ...

class RewardResponse(_message.Message):
    __slots__ = ("accepted", "duplicate")
    ACCEPTED_FIELD_NUMBER: _ClassVar[int]
    DUPLICATE_FIELD_NUMBER: _ClassVar[int]
    accepted: bool
    duplicate: bool
    def __init__(self, accepted: bool = ..., duplicate: bool = ...) -> None: ...

class GetInfoRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class BatchingInfo(_message.Message):
    __slots__ = ("max_batch_size", "max_queue_delay_ms", "max_queue_size", "length_buckets", "max_queue_wait_ms", "max_batch_tokens")
    MAX_BATCH_SIZE_FIELD_NUMBER: _ClassVar[int]
    MAX_QUEUE_DELAY_MS_FIELD_NUMBER: _ClassVar[int]
    MAX_QUEUE_SIZE_FIELD_NUMBER: _ClassVar[int]
    LENGTH_BUCKETS_FIELD_NUMBER: _ClassVar[int]
    MAX_QUEUE_WAIT_MS_FIELD_NUMBER: _ClassVar[int]
    MAX_BATCH_TOKENS_FIELD_NUMBER: _ClassVar[int]
    max_batch_size: int
    max_queue_delay_ms: float
    max_queue_size: int
    length_buckets: _containers.RepeatedScalarFieldContainer[int]
    max_queue_wait_ms: float
    max_batch_tokens: int
    def __init__(self, max_batch_size: _Optional[int] = ..., max_queue_delay_ms: _Optional[float] = ..., max_queue_size: _Optional[int] = ..., length_buckets: _Optional[_Iterable[int]] = ..., max_queue_wait_ms: _Optional[float] = ..., max_batch_tokens: _Optional[int] = ...) -> None: ...

class GetInfoResponse(_message.Message):
    __slots__ = ("model_name", "model_version", "embedding_dim", "max_seq_length", "backend", "execution_provider", "precision", "scorers", "policies", "default_scorer", "default_policy", "batching", "catalog_size", "state_store", "version", "precision_reason", "int8_gate", "unavailable_plugins", "worker_index", "worker_count")
    MODEL_NAME_FIELD_NUMBER: _ClassVar[int]
    MODEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    EMBEDDING_DIM_FIELD_NUMBER: _ClassVar[int]
    MAX_SEQ_LENGTH_FIELD_NUMBER: _ClassVar[int]
    BACKEND_FIELD_NUMBER: _ClassVar[int]
    EXECUTION_PROVIDER_FIELD_NUMBER: _ClassVar[int]
    PRECISION_FIELD_NUMBER: _ClassVar[int]
    SCORERS_FIELD_NUMBER: _ClassVar[int]
    POLICIES_FIELD_NUMBER: _ClassVar[int]
    DEFAULT_SCORER_FIELD_NUMBER: _ClassVar[int]
    DEFAULT_POLICY_FIELD_NUMBER: _ClassVar[int]
    BATCHING_FIELD_NUMBER: _ClassVar[int]
    CATALOG_SIZE_FIELD_NUMBER: _ClassVar[int]
    STATE_STORE_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    PRECISION_REASON_FIELD_NUMBER: _ClassVar[int]
    INT8_GATE_FIELD_NUMBER: _ClassVar[int]
    UNAVAILABLE_PLUGINS_FIELD_NUMBER: _ClassVar[int]
    WORKER_INDEX_FIELD_NUMBER: _ClassVar[int]
    WORKER_COUNT_FIELD_NUMBER: _ClassVar[int]
    model_name: str
    model_version: str
    embedding_dim: int
    max_seq_length: int
    backend: str
    execution_provider: str
    precision: str
    scorers: _containers.RepeatedScalarFieldContainer[str]
    policies: _containers.RepeatedScalarFieldContainer[str]
    default_scorer: str
    default_policy: str
    batching: BatchingInfo
    catalog_size: int
    state_store: str
    version: str
    precision_reason: str
    int8_gate: Int8Gate
    unavailable_plugins: _containers.RepeatedCompositeFieldContainer[PluginProblem]
    worker_index: int
    worker_count: int
    def __init__(self, model_name: _Optional[str] = ..., model_version: _Optional[str] = ..., embedding_dim: _Optional[int] = ..., max_seq_length: _Optional[int] = ..., backend: _Optional[str] = ..., execution_provider: _Optional[str] = ..., precision: _Optional[str] = ..., scorers: _Optional[_Iterable[str]] = ..., policies: _Optional[_Iterable[str]] = ..., default_scorer: _Optional[str] = ..., default_policy: _Optional[str] = ..., batching: _Optional[_Union[BatchingInfo, _Mapping]] = ..., catalog_size: _Optional[int] = ..., state_store: _Optional[str] = ..., version: _Optional[str] = ..., precision_reason: _Optional[str] = ..., int8_gate: _Optional[_Union[Int8Gate, _Mapping]] = ..., unavailable_plugins: _Optional[_Iterable[_Union[PluginProblem, _Mapping]]] = ..., worker_index: _Optional[int] = ..., worker_count: _Optional[int] = ...) -> None: ...

class PluginProblem(_message.Message):
    __slots__ = ("kind", "name", "error")
    KIND_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    kind: str
    name: str
    error: str
    def __init__(self, kind: _Optional[str] = ..., name: _Optional[str] = ..., error: _Optional[str] = ...) -> None: ...

class Int8Gate(_message.Message):
    __slots__ = ("passed", "min_cosine", "top10_overlap", "min_cosine_required", "top10_overlap_required", "texts", "cpu_int8_kernels", "int8_config")
    PASSED_FIELD_NUMBER: _ClassVar[int]
    MIN_COSINE_FIELD_NUMBER: _ClassVar[int]
    TOP10_OVERLAP_FIELD_NUMBER: _ClassVar[int]
    MIN_COSINE_REQUIRED_FIELD_NUMBER: _ClassVar[int]
    TOP10_OVERLAP_REQUIRED_FIELD_NUMBER: _ClassVar[int]
    TEXTS_FIELD_NUMBER: _ClassVar[int]
    CPU_INT8_KERNELS_FIELD_NUMBER: _ClassVar[int]
    INT8_CONFIG_FIELD_NUMBER: _ClassVar[int]
    passed: bool
    min_cosine: float
    top10_overlap: float
    min_cosine_required: float
    top10_overlap_required: float
    texts: int
    cpu_int8_kernels: str
    int8_config: str
    def __init__(self, passed: bool = ..., min_cosine: _Optional[float] = ..., top10_overlap: _Optional[float] = ..., min_cosine_required: _Optional[float] = ..., top10_overlap_required: _Optional[float] = ..., texts: _Optional[int] = ..., cpu_int8_kernels: _Optional[str] = ..., int8_config: _Optional[str] = ...) -> None: ...

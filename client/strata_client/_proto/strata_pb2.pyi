from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class PutRequest(_message.Message):
    __slots__ = ("key", "value", "request_id")
    KEY_FIELD_NUMBER: _ClassVar[int]
    VALUE_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    key: bytes
    value: bytes
    request_id: str
    def __init__(self, key: _Optional[bytes] = ..., value: _Optional[bytes] = ..., request_id: _Optional[str] = ...) -> None: ...

class PutResponse(_message.Message):
    __slots__ = ("lsn",)
    LSN_FIELD_NUMBER: _ClassVar[int]
    lsn: int
    def __init__(self, lsn: _Optional[int] = ...) -> None: ...

class GetRequest(_message.Message):
    __slots__ = ("key", "stale_ok")
    KEY_FIELD_NUMBER: _ClassVar[int]
    STALE_OK_FIELD_NUMBER: _ClassVar[int]
    key: bytes
    stale_ok: bool
    def __init__(self, key: _Optional[bytes] = ..., stale_ok: _Optional[bool] = ...) -> None: ...

class GetResponse(_message.Message):
    __slots__ = ("found", "value", "lsn")
    FOUND_FIELD_NUMBER: _ClassVar[int]
    VALUE_FIELD_NUMBER: _ClassVar[int]
    LSN_FIELD_NUMBER: _ClassVar[int]
    found: bool
    value: bytes
    lsn: int
    def __init__(self, found: _Optional[bool] = ..., value: _Optional[bytes] = ..., lsn: _Optional[int] = ...) -> None: ...

class DeleteRequest(_message.Message):
    __slots__ = ("key", "request_id")
    KEY_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    key: bytes
    request_id: str
    def __init__(self, key: _Optional[bytes] = ..., request_id: _Optional[str] = ...) -> None: ...

class DeleteResponse(_message.Message):
    __slots__ = ("lsn",)
    LSN_FIELD_NUMBER: _ClassVar[int]
    lsn: int
    def __init__(self, lsn: _Optional[int] = ...) -> None: ...

class Op(_message.Message):
    __slots__ = ("kind", "key", "value", "request_id")
    class Kind(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
        __slots__ = ()
        KIND_UNSPECIFIED: _ClassVar[Op.Kind]
        PUT: _ClassVar[Op.Kind]
        DELETE: _ClassVar[Op.Kind]
    KIND_UNSPECIFIED: Op.Kind
    PUT: Op.Kind
    DELETE: Op.Kind
    KIND_FIELD_NUMBER: _ClassVar[int]
    KEY_FIELD_NUMBER: _ClassVar[int]
    VALUE_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    kind: Op.Kind
    key: bytes
    value: bytes
    request_id: str
    def __init__(self, kind: _Optional[_Union[Op.Kind, str]] = ..., key: _Optional[bytes] = ..., value: _Optional[bytes] = ..., request_id: _Optional[str] = ...) -> None: ...

class BatchRequest(_message.Message):
    __slots__ = ("ops", "request_id", "id")
    OPS_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    ID_FIELD_NUMBER: _ClassVar[int]
    ops: _containers.RepeatedCompositeFieldContainer[Op]
    request_id: str
    id: int
    def __init__(self, ops: _Optional[_Iterable[_Union[Op, _Mapping]]] = ..., request_id: _Optional[str] = ..., id: _Optional[int] = ...) -> None: ...

class BatchResponse(_message.Message):
    __slots__ = ("lsn", "id", "lsns")
    LSN_FIELD_NUMBER: _ClassVar[int]
    ID_FIELD_NUMBER: _ClassVar[int]
    LSNS_FIELD_NUMBER: _ClassVar[int]
    lsn: int
    id: int
    lsns: _containers.RepeatedScalarFieldContainer[int]
    def __init__(self, lsn: _Optional[int] = ..., id: _Optional[int] = ..., lsns: _Optional[_Iterable[int]] = ...) -> None: ...

class ScanRequest(_message.Message):
    __slots__ = ("start", "end", "limit", "keys_only", "stale_ok")
    START_FIELD_NUMBER: _ClassVar[int]
    END_FIELD_NUMBER: _ClassVar[int]
    LIMIT_FIELD_NUMBER: _ClassVar[int]
    KEYS_ONLY_FIELD_NUMBER: _ClassVar[int]
    STALE_OK_FIELD_NUMBER: _ClassVar[int]
    start: bytes
    end: bytes
    limit: int
    keys_only: bool
    stale_ok: bool
    def __init__(self, start: _Optional[bytes] = ..., end: _Optional[bytes] = ..., limit: _Optional[int] = ..., keys_only: _Optional[bool] = ..., stale_ok: _Optional[bool] = ...) -> None: ...

class KeyValue(_message.Message):
    __slots__ = ("key", "value")
    KEY_FIELD_NUMBER: _ClassVar[int]
    VALUE_FIELD_NUMBER: _ClassVar[int]
    key: bytes
    value: bytes
    def __init__(self, key: _Optional[bytes] = ..., value: _Optional[bytes] = ...) -> None: ...

class ScanResponse(_message.Message):
    __slots__ = ("items", "snapshot_lsn")
    ITEMS_FIELD_NUMBER: _ClassVar[int]
    SNAPSHOT_LSN_FIELD_NUMBER: _ClassVar[int]
    items: _containers.RepeatedCompositeFieldContainer[KeyValue]
    snapshot_lsn: int
    def __init__(self, items: _Optional[_Iterable[_Union[KeyValue, _Mapping]]] = ..., snapshot_lsn: _Optional[int] = ...) -> None: ...

class CompareAndSetRequest(_message.Message):
    __slots__ = ("key", "expected_lsn", "expected_value", "expect_absent", "value", "delete")
    KEY_FIELD_NUMBER: _ClassVar[int]
    EXPECTED_LSN_FIELD_NUMBER: _ClassVar[int]
    EXPECTED_VALUE_FIELD_NUMBER: _ClassVar[int]
    EXPECT_ABSENT_FIELD_NUMBER: _ClassVar[int]
    VALUE_FIELD_NUMBER: _ClassVar[int]
    DELETE_FIELD_NUMBER: _ClassVar[int]
    key: bytes
    expected_lsn: int
    expected_value: bytes
    expect_absent: bool
    value: bytes
    delete: bool
    def __init__(self, key: _Optional[bytes] = ..., expected_lsn: _Optional[int] = ..., expected_value: _Optional[bytes] = ..., expect_absent: _Optional[bool] = ..., value: _Optional[bytes] = ..., delete: _Optional[bool] = ...) -> None: ...

class CompareAndSetResponse(_message.Message):
    __slots__ = ("lsn",)
    LSN_FIELD_NUMBER: _ClassVar[int]
    lsn: int
    def __init__(self, lsn: _Optional[int] = ...) -> None: ...

class ConsumeRequest(_message.Message):
    __slots__ = ("subscribe", "ack", "credit")
    SUBSCRIBE_FIELD_NUMBER: _ClassVar[int]
    ACK_FIELD_NUMBER: _ClassVar[int]
    CREDIT_FIELD_NUMBER: _ClassVar[int]
    subscribe: ConsumeSubscribe
    ack: int
    credit: int
    def __init__(self, subscribe: _Optional[_Union[ConsumeSubscribe, _Mapping]] = ..., ack: _Optional[int] = ..., credit: _Optional[int] = ...) -> None: ...

class ConsumeSubscribe(_message.Message):
    __slots__ = ("tier", "topics", "key_prefix", "from_lsn", "consumer", "manual_ack", "credits", "window_ms")
    TIER_FIELD_NUMBER: _ClassVar[int]
    TOPICS_FIELD_NUMBER: _ClassVar[int]
    KEY_PREFIX_FIELD_NUMBER: _ClassVar[int]
    FROM_LSN_FIELD_NUMBER: _ClassVar[int]
    CONSUMER_FIELD_NUMBER: _ClassVar[int]
    MANUAL_ACK_FIELD_NUMBER: _ClassVar[int]
    CREDITS_FIELD_NUMBER: _ClassVar[int]
    WINDOW_MS_FIELD_NUMBER: _ClassVar[int]
    tier: str
    topics: _containers.RepeatedScalarFieldContainer[str]
    key_prefix: bytes
    from_lsn: int
    consumer: str
    manual_ack: bool
    credits: int
    window_ms: int
    def __init__(self, tier: _Optional[str] = ..., topics: _Optional[_Iterable[str]] = ..., key_prefix: _Optional[bytes] = ..., from_lsn: _Optional[int] = ..., consumer: _Optional[str] = ..., manual_ack: _Optional[bool] = ..., credits: _Optional[int] = ..., window_ms: _Optional[int] = ...) -> None: ...

class ConsumeResponse(_message.Message):
    __slots__ = ("events", "from_lsn", "last_lsn", "ts_ms")
    EVENTS_FIELD_NUMBER: _ClassVar[int]
    FROM_LSN_FIELD_NUMBER: _ClassVar[int]
    LAST_LSN_FIELD_NUMBER: _ClassVar[int]
    TS_MS_FIELD_NUMBER: _ClassVar[int]
    events: _containers.RepeatedCompositeFieldContainer[Event]
    from_lsn: int
    last_lsn: int
    ts_ms: int
    def __init__(self, events: _Optional[_Iterable[_Union[Event, _Mapping]]] = ..., from_lsn: _Optional[int] = ..., last_lsn: _Optional[int] = ..., ts_ms: _Optional[int] = ...) -> None: ...

class PublishRequest(_message.Message):
    __slots__ = ("topic", "key", "payload")
    TOPIC_FIELD_NUMBER: _ClassVar[int]
    KEY_FIELD_NUMBER: _ClassVar[int]
    PAYLOAD_FIELD_NUMBER: _ClassVar[int]
    topic: str
    key: bytes
    payload: bytes
    def __init__(self, topic: _Optional[str] = ..., key: _Optional[bytes] = ..., payload: _Optional[bytes] = ...) -> None: ...

class PublishResponse(_message.Message):
    __slots__ = ("lsn",)
    LSN_FIELD_NUMBER: _ClassVar[int]
    lsn: int
    def __init__(self, lsn: _Optional[int] = ...) -> None: ...

class SubscribeRequest(_message.Message):
    __slots__ = ("topics", "key_prefix", "from_lsn")
    TOPICS_FIELD_NUMBER: _ClassVar[int]
    KEY_PREFIX_FIELD_NUMBER: _ClassVar[int]
    FROM_LSN_FIELD_NUMBER: _ClassVar[int]
    topics: _containers.RepeatedScalarFieldContainer[str]
    key_prefix: bytes
    from_lsn: int
    def __init__(self, topics: _Optional[_Iterable[str]] = ..., key_prefix: _Optional[bytes] = ..., from_lsn: _Optional[int] = ...) -> None: ...

class Event(_message.Message):
    __slots__ = ("lsn", "topic", "key", "value", "deleted", "ts_ms")
    LSN_FIELD_NUMBER: _ClassVar[int]
    TOPIC_FIELD_NUMBER: _ClassVar[int]
    KEY_FIELD_NUMBER: _ClassVar[int]
    VALUE_FIELD_NUMBER: _ClassVar[int]
    DELETED_FIELD_NUMBER: _ClassVar[int]
    TS_MS_FIELD_NUMBER: _ClassVar[int]
    lsn: int
    topic: str
    key: bytes
    value: bytes
    deleted: bool
    ts_ms: int
    def __init__(self, lsn: _Optional[int] = ..., topic: _Optional[str] = ..., key: _Optional[bytes] = ..., value: _Optional[bytes] = ..., deleted: _Optional[bool] = ..., ts_ms: _Optional[int] = ...) -> None: ...

class ConsumersRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ConsumerInfo(_message.Message):
    __slots__ = ("name", "cursor_lsn", "lag_lsns", "lag_bytes", "connected", "connected_since_unix_s", "last_ack_unix_s", "retained", "held_bytes")
    NAME_FIELD_NUMBER: _ClassVar[int]
    CURSOR_LSN_FIELD_NUMBER: _ClassVar[int]
    LAG_LSNS_FIELD_NUMBER: _ClassVar[int]
    LAG_BYTES_FIELD_NUMBER: _ClassVar[int]
    CONNECTED_FIELD_NUMBER: _ClassVar[int]
    CONNECTED_SINCE_UNIX_S_FIELD_NUMBER: _ClassVar[int]
    LAST_ACK_UNIX_S_FIELD_NUMBER: _ClassVar[int]
    RETAINED_FIELD_NUMBER: _ClassVar[int]
    HELD_BYTES_FIELD_NUMBER: _ClassVar[int]
    name: str
    cursor_lsn: int
    lag_lsns: int
    lag_bytes: int
    connected: bool
    connected_since_unix_s: float
    last_ack_unix_s: float
    retained: bool
    held_bytes: int
    def __init__(self, name: _Optional[str] = ..., cursor_lsn: _Optional[int] = ..., lag_lsns: _Optional[int] = ..., lag_bytes: _Optional[int] = ..., connected: _Optional[bool] = ..., connected_since_unix_s: _Optional[float] = ..., last_ack_unix_s: _Optional[float] = ..., retained: _Optional[bool] = ..., held_bytes: _Optional[int] = ...) -> None: ...

class ConsumersResponse(_message.Message):
    __slots__ = ("consumers", "last_lsn", "earliest_lsn", "retention_limit_bytes", "retention_headroom_bytes")
    CONSUMERS_FIELD_NUMBER: _ClassVar[int]
    LAST_LSN_FIELD_NUMBER: _ClassVar[int]
    EARLIEST_LSN_FIELD_NUMBER: _ClassVar[int]
    RETENTION_LIMIT_BYTES_FIELD_NUMBER: _ClassVar[int]
    RETENTION_HEADROOM_BYTES_FIELD_NUMBER: _ClassVar[int]
    consumers: _containers.RepeatedCompositeFieldContainer[ConsumerInfo]
    last_lsn: int
    earliest_lsn: int
    retention_limit_bytes: int
    retention_headroom_bytes: int
    def __init__(self, consumers: _Optional[_Iterable[_Union[ConsumerInfo, _Mapping]]] = ..., last_lsn: _Optional[int] = ..., earliest_lsn: _Optional[int] = ..., retention_limit_bytes: _Optional[int] = ..., retention_headroom_bytes: _Optional[int] = ...) -> None: ...

class DeleteConsumerRequest(_message.Message):
    __slots__ = ("name",)
    NAME_FIELD_NUMBER: _ClassVar[int]
    name: str
    def __init__(self, name: _Optional[str] = ...) -> None: ...

class DeleteConsumerResponse(_message.Message):
    __slots__ = ("was_connected", "cursor_lsn")
    WAS_CONNECTED_FIELD_NUMBER: _ClassVar[int]
    CURSOR_LSN_FIELD_NUMBER: _ClassVar[int]
    was_connected: bool
    cursor_lsn: int
    def __init__(self, was_connected: _Optional[bool] = ..., cursor_lsn: _Optional[int] = ...) -> None: ...

class TransferLeaderRequest(_message.Message):
    __slots__ = ("to",)
    TO_FIELD_NUMBER: _ClassVar[int]
    to: str
    def __init__(self, to: _Optional[str] = ...) -> None: ...

class TransferLeaderResponse(_message.Message):
    __slots__ = ("master", "term", "seconds")
    MASTER_FIELD_NUMBER: _ClassVar[int]
    TERM_FIELD_NUMBER: _ClassVar[int]
    SECONDS_FIELD_NUMBER: _ClassVar[int]
    master: str
    term: int
    seconds: float
    def __init__(self, master: _Optional[str] = ..., term: _Optional[int] = ..., seconds: _Optional[float] = ...) -> None: ...

class StatusRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class Level(_message.Message):
    __slots__ = ("level", "files", "bytes")
    LEVEL_FIELD_NUMBER: _ClassVar[int]
    FILES_FIELD_NUMBER: _ClassVar[int]
    BYTES_FIELD_NUMBER: _ClassVar[int]
    level: int
    files: int
    bytes: int
    def __init__(self, level: _Optional[int] = ..., files: _Optional[int] = ..., bytes: _Optional[int] = ...) -> None: ...

class Peer(_message.Message):
    __slots__ = ("node", "address", "state", "acked_lsn", "lag_lsns", "lag_ms", "last_heartbeat_ago_s")
    NODE_FIELD_NUMBER: _ClassVar[int]
    ADDRESS_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    ACKED_LSN_FIELD_NUMBER: _ClassVar[int]
    LAG_LSNS_FIELD_NUMBER: _ClassVar[int]
    LAG_MS_FIELD_NUMBER: _ClassVar[int]
    LAST_HEARTBEAT_AGO_S_FIELD_NUMBER: _ClassVar[int]
    node: str
    address: str
    state: str
    acked_lsn: int
    lag_lsns: int
    lag_ms: float
    last_heartbeat_ago_s: float
    def __init__(self, node: _Optional[str] = ..., address: _Optional[str] = ..., state: _Optional[str] = ..., acked_lsn: _Optional[int] = ..., lag_lsns: _Optional[int] = ..., lag_ms: _Optional[float] = ..., last_heartbeat_ago_s: _Optional[float] = ...) -> None: ...

class StatusResponse(_message.Message):
    __slots__ = ("node", "role", "term", "last_lsn", "flushed_lsn", "levels", "sst_bytes", "wal_bytes", "peers", "version", "uptime_seconds", "durability", "writable", "write_error", "paused", "master", "durable_lsn", "applied_lsn", "commit_lsn", "replication", "lease", "wal_preallocated_bytes")
    NODE_FIELD_NUMBER: _ClassVar[int]
    ROLE_FIELD_NUMBER: _ClassVar[int]
    TERM_FIELD_NUMBER: _ClassVar[int]
    LAST_LSN_FIELD_NUMBER: _ClassVar[int]
    FLUSHED_LSN_FIELD_NUMBER: _ClassVar[int]
    LEVELS_FIELD_NUMBER: _ClassVar[int]
    SST_BYTES_FIELD_NUMBER: _ClassVar[int]
    WAL_BYTES_FIELD_NUMBER: _ClassVar[int]
    PEERS_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    UPTIME_SECONDS_FIELD_NUMBER: _ClassVar[int]
    DURABILITY_FIELD_NUMBER: _ClassVar[int]
    WRITABLE_FIELD_NUMBER: _ClassVar[int]
    WRITE_ERROR_FIELD_NUMBER: _ClassVar[int]
    PAUSED_FIELD_NUMBER: _ClassVar[int]
    MASTER_FIELD_NUMBER: _ClassVar[int]
    DURABLE_LSN_FIELD_NUMBER: _ClassVar[int]
    APPLIED_LSN_FIELD_NUMBER: _ClassVar[int]
    COMMIT_LSN_FIELD_NUMBER: _ClassVar[int]
    REPLICATION_FIELD_NUMBER: _ClassVar[int]
    LEASE_FIELD_NUMBER: _ClassVar[int]
    WAL_PREALLOCATED_BYTES_FIELD_NUMBER: _ClassVar[int]
    node: str
    role: str
    term: int
    last_lsn: int
    flushed_lsn: int
    levels: _containers.RepeatedCompositeFieldContainer[Level]
    sst_bytes: int
    wal_bytes: int
    peers: _containers.RepeatedCompositeFieldContainer[Peer]
    version: str
    uptime_seconds: float
    durability: str
    writable: bool
    write_error: str
    paused: _containers.RepeatedScalarFieldContainer[str]
    master: str
    durable_lsn: int
    applied_lsn: int
    commit_lsn: int
    replication: str
    lease: bool
    wal_preallocated_bytes: int
    def __init__(self, node: _Optional[str] = ..., role: _Optional[str] = ..., term: _Optional[int] = ..., last_lsn: _Optional[int] = ..., flushed_lsn: _Optional[int] = ..., levels: _Optional[_Iterable[_Union[Level, _Mapping]]] = ..., sst_bytes: _Optional[int] = ..., wal_bytes: _Optional[int] = ..., peers: _Optional[_Iterable[_Union[Peer, _Mapping]]] = ..., version: _Optional[str] = ..., uptime_seconds: _Optional[float] = ..., durability: _Optional[str] = ..., writable: _Optional[bool] = ..., write_error: _Optional[str] = ..., paused: _Optional[_Iterable[str]] = ..., master: _Optional[str] = ..., durable_lsn: _Optional[int] = ..., applied_lsn: _Optional[int] = ..., commit_lsn: _Optional[int] = ..., replication: _Optional[str] = ..., lease: _Optional[bool] = ..., wal_preallocated_bytes: _Optional[int] = ...) -> None: ...

class CheckpointRequest(_message.Message):
    __slots__ = ("path",)
    PATH_FIELD_NUMBER: _ClassVar[int]
    path: str
    def __init__(self, path: _Optional[str] = ...) -> None: ...

class CheckpointResponse(_message.Message):
    __slots__ = ("path", "lsn")
    PATH_FIELD_NUMBER: _ClassVar[int]
    LSN_FIELD_NUMBER: _ClassVar[int]
    path: str
    lsn: int
    def __init__(self, path: _Optional[str] = ..., lsn: _Optional[int] = ...) -> None: ...

class CheckpointsRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class CheckpointInfo(_message.Message):
    __slots__ = ("name", "path", "bytes", "files", "created_unix_s")
    NAME_FIELD_NUMBER: _ClassVar[int]
    PATH_FIELD_NUMBER: _ClassVar[int]
    BYTES_FIELD_NUMBER: _ClassVar[int]
    FILES_FIELD_NUMBER: _ClassVar[int]
    CREATED_UNIX_S_FIELD_NUMBER: _ClassVar[int]
    name: str
    path: str
    bytes: int
    files: int
    created_unix_s: float
    def __init__(self, name: _Optional[str] = ..., path: _Optional[str] = ..., bytes: _Optional[int] = ..., files: _Optional[int] = ..., created_unix_s: _Optional[float] = ...) -> None: ...

class CheckpointsResponse(_message.Message):
    __slots__ = ("backup_dir", "checkpoints")
    BACKUP_DIR_FIELD_NUMBER: _ClassVar[int]
    CHECKPOINTS_FIELD_NUMBER: _ClassVar[int]
    backup_dir: str
    checkpoints: _containers.RepeatedCompositeFieldContainer[CheckpointInfo]
    def __init__(self, backup_dir: _Optional[str] = ..., checkpoints: _Optional[_Iterable[_Union[CheckpointInfo, _Mapping]]] = ...) -> None: ...

class CompactRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class CompactResponse(_message.Message):
    __slots__ = ("seconds",)
    SECONDS_FIELD_NUMBER: _ClassVar[int]
    seconds: float
    def __init__(self, seconds: _Optional[float] = ...) -> None: ...

class TermRun(_message.Message):
    __slots__ = ("term", "first_lsn")
    TERM_FIELD_NUMBER: _ClassVar[int]
    FIRST_LSN_FIELD_NUMBER: _ClassVar[int]
    term: int
    first_lsn: int
    def __init__(self, term: _Optional[int] = ..., first_lsn: _Optional[int] = ...) -> None: ...

class Hello(_message.Message):
    __slots__ = ("node", "term", "last_lsn", "flushed_lsn", "terms", "wal_version")
    NODE_FIELD_NUMBER: _ClassVar[int]
    TERM_FIELD_NUMBER: _ClassVar[int]
    LAST_LSN_FIELD_NUMBER: _ClassVar[int]
    FLUSHED_LSN_FIELD_NUMBER: _ClassVar[int]
    TERMS_FIELD_NUMBER: _ClassVar[int]
    WAL_VERSION_FIELD_NUMBER: _ClassVar[int]
    node: str
    term: int
    last_lsn: int
    flushed_lsn: int
    terms: _containers.RepeatedCompositeFieldContainer[TermRun]
    wal_version: int
    def __init__(self, node: _Optional[str] = ..., term: _Optional[int] = ..., last_lsn: _Optional[int] = ..., flushed_lsn: _Optional[int] = ..., terms: _Optional[_Iterable[_Union[TermRun, _Mapping]]] = ..., wal_version: _Optional[int] = ...) -> None: ...

class Ack(_message.Message):
    __slots__ = ("term", "ok", "durable_lsn", "sent", "error")
    TERM_FIELD_NUMBER: _ClassVar[int]
    OK_FIELD_NUMBER: _ClassVar[int]
    DURABLE_LSN_FIELD_NUMBER: _ClassVar[int]
    SENT_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    term: int
    ok: bool
    durable_lsn: int
    sent: float
    error: str
    def __init__(self, term: _Optional[int] = ..., ok: _Optional[bool] = ..., durable_lsn: _Optional[int] = ..., sent: _Optional[float] = ..., error: _Optional[str] = ...) -> None: ...

class FromReplica(_message.Message):
    __slots__ = ("hello", "ack")
    HELLO_FIELD_NUMBER: _ClassVar[int]
    ACK_FIELD_NUMBER: _ClassVar[int]
    hello: Hello
    ack: Ack
    def __init__(self, hello: _Optional[_Union[Hello, _Mapping]] = ..., ack: _Optional[_Union[Ack, _Mapping]] = ...) -> None: ...

class Append(_message.Message):
    __slots__ = ("term", "master", "address", "sent", "commit_lsn", "frames")
    TERM_FIELD_NUMBER: _ClassVar[int]
    MASTER_FIELD_NUMBER: _ClassVar[int]
    ADDRESS_FIELD_NUMBER: _ClassVar[int]
    SENT_FIELD_NUMBER: _ClassVar[int]
    COMMIT_LSN_FIELD_NUMBER: _ClassVar[int]
    FRAMES_FIELD_NUMBER: _ClassVar[int]
    term: int
    master: str
    address: str
    sent: float
    commit_lsn: int
    frames: bytes
    def __init__(self, term: _Optional[int] = ..., master: _Optional[str] = ..., address: _Optional[str] = ..., sent: _Optional[float] = ..., commit_lsn: _Optional[int] = ..., frames: _Optional[bytes] = ...) -> None: ...

class Start(_message.Message):
    __slots__ = ("term", "master", "address", "from_lsn", "truncate_after", "truncate", "resync", "reason", "group_acks")
    TERM_FIELD_NUMBER: _ClassVar[int]
    MASTER_FIELD_NUMBER: _ClassVar[int]
    ADDRESS_FIELD_NUMBER: _ClassVar[int]
    FROM_LSN_FIELD_NUMBER: _ClassVar[int]
    TRUNCATE_AFTER_FIELD_NUMBER: _ClassVar[int]
    TRUNCATE_FIELD_NUMBER: _ClassVar[int]
    RESYNC_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    GROUP_ACKS_FIELD_NUMBER: _ClassVar[int]
    term: int
    master: str
    address: str
    from_lsn: int
    truncate_after: int
    truncate: bool
    resync: bool
    reason: str
    group_acks: bool
    def __init__(self, term: _Optional[int] = ..., master: _Optional[str] = ..., address: _Optional[str] = ..., from_lsn: _Optional[int] = ..., truncate_after: _Optional[int] = ..., truncate: _Optional[bool] = ..., resync: _Optional[bool] = ..., reason: _Optional[str] = ..., group_acks: _Optional[bool] = ...) -> None: ...

class ToReplica(_message.Message):
    __slots__ = ("start", "append")
    START_FIELD_NUMBER: _ClassVar[int]
    APPEND_FIELD_NUMBER: _ClassVar[int]
    start: Start
    append: Append
    def __init__(self, start: _Optional[_Union[Start, _Mapping]] = ..., append: _Optional[_Union[Append, _Mapping]] = ...) -> None: ...

class VoteRequest(_message.Message):
    __slots__ = ("term", "candidate", "last_term", "last_lsn", "pre_vote", "transfer")
    TERM_FIELD_NUMBER: _ClassVar[int]
    CANDIDATE_FIELD_NUMBER: _ClassVar[int]
    LAST_TERM_FIELD_NUMBER: _ClassVar[int]
    LAST_LSN_FIELD_NUMBER: _ClassVar[int]
    PRE_VOTE_FIELD_NUMBER: _ClassVar[int]
    TRANSFER_FIELD_NUMBER: _ClassVar[int]
    term: int
    candidate: str
    last_term: int
    last_lsn: int
    pre_vote: bool
    transfer: bool
    def __init__(self, term: _Optional[int] = ..., candidate: _Optional[str] = ..., last_term: _Optional[int] = ..., last_lsn: _Optional[int] = ..., pre_vote: _Optional[bool] = ..., transfer: _Optional[bool] = ...) -> None: ...

class TimeoutNowRequest(_message.Message):
    __slots__ = ("term", "master")
    TERM_FIELD_NUMBER: _ClassVar[int]
    MASTER_FIELD_NUMBER: _ClassVar[int]
    term: int
    master: str
    def __init__(self, term: _Optional[int] = ..., master: _Optional[str] = ...) -> None: ...

class TimeoutNowReply(_message.Message):
    __slots__ = ("term", "started")
    TERM_FIELD_NUMBER: _ClassVar[int]
    STARTED_FIELD_NUMBER: _ClassVar[int]
    term: int
    started: bool
    def __init__(self, term: _Optional[int] = ..., started: _Optional[bool] = ...) -> None: ...

class VoteReply(_message.Message):
    __slots__ = ("term", "voter", "granted", "pre_vote")
    TERM_FIELD_NUMBER: _ClassVar[int]
    VOTER_FIELD_NUMBER: _ClassVar[int]
    GRANTED_FIELD_NUMBER: _ClassVar[int]
    PRE_VOTE_FIELD_NUMBER: _ClassVar[int]
    term: int
    voter: str
    granted: bool
    pre_vote: bool
    def __init__(self, term: _Optional[int] = ..., voter: _Optional[str] = ..., granted: _Optional[bool] = ..., pre_vote: _Optional[bool] = ...) -> None: ...

class FetchCheckpointRequest(_message.Message):
    __slots__ = ("node", "checkpoint_id", "file", "offset")
    NODE_FIELD_NUMBER: _ClassVar[int]
    CHECKPOINT_ID_FIELD_NUMBER: _ClassVar[int]
    FILE_FIELD_NUMBER: _ClassVar[int]
    OFFSET_FIELD_NUMBER: _ClassVar[int]
    node: str
    checkpoint_id: int
    file: str
    offset: int
    def __init__(self, node: _Optional[str] = ..., checkpoint_id: _Optional[int] = ..., file: _Optional[str] = ..., offset: _Optional[int] = ...) -> None: ...

class CheckpointChunk(_message.Message):
    __slots__ = ("checkpoint_id", "lsn", "file", "offset", "data", "crc32c", "file_done", "done", "files", "term")
    CHECKPOINT_ID_FIELD_NUMBER: _ClassVar[int]
    LSN_FIELD_NUMBER: _ClassVar[int]
    FILE_FIELD_NUMBER: _ClassVar[int]
    OFFSET_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    CRC32C_FIELD_NUMBER: _ClassVar[int]
    FILE_DONE_FIELD_NUMBER: _ClassVar[int]
    DONE_FIELD_NUMBER: _ClassVar[int]
    FILES_FIELD_NUMBER: _ClassVar[int]
    TERM_FIELD_NUMBER: _ClassVar[int]
    checkpoint_id: int
    lsn: int
    file: str
    offset: int
    data: bytes
    crc32c: int
    file_done: bool
    done: bool
    files: _containers.RepeatedScalarFieldContainer[str]
    term: int
    def __init__(self, checkpoint_id: _Optional[int] = ..., lsn: _Optional[int] = ..., file: _Optional[str] = ..., offset: _Optional[int] = ..., data: _Optional[bytes] = ..., crc32c: _Optional[int] = ..., file_done: _Optional[bool] = ..., done: _Optional[bool] = ..., files: _Optional[_Iterable[str]] = ..., term: _Optional[int] = ...) -> None: ...

from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class EnrollRequest(_message.Message):
    __slots__ = ("token", "csr_der", "agent")
    TOKEN_FIELD_NUMBER: _ClassVar[int]
    CSR_DER_FIELD_NUMBER: _ClassVar[int]
    AGENT_FIELD_NUMBER: _ClassVar[int]
    token: str
    csr_der: bytes
    agent: AgentInfo
    def __init__(self, token: _Optional[str] = ..., csr_der: _Optional[bytes] = ..., agent: _Optional[_Union[AgentInfo, _Mapping]] = ...) -> None: ...

class EnrollResponse(_message.Message):
    __slots__ = ("agent_id", "certificate_der", "ca_certificate_der", "not_after_unix", "bundle_signing_key")
    AGENT_ID_FIELD_NUMBER: _ClassVar[int]
    CERTIFICATE_DER_FIELD_NUMBER: _ClassVar[int]
    CA_CERTIFICATE_DER_FIELD_NUMBER: _ClassVar[int]
    NOT_AFTER_UNIX_FIELD_NUMBER: _ClassVar[int]
    BUNDLE_SIGNING_KEY_FIELD_NUMBER: _ClassVar[int]
    agent_id: str
    certificate_der: bytes
    ca_certificate_der: bytes
    not_after_unix: int
    bundle_signing_key: bytes
    def __init__(self, agent_id: _Optional[str] = ..., certificate_der: _Optional[bytes] = ..., ca_certificate_der: _Optional[bytes] = ..., not_after_unix: _Optional[int] = ..., bundle_signing_key: _Optional[bytes] = ...) -> None: ...

class AgentInfo(_message.Message):
    __slots__ = ("hostname", "os", "os_version", "agent_version", "mode")
    HOSTNAME_FIELD_NUMBER: _ClassVar[int]
    OS_FIELD_NUMBER: _ClassVar[int]
    OS_VERSION_FIELD_NUMBER: _ClassVar[int]
    AGENT_VERSION_FIELD_NUMBER: _ClassVar[int]
    MODE_FIELD_NUMBER: _ClassVar[int]
    hostname: str
    os: str
    os_version: str
    agent_version: str
    mode: str
    def __init__(self, hostname: _Optional[str] = ..., os: _Optional[str] = ..., os_version: _Optional[str] = ..., agent_version: _Optional[str] = ..., mode: _Optional[str] = ...) -> None: ...

class SubmitRequest(_message.Message):
    __slots__ = ("batch_id", "events", "heartbeat")
    BATCH_ID_FIELD_NUMBER: _ClassVar[int]
    EVENTS_FIELD_NUMBER: _ClassVar[int]
    HEARTBEAT_FIELD_NUMBER: _ClassVar[int]
    batch_id: str
    events: _containers.RepeatedCompositeFieldContainer[Event]
    heartbeat: Heartbeat
    def __init__(self, batch_id: _Optional[str] = ..., events: _Optional[_Iterable[_Union[Event, _Mapping]]] = ..., heartbeat: _Optional[_Union[Heartbeat, _Mapping]] = ...) -> None: ...

class Event(_message.Message):
    __slots__ = ("event_id", "session", "usage")
    EVENT_ID_FIELD_NUMBER: _ClassVar[int]
    SESSION_FIELD_NUMBER: _ClassVar[int]
    USAGE_FIELD_NUMBER: _ClassVar[int]
    event_id: str
    session: SessionEvent
    usage: UsageEvent
    def __init__(self, event_id: _Optional[str] = ..., session: _Optional[_Union[SessionEvent, _Mapping]] = ..., usage: _Optional[_Union[UsageEvent, _Mapping]] = ...) -> None: ...

class SessionEvent(_message.Message):
    __slots__ = ("id", "version", "user", "device", "tool", "service_id", "category", "process_name", "process_exe", "parent_name", "first_seen", "last_seen", "connections", "hostnames", "seen_as", "bytes_up", "bytes_down", "closed")
    ID_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    USER_FIELD_NUMBER: _ClassVar[int]
    DEVICE_FIELD_NUMBER: _ClassVar[int]
    TOOL_FIELD_NUMBER: _ClassVar[int]
    SERVICE_ID_FIELD_NUMBER: _ClassVar[int]
    CATEGORY_FIELD_NUMBER: _ClassVar[int]
    PROCESS_NAME_FIELD_NUMBER: _ClassVar[int]
    PROCESS_EXE_FIELD_NUMBER: _ClassVar[int]
    PARENT_NAME_FIELD_NUMBER: _ClassVar[int]
    FIRST_SEEN_FIELD_NUMBER: _ClassVar[int]
    LAST_SEEN_FIELD_NUMBER: _ClassVar[int]
    CONNECTIONS_FIELD_NUMBER: _ClassVar[int]
    HOSTNAMES_FIELD_NUMBER: _ClassVar[int]
    SEEN_AS_FIELD_NUMBER: _ClassVar[int]
    BYTES_UP_FIELD_NUMBER: _ClassVar[int]
    BYTES_DOWN_FIELD_NUMBER: _ClassVar[int]
    CLOSED_FIELD_NUMBER: _ClassVar[int]
    id: str
    version: int
    user: str
    device: str
    tool: str
    service_id: str
    category: str
    process_name: str
    process_exe: str
    parent_name: str
    first_seen: float
    last_seen: float
    connections: int
    hostnames: _containers.RepeatedScalarFieldContainer[str]
    seen_as: _containers.RepeatedScalarFieldContainer[str]
    bytes_up: int
    bytes_down: int
    closed: bool
    def __init__(self, id: _Optional[str] = ..., version: _Optional[int] = ..., user: _Optional[str] = ..., device: _Optional[str] = ..., tool: _Optional[str] = ..., service_id: _Optional[str] = ..., category: _Optional[str] = ..., process_name: _Optional[str] = ..., process_exe: _Optional[str] = ..., parent_name: _Optional[str] = ..., first_seen: _Optional[float] = ..., last_seen: _Optional[float] = ..., connections: _Optional[int] = ..., hostnames: _Optional[_Iterable[str]] = ..., seen_as: _Optional[_Iterable[str]] = ..., bytes_up: _Optional[int] = ..., bytes_down: _Optional[int] = ..., closed: _Optional[bool] = ...) -> None: ...

class UsageEvent(_message.Message):
    __slots__ = ("provider", "model", "input_tokens", "output_tokens", "cache_read_tokens", "cache_write_tokens", "reasoning_tokens", "estimated", "cost_usd", "labels", "data_class", "tags", "key_fingerprint", "key_hint", "id", "user", "device", "process_name", "process_exe", "service_id", "host", "started", "ended", "operation", "endpoint", "streaming", "status_code", "deployment", "labels_truncated", "uploads", "bytes_up", "bytes_down", "error")
    class LabelsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: int
        def __init__(self, key: _Optional[str] = ..., value: _Optional[int] = ...) -> None: ...
    class TagsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    PROVIDER_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    INPUT_TOKENS_FIELD_NUMBER: _ClassVar[int]
    OUTPUT_TOKENS_FIELD_NUMBER: _ClassVar[int]
    CACHE_READ_TOKENS_FIELD_NUMBER: _ClassVar[int]
    CACHE_WRITE_TOKENS_FIELD_NUMBER: _ClassVar[int]
    REASONING_TOKENS_FIELD_NUMBER: _ClassVar[int]
    ESTIMATED_FIELD_NUMBER: _ClassVar[int]
    COST_USD_FIELD_NUMBER: _ClassVar[int]
    LABELS_FIELD_NUMBER: _ClassVar[int]
    DATA_CLASS_FIELD_NUMBER: _ClassVar[int]
    TAGS_FIELD_NUMBER: _ClassVar[int]
    KEY_FINGERPRINT_FIELD_NUMBER: _ClassVar[int]
    KEY_HINT_FIELD_NUMBER: _ClassVar[int]
    ID_FIELD_NUMBER: _ClassVar[int]
    USER_FIELD_NUMBER: _ClassVar[int]
    DEVICE_FIELD_NUMBER: _ClassVar[int]
    PROCESS_NAME_FIELD_NUMBER: _ClassVar[int]
    PROCESS_EXE_FIELD_NUMBER: _ClassVar[int]
    SERVICE_ID_FIELD_NUMBER: _ClassVar[int]
    HOST_FIELD_NUMBER: _ClassVar[int]
    STARTED_FIELD_NUMBER: _ClassVar[int]
    ENDED_FIELD_NUMBER: _ClassVar[int]
    OPERATION_FIELD_NUMBER: _ClassVar[int]
    ENDPOINT_FIELD_NUMBER: _ClassVar[int]
    STREAMING_FIELD_NUMBER: _ClassVar[int]
    STATUS_CODE_FIELD_NUMBER: _ClassVar[int]
    DEPLOYMENT_FIELD_NUMBER: _ClassVar[int]
    LABELS_TRUNCATED_FIELD_NUMBER: _ClassVar[int]
    UPLOADS_FIELD_NUMBER: _ClassVar[int]
    BYTES_UP_FIELD_NUMBER: _ClassVar[int]
    BYTES_DOWN_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    provider: str
    model: str
    input_tokens: int
    output_tokens: int
    cache_read_tokens: int
    cache_write_tokens: int
    reasoning_tokens: int
    estimated: bool
    cost_usd: float
    labels: _containers.ScalarMap[str, int]
    data_class: str
    tags: _containers.ScalarMap[str, str]
    key_fingerprint: str
    key_hint: str
    id: str
    user: str
    device: str
    process_name: str
    process_exe: str
    service_id: str
    host: str
    started: float
    ended: float
    operation: str
    endpoint: str
    streaming: bool
    status_code: int
    deployment: str
    labels_truncated: bool
    uploads: _containers.RepeatedCompositeFieldContainer[Upload]
    bytes_up: int
    bytes_down: int
    error: str
    def __init__(self, provider: _Optional[str] = ..., model: _Optional[str] = ..., input_tokens: _Optional[int] = ..., output_tokens: _Optional[int] = ..., cache_read_tokens: _Optional[int] = ..., cache_write_tokens: _Optional[int] = ..., reasoning_tokens: _Optional[int] = ..., estimated: _Optional[bool] = ..., cost_usd: _Optional[float] = ..., labels: _Optional[_Mapping[str, int]] = ..., data_class: _Optional[str] = ..., tags: _Optional[_Mapping[str, str]] = ..., key_fingerprint: _Optional[str] = ..., key_hint: _Optional[str] = ..., id: _Optional[str] = ..., user: _Optional[str] = ..., device: _Optional[str] = ..., process_name: _Optional[str] = ..., process_exe: _Optional[str] = ..., service_id: _Optional[str] = ..., host: _Optional[str] = ..., started: _Optional[float] = ..., ended: _Optional[float] = ..., operation: _Optional[str] = ..., endpoint: _Optional[str] = ..., streaming: _Optional[bool] = ..., status_code: _Optional[int] = ..., deployment: _Optional[str] = ..., labels_truncated: _Optional[bool] = ..., uploads: _Optional[_Iterable[_Union[Upload, _Mapping]]] = ..., bytes_up: _Optional[int] = ..., bytes_down: _Optional[int] = ..., error: _Optional[str] = ...) -> None: ...

class Upload(_message.Message):
    __slots__ = ("file_kind", "extension_class", "count", "bytes")
    FILE_KIND_FIELD_NUMBER: _ClassVar[int]
    EXTENSION_CLASS_FIELD_NUMBER: _ClassVar[int]
    COUNT_FIELD_NUMBER: _ClassVar[int]
    BYTES_FIELD_NUMBER: _ClassVar[int]
    file_kind: str
    extension_class: str
    count: int
    bytes: int
    def __init__(self, file_kind: _Optional[str] = ..., extension_class: _Optional[str] = ..., count: _Optional[int] = ..., bytes: _Optional[int] = ...) -> None: ...

class Heartbeat(_message.Message):
    __slots__ = ("agent", "sent_at", "counters", "health", "spool_rows", "spool_dropped")
    class CountersEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: int
        def __init__(self, key: _Optional[str] = ..., value: _Optional[int] = ...) -> None: ...
    AGENT_FIELD_NUMBER: _ClassVar[int]
    SENT_AT_FIELD_NUMBER: _ClassVar[int]
    COUNTERS_FIELD_NUMBER: _ClassVar[int]
    HEALTH_FIELD_NUMBER: _ClassVar[int]
    SPOOL_ROWS_FIELD_NUMBER: _ClassVar[int]
    SPOOL_DROPPED_FIELD_NUMBER: _ClassVar[int]
    agent: AgentInfo
    sent_at: float
    counters: _containers.ScalarMap[str, int]
    health: str
    spool_rows: int
    spool_dropped: int
    def __init__(self, agent: _Optional[_Union[AgentInfo, _Mapping]] = ..., sent_at: _Optional[float] = ..., counters: _Optional[_Mapping[str, int]] = ..., health: _Optional[str] = ..., spool_rows: _Optional[int] = ..., spool_dropped: _Optional[int] = ...) -> None: ...

class SubmitResponse(_message.Message):
    __slots__ = ("batch_id", "accepted", "duplicates")
    BATCH_ID_FIELD_NUMBER: _ClassVar[int]
    ACCEPTED_FIELD_NUMBER: _ClassVar[int]
    DUPLICATES_FIELD_NUMBER: _ClassVar[int]
    batch_id: str
    accepted: int
    duplicates: int
    def __init__(self, batch_id: _Optional[str] = ..., accepted: _Optional[int] = ..., duplicates: _Optional[int] = ...) -> None: ...

class RenewRequest(_message.Message):
    __slots__ = ("csr_der",)
    CSR_DER_FIELD_NUMBER: _ClassVar[int]
    csr_der: bytes
    def __init__(self, csr_der: _Optional[bytes] = ...) -> None: ...

class RenewResponse(_message.Message):
    __slots__ = ("certificate_der", "not_after_unix")
    CERTIFICATE_DER_FIELD_NUMBER: _ClassVar[int]
    NOT_AFTER_UNIX_FIELD_NUMBER: _ClassVar[int]
    certificate_der: bytes
    not_after_unix: int
    def __init__(self, certificate_der: _Optional[bytes] = ..., not_after_unix: _Optional[int] = ...) -> None: ...

class BundleRequest(_message.Message):
    __slots__ = ("kind", "have_version")
    KIND_FIELD_NUMBER: _ClassVar[int]
    HAVE_VERSION_FIELD_NUMBER: _ClassVar[int]
    kind: str
    have_version: str
    def __init__(self, kind: _Optional[str] = ..., have_version: _Optional[str] = ...) -> None: ...

class SignedBundle(_message.Message):
    __slots__ = ("kind", "version", "payload", "signature", "key_id")
    KIND_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    PAYLOAD_FIELD_NUMBER: _ClassVar[int]
    SIGNATURE_FIELD_NUMBER: _ClassVar[int]
    KEY_ID_FIELD_NUMBER: _ClassVar[int]
    kind: str
    version: str
    payload: bytes
    signature: bytes
    key_id: str
    def __init__(self, kind: _Optional[str] = ..., version: _Optional[str] = ..., payload: _Optional[bytes] = ..., signature: _Optional[bytes] = ..., key_id: _Optional[str] = ...) -> None: ...

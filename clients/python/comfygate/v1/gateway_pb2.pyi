from google.protobuf import duration_pb2 as _duration_pb2
from google.protobuf import struct_pb2 as _struct_pb2
from google.protobuf import timestamp_pb2 as _timestamp_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from typing import ClassVar as _ClassVar, Iterable as _Iterable, Mapping as _Mapping, Optional as _Optional, Union as _Union

CANCEL_OUTCOME_CANCELLED: CancelOutcome
CANCEL_OUTCOME_NOT_CANCELLABLE: CancelOutcome
CANCEL_OUTCOME_REQUESTED: CancelOutcome
CANCEL_OUTCOME_UNKNOWN: CancelOutcome
CANCEL_OUTCOME_UNSPECIFIED: CancelOutcome
DELIVERY_STATE_DELIVERED: DeliveryState
DELIVERY_STATE_FAILED: DeliveryState
DELIVERY_STATE_GONE: DeliveryState
DELIVERY_STATE_PENDING: DeliveryState
DELIVERY_STATE_UNSPECIFIED: DeliveryState
DESCRIPTOR: _descriptor.FileDescriptor
STATUS_CANCELLED: Status
STATUS_FAILED: Status
STATUS_QUEUED: Status
STATUS_RUNNING: Status
STATUS_SUCCEEDED: Status
STATUS_UNKNOWN: Status
STATUS_UNSPECIFIED: Status
STORAGE_STATE_FAILED: StorageState
STORAGE_STATE_PENDING: StorageState
STORAGE_STATE_STORED: StorageState
STORAGE_STATE_UNSPECIFIED: StorageState
WEBHOOK_EVENT_OUTPUT: WebhookEvent
WEBHOOK_EVENT_QUEUED: WebhookEvent
WEBHOOK_EVENT_RUNNING: WebhookEvent
WEBHOOK_EVENT_TERMINAL: WebhookEvent
WEBHOOK_EVENT_UNSPECIFIED: WebhookEvent

class CancelRequest(_message.Message):
    __slots__ = ["deployment_id", "request_id"]
    DEPLOYMENT_ID_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    deployment_id: str
    request_id: str
    def __init__(self, deployment_id: _Optional[str] = ..., request_id: _Optional[str] = ...) -> None: ...

class CancelResponse(_message.Message):
    __slots__ = ["outcome", "request", "upstream_outcome"]
    OUTCOME_FIELD_NUMBER: _ClassVar[int]
    REQUEST_FIELD_NUMBER: _ClassVar[int]
    UPSTREAM_OUTCOME_FIELD_NUMBER: _ClassVar[int]
    outcome: CancelOutcome
    request: RequestState
    upstream_outcome: str
    def __init__(self, outcome: _Optional[_Union[CancelOutcome, str]] = ..., upstream_outcome: _Optional[str] = ..., request: _Optional[_Union[RequestState, _Mapping]] = ...) -> None: ...

class DeliveryAttempt(_message.Message):
    __slots__ = ["at", "duration", "error", "http_status"]
    AT_FIELD_NUMBER: _ClassVar[int]
    DURATION_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    HTTP_STATUS_FIELD_NUMBER: _ClassVar[int]
    at: _timestamp_pb2.Timestamp
    duration: _duration_pb2.Duration
    error: str
    http_status: int
    def __init__(self, at: _Optional[_Union[_timestamp_pb2.Timestamp, _Mapping]] = ..., http_status: _Optional[int] = ..., error: _Optional[str] = ..., duration: _Optional[_Union[_duration_pb2.Duration, _Mapping]] = ...) -> None: ...

class DeploymentUsage(_message.Message):
    __slots__ = ["cancelled", "deployment_id", "failed", "queue", "run", "succeeded", "unknown"]
    CANCELLED_FIELD_NUMBER: _ClassVar[int]
    DEPLOYMENT_ID_FIELD_NUMBER: _ClassVar[int]
    FAILED_FIELD_NUMBER: _ClassVar[int]
    QUEUE_FIELD_NUMBER: _ClassVar[int]
    RUN_FIELD_NUMBER: _ClassVar[int]
    SUCCEEDED_FIELD_NUMBER: _ClassVar[int]
    UNKNOWN_FIELD_NUMBER: _ClassVar[int]
    cancelled: int
    deployment_id: str
    failed: int
    queue: DurationStats
    run: DurationStats
    succeeded: int
    unknown: int
    def __init__(self, deployment_id: _Optional[str] = ..., succeeded: _Optional[int] = ..., failed: _Optional[int] = ..., cancelled: _Optional[int] = ..., unknown: _Optional[int] = ..., queue: _Optional[_Union[DurationStats, _Mapping]] = ..., run: _Optional[_Union[DurationStats, _Mapping]] = ...) -> None: ...

class DurationStats(_message.Message):
    __slots__ = ["count", "p50", "p95", "sum"]
    COUNT_FIELD_NUMBER: _ClassVar[int]
    P50_FIELD_NUMBER: _ClassVar[int]
    P95_FIELD_NUMBER: _ClassVar[int]
    SUM_FIELD_NUMBER: _ClassVar[int]
    count: int
    p50: _duration_pb2.Duration
    p95: _duration_pb2.Duration
    sum: _duration_pb2.Duration
    def __init__(self, count: _Optional[int] = ..., sum: _Optional[_Union[_duration_pb2.Duration, _Mapping]] = ..., p50: _Optional[_Union[_duration_pb2.Duration, _Mapping]] = ..., p95: _Optional[_Union[_duration_pb2.Duration, _Mapping]] = ...) -> None: ...

class GetResultRequest(_message.Message):
    __slots__ = ["deployment_id", "request_id"]
    DEPLOYMENT_ID_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    deployment_id: str
    request_id: str
    def __init__(self, deployment_id: _Optional[str] = ..., request_id: _Optional[str] = ...) -> None: ...

class GetResultResponse(_message.Message):
    __slots__ = ["refresh_error", "request"]
    REFRESH_ERROR_FIELD_NUMBER: _ClassVar[int]
    REQUEST_FIELD_NUMBER: _ClassVar[int]
    refresh_error: RefreshError
    request: RequestState
    def __init__(self, request: _Optional[_Union[RequestState, _Mapping]] = ..., refresh_error: _Optional[_Union[RefreshError, _Mapping]] = ...) -> None: ...

class GetStatusRequest(_message.Message):
    __slots__ = ["deployment_id", "request_id"]
    DEPLOYMENT_ID_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    deployment_id: str
    request_id: str
    def __init__(self, deployment_id: _Optional[str] = ..., request_id: _Optional[str] = ...) -> None: ...

class GetStatusResponse(_message.Message):
    __slots__ = ["refresh_error", "request"]
    REFRESH_ERROR_FIELD_NUMBER: _ClassVar[int]
    REQUEST_FIELD_NUMBER: _ClassVar[int]
    refresh_error: RefreshError
    request: RequestState
    def __init__(self, request: _Optional[_Union[RequestState, _Mapping]] = ..., refresh_error: _Optional[_Union[RefreshError, _Mapping]] = ...) -> None: ...

class GetUsageRequest(_message.Message):
    __slots__ = ["deployment_id", "end", "start"]
    DEPLOYMENT_ID_FIELD_NUMBER: _ClassVar[int]
    END_FIELD_NUMBER: _ClassVar[int]
    START_FIELD_NUMBER: _ClassVar[int]
    deployment_id: str
    end: _timestamp_pb2.Timestamp
    start: _timestamp_pb2.Timestamp
    def __init__(self, start: _Optional[_Union[_timestamp_pb2.Timestamp, _Mapping]] = ..., end: _Optional[_Union[_timestamp_pb2.Timestamp, _Mapping]] = ..., deployment_id: _Optional[str] = ...) -> None: ...

class GetUsageResponse(_message.Message):
    __slots__ = ["deployments", "end", "start", "total"]
    DEPLOYMENTS_FIELD_NUMBER: _ClassVar[int]
    END_FIELD_NUMBER: _ClassVar[int]
    START_FIELD_NUMBER: _ClassVar[int]
    TOTAL_FIELD_NUMBER: _ClassVar[int]
    deployments: _containers.RepeatedCompositeFieldContainer[DeploymentUsage]
    end: _timestamp_pb2.Timestamp
    start: _timestamp_pb2.Timestamp
    total: DeploymentUsage
    def __init__(self, start: _Optional[_Union[_timestamp_pb2.Timestamp, _Mapping]] = ..., end: _Optional[_Union[_timestamp_pb2.Timestamp, _Mapping]] = ..., deployments: _Optional[_Iterable[_Union[DeploymentUsage, _Mapping]]] = ..., total: _Optional[_Union[DeploymentUsage, _Mapping]] = ...) -> None: ...

class ListDeliveriesRequest(_message.Message):
    __slots__ = ["deployment_id", "request_id"]
    DEPLOYMENT_ID_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    deployment_id: str
    request_id: str
    def __init__(self, deployment_id: _Optional[str] = ..., request_id: _Optional[str] = ...) -> None: ...

class ListDeliveriesResponse(_message.Message):
    __slots__ = ["deliveries"]
    DELIVERIES_FIELD_NUMBER: _ClassVar[int]
    deliveries: _containers.RepeatedCompositeFieldContainer[WebhookDelivery]
    def __init__(self, deliveries: _Optional[_Iterable[_Union[WebhookDelivery, _Mapping]]] = ...) -> None: ...

class ListRequestsRequest(_message.Message):
    __slots__ = ["created_after", "created_before", "deployment_id", "page_size", "page_token", "statuses"]
    CREATED_AFTER_FIELD_NUMBER: _ClassVar[int]
    CREATED_BEFORE_FIELD_NUMBER: _ClassVar[int]
    DEPLOYMENT_ID_FIELD_NUMBER: _ClassVar[int]
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    STATUSES_FIELD_NUMBER: _ClassVar[int]
    created_after: _timestamp_pb2.Timestamp
    created_before: _timestamp_pb2.Timestamp
    deployment_id: str
    page_size: int
    page_token: str
    statuses: _containers.RepeatedScalarFieldContainer[Status]
    def __init__(self, deployment_id: _Optional[str] = ..., statuses: _Optional[_Iterable[_Union[Status, str]]] = ..., created_after: _Optional[_Union[_timestamp_pb2.Timestamp, _Mapping]] = ..., created_before: _Optional[_Union[_timestamp_pb2.Timestamp, _Mapping]] = ..., page_size: _Optional[int] = ..., page_token: _Optional[str] = ...) -> None: ...

class ListRequestsResponse(_message.Message):
    __slots__ = ["next_page_token", "requests"]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    REQUESTS_FIELD_NUMBER: _ClassVar[int]
    next_page_token: str
    requests: _containers.RepeatedCompositeFieldContainer[RequestState]
    def __init__(self, requests: _Optional[_Iterable[_Union[RequestState, _Mapping]]] = ..., next_page_token: _Optional[str] = ...) -> None: ...

class OutputStorage(_message.Message):
    __slots__ = ["attempts", "error", "objects", "state"]
    ATTEMPTS_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    OBJECTS_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    attempts: int
    error: str
    objects: _containers.RepeatedCompositeFieldContainer[StoredOutput]
    state: StorageState
    def __init__(self, state: _Optional[_Union[StorageState, str]] = ..., objects: _Optional[_Iterable[_Union[StoredOutput, _Mapping]]] = ..., error: _Optional[str] = ..., attempts: _Optional[int] = ...) -> None: ...

class RedeliverEventRequest(_message.Message):
    __slots__ = ["deployment_id", "event_id", "request_id"]
    DEPLOYMENT_ID_FIELD_NUMBER: _ClassVar[int]
    EVENT_ID_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    deployment_id: str
    event_id: str
    request_id: str
    def __init__(self, deployment_id: _Optional[str] = ..., request_id: _Optional[str] = ..., event_id: _Optional[str] = ...) -> None: ...

class RedeliverEventResponse(_message.Message):
    __slots__ = ["deliveries"]
    DELIVERIES_FIELD_NUMBER: _ClassVar[int]
    deliveries: _containers.RepeatedCompositeFieldContainer[WebhookDelivery]
    def __init__(self, deliveries: _Optional[_Iterable[_Union[WebhookDelivery, _Mapping]]] = ...) -> None: ...

class RefreshError(_message.Message):
    __slots__ = ["code", "message", "upstream_code"]
    CODE_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    UPSTREAM_CODE_FIELD_NUMBER: _ClassVar[int]
    code: str
    message: str
    upstream_code: str
    def __init__(self, code: _Optional[str] = ..., message: _Optional[str] = ..., upstream_code: _Optional[str] = ...) -> None: ...

class RequestError(_message.Message):
    __slots__ = ["message", "type", "upstream_code"]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    TYPE_FIELD_NUMBER: _ClassVar[int]
    UPSTREAM_CODE_FIELD_NUMBER: _ClassVar[int]
    message: str
    type: str
    upstream_code: str
    def __init__(self, type: _Optional[str] = ..., message: _Optional[str] = ..., upstream_code: _Optional[str] = ...) -> None: ...

class RequestState(_message.Message):
    __slots__ = ["cancelling", "created_at", "deadline", "deployment_id", "epoch", "error", "finished_at", "instance_id", "max_queue_duration", "max_run_duration", "output_urls", "outputs", "queue_duration", "queue_position", "queued_at", "request_id", "run_duration", "seq", "started_at", "status", "storage", "synced_at", "upstream_status"]
    CANCELLING_FIELD_NUMBER: _ClassVar[int]
    CREATED_AT_FIELD_NUMBER: _ClassVar[int]
    DEADLINE_FIELD_NUMBER: _ClassVar[int]
    DEPLOYMENT_ID_FIELD_NUMBER: _ClassVar[int]
    EPOCH_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    FINISHED_AT_FIELD_NUMBER: _ClassVar[int]
    INSTANCE_ID_FIELD_NUMBER: _ClassVar[int]
    MAX_QUEUE_DURATION_FIELD_NUMBER: _ClassVar[int]
    MAX_RUN_DURATION_FIELD_NUMBER: _ClassVar[int]
    OUTPUTS_FIELD_NUMBER: _ClassVar[int]
    OUTPUT_URLS_FIELD_NUMBER: _ClassVar[int]
    QUEUED_AT_FIELD_NUMBER: _ClassVar[int]
    QUEUE_DURATION_FIELD_NUMBER: _ClassVar[int]
    QUEUE_POSITION_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    RUN_DURATION_FIELD_NUMBER: _ClassVar[int]
    SEQ_FIELD_NUMBER: _ClassVar[int]
    STARTED_AT_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    STORAGE_FIELD_NUMBER: _ClassVar[int]
    SYNCED_AT_FIELD_NUMBER: _ClassVar[int]
    UPSTREAM_STATUS_FIELD_NUMBER: _ClassVar[int]
    cancelling: bool
    created_at: _timestamp_pb2.Timestamp
    deadline: _timestamp_pb2.Timestamp
    deployment_id: str
    epoch: int
    error: RequestError
    finished_at: _timestamp_pb2.Timestamp
    instance_id: str
    max_queue_duration: _duration_pb2.Duration
    max_run_duration: _duration_pb2.Duration
    output_urls: _containers.RepeatedScalarFieldContainer[str]
    outputs: _struct_pb2.Struct
    queue_duration: _duration_pb2.Duration
    queue_position: int
    queued_at: _timestamp_pb2.Timestamp
    request_id: str
    run_duration: _duration_pb2.Duration
    seq: int
    started_at: _timestamp_pb2.Timestamp
    status: Status
    storage: OutputStorage
    synced_at: _timestamp_pb2.Timestamp
    upstream_status: str
    def __init__(self, request_id: _Optional[str] = ..., deployment_id: _Optional[str] = ..., status: _Optional[_Union[Status, str]] = ..., upstream_status: _Optional[str] = ..., queue_position: _Optional[int] = ..., instance_id: _Optional[str] = ..., outputs: _Optional[_Union[_struct_pb2.Struct, _Mapping]] = ..., output_urls: _Optional[_Iterable[str]] = ..., error: _Optional[_Union[RequestError, _Mapping]] = ..., created_at: _Optional[_Union[_timestamp_pb2.Timestamp, _Mapping]] = ..., started_at: _Optional[_Union[_timestamp_pb2.Timestamp, _Mapping]] = ..., finished_at: _Optional[_Union[_timestamp_pb2.Timestamp, _Mapping]] = ..., seq: _Optional[int] = ..., epoch: _Optional[int] = ..., synced_at: _Optional[_Union[_timestamp_pb2.Timestamp, _Mapping]] = ..., storage: _Optional[_Union[OutputStorage, _Mapping]] = ..., queued_at: _Optional[_Union[_timestamp_pb2.Timestamp, _Mapping]] = ..., queue_duration: _Optional[_Union[_duration_pb2.Duration, _Mapping]] = ..., run_duration: _Optional[_Union[_duration_pb2.Duration, _Mapping]] = ..., max_queue_duration: _Optional[_Union[_duration_pb2.Duration, _Mapping]] = ..., max_run_duration: _Optional[_Union[_duration_pb2.Duration, _Mapping]] = ..., deadline: _Optional[_Union[_timestamp_pb2.Timestamp, _Mapping]] = ..., cancelling: bool = ...) -> None: ...

class StoredOutput(_message.Message):
    __slots__ = ["content_type", "file", "key", "node", "sha256", "size", "url", "url_expires_at"]
    CONTENT_TYPE_FIELD_NUMBER: _ClassVar[int]
    FILE_FIELD_NUMBER: _ClassVar[int]
    KEY_FIELD_NUMBER: _ClassVar[int]
    NODE_FIELD_NUMBER: _ClassVar[int]
    SHA256_FIELD_NUMBER: _ClassVar[int]
    SIZE_FIELD_NUMBER: _ClassVar[int]
    URL_EXPIRES_AT_FIELD_NUMBER: _ClassVar[int]
    URL_FIELD_NUMBER: _ClassVar[int]
    content_type: str
    file: str
    key: str
    node: str
    sha256: str
    size: int
    url: str
    url_expires_at: _timestamp_pb2.Timestamp
    def __init__(self, node: _Optional[str] = ..., file: _Optional[str] = ..., key: _Optional[str] = ..., size: _Optional[int] = ..., content_type: _Optional[str] = ..., sha256: _Optional[str] = ..., url: _Optional[str] = ..., url_expires_at: _Optional[_Union[_timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class SubmitAndWaitRequest(_message.Message):
    __slots__ = ["submit", "wait"]
    SUBMIT_FIELD_NUMBER: _ClassVar[int]
    WAIT_FIELD_NUMBER: _ClassVar[int]
    submit: SubmitRequest
    wait: _duration_pb2.Duration
    def __init__(self, submit: _Optional[_Union[SubmitRequest, _Mapping]] = ..., wait: _Optional[_Union[_duration_pb2.Duration, _Mapping]] = ...) -> None: ...

class SubmitAndWaitResponse(_message.Message):
    __slots__ = ["done", "request"]
    DONE_FIELD_NUMBER: _ClassVar[int]
    REQUEST_FIELD_NUMBER: _ClassVar[int]
    done: bool
    request: RequestState
    def __init__(self, request: _Optional[_Union[RequestState, _Mapping]] = ..., done: bool = ...) -> None: ...

class SubmitRequest(_message.Message):
    __slots__ = ["deployment_id", "idempotency_key", "input_json", "max_queue_duration", "max_run_duration", "webhook"]
    DEPLOYMENT_ID_FIELD_NUMBER: _ClassVar[int]
    IDEMPOTENCY_KEY_FIELD_NUMBER: _ClassVar[int]
    INPUT_JSON_FIELD_NUMBER: _ClassVar[int]
    MAX_QUEUE_DURATION_FIELD_NUMBER: _ClassVar[int]
    MAX_RUN_DURATION_FIELD_NUMBER: _ClassVar[int]
    WEBHOOK_FIELD_NUMBER: _ClassVar[int]
    deployment_id: str
    idempotency_key: str
    input_json: str
    max_queue_duration: _duration_pb2.Duration
    max_run_duration: _duration_pb2.Duration
    webhook: Webhook
    def __init__(self, deployment_id: _Optional[str] = ..., input_json: _Optional[str] = ..., idempotency_key: _Optional[str] = ..., webhook: _Optional[_Union[Webhook, _Mapping]] = ..., max_queue_duration: _Optional[_Union[_duration_pb2.Duration, _Mapping]] = ..., max_run_duration: _Optional[_Union[_duration_pb2.Duration, _Mapping]] = ...) -> None: ...

class SubmitResponse(_message.Message):
    __slots__ = ["request"]
    REQUEST_FIELD_NUMBER: _ClassVar[int]
    request: RequestState
    def __init__(self, request: _Optional[_Union[RequestState, _Mapping]] = ...) -> None: ...

class Upload(_message.Message):
    __slots__ = ["content_type", "created_at", "expires_at", "id", "reference", "sha256", "size"]
    CONTENT_TYPE_FIELD_NUMBER: _ClassVar[int]
    CREATED_AT_FIELD_NUMBER: _ClassVar[int]
    EXPIRES_AT_FIELD_NUMBER: _ClassVar[int]
    ID_FIELD_NUMBER: _ClassVar[int]
    REFERENCE_FIELD_NUMBER: _ClassVar[int]
    SHA256_FIELD_NUMBER: _ClassVar[int]
    SIZE_FIELD_NUMBER: _ClassVar[int]
    content_type: str
    created_at: _timestamp_pb2.Timestamp
    expires_at: _timestamp_pb2.Timestamp
    id: str
    reference: str
    sha256: str
    size: int
    def __init__(self, id: _Optional[str] = ..., reference: _Optional[str] = ..., content_type: _Optional[str] = ..., size: _Optional[int] = ..., sha256: _Optional[str] = ..., created_at: _Optional[_Union[_timestamp_pb2.Timestamp, _Mapping]] = ..., expires_at: _Optional[_Union[_timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class UploadHeader(_message.Message):
    __slots__ = ["content_type", "size"]
    CONTENT_TYPE_FIELD_NUMBER: _ClassVar[int]
    SIZE_FIELD_NUMBER: _ClassVar[int]
    content_type: str
    size: int
    def __init__(self, content_type: _Optional[str] = ..., size: _Optional[int] = ...) -> None: ...

class UploadRequest(_message.Message):
    __slots__ = ["chunk", "header"]
    CHUNK_FIELD_NUMBER: _ClassVar[int]
    HEADER_FIELD_NUMBER: _ClassVar[int]
    chunk: bytes
    header: UploadHeader
    def __init__(self, header: _Optional[_Union[UploadHeader, _Mapping]] = ..., chunk: _Optional[bytes] = ...) -> None: ...

class UploadResponse(_message.Message):
    __slots__ = ["upload"]
    UPLOAD_FIELD_NUMBER: _ClassVar[int]
    upload: Upload
    def __init__(self, upload: _Optional[_Union[Upload, _Mapping]] = ...) -> None: ...

class WatchRequestRequest(_message.Message):
    __slots__ = ["after_epoch", "after_seq", "after_status", "deployment_id", "request_id"]
    AFTER_EPOCH_FIELD_NUMBER: _ClassVar[int]
    AFTER_SEQ_FIELD_NUMBER: _ClassVar[int]
    AFTER_STATUS_FIELD_NUMBER: _ClassVar[int]
    DEPLOYMENT_ID_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    after_epoch: int
    after_seq: int
    after_status: Status
    deployment_id: str
    request_id: str
    def __init__(self, deployment_id: _Optional[str] = ..., request_id: _Optional[str] = ..., after_seq: _Optional[int] = ..., after_epoch: _Optional[int] = ..., after_status: _Optional[_Union[Status, str]] = ...) -> None: ...

class WatchRequestResponse(_message.Message):
    __slots__ = ["request"]
    REQUEST_FIELD_NUMBER: _ClassVar[int]
    request: RequestState
    def __init__(self, request: _Optional[_Union[RequestState, _Mapping]] = ...) -> None: ...

class Webhook(_message.Message):
    __slots__ = ["events", "url"]
    EVENTS_FIELD_NUMBER: _ClassVar[int]
    URL_FIELD_NUMBER: _ClassVar[int]
    events: _containers.RepeatedScalarFieldContainer[WebhookEvent]
    url: str
    def __init__(self, url: _Optional[str] = ..., events: _Optional[_Iterable[_Union[WebhookEvent, str]]] = ...) -> None: ...

class WebhookDelivery(_message.Message):
    __slots__ = ["attempt_count", "attempts", "created_at", "endpoint", "epoch", "event_id", "event_type", "next_attempt_at", "seq", "state"]
    ATTEMPTS_FIELD_NUMBER: _ClassVar[int]
    ATTEMPT_COUNT_FIELD_NUMBER: _ClassVar[int]
    CREATED_AT_FIELD_NUMBER: _ClassVar[int]
    ENDPOINT_FIELD_NUMBER: _ClassVar[int]
    EPOCH_FIELD_NUMBER: _ClassVar[int]
    EVENT_ID_FIELD_NUMBER: _ClassVar[int]
    EVENT_TYPE_FIELD_NUMBER: _ClassVar[int]
    NEXT_ATTEMPT_AT_FIELD_NUMBER: _ClassVar[int]
    SEQ_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    attempt_count: int
    attempts: _containers.RepeatedCompositeFieldContainer[DeliveryAttempt]
    created_at: _timestamp_pb2.Timestamp
    endpoint: str
    epoch: int
    event_id: str
    event_type: str
    next_attempt_at: _timestamp_pb2.Timestamp
    seq: int
    state: DeliveryState
    def __init__(self, event_id: _Optional[str] = ..., event_type: _Optional[str] = ..., seq: _Optional[int] = ..., epoch: _Optional[int] = ..., endpoint: _Optional[str] = ..., state: _Optional[_Union[DeliveryState, str]] = ..., attempts: _Optional[_Iterable[_Union[DeliveryAttempt, _Mapping]]] = ..., next_attempt_at: _Optional[_Union[_timestamp_pb2.Timestamp, _Mapping]] = ..., created_at: _Optional[_Union[_timestamp_pb2.Timestamp, _Mapping]] = ..., attempt_count: _Optional[int] = ...) -> None: ...

class Status(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = []

class StorageState(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = []

class WebhookEvent(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = []

class CancelOutcome(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = []

class DeliveryState(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = []

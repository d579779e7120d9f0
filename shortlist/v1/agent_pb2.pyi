from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class RejectionCode(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    REJECTION_CODE_UNSPECIFIED: _ClassVar[RejectionCode]
    REJECTION_CODE_INVALID_ID: _ClassVar[RejectionCode]
    REJECTION_CODE_ID_TOO_LONG: _ClassVar[RejectionCode]
    REJECTION_CODE_INVALID_LABEL: _ClassVar[RejectionCode]
    REJECTION_CODE_UNKNOWN_CLASS: _ClassVar[RejectionCode]
    REJECTION_CODE_INVALID_METADATA: _ClassVar[RejectionCode]
    REJECTION_CODE_INVALID_PAYLOAD: _ClassVar[RejectionCode]
    REJECTION_CODE_PAYLOAD_TOO_LARGE: _ClassVar[RejectionCode]
    REJECTION_CODE_ID_TAKEN: _ClassVar[RejectionCode]
    REJECTION_CODE_RESEND_CHANGES_SAMPLE: _ClassVar[RejectionCode]
    REJECTION_CODE_RESEND_CHANGES_LABEL: _ClassVar[RejectionCode]
    REJECTION_CODE_UNKNOWN_ID: _ClassVar[RejectionCode]
    REJECTION_CODE_DUPLICATE_IN_REQUEST: _ClassVar[RejectionCode]
    REJECTION_CODE_CONFLICT: _ClassVar[RejectionCode]
    REJECTION_CODE_NOT_LABELLED: _ClassVar[RejectionCode]
    REJECTION_CODE_CANNOT_RESTORE: _ClassVar[RejectionCode]
    REJECTION_CODE_FILE_CHANGED: _ClassVar[RejectionCode]
REJECTION_CODE_UNSPECIFIED: RejectionCode
REJECTION_CODE_INVALID_ID: RejectionCode
REJECTION_CODE_ID_TOO_LONG: RejectionCode
REJECTION_CODE_INVALID_LABEL: RejectionCode
REJECTION_CODE_UNKNOWN_CLASS: RejectionCode
REJECTION_CODE_INVALID_METADATA: RejectionCode
REJECTION_CODE_INVALID_PAYLOAD: RejectionCode
REJECTION_CODE_PAYLOAD_TOO_LARGE: RejectionCode
REJECTION_CODE_ID_TAKEN: RejectionCode
REJECTION_CODE_RESEND_CHANGES_SAMPLE: RejectionCode
REJECTION_CODE_RESEND_CHANGES_LABEL: RejectionCode
REJECTION_CODE_UNKNOWN_ID: RejectionCode
REJECTION_CODE_DUPLICATE_IN_REQUEST: RejectionCode
REJECTION_CODE_CONFLICT: RejectionCode
REJECTION_CODE_NOT_LABELLED: RejectionCode
REJECTION_CODE_CANNOT_RESTORE: RejectionCode
REJECTION_CODE_FILE_CHANGED: RejectionCode

class Sample(_message.Message):
    __slots__ = ("id", "encoded_image", "tensor", "uri", "metadata", "label", "annotator", "label_time", "label_source")
    class MetadataEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    ID_FIELD_NUMBER: _ClassVar[int]
    ENCODED_IMAGE_FIELD_NUMBER: _ClassVar[int]
    TENSOR_FIELD_NUMBER: _ClassVar[int]
    URI_FIELD_NUMBER: _ClassVar[int]
    METADATA_FIELD_NUMBER: _ClassVar[int]
    LABEL_FIELD_NUMBER: _ClassVar[int]
    ANNOTATOR_FIELD_NUMBER: _ClassVar[int]
    LABEL_TIME_FIELD_NUMBER: _ClassVar[int]
    LABEL_SOURCE_FIELD_NUMBER: _ClassVar[int]
    id: str
    encoded_image: bytes
    tensor: Tensor
    uri: str
    metadata: _containers.ScalarMap[str, str]
    label: str
    annotator: str
    label_time: float
    label_source: str
    def __init__(self, id: _Optional[str] = ..., encoded_image: _Optional[bytes] = ..., tensor: _Optional[_Union[Tensor, _Mapping]] = ..., uri: _Optional[str] = ..., metadata: _Optional[_Mapping[str, str]] = ..., label: _Optional[str] = ..., annotator: _Optional[str] = ..., label_time: _Optional[float] = ..., label_source: _Optional[str] = ...) -> None: ...

class Tensor(_message.Message):
    __slots__ = ("dtype", "shape", "data")
    DTYPE_FIELD_NUMBER: _ClassVar[int]
    SHAPE_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    dtype: str
    shape: _containers.RepeatedScalarFieldContainer[int]
    data: bytes
    def __init__(self, dtype: _Optional[str] = ..., shape: _Optional[_Iterable[int]] = ..., data: _Optional[bytes] = ...) -> None: ...

class IngestRequest(_message.Message):
    __slots__ = ("samples",)
    SAMPLES_FIELD_NUMBER: _ClassVar[int]
    samples: _containers.RepeatedCompositeFieldContainer[Sample]
    def __init__(self, samples: _Optional[_Iterable[_Union[Sample, _Mapping]]] = ...) -> None: ...

class IngestReply(_message.Message):
    __slots__ = ("accepted", "duplicates", "rejected", "same_payload", "same_payload_examples", "rejected_count", "labels_added", "duplicates_other_uri", "other_uri_example", "twin_conflicts", "twin_conflict_examples")
    ACCEPTED_FIELD_NUMBER: _ClassVar[int]
    DUPLICATES_FIELD_NUMBER: _ClassVar[int]
    REJECTED_FIELD_NUMBER: _ClassVar[int]
    SAME_PAYLOAD_FIELD_NUMBER: _ClassVar[int]
    SAME_PAYLOAD_EXAMPLES_FIELD_NUMBER: _ClassVar[int]
    REJECTED_COUNT_FIELD_NUMBER: _ClassVar[int]
    LABELS_ADDED_FIELD_NUMBER: _ClassVar[int]
    DUPLICATES_OTHER_URI_FIELD_NUMBER: _ClassVar[int]
    OTHER_URI_EXAMPLE_FIELD_NUMBER: _ClassVar[int]
    TWIN_CONFLICTS_FIELD_NUMBER: _ClassVar[int]
    TWIN_CONFLICT_EXAMPLES_FIELD_NUMBER: _ClassVar[int]
    accepted: int
    duplicates: int
    rejected: _containers.RepeatedCompositeFieldContainer[Rejection]
    same_payload: int
    same_payload_examples: _containers.RepeatedCompositeFieldContainer[SamePayload]
    rejected_count: int
    labels_added: int
    duplicates_other_uri: int
    other_uri_example: OtherUri
    twin_conflicts: int
    twin_conflict_examples: _containers.RepeatedCompositeFieldContainer[TwinConflict]
    def __init__(self, accepted: _Optional[int] = ..., duplicates: _Optional[int] = ..., rejected: _Optional[_Iterable[_Union[Rejection, _Mapping]]] = ..., same_payload: _Optional[int] = ..., same_payload_examples: _Optional[_Iterable[_Union[SamePayload, _Mapping]]] = ..., rejected_count: _Optional[int] = ..., labels_added: _Optional[int] = ..., duplicates_other_uri: _Optional[int] = ..., other_uri_example: _Optional[_Union[OtherUri, _Mapping]] = ..., twin_conflicts: _Optional[int] = ..., twin_conflict_examples: _Optional[_Iterable[_Union[TwinConflict, _Mapping]]] = ...) -> None: ...

class OtherUri(_message.Message):
    __slots__ = ("id", "stored_uri", "sent_uri")
    ID_FIELD_NUMBER: _ClassVar[int]
    STORED_URI_FIELD_NUMBER: _ClassVar[int]
    SENT_URI_FIELD_NUMBER: _ClassVar[int]
    id: str
    stored_uri: str
    sent_uri: str
    def __init__(self, id: _Optional[str] = ..., stored_uri: _Optional[str] = ..., sent_uri: _Optional[str] = ...) -> None: ...

class SamePayload(_message.Message):
    __slots__ = ("id", "other_id")
    ID_FIELD_NUMBER: _ClassVar[int]
    OTHER_ID_FIELD_NUMBER: _ClassVar[int]
    id: str
    other_id: str
    def __init__(self, id: _Optional[str] = ..., other_id: _Optional[str] = ...) -> None: ...

class Rejection(_message.Message):
    __slots__ = ("id", "reason", "now", "code")
    ID_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    NOW_FIELD_NUMBER: _ClassVar[int]
    CODE_FIELD_NUMBER: _ClassVar[int]
    id: str
    reason: str
    now: LabelNow
    code: RejectionCode
    def __init__(self, id: _Optional[str] = ..., reason: _Optional[str] = ..., now: _Optional[_Union[LabelNow, _Mapping]] = ..., code: _Optional[_Union[RejectionCode, str]] = ...) -> None: ...

class LabelNow(_message.Message):
    __slots__ = ("label", "annotator")
    LABEL_FIELD_NUMBER: _ClassVar[int]
    ANNOTATOR_FIELD_NUMBER: _ClassVar[int]
    label: str
    annotator: str
    def __init__(self, label: _Optional[str] = ..., annotator: _Optional[str] = ...) -> None: ...

class SelectRequest(_message.Message):
    __slots__ = ("budget", "strategy", "params", "seed", "where", "group_by", "max_per_group")
    class ParamsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    class WhereEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    BUDGET_FIELD_NUMBER: _ClassVar[int]
    STRATEGY_FIELD_NUMBER: _ClassVar[int]
    PARAMS_FIELD_NUMBER: _ClassVar[int]
    SEED_FIELD_NUMBER: _ClassVar[int]
    WHERE_FIELD_NUMBER: _ClassVar[int]
    GROUP_BY_FIELD_NUMBER: _ClassVar[int]
    MAX_PER_GROUP_FIELD_NUMBER: _ClassVar[int]
    budget: int
    strategy: str
    params: _containers.ScalarMap[str, str]
    seed: int
    where: _containers.ScalarMap[str, str]
    group_by: str
    max_per_group: int
    def __init__(self, budget: _Optional[int] = ..., strategy: _Optional[str] = ..., params: _Optional[_Mapping[str, str]] = ..., seed: _Optional[int] = ..., where: _Optional[_Mapping[str, str]] = ..., group_by: _Optional[str] = ..., max_per_group: _Optional[int] = ...) -> None: ...

class SelectReply(_message.Message):
    __slots__ = ("selected", "model_version", "strategy", "selection_id", "details")
    class DetailsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    SELECTED_FIELD_NUMBER: _ClassVar[int]
    MODEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    STRATEGY_FIELD_NUMBER: _ClassVar[int]
    SELECTION_ID_FIELD_NUMBER: _ClassVar[int]
    DETAILS_FIELD_NUMBER: _ClassVar[int]
    selected: _containers.RepeatedCompositeFieldContainer[Selected]
    model_version: str
    strategy: str
    selection_id: str
    details: _containers.ScalarMap[str, str]
    def __init__(self, selected: _Optional[_Iterable[_Union[Selected, _Mapping]]] = ..., model_version: _Optional[str] = ..., strategy: _Optional[str] = ..., selection_id: _Optional[str] = ..., details: _Optional[_Mapping[str, str]] = ...) -> None: ...

class Selected(_message.Message):
    __slots__ = ("id", "score")
    ID_FIELD_NUMBER: _ClassVar[int]
    SCORE_FIELD_NUMBER: _ClassVar[int]
    id: str
    score: float
    def __init__(self, id: _Optional[str] = ..., score: _Optional[float] = ...) -> None: ...

class SubmitLabelsRequest(_message.Message):
    __slots__ = ("labels", "annotator", "source")
    LABELS_FIELD_NUMBER: _ClassVar[int]
    ANNOTATOR_FIELD_NUMBER: _ClassVar[int]
    SOURCE_FIELD_NUMBER: _ClassVar[int]
    labels: _containers.RepeatedCompositeFieldContainer[LabelAssignment]
    annotator: str
    source: str
    def __init__(self, labels: _Optional[_Iterable[_Union[LabelAssignment, _Mapping]]] = ..., annotator: _Optional[str] = ..., source: _Optional[str] = ...) -> None: ...

class LabelAssignment(_message.Message):
    __slots__ = ("id", "label", "if_current")
    ID_FIELD_NUMBER: _ClassVar[int]
    LABEL_FIELD_NUMBER: _ClassVar[int]
    IF_CURRENT_FIELD_NUMBER: _ClassVar[int]
    id: str
    label: str
    if_current: str
    def __init__(self, id: _Optional[str] = ..., label: _Optional[str] = ..., if_current: _Optional[str] = ...) -> None: ...

class SubmitLabelsReply(_message.Message):
    __slots__ = ("accepted", "rejected", "overwritten", "agreed", "twin_conflicts", "rejected_count", "overwritten_count", "agreed_count", "twin_conflicts_count")
    ACCEPTED_FIELD_NUMBER: _ClassVar[int]
    REJECTED_FIELD_NUMBER: _ClassVar[int]
    OVERWRITTEN_FIELD_NUMBER: _ClassVar[int]
    AGREED_FIELD_NUMBER: _ClassVar[int]
    TWIN_CONFLICTS_FIELD_NUMBER: _ClassVar[int]
    REJECTED_COUNT_FIELD_NUMBER: _ClassVar[int]
    OVERWRITTEN_COUNT_FIELD_NUMBER: _ClassVar[int]
    AGREED_COUNT_FIELD_NUMBER: _ClassVar[int]
    TWIN_CONFLICTS_COUNT_FIELD_NUMBER: _ClassVar[int]
    accepted: int
    rejected: _containers.RepeatedCompositeFieldContainer[Rejection]
    overwritten: _containers.RepeatedCompositeFieldContainer[Replaced]
    agreed: _containers.RepeatedCompositeFieldContainer[Agreement]
    twin_conflicts: _containers.RepeatedCompositeFieldContainer[TwinConflict]
    rejected_count: int
    overwritten_count: int
    agreed_count: int
    twin_conflicts_count: int
    def __init__(self, accepted: _Optional[int] = ..., rejected: _Optional[_Iterable[_Union[Rejection, _Mapping]]] = ..., overwritten: _Optional[_Iterable[_Union[Replaced, _Mapping]]] = ..., agreed: _Optional[_Iterable[_Union[Agreement, _Mapping]]] = ..., twin_conflicts: _Optional[_Iterable[_Union[TwinConflict, _Mapping]]] = ..., rejected_count: _Optional[int] = ..., overwritten_count: _Optional[int] = ..., agreed_count: _Optional[int] = ..., twin_conflicts_count: _Optional[int] = ...) -> None: ...

class TwinConflict(_message.Message):
    __slots__ = ("id", "twin_id", "twin_label")
    ID_FIELD_NUMBER: _ClassVar[int]
    TWIN_ID_FIELD_NUMBER: _ClassVar[int]
    TWIN_LABEL_FIELD_NUMBER: _ClassVar[int]
    id: str
    twin_id: str
    twin_label: str
    def __init__(self, id: _Optional[str] = ..., twin_id: _Optional[str] = ..., twin_label: _Optional[str] = ...) -> None: ...

class Replaced(_message.Message):
    __slots__ = ("id", "label", "annotator")
    ID_FIELD_NUMBER: _ClassVar[int]
    LABEL_FIELD_NUMBER: _ClassVar[int]
    ANNOTATOR_FIELD_NUMBER: _ClassVar[int]
    id: str
    label: str
    annotator: str
    def __init__(self, id: _Optional[str] = ..., label: _Optional[str] = ..., annotator: _Optional[str] = ...) -> None: ...

class Agreement(_message.Message):
    __slots__ = ("id", "now")
    ID_FIELD_NUMBER: _ClassVar[int]
    NOW_FIELD_NUMBER: _ClassVar[int]
    id: str
    now: LabelNow
    def __init__(self, id: _Optional[str] = ..., now: _Optional[_Union[LabelNow, _Mapping]] = ...) -> None: ...

class PriorLabelsRequest(_message.Message):
    __slots__ = ("method", "ids", "params")
    class ParamsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    METHOD_FIELD_NUMBER: _ClassVar[int]
    IDS_FIELD_NUMBER: _ClassVar[int]
    PARAMS_FIELD_NUMBER: _ClassVar[int]
    method: str
    ids: _containers.RepeatedScalarFieldContainer[str]
    params: _containers.ScalarMap[str, str]
    def __init__(self, method: _Optional[str] = ..., ids: _Optional[_Iterable[str]] = ..., params: _Optional[_Mapping[str, str]] = ...) -> None: ...

class PriorLabel(_message.Message):
    __slots__ = ("id", "label", "confidence", "probs", "model_version", "calibration", "not_embedded")
    class ProbsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: float
        def __init__(self, key: _Optional[str] = ..., value: _Optional[float] = ...) -> None: ...
    ID_FIELD_NUMBER: _ClassVar[int]
    LABEL_FIELD_NUMBER: _ClassVar[int]
    CONFIDENCE_FIELD_NUMBER: _ClassVar[int]
    PROBS_FIELD_NUMBER: _ClassVar[int]
    MODEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    CALIBRATION_FIELD_NUMBER: _ClassVar[int]
    NOT_EMBEDDED_FIELD_NUMBER: _ClassVar[int]
    id: str
    label: str
    confidence: float
    probs: _containers.ScalarMap[str, float]
    model_version: str
    calibration: Calibration
    not_embedded: int
    def __init__(self, id: _Optional[str] = ..., label: _Optional[str] = ..., confidence: _Optional[float] = ..., probs: _Optional[_Mapping[str, float]] = ..., model_version: _Optional[str] = ..., calibration: _Optional[_Union[Calibration, _Mapping]] = ..., not_embedded: _Optional[int] = ...) -> None: ...

class Calibration(_message.Message):
    __slots__ = ("source", "held_out", "temperature", "audit_labels", "warning", "left_out")
    SOURCE_FIELD_NUMBER: _ClassVar[int]
    HELD_OUT_FIELD_NUMBER: _ClassVar[int]
    TEMPERATURE_FIELD_NUMBER: _ClassVar[int]
    AUDIT_LABELS_FIELD_NUMBER: _ClassVar[int]
    WARNING_FIELD_NUMBER: _ClassVar[int]
    LEFT_OUT_FIELD_NUMBER: _ClassVar[int]
    source: str
    held_out: int
    temperature: float
    audit_labels: int
    warning: str
    left_out: int
    def __init__(self, source: _Optional[str] = ..., held_out: _Optional[int] = ..., temperature: _Optional[float] = ..., audit_labels: _Optional[int] = ..., warning: _Optional[str] = ..., left_out: _Optional[int] = ...) -> None: ...

class ListSamplesRequest(_message.Message):
    __slots__ = ("labeled_only", "include_payload", "ids")
    LABELED_ONLY_FIELD_NUMBER: _ClassVar[int]
    INCLUDE_PAYLOAD_FIELD_NUMBER: _ClassVar[int]
    IDS_FIELD_NUMBER: _ClassVar[int]
    labeled_only: bool
    include_payload: bool
    ids: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, labeled_only: _Optional[bool] = ..., include_payload: _Optional[bool] = ..., ids: _Optional[_Iterable[str]] = ...) -> None: ...

class GetStatusRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class Status(_message.Message):
    __slots__ = ("samples", "labeled", "embedded", "model_version", "strategies", "prior_methods", "classes", "pending_model_version", "pending_embedded", "pending_embed_rate", "warnings", "audit", "classes_open", "label_events", "agent_version", "agent_commit", "schema_version", "samples_deleted")
    SAMPLES_FIELD_NUMBER: _ClassVar[int]
    LABELED_FIELD_NUMBER: _ClassVar[int]
    EMBEDDED_FIELD_NUMBER: _ClassVar[int]
    MODEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    STRATEGIES_FIELD_NUMBER: _ClassVar[int]
    PRIOR_METHODS_FIELD_NUMBER: _ClassVar[int]
    CLASSES_FIELD_NUMBER: _ClassVar[int]
    PENDING_MODEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    PENDING_EMBEDDED_FIELD_NUMBER: _ClassVar[int]
    PENDING_EMBED_RATE_FIELD_NUMBER: _ClassVar[int]
    WARNINGS_FIELD_NUMBER: _ClassVar[int]
    AUDIT_FIELD_NUMBER: _ClassVar[int]
    CLASSES_OPEN_FIELD_NUMBER: _ClassVar[int]
    LABEL_EVENTS_FIELD_NUMBER: _ClassVar[int]
    AGENT_VERSION_FIELD_NUMBER: _ClassVar[int]
    AGENT_COMMIT_FIELD_NUMBER: _ClassVar[int]
    SCHEMA_VERSION_FIELD_NUMBER: _ClassVar[int]
    SAMPLES_DELETED_FIELD_NUMBER: _ClassVar[int]
    samples: int
    labeled: int
    embedded: int
    model_version: str
    strategies: _containers.RepeatedScalarFieldContainer[str]
    prior_methods: _containers.RepeatedScalarFieldContainer[str]
    classes: _containers.RepeatedScalarFieldContainer[str]
    pending_model_version: str
    pending_embedded: int
    pending_embed_rate: float
    warnings: _containers.RepeatedScalarFieldContainer[str]
    audit: PriorAudit
    classes_open: bool
    label_events: int
    agent_version: str
    agent_commit: str
    schema_version: int
    samples_deleted: int
    def __init__(self, samples: _Optional[int] = ..., labeled: _Optional[int] = ..., embedded: _Optional[int] = ..., model_version: _Optional[str] = ..., strategies: _Optional[_Iterable[str]] = ..., prior_methods: _Optional[_Iterable[str]] = ..., classes: _Optional[_Iterable[str]] = ..., pending_model_version: _Optional[str] = ..., pending_embedded: _Optional[int] = ..., pending_embed_rate: _Optional[float] = ..., warnings: _Optional[_Iterable[str]] = ..., audit: _Optional[_Union[PriorAudit, _Mapping]] = ..., classes_open: _Optional[bool] = ..., label_events: _Optional[int] = ..., agent_version: _Optional[str] = ..., agent_commit: _Optional[str] = ..., schema_version: _Optional[int] = ..., samples_deleted: _Optional[int] = ...) -> None: ...

class PriorAudit(_message.Message):
    __slots__ = ("drawn", "labelled", "current", "model_version", "confidence_level", "interval_method", "methods", "computed_at", "error", "left_out")
    DRAWN_FIELD_NUMBER: _ClassVar[int]
    LABELLED_FIELD_NUMBER: _ClassVar[int]
    CURRENT_FIELD_NUMBER: _ClassVar[int]
    MODEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    CONFIDENCE_LEVEL_FIELD_NUMBER: _ClassVar[int]
    INTERVAL_METHOD_FIELD_NUMBER: _ClassVar[int]
    METHODS_FIELD_NUMBER: _ClassVar[int]
    COMPUTED_AT_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    LEFT_OUT_FIELD_NUMBER: _ClassVar[int]
    drawn: int
    labelled: int
    current: bool
    model_version: str
    confidence_level: float
    interval_method: str
    methods: _containers.RepeatedCompositeFieldContainer[PriorAccuracy]
    computed_at: float
    error: str
    left_out: int
    def __init__(self, drawn: _Optional[int] = ..., labelled: _Optional[int] = ..., current: _Optional[bool] = ..., model_version: _Optional[str] = ..., confidence_level: _Optional[float] = ..., interval_method: _Optional[str] = ..., methods: _Optional[_Iterable[_Union[PriorAccuracy, _Mapping]]] = ..., computed_at: _Optional[float] = ..., error: _Optional[str] = ..., left_out: _Optional[int] = ...) -> None: ...

class PriorAccuracy(_message.Message):
    __slots__ = ("method", "overall", "per_class", "mean_confidence", "error")
    METHOD_FIELD_NUMBER: _ClassVar[int]
    OVERALL_FIELD_NUMBER: _ClassVar[int]
    PER_CLASS_FIELD_NUMBER: _ClassVar[int]
    MEAN_CONFIDENCE_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    method: str
    overall: Accuracy
    per_class: _containers.RepeatedCompositeFieldContainer[ClassAccuracy]
    mean_confidence: float
    error: str
    def __init__(self, method: _Optional[str] = ..., overall: _Optional[_Union[Accuracy, _Mapping]] = ..., per_class: _Optional[_Iterable[_Union[ClassAccuracy, _Mapping]]] = ..., mean_confidence: _Optional[float] = ..., error: _Optional[str] = ...) -> None: ...

class Accuracy(_message.Message):
    __slots__ = ("correct", "total", "accuracy", "low", "high")
    CORRECT_FIELD_NUMBER: _ClassVar[int]
    TOTAL_FIELD_NUMBER: _ClassVar[int]
    ACCURACY_FIELD_NUMBER: _ClassVar[int]
    LOW_FIELD_NUMBER: _ClassVar[int]
    HIGH_FIELD_NUMBER: _ClassVar[int]
    correct: int
    total: int
    accuracy: float
    low: float
    high: float
    def __init__(self, correct: _Optional[int] = ..., total: _Optional[int] = ..., accuracy: _Optional[float] = ..., low: _Optional[float] = ..., high: _Optional[float] = ...) -> None: ...

class ClassAccuracy(_message.Message):
    __slots__ = ("class_name", "accuracy")
    CLASS_NAME_FIELD_NUMBER: _ClassVar[int]
    ACCURACY_FIELD_NUMBER: _ClassVar[int]
    class_name: str
    accuracy: Accuracy
    def __init__(self, class_name: _Optional[str] = ..., accuracy: _Optional[_Union[Accuracy, _Mapping]] = ...) -> None: ...

class ListLabelsRequest(_message.Message):
    __slots__ = ("history", "after_seq", "limit")
    HISTORY_FIELD_NUMBER: _ClassVar[int]
    AFTER_SEQ_FIELD_NUMBER: _ClassVar[int]
    LIMIT_FIELD_NUMBER: _ClassVar[int]
    history: bool
    after_seq: int
    limit: int
    def __init__(self, history: _Optional[bool] = ..., after_seq: _Optional[int] = ..., limit: _Optional[int] = ...) -> None: ...

class LabelRecord(_message.Message):
    __slots__ = ("id", "label", "annotator", "time", "source", "model_version", "audit", "current", "retracted", "seq")
    ID_FIELD_NUMBER: _ClassVar[int]
    LABEL_FIELD_NUMBER: _ClassVar[int]
    ANNOTATOR_FIELD_NUMBER: _ClassVar[int]
    TIME_FIELD_NUMBER: _ClassVar[int]
    SOURCE_FIELD_NUMBER: _ClassVar[int]
    MODEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    AUDIT_FIELD_NUMBER: _ClassVar[int]
    CURRENT_FIELD_NUMBER: _ClassVar[int]
    RETRACTED_FIELD_NUMBER: _ClassVar[int]
    SEQ_FIELD_NUMBER: _ClassVar[int]
    id: str
    label: str
    annotator: str
    time: float
    source: str
    model_version: str
    audit: bool
    current: bool
    retracted: bool
    seq: int
    def __init__(self, id: _Optional[str] = ..., label: _Optional[str] = ..., annotator: _Optional[str] = ..., time: _Optional[float] = ..., source: _Optional[str] = ..., model_version: _Optional[str] = ..., audit: _Optional[bool] = ..., current: _Optional[bool] = ..., retracted: _Optional[bool] = ..., seq: _Optional[int] = ...) -> None: ...

class RetractLabelsRequest(_message.Message):
    __slots__ = ("ids", "annotator", "source", "if_current", "restore_previous")
    class IfCurrentEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    IDS_FIELD_NUMBER: _ClassVar[int]
    ANNOTATOR_FIELD_NUMBER: _ClassVar[int]
    SOURCE_FIELD_NUMBER: _ClassVar[int]
    IF_CURRENT_FIELD_NUMBER: _ClassVar[int]
    RESTORE_PREVIOUS_FIELD_NUMBER: _ClassVar[int]
    ids: _containers.RepeatedScalarFieldContainer[str]
    annotator: str
    source: str
    if_current: _containers.ScalarMap[str, str]
    restore_previous: bool
    def __init__(self, ids: _Optional[_Iterable[str]] = ..., annotator: _Optional[str] = ..., source: _Optional[str] = ..., if_current: _Optional[_Mapping[str, str]] = ..., restore_previous: _Optional[bool] = ...) -> None: ...

class RetractLabelsReply(_message.Message):
    __slots__ = ("accepted", "rejected", "overwritten", "rejected_count", "overwritten_count")
    ACCEPTED_FIELD_NUMBER: _ClassVar[int]
    REJECTED_FIELD_NUMBER: _ClassVar[int]
    OVERWRITTEN_FIELD_NUMBER: _ClassVar[int]
    REJECTED_COUNT_FIELD_NUMBER: _ClassVar[int]
    OVERWRITTEN_COUNT_FIELD_NUMBER: _ClassVar[int]
    accepted: int
    rejected: _containers.RepeatedCompositeFieldContainer[Rejection]
    overwritten: _containers.RepeatedCompositeFieldContainer[Replaced]
    rejected_count: int
    overwritten_count: int
    def __init__(self, accepted: _Optional[int] = ..., rejected: _Optional[_Iterable[_Union[Rejection, _Mapping]]] = ..., overwritten: _Optional[_Iterable[_Union[Replaced, _Mapping]]] = ..., rejected_count: _Optional[int] = ..., overwritten_count: _Optional[int] = ...) -> None: ...

class GetQueueRequest(_message.Message):
    __slots__ = ("name",)
    NAME_FIELD_NUMBER: _ClassVar[int]
    name: str
    def __init__(self, name: _Optional[str] = ...) -> None: ...

class Queue(_message.Message):
    __slots__ = ("name", "ids", "source", "strategy", "params", "model_version", "selection_id", "details", "created", "marks")
    class ParamsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    class DetailsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    class MarksEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    NAME_FIELD_NUMBER: _ClassVar[int]
    IDS_FIELD_NUMBER: _ClassVar[int]
    SOURCE_FIELD_NUMBER: _ClassVar[int]
    STRATEGY_FIELD_NUMBER: _ClassVar[int]
    PARAMS_FIELD_NUMBER: _ClassVar[int]
    MODEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    SELECTION_ID_FIELD_NUMBER: _ClassVar[int]
    DETAILS_FIELD_NUMBER: _ClassVar[int]
    CREATED_FIELD_NUMBER: _ClassVar[int]
    MARKS_FIELD_NUMBER: _ClassVar[int]
    name: str
    ids: _containers.RepeatedScalarFieldContainer[str]
    source: str
    strategy: str
    params: _containers.ScalarMap[str, str]
    model_version: str
    selection_id: str
    details: _containers.ScalarMap[str, str]
    created: float
    marks: _containers.ScalarMap[str, str]
    def __init__(self, name: _Optional[str] = ..., ids: _Optional[_Iterable[str]] = ..., source: _Optional[str] = ..., strategy: _Optional[str] = ..., params: _Optional[_Mapping[str, str]] = ..., model_version: _Optional[str] = ..., selection_id: _Optional[str] = ..., details: _Optional[_Mapping[str, str]] = ..., created: _Optional[float] = ..., marks: _Optional[_Mapping[str, str]] = ...) -> None: ...

class UpdateQueueRequest(_message.Message):
    __slots__ = ("name", "queue", "marks", "if_created")
    NAME_FIELD_NUMBER: _ClassVar[int]
    QUEUE_FIELD_NUMBER: _ClassVar[int]
    MARKS_FIELD_NUMBER: _ClassVar[int]
    IF_CREATED_FIELD_NUMBER: _ClassVar[int]
    name: str
    queue: Queue
    marks: _containers.RepeatedCompositeFieldContainer[QueueMark]
    if_created: float
    def __init__(self, name: _Optional[str] = ..., queue: _Optional[_Union[Queue, _Mapping]] = ..., marks: _Optional[_Iterable[_Union[QueueMark, _Mapping]]] = ..., if_created: _Optional[float] = ...) -> None: ...

class QueueMark(_message.Message):
    __slots__ = ("id", "mark")
    ID_FIELD_NUMBER: _ClassVar[int]
    MARK_FIELD_NUMBER: _ClassVar[int]
    id: str
    mark: str
    def __init__(self, id: _Optional[str] = ..., mark: _Optional[str] = ...) -> None: ...

class ReloadModelRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class GetMapRequest(_message.Message):
    __slots__ = ("offset", "limit", "chunk")
    OFFSET_FIELD_NUMBER: _ClassVar[int]
    LIMIT_FIELD_NUMBER: _ClassVar[int]
    CHUNK_FIELD_NUMBER: _ClassVar[int]
    offset: int
    limit: int
    chunk: int
    def __init__(self, offset: _Optional[int] = ..., limit: _Optional[int] = ..., chunk: _Optional[int] = ...) -> None: ...

class MapChunk(_message.Message):
    __slots__ = ("model_version", "state", "progress", "method", "total", "fitted", "pending", "recomputing", "message", "points", "shown_version")
    MODEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    PROGRESS_FIELD_NUMBER: _ClassVar[int]
    METHOD_FIELD_NUMBER: _ClassVar[int]
    TOTAL_FIELD_NUMBER: _ClassVar[int]
    FITTED_FIELD_NUMBER: _ClassVar[int]
    PENDING_FIELD_NUMBER: _ClassVar[int]
    RECOMPUTING_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    POINTS_FIELD_NUMBER: _ClassVar[int]
    SHOWN_VERSION_FIELD_NUMBER: _ClassVar[int]
    model_version: str
    state: str
    progress: float
    method: str
    total: int
    fitted: int
    pending: int
    recomputing: bool
    message: str
    points: _containers.RepeatedCompositeFieldContainer[MapPoint]
    shown_version: str
    def __init__(self, model_version: _Optional[str] = ..., state: _Optional[str] = ..., progress: _Optional[float] = ..., method: _Optional[str] = ..., total: _Optional[int] = ..., fitted: _Optional[int] = ..., pending: _Optional[int] = ..., recomputing: _Optional[bool] = ..., message: _Optional[str] = ..., points: _Optional[_Iterable[_Union[MapPoint, _Mapping]]] = ..., shown_version: _Optional[str] = ...) -> None: ...

class MapPoint(_message.Message):
    __slots__ = ("id", "x", "y", "label")
    ID_FIELD_NUMBER: _ClassVar[int]
    X_FIELD_NUMBER: _ClassVar[int]
    Y_FIELD_NUMBER: _ClassVar[int]
    LABEL_FIELD_NUMBER: _ClassVar[int]
    id: str
    x: float
    y: float
    label: str
    def __init__(self, id: _Optional[str] = ..., x: _Optional[float] = ..., y: _Optional[float] = ..., label: _Optional[str] = ...) -> None: ...

class GetImagesRequest(_message.Message):
    __slots__ = ("ids", "max_side", "format")
    IDS_FIELD_NUMBER: _ClassVar[int]
    MAX_SIDE_FIELD_NUMBER: _ClassVar[int]
    FORMAT_FIELD_NUMBER: _ClassVar[int]
    ids: _containers.RepeatedScalarFieldContainer[str]
    max_side: int
    format: str
    def __init__(self, ids: _Optional[_Iterable[str]] = ..., max_side: _Optional[int] = ..., format: _Optional[str] = ...) -> None: ...

class GetImagesReply(_message.Message):
    __slots__ = ("images",)
    IMAGES_FIELD_NUMBER: _ClassVar[int]
    images: _containers.RepeatedCompositeFieldContainer[Image]
    def __init__(self, images: _Optional[_Iterable[_Union[Image, _Mapping]]] = ...) -> None: ...

class Image(_message.Message):
    __slots__ = ("id", "data", "mime_type", "width", "height", "sha256", "error")
    ID_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    MIME_TYPE_FIELD_NUMBER: _ClassVar[int]
    WIDTH_FIELD_NUMBER: _ClassVar[int]
    HEIGHT_FIELD_NUMBER: _ClassVar[int]
    SHA256_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    id: str
    data: bytes
    mime_type: str
    width: int
    height: int
    sha256: str
    error: str
    def __init__(self, id: _Optional[str] = ..., data: _Optional[bytes] = ..., mime_type: _Optional[str] = ..., width: _Optional[int] = ..., height: _Optional[int] = ..., sha256: _Optional[str] = ..., error: _Optional[str] = ...) -> None: ...

class RenameClassRequest(_message.Message):
    __slots__ = ("from_class", "to_class", "annotator")
    FROM_CLASS_FIELD_NUMBER: _ClassVar[int]
    TO_CLASS_FIELD_NUMBER: _ClassVar[int]
    ANNOTATOR_FIELD_NUMBER: _ClassVar[int]
    from_class: str
    to_class: str
    annotator: str
    def __init__(self, from_class: _Optional[str] = ..., to_class: _Optional[str] = ..., annotator: _Optional[str] = ...) -> None: ...

class RenameClassReply(_message.Message):
    __slots__ = ("moved", "merged", "classes")
    MOVED_FIELD_NUMBER: _ClassVar[int]
    MERGED_FIELD_NUMBER: _ClassVar[int]
    CLASSES_FIELD_NUMBER: _ClassVar[int]
    moved: int
    merged: bool
    classes: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, moved: _Optional[int] = ..., merged: _Optional[bool] = ..., classes: _Optional[_Iterable[str]] = ...) -> None: ...

class DeleteSamplesRequest(_message.Message):
    __slots__ = ("ids", "annotator", "reason")
    IDS_FIELD_NUMBER: _ClassVar[int]
    ANNOTATOR_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    ids: _containers.RepeatedScalarFieldContainer[str]
    annotator: str
    reason: str
    def __init__(self, ids: _Optional[_Iterable[str]] = ..., annotator: _Optional[str] = ..., reason: _Optional[str] = ...) -> None: ...

class DeleteSamplesReply(_message.Message):
    __slots__ = ("accepted", "rejected", "rejected_count", "payloads_removed")
    ACCEPTED_FIELD_NUMBER: _ClassVar[int]
    REJECTED_FIELD_NUMBER: _ClassVar[int]
    REJECTED_COUNT_FIELD_NUMBER: _ClassVar[int]
    PAYLOADS_REMOVED_FIELD_NUMBER: _ClassVar[int]
    accepted: int
    rejected: _containers.RepeatedCompositeFieldContainer[Rejection]
    rejected_count: int
    payloads_removed: int
    def __init__(self, accepted: _Optional[int] = ..., rejected: _Optional[_Iterable[_Union[Rejection, _Mapping]]] = ..., rejected_count: _Optional[int] = ..., payloads_removed: _Optional[int] = ...) -> None: ...

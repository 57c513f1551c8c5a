from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Protocol(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    PROTOCOL_UNSPECIFIED: _ClassVar[Protocol]
    TCP: _ClassVar[Protocol]
    UDP: _ClassVar[Protocol]
    SCTP: _ClassVar[Protocol]
PROTOCOL_UNSPECIFIED: Protocol
TCP: Protocol
UDP: Protocol
SCTP: Protocol

class ContainerPort(_message.Message):
    __slots__ = ("name", "port", "protocol")
    NAME_FIELD_NUMBER: _ClassVar[int]
    PORT_FIELD_NUMBER: _ClassVar[int]
    PROTOCOL_FIELD_NUMBER: _ClassVar[int]
    name: str
    port: int
    protocol: Protocol
    def __init__(self, name: _Optional[str] = ..., port: _Optional[int] = ..., protocol: _Optional[_Union[Protocol, str]] = ...) -> None: ...

class Pod(_message.Message):
    __slots__ = ("cluster", "namespace", "name", "labels", "ports", "node", "ips", "creation_timestamp", "uid")
    class LabelsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    CLUSTER_FIELD_NUMBER: _ClassVar[int]
    NAMESPACE_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    LABELS_FIELD_NUMBER: _ClassVar[int]
    PORTS_FIELD_NUMBER: _ClassVar[int]
    NODE_FIELD_NUMBER: _ClassVar[int]
    IPS_FIELD_NUMBER: _ClassVar[int]
    CREATION_TIMESTAMP_FIELD_NUMBER: _ClassVar[int]
    UID_FIELD_NUMBER: _ClassVar[int]
    cluster: str
    namespace: str
    name: str
    labels: _containers.ScalarMap[str, str]
    ports: _containers.RepeatedCompositeFieldContainer[ContainerPort]
    node: str
    ips: _containers.RepeatedScalarFieldContainer[str]
    creation_timestamp: int
    uid: str
    def __init__(self, cluster: _Optional[str] = ..., namespace: _Optional[str] = ..., name: _Optional[str] = ..., labels: _Optional[_Mapping[str, str]] = ..., ports: _Optional[_Iterable[_Union[ContainerPort, _Mapping]]] = ..., node: _Optional[str] = ..., ips: _Optional[_Iterable[str]] = ..., creation_timestamp: _Optional[int] = ..., uid: _Optional[str] = ...) -> None: ...

class Namespace(_message.Message):
    __slots__ = ("cluster", "name", "labels")
    class LabelsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    CLUSTER_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    LABELS_FIELD_NUMBER: _ClassVar[int]
    cluster: str
    name: str
    labels: _containers.ScalarMap[str, str]
    def __init__(self, cluster: _Optional[str] = ..., name: _Optional[str] = ..., labels: _Optional[_Mapping[str, str]] = ...) -> None: ...

class Node(_message.Message):
    __slots__ = ("cluster", "name", "labels", "internal_ips")
    class LabelsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    CLUSTER_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    LABELS_FIELD_NUMBER: _ClassVar[int]
    INTERNAL_IPS_FIELD_NUMBER: _ClassVar[int]
    cluster: str
    name: str
    labels: _containers.ScalarMap[str, str]
    internal_ips: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, cluster: _Optional[str] = ..., name: _Optional[str] = ..., labels: _Optional[_Mapping[str, str]] = ..., internal_ips: _Optional[_Iterable[str]] = ...) -> None: ...

class ClusterStatus(_message.Message):
    __slots__ = ("cluster", "connected", "synced", "stale", "last_error", "kube_system_uid", "via")
    CLUSTER_FIELD_NUMBER: _ClassVar[int]
    CONNECTED_FIELD_NUMBER: _ClassVar[int]
    SYNCED_FIELD_NUMBER: _ClassVar[int]
    STALE_FIELD_NUMBER: _ClassVar[int]
    LAST_ERROR_FIELD_NUMBER: _ClassVar[int]
    KUBE_SYSTEM_UID_FIELD_NUMBER: _ClassVar[int]
    VIA_FIELD_NUMBER: _ClassVar[int]
    cluster: str
    connected: bool
    synced: bool
    stale: bool
    last_error: str
    kube_system_uid: str
    via: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, cluster: _Optional[str] = ..., connected: _Optional[bool] = ..., synced: _Optional[bool] = ..., stale: _Optional[bool] = ..., last_error: _Optional[str] = ..., kube_system_uid: _Optional[str] = ..., via: _Optional[_Iterable[str]] = ...) -> None: ...

class Change(_message.Message):
    __slots__ = ("pod", "namespace", "node", "cluster", "deleted")
    POD_FIELD_NUMBER: _ClassVar[int]
    NAMESPACE_FIELD_NUMBER: _ClassVar[int]
    NODE_FIELD_NUMBER: _ClassVar[int]
    CLUSTER_FIELD_NUMBER: _ClassVar[int]
    DELETED_FIELD_NUMBER: _ClassVar[int]
    pod: Pod
    namespace: Namespace
    node: Node
    cluster: ClusterStatus
    deleted: bool
    def __init__(self, pod: _Optional[_Union[Pod, _Mapping]] = ..., namespace: _Optional[_Union[Namespace, _Mapping]] = ..., node: _Optional[_Union[Node, _Mapping]] = ..., cluster: _Optional[_Union[ClusterStatus, _Mapping]] = ..., deleted: _Optional[bool] = ...) -> None: ...

class WatchRequest(_message.Message):
    __slots__ = ("epoch", "revision", "clusters", "tracker_id", "watcher_name", "exclude_clusters")
    EPOCH_FIELD_NUMBER: _ClassVar[int]
    REVISION_FIELD_NUMBER: _ClassVar[int]
    CLUSTERS_FIELD_NUMBER: _ClassVar[int]
    TRACKER_ID_FIELD_NUMBER: _ClassVar[int]
    WATCHER_NAME_FIELD_NUMBER: _ClassVar[int]
    EXCLUDE_CLUSTERS_FIELD_NUMBER: _ClassVar[int]
    epoch: str
    revision: int
    clusters: _containers.RepeatedScalarFieldContainer[str]
    tracker_id: str
    watcher_name: str
    exclude_clusters: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, epoch: _Optional[str] = ..., revision: _Optional[int] = ..., clusters: _Optional[_Iterable[str]] = ..., tracker_id: _Optional[str] = ..., watcher_name: _Optional[str] = ..., exclude_clusters: _Optional[_Iterable[str]] = ...) -> None: ...

class WatchResponse(_message.Message):
    __slots__ = ("kind", "epoch", "revision", "first_revision", "reset", "changes", "cluster")
    class Kind(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
        __slots__ = ()
        KIND_UNSPECIFIED: _ClassVar[WatchResponse.Kind]
        SNAPSHOT: _ClassVar[WatchResponse.Kind]
        CLUSTER_SYNCED: _ClassVar[WatchResponse.Kind]
        END_OF_SNAPSHOT: _ClassVar[WatchResponse.Kind]
        DELTA: _ClassVar[WatchResponse.Kind]
        PROGRESS: _ClassVar[WatchResponse.Kind]
    KIND_UNSPECIFIED: WatchResponse.Kind
    SNAPSHOT: WatchResponse.Kind
    CLUSTER_SYNCED: WatchResponse.Kind
    END_OF_SNAPSHOT: WatchResponse.Kind
    DELTA: WatchResponse.Kind
    PROGRESS: WatchResponse.Kind
    KIND_FIELD_NUMBER: _ClassVar[int]
    EPOCH_FIELD_NUMBER: _ClassVar[int]
    REVISION_FIELD_NUMBER: _ClassVar[int]
    FIRST_REVISION_FIELD_NUMBER: _ClassVar[int]
    RESET_FIELD_NUMBER: _ClassVar[int]
    CHANGES_FIELD_NUMBER: _ClassVar[int]
    CLUSTER_FIELD_NUMBER: _ClassVar[int]
    kind: WatchResponse.Kind
    epoch: str
    revision: int
    first_revision: int
    reset: bool
    changes: _containers.RepeatedCompositeFieldContainer[Change]
    cluster: str
    def __init__(self, kind: _Optional[_Union[WatchResponse.Kind, str]] = ..., epoch: _Optional[str] = ..., revision: _Optional[int] = ..., first_revision: _Optional[int] = ..., reset: _Optional[bool] = ..., changes: _Optional[_Iterable[_Union[Change, _Mapping]]] = ..., cluster: _Optional[str] = ...) -> None: ...

class GetPodByIPRequest(_message.Message):
    __slots__ = ("ip",)
    IP_FIELD_NUMBER: _ClassVar[int]
    ip: str
    def __init__(self, ip: _Optional[str] = ...) -> None: ...

class GetPodByIPResponse(_message.Message):
    __slots__ = ("pod", "namespace", "node")
    POD_FIELD_NUMBER: _ClassVar[int]
    NAMESPACE_FIELD_NUMBER: _ClassVar[int]
    NODE_FIELD_NUMBER: _ClassVar[int]
    pod: Pod
    namespace: Namespace
    node: Node
    def __init__(self, pod: _Optional[_Union[Pod, _Mapping]] = ..., namespace: _Optional[_Union[Namespace, _Mapping]] = ..., node: _Optional[_Union[Node, _Mapping]] = ...) -> None: ...

class ListClustersRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ClusterInfo(_message.Message):
    __slots__ = ("status", "pods", "namespaces", "nodes", "last_change_time")
    STATUS_FIELD_NUMBER: _ClassVar[int]
    PODS_FIELD_NUMBER: _ClassVar[int]
    NAMESPACES_FIELD_NUMBER: _ClassVar[int]
    NODES_FIELD_NUMBER: _ClassVar[int]
    LAST_CHANGE_TIME_FIELD_NUMBER: _ClassVar[int]
    status: ClusterStatus
    pods: int
    namespaces: int
    nodes: int
    last_change_time: int
    def __init__(self, status: _Optional[_Union[ClusterStatus, _Mapping]] = ..., pods: _Optional[int] = ..., namespaces: _Optional[int] = ..., nodes: _Optional[int] = ..., last_change_time: _Optional[int] = ...) -> None: ...

class ListClustersResponse(_message.Message):
    __slots__ = ("epoch", "revision", "clusters", "watchers")
    EPOCH_FIELD_NUMBER: _ClassVar[int]
    REVISION_FIELD_NUMBER: _ClassVar[int]
    CLUSTERS_FIELD_NUMBER: _ClassVar[int]
    WATCHERS_FIELD_NUMBER: _ClassVar[int]
    epoch: str
    revision: int
    clusters: _containers.RepeatedCompositeFieldContainer[ClusterInfo]
    watchers: int
    def __init__(self, epoch: _Optional[str] = ..., revision: _Optional[int] = ..., clusters: _Optional[_Iterable[_Union[ClusterInfo, _Mapping]]] = ..., watchers: _Optional[int] = ...) -> None: ...

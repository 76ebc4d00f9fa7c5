"""gRPC fuzzing shared by the services' tests: a hypothesis strategy for any request message, built
from its descriptor, and a call of any RPC by its descriptor that returns the status code.

Strings are empty, huge (100k characters), arbitrary unicode or one of the service's own names for
that field (``known``: field name -> names, so the fuzz reaches past the first lookup); numbers
include NaN, ±inf, negatives and the ends of their range; ``marginflow.common.v1.Decimal`` values
are malformed, non-finite, huge or tiny decimal strings; enums take values outside their
declaration; maps get up to four entries, keys drawn as strings are (``known[map field name]``
holds real keys), values as their type. A servicer must answer all of it with a
documented status code — never UNKNOWN (an exception escaped) or INTERNAL.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from types import MappingProxyType

import grpc
from google.protobuf import message_factory
from google.protobuf.descriptor import FieldDescriptor, MethodDescriptor, ServiceDescriptor
from hypothesis import event
from hypothesis import strategies as st

DOCUMENTED = frozenset({
    grpc.StatusCode.OK, grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.NOT_FOUND, grpc.StatusCode.UNAVAILABLE,
    grpc.StatusCode.FAILED_PRECONDITION, grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.PERMISSION_DENIED,
})

HUGE = "x" * 100_000
ODD_STRINGS = ("", " ", HUGE, "🚀 ünï\u00a0cødé", "\u0000", "a" * 129, "index:", "index:BTC", "-", "*", "%s{}",
               "../../etc", "Bearer ")
DECIMALS = ("", "0", "-0", "1", "-1", "0.00000001", "NaN", "-nan", "sNaN", "Infinity", "-inf", "1e400", "-1e400",
            "1e-400", "1e12", "1e13", "abc", "1,5", " 1 ", "1_000", "0x10", "١٢", "12345678901234567890.123456789")
_INT_RANGES = {
    FieldDescriptor.TYPE_INT32: (-2**31, 2**31 - 1), FieldDescriptor.TYPE_SINT32: (-2**31, 2**31 - 1),
    FieldDescriptor.TYPE_SFIXED32: (-2**31, 2**31 - 1), FieldDescriptor.TYPE_INT64: (-2**63, 2**63 - 1),
    FieldDescriptor.TYPE_SINT64: (-2**63, 2**63 - 1), FieldDescriptor.TYPE_SFIXED64: (-2**63, 2**63 - 1),
    FieldDescriptor.TYPE_UINT32: (0, 2**32 - 1), FieldDescriptor.TYPE_FIXED32: (0, 2**32 - 1),
    FieldDescriptor.TYPE_UINT64: (0, 2**64 - 1), FieldDescriptor.TYPE_FIXED64: (0, 2**64 - 1),
}


def _integers(lo: int, hi: int) -> st.SearchStrategy[int]:
    return st.one_of(st.integers(-3, 1100).filter(lambda v: lo <= v <= hi), st.sampled_from([lo, hi]),
                     st.integers(lo, hi))


def _scalar(field: FieldDescriptor, known: Mapping[str, Sequence[str]]) -> st.SearchStrategy:
    t = field.type
    if t == FieldDescriptor.TYPE_STRING:
        # Twice: half the strings are real names of the field (known[field name]), so a call gets
        # past the first lookup and into the servicer's deeper validation.
        names = st.sampled_from(tuple(known.get(field.name, ())) or ("",))
        return st.one_of(names, names, st.sampled_from(ODD_STRINGS), st.text(max_size=30))
    if t == FieldDescriptor.TYPE_BYTES:
        return st.binary(max_size=64)
    if t in (FieldDescriptor.TYPE_DOUBLE, FieldDescriptor.TYPE_FLOAT):
        width = 64 if t == FieldDescriptor.TYPE_DOUBLE else 32
        return st.floats(allow_nan=True, allow_infinity=True, width=width)
    if t == FieldDescriptor.TYPE_BOOL:
        return st.booleans()
    if t == FieldDescriptor.TYPE_ENUM:
        return _integers(-2**31, 2**31 - 1)
    return _integers(*_INT_RANGES[t])


@st.composite
def requests(draw, message_class, known: Mapping[str, Sequence[str]] = MappingProxyType({}), depth: int = 0):
    """An instance of ``message_class`` with each field left unset or drawn as above."""
    msg = message_class()
    if message_class.DESCRIPTOR.full_name == "marginflow.common.v1.Decimal":
        plain = st.decimals(min_value=-100_000, max_value=100_000, places=4).map(str)
        msg.value = draw(st.one_of(plain, plain, st.sampled_from(DECIMALS), st.decimals(allow_nan=True).map(str)))
        return msg
    for field in message_class.DESCRIPTOR.fields:
        if draw(st.integers(0, 4)) == 0:     # a fifth of the fields left unset (empty / zero)
            continue
        if field.message_type is not None:
            if depth >= 3:
                continue
            if field.message_type.GetOptions().map_entry:
                _draw_map(draw, getattr(msg, field.name), field, known, depth)
                continue
            sub = message_factory.GetMessageClass(field.message_type)
            if field.is_repeated:
                for value in draw(st.lists(requests(sub, known, depth + 1), max_size=3)):
                    getattr(msg, field.name).add().CopyFrom(value)
            else:
                getattr(msg, field.name).CopyFrom(draw(requests(sub, known, depth + 1)))
        elif field.is_repeated:
            getattr(msg, field.name).extend(draw(st.lists(_scalar(field, known), max_size=4)))
        else:
            setattr(msg, field.name, draw(_scalar(field, known)))
    return msg


def _draw_map(draw, target, field: FieldDescriptor, known: Mapping[str, Sequence[str]], depth: int) -> None:
    """Entries of the map ``field`` into ``target``: keys drawn as a string field named like the map
    (``known[map name]`` are real keys), values as their type is drawn anywhere else."""
    key_field = field.message_type.fields_by_name["key"]
    value_field = field.message_type.fields_by_name["value"]
    key_known = {**known, key_field.name: tuple(known.get(field.name, ()))}
    for key in draw(st.lists(_scalar(key_field, key_known), max_size=4, unique=True)):
        if value_field.message_type is not None:
            sub = message_factory.GetMessageClass(value_field.message_type)
            target[key].CopyFrom(draw(requests(sub, known, depth + 1)))
        else:
            target[key] = draw(_scalar(value_field, known))


def request_class(method: MethodDescriptor):
    return message_factory.GetMessageClass(method.input_type)


def call(channel: grpc.Channel, method: MethodDescriptor, request, metadata=(), timeout_s: float = 10.0,
         stream_wait_s: float = 0.1) -> grpc.StatusCode:
    """Call ``method`` by its descriptor; the status code it ends with.

    A server stream is read for its first message; one that is still open and quiet after
    ``stream_wait_s`` (its deadline) counts as OK: the platform's streams never end by themselves.
    """
    path = f"/{method.containing_service.full_name}/{method.name}"
    response_class = message_factory.GetMessageClass(method.output_type)
    try:
        if method.server_streaming:
            stream = channel.unary_stream(path, request_serializer=lambda m: m.SerializeToString(),
                                          response_deserializer=response_class.FromString)(
                request, timeout=stream_wait_s, metadata=metadata)
            try:
                next(stream)
            except StopIteration:
                pass
            except grpc.RpcError as exc:
                if exc.code() != grpc.StatusCode.DEADLINE_EXCEEDED:
                    raise
            stream.cancel()
        else:
            channel.unary_unary(path, request_serializer=lambda m: m.SerializeToString(),
                                response_deserializer=response_class.FromString)(
                request, timeout=timeout_s, metadata=metadata)
    except grpc.RpcError as exc:
        return exc.code()
    return grpc.StatusCode.OK


def fuzz_every_rpc(data, channel: grpc.Channel, service: ServiceDescriptor, known: Mapping[str, Sequence[str]],
                   metadata: st.SearchStrategy = st.just(())) -> dict[str, grpc.StatusCode]:
    """One drawn request to every RPC of ``service``; fails on an undocumented status code."""
    seen: dict[str, grpc.StatusCode] = {}
    for method in service.methods:
        request = data.draw(requests(request_class(method), known), label=method.name)
        meta = data.draw(metadata, label=f"{method.name} metadata")
        code = call(channel, method, request, meta)
        assert code in DOCUMENTED, f"{method.name} answered {code.name} to {str(request)[:2000]!r}"
        event(f"{method.name}: {code.name}")     # --hypothesis-show-statistics shows how deep the fuzz got
        seen[method.name] = code
    return seen

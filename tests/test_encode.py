"""The hand-written encoders of the hot path (ack, new_message, updated, message_updated,
changes) match the converter."""

from __future__ import annotations

import attrs
import orjson

from messageai.model import Message
from messageai.protocol import (
    Ack,
    Changes,
    MessageUpdated,
    NewMessage,
    Updated,
    converter,
    encode,
)


def _message(attachments: list[str] | None = None) -> Message:
    return Message(
        id="m_1",
        conversation_id="c_1",
        seq=7,
        sender_id="u_1",
        client_id="6f1c",
        body='hi "there" \u00e9\n',
        attachments=attachments or [],
        created_at=1764150000123,
    )


def _changed() -> Message:
    # Every v1.1 field away from its default.
    return attrs.evolve(
        _message(attachments=["md_1"]),
        reply_to=3,
        mentions=["u_2", "u_3"],
        edited_at=1764150009000,
        deleted_at=1764150010000,
        reactions={"\U0001f44d": ["u_1", "u_2"], ":+1:": ["u_3"]},
        rev=57,
    )


def test_fast_encoders_match_the_converter_byte_for_byte() -> None:
    frames: list[NewMessage | Ack | Updated | MessageUpdated | Changes] = [
        Changes(conversation_id="c_1", messages=[], last_rev=0, has_more=False),
        Changes(
            conversation_id="c_1",
            messages=[_message(), _changed()],
            last_rev=57,
            has_more=True,
            req="p2",
        ),
        NewMessage(_changed()),
        Ack(client_id="6f1c", message=_changed(), duplicate=False, req=3),
        Updated(_message()),
        Updated(_changed(), req="r9"),
        Updated(_changed(), req=0),
        MessageUpdated(_message()),
        MessageUpdated(_changed()),
        NewMessage(_message()),
        NewMessage(_message(attachments=["md_1", "md_2"])),
        Ack(client_id="6f1c", message=_message(), duplicate=False),
        Ack(client_id="6f1c", message=_message(), duplicate=True, req="r1"),
        Ack(client_id="6f1c", message=_message(), duplicate=False, req=0),
    ]
    for frame in frames:
        assert encode(frame) == orjson.dumps(converter.unstructure(frame)).decode()


def test_message_fields_are_all_encoded() -> None:
    # A new Message field must be added to protocol._message_dict as well.
    names = [a.name for a in attrs.fields(Message)]
    assert list(orjson.loads(encode(NewMessage(_message())))["message"]) == names


def test_rate_limited_error_frame_is_byte_identical_to_the_old_hand_built_one() -> None:
    from messageai.protocol import Error

    message = "too many messages: retry later"
    # What live/guard.rate_limited_frame wrote before the Error frame carried the field.
    assert (
        encode(Error(code="rate_limited", message=message, retry_after_ms=1234, req=7))
        == '{"type":"error","code":"rate_limited","message":"too many messages: retry later",'
        '"retry_after_ms":1234,"req":7}'
    )
    assert (
        encode(Error(code="rate_limited", message=message, retry_after_ms=1))
        == '{"type":"error","code":"rate_limited","message":"too many messages: retry later",'
        '"retry_after_ms":1}'
    )
    # Other errors do not grow the field.
    assert (
        encode(Error(code="bad_request", message="x", req="a"))
        == '{"type":"error","code":"bad_request","message":"x","req":"a"}'
    )

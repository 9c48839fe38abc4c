"""Action-item extraction (`messageai.ai.action_items`) through the real endpoint client
against the loopback fake endpoint: what the request carries, and the strict reading
of the model's tool call (garbage is an error that changes nothing; seqs it was not
shown and owners that are not members are dropped)."""

from __future__ import annotations

from typing import Any

import pytest

from messageai.ai.action_items import (
    TOOL,
    ExtractionError,
    Source,
    parse,
    request_messages,
)
from messageai.ai.endpoint import Completion, Endpoint, ToolCall
from messageai.config import AiConfig
from messageai.store.action_items import Extracted
from tests.llm import fake_llm, text, tools

WINDOW = [
    Source(4, "Ada", 1_700_000_000_000, "Bob, can you send the slides by Friday?"),
    Source(5, "Bob", 1_700_000_060_000, "Sure, I'll send them Thursday"),
    Source(6, "Ada", 1_700_000_120_000, ""),  # a tombstone: never sent
]
MEMBERS = [("Ada", "u_ada"), ("Bob", "u_bob")]


async def _extract(reply: Any) -> list[Extracted]:
    async with fake_llm() as llm:
        llm.script(reply)
        endpoint = Endpoint(AiConfig(base_url=llm.url, model="m"), None)
        try:
            completion = await endpoint.complete(
                request_messages(WINDOW, [name for name, _ in MEMBERS]), [TOOL]
            )
        finally:
            await endpoint.aclose()
        (body,) = llm.bodies
    sent = str(body["messages"])
    assert "[4]" in sent and "Bob, can you send the slides" in sent and "[6]" not in sent
    assert "u_ada" not in sent and "u_bob" not in sent  # names, never ids
    assert body["tools"] == [TOOL]
    return parse(completion, [s.seq for s in WINDOW], MEMBERS)


async def test_a_tool_call_split_across_chunks_becomes_items_with_members_and_seqs() -> None:
    items = {
        "items": [
            {"text": " Send the slides ", "owner": "bob", "due": "Thursday", "sources": [5, 4]},
            {"text": "Invented", "owner": "Zed", "due": None, "sources": [99]},
            {"text": "Unowned", "owner": "Zed", "sources": [4, 99]},
        ]
    }
    found = await _extract(tools(("record_action_items", items), split=7))
    assert found == [
        Extracted("Send the slides", "u_bob", "Thursday", (4, 5)),
        Extracted("Unowned", None, None, (4,)),
    ]


@pytest.mark.parametrize(
    ("arguments", "says"),
    [
        ({"items": "none"}, "not a list"),
        ({"items": [{"text": "x", "sources": [4]}] * 51}, "at most 50"),
        ({"items": ["x"]}, "item 0 is not an object"),
        ({"items": [{"text": "", "sources": [4]}]}, "text"),
        ({"items": [{"text": "x" * 501, "sources": [4]}]}, "text"),
        ({"items": [{"text": "x", "owner": 3, "sources": [4]}]}, "owner"),
        ({"items": [{"text": "x", "due": "d" * 101, "sources": [4]}]}, "due"),
        ({"items": [{"text": "x", "sources": ["4"]}]}, "sources"),
        ({"items": [{"text": "x", "sources": [True]}]}, "sources"),
        ({"items": [{"text": "x"}]}, "sources"),
    ],
)
async def test_a_malformed_answer_is_an_error_naming_no_content(
    arguments: dict[str, Any], says: str
) -> None:
    with pytest.raises(ExtractionError, match=says) as caught:
        await _extract(tools(("record_action_items", arguments)))
    assert "slides" not in str(caught.value)


async def test_an_answer_without_the_tool_call_is_an_error() -> None:
    with pytest.raises(ExtractionError, match="0 record_action_items calls"):
        await _extract(text("Here are your action items: ..."))


def test_an_owner_name_two_members_share_is_no_owner() -> None:
    call = ToolCall(
        "c", "record_action_items", {"items": [{"text": "x", "owner": "Sam", "sources": [1]}]}
    )
    found = parse(Completion("", [call], 1), [1], [("Sam", "u_1"), ("sam", "u_2")])
    assert found == [Extracted("x", None, None, (1,))]

"""The assistant over one conversation (PROTOCOL.md v1.1 "AI over a conversation"):
the switch, `ask`, `catch-up` and the AI log. Called by `rest.ai` and the WebSocket
session (`ai_ask`); the server makes one at start-up.

Checks run in the contract's order: the fields, membership, an endpoint at all, the
switch. Every read and write of the conversation's file goes through its actor
(`conversations.commands.Ai`): the switch and the log live in that file, ordered with
its messages. Nothing here is on the ack path: an actor only runs the short reads and
one log row per request; the endpoint is awaited by the asker's task alone.

Consent by construction: a request's content comes from one conversation, read after
its switch was seen on; each request is preceded by a log row naming its seqs; a
`PUT` turning the switch off cancels every answer of that conversation still running
before it is answered (`_flights`), so no request starts after it and no result of
one in flight is given (`forbidden`). The tools take no conversation id.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any, TypeVar

import apsw
import attrs
import orjson
import trio

from messageai.ai.cache import AnswerCache, Budget, normalise
from messageai.ai.endpoint import Endpoint, EndpointError, ToolCall
from messageai.ai.tools import SYSTEM_ASK, SYSTEM_CATCH_UP, TOOLS, citations, line
from messageai.config import AiConfig
from messageai.conversations.commands import Ai
from messageai.conversations.registry import Registry
from messageai.errors import BadRequest, Forbidden, NotFound, RateLimited, Unavailable
from messageai.model import Message, now_ms
from messageai.protocol import AiSettingsChanged
from messageai.services.directory import Directory
from messageai.services.search import Search
from messageai.store import ai as sql
from messageai.store import conversation as messages_sql
from messageai.store import directory as directory_sql

log = logging.getLogger(__name__)

T = TypeVar("T")

MAX_QUESTION_CHARS = 2000
MAX_CONVERSATION_ID = 64
# Words of a question searched one by one when the whole question finds too little,
# and the newest messages always shown beside what search found.
MAX_QUERY_WORDS = 6
RECENT_MESSAGES = 10
SEARCH_LIMIT = 20
# The longest a single message body is shown to the model.
MAX_LINE_CHARS = 2000
LOG_DEFAULT_LIMIT = 100
_STOP = frozenset(
    [
        "the",
        "a",
        "an",
        "and",
        "or",
        "but",
        "is",
        "are",
        "was",
        "were",
        "be",
        "been",
        "to",
        "of",
        "in",
        "on",
        "at",
        "for",
        "with",
        "what",
        "when",
        "where",
        "who",
        "why",
        "how",
        "did",
        "does",
        "do",
        "can",
        "could",
        "would",
        "should",
        "will",
        "about",
        "from",
        "this",
        "that",
        "there",
        "have",
        "has",
        "had",
        "our",
        "your",
        "their",
        "its",
        "any",
        "some",
    ]
)


@attrs.frozen
class Answer:
    answer: str
    citations: list[int]
    cached: bool


@attrs.frozen
class CatchUp:
    summary: str | None
    citations: list[int]
    from_seq: int | None
    to_seq: int | None


class _Flight:
    """One answer being made; a switch turned off cancels it and marks it dropped."""

    __slots__ = ("dropped", "scope")

    def __init__(self) -> None:
        self.scope = trio.CancelScope()
        self.dropped = False


def check_question(question: object) -> str:
    if not isinstance(question, str):
        raise BadRequest("question: required string")
    text = question.strip()
    if not 1 <= len(text) <= MAX_QUESTION_CHARS:
        raise BadRequest(f"question: must be 1 to {MAX_QUESTION_CHARS} characters after trimming")
    return text


def _announce(cid: str) -> Callable[[tuple[sql.Settings, bool]], AiSettingsChanged | None]:
    def frame(result: tuple[sql.Settings, bool]) -> AiSettingsChanged | None:
        value, changed = result
        if not changed:
            return None
        return AiSettingsChanged(cid, value.enabled, value.proactive, value.changed_by)

    return frame


class Assistant:
    def __init__(
        self,
        config: AiConfig,
        directory: Directory,
        registry: Registry,
        search: Search,
        endpoint: Endpoint | None,
    ) -> None:
        self._config = config
        self._directory = directory
        self._registry = registry
        self._search = search
        self._endpoint = endpoint
        self._cache = AnswerCache(config.cache_entries, config.cache_ttl_seconds)
        self._budget = Budget(
            config.daily_tokens_per_user, lambda day: directory.read(directory_sql.ai_spent_on, day)
        )
        self._flights: dict[str, set[_Flight]] = {}
        # Edits and deletes committed anywhere so far: an answer made while one
        # happened is not cached (it may hold a body that is gone now).
        self._changes = 0

    @property
    def available(self) -> bool:
        return self._endpoint is not None

    # ------------------------------------------------------------ checks

    def _check_member(self, conversation_id: str, user_id: str) -> None:
        check_member(self._directory, conversation_id, user_id)

    def _require_endpoint(self) -> Endpoint:
        if self._endpoint is None:
            raise Unavailable("this server has no AI endpoint configured")
        return self._endpoint

    async def _state(self, conversation_id: str, user_id: str | None) -> tuple[sql.Settings, int]:
        def read(conn: apsw.Connection, _user: str) -> tuple[sql.Settings, int]:
            return sql.settings(conn), messages_sql.last_rev(conn)

        return await self._call(conversation_id, user_id, Ai(read, internal=user_id is None))

    async def _call(self, conversation_id: str, user_id: str | None, op: Ai[T]) -> T:
        return await self._registry.call(conversation_id, user_id or "", op)

    # ------------------------------------------------------------ settings and log

    async def settings(self, user_id: str, conversation_id: str) -> sql.Settings:
        self._check_member(conversation_id, user_id)
        state, _ = await self._state(conversation_id, user_id)
        return state

    async def put_settings(
        self, user_id: str, conversation_id: str, enabled: object, proactive: object
    ) -> sql.Settings:
        """Change the switch; returns once it is committed and, if it went off, once
        every answer of the conversation still running has been cancelled."""
        if not isinstance(enabled, bool):
            raise BadRequest("enabled: required boolean")
        if proactive is not None and not isinstance(proactive, bool):
            raise BadRequest("proactive: must be a boolean")
        self._check_member(conversation_id, user_id)

        def change(conn: apsw.Connection, user: str) -> tuple[sql.Settings, bool]:
            old = sql.settings(conn)
            want = proactive if isinstance(proactive, bool) else old.proactive
            if old.enabled == enabled and old.proactive == want:
                return old, False  # a PUT that changes nothing is no change
            new = sql.Settings(enabled, want, user, now_ms())
            sql.set_settings(conn, new)
            return new, True

        op = Ai(change, writes=True, announce=_announce(conversation_id))
        value, _ = await self._registry.call(conversation_id, user_id, op)
        if not value.enabled:
            for flight in self._flights.get(conversation_id, ()):
                flight.dropped = True
                flight.scope.cancel()
        return value

    async def log_entries(
        self, user_id: str, conversation_id: str, limit: int
    ) -> list[sql.LogEntry]:
        self._check_member(conversation_id, user_id)
        limit = min(limit, sql.MAX_LOG_PAGE)

        def read(conn: apsw.Connection, _user: str) -> list[sql.LogEntry]:
            return sql.log(conn, limit)

        return await self._registry.call(conversation_id, user_id, Ai(read))

    def conversation_gone(self, conversation_id: str) -> None:
        """The operator deleted the conversation: no cached answer of it is kept."""
        self._cache.forget_conversation(conversation_id)

    def message_changed(self, message: Message) -> None:
        """An edit or delete committed (the actor calls this): answers that used it go."""
        self._changes += 1
        self._cache.forget_seq(message.conversation_id, message.seq)

    # ------------------------------------------------------------ ask

    async def ask(
        self,
        user_id: str,
        conversation_id: str,
        question: object,
        on_delta: Callable[[str], None] | None = None,
    ) -> Answer:
        text = check_question(question)
        self._check_member(conversation_id, user_id)
        endpoint = self._require_endpoint()
        key_text = normalise(text)
        async with self._flight(conversation_id) as flight:
            settings, last_rev = await self._state(conversation_id, user_id)
            self._require_on(settings)
            key = (conversation_id, key_text, endpoint.model, last_rev)
            cached = self._cache.get(key)
            if cached is not None:
                return Answer(cached.answer, list(cached.citations), True)
            changes = self._changes
            run = _Run(self, endpoint, conversation_id, user_id, "ask", flight)
            answer, cited = await run.within_timeout(run.ask(text, on_delta))
            if changes == self._changes:
                self._cache.put(key, answer, cited, run.given)
            return Answer(answer, cited, False)
        raise Unavailable("the answer was cancelled")  # only our own cancel gets here

    async def catch_up(self, user_id: str, conversation_id: str) -> CatchUp:
        self._check_member(conversation_id, user_id)
        endpoint = self._require_endpoint()
        async with self._flight(conversation_id) as flight:
            settings, _ = await self._state(conversation_id, user_id)
            self._require_on(settings)
            limit = self._config.max_context_messages

            def read(conn: apsw.Connection, user: str) -> list[Message]:
                return messages_sql.live_unread(conn, conversation_id, user, limit)

            unread = await self._registry.call(conversation_id, user_id, Ai(read))
            if not unread:
                return CatchUp(None, [], None, None)
            run = _Run(self, endpoint, conversation_id, user_id, "catch_up", flight)
            summary, cited = await run.within_timeout(run.catch_up(unread))
            # The range summarised: what the request carried (within the size bounds).
            shown = sorted(run.given) or [unread[0].seq, unread[-1].seq]
            return CatchUp(summary, cited, shown[0], shown[-1])
        raise Unavailable("the answer was cancelled")

    async def background(
        self, conversation_id: str, action: str, messages: list[Message], instruction: str
    ) -> tuple[str, list[int]]:
        """For background jobs (action items, proactive scheduling): one consented
        request over `messages` of this conversation with `instruction` as the system
        prompt; logged with `user_id` null. Returns the text and its citations (seqs of
        `messages`, live). Forbidden when the switch is off (or goes off meanwhile),
        Unavailable without an endpoint or on any endpoint failure. No budget, no cache."""
        endpoint = self._require_endpoint()
        async with self._flight(conversation_id) as flight:
            settings, _ = await self._state(conversation_id, None)
            self._require_on(settings)
            run = _Run(self, endpoint, conversation_id, None, action, flight)
            return await run.within_timeout(run.once(instruction, messages))
        raise Unavailable("the answer was cancelled")

    def _require_on(self, settings: sql.Settings) -> None:
        if not settings.enabled:
            raise Forbidden("the assistant is switched off in this conversation")

    def _flight(self, conversation_id: str) -> _FlightScope:
        return _FlightScope(self._flights, conversation_id)

    # ------------------------------------------------------------ for _Run

    def names(self, user_ids: list[str]) -> dict[str, str]:
        out = {}
        for user_id in user_ids:
            user = self._directory.user(user_id)
            out[user_id] = user.display_name if user is not None else "someone"
        return out


class _FlightScope:
    """Registers a `_Flight` for the block; a switch turned off meanwhile answers
    `forbidden` (the result is dropped)."""

    def __init__(self, flights: dict[str, set[_Flight]], conversation_id: str) -> None:
        self._flights = flights
        self._id = conversation_id
        self._flight = _Flight()

    async def __aenter__(self) -> _Flight:
        self._flights.setdefault(self._id, set()).add(self._flight)
        self._flight.scope.__enter__()
        return self._flight

    async def __aexit__(self, *exc: object) -> bool:
        flight = self._flight
        suppressed = flight.scope.__exit__(*exc)  # type: ignore[arg-type]
        active = self._flights.get(self._id)
        if active is not None:
            active.discard(flight)
            if not active:
                del self._flights[self._id]
        if flight.dropped:
            raise Forbidden("the assistant was switched off in this conversation")
        return bool(suppressed)


class _Run:
    """One answer: its requests, the seqs they carried, the tools bound to one
    conversation and one asker."""

    def __init__(
        self,
        assistant: Assistant,
        endpoint: Endpoint,
        conversation_id: str,
        user_id: str | None,
        action: str,
        flight: _Flight,
    ) -> None:
        self._a = assistant
        self._endpoint = endpoint
        self._cid = conversation_id
        self._user = user_id
        self._action = action
        self._flight = flight
        self._config = assistant._config
        self.given: set[int] = set()
        self._chars = 0

    async def within_timeout(self, work: Any) -> tuple[str, list[int]]:
        result: tuple[str, list[int]] | None = None
        with trio.move_on_after(self._config.timeout_seconds):
            result = await work
        if result is None:
            if self._flight.dropped:
                raise Forbidden("the assistant was switched off in this conversation")
            raise Unavailable("the AI endpoint did not answer in time")
        return result

    # -------------------------------------------- what the endpoint sees

    def _lines(self, messages: list[Message]) -> str:
        """Messages as lines, within the request's bounds; records their seqs."""
        names = self._a.names(list({m.sender_id for m in messages}))
        out = []
        for message in sorted(messages, key=lambda m: m.seq):
            if len(self.given) >= self._config.max_context_messages:
                break
            text = line(message, names[message.sender_id], MAX_LINE_CHARS)
            if self._chars + len(text) > self._config.max_context_chars:
                break
            self._chars += len(text)
            self.given.add(message.seq)
            out.append(text)
        return "\n".join(out) if out else "(no messages)"

    async def _call(self, work: Callable[[apsw.Connection, str], T], writes: bool = False) -> T:
        op = Ai(work, writes=writes, internal=self._user is None)
        return await self._a._call(self._cid, self._user, op)

    async def _request(
        self,
        messages: list[dict[str, Any]],
        tools: list[dict[str, Any]] | None,
        on_delta: Callable[[str], None] | None,
    ) -> Any:
        user = self._user
        wait = self._a._budget.seconds_left(user) if user is not None else 0
        if wait:
            raise RateLimited("your daily AI budget is spent", retry_after_seconds=wait)
        entry = sql.LogEntry(now_ms(), user, self._action, sorted(self.given))

        def write(conn: apsw.Connection, _user: str) -> None:
            sql.add_log(conn, entry)

        # The log row is committed before the request leaves.
        await self._call(write, writes=True)
        completion = await self._endpoint.complete(messages, tools, on_delta)
        if user is not None:
            day = self._a._budget.spend(user, completion.tokens)
            spent = max(0, completion.tokens)
            await self._a._directory.write(directory_sql.add_ai_spent, user, day, spent)
        return completion

    def _asker(self) -> str:
        # Search (retrieval and the search tool) is an ask's, always a member's.
        assert self._user is not None, "search without an asker"
        return self._user

    async def _retrieve(self, question: str) -> list[Message]:
        found: dict[int, Message] = {}
        queries = [question]
        words = [
            w
            for w in dict.fromkeys("".join(c if c.isalnum() else " " for c in question).split())
            if len(w) >= 3 and w.casefold() not in _STOP
        ]
        queries += words[:MAX_QUERY_WORDS]
        for q in queries:
            answer = await self._a._search.search(
                self._asker(), q[:256], self._cid, SEARCH_LIMIT, "keyword"
            )
            for hit in answer.results:
                found.setdefault(hit.message.seq, hit.message)
            if len(found) >= SEARCH_LIMIT:
                break

        def recent(conn: apsw.Connection, _user: str) -> list[Message]:
            return messages_sql.live_recent(conn, self._cid, RECENT_MESSAGES)

        for message in await self._call(recent):
            found.setdefault(message.seq, message)
        return list(found.values())

    async def _live_citations(self, text: str, allowed: set[int]) -> list[int]:
        named = [seq for seq in citations(text) if seq in allowed]
        if not named:
            return []

        def live(conn: apsw.Connection, _user: str) -> list[Message]:
            return messages_sql.live_by_seq(conn, self._cid, named)

        alive = {m.seq for m in await self._call(live)}
        return [seq for seq in named if seq in alive]

    # -------------------------------------------- the two actions

    async def ask(
        self, question: str, on_delta: Callable[[str], None] | None
    ) -> tuple[str, list[int]]:
        context = self._lines(await self._retrieve(question))
        messages: list[dict[str, Any]] = [
            {"role": "system", "content": SYSTEM_ASK},
            {
                "role": "user",
                "content": f"Messages found for this question:\n{context}\n\nQuestion: {question}",
            },
        ]
        rounds = self._config.max_tool_rounds
        for round_ in range(rounds + 1):
            tools = TOOLS if round_ < rounds else None
            completion = await self._request(messages, tools, on_delta)
            if not completion.tool_calls:
                answer = completion.content.strip()
                if not answer:
                    raise EndpointError("the AI endpoint gave an empty answer")
                return answer, await self._live_citations(answer, self.given)
            if tools is None:
                raise EndpointError("the AI endpoint called tools it was not given")
            messages.append(
                {
                    "role": "assistant",
                    "content": completion.content or None,
                    "tool_calls": [
                        {
                            "id": call.id,
                            "type": "function",
                            "function": {"name": call.name, "arguments": _json(call.arguments)},
                        }
                        for call in completion.tool_calls
                    ],
                }
            )
            for call in completion.tool_calls:
                result = await self._tool(call)
                messages.append({"role": "tool", "tool_call_id": call.id, "content": result})
        raise EndpointError("the AI endpoint did not answer within its tool rounds")

    async def _tool(self, call: ToolCall) -> str:
        """Run one tool on this conversation only. Arguments that do not fit the tool
        are the endpoint's garbage: `unavailable`."""
        args = call.arguments
        if call.name == "search_messages":
            query = args.get("query")
            if not isinstance(query, str) or not query.strip():
                raise EndpointError("the AI endpoint's tool arguments are malformed")
            answer = await self._a._search.search(
                self._asker(), query.strip()[:256], self._cid, SEARCH_LIMIT, "keyword"
            )
            return self._lines([hit.message for hit in answer.results])
        if call.name == "read_messages":
            low, high = args.get("from_seq"), args.get("to_seq")
            if type(low) is not int or type(high) is not int or low > high or low < 0:
                raise EndpointError("the AI endpoint's tool arguments are malformed")
            limit = self._config.max_context_messages
            low_, high_ = low, min(high, low + limit)

            def read(conn: apsw.Connection, _user: str) -> list[Message]:
                return messages_sql.live_range(conn, self._cid, low_, high_, limit)

            return self._lines(await self._call(read))
        if call.name == "list_members":
            ids = self._a._directory.member_ids(self._cid)
            return "\n".join(sorted(self._a.names(ids).values()))
        raise EndpointError("the AI endpoint called an unknown tool")

    async def catch_up(self, unread: list[Message]) -> tuple[str, list[int]]:
        return await self.once(SYSTEM_CATCH_UP, unread, "Unread messages")

    async def once(
        self, system: str, shown: list[Message], heading: str = "Messages"
    ) -> tuple[str, list[int]]:
        """One request without tools over `shown`; citations among them."""
        context = self._lines(shown)
        messages: list[dict[str, Any]] = [
            {"role": "system", "content": system},
            {"role": "user", "content": f"{heading}:\n{context}"},
        ]
        completion = await self._request(messages, None, None)
        summary = completion.content.strip()
        if not summary:
            raise EndpointError("the AI endpoint gave an empty answer")
        return summary, await self._live_citations(summary, self.given)


def _json(value: dict[str, Any]) -> str:
    return orjson.dumps(value).decode()


def check_member(directory: Directory, conversation_id: str, user_id: str) -> None:
    """The AI routes' membership check, in the contract's order: an unknown (or
    over-long) id is `not_found`, a conversation the caller is not in `forbidden`.
    Shared by the assistant and the action-item board."""
    record = (
        directory.conversation(conversation_id)
        if len(conversation_id) <= MAX_CONVERSATION_ID
        else None
    )
    if record is None:
        raise NotFound("no such conversation")
    if not directory.is_member(conversation_id, user_id):
        raise Forbidden("you are not a member of this conversation")

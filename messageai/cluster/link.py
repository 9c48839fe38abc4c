"""Node links: a session on one node reaches a conversation owned by another (SCALE.md §5).

One TCP connection per direction between two nodes, opened lazily by the node that has
something to forward (`Links.route`, called by `Registry.submit` for a conversation
without a local actor) and accepted by the owner (`Links.serve`, the listener of
`cluster.node`). Frames are a 4-byte big-endian length and one JSON object (`k` says
what it is): the forwarding side sends a session's command (`cmd`: session id, user,
`req`, the operation), a REST or internal call (`call`: a number the answer comes back
with) and a session's end (`gone`); the owner sends frames for a session (`f`, with
the `req` when the frame answers one), a subscription's start and end (`s+`, `s-`),
call answers (`ret`, `err`) and `moved` (not the owner any more: the lease moved).

On the owner, each remote session is one `RemotePeer`, a `Peer` like a local session
in the actor's subscriber set: the actor's rules (the sender's own connection skipped,
a removed member's subscriptions ended, one answer per `req`) hold unchanged. The
forwarding node hands the frames to its sessions' own queues, so a slow client is
closed (1013) by its own session as always.

Both sides queue at most `cluster.link_queue_frames` frames (and `MAX_QUEUED_BYTES`);
one more closes the link. A link that ends, however, ends what it carried on the
forwarding side: a session subscribed through it is closed with 1013 (the client
reconnects, resubscribes and catches up from its seq), a command waiting for its
answer gets `unavailable` (nothing was acked, a resend is safe), a call fails with
`unavailable`. A `moved` or `not_owner` answer drops the cached owner and the command
is routed again, once.
"""

from __future__ import annotations

import contextlib
import hmac
import logging
import struct
from collections import Counter, deque
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, Protocol

import orjson
import trio

from messageai.cluster.codec import dump_error, dump_op, dump_value, load_error, load_op, load_value
from messageai.cluster.node import NotOwner
from messageai.conversations.commands import (
    Command,
    MembersChanged,
    Peer,
    Waiter,
    answered,
    answering,
)
from messageai.errors import CLOSE_TRY_AGAIN_LATER, MessageAIError, Unavailable
from messageai.protocol import Error, Req, ServerFrame, encode

if TYPE_CHECKING:
    from messageai.cluster.node import Node
    from messageai.config import Config
    from messageai.conversations.registry import Registry

log = logging.getLogger(__name__)

_LENGTH = struct.Struct(">I")
# The largest frame either side accepts: a history page of 200 long messages fits.
MAX_FRAME_BYTES = 32 << 20
MAX_QUEUED_BYTES = 64 << 20
RECEIVE_BYTES = 256 * 1024
# Calls (REST, internal) one link runs on the owner at once; one more is `unavailable`.
MAX_CALLS_PER_LINK = 256


class LocalSession(Peer, Protocol):
    """What the forwarding node needs of its own session: a `Peer` it can close."""

    def close(self, code: int, reason: str) -> None: ...


class LinkBroken(Exception):
    """The link closed (or overflowed); what it carried is answered `unavailable`."""


class Link:
    """One framed TCP connection: a bounded send queue drained by `run`'s writer, and
    the objects of each read handed to `handle` as a list."""

    def __init__(self, stream: trio.SocketStream, max_frames: int, name: str) -> None:
        self._stream = stream
        self._max_frames = max_frames
        self.name = name
        self._queue: deque[bytes] = deque()
        self._queued_bytes = 0
        self._wake = trio.Event()
        self.closed = trio.Event()

    def send(self, obj: dict[str, Any]) -> None:
        """Queue one object without waiting; an overflow closes the link (LinkBroken)."""
        if self.closed.is_set():
            raise LinkBroken(f"link {self.name} is closed")
        body = orjson.dumps(obj)
        if len(self._queue) >= self._max_frames or self._queued_bytes > MAX_QUEUED_BYTES:
            log.warning("node link %s overflowed; closing it", self.name)
            self.close()
            raise LinkBroken(f"link {self.name} overflowed")
        self._queue.append(_LENGTH.pack(len(body)) + body)
        self._queued_bytes += len(body) + 4
        self._wake.set()

    def close(self) -> None:
        self.closed.set()
        self._wake.set()

    async def run(self, handle: Callable[[list[dict[str, Any]]], Awaitable[None]]) -> None:
        """Write and read until either side closes; then close the stream."""
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._writer)
                nursery.start_soon(self._reader, handle)
                await self.closed.wait()
                nursery.cancel_scope.cancel()
        finally:
            self.closed.set()
            await trio.aclose_forcefully(self._stream)

    async def _writer(self) -> None:
        try:
            while not self.closed.is_set():
                await self._wake.wait()
                self._wake = trio.Event()
                while self._queue:
                    chunk = []
                    size = 0
                    while self._queue and size < RECEIVE_BYTES:
                        frame = self._queue.popleft()
                        self._queued_bytes -= len(frame)
                        chunk.append(frame)
                        size += len(frame)
                    await self._stream.send_all(b"".join(chunk))
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
            pass
        finally:
            self.close()

    async def _reader(self, handle: Callable[[list[dict[str, Any]]], Awaitable[None]]) -> None:
        buffer = bytearray()
        try:
            while True:
                data = await self._stream.receive_some(RECEIVE_BYTES)
                if not data:
                    return
                buffer += data
                objects = []
                while len(buffer) >= 4:
                    (size,) = _LENGTH.unpack_from(buffer)
                    if size > MAX_FRAME_BYTES:
                        log.warning("node link %s: a %d-byte frame; closing", self.name, size)
                        return
                    if len(buffer) < 4 + size:
                        break
                    objects.append(orjson.loads(bytes(buffer[4 : 4 + size])))
                    del buffer[: 4 + size]
                if objects:
                    await handle(objects)
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
            pass
        finally:
            self.close()


class RemotePeer:
    """On the owner: one session of another node, as the actors see it."""

    def __init__(self, link: Link, session_id: int, user_id: str) -> None:
        self._link = link
        self.session_id = session_id
        self.user_id = user_id
        self.subscriptions: set[str] = set()
        self.ended = False

    def _send(self, obj: dict[str, Any]) -> None:
        if self.ended:
            return
        try:
            self._link.send(obj)
        except LinkBroken:
            self.ended = True

    def push(self, text: str) -> None:
        self._send({"k": "f", "s": self.session_id, "f": text})

    def push_frame(self, frame: ServerFrame) -> None:
        req = getattr(frame, "req", None)
        obj: dict[str, Any] = {"k": "f", "s": self.session_id, "f": encode(frame)}
        if req is not None:
            obj["r"] = req
        self._send(obj)

    def subscription_started(self, conversation_id: str) -> bool:
        if self.ended:
            return False
        self.subscriptions.add(conversation_id)
        self._send({"k": "s+", "s": self.session_id, "c": conversation_id})
        return not self.ended

    def subscription_ended(self, conversation_id: str) -> None:
        self.subscriptions.discard(conversation_id)
        self._send({"k": "s-", "s": self.session_id, "c": conversation_id})

    def flush(self) -> None:
        """The link's writer sends what was queued; nothing to do per batch."""

    def lost(self) -> None:
        """The conversation this session was subscribed to left this node (`node
        drain`): its node closes it with 1013, and the client catches up elsewhere."""
        self._send({"k": "lost", "s": self.session_id})
        self.ended = True


class _Outbound:
    """The forwarding side of the link to one owner node."""

    def __init__(self, link: Link) -> None:
        self.link = link
        self.sessions: dict[int, LocalSession] = {}
        # Requests sent and not answered yet, per session; and the subscriptions the
        # owner started for them (a broken link closes those sessions).
        self.inflight: dict[int, Counter[Req]] = {}
        self.subscribed: dict[int, set[str]] = {}
        self.calls: dict[int, tuple[str, Command, bool]] = {}


class Links:
    """This node's links, both ways; see the module."""

    def __init__(self, config: Config, node: Node, registry: Registry, secret: str) -> None:
        self._config = config
        # Presented by this node in its `hello`, and asked of every inbound link.
        self._secret = secret.encode()
        self._node = node
        self._registry = registry
        self._out: dict[str, _Outbound] = {}
        self._opening: dict[str, trio.Event] = {}
        self._session_ids: dict[LocalSession, int] = {}
        self._next_id = 0
        self._nursery: trio.Nursery | None = None

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Hold the nursery the outbound links run in, until cancelled."""
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            task_status.started()
            await trio.sleep_forever()

    # ------------------------------------------------------------ forwarding side

    async def route(self, conversation_id: str, command: Command, *, forwarded: bool) -> bool:
        """Forward the command if another node owns the conversation (True); False when
        this node owns it now and the registry runs it here."""
        if self._registry.closing:
            raise Unavailable("the server is shutting down")
        owner = await self._node.owner(conversation_id, forwarded=forwarded)
        if owner is None:
            return False
        return await self._forward(owner, conversation_id, command, retried=False)

    async def _forward(
        self,
        owner: str,
        conversation_id: str,
        command: Command,
        *,
        retried: bool,
        take_over: bool = True,
    ) -> bool:
        if command.guard is not None:
            raise Unavailable("a guarded post runs only on the conversation's owner node")
        op = dump_op(command.op)
        try:
            out = await self._outbound(owner)
        except OSError:
            # The owner (or the node placement preferred) does not answer: take the
            # lease here if nobody holds it (SCALE.md §3), else the command waits for
            # the lease to expire, as the client's retry.
            self._node.forget_owner(conversation_id, owner)
            if take_over and await self._node.take(conversation_id) is None:
                return False
            raise Unavailable(f"node {owner} does not answer; please retry") from None
        obj: dict[str, Any] = {"c": conversation_id, "u": command.user_id, "o": op}
        if retried:
            obj["t"] = 1
        if command.waiter is not None:
            self._next_id += 1
            call_id = self._next_id
            out.calls[call_id] = (conversation_id, command, retried)
            obj.update(k="call", i=call_id, x=command.internal)
        else:
            session = command.peer
            assert session is not None
            session_id = self._session_id(session)  # type: ignore[arg-type]
            out.sessions[session_id] = session  # type: ignore[assignment]
            obj.update(k="cmd", s=session_id)
            if command.req is not None:
                obj["r"] = command.req
                out.inflight.setdefault(session_id, Counter())[command.req] += 1
        try:
            out.link.send(obj)
        except LinkBroken as exc:
            raise Unavailable("the link to the conversation's node broke; please retry") from exc
        return True

    def _session_id(self, session: LocalSession) -> int:
        session_id = self._session_ids.get(session)
        if session_id is None:
            self._next_id += 1
            session_id = self._session_ids[session] = self._next_id
        return session_id

    async def _outbound(self, owner: str) -> _Outbound:
        while True:
            out = self._out.get(owner)
            if out is not None and not out.link.closed.is_set():
                return out
            opening = self._opening.get(owner)
            if opening is None:
                break
            await opening.wait()
        opening = self._opening[owner] = trio.Event()
        try:
            address = await self._address(owner)
            host, _, port = address.rpartition(":")
            with trio.fail_after(self._config.cluster.link_connect_timeout_seconds):
                stream = await trio.open_tcp_stream(host.strip("[]"), int(port))
        except trio.TooSlowError as exc:
            raise OSError(f"node {owner}: link connect timed out") from exc
        finally:
            del self._opening[owner]
            opening.set()
        name = f"{self._node.node_id}->{owner}"
        link = Link(stream, self._config.cluster.link_queue_frames, name)
        out = self._out[owner] = _Outbound(link)
        link.send({"k": "hello", "n": self._node.node_id, "a": self._secret.decode()})
        assert self._nursery is not None
        try:
            self._nursery.start_soon(self._run_outbound, owner, out, name=f"link to {owner}")
        except RuntimeError:  # the node is stopping
            del self._out[owner]
            await trio.aclose_forcefully(stream)
            raise OSError("this node is stopping") from None
        return out

    async def _address(self, owner: str) -> str:
        address = self._node.nodes.get(owner)
        if address is None and self._node.redis is not None:
            with trio.move_on_after(1.0):
                address = await self._node.redis.get(f"messageai:node:{owner}")
        if address is None:
            raise OSError(f"node {owner} is not alive")
        return address

    async def _run_outbound(self, owner: str, out: _Outbound) -> None:
        async def handle(objects: list[dict[str, Any]]) -> None:
            # Never awaits: the sessions pushed to by one read write once, at its end.
            pushed = answering()
            try:
                for obj in objects:
                    self._from_owner(owner, out, obj)
            finally:
                answered(pushed)

        try:
            await out.link.run(handle)
        finally:
            if self._out.get(owner) is out:
                del self._out[owner]
            self._broken(owner, out)

    def _from_owner(self, owner: str, out: _Outbound, obj: dict[str, Any]) -> None:
        kind = obj["k"]
        if kind == "f":
            session_id = obj["s"]
            session = out.sessions.get(session_id)
            if session is None:
                return
            session.push(obj["f"])
            req = obj.get("r")
            if req is not None:
                waiting = out.inflight.get(session_id)
                if waiting is not None and waiting[req] > 0:
                    waiting[req] -= 1
                    if waiting[req] == 0:
                        del waiting[req]
        elif kind == "s+":
            session = out.sessions.get(obj["s"])
            if session is not None and session.subscription_started(obj["c"]):
                out.subscribed.setdefault(obj["s"], set()).add(obj["c"])
            else:
                self._send_gone(out, obj["s"])
        elif kind == "s-":
            session = out.sessions.get(obj["s"])
            subscribed = out.subscribed.get(obj["s"])
            if subscribed is not None:
                subscribed.discard(obj["c"])
            if session is not None:
                session.subscription_ended(obj["c"])
        elif kind in ("ret", "err"):
            entry = out.calls.pop(obj["i"], None)
            if entry is None:
                return
            conversation_id, command, retried = entry
            waiter = command.waiter
            assert waiter is not None
            if kind == "ret":
                waiter.set(load_value(obj["v"]))
            elif obj["v"][0] == NotOwner.link_code and not retried:
                self._node.forget_owner(conversation_id, owner)
                self._spawn_retry(conversation_id, command)
            else:
                waiter.fail(load_error(obj["v"]))
        elif kind == "moved":
            self._moved(owner, out, obj)
        elif kind == "lost":
            session = out.sessions.get(obj["s"])
            self._send_gone(out, obj["s"])
            if session is not None:
                session.close(CLOSE_TRY_AGAIN_LATER, "conversation moved: reconnect")

    def _moved(self, owner: str, out: _Outbound, obj: dict[str, Any]) -> None:
        # The owner's lease moved under a session's command: route it again, once.
        session_id, conversation_id = obj["s"], obj["c"]
        session = out.sessions.get(session_id)
        req = obj.get("r")
        if req is not None:
            waiting = out.inflight.get(session_id)
            if waiting is not None and waiting[req] > 0:
                waiting[req] -= 1
        self._node.forget_owner(conversation_id, owner)
        if session is None:
            return
        if obj.get("t"):
            session.push_frame(
                Error(code="unavailable", message="the conversation moved; please retry", req=req)
            )
            return
        command = Command(op=load_op(obj["o"]), user_id=obj["u"], req=req, peer=session)
        self._spawn_retry(conversation_id, command)

    def _spawn_retry(self, conversation_id: str, command: Command) -> None:
        async def retry() -> None:
            try:
                owner = await self._node.owner(conversation_id)
                if owner is None or not await self._forward(
                    owner, conversation_id, command, retried=True
                ):
                    await self._registry.submit(conversation_id, command, forwarded=True)
            except MessageAIError as exc:
                if command.waiter is not None:
                    command.waiter.fail(exc)
                elif command.peer is not None:
                    command.peer.push_frame(
                        Error(code=exc.code, message=exc.message, req=command.req)
                    )

        assert self._nursery is not None
        self._nursery.start_soon(retry)

    def _send_gone(self, out: _Outbound, session_id: int) -> None:
        out.sessions.pop(session_id, None)
        out.inflight.pop(session_id, None)
        out.subscribed.pop(session_id, None)
        with contextlib.suppress(LinkBroken):
            out.link.send({"k": "gone", "s": session_id})

    def _broken(self, owner: str, out: _Outbound) -> None:
        if self._registry.closing:
            log.info("node link to %s closed (shutdown)", owner)
        else:
            log.warning("node link to %s ended", owner)
        for session_id, session in out.sessions.items():
            if out.subscribed.get(session_id):
                # Its live frames stopped: the client reconnects, resubscribes and
                # catches up, as after any restart.
                session.close(CLOSE_TRY_AGAIN_LATER, "node link lost: reconnect")
                continue
            for req, count in (out.inflight.get(session_id) or Counter()).items():
                for _ in range(count):
                    session.push_frame(
                        Error(
                            code="unavailable",
                            message="the conversation's node is unreachable; please retry",
                            req=req,
                        )
                    )
        for conversation_id, command, _retried in out.calls.values():
            self._node.forget_owner(conversation_id, owner)
            assert command.waiter is not None
            command.waiter.fail(Unavailable("the conversation's node is unreachable; retry"))
        out.sessions.clear()
        out.calls.clear()

    def session_gone(self, session: object) -> None:
        """A local session closed: the owners it used forget it (the registry's
        `unsubscribe_everywhere`)."""
        session_id = self._session_ids.pop(session, None)  # type: ignore[call-overload]
        if session_id is None:
            return
        for out in self._out.values():
            if session_id in out.sessions:
                self._send_gone(out, session_id)

    async def members_changed(
        self, conversation_id: str, added: tuple[str, ...], removed: tuple[str, ...]
    ) -> None:
        """Tell the conversation's owner, if another node runs its actor now, of a
        membership change made here (no owner: the next actor reads the directory)."""
        owner = await self._node.current_owner(conversation_id)
        if owner is None or owner == self._node.node_id:
            return
        waiter: Waiter[None] = Waiter()
        command = Command(op=MembersChanged(added, removed), user_id="", waiter=waiter)
        with trio.move_on_after(self._config.conversations.call_timeout_seconds):
            # Never taking the lease: the change is for a live actor only.
            await self._forward(owner, conversation_id, command, retried=False, take_over=False)
            await waiter.wait()
            return
        raise Unavailable("the conversation's node did not answer in time; please retry")

    # ------------------------------------------------------------ owner side

    async def serve(self, stream: trio.SocketStream) -> None:
        """One inbound link (the node's listener): commands and calls for the
        conversations this node owns."""
        try:
            host, port = stream.socket.getpeername()[:2]
            peer_name = f"{host}:{port}"
        except OSError:
            peer_name = "?"
        link = Link(stream, self._config.cluster.link_queue_frames, "inbound")
        peers: dict[int, RemotePeer] = {}
        calls = 0
        # Nothing is taken from a link before its `hello` showed the cluster's secret.
        trusted = False
        async with trio.open_nursery() as nursery:

            async def run_call(obj: dict[str, Any]) -> None:
                nonlocal calls
                try:
                    await self._call(link, obj)
                finally:
                    calls -= 1

            async def handle(objects: list[dict[str, Any]]) -> None:
                nonlocal calls, trusted
                for obj in objects:
                    kind = obj["k"]
                    if not trusted:
                        secret = str(obj.get("a", "")).encode() if kind == "hello" else b""
                        if not hmac.compare_digest(secret, self._secret):
                            log.warning("node link from %s: no valid hello; closed", peer_name)
                            link.close()
                            return
                        trusted = True
                        link.name = f"{obj.get('n')}->{self._node.node_id}"
                    elif kind == "cmd":
                        await self._command(link, peers, obj)
                    elif kind == "call":
                        if calls >= MAX_CALLS_PER_LINK:
                            busy = Unavailable("too many calls on this node link; please retry")
                            _send(link, {"k": "err", "i": obj["i"], "v": dump_error(busy)})
                            continue
                        calls += 1
                        nursery.start_soon(run_call, obj)
                    elif kind == "gone":
                        peer = peers.pop(obj["s"], None)
                        if peer is not None:
                            self._drop(peer)

            try:
                await link.run(handle)
            finally:
                for peer in peers.values():
                    self._drop(peer)
                nursery.cancel_scope.cancel()

    def _drop(self, peer: RemotePeer) -> None:
        peer.ended = True
        self._registry.unsubscribe_everywhere(peer, set(peer.subscriptions))

    async def _command(self, link: Link, peers: dict[int, RemotePeer], obj: dict[str, Any]) -> None:
        session_id, conversation_id = obj["s"], obj["c"]
        peer = peers.get(session_id)
        if peer is None:
            peer = peers[session_id] = RemotePeer(link, session_id, obj["u"])
        req = obj.get("r")
        command = Command(op=load_op(obj["o"]), user_id=peer.user_id, req=req, peer=peer)
        try:
            await self._registry.submit(conversation_id, command, forwarded=True)
        except NotOwner:
            moved: dict[str, Any] = {k: obj[k] for k in ("s", "c", "u", "o", "r", "t") if k in obj}
            moved["k"] = "moved"
            _send(link, moved)
        except MessageAIError as exc:
            peer.push_frame(Error(code=exc.code, message=exc.message, req=req))

    async def _call(self, link: Link, obj: dict[str, Any]) -> None:
        conversation_id = obj["c"]
        op = load_op(obj["o"])
        try:
            with trio.fail_after(self._config.conversations.call_timeout_seconds):
                if isinstance(op, MembersChanged):
                    # Only to a live actor: without one, the next reads the directory.
                    await self._registry.members_changed(conversation_id, op.added, op.removed)
                    value: object = None
                else:
                    waiter: Waiter[Any] = Waiter()
                    command = Command(op=op, user_id=obj["u"], waiter=waiter, internal=obj["x"])
                    await self._registry.submit(conversation_id, command, forwarded=True)
                    value = await waiter.wait()
            _send(link, {"k": "ret", "i": obj["i"], "v": dump_value(value)})
        except MessageAIError as exc:
            _send(link, {"k": "err", "i": obj["i"], "v": dump_error(exc)})
        except trio.TooSlowError:
            late = Unavailable("the conversation did not answer in time; please retry")
            _send(link, {"k": "err", "i": obj["i"], "v": dump_error(late)})


def _send(link: Link, obj: dict[str, Any]) -> None:
    with contextlib.suppress(LinkBroken):
        link.send(obj)

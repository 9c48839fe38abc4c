"""The admin channel in a data directory whose path is longer than a Unix socket
address allows: the server still starts and the operator's request reaches it."""

from __future__ import annotations

import os
from pathlib import Path

import trio

from messageai.ops import channel


async def test_a_data_directory_longer_than_a_socket_address_still_serves(tmp_path: Path) -> None:
    data_dir = tmp_path / ("d" * 60) / ("e" * 60)
    data_dir.mkdir(parents=True)
    assert len(os.fsencode(data_dir / channel.SOCKET)) > channel.MAX_SOCKET_PATH
    heard: list[dict[str, object]] = []

    async def handle(body: dict[str, object]) -> str:
        heard.append(body)
        return "done"

    server = channel.Channel(data_dir, handle)
    server.lock()
    try:
        async with trio.open_nursery() as nursery:
            await nursery.start(server.run)
            assert (data_dir / channel.SOCKET).is_socket()
            assert (data_dir / channel.SOCKET).stat().st_mode & 0o777 == 0o600
            said = await trio.to_thread.run_sync(channel.request, data_dir, {"op": "ping"})
            nursery.cancel_scope.cancel()
    finally:
        server.close()
    assert said == "done"
    assert heard == [{"op": "ping"}]
    assert not (data_dir / channel.SOCKET).exists()

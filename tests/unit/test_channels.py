"""The per-step channel (deployments/common/channel.py, serve_app/channels.py), both sides in
one event loop: handle calls are tasks that push what a replica method yields, as Serve's
streaming calls do, and cancel it when cancelled."""

import asyncio
import random
from types import SimpleNamespace

import pytest

from deployments.common import channel
from deployments.common.channel import Moved, Outbox
from deployments.common.contracts import ChunkFrame, ErrorFrame, UsageFrame
from serve_app.channels import ChannelLost, Channels


class Call:
    """A streaming handle call: runs ``agen`` in a task, as a replica would."""

    def __init__(self, agen) -> None:
        self.queue: asyncio.Queue = asyncio.Queue()
        self.task = asyncio.ensure_future(self._run(agen))

    async def _run(self, agen) -> None:
        try:
            async for item in agen:
                self.queue.put_nowait(("item", item))
            self.queue.put_nowait(("end", None))
        except Exception as exc:
            self.queue.put_nowait(("error", exc))

    def __aiter__(self):
        return self

    async def __anext__(self):
        kind, value = await self.queue.get()
        if kind == "item":
            return value
        if kind == "error":
            raise value
        raise StopAsyncIteration

    def cancel(self) -> None:
        self.task.cancel()


class Steps:
    """An engine's steps: every waiting stream gets its next token at the same step."""

    def __init__(self) -> None:
        self.event = asyncio.Event()
        self.count = 0

    async def next(self) -> None:
        await self.event.wait()

    async def run(self, period_s: float = 0.002) -> None:
        while True:
            await asyncio.sleep(period_s)
            event, self.event = self.event, asyncio.Event()
            self.count += 1
            event.set()


class Replica:
    """A model replica: ``relay`` over a scripted engine, and its ``Outbox``."""

    def __init__(self, steps: Steps, name: str = "r1") -> None:
        self.outbox = Outbox(name)
        self.steps = steps
        self.aborted: list[str] = []
        self.channel_messages = 0
        self.fail_after: int | None = None

    async def engine(self, request_id: str, tokens: int):
        try:
            for i in range(tokens):
                await self.steps.next()
                if self.fail_after is not None and i == self.fail_after:
                    raise RuntimeError("replica died")
                yield ChunkFrame(f'{{"id":"{request_id}","i":{i}}}')
            yield UsageFrame({"completion_tokens": float(tokens)})
        except (GeneratorExit, asyncio.CancelledError):
            self.aborted.append(request_id)
            raise

    async def channel(self, caller: str):
        async for message in self.outbox.channel(caller):
            self.channel_messages += 1
            yield message


class Handle:
    """A deployment's handle: each call goes to a replica picked at random, as Serve's
    power-of-two choices would (seeded)."""

    def __init__(self, *replicas: Replica) -> None:
        self.replicas = replicas
        self.random = random.Random(0)
        self.generate = SimpleNamespace(remote=self._generate)
        self.channel = SimpleNamespace(remote=self._channel)

    def options(self, **_):
        return self

    def _next(self) -> Replica:
        return self.random.choice(self.replicas)

    def _generate(self, request_id: str, tokens: int, caller: str | None = None) -> Call:
        replica = self._next()
        frames = replica.engine(request_id, tokens)
        return Call(replica.outbox.relay(frames, request_id, caller))

    def _channel(self, caller: str) -> Call:
        return Call(self._next().channel(caller))


def start(channels: Channels, handle: Handle, request_id: str, tokens: int):
    return channels.call(
        handle, lambda caller: handle.generate.remote(request_id, tokens, caller=caller), request_id
    )


async def read_all(call) -> list:
    return [frame async for frame in call]


async def connected(steps: Steps) -> tuple[Replica, Handle, Channels]:
    """A replica, its handle and an ingress's channels, with a channel between them open
    (a first stream asked for it)."""
    replica = Replica(steps)
    handle, channels = Handle(replica), Channels()
    await read_all(start(channels, handle, "a", 2))
    while replica.channel_messages == 0:
        await asyncio.sleep(0.001)
    return replica, handle, channels


def run(test):
    async def main():
        steps = Steps()
        stepper = asyncio.ensure_future(steps.run())
        try:
            await asyncio.wait_for(test(steps), 10)
        finally:
            stepper.cancel()

    asyncio.run(main())


def chunks(request_id: str, tokens: int) -> list[str]:
    return [f'{{"id":"{request_id}","i":{i}}}' for i in range(tokens)]


def test_streams_move_to_one_channel_message_per_step():
    """The first stream tells the ingress which replica to open a channel to and stays on its
    call; later streams come on the channel, every frame in order, a message per step."""

    async def test(steps: Steps) -> None:
        replica = Replica(steps)
        handle, channels = Handle(replica), Channels()
        call = start(channels, handle, "a", 40)  # moves once the channel it asked for is open
        first = await read_all(call)
        assert call.moved
        assert [f.data for f in first[:-1]] == chunks("a", 40)
        assert first[-1] == UsageFrame({"completion_tokens": 40.0})
        calls = [start(channels, handle, f"s{i}", 20) for i in range(8)]
        at, messages = steps.count, replica.channel_messages
        results = await asyncio.gather(*(read_all(call) for call in calls))
        assert all(call.moved for call in calls)
        for i, frames in enumerate(results):
            assert [f.data for f in frames[:-1]] == chunks(f"s{i}", 20)
            assert frames[-1] == UsageFrame({"completion_tokens": 20.0})
        # 8 streams x 19 chunks after their first: about one message per step, not per chunk
        assert replica.channel_messages - messages <= steps.count - at + 2 < 8 * 19
        assert not channels._queues and not channels._on

    run(test)


def test_cancelling_a_moved_stream_aborts_its_generation():
    async def test(steps: Steps) -> None:
        replica, handle, channels = await connected(steps)
        call = start(channels, handle, "b", 1000)
        assert isinstance(await call.__anext__(), ChunkFrame)
        assert isinstance(await call.__anext__(), ChunkFrame)
        assert call.moved
        call.cancel()
        for _ in range(100):
            if "b" in replica.aborted:
                break
            await asyncio.sleep(0.002)
        assert replica.aborted == ["b"]
        assert not channels._queues

    run(test)


def test_a_replica_error_ends_a_moved_stream():
    async def test(steps: Steps) -> None:
        replica, handle, channels = await connected(steps)
        replica.fail_after = 3
        call = start(channels, handle, "b", 10)
        with pytest.raises(RuntimeError, match="replica died"):
            await read_all(call)

    run(test)


def test_a_lost_channel_ends_the_streams_on_it():
    async def test(steps: Steps) -> None:
        replica, handle, channels = await connected(steps)
        call = start(channels, handle, "b", 1000)
        await call.__anext__()
        await call.__anext__()
        channels._open[replica.outbox.replica].cancel()  # the channel call ends
        with pytest.raises(ChannelLost):
            await read_all(call)
        call.cancel()
        assert not channels._open  # the next stream opens a new one

    run(test)


def test_errors_and_whole_answers_stay_on_the_call():
    async def test(steps: Steps) -> None:
        outbox, channels = Outbox("r1"), Channels()

        async def error():
            yield ErrorFrame(400, "bad", param="x")

        frames = [f async for f in outbox.relay(error(), "e", channels.caller)]
        assert frames == [ErrorFrame(400, "bad", param="x")]

        async def one_chunk():
            yield ChunkFrame("{}")

        frames = [f async for f in outbox.relay(one_chunk(), "c", channels.caller)]
        assert frames == [ChunkFrame("{}"), Moved("r1", False)]
        frames = [f async for f in outbox.relay(one_chunk(), "c", None)]  # no caller: as before
        assert frames == [ChunkFrame("{}")]

    run(test)


def test_channels_reach_every_replica_once():
    """Channel calls go wherever Serve sends them: the ingress keeps one per replica (a
    replica ends a second one at once) and its streams on both replicas move."""

    async def test(steps: Steps) -> None:
        one, two = Replica(steps, "r1"), Replica(steps, "r2")
        handle, channels = Handle(one, two), Channels()
        for i in range(50):  # each stream that stays on its call tries another channel
            if len(channels._open) == 2:
                break
            await read_all(start(channels, handle, f"warm{i}", 3))
            await asyncio.sleep(0.01)
        assert sorted(channels._open) == ["r1", "r2"]
        assert len(one.outbox._boxes) == len(two.outbox._boxes) == 1
        calls = [start(channels, handle, f"s{i}", 10) for i in range(4)]
        results = await asyncio.gather(*(read_all(call) for call in calls))
        assert all(call.moved for call in calls)
        assert [len(frames) for frames in results] == [11] * 4
        duplicate = [m async for m in one.outbox.channel(channels.caller)]
        assert duplicate == ["r1"] and len(one.outbox._boxes) == 1

    run(test)


def test_an_idle_channel_ends_and_opens_again(monkeypatch):
    """A channel no stream uses ends (its replica may be stopping and waits for its ongoing
    requests); one a slow stream still uses does not."""
    monkeypatch.setattr(channel, "IDLE_CLOSE_S", 0.05)

    async def test(steps: Steps) -> None:
        replica, handle, channels = await connected(steps)
        slow = Replica(steps)
        slow.outbox = replica.outbox

        async def engine(request_id: str, tokens: int):
            for i in range(tokens):
                yield ChunkFrame(str(i))
                await asyncio.sleep(0.1)  # quiet for longer than IDLE_CLOSE_S

        slow.engine = engine
        call = start(channels, Handle(slow), "b", 4)
        assert [f.data for f in await read_all(call)] == ["0", "1", "2", "3"]
        assert call.moved
        for _ in range(100):
            if not channels._open:
                break
            await asyncio.sleep(0.01)
        assert not channels._open and not replica.outbox._boxes
        call = start(channels, handle, "c", 20)
        assert [f.data for f in (await read_all(call))[:-1]] == chunks("c", 20)
        assert call.moved and channels._open  # a new channel, which it moved to

    run(test)

"""A live Pipecat pipeline for tests that must act between frames (restart a server, wait).

``run_test`` sends a fixed list of frames; these tests need to wait for a transcript, then do
something, then send more. The pipeline is real (PipelineWorker + WorkerRunner), the frames go
through every processor, and a collector at the end records what comes out each way.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable

from pipecat.frames.frames import EndFrame, Frame, InputAudioRawFrame, StartFrame
from pipecat.pipeline.pipeline import Pipeline
from pipecat.pipeline.worker import PipelineParams, PipelineWorker
from pipecat.processors.frame_processor import FrameDirection, FrameProcessor
from pipecat.workers.runner import WorkerRunner

from tests.asr_server.tiny import chunks


class Collector(FrameProcessor):
    """Records every frame reaching it (downstream) or leaving the head (upstream)."""

    def __init__(self, direction: FrameDirection) -> None:
        super().__init__(enable_direct_mode=True)
        self.direction = direction
        self.frames: list[Frame] = []

    async def process_frame(self, frame: Frame, direction: FrameDirection):
        await super().process_frame(frame, direction)
        if direction == self.direction and not isinstance(frame, StartFrame):
            self.frames.append(frame)
        await self.push_frame(frame, direction)


class LivePipeline:
    """``async with LivePipeline([stt, ...]) as live: await live.send(...)``."""

    def __init__(
        self,
        processors: list[FrameProcessor],
        params: PipelineParams | None = None,
        *,
        start_timeout: float = 10.0,
    ):
        self.start_timeout = start_timeout
        self.up = Collector(FrameDirection.UPSTREAM)
        self.down = Collector(FrameDirection.DOWNSTREAM)
        self.worker = PipelineWorker(
            Pipeline([self.up, *processors, self.down]),
            params=params or PipelineParams(),
            cancel_on_idle_timeout=False,
        )
        self._task: asyncio.Task | None = None

    async def __aenter__(self) -> LivePipeline:
        started = asyncio.Event()

        @self.worker.event_handler("on_pipeline_started")
        async def _started(worker, frame):
            started.set()

        runner = WorkerRunner(handle_sigint=False)
        await runner.add_workers(self.worker)
        self._task = asyncio.create_task(runner.run())
        try:
            await asyncio.wait_for(started.wait(), self.start_timeout)
        except BaseException:
            # Leave nothing running behind a failed start (it would hang the loop's shutdown).
            await self.worker.cancel()
            self._task.cancel()
            with contextlib.suppress(BaseException):
                await asyncio.wait_for(self._task, 10)
            raise
        return self

    async def __aexit__(self, *exc) -> None:
        await self.worker.queue_frame(EndFrame())
        await asyncio.wait_for(self._task, 20)

    async def send(self, *frames: Frame) -> None:
        for frame in frames:
            await self.worker.queue_frame(frame)

    async def send_audio(self, pcm: bytes, *, speed: float = 4.0, ms: int = 20) -> None:
        """Send PCM16 as 20 ms InputAudioRawFrames at ``speed`` x real time."""
        start = time.monotonic()
        for i, piece in enumerate(chunks(pcm, ms)):
            await self.worker.queue_frame(
                InputAudioRawFrame(audio=piece, sample_rate=16000, num_channels=1)
            )
            delay = start + (i + 1) * ms / 1000 / speed - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)

    def of(self, kind: type, *, up: bool = False) -> list:
        frames = self.up.frames if up else self.down.frames
        return [f for f in frames if isinstance(f, kind)]

    async def wait_for(self, predicate: Callable[[], bool], timeout: float = 10.0) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if predicate():
                return True
            await asyncio.sleep(0.02)
        return predicate()

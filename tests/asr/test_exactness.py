"""Streaming output equals NeMo's offline encoding and decoding of the same audio."""

from __future__ import annotations

import collections
import threading
import time

import numpy as np
import pytest
import torch

from services.asr.engine import TranscriptEvent

from .conftest import SR, Offline, babble, live_steps_for, make_joint_emit, wait_steps, wait_until

CHUNK_FOR_R = {0: 80, 1: 160, 6: 560, 13: 1120}
ATOL = 1e-4  # DESIGN.md measured ~1.5e-6; batching and CPU kernels may add a little


class Tap:
    """Collects the encoder outputs the engine produces, per stream and kind."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.out: dict[tuple[str, str], list[torch.Tensor]] = collections.defaultdict(list)

    def __call__(self, stream_id: str, kind: str, encoded: torch.Tensor) -> None:
        with self.lock:
            self.out[(stream_id, kind)].append(encoded.float().clone())

    def frames(self, stream_id: str, kind: str = "live") -> int:
        with self.lock:
            return sum(t.shape[1] for t in self.out[(stream_id, kind)])

    def joined(self, stream_id: str, kind: str = "live") -> torch.Tensor:
        with self.lock:
            return torch.cat(self.out[(stream_id, kind)], dim=1)

    def clear(self, stream_id: str) -> None:
        with self.lock:
            for key in [k for k in self.out if k[0] == stream_id]:
                del self.out[key]


def push_in_pieces(stream, audio: np.ndarray, seed: int = 0) -> None:
    """Push audio in irregular pieces (5-50 ms), as int16 bytes or float arrays."""
    rng = np.random.default_rng(seed)
    i = 0
    while i < len(audio):
        n = int(rng.integers(80, 800))
        piece = audio[i : i + n]
        if rng.random() < 0.5:
            stream.push_audio(piece)
        else:
            stream.push_audio(piece.astype(np.float32))
        i += n


def expected_out_frames(engine, mel_frames: int) -> int:
    runner = engine._runner
    if mel_frames == 0:
        return 0
    return runner.out_per_step * (1 + (mel_frames - runner.chunk_first) // runner.chunk)


@pytest.mark.parametrize("encoder", ["fast", "nemo"])
@pytest.mark.parametrize("right_context", [0, 1, 6, 13])
def test_streaming_equals_offline(make_engine, offline, right_context, encoder):
    """Live encoder output and text equal the offline encoder on the same audio, every mode.

    At 80 ms (R=0) this needs the second step to see only real mel frames: fed the 9-frame
    pre-encode cache with 8 zero frames from before the stream began (NeMo's own streaming
    loop), the output differs from offline by up to ~0.016 from frame 1 on.
    """
    engine = make_engine(chunk_ms=CHUNK_FOR_R[right_context], encoder=encoder)
    tap = Tap()
    engine._encoder_tap = tap
    audio = babble(4.0, seed=right_context)
    events: list[TranscriptEvent] = []
    stream = engine.open_stream(on_event=events.append)
    push_in_pieces(stream, audio, seed=right_context)

    mel_frames = live_steps_for(engine, len(audio))
    n_out = expected_out_frames(engine, mel_frames)
    wait_until(lambda: tap.frames(stream.id) == n_out, what="live steps")
    wait_steps(engine, stream, mel_frames, "commit")

    streamed = tap.joined(stream.id)
    reference = offline.encode(audio, right_context)
    assert streamed.shape[1] == n_out > 0
    diff = (streamed - reference[:, :n_out]).abs().max().item()
    assert diff < ATOL, f"max |streaming - offline| = {diff}"

    expected_text = offline.decode(reference[:, :n_out])
    assert expected_text, "the tiny model should emit text (see conftest)"
    assert events and events[-1].text == expected_text
    assert stream._state.text.text == expected_text
    # Partials are whole-utterance texts that only grow, with a moving audio end.
    assert all(not e.is_final for e in events)
    assert [e.audio_end_s for e in events] == sorted(e.audio_end_s for e in events)
    assert 0 < events[-1].audio_end_s <= mel_frames * 160 / SR


@pytest.mark.parametrize("right_context", [0, 1, 6, 13])
def test_finalize_equals_offline_of_padded_utterance(make_engine, offline, right_context):
    engine = make_engine(chunk_ms=CHUNK_FOR_R[right_context])
    tap = Tap()
    engine._encoder_tap = tap
    audio = babble(2.3, seed=10 + right_context)[: int(2.3 * SR) - 77]
    stream = engine.open_stream()
    push_in_pieces(stream, audio)
    final = stream.finalize_sync(timeout=30)

    padded = np.zeros(engine.padded_length(len(audio)), np.float32)
    padded[: len(audio)] = audio
    assert len(padded) >= len(audio)
    reference = offline.encode(padded, right_context)
    assert final.is_final and final.utterance == 0
    assert final.text == offline.decode(reference)
    assert final.audio_end_s == pytest.approx(len(audio) / SR)
    assert final.latency_s is not None and final.latency_s >= 0

    # Live part (up to where the final took over) + final part = offline encoding of the padded
    # audio. Live steps go on after the final (the final never touched the live state).
    final_part = tap.joined(stream.id, "final")
    n_live = reference.shape[1] - final_part.shape[1]
    assert n_live >= 0 and n_live % engine._runner.out_per_step == 0
    live = tap.joined(stream.id)[:, :n_live] if n_live else reference[:, :0]
    streamed = torch.cat([live, final_part], dim=1)
    assert (streamed - reference).abs().max().item() < ATOL


def test_finalize_of_nothing_and_of_less_than_a_chunk(make_engine, offline):
    engine = make_engine(chunk_ms=160)
    for n in (0, 1000):
        stream = engine.open_stream()
        audio = babble(1.0, seed=3)[:n]
        if n:
            stream.push_audio(audio)
        final = stream.finalize_sync(timeout=30)
        padded = np.zeros(engine.padded_length(n), np.float32)
        padded[:n] = audio
        assert final.text == offline.transcript(padded, 1)
        stream.close()


def test_speculative_final_discarded_when_speech_resumes(make_engine, offline):
    """finalize() does not disturb the live stream; reset() starts the next utterance fresh."""
    engine = make_engine(chunk_ms=160)
    stream = engine.open_stream()
    first, more = babble(1.5, seed=21), babble(1.7, seed=22)

    def padded(x: np.ndarray) -> np.ndarray:
        out = np.zeros(engine.padded_length(len(x)), np.float32)
        out[: len(x)] = x
        return out

    push_in_pieces(stream, first)
    speculative = stream.finalize_sync(timeout=30)
    assert speculative.text == offline.transcript(padded(first), 1)

    # Speech resumes: the final is ignored and the stream continues as if it never happened.
    push_in_pieces(stream, more)
    both = np.concatenate([first, more])
    mel_frames = live_steps_for(engine, len(both))
    wait_steps(engine, stream, mel_frames)
    n_out = expected_out_frames(engine, mel_frames)
    assert stream._state.text.text == offline.transcript(both, 1, frames=n_out)
    final = stream.finalize_sync(timeout=30)
    assert final.text == offline.transcript(padded(both), 1)
    assert final.utterance == 0

    # The turn ends: accept. The next utterance starts from scratch on the same slot.
    slot = stream._state.slot
    stream.reset()
    third = babble(1.2, seed=23)
    push_in_pieces(stream, third)
    final3 = stream.finalize_sync(timeout=30)
    assert final3.utterance == 1
    assert final3.text == offline.transcript(padded(third), 1)
    assert final3.audio_end_s == pytest.approx(len(third) / SR)
    assert stream._state.slot == slot


def test_final_requested_before_reset_is_still_computed(make_engine, offline):
    engine = make_engine(chunk_ms=160)
    stream = engine.open_stream()
    audio = babble(1.0, seed=31)
    stream.push_audio(audio)
    future = engine._request_final(stream)
    stream.reset()  # before the scheduler got to the final
    stream.push_audio(babble(0.5, seed=32))
    final = future.result(timeout=30)
    padded = np.zeros(engine.padded_length(len(audio)), np.float32)
    padded[: len(audio)] = audio
    assert final.text == offline.transcript(padded, 1)
    assert final.utterance == 0


def test_final_then_reset_while_a_live_step_is_in_flight(make_engine, offline):
    """finalize() then reset() at once (the ASR server allows it) during a live step.

    The step in flight has already advanced the slot's caches when the two calls land; its
    result belongs to the old utterance, but the final queued before the reset is planned on
    that utterance and must start from the position after the step, not before it.
    """
    engine = make_engine(chunk_ms=160)
    stream = engine.open_stream()
    audio = babble(1.2, seed=33)
    futures = []

    def tap(stream_id: str, kind: str, encoded) -> None:
        # On the scheduler thread, after the step ran and before its result is committed.
        if kind == "live" and stream_id == stream.id and not futures and stream._state.mel_pos:
            futures.append(engine._request_final(stream))
            stream.reset()

    engine._encoder_tap = tap
    stream.push_audio(audio)
    wait_until(lambda: bool(futures), what="a live step in flight")
    final = futures[0].result(timeout=30)
    padded = np.zeros(engine.padded_length(len(audio)), np.float32)
    padded[: len(audio)] = audio
    assert final.utterance == 0
    assert final.text == offline.transcript(padded, 1)
    # The next utterance starts fresh on the same slot.
    engine._encoder_tap = None
    nxt = babble(0.8, seed=34)
    stream.push_audio(nxt)
    again = stream.finalize_sync(timeout=30)
    padded = np.zeros(engine.padded_length(len(nxt)), np.float32)
    padded[: len(nxt)] = nxt
    assert again.utterance == 1 and again.text == offline.transcript(padded, 1)


def test_final_of_a_stream_behind_waits_for_the_live_steps_and_stays_exact(make_engine, offline):
    """4 s pushed at once, then finalize: the engine is 4 s behind on this stream.

    The final waits until the batched live steps have caught up to the request and then runs
    only the tail (at most two steps), instead of 25 extra encoder calls inside one tick. Audio
    pushed after the request is not used by the live steps until the final is planned, so the
    result is still the offline transcript of exactly the audio before the request.
    """
    engine = make_engine(chunk_ms=160)
    tap = Tap()
    engine._encoder_tap = tap
    audio, later = babble(4.0, seed=41), babble(1.0, seed=42)
    with engine._tick_lock:  # hold the scheduler so that the backlog is really there
        stream = engine.open_stream()
        stream.push_audio(audio)
        future = engine._request_final(stream)
        stream.push_audio(later)  # the user went on talking
    final = future.result(timeout=60)

    padded = np.zeros(engine.padded_length(len(audio)), np.float32)
    padded[: len(audio)] = audio
    reference = offline.encode(padded, 1)
    assert final.text == offline.decode(reference)
    final_part = tap.joined(stream.id, "final")
    assert final_part.shape[1] <= 2 * engine._runner.out_per_step
    n_live = reference.shape[1] - final_part.shape[1]
    live = tap.joined(stream.id)[:, :n_live]
    assert (torch.cat([live, final_part], dim=1) - reference).abs().max().item() < ATOL

    # The live stream then goes on over the audio pushed after the request.
    both = np.concatenate([audio, later])
    mel_frames = live_steps_for(engine, len(both))
    wait_steps(engine, stream, mel_frames)
    stream.close()


def test_closing_a_stream_fails_its_deferred_final(make_engine):
    engine = make_engine(chunk_ms=160)
    with engine._tick_lock, torch.inference_mode():
        stream = engine.open_stream()
        stream.push_audio(babble(6.0, seed=43))
        future = engine._request_final(stream)
        engine._tick_once()  # plans: the final is deferred behind 6 s of live work
        assert stream._state.deferred
        stream.close()
    with pytest.raises(Exception, match="closed"):
        future.result(timeout=10)


@pytest.fixture(scope="module")
def other_arch_nemo(tmp_path_factory) -> str:
    """A tiny model of another shape (3 layers, d_model 48, 4 heads, kernel 5, batch norm).

    Positional biases and batch-norm statistics are drawn at random (NeMo initialises them to
    no-ops) and the joint is made to emit, as for the main tiny model.
    """
    from nemo.collections.asr.models import EncDecRNNTModel
    from omegaconf import OmegaConf

    from services.asr.engine.arch import model_config

    cfg = model_config("tiny")
    cfg["encoder"].update(
        n_layers=3,
        d_model=48,
        n_heads=4,
        conv_kernel_size=5,
        conv_norm_type="batch_norm",
        ff_expansion_factor=3,
        subsampling_conv_channels=8,
    )
    cfg["model_defaults"]["enc_hidden"] = 48
    cfg["joint"]["jointnet"]["encoder_hidden"] = 48
    torch.manual_seed(7)
    model = EncDecRNNTModel(cfg=OmegaConf.create(cfg)).eval()
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, param in model.encoder.named_parameters():
            if "pos_bias" in name:
                param.copy_(torch.randn(param.shape, generator=gen) * 0.2)
        for mod in model.encoder.modules():
            if isinstance(mod, torch.nn.BatchNorm1d):
                mod.running_mean.normal_(0, 0.2, generator=gen)
                mod.running_var.uniform_(0.5, 1.5, generator=gen)
    make_joint_emit(model, gen)
    path = tmp_path_factory.mktemp("other") / "other_arch.nemo"
    model.save_to(str(path))
    return str(path)


@pytest.mark.parametrize("right_context", [0, 1, 6, 13])
def test_another_architecture_irregular_pushes_and_staggered_joins(
    make_engine, other_arch_nemo, right_context
):
    """Finals equal offline for a shape the other tests do not use, pushes of 1 sample to 0.7 s."""
    from nemo.collections.asr.models import ASRModel

    reference = Offline(ASRModel.restore_from(other_arch_nemo, map_location="cpu").eval())
    engine = make_engine(model=other_arch_nemo, chunk_ms=CHUNK_FOR_R[right_context])
    rng = np.random.default_rng(right_context)
    audios = [babble(float(rng.uniform(0.3, 2.5)), seed=200 + i) for i in range(4)]
    texts: list[str | None] = [None] * len(audios)
    errors: list[BaseException] = []

    def speak(i: int) -> None:
        try:
            time.sleep(0.03 * i)  # staggered joins
            stream = engine.open_stream()
            sizes = np.random.default_rng(i).choice([1, 2, 7, 160, 333, 4000, 11200], 10_000)
            pos = 0
            for n in sizes:
                if pos >= len(audios[i]):
                    break
                stream.push_audio(audios[i][pos : pos + n])
                pos += n
            texts[i] = stream.finalize_sync(timeout=60).text
            stream.close()
        except BaseException as exc:  # surfaced below
            errors.append(exc)

    threads = [threading.Thread(target=speak, args=(i,)) for i in range(len(audios))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert not errors, errors
    for audio, text in zip(audios, texts, strict=True):
        padded = np.zeros(engine.padded_length(len(audio)), np.float32)
        padded[: len(audio)] = audio
        assert text == reference.transcript(padded, right_context)

"""Word start/end times from the RNNT token frames, grouped into words by NeMo's own decoding."""

from __future__ import annotations

import logging

from .events import WordTiming

logger = logging.getLogger(__name__)


class WordTimer:
    """Turns (token ids, absolute encoder frames) of an utterance into ``WordTiming``s.

    The grouping of tokens into words is NeMo's (``compute_rnnt_timestamps``): it knows the
    model's tokenizer (char vocabularies with a space token, sentencepiece ``▁`` word starts)
    and its punctuation. A frame is ``subsampling_factor`` mel hops long (80 ms for Nemotron).
    """

    def __init__(self, model) -> None:
        from nemo.collections.asr.parts.utils.rnnt_utils import Hypothesis

        self._hypothesis = Hypothesis
        self._decoding = model.decoding
        featurizer = model.preprocessor.featurizer
        sample_rate = float(getattr(featurizer, "sample_rate", 16000))
        self.frame_s = model.encoder.subsampling_factor * featurizer.hop_length / sample_rate
        self._failed = False

    def words(self, ids: list[int], frames: list[int]) -> tuple[WordTiming, ...]:
        """Every word of ``ids`` with its start and end (seconds on the utterance clock)."""
        if not ids:
            return ()
        hyp = self._hypothesis(score=0.0, y_sequence=list(ids), timestamp=list(frames))
        try:
            hyp = self._decoding.compute_rnnt_timestamps(hyp, timestamp_type="word")
        except Exception:  # a decoding NeMo cannot time must not cost the transcript
            if not self._failed:
                self._failed = True
                logger.exception("word timings unavailable for this model")
            return ()
        step = self.frame_s
        return tuple(
            WordTiming(
                word=str(w["word"]),
                start_s=round(w["start_offset"] * step, 3),
                end_s=round(w["end_offset"] * step, 3),
            )
            for w in hyp.timestamp.get("word", [])
        )

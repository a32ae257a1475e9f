"""Leading-silence trimming keeps onsets and removes the dead air before them."""

import numpy as np

from services.tts.silence import trim_leading_silence


def test_trims_to_keep_window_before_first_sound():
    rate = 24000
    silence = np.zeros(int(0.3 * rate), dtype=np.float32) + 1e-4  # below -45 dBFS
    tone = 0.3 * np.sin(np.linspace(0, 400 * np.pi, rate // 5)).astype(np.float32)
    trimmed = trim_leading_silence(np.concatenate([silence, tone]), rate)
    lead = len(trimmed) - len(tone)
    assert 0 <= lead <= 0.005 * rate
    assert np.array_equal(trimmed[lead:], tone)


def test_silent_or_tiny_audio_is_left_alone():
    rate = 24000
    quiet = np.zeros(rate, dtype=np.float32)
    assert len(trim_leading_silence(quiet, rate)) == rate
    assert len(trim_leading_silence(np.zeros(3, dtype=np.float32), rate)) == 3

"""The feature stage: 16 kHz waveforms -> ``(B, T, F, C)`` log-mel + delta + delta-delta.

Modules, in the order the data flows (each imports only those before it):

``fbank``     framing, the spectrum, mel product and log; the ``torchaudio`` backend's
              window and filterbank
``kaldi``     the ``kaldi`` backend's window, mel banks and per-frame steps
``deltas``    delta and delta-delta features with each utterance's edges replicated
``cmvn``      utterance and global normalisation, the statistics file
``pipeline``  the functions that put them together (offline and streamed)
``stream``    :class:`FeatureStream`: chunk by chunk, equal to offline bit for bit
``module``    :class:`LogMelDeltas`, the ``nn.Module`` holding settings and buffers
``stats``     :func:`compute_global_stats` over waveforms or audio files
``cli``       ``python -m speechconv.features``: files and manifests -> ``.pt`` files, statistics

The settings are :class:`speechconv.feature_config.FeatureConfig`.
"""

from speechconv.feature_config import FeatureConfig
from speechconv.features.module import LogMelDeltas, as_feature_config
from speechconv.features.pipeline import log_mel_deltas
from speechconv.features.stats import compute_global_stats
from speechconv.features.stream import FeatureStream

__all__ = ["FeatureConfig", "FeatureStream", "LogMelDeltas", "as_feature_config", "compute_global_stats",
           "log_mel_deltas"]

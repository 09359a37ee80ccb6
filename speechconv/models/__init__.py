"""Models trained by ``train.py``: CTC (BiLSTM + CTC) and the attention seq2seq, built from config."""

from speechconv.models.build import build_encoder, build_model
from speechconv.models.ctc import CTCModel, ctc_collapse

__all__ = ["CTCModel", "build_encoder", "build_model", "ctc_collapse"]

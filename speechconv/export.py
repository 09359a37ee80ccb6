"""Export from raw audio: the whole CTC recogniser (``waveforms, lengths -> log_probs,
out_lengths``) or a front-end of your own (features + encoder: ``-> encoded,
out_lengths``), to ONNX and to ``torch.export`` programs (``.pt2``), with any batch size
and length; the front-end also to executorch (``.pte``, :func:`save_pte`), with a batch
size and length up to bounds fixed when exporting.

What is exported is the eval form of the eager modules: each conv's batch norm folded
into it (:func:`speechconv.encoder.fold_batch_norms`), dropout gone, and each
``nn.LSTM`` replaced by :class:`ScanLSTM`, the same recurrence written as torch's
``scan`` (an ONNX ``Scan``), because ``torch.export`` of ``nn.LSTM`` fixes the number
of frames to the example's.  The graph holds the feature stage too (the spectrum as
:class:`speechconv.features.LogMelDeltas` computes it), so a client computes nothing
itself: onnxruntime with the file alone gives the model's numbers
(``examples/transcribe_onnx.py``).

ONNX interface (:func:`export_recogniser`)::

    inputs   waveforms (B, S) float32 in [-1, 1], lengths (B,) int64 valid samples
    outputs  log_probs (B, T', V) float32, out_lengths (B,) int64
    metadata_props  vocabulary (JSON list of the output symbols by id), blank (the CTC
                    blank id), sample_rate (Hz of the waveforms), and for a model that
                    decodes through a lexicon (``model.lexicon``), lexicon (JSON of
                    :meth:`speechconv.models.lexicon.LexiconDecoder.graph`)

Graphs trust their lengths (``0 <= lengths <= S``) and take at least
:func:`min_samples` samples per batch (the eager modules check both).  Settings a graph
cannot represent are refused by :func:`check_exportable` with a :class:`ExportError`
naming the setting.
"""

from __future__ import annotations

import copy
import json
import os
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch._higher_order_ops.scan import scan

from speechconv import shapes
from speechconv.atomic import atomic_path
from speechconv.encoder import ConvEncoder, fold_batch_norms
from speechconv.features import LogMelDeltas
from speechconv.models.ctc import CTCModel
from speechconv.text import CharVocabulary

FORMATS = ("onnx", "pt2", "pte")
INPUT_NAMES = ["waveforms", "lengths"]
RECOGNISER_OUTPUTS = ["log_probs", "out_lengths"]
FRONTEND_OUTPUTS = ["encoded", "out_lengths"]
OPSET = 18
"""ONNX opset of the exported files (onnxruntime 1.20 runs up to 21; DFT is in 17+)."""


PTE_MAX_BATCH = 4
"""Largest batch a ``.pte`` front-end takes unless told otherwise (:func:`export_frontend`)."""
PTE_MAX_SECONDS = 30.0
"""Longest audio a ``.pte`` front-end takes unless told otherwise.  executorch plans the
memory of every intermediate tensor for the largest input: about 1.6 MB per second of
audio and utterance of the batch at the default features and encoder (197 MB for
8 x 30 s, 99 MB for the default 4 x 30 s)."""


class ExportError(ValueError):
    """A model or setting that an exported graph cannot represent; the message names it."""


# ------------------------------------------------------------------------ the LSTM


class ScanLSTM(nn.Module):
    """One ``nn.LSTM`` layer (one direction, ``batch_first``) as a scan over frames.

    The input's gates for every frame are one matrix product; the scan then carries
    ``(h, c)`` through the frames in torch's gate order ``i, f, g, o``::

        z = x_t W_ih^T + b_ih + b_hh + h W_hh^T
        c' = s(f) c + s(i) tanh(g),   h' = s(o) tanh(c')

    Same parameters and outputs as the ``nn.LSTM`` it wraps (tested equal within float
    rounding), and ``torch.export`` keeps the number of frames dynamic: it becomes an
    ONNX ``Scan``.

    Shapes:
        ``forward(x (B, T, D))`` -> ``(y (B, T, H), None)``, as ``nn.LSTM(x)``'s output
        without its final state.
    """

    def __init__(self, lstm: nn.LSTM) -> None:
        super().__init__()
        if lstm.num_layers != 1 or lstm.bidirectional or not lstm.batch_first or not lstm.bias or lstm.proj_size:
            raise ExportError(f"ScanLSTM takes a one-layer, one-direction batch_first LSTM with biases and no "
                              f"projection, got {lstm}")
        self.lstm = lstm

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, None]:
        lstm = self.lstm
        w_hh = lstm.weight_hh_l0  # (4H, H)
        gates = nn.functional.linear(x, lstm.weight_ih_l0, lstm.bias_ih_l0 + lstm.bias_hh_l0)  # (B, T, 4H)
        h0, c0 = (x.new_zeros(x.shape[0], lstm.hidden_size) for _ in range(2))  # (B, H) each, not aliased

        def step(carry: tuple[torch.Tensor, torch.Tensor], g: torch.Tensor):
            h, c = carry  # (B, H) each
            i, f, cell, o = (g + h @ w_hh.T).chunk(4, dim=-1)  # (B, 4H) -> 4 x (B, H)
            c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(cell)
            h = torch.sigmoid(o) * torch.tanh(c)
            return (h, c), h.clone()

        _, ys = scan(step, (h0, c0), gates.transpose(0, 1))  # over (T, B, 4H) -> (T, B, H)
        return ys.transpose(0, 1), None  # (T, B, H) -> (B, T, H)


# ------------------------------------------------------------------ what is exported


class Frontend(nn.Module):
    """``waveforms (B, S), lengths (B,)`` -> ``encoded, out_lengths (B,)``: the feature
    stage then an encoder taking ``(B, T, F, C)`` features and frame lengths."""

    def __init__(self, features: LogMelDeltas, encoder: nn.Module) -> None:
        super().__init__()
        self.features, self.encoder = features, encoder

    def forward(self, waveforms: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        feats, frames = self.features(waveforms, lengths)  # (B, T, F, C), (B,)
        return self.encoder(feats, frames)


class Recogniser(nn.Module):
    """``waveforms (B, S), lengths (B,)`` -> ``log_probs (B, T', V), out_lengths (B,)``."""

    def __init__(self, features: LogMelDeltas, model: CTCModel) -> None:
        super().__init__()
        self.features, self.model = features, model

    def forward(self, waveforms: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        feats, frames = self.features(waveforms, lengths)  # (B, T, F, C), (B,)
        return self.model.log_probs(feats, frames)


def check_exportable(features: LogMelDeltas, model: nn.Module | None = None, fmt: str = "onnx") -> None:
    """Raise :class:`ExportError` naming the setting if the feature stage or the model
    holds something an exported graph (in format ``fmt``) cannot represent.

    Refused: ``fmt="pte"`` with a feature stage made with ``dft="fft"`` (executorch's
    portable kernels have no FFT operator: build it with ``dft="matrix"``), or with a
    model (the recogniser's LSTM scan fails in executorch's runtime for a batch smaller
    than the bound); ``features.dither > 0`` (random noise: no two runs agree, so the graph
    cannot be checked against eager, and inference takes no dither); a model other than
    :class:`speechconv.models.CTCModel` (``model.type=seq2seq``: its greedy decoder
    stops per utterance on the end token, a loop whose length depends on values); an
    encoder holding anything but :class:`speechconv.ConvEncoder` layers and
    ``nn.LSTM``-based stacks (``encoder.type=weiss2017``: packed sequences and a Python
    loop over frames).
    """
    cfg = features.config
    if fmt == "pte" and features.dft_basis is None:
        raise ExportError("a feature stage with dft='fft' cannot be exported as pte: executorch's portable kernels "
                          "have no FFT operator; build it as LogMelDeltas(config, dft='matrix') (the same features "
                          "to float32 rounding, the DFT as a matrix product)")
    if fmt == "pte" and model is not None:
        raise ExportError("export.format=pte exports the front-end only (speechconv.export.export_frontend): the "
                          "recogniser's LSTMs (a scan) fail in executorch's runtime for a batch smaller than the "
                          "exported bound; export the recogniser with export.format=onnx or pt2")
    if cfg.dither > 0:
        raise ExportError(f"features.dither={cfg.dither} cannot be exported: dither is random noise, which no "
                          f"exported graph can reproduce or be checked against; export with features.dither=0 "
                          f"(inference runs without dither)")
    if model is None:
        return
    if not isinstance(model, CTCModel):
        raise ExportError(f"model {type(model).__name__} cannot be exported: only the CTC recogniser "
                          f"(model.type=ctc) maps audio to log-probabilities in one graph; the seq2seq model's greedy "
                          f"decoder stops on its end token, a loop whose length depends on the values. Export its "
                          f"front-end with speechconv.export.export_frontend, or train model.type=ctc")
    encoder = model.body.encoder
    if not isinstance(encoder, ConvEncoder):
        raise ExportError(f"encoder {type(encoder).__name__} cannot be exported (encoder.type=weiss2017: packed "
                          f"sequences and a Python loop over frames fix the graph to one batch's lengths); export "
                          f"models with encoder.type=conv")


def eval_form(module: nn.Module) -> nn.Module:
    """A copy of ``module`` in eval mode with every :class:`ConvEncoder` in it folded
    (:func:`speechconv.encoder.fold_batch_norms`) and every ``nn.LSTM`` a
    :class:`ScanLSTM`; ``module`` is left as it is."""
    module = copy.deepcopy(module).eval()
    for name, child in list(module.named_children()):
        if isinstance(child, ConvEncoder):
            setattr(module, name, fold_batch_norms(child))
        elif isinstance(child, nn.LSTM):
            setattr(module, name, ScanLSTM(child))
        else:
            setattr(module, name, eval_form(child))
    return module


MIN_FRAMES = 3
"""Fewest frames of the longest utterance of a batch that an exported graph takes:
``torch.export`` specialises sizes 0 and 1, and tracing the conv encoder with its output
as a graph output records a guard of three input frames."""


def min_samples(features: LogMelDeltas, encoder_min_frames: int = 1) -> int:
    """Fewest samples of the longest utterance of a batch that an exported graph takes:
    :data:`MIN_FRAMES` and the encoder's minimum input, in samples
    (:func:`speechconv.shapes.min_samples_for_frames`; 720 at the defaults, 45 ms)."""
    cfg = features.config
    frames = max(MIN_FRAMES, encoder_min_frames)
    return shapes.min_samples_for_frames(frames, cfg.win_length, cfg.hop_length, cfg.framing)


def _example(smallest: int, sample_rate: int, max_batch: int | None = None,
             max_samples: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """The inputs graphs are traced with: ``(3, S)`` noise, one utterance filling the batch,
    two shorter ones (the sizes are not special cases of the program); fewer rows and
    samples where the bounds are smaller."""
    samples = min(max(sample_rate, 4 * smallest), max_samples or sample_rate * 3600)
    noise = torch.randn(3, samples, generator=torch.Generator().manual_seed(0)) * 0.1
    lengths = torch.tensor([samples, max(samples * 2 // 3, smallest), smallest])
    return noise[:max_batch], lengths[:max_batch]


def export_program(module: nn.Module, features: LogMelDeltas, encoder_min_frames: int = 1,
                   max_batch: int | None = None, max_samples: int | None = None) -> torch.export.ExportedProgram:
    """``torch.export`` of ``module`` (:class:`Frontend` or :class:`Recogniser`, already in
    eval form) with a dynamic batch size and length, up to ``max_batch`` and
    ``max_samples`` where given (a batch of 1 is then static); executorch needs bounds.

    Traced with size-oblivious shape reasoning and deferred runtime asserts, as
    :func:`speechconv.encoder.export_program` is."""
    smallest = min_samples(features, encoder_min_frames)
    if max_samples is not None and max_samples <= smallest:
        raise ExportError(f"a bound of {max_samples} samples is too small: an exported graph takes at least "
                          f"{smallest} ({smallest / features.config.sample_rate:.3f} s); allow longer audio")
    if max_batch is not None and (isinstance(max_batch, bool) or not isinstance(max_batch, int) or max_batch < 1):
        raise ExportError(f"max_batch={max_batch!r} is invalid: expected an int >= 1")
    waveforms, lengths = _example(smallest, features.config.sample_rate, max_batch, max_samples)
    batch = None if max_batch == 1 else torch.export.Dim("batch", min=1, max=max_batch)
    samples = torch.export.Dim("samples", min=smallest, max=max_samples)
    dynamic = {"waveforms": {0: batch, 1: samples}, "lengths": {0: batch}}
    with torch.no_grad(), torch.fx.experimental._config.patch(backed_size_oblivious=True):
        return torch.export.export(module, (waveforms, lengths), dynamic_shapes=dynamic,
                                   prefer_deferred_runtime_asserts_over_guards=True)


def save_pt2(program: torch.export.ExportedProgram, path: str | os.PathLike) -> Path:
    """Write ``program`` with ``torch.export.save``, atomically; ``torch.export.load`` reads it."""
    path = Path(path)
    with atomic_path(path) as tmp:
        torch.export.save(program, tmp)
    return path


def save_onnx(program: torch.export.ExportedProgram, path: str | os.PathLike, output_names: list[str],
              metadata: dict[str, str], input_names: list[str] | None = None) -> Path:
    """Convert ``program`` to ONNX (inputs ``input_names``, by default :data:`INPUT_NAMES`;
    outputs ``output_names``; ``metadata`` as ``metadata_props``) and write it atomically."""
    import onnx

    onnx_program = torch.onnx.export(program, dynamo=True, input_names=input_names or INPUT_NAMES,
                                     output_names=output_names, opset_version=OPSET, verbose=False)
    proto = onnx_program.model_proto
    for key, value in metadata.items():
        proto.metadata_props.add(key=key, value=value)
    path = Path(path)
    with atomic_path(path) as tmp:
        onnx.save(proto, str(tmp))
    return path


def save_pte(program: torch.export.ExportedProgram, path: str | os.PathLike,
             constants: dict[str, int] | None = None) -> Path:
    """Lower ``program`` to executorch (edge dialect, then the executorch program) and write
    the ``.pte`` atomically; ``constants`` become methods without inputs that return them
    (executorch's counterpart of ONNX metadata: ``program.load_method("sample_rate")``).

    The lowering re-traces the program with size-oblivious shape reasoning, as
    :func:`export_program` traced it, so that it adds no runtime assert of its own
    (executorch's edge verifier refuses their ``sym_not``).  ``aten.unfold`` (the frames
    of :func:`speechconv.features.fbank.frames_of`) is not a core ATen operator: it is
    kept, and becomes the portable kernel ``unfold_copy``.  Every dynamic size needs an
    upper bound (:func:`export_program`'s ``max_batch`` and ``max_samples``).
    """
    from executorch.exir import EdgeCompileConfig, to_edge

    config = EdgeCompileConfig(_core_aten_ops_exception_list=[torch.ops.aten.unfold.default])
    with torch.no_grad(), torch.fx.experimental._config.patch(backed_size_oblivious=True):
        edge = to_edge(program, constant_methods=constants, compile_config=config)
    buffer = edge.to_executorch().buffer
    path = Path(path)
    with atomic_path(path) as tmp:
        tmp.write_bytes(buffer)
    return path


def check_format(fmt: str) -> None:
    """Raise :class:`ExportError` unless ``fmt`` is one of :data:`FORMATS`."""
    if fmt not in FORMATS:
        raise ExportError(f"export.format={fmt!r} is invalid: expected one of {FORMATS} (onnx for onnxruntime, "
                          f"pt2 for torch.export.load, pte for executorch)")


def recogniser_program(model: CTCModel, features: LogMelDeltas, vocab: CharVocabulary,
                       fmt: str = "onnx") -> tuple[torch.export.ExportedProgram, dict[str, str]]:
    """``torch.export`` of the whole recogniser's eval form, and its ONNX metadata.

    Args:
        model: a trained :class:`speechconv.models.CTCModel` (left as it is).
        features: the feature stage it was trained on.
        vocab: its vocabulary (metadata ``vocabulary`` and ``blank``).
        fmt: the format it is for (:func:`check_exportable`).

    Returns:
        ``(program, metadata)``: the program maps ``waveforms (B, S), lengths (B,)`` to
        ``log_probs (B, T', V), out_lengths (B,)`` (module docstring).
    """
    check_exportable(features, model, fmt)
    if model.out.out_features != len(vocab) or model.blank_id != vocab.blank_id:
        raise ExportError(f"the model's {model.out.out_features} outputs (blank {model.blank_id}) do not fit the "
                          f"vocabulary of {len(vocab)} symbols (blank {vocab.blank_id}); pass the model's own "
                          f"vocabulary")
    module = Recogniser(eval_form(features), eval_form(model))
    program = export_program(module, features, model.body.encoder.min_input_frames)
    metadata = {"vocabulary": json.dumps(vocabulary_symbols(vocab), ensure_ascii=False),
                "blank": str(vocab.blank_id), "sample_rate": str(features.config.sample_rate)}
    if model.lexicon is not None:  # the client's decoding (examples/transcribe_onnx.py)
        metadata["lexicon"] = json.dumps(model.lexicon.graph(), ensure_ascii=False)
    return program, metadata


def frontend_program(features: LogMelDeltas, encoder: nn.Module, min_input_frames: int | None = None,
                     max_batch: int | None = None, max_samples: int | None = None,
                     fmt: str = "onnx") -> torch.export.ExportedProgram:
    """``torch.export`` of a front-end of your own: the feature stage then ``encoder``.

    Args:
        features: the feature stage, ``(B, S)`` -> ``(B, T, F, C)``.
        encoder: any module mapping ``(B, T, F, C)`` features and ``(B,)`` frame lengths
            to ``(encoded (B, T', D), out_lengths (B,))`` that ``torch.export`` traces with
            dynamic sizes (no Python branch on values); a :class:`speechconv.ConvEncoder`
            in it is folded and an ``nn.LSTM`` child becomes a :class:`ScanLSTM`
            (:func:`eval_form`).
        min_input_frames: the encoder's fewest input frames (default: its
            ``min_input_frames`` attribute, else 1).
        max_batch, max_samples: bounds of the dynamic sizes (:func:`export_program`).
        fmt: the format it is for (:func:`check_exportable`).

    Returns:
        The program: ``waveforms (B, S), lengths (B,)`` -> ``encoded, out_lengths (B,)``.
    """
    check_exportable(features, fmt=fmt)
    return export_program(Frontend(eval_form(features), eval_form(encoder)), features,
                          _min_input_frames(encoder, min_input_frames), max_batch, max_samples)


def _min_input_frames(encoder: nn.Module, given: int | None) -> int:
    """``given``, else the encoder's ``min_input_frames`` attribute, else 1."""
    return int(getattr(encoder, "min_input_frames", 1)) if given is None else given


def export_recogniser(model: CTCModel, features: LogMelDeltas, vocab: CharVocabulary, path: str | os.PathLike,
                      fmt: str = "onnx") -> Path:
    """Write the whole recogniser, raw audio to log-probabilities (:func:`recogniser_program`),
    to ``path`` as ``fmt`` (``onnx`` with its metadata, or ``pt2``); returns ``path``."""
    check_format(fmt)
    program, metadata = recogniser_program(model, features, vocab, fmt)
    if fmt == "pt2":
        return save_pt2(program, path)
    return save_onnx(program, path, RECOGNISER_OUTPUTS, metadata)


def export_frontend(features: LogMelDeltas, encoder: nn.Module, path: str | os.PathLike, fmt: str = "onnx",
                    min_input_frames: int | None = None, max_batch: int | None = None,
                    max_seconds: float | None = None) -> Path:
    """Write a front-end of your own, raw audio to encoder output (:func:`frontend_program`),
    to ``path`` as ``fmt``; returns ``path``.

    ``onnx``: outputs ``encoded`` and ``out_lengths``, metadata ``sample_rate``.  ``pte``
    (executorch; the feature stage made with ``dft="matrix"``): inputs and outputs in the
    same order, and methods ``sample_rate``, ``min_samples``, ``max_batch`` and
    ``max_samples`` that return the graph's limits.  ``max_batch`` and ``max_seconds``
    bound the batch and the audio (``pte``: by default :data:`PTE_MAX_BATCH` and
    :data:`PTE_MAX_SECONDS`; the others: unbounded by default).
    """
    check_format(fmt)
    rate = features.config.sample_rate
    if fmt == "pte":
        max_batch = PTE_MAX_BATCH if max_batch is None else max_batch
        max_seconds = PTE_MAX_SECONDS if max_seconds is None else max_seconds
    if max_seconds is not None and not (isinstance(max_seconds, (int, float)) and 0 < max_seconds < float("inf")):
        raise ExportError(f"max_seconds={max_seconds!r} is invalid: expected a number of seconds > 0")
    max_samples = None if max_seconds is None else int(max_seconds * rate)
    program = frontend_program(features, encoder, min_input_frames, max_batch, max_samples, fmt)
    if fmt == "pt2":
        return save_pt2(program, path)
    if fmt == "pte":
        smallest = min_samples(features, _min_input_frames(encoder, min_input_frames))
        return save_pte(program, path, {"sample_rate": rate, "min_samples": smallest,
                                        "max_batch": max_batch, "max_samples": max_samples})
    return save_onnx(program, path, FRONTEND_OUTPUTS, {"sample_rate": str(rate)})


def vocabulary_symbols(vocab: CharVocabulary) -> list[str]:
    """The output symbols by id, as the ONNX metadata's ``vocabulary`` lists them."""
    return list(vocab.tokens)


def read_metadata(path: str | os.PathLike) -> dict[str, Any]:
    """``vocabulary`` (list), ``blank`` (int), ``sample_rate`` (int) and, for a model that
    decodes through a lexicon, ``lexicon`` (dict, :meth:`speechconv.models.lexicon.LexiconDecoder.graph`)
    of an exported ONNX file."""
    import onnx

    props = {p.key: p.value for p in onnx.load(str(path), load_external_data=False).metadata_props}
    out: dict[str, Any] = {"sample_rate": int(props["sample_rate"])}
    if "vocabulary" in props:
        out["vocabulary"], out["blank"] = json.loads(props["vocabulary"]), int(props["blank"])
    if "lexicon" in props:
        out["lexicon"] = json.loads(props["lexicon"])
    return out

"""The inspector against formulas written here and against real modules and gradients."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch
import torch.nn.functional as F
from hypothesis import event, given, settings
from hypothesis import strategies as st
from torch import nn

from speechconv.encoder import ConvEncoder
from speechconv.encoder_config import EncoderConfig, LayerConfig
from speechconv.feature_config import FeatureConfig
from speechconv.inspector import ShapeMismatch, check_against_forward, describe, describe_layers, main
from speechconv.layers import Concat, GatedMix, LearnedMix, Sum


def _conv(kt=3, kf=3, st=2, sf=2, padding="same", filters=32, **kw) -> LayerConfig:
    return LayerConfig(filters=filters, kernel=[kt, kf], stride=[st, sf], padding=padding, **kw)


def test_default_one_second():
    d = describe()
    # 16 kHz, 25 ms = 400 samples, 10 ms = 160 samples, whole frames only.
    frames = 1 + (16000 - 400) // 160
    assert d.samples == 16000 and d.seconds == 1.0
    assert d.input_shape == (frames, 80, 3) == (98, 80, 3)
    assert d.output_shape == (math.ceil(98 / 4), 20, 32)
    assert [r.name for r in d.rows] == ["layers.0", "layers.1"]
    assert d.rows[0].out_shape == (49, 40, 32) and d.rows[1].in_shape == (49, 40, 32)
    # MACs: every output element of layer l costs in * kt * kf multiply-adds.
    assert d.rows[0].macs == 49 * 40 * 32 * 3 * 3 * 3
    assert d.rows[1].macs == 25 * 20 * 32 * 32 * 3 * 3
    assert d.totals.macs == d.rows[0].macs + d.rows[1].macs
    # Receptive field: 3, then 3 + (3 - 1) * 2 = 7 frames; (7 - 1) * 10 ms + 25 ms = 85 ms.
    assert (d.rows[0].receptive_field, d.receptive_field, d.receptive_field_ms) == (3, 7, 85.0)
    assert d.subsampling == 4 and d.rows[0].subsampling == 2
    assert d.look_ahead_ms == d.look_ahead * 10.0
    # SAME never runs out of frames: one frame (one window, 400 samples) is enough.
    assert (d.min_input_frames, d.min_input_samples, d.min_input_freq) == (1, 400, 1)


def test_seconds_and_samples_agree():
    assert describe(seconds=2.5).rows == describe(samples=40000).rows
    assert describe(seconds=2.5).input_shape[0] == 1 + (40000 - 400) // 160
    with pytest.raises(ValueError, match="not both"):
        describe(seconds=1.0, samples=16000)
    with pytest.raises(ValueError, match="samples=-1"):
        describe(samples=-1)


def _brute_time_geometry(layers: list[tuple[int, int, str | int]], length: int) -> tuple[int, int]:
    """Receptive field and look-ahead of a stack of 1-D convs, found with autograd.

    TF SAME padding is written out here: out = ceil(L / s), total = max((out - 1) s + k - L, 0),
    ``total // 2`` before.
    """
    x = torch.zeros(1, 1, length, requires_grad=True)
    y, jump = x, 1
    for k, s, p in layers:
        n = y.shape[-1]
        if p == "same":
            out = -(-n // s)
            total = max((out - 1) * s + k - n, 0)
            y = F.pad(y, (total // 2, total - total // 2))
            p = 0
        y = F.conv1d(y, torch.ones(1, 1, k), stride=s, padding=int(p) if p != "valid" else 0)
        jump *= s
    field, ahead = 0, 0
    for t in range(y.shape[-1]):
        (g,) = torch.autograd.grad(y[0, 0, t], x, retain_graph=True)
        idx = g[0, 0].nonzero().flatten()
        # An output near an edge sees padding; the interior outputs show the full field.
        field = max(field, int(idx.max() - idx.min()) + 1)
        ahead = max(ahead, int(idx.max()) - t * jump)
    return field, ahead


@pytest.mark.parametrize(
    "geoms",
    [
        [(3, 2, "same"), (3, 2, "same")],
        [(5, 1, "same"), (3, 3, "valid")],
        [(3, 1, 1), (4, 2, "same"), (2, 2, "valid")],
        [(4, 4, "same")],
    ],
)
def test_receptive_field_and_look_ahead_match_autograd(geoms):
    layers = [_conv(kt=k, st=s, padding=[p, "same"], filters=2) for k, s, p in geoms]
    d = describe_layers((64, 4, 1), layers)
    # Worst case over input lengths: the SAME padding before depends on L mod s.
    lengths = range(40, 40 + math.prod(s for _, s, _ in geoms) * 2)
    brute = [_brute_time_geometry(geoms, n) for n in lengths]
    assert d.receptive_field == max(b[0] for b in brute)
    assert d.look_ahead == max(b[1] for b in brute)


def test_frequency_kernel_larger_than_input_names_layer_value_and_minimum():
    enc = EncoderConfig(layers=[_conv(kf=5, sf=1, padding="valid")])
    with pytest.raises(ValueError) as err:
        describe(FeatureConfig(n_mels=4), enc)
    msg = str(err.value)
    assert "encoder.layers.0.kernel=[3, 5]" in msg and "input of 4 rows" in msg and "features.n_mels >= 5" in msg


def test_n_mels_too_small_for_the_stack():
    # Three valid 3-wide layers along frequency: 6 -> 4 -> 2 -> 0; the minimum is 7.
    layers = [_conv(kf=3, sf=1, kt=1, st=1, padding="valid", filters=4) for _ in range(3)]
    with pytest.raises(ValueError) as err:
        describe(FeatureConfig(n_mels=6), EncoderConfig(layers=layers))
    msg = str(err.value)
    assert "encoder.layers.2.kernel=[1, 3]" in msg and "input of 2 rows" in msg and "features.n_mels >= 7, it gets 6" in msg
    assert describe(FeatureConfig(n_mels=7), EncoderConfig(layers=layers)).min_input_freq == 7


def test_input_shorter_than_the_minimum():
    # Two valid 3-frame stride-2 layers need (3 - 1) * 2 + 3 = 7 frames = 400 + 6 * 160 samples.
    layers = [_conv(padding="valid", kf=1, sf=1) for _ in range(2)]
    enc = EncoderConfig(layers=layers)
    ok = describe(encoder=enc, samples=1360)
    assert ok.input_shape[0] == 7 and ok.output_shape[0] == 1
    assert (ok.min_input_frames, ok.min_input_samples) == (7, 1360)
    with pytest.raises(ValueError) as err:
        describe(encoder=enc, samples=1359)
    msg = str(err.value)
    assert "6 frames" in msg and "7 frames" in msg and "1360 samples" in msg and "layers.1" in msg
    with pytest.raises(ValueError, match="shorter than one 400-sample window"):
        describe(samples=399)

    padded = describe(encoder=EncoderConfig(layers=layers, too_short="pad"), samples=1359)
    assert padded.input_shape[0] == 6 and padded.rows[0].in_shape[0] == 7
    assert padded.output_shape[0] == 1 and padded.notes


@pytest.mark.parametrize("fusion", ["mix", "gated", "concat", "sum"])
def test_two_branches_and_their_fusion(fusion):
    stack = LayerConfig(kind="stack", frames=4, filters=640)
    enc = EncoderConfig(layers=[LayerConfig(), LayerConfig()], branch=[stack], fusion=fusion)
    d = describe(encoder=enc)
    assert [r.name for r in d.rows] == ["layers.0", "layers.1", "branch.0", "fusion"]
    assert d.output_shape == (25, 1280 if fusion == "concat" else 640)
    b = d.row("branch.0")
    # Stacking 4 frames of 80 x 3 and projecting to 640: a (640, 3, 4, 80) kernel, SAME in time.
    assert b.out_shape == (math.ceil(98 / 4), 1, 640) and b.kernel_shape == (640, 3, 4, 80)
    assert b.weights == 640 * 3 * 4 * 80 and b.biases == 0 and b.bn_params == 2 * 640
    mixer = {"mix": LearnedMix(), "gated": GatedMix(640), "concat": Concat(), "sum": Sum()}[fusion]
    assert d.row("fusion").params == sum(p.numel() for p in mixer.parameters())
    assert d.row("fusion").out_shape == (25, 1280 if fusion == "concat" else 640)
    assert d.totals.params == 864 + 9216 + 128 + b.params + d.row("fusion").params

    bad = EncoderConfig(layers=[LayerConfig()], branch=[stack], fusion=fusion)
    with pytest.raises(ValueError, match="both branches must agree"):
        describe(encoder=bad)


def test_concat_joins_branches_of_different_width_and_the_forward_agrees():
    enc = EncoderConfig(branch=[LayerConfig(kind="stack", frames=4, filters=64)], fusion="concat")
    d = describe_layers((98, 80, 3), enc)
    assert d.output_shape == (25, 640 + 64) and d.row("fusion").params == 0
    assert "(25 x 640) + (25 x 64)" in d.to_text()
    assert check_against_forward(d).ok


def test_the_summary_says_whether_the_encoder_streams():
    tf_same = EncoderConfig(layers=[LayerConfig(padding="same"), LayerConfig(padding="same")])
    assert "streaming: no (layers.0 pads time with TF SAME" in describe(encoder=tf_same).to_text()
    assert describe().look_ahead == 3 and "streaming: yes (fixed alignment)" in describe().to_text()  # the default
    causal = EncoderConfig(layers=[LayerConfig(padding=["causal", "same"]), LayerConfig(padding="causal")])
    d = describe(encoder=causal)
    assert d.look_ahead == 0 and "streaming: yes (fixed alignment), 0 frames = 0 ms of look-ahead" in d.to_text()
    padded = describe(encoder=EncoderConfig(layers=[LayerConfig(padding=1), LayerConfig(padding=1)]))
    assert padded.look_ahead == 3 and "3 frames = 30 ms of look-ahead" in padded.to_text()


def test_generic_entry_maps_width_to_t_and_height_to_f():
    # A 1 x 3 kernel along (T, F): only the height (F) shrinks.
    d = describe_layers((10, 5, 2), [_conv(kt=1, kf=3, st=1, sf=1, padding="valid", filters=4)])
    assert d.output_shape == (10, 3, 4)
    conv = nn.Conv2d(2, 4, (1, 3))
    assert tuple(conv(torch.zeros(1, 2, 10, 5)).shape) == (1, 4, 10, 3)
    assert d.samples is None and d.receptive_field_ms is None and d.rows[0].min_input_samples is None


def test_tables_list_every_row_and_number():
    stack = LayerConfig(kind="stack", frames=4, filters=640)
    d = describe(encoder=EncoderConfig(branch=[stack], fusion="gated"))
    text, md = d.to_text(), d.to_markdown()
    assert d.format("text") == text and d.format("markdown") == md and str(d) == text
    for r in d.rows:
        assert r.name in text and r.name in md
        assert f"{r.weights:,}" in md and f"{r.macs:,}" in md
    table = [line for line in md.splitlines() if line.startswith("|")]
    assert len(table) == 2 + len(d.rows)
    assert len({line.count("|") for line in table}) == 1
    assert f"{d.totals.params:,}" in text
    with pytest.raises(ValueError, match="'html'"):
        d.format("html")


def test_cli_prints_the_table(capsys):
    main(["--samples", "32000", "--markdown"])
    out = capsys.readouterr().out
    assert "| layers.0 |" in out and f"{1 + (32000 - 400) // 160} x 80 x 3" in out


# ------------------------------------------------------------ against the real encoder

_pad = st.one_of(st.sampled_from(["same", "valid", "causal"]), st.integers(0, 2))
_conv_layers = st.builds(
    LayerConfig,
    kind=st.just("conv"),
    filters=st.integers(1, 8),
    kernel=st.lists(st.integers(1, 5), min_size=2, max_size=2),
    stride=st.lists(st.integers(1, 3), min_size=2, max_size=2),
    padding=st.one_of(_pad, st.lists(_pad, min_size=2, max_size=2)),
    batch_norm=st.booleans(),
    activation=st.sampled_from(["relu", "none", "tanh"]),
)
_stack_layers = st.builds(
    LayerConfig, kind=st.just("stack"), filters=st.integers(1, 8), frames=st.integers(1, 4), batch_norm=st.booleans()
)
_encoders = st.builds(
    EncoderConfig,
    layers=st.lists(st.one_of(_conv_layers, _conv_layers, _stack_layers), min_size=1, max_size=4),
    too_short=st.sampled_from(["error", "pad"]),
)


def _real_layers(model: nn.Module) -> list[nn.Module]:
    """The encoder's per-layer modules in forward order: the ones that own a ``conv``."""
    return [m for m in model.modules() if isinstance(getattr(m, "conv", None), nn.Conv2d)]


_small_or_any = st.one_of(st.integers(1, 6), st.integers(1, 40))


@given(enc=_encoders, t=_small_or_any, f=_small_or_any, c=st.integers(1, 4))
@settings(max_examples=40, deadline=None)
def test_description_equals_the_real_encoder(enc, t, f, c):
    try:
        d = describe_layers((t, f, c), enc)
    except ValueError:
        d = None
    try:
        model = ConvEncoder(enc, input_freq=f, input_channels=c).eval()
        layers = _real_layers(model)
        seen = []
        for m in layers:
            m.register_forward_hook(lambda mod, inp, out: seen.append((tuple(inp[0].shape), tuple(out[0].shape))))
        with torch.no_grad():
            out, out_len = model(torch.randn(1, t, f, c), torch.tensor([t]))
    except ValueError:
        assert d is None, f"the encoder rejects {enc} on {(t, f, c)} but the inspector described it"
        event("both reject")
        return
    event("both describe")
    assert d is not None, f"the inspector rejects {enc} on {(t, f, c)} but the encoder ran it"
    assert len(d.rows) == len(layers) == len(seen)
    for row, m, (x, y) in zip(d.rows, layers, seen, strict=True):
        assert row.in_shape == (x[2], x[3], x[1])  # (B, C, T, F) -> (T, F, C)
        assert row.out_shape == (y[2], y[3], y[1])
        assert row.kernel_shape == tuple(m.conv.weight.shape)
        assert row.weights == m.conv.weight.numel()
        assert row.biases == (0 if m.conv.bias is None else m.conv.bias.numel())
        norm_params = [p.numel() for p in m.norm.parameters()] if m.norm is not None else []
        norm_buffers = [b.numel() for b in m.norm.buffers()] if m.norm is not None else []
        assert row.bn_params == sum(norm_params) and row.bn_buffers == sum(norm_buffers)
    assert d.output_shape == tuple(out.shape[1:]) and d.output_shape[0] == int(out_len[0])
    assert d.totals.params == sum(p.numel() for p in model.parameters())
    assert d.totals.bn_buffers == sum(b.numel() for b in model.buffers())
    assert check_against_forward(d).ok


def test_check_against_forward_passes_on_a_two_branch_encoder():
    enc = EncoderConfig(branch=[LayerConfig(kind="stack", frames=4, filters=640)], fusion="gated")
    report = check_against_forward(describe_layers((98, 80, 3), enc))
    assert report.ok and set(report.actual) == {"layers.0", "layers.1", "branch.0", "fusion"}
    assert report.actual["fusion"]["weights"] == 2 * 1280 and report.actual["fusion"]["biases"] == 2


def test_check_against_forward_lists_every_mismatch():
    d = describe_layers((98, 80, 3), EncoderConfig())
    wrong = dataclasses.replace(d.rows[0], weights=1, out_shape=(1, 2, 3))
    bad = dataclasses.replace(d, rows=[wrong, d.rows[1]], output_shape=(24, 20, 32))
    with pytest.raises(ShapeMismatch) as err:
        check_against_forward(bad)
    msg = str(err.value)
    assert "4 place(s)" in msg  # the output length (24 vs 25) is the fourth
    assert "layers.0 weights: described 1, real 864" in msg
    assert "layers.0 out_shape: described (1, 2, 3), real (49, 40, 32)" in msg
    assert "encoder output shape: described (24, 20, 32), real (25, 20, 32)" in msg
    report = check_against_forward(bad, raise_on_mismatch=False)
    assert not report.ok and len(report.mismatches) == 4


def test_check_against_forward_on_real_audio(fixtures_dir, capsys):
    clip = fixtures_dir / "yes_1000ms.wav"
    report = check_against_forward(describe(seconds=1.0), audio=clip)
    assert report.ok and report.description.input_shape == (1 + (16000 - 400) // 160, 80, 3)
    # A waveform of another length is described at its own length.
    short = check_against_forward(None, audio=torch.zeros(5000))
    assert short.ok and short.description.samples == 5000
    assert short.description.input_shape[0] == 1 + (5000 - 400) // 160
    assert main(["--check", str(clip)]) == 0
    assert "all equal" in capsys.readouterr().out

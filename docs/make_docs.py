"""Regenerate the real-output blocks of docs/shapes.md and docs/questions.md.

Each block sits between ``<!-- BEGIN generated: NAME -->`` and
``<!-- END generated: NAME -->``.  ``SNIPPETS[NAME]`` is Python source that is run
from the repository root; the block shows the source and what it printed (``code``
mode) or just what it printed (``markdown`` mode, for tables).  Everything between
the markers is replaced, so edit the prose around them and the snippets here, never
the blocks.

    python docs/make_docs.py           # rewrite the blocks
    python docs/make_docs.py --check   # exit 1 if a page is stale (tests/test_docs_shapes.py does this too)
"""

from __future__ import annotations

import argparse
import contextlib
import io
import os
import re
import sys
import textwrap
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PAGES = (ROOT / "docs" / "shapes.md", ROOT / "docs" / "questions.md")
BLOCK = re.compile(r"(<!-- BEGIN generated: (?P<name>[\w-]+) -->\n)(?P<body>.*?)(<!-- END generated: (?P=name) -->)", re.S)


def _code(src: str) -> tuple[str, str]:
    return "code", textwrap.dedent(src).strip() + "\n"


def _markdown(src: str) -> tuple[str, str]:
    return "markdown", textwrap.dedent(src).strip() + "\n"


SNIPPETS: dict[str, tuple[str, str]] = {
    # ------------------------------------------------------------------ shapes.md
    "pipeline": _code(
        """
        import torch
        import speechconv as sc

        waveform = sc.load_audio("data/fixtures/yes_1000ms.wav")  # (S,) at 16 kHz
        features, length = sc.LogMelDeltas()(waveform)  # (T, F, C)
        encoder = sc.ConvEncoder().eval()
        with torch.no_grad():
            out, out_lengths = encoder(features[None], torch.tensor([int(length)]))  # (B, T', F', C')
        print("waveform (S,)          ", tuple(waveform.shape))
        print("features (T, F, C)     ", tuple(features.shape), "length", int(length))
        print("encoder  (B, T', F', C')", tuple(out.shape), "lengths", out_lengths.tolist())
        print("flattened D = F' * C' =", out.shape[2] * out.shape[3])
        """
    ),
    "describe-default": _markdown(
        """
        import speechconv as sc

        print(sc.describe(seconds=1.0).to_markdown())
        """
    ),
    "check-yes": _code(
        """
        import speechconv as sc

        report = sc.check_against_forward(sc.describe(seconds=1.0), audio="data/fixtures/yes_1000ms.wav")
        print(report.summary())
        print("real layers.1:", report.actual["layers.1"])
        """
    ),
    "filter-block": _code(
        """
        import torch
        import torch.nn.functional as F

        torch.manual_seed(0)
        conv = torch.nn.Conv2d(3, 32, kernel_size=3, bias=False)  # layer 1 of the encoder, unpadded
        x = torch.randn(1, 3, 98, 80)  # (B, C, T, F): static, delta, delta-delta
        print("kernel tensor (out, in, kt, kf):", tuple(conv.weight.shape))
        print("one filter (in, kt, kf):        ", tuple(conv.weight[0].shape))
        print("2-D kernels = in x out =        ", conv.in_channels * conv.out_channels)
        # Output channel 0 = the sum over the 3 input channels of a 3x3 correlation each.
        by_hand = sum(F.conv2d(x[:, i : i + 1], conv.weight[0:1, i : i + 1]) for i in range(3))
        print("channel 0 equals the sum of 3 single-channel convs:", torch.allclose(conv(x)[:, 0:1], by_hand, atol=1e-5))
        """
    ),
    "lenet-7550": _code(
        """
        import torch
        from speechconv.encoder_config import LayerConfig
        from speechconv.inspector import describe_layers

        layer2 = LayerConfig(filters=50, kernel=[5, 5], stride=[2, 2], padding="valid",
                             batch_norm=False, activation="none")
        print(describe_layers((13, 13, 6), [layer2]).to_text())
        conv = torch.nn.Conv2d(in_channels=6, out_channels=50, kernel_size=5, stride=2)
        print("torch:", sum(p.numel() for p in conv.parameters()), "parameters")
        """
    ),
    "too-short": _code(
        """
        import speechconv as sc

        valid = sc.EncoderConfig(layers=[
            sc.LayerConfig(kernel=[3, 3], stride=[2, 2], padding="valid"),
            sc.LayerConfig(kernel=[3, 3], stride=[2, 2], padding="valid"),
        ])
        for kwargs in ({"samples": 1359}, {"samples": 16000, "features": sc.FeatureConfig(n_mels=6)}):
            try:
                sc.describe(encoder=valid, **kwargs)
            except ValueError as err:
                print("ValueError:", err)
        print(sc.describe(encoder=valid, samples=1360).to_text().splitlines()[-1])
        """
    ),
    "streaming": _code(
        """
        import torch
        import speechconv as sc

        # the default front: one zero frame (and row) on each side, the same before every utterance
        print("\\n".join(sc.describe(seconds=1.0).to_text().splitlines()[-3:-1]))
        features, length = sc.LogMelDeltas()(sc.load_audio("data/fixtures/yes_1000ms.wav"))  # (T, F, C)
        encoder = sc.ConvEncoder().eval()
        stream = encoder.streaming()
        with torch.no_grad():
            offline, _ = encoder(features[None], length[None])  # (1, T', F', C')
            pieces = []
            for start in range(0, int(length), 10):  # 10 frames (100 ms) of features at a time
                pieces.append(stream.accept(features[start : start + 10]))
                given = sum(len(p) for p in pieces)
                print(f"frames in {min(start + 10, int(length)):2d}: out {given:2d}, held back {stream.held_back()}")
            pieces.append(stream.finish())
        streamed = torch.cat(pieces)  # (T', F', C')
        print("streamed", tuple(streamed.shape), "offline", tuple(offline[0].shape),
              "within 1e-5:", (streamed - offline[0]).abs().max().item() <= 1e-5)  # float rounding of the convs
        tf_same = sc.EncoderConfig(layers=[sc.LayerConfig(padding="same"), sc.LayerConfig(padding="same")])
        try:
            sc.ConvEncoder(tf_same).eval().streaming()
        except ValueError as err:
            print("ValueError:", str(err)[:118], "...")
        """
    ),
    "streaming-front-end": _code(
        """
        import torch
        import speechconv as sc
        from speechconv import shapes
        from speechconv.streaming import front_end_stream

        # experiment=streaming_digits: the default features and conv front (padding 1)
        print(sc.describe(seconds=1.0).streaming())
        features, encoder = sc.LogMelDeltas(), sc.ConvEncoder().eval()
        stream = front_end_stream(features, encoder)
        wave = sc.load_audio("data/fixtures/yes_1000ms.wav")  # (S,)
        layers = [lc.time_geometry() for lc in encoder.config.layers]
        pieces, fed = [], 0
        with torch.no_grad():
            for start in range(0, wave.numel(), 1600):  # 100 ms chunks
                pieces.append(stream.accept(wave[start : start + 1600]))
                fed = min(start + 1600, wave.numel())
                frames = shapes.stream_frames_ready(fed, 400, 160, 512, "kaldi", 4)
                print(f"{fed:5d} samples: {frames:2d} feature frames final -> "
                      f"{sum(len(p) for p in pieces):2d} encoder frames (formula "
                      f"{shapes.stack_frames_ready(frames, layers):2d}), {stream.frames_held()} held back")
            pieces.append(stream.finish())
            offline, _ = encoder(*features(wave[None]))  # (1, T', F', C')
        streamed = torch.cat(pieces)  # (T', F', C')
        print("streamed", tuple(streamed.shape), "offline", tuple(offline[0].shape),
              "within 1e-5:", (streamed - offline[0]).abs().max().item() <= 1e-5)  # float rounding of the convs
        """
    ),
    # --------------------------------------------------------------- questions.md
    "q-multichannel": _code(
        """
        import torch
        from speechconv.encoder_config import LayerConfig
        from speechconv.inspector import describe_layers

        conv3x3 = LayerConfig(filters=16, kernel=[3, 3], stride=[1, 1], padding="valid",
                              batch_norm=False, activation="none")
        print(describe_layers((10, 5, 6), [conv3x3]).to_text())  # (T, F, C) = (width, height, channels)
        conv = torch.nn.Conv2d(6, 16, (3, 3))
        y = conv(torch.zeros(1, 6, 10, 5))  # (B, C, width, height)
        print("torch: output", tuple(y.shape), "weight", tuple(conv.weight.shape),
              "=", conv.weight.numel(), "weights +", conv.bias.numel(), "biases")
        """
    ),
    "q-blocklinear": _code(
        """
        import torch
        import speechconv as sc
        from speechconv.inspector import describe_layers

        layer = sc.BlockLinear(block=5, out_per_block=3)  # Conv1d(1, 3, kernel_size=5, stride=5)
        x = torch.randn(8, 100, requires_grad=True)  # (B, T)
        y = layer(x)  # (B, T // 5, 3)
        print("output", tuple(y.shape), "weights", layer.conv.weight.numel(), "biases", layer.conv.bias.numel())
        y[0, 7].sum().backward()  # which inputs feed output block 7?
        print("block 7 reads inputs", x.grad[0].nonzero().flatten().tolist())

        stack = sc.LayerConfig(kind="stack", frames=5, filters=3, batch_norm=False, activation="none")
        print(describe_layers((100, 1, 1), [stack]).to_text())
        """
    ),
    "q-weiss": _markdown(
        """
        import speechconv as sc
        from speechconv.inspector import describe_layers

        print(describe_layers((300, 80, 3), sc.EncoderConfig()).to_markdown())
        """
    ),
    "q-weiss-params": _code(
        """
        import speechconv as sc

        for name, p in sc.ConvEncoder().named_parameters():
            print(f"{name:28s} {tuple(p.shape)}")
        """
    ),
    "q-mix": _code(
        """
        import torch
        import speechconv as sc

        torch.manual_seed(0)
        v1, v2 = torch.randn(4, 512, 1), torch.randn(4, 512, 1)  # two (batch, 512, 1) logits
        mix = sc.LearnedMix()
        print("fused", tuple(mix(v1, v2).shape), "alpha at init", round(mix.alpha().item(), 3))
        target = torch.randint(0, 512, (4,))
        opt = torch.optim.SGD(mix.parameters(), lr=1.0)
        for _ in range(50):  # the target agrees with v1 here, so alpha should grow
            logits = mix(v1 * 5.0, v2).squeeze(-1)  # (batch, 512)
            loss = torch.nn.functional.cross_entropy(logits, v1.squeeze(-1).argmax(-1))
            opt.zero_grad()
            loss.backward()
            opt.step()
        print("alpha after 50 steps", round(mix.alpha().item(), 3))
        print("LearnedMix parameters:", sum(p.numel() for p in mix.parameters()),
              "| GatedMix(dim=1) parameters:", sum(p.numel() for p in sc.GatedMix(1).parameters()))
        """
    ),
    "q-branches": _markdown(
        """
        import speechconv as sc

        two = sc.EncoderConfig(branch=[sc.LayerConfig(kind="stack", frames=4, filters=640)], fusion="mix")
        print(sc.describe(encoder=two, seconds=1.0).to_markdown())
        """
    ),
    "q-lenet": _code(
        """
        import torch
        from speechconv.encoder_config import LayerConfig
        from speechconv.inspector import describe_layers

        row = describe_layers((13, 13, 6), [LayerConfig(filters=50, kernel=[5, 5], stride=[2, 2], padding="valid",
                                                        batch_norm=False, activation="none")]).rows[0]
        print("kernel tensor", row.kernel_shape, "| 2-D kernels", row.kernels_2d,
              "| weights", row.weights, "+ biases", row.biases, "=", row.params)
        print("(5*5*6 + 1) * 50 =", (5 * 5 * 6 + 1) * 50, "| (5*5 + 1) * 6 * 50 =", (5 * 5 + 1) * 6 * 50)
        conv = torch.nn.Conv2d(in_channels=6, out_channels=50, kernel_size=5, stride=2)
        print("torch:", sum(p.numel() for p in conv.parameters() if p.requires_grad))
        """
    ),
    "q-keras": _code(
        """
        import torch
        from speechconv.encoder_config import LayerConfig
        from speechconv.inspector import describe_layers

        def conv(filters, k):
            return LayerConfig(filters=filters, kernel=[k, k], stride=[1, 1], padding="valid",
                               batch_norm=False, activation="none")

        print(describe_layers((101, 101, 1), [conv(8, 11), conv(16, 7)]).to_text())
        model = torch.nn.Sequential(torch.nn.Conv2d(1, 8, 11), torch.nn.Conv2d(8, 16, 7))
        w = model[1].weight  # PyTorch (out, in, kh, kw)
        print("torch weight", tuple(w.shape), "-> Keras layout (kh, kw, in, out)", tuple(w.permute(2, 3, 1, 0).shape),
              "=", w.numel(), "weights")
        """
    ),
}


def run_snippet(name: str) -> str:
    """Run ``SNIPPETS[name]`` from the repository root and return its block's text."""
    mode, src = SNIPPETS[name]
    out = io.StringIO()
    cwd = os.getcwd()
    try:
        os.chdir(ROOT)
        with contextlib.redirect_stdout(out):
            exec(compile(src, f"<snippet {name}>", "exec"), {"__name__": f"snippet_{name}"})
    finally:
        os.chdir(cwd)
    printed = out.getvalue().rstrip() + "\n"
    if mode == "markdown":
        return printed
    return f"```python\n{src}```\n\nOutput:\n\n```text\n{printed}```\n"


def blocks(text: str) -> list[tuple[str, str]]:
    """``(name, body)`` of every generated block of a page."""
    return [(m["name"], m["body"]) for m in BLOCK.finditer(text)]


def render(text: str) -> str:
    """The page with every generated block rewritten from its snippet."""
    unknown = [name for name, _ in blocks(text) if name not in SNIPPETS]
    if unknown:
        raise KeyError(f"blocks without a snippet in docs/make_docs.py: {unknown}")
    return BLOCK.sub(lambda m: m.group(1) + run_snippet(m["name"]) + m.group(4), text)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="exit 1 if a page differs from what it would become")
    args = parser.parse_args(argv)
    sys.path.insert(0, str(ROOT))
    from speechconv.atomic import atomic_write_text

    stale = []
    for page in PAGES:
        text = page.read_text(encoding="utf-8")
        new = render(text)
        if new != text:
            stale.append(page.name)
            if not args.check:
                atomic_write_text(page, new)
    if args.check and stale:
        print(f"stale: {', '.join(stale)}; run python docs/make_docs.py", file=sys.stderr)
        return 1
    print(("rewrote: " + ", ".join(stale)) if stale and not args.check else "docs up to date")
    return 0


if __name__ == "__main__":
    sys.exit(main())

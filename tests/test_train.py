"""train.py's jobs end to end on tiny runs: files written, eval, transcribe, determinism, resume, shapes."""

from __future__ import annotations

import csv
import json
import math
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from train_helpers import AUGMENT_ALL_ON, tiny_fsdd

from speechconv.audio import load_audio
from speechconv.config import ConfigError, validate
from speechconv.metrics import cer, wer
from speechconv.models import CTCModel, ctc_collapse
from speechconv.training import (
    loop,
    run,
)
from train import compose

ROOT = Path(__file__).resolve().parents[1]
FSDD = ROOT / "data" / "fsdd"
FIXTURES = ROOT / "data" / "fixtures"
PNG = b"\x89PNG\r\n\x1a\n"
WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
TINY = [*AUGMENT_ALL_ON, "data.train_size=6", "data.valid_size=3", "data.num_workers=0", "data.max_digits=2", "data.max_batch_size=2",
        "trainer.max_steps=4", "trainer.val_every=2", "trainer.log_every=1", "trainer.progress=false",
        "model.hidden=16", "model.projection=16"]


def tiny(tmp_path_factory, *extra: str):
    folder = tiny_fsdd(tmp_path_factory.mktemp("fsdd"))
    return validate(compose([*TINY, f"data.fsdd_dir={folder}", *extra]))


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """One tiny run shared by the file, eval and transcribe tests."""
    out = tmp_path_factory.mktemp("run")
    return loop.train(tiny(tmp_path_factory), out), out


def test_run_writes_checkpoint_metrics_tensorboard_and_plots(trained):
    result, out = trained
    assert len(result.losses) == 4 and all(math.isfinite(x) for x in result.losses)
    rows = list(csv.DictReader((out / "metrics.csv").open()))
    assert [r["step"] for r in rows if r["split"] == "train"] == ["1", "2", "3", "4"]
    assert [float(r["loss"]) for r in rows if r["split"] == "train"] == pytest.approx(result.losses, rel=1e-5)
    valid = [r for r in rows if r["split"] == "valid"]
    assert [r["step"] for r in valid] == ["2", "4"] and all(r["wer"] and r["cer"] for r in valid)
    assert all(float(r["data_ms"]) >= 0 and float(r["compute_ms"]) > 0 for r in rows if r["split"] == "train")

    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(out / "tensorboard"))
    events.Reload()
    assert {"train/loss", "train/lr", "valid/wer", "valid/cer", "valid/loss"} <= set(events.Tags()["scalars"])
    assert [e.step for e in events.Scalars("train/loss")] == [1, 2, 3, 4]

    for name in ("loss.png", "wer.png", "features.png"):
        data = (out / name).read_bytes()
        assert data[:8] == PNG and len(data) > 1000, name
    assert not list(out.glob(".*tmp*")), "temporary files left behind"


def test_checkpoint_holds_plain_values_for_resume(trained):
    result, out = trained
    state = torch.load(out / "last.pt", weights_only=True)
    assert state["step"] == 4
    assert {"model", "config", "vocab", "optimizer", "scheduler", "rng", "sampler", "metrics"} <= set(state)
    assert state["config"]["trainer"]["max_steps"] == 4 and state["config"]["model"]["type"] == "ctc"
    assert set(state["rng"]) >= {"torch", "numpy", "python"}
    assert state["sampler"]["batches_consumed"] >= 1 and "epoch" in state["sampler"]
    assert [v["step"] for v in state["metrics"]["valid"]] == [2, 4]


def test_eval_mode_scores_a_manifest_into_its_own_folder_with_wer_per_speaker(trained, tmp_path, capsys):
    _, out = trained
    clips = [(0, "lucas"), (1, "lucas"), (2, "nicolas"), (3, "nicolas"), (4, "nicolas"), (5, None)]
    manifest = tmp_path / "test.jsonl"
    manifest.write_text("".join(
        json.dumps({"audio_filepath": str(FSDD / f"{d}_{s or 'yweweler'}_0.flac"), "text": WORDS[d],
                    **({"speaker": s} if s else {})}) + "\n" for d, s in clips))
    folders = [tmp_path / "eval_a", tmp_path / "eval_b"]
    for folder in folders:
        code = run(compose(["mode=eval", f"checkpoint={out / 'last.pt'}", f"data.test_manifest={manifest}"]), folder)
        assert code == 0
    printed = capsys.readouterr().out
    assert not list(out.glob("hypotheses_*")), "eval wrote beside the checkpoint"
    rows = [json.loads(line) for line in (folders[0] / "hypotheses_test.jsonl").read_text().splitlines()]
    assert (folders[1] / "hypotheses_test.jsonl").read_text() == (folders[0] / "hypotheses_test.jsonl").read_text()
    assert sorted(r["reference"] for r in rows) == sorted(WORDS[d] for d, _ in clips) and len(rows) == 6
    assert all(Path(r["audio_filepath"]).is_file() for r in rows)
    refs, hyps = [r["reference"] for r in rows], [r["hypothesis"] for r in rows]
    assert f"WER {100 * wer(refs, hyps).rate:.2f}%" in printed and f"CER {100 * cer(refs, hyps).rate:.2f}%" in printed
    for speaker, n in (("lucas", 2), ("nicolas", 3)):
        mine = [r for r in rows if r.get("speaker") == speaker]
        w = wer([r["reference"] for r in mine], [r["hypothesis"] for r in mine]).rate
        c = cer([r["reference"] for r in mine], [r["hypothesis"] for r in mine]).rate
        assert f"speaker {speaker}: {n} utterances  WER {100 * w:.2f}%  CER {100 * c:.2f}%" in printed
    assert printed.count("speaker ") == 2 * 2  # two speakers, two runs; the row without one is not a speaker


def test_bad_manifest_rows_are_skipped_by_line_or_stop_the_run_with_strict(tmp_path):
    """train.py with a manifest holding bad rows: each is printed with its line and skipped;
    with data.strict=true the run stops at the first, naming its line."""
    good = [json.dumps({"audio_filepath": str(FSDD / f"{d}_jackson_5.flac"), "text": WORDS[d]}) for d in range(4)]
    lines = [good[0], "{not json", good[1], json.dumps({"audio_filepath": "missing.wav", "text": "one"}),
             json.dumps({"audio_filepath": str(FSDD / "2_jackson_5.flac")}), good[2], good[3]]
    manifest = tmp_path / "train.jsonl"
    manifest.write_text("\n".join(lines) + "\n")
    args = [sys.executable, str(ROOT / "train.py"), "data=manifest", f"data.train_manifest={manifest}",
            f"data.valid_manifest={manifest}", "trainer.max_steps=1", "trainer.progress=false", "data.num_workers=0",
            "model.hidden=16", "model.projection=16"]
    proc = subprocess.run([*args, f"hydra.run.dir={tmp_path / 'a'}"], capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr
    skipped = [line for line in proc.stdout.splitlines() if line.startswith("warning: skipped")]
    assert len(skipped) == 3 * 2  # three bad rows, read as the training and as the validation manifest
    for number, cause in ((2, "invalid JSON"), (4, "does not exist"), (5, "missing key(s) ['text']")):
        assert sum(f"{manifest}:{number}: " in line and cause in line for line in skipped) == 2, proc.stdout
    proc = subprocess.run([*args, "data.strict=true", f"hydra.run.dir={tmp_path / 'b'}"], capture_output=True,
                          text=True, timeout=240)
    assert proc.returncode == 2
    assert proc.stderr.startswith(f"error: {manifest}:2: invalid JSON") and "data.strict=false" in proc.stderr
    assert "Traceback" not in proc.stderr and not (tmp_path / "b" / "last.pt").exists()


def test_transcribe_mode_reports_bad_files_and_keeps_going(trained, tmp_path, capsys):
    _, out = trained
    corrupt = tmp_path / "corrupt.wav"
    corrupt.write_bytes(b"RIFF\x00\x00\x00\x00WAVEnot really")
    good = [FIXTURES / "yes_1000ms.wav", FSDD / "7_nicolas_3.flac"]
    audio = [str(good[0]), str(corrupt), str(tmp_path / "missing.flac"), str(good[1])]
    code = run(compose(["mode=transcribe", f"checkpoint={out / 'last.pt'}", f"audio=[{','.join(audio)}]"]), tmp_path)
    printed = capsys.readouterr()
    assert code == 1
    lines = printed.out.splitlines()
    assert [line.split("\t")[0] for line in lines] == [str(g) for g in good]
    assert "corrupt.wav" in printed.err and "missing.flac" in printed.err


@pytest.mark.slow
def test_export_mode_writes_a_checked_graph(trained, tmp_path, capsys):
    """``python train.py mode=export`` (ONNX, in a subprocess) and ``export.format=pt2`` (in
    process, default path in the run folder): the file is written and matches the eager
    model on a bundled clip (the job's own check, which returns 1 otherwise)."""
    _, out = trained
    onnx_path = tmp_path / "exported" / "model.onnx"
    proc = subprocess.run([sys.executable, str(ROOT / "train.py"), "mode=export", f"checkpoint={out / 'last.pt'}",
                           "export.format=onnx", f"export.path={onnx_path}", f"hydra.run.dir={tmp_path / 'run'}"],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert onnx_path.is_file() and f"wrote {onnx_path}" in proc.stdout and "check on arctic_a0007.wav" in proc.stdout

    import onnx

    props = {p.key: p.value for p in onnx.load(str(onnx_path)).metadata_props}
    assert json.loads(props["vocabulary"])[int(props["blank"])] == "<blank>" and props["sample_rate"] == "16000"
    code = run(compose(["mode=export", f"checkpoint={out / 'last.pt'}", "export.format=pt2"]), tmp_path)
    assert code == 0 and (tmp_path / "model.pt2").is_file()
    assert "check on arctic_a0007.wav: log_probs within" in capsys.readouterr().out


def test_same_seed_same_losses(tmp_path_factory):
    """With every perturbation and SpecAugment on: the seed alone decides the losses."""
    runs = [loop.train(tiny(tmp_path_factory, "trainer.max_steps=3", f"trainer.seed={s}"), tmp_path_factory.mktemp("d"))
            for s in (7, 7, 8)]
    assert runs[0].losses == runs[1].losses
    assert runs[0].losses != runs[2].losses


def test_resume_continues_exactly(tmp_path_factory, monkeypatch):
    """Stop after step 3 (last checkpoint at step 2, mid-epoch), resume: steps 3-4 as in an unbroken run."""
    cfg = tiny(tmp_path_factory)
    unbroken = loop.train(cfg, tmp_path_factory.mktemp("a"))
    out = tmp_path_factory.mktemp("b")
    real_step, calls = loop.train_step, []

    def stop_at_three(*args, **kwargs):
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return real_step(*args, **kwargs)

    monkeypatch.setattr(loop, "train_step", stop_at_three)
    with pytest.raises(KeyboardInterrupt):
        loop.train(cfg, out)
    monkeypatch.setattr(loop, "train_step", real_step)
    cfg.trainer.resume = True
    resumed = loop.train(cfg, out)
    assert resumed.losses == unbroken.losses[2:]
    assert [r["step"] for r in csv.DictReader((out / "metrics.csv").open()) if r["split"] == "train"] == [
        "1", "2", "3", "4"]


def test_shapes_mode_shows_the_overridden_shapes(tmp_path, capsys):
    assert run(compose(["mode=shapes", "encoder.layers.0.filters=64", "features.n_mels=40"]), tmp_path) == 0
    printed = capsys.readouterr().out
    frames = 1 + (16000 - 400) // 160  # yes_1000ms.wav: 1.000 s at 16 kHz, 25 ms windows every 10 ms
    t4 = -(-frames // 4)
    assert "all equal" in printed
    assert f"(1, {frames}, 40, 3) -> (1, {t4}, {10 * 32})" in printed  # 40 -> 20 -> 10 rows, 32 filters flattened
    # layer 0: 64 kernels of 3 x 3 x 3 over 98 x 40 x 3; layer 1 reads its 64 channels
    assert re.search(r"layers\.0 +conv\+relu +98 x 40 x 3 +64 x 3 x 3 x 3 .* 49 x 20 x 64 ", printed)
    assert re.search(r"layers\.1 +conv\+relu +49 x 20 x 64 +32 x 64 x 3 x 3 .* 25 x 10 x 32 ", printed)


def test_shapes_via_train_py_for_the_full_encoder(tmp_path):
    proc = subprocess.run([sys.executable, str(ROOT / "train.py"), "mode=shapes", "encoder=weiss2017_full",
                           f"hydra.run.dir={tmp_path}"], capture_output=True, text=True, cwd=tmp_path, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "-> (1, 25, 512)" in proc.stdout and "all equal" in proc.stdout


def test_ctc_collapse_merges_repeats_then_drops_blanks():
    assert ctc_collapse([1, 1, 0, 1, 2, 2, 0, 0, 3, 3], blank_id=0) == [1, 1, 2, 3]
    assert ctc_collapse([0, 0, 0], blank_id=0) == [] and ctc_collapse([], blank_id=0) == []


def test_ctc_model_loss_matches_torch_ctc_on_the_encoder_lengths():
    torch.manual_seed(0)
    cfg = validate(compose())
    from speechconv.models import build_encoder

    model = CTCModel(build_encoder(cfg.encoder, cfg.features), vocab_size=10, blank_id=3, projection=8, hidden=8,
                     dropout=0.0).eval()
    features, lengths = torch.randn(2, 40, 80, 3), torch.tensor([40, 21])
    targets, target_lengths = torch.tensor([[1, 2, 2], [4, 5, 0]]), torch.tensor([3, 2])
    log_probs, out_lengths = model.log_probs(features, lengths)
    assert out_lengths.tolist() == [10, 6]  # ceil(40 / 4), ceil(ceil(21 / 2) / 2)
    per_utt = [
        torch.nn.functional.ctc_loss(log_probs[b, : out_lengths[b], None], targets[b : b + 1, : target_lengths[b]],
                                     out_lengths[b : b + 1], target_lengths[b : b + 1], blank=3, reduction="sum")
        / target_lengths[b]
        for b in range(2)
    ]
    loss = float(model(features, lengths, targets, target_lengths).detach())
    assert loss == pytest.approx(float(sum(per_utt).detach() / 2), rel=1e-5)
    # too short for its target (4 output frames, 9 labels with repeats): zero_infinity gives 0, not inf
    long_target = torch.tensor([[1, 1, 1, 1, 1, 1, 1, 1, 1]])
    assert float(model(features[:1, :16], torch.tensor([16]), long_target, torch.tensor([9])).detach()) == 0.0


def test_lr_schedule_warms_up_then_decays():
    cfg = validate(compose(["trainer.max_steps=100", "trainer.warmup_frac=0.1"])).trainer
    factors = [loop.lr_lambda(s, cfg) for s in range(101)]
    assert factors[0] == pytest.approx(0.04) and factors[10] == pytest.approx(1.0)
    assert factors[100] == pytest.approx(0.004)
    assert all(a < b for a, b in zip(factors[:10], factors[1:11], strict=True)) and all(
        a >= b for a, b in zip(factors[10:-1], factors[11:], strict=True))


def test_synthetic_voices_train_but_are_never_validated_nor_held_out(tmp_path_factory):
    from speechconv.data.digits import default_synthetic_dir, folder_speakers
    from speechconv.text import CharVocabulary
    from speechconv.training.data import build_train_data

    cfg = tiny(tmp_path_factory, "data.train_size=200")
    assert cfg.data.synthetic_voices and folder_speakers(default_synthetic_dir()) == ["espeak"]
    data = build_train_data(cfg.data, cfg.features, CharVocabulary(), 0)
    bank = data.train.bank
    trained_on = {bank.speakers[p.clips[0]] for p in data.train.plans(0)}
    assert "espeak" in trained_on and not trained_on & set(cfg.data.holdout_speakers)
    for name, valid in data.valid.items():
        assert "espeak" not in {bank.speakers[c] for p in valid.plans(0) for c in p.clips}, name
    with pytest.raises(ConfigError, match="synthetic voices are training material only"):
        build_train_data(tiny(tmp_path_factory, "data.holdout_speakers=[espeak]").data, cfg.features,
                         CharVocabulary(), 0)
    plain = tiny(tmp_path_factory, "data.synthetic_voices=false")
    assert "espeak" not in build_train_data(plain.data, plain.features, CharVocabulary(), 0).train.bank.speakers


def test_stream_mode_prints_a_growing_transcript_that_ends_as_transcribe_does(trained, tmp_path_factory, tmp_path,
                                                                              capsys):
    """``experiment=streaming_digits`` trained a few steps, then each file fed in 100 ms
    chunks (and in 37 ms ones): the greedy transcript grows with the seconds of audio at
    which characters became final and ends as the offline greedy decode; the last line
    is ``mode=transcribe``'s (through the digits lexicon) for the same checkpoint and
    files; the default (bidirectional) model is refused naming model.bidirectional."""
    from speechconv.features import LogMelDeltas
    from speechconv.training.checkpoint import restore_model

    out = tmp_path_factory.mktemp("streaming")
    loop.train(tiny(tmp_path_factory, "experiment=streaming_digits", "trainer.max_steps=2"), out)
    capsys.readouterr()
    audio = [str(FIXTURES / "yes_1000ms.wav"), str(FSDD / "7_nicolas_3.flac"), str(FSDD / "0_jackson_0.flac")]
    model, run_cfg, vocab = restore_model(out / "last.pt", "cpu")
    assert model.lexicon is not None, "the digits preset decodes through its lexicon"
    greedy = {}
    for path in audio:
        feats, length = LogMelDeltas(run_cfg.features)(load_audio(path, run_cfg.features.sample_rate))
        greedy[path] = vocab.transcript(model.greedy_decode(feats[None], length.reshape(1))[0])
    files = f"audio=[{','.join(audio)}]"
    assert run(compose(["mode=transcribe", f"checkpoint={out / 'last.pt'}", files]), tmp_path) == 0
    offline = capsys.readouterr().out.splitlines()
    assert [line.split("\t")[0] for line in offline] == audio
    for chunk_ms in (100, 37):
        assert run(compose(["mode=stream", f"checkpoint={out / 'last.pt'}", files, f"stream.chunk_ms={chunk_ms}"]),
                   tmp_path) == 0
        lines = capsys.readouterr().out.splitlines()
        assert lines[0].startswith("streaming in chunks of") and "look-ahead 1520 samples (95 ms)" in lines[0]
        finals = [line for line in lines[1:] if line.count("\t") == 1]
        assert finals == offline
        for path in audio:
            growing = [line.split("\t") for line in lines if line.count("\t") == 2 and line.startswith(path)]
            times = [float(t.removesuffix(" s")) for _, t, _ in growing]
            assert times == sorted(times) and all(t > 0 for t in times)
            texts = [text for _, _, text in growing]
            assert all(b.startswith(a) and len(b) > len(a) for a, b in zip(texts, texts[1:], strict=False))
            assert " ".join((texts[-1] if texts else "").split()) == greedy[path]
    with pytest.raises(ConfigError, match="model.bidirectional=true cannot stream"):
        run(compose(["mode=stream", f"checkpoint={trained[1] / 'last.pt'}", files]), tmp_path)

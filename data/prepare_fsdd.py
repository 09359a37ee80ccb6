"""Copy the Free Spoken Digit Dataset clips into data/fsdd as 8 kHz 16-bit FLAC.

Usage::

    python data/prepare_fsdd.py SRC_DIR [--out data/fsdd]

``SRC_DIR`` holds ``{digit}_{speaker}_{take}.wav`` (8 kHz mono 16-bit PCM).  Every
clip is stored losslessly with its original rate and samples (speechconv resamples to
16 kHz when it loads them), then read back and compared sample by sample with the
WAV: the script fails on any difference.  The output is deterministic (sorted input,
fixed FLAC settings, no timestamps), so running it twice gives identical files.

Licence: the clips are the Free Spoken Digit Dataset (Jakobovski et al., v1.0.10),
CC BY-SA 4.0; the FLAC files are data derived from it under the same licence (see
data/README.md).
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

import numpy as np
import soundfile as sf

NAME = re.compile(r"^\d_[a-z]+_\d+\.wav$")
SAMPLE_RATE = 8000
COMPRESSION_LEVEL = 1.0
"""libsndfile's FLAC compression level in [0, 1] (1.0 = FLAC level 8, the smallest)."""


def convert(src: Path, dst: Path) -> None:
    """Write ``src`` (WAV) as FLAC at ``dst`` and check the samples survive bit-exactly."""
    info = sf.info(str(src))
    if info.samplerate != SAMPLE_RATE or info.channels != 1 or info.subtype != "PCM_16":
        raise SystemExit(
            f"{src}: {info.samplerate} Hz, {info.channels} channel(s), {info.subtype}; "
            f"expected FSDD's {SAMPLE_RATE} Hz mono PCM_16"
        )
    samples, _ = sf.read(str(src), dtype="int16")
    tmp = dst.with_name(f".{dst.name}.tmp.flac")
    sf.write(str(tmp), samples, SAMPLE_RATE, format="FLAC", subtype="PCM_16", compression_level=COMPRESSION_LEVEL)
    back, rate = sf.read(str(tmp), dtype="int16")
    if rate != SAMPLE_RATE or not np.array_equal(back, samples):
        tmp.unlink()
        raise SystemExit(f"{src}: the FLAC round trip changed the samples; not writing {dst}")
    tmp.replace(dst)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("src_dir", type=Path, help="folder of FSDD {digit}_{speaker}_{take}.wav files")
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "fsdd")
    args = parser.parse_args(argv)
    files = sorted(p for p in args.src_dir.glob("*.wav") if NAME.match(p.name))
    if not files:
        raise SystemExit(f"no FSDD clips ({{digit}}_{{speaker}}_{{take}}.wav) in {args.src_dir}")
    args.out.mkdir(parents=True, exist_ok=True)
    for src in files:
        convert(src, args.out / (src.stem + ".flac"))
    total = sum((args.out / (p.stem + ".flac")).stat().st_size for p in files)
    print(f"wrote {len(files)} FLAC clips to {args.out} ({total / 1e6:.2f} MB), every one bit-exact")
    return 0


if __name__ == "__main__":
    sys.exit(main())

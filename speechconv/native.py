"""Build and load the C++ feature kernels (``speechconv/csrc/kernels.cpp``) at first use.

The numba kernels (:mod:`speechconv.kernels`) are serial: at 2 threads the FFT and the
log use both cores but the kernels one.  The same kernels written as ATen ops split
their frames over torch's own intra-op threads (``at::parallel_for``, the pool every
torch op uses, so no second pool competes for the cores), and give the same bits.

:func:`ops` compiles the source once per machine with the system C++ compiler (about
5 s) into a cache directory and loads it with ``torch.ops.load_library``; later
processes load the cached library (milliseconds).  The library's name carries a hash
of everything that shapes the binary: the source, the flags, the compiler's version,
torch's version and the Python ABI.  It is written to a temporary name and renamed, so
processes building at once never load a half-written file.

Where there is no compiler, or the build fails, :func:`ops` warns once (with the
compiler's message) and returns ``None``: the numba kernels then run, with the same
results, one thread.  ``SPEECHCONV_NATIVE=0`` skips the build; ``SPEECHCONV_CACHE``
moves the cache (default ``$XDG_CACHE_HOME/speechconv``, else ``~/.cache/speechconv``,
else a per-user folder in the temp directory).
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import sysconfig
import tempfile
import threading
import warnings
from pathlib import Path

import torch

SOURCE = Path(__file__).with_name("csrc") / "kernels.cpp"
ENABLED = os.environ.get("SPEECHCONV_NATIVE", "1") != "0"
"""Build and use the C++ kernels (``SPEECHCONV_NATIVE=0`` or ``False``: the numba kernels run)."""

FLAGS = ("-O3", "-std=c++20", "-shared", "-fPIC", "-ffp-contract=off", "-fvisibility=hidden")
"""``-ffp-contract=off``: no fused multiply-adds, so every product is rounded before its
sum, as in the numba kernels and the eager ops (the results are then the same bits)."""

_lock = threading.Lock()
_state: dict[str, object] = {}  # "ops": the loaded namespace or None, once tried


def cache_dirs() -> list[Path]:
    """Where built libraries are kept: ``SPEECHCONV_CACHE`` if set, else the user's cache
    directory, then (where that is not writable) a per-user one in the temp directory."""
    if "SPEECHCONV_CACHE" in os.environ:
        return [Path(os.environ["SPEECHCONV_CACHE"])]
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return [Path(base) / "speechconv", Path(tempfile.gettempdir()) / f"speechconv-{os.getuid()}"]


def _torch_uses_openmp() -> bool:
    """Whether ATen's ``parallel_for`` is OpenMP in this torch build (then the source
    must be compiled with ``-fopenmp`` for its loops to be split at all)."""
    config = Path(torch.__file__).parent / "include" / "ATen" / "Config.h"
    return "#define AT_PARALLEL_OPENMP 1" in config.read_text()


def build_command(compiler: str, output: Path) -> list[str]:
    """The compiler command line that builds :data:`SOURCE` into ``output``."""
    root = Path(torch.__file__).parent
    abi = int(torch._C._GLIBCXX_USE_CXX11_ABI)
    openmp = ["-fopenmp"] if _torch_uses_openmp() else []
    return [compiler, *FLAGS, *openmp, f"-D_GLIBCXX_USE_CXX11_ABI={abi}",
            "-isystem", str(root / "include"), str(SOURCE), "-o", str(output),
            "-L", str(root / "lib"), "-lc10", "-ltorch_cpu", f"-Wl,-rpath,{root / 'lib'}"]


def _library_name(compiler: str) -> str:
    probe = subprocess.run([compiler, "--version"], capture_output=True, text=True)
    version = f"{probe.returncode} {probe.stdout} {probe.stderr}"
    key = hashlib.sha256()
    for part in (SOURCE.read_bytes(), " ".join(build_command(compiler, Path("x"))).encode(), version.encode(),
                 torch.__version__.encode(), (sysconfig.get_config_var("SOABI") or sys.version).encode()):
        key.update(part)
    return f"kernels-{key.hexdigest()[:16]}.so"


def _build(compiler: str) -> Path:
    """The library's path in the first cache directory that has it, else built into the
    first writable one (:func:`cache_dirs`)."""
    name, folders = _library_name(compiler), cache_dirs()
    for folder in folders:
        if (folder / name).exists():
            return folder / name
    for folder in folders:
        try:
            folder.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(prefix=name + ".", suffix=".tmp", dir=folder)
        except OSError as error:
            unwritable = error
            continue
        os.close(fd)
        try:
            result = subprocess.run(build_command(compiler, Path(tmp)), capture_output=True, text=True)
            if result.returncode != 0:
                errors = [line for line in result.stderr.splitlines() if "error" in line] or [result.stderr.strip()]
                raise RuntimeError(f"{compiler} exited with {result.returncode}: " + "\n".join(errors[:3]))
            os.replace(tmp, folder / name)  # atomic: a reader sees the whole library or none
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
        return folder / name
    raise OSError(f"no writable cache directory among {[str(f) for f in folders]} ({unwritable}); "
                  f"set SPEECHCONV_CACHE to one")


def compiler() -> str | None:
    """The C++ compiler to build with: ``$CXX``, else ``c++`` or ``g++`` on the path."""
    return os.environ.get("CXX") or shutil.which("c++") or shutil.which("g++")


def ops():
    """``torch.ops.speechconv`` with the C++ kernels loaded, or ``None`` where they are
    disabled (:data:`ENABLED`) or cannot be built (warned once, with the reason)."""
    if not ENABLED:
        return None
    if "ops" not in _state:
        with _lock:
            if "ops" not in _state:
                _state["ops"] = _load()
    return _state["ops"]


def _load():
    cxx = compiler()
    try:
        if cxx is None:
            raise RuntimeError("no C++ compiler found (set CXX, or install g++)")
        torch.ops.load_library(str(_build(cxx)))
    except (OSError, RuntimeError, subprocess.SubprocessError) as error:
        warnings.warn(f"speechconv: the C++ feature kernels could not be built, so the numba kernels run "
                      f"(same results, one thread): {error}", RuntimeWarning, stacklevel=4)
        return None
    return torch.ops.speechconv

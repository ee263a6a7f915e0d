#!/usr/bin/env python3
"""Regenerate (or verify) the Python stubs for src/crisp/api/cri.proto.

The stubs are committed so that installing crisp never needs protoc. This
script is the single way to produce them, so that the output only depends on
the proto file and the grpcio-tools version. ``--check`` regenerates into a
temporary directory and fails when the committed files differ, which lets CI
and the unit tests catch a proto edit without a matching regeneration.
"""

from __future__ import annotations

import argparse
import importlib.resources
import sys
import tempfile
from pathlib import Path

from grpc_tools import protoc  # type: ignore[import-untyped]

REPO_ROOT = Path(__file__).resolve().parents[1]
SRC_DIR = REPO_ROOT / "src"
# Compiled relative to src/ so the generated classes get the importable module
# name "crisp.api.cri_pb2" (protoc derives __module__ from the proto path).
PROTO_REL = Path("crisp/api/cri.proto")
API_DIR_REL = PROTO_REL.parent
# crisp's own extension services, served on the same socket (crisp_images: import/export).
EXTENSION_PROTOS = (Path("crisp/api/crisp_images.proto"),)
GENERATED = (
    "cri_pb2.py", "cri_pb2.pyi", "cri_pb2_grpc.py",
    "crisp_images_pb2.py", "crisp_images_pb2.pyi", "crisp_images_pb2_grpc.py",
)

# protoc writes an absolute import into the gRPC module; a relative one keeps the
# package relocatable and avoids importing a top-level "crisp" by accident.
_ABSOLUTE_IMPORT = "from crisp.api import cri_pb2 as crisp_dot_api_dot_cri__pb2\n"
_RELATIVE_IMPORT = "from . import cri_pb2 as crisp_dot_api_dot_cri__pb2\n"


def _fix_grpc_import(text: str, module: str = "cri") -> str:
    """Rewrite the gRPC module's import of <module>_pb2 to be package-relative.

    Fails loudly instead of silently leaving the absolute import if a newer
    grpcio-tools changes the line it emits.
    """
    alias = f"crisp_dot_api_dot_{module.replace('_', '__')}__pb2"
    absolute = f"from crisp.api import {module}_pb2 as {alias}\n"
    relative = f"from . import {module}_pb2 as {alias}\n"
    if text.count(absolute) != 1:
        raise RuntimeError(
            f"expected exactly one {absolute.strip()!r} in {module}_pb2_grpc.py; "
            "grpcio-tools output changed, update scripts/generate_proto.py"
        )
    return text.replace(absolute, relative)


def generate(src_dir: Path, out_dir: Path) -> dict[str, str]:
    """Run protoc on ``src_dir/crisp/api/cri.proto``, writing under ``out_dir``.

    Returns the post-processed contents of the generated files keyed by file
    name; they are also written to ``out_dir/crisp/api/``.
    """
    well_known = importlib.resources.files("grpc_tools") / "_proto"
    args = [
        "grpc_tools.protoc",
        f"--proto_path={src_dir}",
        f"--proto_path={well_known}",
        f"--python_out={out_dir}",
        f"--pyi_out={out_dir}",
        f"--grpc_python_out={out_dir}",
        str(PROTO_REL),
        *(str(proto) for proto in EXTENSION_PROTOS),
    ]
    (out_dir / API_DIR_REL).mkdir(parents=True, exist_ok=True)
    if protoc.main(args) != 0:
        raise RuntimeError(f"protoc failed for {src_dir / PROTO_REL}")
    api_out = out_dir / API_DIR_REL
    grpc_file = api_out / "cri_pb2_grpc.py"
    grpc_file.write_text(_fix_grpc_import(grpc_file.read_text()))
    for proto in EXTENSION_PROTOS:
        extension = api_out / f"{proto.stem}_pb2_grpc.py"
        extension.write_text(_fix_grpc_import(extension.read_text(), proto.stem))
    return {name: (api_out / name).read_text() for name in GENERATED}


def stale_files(src_dir: Path = SRC_DIR) -> list[str]:
    """Names of committed stubs that differ from a fresh generation (or are missing)."""
    with tempfile.TemporaryDirectory(prefix="crisp-proto-") as tmp:
        fresh = generate(src_dir, Path(tmp))
    stale: list[str] = []
    for name, content in fresh.items():
        committed = src_dir / API_DIR_REL / name
        if not committed.is_file() or committed.read_text() != content:
            stale.append(str(committed.relative_to(src_dir.parent)))
    return stale


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point; returns the process exit status."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--check",
        action="store_true",
        help="do not write anything; exit 1 if the committed stubs are stale",
    )
    opts = parser.parse_args(argv)
    if opts.check:
        stale = stale_files()
        if stale:
            print("stale generated files (run scripts/generate_proto.py):", file=sys.stderr)
            for name in stale:
                print(f"  {name}", file=sys.stderr)
            return 1
        print("generated stubs are up to date")
        return 0
    for name in generate(SRC_DIR, SRC_DIR):
        print(f"wrote {SRC_DIR.relative_to(REPO_ROOT) / API_DIR_REL / name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Generate Python stubs for protos/cursor/v1 into generated/.

The proto path equals the package path (`-I protos`, files under
`protos/cursor/v1/`), so protoc's absolute imports (`from cursor.v1 import
resources_pb2`) resolve once `generated/` is an installed package root.

Beside the stubs: a descriptor set with source info (protoc's Python output
drops the comments; server reflection serves them from this set), and the
vendored google/rpc protos under protos/, refreshed from the installed
googleapis-common-protos.

Usage: python tools/gen_protos.py [--out DIR] [--check]
"""

from __future__ import annotations

import argparse
import filecmp
import importlib.metadata
import shutil
import sys
import sysconfig
import tempfile
from pathlib import Path

from grpc_tools import protoc

ROOT = Path(__file__).resolve().parent.parent
PROTO_ROOT = ROOT / "protos"
PACKAGE = Path("cursor") / "v1"
GENERATED = ROOT / "generated"
# Read by cursor_grpc/reflection.py as package data of cursor.v1.
DESCRIPTOR_SET = "descriptor_set.binpb"
# What the API's errors are made of: Status, with ErrorInfo, BadRequest and RetryInfo.
VENDORED = Path("google") / "rpc"
VENDORED_PROTOS = ("status.proto", "error_details.proto")


def _plugin(name: str) -> str:
    """Path of a protoc plugin installed beside this interpreter."""
    candidate = Path(sysconfig.get_path("scripts")) / name
    if not candidate.exists():
        raise SystemExit(f"{name} not found; install the dev extras (mypy-protobuf)")
    return str(candidate)


def generate(out: Path) -> None:
    """Write the stubs for every proto under protos/cursor/v1 into `out`."""
    grpc_tools_protos = Path(protoc.__file__).parent / "_proto"
    sources = sorted(str(p.relative_to(PROTO_ROOT)) for p in (PROTO_ROOT / PACKAGE).glob("*.proto"))
    if not sources:
        raise SystemExit("no .proto files found")
    (out / PACKAGE).mkdir(parents=True, exist_ok=True)
    args = [
        "grpc_tools.protoc",
        f"-I{PROTO_ROOT}",
        f"-I{grpc_tools_protos}",
        f"--plugin=protoc-gen-mypy={_plugin('protoc-gen-mypy')}",
        f"--plugin=protoc-gen-mypy_grpc={_plugin('protoc-gen-mypy_grpc')}",
        f"--python_out={out}",
        f"--mypy_out={out}",
        f"--grpc_python_out={out}",
        f"--mypy_grpc_out={out}",
        f"--descriptor_set_out={out / PACKAGE / DESCRIPTOR_SET}",
        "--include_source_info",
        "--include_imports",
        *sources,
    ]
    if protoc.main(args) != 0:
        raise SystemExit("protoc failed")
    for package_dir in (out / "cursor", out / PACKAGE):
        (package_dir / "__init__.py").write_text('"""Generated from protos/; do not edit."""\n')
        (package_dir / "py.typed").write_text("")


def vendor(proto_root: Path) -> None:
    """Copy the google/rpc protos and their licence from the installed
    googleapis-common-protos (the Python side of the same messages), so
    clients in other languages can decode the errors' details."""
    dist = importlib.metadata.distribution("googleapis-common-protos")
    target = proto_root / VENDORED
    target.mkdir(parents=True, exist_ok=True)
    for name in VENDORED_PROTOS:
        shutil.copyfile(str(dist.locate_file(VENDORED / name)), target / name)
    licence = next(path for path in dist.files or () if path.name == "LICENSE")
    shutil.copyfile(str(dist.locate_file(licence)), target / "LICENSE")


def differences(expected: Path, actual: Path) -> list[str]:
    """Relative paths that differ between two generated trees."""
    names = {p.relative_to(expected) for p in expected.rglob("*") if p.is_file() and "__pycache__" not in p.parts}
    names |= {p.relative_to(actual) for p in actual.rglob("*") if p.is_file() and "__pycache__" not in p.parts}
    return sorted(
        str(name)
        for name in names
        if not (expected / name).exists()
        or not (actual / name).exists()
        or not filecmp.cmp(expected / name, actual / name, shallow=False)
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=GENERATED)
    parser.add_argument("--check", action="store_true", help="fail if the committed stubs are stale")
    args = parser.parse_args(argv)
    if args.check:
        with tempfile.TemporaryDirectory() as tmp:
            generate(Path(tmp) / "generated")
            vendor(Path(tmp) / "protos")
            stale = differences(Path(tmp) / "generated", args.out) + [
                str(Path("protos") / VENDORED / name)
                for name in differences(Path(tmp) / "protos" / VENDORED, PROTO_ROOT / VENDORED)
            ]
        if stale:
            print("generated/ or protos/google/rpc is stale; run `make generate`:", *stale, sep="\n  ",
                  file=sys.stderr)
            return 1
        print("generated/ and protos/google/rpc are up to date")
        return 0
    target = args.out / "cursor"
    if target.exists():
        shutil.rmtree(target)
    generate(args.out)
    vendor(PROTO_ROOT)
    return 0


if __name__ == "__main__":
    sys.exit(main())

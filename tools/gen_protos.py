"""Generate the Python code for every .proto under protos/ into services/ (run by `make protos`).

The generated modules land in ``services/marginflow/api/<area>/v1/`` and are never edited by
hand or committed; the build regenerates them. Usage: ``python tools/gen_protos.py``.
"""

from __future__ import annotations

import pathlib
import sys

from grpc_tools import protoc
import grpc_tools

ROOT = pathlib.Path(__file__).resolve().parent.parent
PROTO_DIR = ROOT / "protos"
OUT_DIR = ROOT / "services"


def main() -> int:
    protos = sorted(str(p.relative_to(PROTO_DIR)) for p in PROTO_DIR.rglob("*.proto"))
    if not protos:
        print("no .proto files under protos/", file=sys.stderr)
        return 1
    well_known = str(pathlib.Path(grpc_tools.__file__).parent / "_proto")
    args = ["protoc", f"-I{PROTO_DIR}", f"-I{well_known}", f"--python_out={OUT_DIR}",
            f"--pyi_out={OUT_DIR}", f"--grpc_python_out={OUT_DIR}", *protos]
    rc = protoc.main(args)
    if rc != 0:
        print(f"protoc failed with {rc}", file=sys.stderr)
        return rc
    # Packages for the generated modules (protoc writes none).
    for proto in protos:
        pkg = (OUT_DIR / proto).parent
        while pkg != OUT_DIR / "marginflow":
            (pkg / "__init__.py").touch()
            pkg = pkg.parent
    print(f"generated {len(protos)} protos into {OUT_DIR / 'marginflow' / 'api'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

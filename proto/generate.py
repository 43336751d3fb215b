"""Generate the Python gRPC stubs from proto/strata/v1/strata.proto.

    python proto/generate.py          # write the stubs
    python proto/generate.py --check  # exit 1 if the checked-in stubs are stale

The stubs exist once, in the client distribution (`strata_client._proto`),
which must not import the daemon's packages; the daemon imports them from
there (it depends on strata-client), as etcd's server and client both import
`api/etcdserverpb`.
"""

from __future__ import annotations

import os
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SOURCE = "strata/v1/strata.proto"
TARGETS = {
    os.path.join(ROOT, "client", "strata_client", "_proto"): "strata_client._proto",
}
FILES = ("strata_pb2.py", "strata_pb2.pyi", "strata_pb2_grpc.py")


def generate() -> dict[str, str]:
    """Run protoc; return {file name: text} with the import left as `strata.v1`."""
    from grpc_tools import protoc

    with tempfile.TemporaryDirectory() as out:
        include = os.path.join(os.path.dirname(protoc.__file__), "_proto")
        rc = protoc.main([
            "grpc_tools.protoc",
            f"-I{os.path.join(ROOT, 'proto')}",
            f"-I{include}",
            f"--python_out={out}",
            f"--pyi_out={out}",
            f"--grpc_python_out={out}",
            os.path.join(ROOT, "proto", SOURCE),
        ])
        if rc != 0:
            raise SystemExit(f"protoc failed with exit code {rc}")
        result = {}
        for name in FILES:
            with open(os.path.join(out, "strata", "v1", name)) as f:
                result[name] = f.read()
        return result


def render(texts: dict[str, str], package: str) -> dict[str, str]:
    out = {}
    for name, text in texts.items():
        out[name] = text.replace("from strata.v1 import strata_pb2", f"from {package} import strata_pb2")
    return out


def main(argv: list[str]) -> int:
    check = "--check" in argv
    texts = generate()
    stale = []
    for target, package in TARGETS.items():
        for name, text in render(texts, package).items():
            path = os.path.join(target, name)
            try:
                with open(path) as f:
                    current = f.read()
            except FileNotFoundError:
                current = None
            if current == text:
                continue
            if check:
                stale.append(os.path.relpath(path, ROOT))
            else:
                os.makedirs(target, exist_ok=True)
                with open(path, "w") as f:
                    f.write(text)
                print(f"wrote {os.path.relpath(path, ROOT)}")
    if stale:
        print("stubs out of date with proto/" + SOURCE + ": " + ", ".join(stale)
              + "\nrun: python proto/generate.py", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

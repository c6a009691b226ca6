#!/bin/sh
# On the machine without a package index: sh bench/offline_setup.sh DIR TARGET
# installs DIR/whl into TARGET, copies DIR/site there and puts each model's parts back together
# (bench/offline_bundle.py made DIR). Then: export PYTHONPATH=TARGET:src
set -eu
DIR=$1
TARGET=$2
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$TARGET" "$DIR"/whl/*.whl
cp -r "$DIR"/site/. "$TARGET"/
for parts in "$DIR"/model/*/; do
    target="$TARGET/$(cat "$parts/target")"
    cat "$parts"/part-* > "$target.partial"
    mv "$target.partial" "$target"  # a transfer cut short never leaves half a model under the real name
    echo "assembled $target"
done

#!/usr/bin/env bash
# A peak run whose disk stalls: a fresh local testnet under 1,024 outstanding
# requests, and a large synced write part-way through, which holds every
# replica's syncs up for seconds (issue 13, nineteenth round). Prints the
# bench's summary and each replica's view changes and slow syncs.
#
#   scripts/disk-stall-peak.sh BIN_DIR WORK_DIR [WRITE_MB]
#
# BIN_DIR holds bftnode and bftnode-bench; WORK_DIR (emptied) gets the testnet
# and the write, so put it on the disk the replicas' stores would use.
# WRITE_MB defaults to 1500 (about 6 s of writeback on a 240 MB/s disk).
set -euo pipefail
bin=${1:?BIN_DIR}
work=${2:?WORK_DIR}
write_mb=${3:-1500}
rm -rf "$work"
mkdir -p "$work"
net="$work/testnet"
writer=""
cleanup() {
    if [ -n "$writer" ]; then
        kill "$writer" 2>/dev/null || true
        wait "$writer" 2>/dev/null || true
    fi
    rm -f "$work/big"
    if ! "$bin/bftnode" testnet down --dir "$net" >/dev/null 2>&1; then
        echo "warning: bftnode testnet down --dir $net failed" >&2
    fi
}
"$bin/bftnode" testnet init --dir "$net" --base-port 7000 >/dev/null
trap cleanup EXIT
"$bin/bftnode" testnet up --dir "$net" >/dev/null
sleep 2
(sleep 8 && exec dd if=/dev/zero of="$work/big" bs=1M count="$write_mb" conv=fsync status=none) &
writer=$!
"$bin/bftnode-bench" --testnet "$net" --quiet --outstanding 1024 --duration 14 --warmup 3
if ! wait "$writer"; then
    echo "warning: the ${write_mb} MB write failed (see above)" >&2
fi
writer=""
for i in 0 1 2 3; do
    if ! metrics=$(curl -sSf "localhost:$((7100 + i))/metrics"); then
        echo "replica $i: no metrics"
        continue
    fi
    changes=$(awk '/^bft_view_changes_total/ {print $2}' <<<"$metrics")
    slow=$(awk '/^bft_persist_sync_seconds_bucket\{le="0.5"\}/ {le=$2} /^bft_persist_sync_seconds_count/ {n=$2} END {print (n == "" ? "n/a" : n - le)}' <<<"$metrics")
    echo "replica $i: view changes $changes, synced writes over 0.5 s $slow"
done

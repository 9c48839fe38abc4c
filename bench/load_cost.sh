#!/bin/bash
# The server's cost per message under the side-by-side's own load client (the peers'
# load/loadtest.mjs, ../shared/peers/README.md), on one `messageai serve` alone.
#
#   bench/load_cost.sh cpu|strace|callgrind CHECKOUT PEERS_DIR LOADTEST_ARGS...
#   e.g. bench/load_cost.sh cpu . "$P" --rooms 1 --members 2 --messages 3000 --max-seconds 10
#
# CHECKOUT: a MessageAI tree (this worktree, or a `git archive` export of another commit,
# run with this worktree's .venv and PYTHONPATH at it), served with its own messageai.toml,
# embeddings off (as the side-by-side is run) and auth.scrypt_n = 16 (cheap set-up; the
# measured window is the messages alone). One warm-up run of 100 messages, then the run:
#   cpu        server user and system CPU (/proc/PID/stat, all threads) per acked message
#   strace     syscalls per acked message (`strace -c -f` attached for the run only)
#   callgrind  user-space instructions per message: valgrind with instrumentation off
#              until set-up is done, then runs of K and 3K messages per sender, counts
#              zeroed before and dumped after each; their difference over the difference
#              of acked messages (set-up cancels out). Slow: keep K small (--messages K).
# Prints one line; also the mean commit batch (messageai_commit_batch_size, /metrics).
set -euo pipefail
MODE=$1; CO=$(cd "$2" && pwd); PEERS=$(cd "$3" && pwd); shift 3
HERE=$(cd "$(dirname "$0")/.." && pwd)
PY=$HERE/.venv/bin/python
NODE=${NODE:-node}
OUT=$(mktemp -d)
trap 'rm -rf "$OUT"' EXIT
PORT=$("$PY" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
WRAP=()
[ "$MODE" = callgrind ] && WRAP=(valgrind --tool=callgrind --instr-atstart=no "--callgrind-out-file=$OUT/cg.out")
cd "$CO"
MESSAGEAI_AUTH__SCRYPT_N=16 MESSAGEAI_EMBEDDINGS__ENABLED=false PYTHONPATH=$CO setsid \
  ${WRAP[@]+"${WRAP[@]}"} "$PY" -m messageai serve --config "$CO/messageai.toml" --port "$PORT" \
  --data-dir "$OUT/data" > "$OUT/server.log" 2>&1 < /dev/null &
PID=$!
stop() { kill "$PID" 2>/dev/null || true; wait "$PID" 2>/dev/null || true; }
trap 'stop; rm -rf "$OUT"' EXIT
for _ in $(seq 600); do curl -sf -o /dev/null --max-time 5 "http://127.0.0.1:$PORT/healthz" && break; sleep 1; done
load() {  # one run; prints the JSON medians
  "$NODE" "$PEERS/load/loadtest.mjs" messageai --url "http://127.0.0.1:$PORT" --server-pid "$PID" \
    --runs 1 --quiet-pct 0 --fsync-probe-dir '' --connect-timeout 300 "$@" 2>&1 \
    | sed -n 's/^MEDIAN [^{]*//p'
}
acked() { "$PY" -c 'import json, sys; print(json.loads(sys.argv[1])["acked"])' "$1"; }
batches() { curl -s "http://127.0.0.1:$PORT/metrics" | awk '/^messageai_commit_batch_size_(count|sum)/ {printf "%s ", $2}'; }
[ "$MODE" = callgrind ] && callgrind_control -i on "$PID" > /dev/null
load "$@" --messages 100 > /dev/null
B0=$(batches)
case $MODE in
  cpu)
    read -r U0 S0 < <(awk '{print $14, $15}' "/proc/$PID/stat")
    R=$(load "$@")
    read -r U1 S1 < <(awk '{print $14, $15}' "/proc/$PID/stat")
    A=$(acked "$R"); HZ=$(getconf CLK_TCK)
    RESULT=$("$PY" -c "a=$A; hz=$HZ; u=($U1-$U0)/hz/a*1e6; s=($S1-$S0)/hz/a*1e6; print(f'{a} acked; server CPU µs/msg user {u:.0f} + system {s:.0f} = {u+s:.0f}')") ;;
  strace)
    strace -c -f -p "$PID" -o "$OUT/strace.txt" 2> /dev/null & ST=$!; sleep 1
    R=$(load "$@"); kill -INT "$ST"; wait "$ST" || true
    A=$(acked "$R")
    RESULT=$("$PY" - "$A" "$OUT/strace.txt" <<'PY'
import sys
acked, rows = int(sys.argv[1]), []
for line in open(sys.argv[2]):
    p = line.split()
    if len(p) >= 5 and p[0][0].isdigit() and p[-1] != "total":
        rows.append((p[-1], int(p[3])))
per = sorted(((n / acked, k) for k, n in rows), reverse=True)
print(f"{acked} acked; {sum(v for v, _ in per):.1f} syscalls per message: "
      + ", ".join(f"{k} {v:.2f}" for v, k in per if v >= 0.05))
PY
) ;;
  callgrind)
    callgrind_control -z "$PID" > /dev/null; R1=$(load "$@"); callgrind_control -d "$PID" > /dev/null
    K=$("$PY" -c 'import sys; a = sys.argv[1:]; print(a[a.index("--messages") + 1])' "$@")
    callgrind_control -z "$PID" > /dev/null; R=$(load "$@" --messages $((3 * K)))
    callgrind_control -d "$PID" > /dev/null
    I1=$(awk '/^summary:/ {print $2}' "$OUT/cg.out.1"); I2=$(awk '/^summary:/ {print $2}' "$OUT/cg.out.2")
    A1=$(acked "$R1"); A=$(acked "$R")
    RESULT="$A1 and $A acked; $(( (I2 - I1) / (A - A1) / 1000 ))k instructions per message" ;;
  *) echo "mode: cpu, strace or callgrind" >&2; exit 2 ;;
esac
B1=$(batches)
BATCH=$("$PY" -c 'import sys; c0, s0, c1, s1 = map(float, sys.argv[1:]); print(f"{(s1 - s0) / (c1 - c0):.2f}")' $B0 $B1)
RATE=$(echo "$R" | "$PY" -c 'import json, sys; m = json.load(sys.stdin); print("%s acked/s, machine busy %s %%" % (m["acked_per_s"], m["machine_busy_pct"]))')
echo "$MODE: $RESULT; mean commit batch $BATCH; $RATE"

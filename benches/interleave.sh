#!/usr/bin/env bash
# The `ops` benchmarks, lock-free and locked interleaved: each operation is measured on the
# lock-free cache and then at once on the locked map (A B), and the whole list again for each
# round, so that a ratio compares two measurements taken seconds apart. On a machine whose
# speed drifts, a ratio from one `cargo bench --bench ops` run (every lock-free benchmark
# first, then every locked one) can be off by 2x; these are not.
#
#   bash benches/interleave.sh [ROUNDS] [OPERATION...]
#
# ROUNDS defaults to 3, the operations to all of them. Prints, per operation, the median
# times of both and the ratio lock-free / locked of each round, then min / median / max.
set -euo pipefail
cd "$(dirname "$0")/.."

rounds=${1:-3}
shift || true
ops=("$@")
if [ ${#ops[@]} -eq 0 ]; then
    ops=(get-hit get-miss lookup get_or_insert-hit get_or_insert-fill insert-merge
        replace_range-split drop_range unpin-merge take_modified-1-of-100k truncate-100k)
fi
case $rounds in
    '' | *[!0-9]* | 0) echo "ROUNDS must be a whole number above 0, not '$rounds'" >&2; exit 2 ;;
esac

bin=$(cargo bench --bench ops --no-run --message-format=json 2>/dev/null |
    sed -n 's/.*"executable":"\([^"]*\)".*/\1/p' | tail -1)
[ -x "$bin" ] || { echo "could not build the ops benchmark" >&2; exit 1; }

# The estimate of one benchmark, in nanoseconds (criterion's first "time: [low estimate
# high]"; a second one compares with the last run).
measure() {
    "$bin" --bench --quick --noplot "^ops/100k/$1/$2\$" 2>/dev/null | awk '
        /time:/ && !seen {
            seen = 1
            for (i = 1; $i != "time:"; i++) {}
            v = $(i + 3); u = $(i + 4)
            f = (u == "ps") ? 0.001 : (u == "ns") ? 1 : (u == "µs" || u == "us") ? 1e3 \
                : (u == "ms") ? 1e6 : (u == "s") ? 1e9 : -1
            if (f < 0) { print "unknown unit " u > "/dev/stderr"; exit 1 }
            printf "%.3f\n", v * f
        }'
}

results=$(mktemp)
trap 'rm -f "$results"' EXIT
for r in $(seq "$rounds"); do
    for op in "${ops[@]}"; do
        a=$(measure "$op" lockfree)
        b=$(measure "$op" locked)
        [ -n "$a" ] && [ -n "$b" ] || { echo "no measurement for $op" >&2; exit 1; }
        echo "$op $a $b" >>"$results"
        echo "round $r/$rounds: $op lock-free $a ns, locked $b ns" >&2
    done
done

printf '| operation | lock-free | locked | ratio per round | min / median / max |\n'
printf '| --- | ---: | ---: | --- | ---: |\n'
for op in "${ops[@]}"; do
    awk -v op="$op" '
        function fmt(ns) {
            return ns >= 1e6 ? sprintf("%.1f ms", ns / 1e6) \
                : ns >= 1e3 ? sprintf("%.2f µs", ns / 1e3) : sprintf("%.0f ns", ns)
        }
        function median(a, n,   i, j, t) {
            for (i = 1; i <= n; i++) for (j = i + 1; j <= n; j++) if (a[j] < a[i]) { t = a[i]; a[i] = a[j]; a[j] = t }
            return (n % 2) ? a[(n + 1) / 2] : (a[n / 2] + a[n / 2 + 1]) / 2
        }
        $1 == op { n++; a[n] = $2; b[n] = $3; r[n] = $2 / $3; rs = rs (n > 1 ? ", " : "") sprintf("%.2f", r[n]) }
        END {
            for (i = 1; i <= n; i++) s[i] = r[i]
            m = median(s, n)
            printf "| `%s` | %s | %s | %s | %.2f / %.2f / %.2f |\n", op, fmt(median(a, n)), fmt(median(b, n)), rs, s[1], m, s[n]
        }' "$results"
done

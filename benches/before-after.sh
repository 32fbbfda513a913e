# Sourced by the scripts that run two server binaries, BEFORE and this tree's release build, on
# the same shapes (compare.sh, others.sh): `source benches/before-after.sh DEFAULT_OUT "$@"`
# reads their arguments, BEFORE_BINARY [ROUNDS] [OUT], builds this tree and sets BEFORE, ROUNDS,
# OUT, BEFORE_CONFIG, PORT, AFTER and BENCH.
#
# The BEFORE binary reads the Rocket.toml of its own tree (BEFORE_CONFIG, by default the one two
# levels above target/release/), since a newer Rocket.toml may have keys it does not know.
# PORT (default 8000) is where the servers listen, for a machine where 8000 is taken.
cd "$(dirname "${BASH_SOURCE[0]}")/.."
BEFORE=$2
ROUNDS=${3:-3}
OUT=${4:-$1}
mkdir -p "$OUT"
cargo build --release --bin signpost --bin signpost-bench
BEFORE_CONFIG=${BEFORE_CONFIG:-$(cd "$(dirname "$BEFORE")/../.." && pwd)/Rocket.toml}
PORT=${PORT:-8000}
AFTER=target/release/signpost
BENCH=target/release/signpost-bench

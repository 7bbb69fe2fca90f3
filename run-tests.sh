#!/usr/bin/env bash
# Install imgateway with its test extras into .venv and run the whole suite:
# trial (unit and end-to-end tests), then mypy and the newsfragment check.
# Ends with a plain line "N passed, N failed[, N skipped]" from trial's
# summary; exits non-zero if anything failed.
set -uo pipefail
cd "$(dirname "$0")"

python3 -m venv .venv || exit 1
.venv/bin/pip install -q --disable-pip-version-check -e '.[test]' --config-settings editable_mode=compat || exit 1

status=0
log=$(mktemp)
.venv/bin/python -b -W error -m twisted.trial --reporter=verbose tests 2>&1 | tee "$log"
trialStatus=${PIPESTATUS[0]}
[ "$trialStatus" -eq 0 ] || status=1

echo "== mypy"
.venv/bin/mypy || status=1

echo "== newsfragments"
for f in newsfragments/*; do
  case "$(basename "$f")" in
    .gitignore) ;;
    *.feature|*.bugfix|*.doc|*.misc) ;;
    *) echo "bad newsfragment name: $f (want <issue>.<feature|bugfix|doc|misc>)"; status=1 ;;
  esac
done
.venv/bin/towncrier build --draft --version "$(.venv/bin/python -c "import imgateway; print(imgateway.__version__)")" >/dev/null 2>&1 || { echo "towncrier cannot render newsfragments/"; status=1; }

summary=$(grep -E '^(PASSED|FAILED) \(' "$log" | tail -n 1)
rm -f "$log"
count() { echo "$summary" | grep -oE "$1=[0-9]+" | cut -d= -f2 | head -n 1; }
passed=$(( $(count successes || true) + 0 ))
failed=$(( $(count failures || true) + $(count errors || true) + $(count unexpectedSuccesses || true) + 0 ))
skipped=$(( $(count skips || true) + 0 ))
if [ -z "$summary" ]; then
  echo "trial printed no summary"
  failed=$(( failed + 1 ))
  status=1
fi
[ "$status" -eq 0 ] || [ "$failed" -gt 0 ] || echo "(trial passed; mypy or the newsfragment check failed)"
echo "$passed passed, $failed failed, $skipped skipped"
exit "$status"

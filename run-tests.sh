#!/usr/bin/env bash
# Install imgateway with its test extras into .venv and run the whole suite:
# trial (unit and end-to-end tests), then mypy and the newsfragment check, then
# (on a whole run) the unit tests again on the compiled build (mypyc).
# Ends with a plain line "N passed, N failed[, N skipped]" from trial's
# summary (failed counts the compiled run's too); exits non-zero if anything failed.
#
#   ./run-tests.sh [--no-install] [TESTS...]
#
# Before installing anything it says what: Python packages into .venv/ with pip
# (the project, editable, and what setup.cfg lists: install_requires and the
# "test" extra), and, when run as root with apt-get, the Debian packages of the
# peer servers the interop tests run against (prosody, ejabberd, slapd,
# ldap-utils, lua-unbound, ngircd, inspircd; their system services are kept
# from starting).
#
# --no-install (or IMGATEWAY_NO_INSTALL=1) installs nothing: the suite runs with
# .venv/ as it is, and what is missing is said first. Tests whose peer server is
# missing skip, or fail when CI is set, as always.
#
# TESTS are trial's test names (default: tests), e.g. tests.test_config. Only the
# default runs the compiled build's tests (IMGATEWAY_NO_COMPILED=1 skips them).
set -uo pipefail
cd "$(dirname "$0")"

install=1
case "${IMGATEWAY_NO_INSTALL:-}" in ""|0|no|false) ;; *) install=0 ;; esac
if [ "${1:-}" = "--no-install" ]; then install=0; shift; fi
case "${1:-}" in
  -h|--help) sed -n '2,22p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
  -*) echo "run-tests.sh: unknown option $1 (usage: ./run-tests.sh [--no-install] [TESTS...])" >&2; exit 2 ;;
esac
[ "$#" -gt 0 ] || set -- tests

# What setup.cfg asks for: install_requires and the test extra, one a line.
requirements() {
  python3 - <<'EOF'
import configparser
config = configparser.ConfigParser()
config.read("setup.cfg")
for section, key in (("options", "install_requires"), ("options.extras_require", "test")):
    for line in config.get(section, key, fallback="").splitlines():
        if line.strip():
            print(line.strip())
EOF
}
mapfile -t REQUIREMENTS < <(requirements)

if [ "$install" = 1 ]; then
  echo "== installing into .venv/ with pip (skip with --no-install): imgateway (editable) and ${REQUIREMENTS[*]}"
  python3 -m venv .venv || exit 1
  .venv/bin/pip install -q --disable-pip-version-check -e '.[test]' --config-settings editable_mode=compat || exit 1
else
  echo "== installing nothing (--no-install): using .venv/ as it is"
  if [ ! -x .venv/bin/python ]; then
    echo "missing: .venv/ (create it: python3 -m venv .venv && .venv/bin/pip install -e '.[test]'," \
      "or run ./run-tests.sh without --no-install)"
    exit 1
  fi
  # Distributions named by the requirements that .venv lacks (versions are not checked).
  missingPython=$(.venv/bin/python - imgateway "${REQUIREMENTS[@]}" <<'EOF'
import re, sys
from importlib import metadata
for requirement in sys.argv[1:]:
    name = re.match(r"[A-Za-z0-9._-]+", requirement).group(0)
    try:
        metadata.distribution(name)
    except metadata.PackageNotFoundError:
        print(requirement)
EOF
  )
  if [ -n "$missingPython" ]; then
    echo "missing Python packages in .venv/: ${missingPython//$'\n'/ }" \
      "(install them: .venv/bin/pip install -e '.[test]'); tests needing them fail"
  fi
fi

# Real peer servers for the end-to-end interop tests, from Debian: "command:package ...".
# When one is missing, install it as root with apt-get, never letting the package start a
# system service (a policy-rc.d that denies starts during the install, then the service is
# disabled); without root or apt-get, or with --no-install, just say so (those tests then
# skip, or fail under CI).
# slapd and ldap-utils: the OpenLDAP server the LDAP directory's tests configure and start
# themselves (Debian puts slapd in /usr/sbin, on root's PATH).
# ngircd and inspircd: the IRC servers the IRC bridge's tests start (tests/e2e/ircd.py).
PEERS="prosody:prosody ejabberdctl:ejabberd slapd:slapd ldapmodify:ldap-utils ngircd:ngircd inspircd:inspircd"
PEER_EXTRA_PACKAGES="lua-unbound"   # Prosody's resolver (only Recommended): tests confine it
ensurePeers() {
  local missing=() pair rc=0
  for pair in $PEERS; do
    command -v "${pair%%:*}" >/dev/null 2>&1 || missing+=("${pair##*:}")
  done
  [ "${#missing[@]}" -eq 0 ] && return 0
  if [ "$install" = 0 ] || [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null 2>&1; then
    echo "note: peer servers not installed (${missing[*]}); their interop tests skip (fail when CI is set)." \
      "Install them as root: apt-get install ${missing[*]} $PEER_EXTRA_PACKAGES"
    return 0
  fi
  echo "== installing Debian packages with apt-get (skip with --no-install): ${missing[*]} $PEER_EXTRA_PACKAGES;" \
    "their services are kept from starting and disabled"
  local policy=/usr/sbin/policy-rc.d saved=""
  if [ -e "$policy" ]; then saved=$(mktemp); cp -p "$policy" "$saved"; fi
  printf '#!/bin/sh\nexit 101\n' > "$policy" && chmod 755 "$policy"
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
    "${missing[@]}" $PEER_EXTRA_PACKAGES >/dev/null || rc=1
  if [ -n "$saved" ]; then cp -p "$saved" "$policy"; rm -f "$saved"; else rm -f "$policy"; fi
  local pkg epmdBefore=0
  epmd -names >/dev/null 2>&1 && epmdBefore=1
  for pkg in "${missing[@]}"; do
    # Not at boot either; and stop one that started anyway (systemd or not).
    if [ -d /run/systemd/system ] && command -v systemctl >/dev/null 2>&1; then
      systemctl disable --now "$pkg" >/dev/null 2>&1 || true
    else
      command -v update-rc.d >/dev/null 2>&1 && update-rc.d "$pkg" disable >/dev/null 2>&1
      [ -x "/etc/init.d/$pkg" ] && "/etc/init.d/$pkg" status >/dev/null 2>&1 && "/etc/init.d/$pkg" stop >/dev/null 2>&1
    fi
  done
  # ejabberd's status check (an Erlang node) starts Erlang's epmd daemon: stop it again if it
  # was not running before and no node is registered with it (the tests do not use epmd).
  if [ "$epmdBefore" = 0 ] && epmd -names 2>/dev/null | grep -q 'up and running' \
     && ! epmd -names 2>/dev/null | grep -q '^name '; then
    epmd -kill >/dev/null 2>&1 || true
  fi
  return $rc
}
ensurePeers || echo "warning: installing the peer servers failed; their tests will skip (fail under CI)"

status=0
log=$(mktemp)
# Warnings are errors, but for one of Twisted's own: trial loads every Twisted plugin
# (for its reporters), and on a fresh .venv, before twisted/plugins/dropin.cache exists,
# conch's imports "spwd", which warns on Python 3.11 and 3.12 (logged as an Unhandled Error).
.venv/bin/python -b -W error -W "ignore:'spwd' is deprecated:DeprecationWarning" \
  -m twisted.trial --reporter=verbose "$@" 2>&1 | tee "$log"
trialStatus=${PIPESTATUS[0]}
[ "$trialStatus" -eq 0 ] || status=1

echo "== mypy"
.venv/bin/mypy || status=1

echo "== newsfragments"
for f in newsfragments/*; do
  [ -e "$f" ] || continue   # an empty folder
  case "$(basename "$f")" in
    .gitignore) ;;
    *)
      # <issue>.<type>, or <issue>.<type>.<n> for several changes of one type
      echo "$(basename "$f")" | grep -qE '^[0-9]+\.(feature|bugfix|doc|misc)(\.[0-9]+)?$' \
        || { echo "bad newsfragment name: $f (want <issue>.<feature|bugfix|doc|misc>[.<n>])"; status=1; } ;;
  esac
done
.venv/bin/towncrier build --draft --version "$(.venv/bin/python -c "import imgateway; print(imgateway.__version__)")" >/dev/null 2>&1 || { echo "towncrier cannot render newsfragments/"; status=1; }

# The compiled build (docs/performance.md, "The compiled build"), on a whole run (no TESTS given;
# IMGATEWAY_NO_COMPILED=1 skips it): a copy of the tree in build/compiled/, built in place with
# IMGATEWAY_COMPILE=1 (setup.py compiles imgateway/_compiled.py's COMPILED_MODULES with mypyc), then
# the unit tests (tests/test_*.py, not tests/e2e/) on that copy with IMGATEWAY_COMPILED=1 in the
# environment, where tests.test_compiled fails unless each of those modules was loaded from its C
# extension (and, in the run above, from its source). About 2 to 3 minutes on the 2 shared cores.
compiledFailed=0
case "${IMGATEWAY_NO_COMPILED:-}" in ""|0|no|false) compiledRun=1 ;; *) compiledRun=0 ;; esac
[ "$*" = "tests" ] || compiledRun=0
if [ "$compiledRun" = 1 ]; then
  echo "== compiled build (mypyc): the unit tests on a copy built with IMGATEWAY_COMPILE=1 in build/compiled/ (skip with IMGATEWAY_NO_COMPILED=1)"
  compiledStart=$SECONDS
  compiled=build/compiled
  python="$PWD/.venv/bin/python"
  compiledLog=$(mktemp)
  rm -rf "$compiled" && mkdir -p "$compiled" \
    && tar -c --exclude=__pycache__ --exclude='*.so' --exclude=dropin.cache --exclude='_trial_temp*' \
         imgateway tests twisted bench docs etc setup.py setup.cfg pyproject.toml README.md | tar -x -C "$compiled" \
    && (cd "$compiled" && IMGATEWAY_COMPILE=1 "$python" setup.py -q build_ext --inplace) >"$compiledLog" 2>&1
  if [ $? -ne 0 ]; then
    tail -n 40 "$compiledLog"
    echo "the compiled build failed (it needs mypy, a C compiler and the Python headers)"
    compiledFailed=1
  else
    mapfile -t unitTests < <(cd tests && ls test_*.py | sed 's/^/tests./; s/\.py$//')
    (cd "$compiled" && IMGATEWAY_COMPILED=1 "$python" -b -W error -W "ignore:'spwd' is deprecated:DeprecationWarning" \
       -m twisted.trial --reporter=text "${unitTests[@]}") >"$compiledLog" 2>&1
    compiledSummary=$(grep -E '^(PASSED|FAILED) \(' "$compiledLog" | tail -n 1)
    if [ -z "$compiledSummary" ] || [[ "$compiledSummary" == FAILED* ]]; then
      cat "$compiledLog"
      for key in failures errors unexpectedSuccesses; do
        n=$(echo "$compiledSummary" | grep -oE "$key=[0-9]+" | cut -d= -f2 | head -n 1)
        compiledFailed=$(( compiledFailed + ${n:-0} ))
      done
      [ "$compiledFailed" -gt 0 ] || compiledFailed=1
    fi
    echo "compiled build: ${compiledSummary:-trial printed no summary} ($(( SECONDS - compiledStart )) s with the build)"
  fi
  rm -f "$compiledLog"
  [ "$compiledFailed" -eq 0 ] || status=1
fi

summary=$(grep -E '^(PASSED|FAILED) \(' "$log" | tail -n 1)
rm -f "$log"
count() { echo "$summary" | grep -oE "$1=[0-9]+" | cut -d= -f2 | head -n 1; }
passed=$(( $(count successes || true) + 0 ))
failed=$(( $(count failures || true) + $(count errors || true) + $(count unexpectedSuccesses || true) + compiledFailed ))
skipped=$(( $(count skips || true) + 0 ))
if [ -z "$summary" ]; then
  echo "trial printed no summary"
  failed=$(( failed + 1 ))
  status=1
fi
[ "$status" -eq 0 ] || [ "$failed" -gt 0 ] || echo "(trial passed; mypy or the newsfragment check failed)"
echo "$passed passed, $failed failed, $skipped skipped"
exit "$status"

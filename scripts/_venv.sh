# Sourced by scripts/serve, scripts/test and scripts/crossroads, from the repository root.
#
#   ensure_venv NAME [test]
#
# Makes sure .venv exists and holds Crossroads as pyproject.toml describes it ("test": with the test dependencies
# too), the server's dependencies at the versions requirements.lock pins, checked against its hashes. It installs
# only when pyproject.toml or requirements.lock changed since the last install (the stamp .venv/.crossroads-installed
# holds their digest), so a start needs neither time nor a network once .venv is complete; the code itself is installed
# editable, so changes to it need no install. pip's output goes to .venv/install.log; NAME prefixes the one line
# printed before an install (and the end of the log when it fails).

_crossroads_digest() {
  if command -v sha256sum >/dev/null 2>&1; then cat "$@" | sha256sum | cut -d' ' -f1
  elif command -v shasum >/dev/null 2>&1; then cat "$@" | shasum -a 256 | cut -d' ' -f1
  else cat "$@" | cksum | cut -d' ' -f1,2 | tr ' ' '-'; fi
}

ensure_venv() {
  local name="$1" extras="${2:-}" python="${PYTHON:-python3}" stamp=.venv/.crossroads-installed log=.venv/install.log
  local want have_digest="" have_extras="" reason
  if [ ! -x .venv/bin/python ]; then
    echo "$name: creating .venv with $python" >&2
    "$python" -m venv .venv
  fi
  want="$(_crossroads_digest pyproject.toml requirements.lock)"
  if [ -f "$stamp" ]; then read -r have_digest have_extras < "$stamp" || true; fi
  if [ "$have_digest" = "$want" ] && [ -x .venv/bin/crossroads ] \
      && { [ -z "$extras" ] || [ "$have_extras" = "$extras" ]; }; then
    return 0
  fi
  if [ -z "$have_digest" ]; then reason="first install"
  elif [ "$have_digest" != "$want" ]; then reason="pyproject.toml or requirements.lock changed"
  else reason="${extras:-its} dependencies missing"; fi
  echo "$name: installing Crossroads${extras:+ with its $extras dependencies} into .venv ($reason; this can take a" \
       "minute; pip's output: $log)" >&2
  .venv/bin/python -m pip install --upgrade pip >"$log" 2>&1 || true  # a newer pip is welcome, not needed
  if ! { .venv/bin/python -m pip install --require-hashes -r requirements.lock \
         && .venv/bin/python -m pip install -e ".${extras:+[$extras]}"; } >>"$log" 2>&1; then
    echo "$name: the install failed; the end of $log:" >&2
    tail -n 25 "$log" >&2
    exit 1
  fi
  echo "$want ${extras:-base}" > "$stamp"
}

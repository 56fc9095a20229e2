#!/usr/bin/env bash
# tidy.sh fix|check: go mod tidy for each of the repository's four modules.
#
# Each go.mod names its siblings (gen, client, plugin) at the version they
# are released with (README: Releasing). Until that version is tagged no
# module proxy has it: go.work maps it to this tree, but go mod tidy ignores
# go.work. So tidy runs with the same mapping as temporary replace
# directives, dropped again afterwards; a replaced module needs no go.sum
# line, which is why the committed go.sum files hold none for the siblings
# (the release adds them: README, Releasing).
#
# fix rewrites go.mod and go.sum; check restores them and fails when tidy
# would change either.
set -euo pipefail
mode=${1:?usage: tidy.sh fix|check}
cd "$(dirname "$0")/.."
root=$PWD
module=github.com/plugincontrol/plugincontrol
siblings=(gen client plugin)
export GOWORK=off

# go.work maps the very versions the go.mod files name (README: Releasing).
for m in . "${siblings[@]}"; do
  awk -v mod="$module/" 'index($1, mod) == 1 && $2 ~ /^v/ { print $1, $2 }' "$m/go.mod"
done | sort -u | while read -r p v; do
  if ! grep -q "^[[:space:]]*$p $v => " go.work; then
    echo "go.work does not map $p $v (required by a go.mod) to this tree"
    exit 1
  fi
done

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
failed=0
for m in . "${siblings[@]}"; do
  (
    cd "$m"
    cp go.mod "$tmp/go.mod"; cp go.sum "$tmp/go.sum"
    restore() { cp "$tmp/go.mod" go.mod; cp "$tmp/go.sum" go.sum; }
    trap restore ERR
    args=()
    for s in "${siblings[@]}"; do
      [ "$m" = "$s" ] && continue
      args+=("-replace=$module/$s=$root/$s")
    done
    go mod edit "${args[@]}"
    go mod tidy
    for s in "${siblings[@]}"; do
      [ "$m" = "$s" ] && continue
      go mod edit "-dropreplace=$module/$s"
    done
    # go mod edit leaves the blank lines the replace block took.
    go mod edit -fmt
    if [ "$mode" = check ]; then
      if ! cmp -s go.mod "$tmp/go.mod" || ! cmp -s go.sum "$tmp/go.sum"; then
        diff -u "$tmp/go.mod" go.mod || true
        restore
        echo "$m: go.mod/go.sum are not tidy (run make tidy)"
        exit 1
      fi
      restore
    fi
  ) || failed=1
done
[ "$failed" = 0 ] && echo "go.mod files are tidy"
exit "$failed"

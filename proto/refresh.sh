#!/usr/bin/env bash
# Re-vendors the Cloud Tasks v2 protos and exactly the imports they need, verbatim, from the
# crates.io package `cloud-tasks-emulator` (which ships current googleapis copies), then rewrites
# SHA256SUMS and README.md. Usage: proto/refresh.sh [VERSION]   (default: the recorded version)
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
version="${1:-$(sed -n 's/^- version: //p' "$here/README.md")}"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT

# Let cargo fetch the package, then ask it where the sources are.
mkdir -p "$work/fetch/src"
cat >"$work/fetch/Cargo.toml" <<TOML
[package]
name = "fetch-protos"
version = "0.0.0"
edition = "2024"
[dependencies]
cloud-tasks-emulator = "=$version"
TOML
touch "$work/fetch/src/lib.rs"
manifest="$(cargo metadata --manifest-path "$work/fetch/Cargo.toml" --format-version 1 |
    python3 -c 'import json,sys; print(next(p["manifest_path"] for p in json.load(sys.stdin)["packages"] if p["name"]=="cloud-tasks-emulator"))')"
source="$(dirname "$manifest")/proto"

# The tasks v2 protos and the transitive closure of their imports (protobuf's own are built in).
pending=$(cd "$source" && ls google/cloud/tasks/v2/*.proto)
files=""
while [ -n "$pending" ]; do
    next=""
    for file in $pending; do
        case " $files " in *" $file "*) continue ;; esac
        files="$files $file"
        for import in $(sed -n 's/^import "\(.*\)";/\1/p' "$source/$file"); do
            case "$import" in google/protobuf/*) ;; *) next="$next $import" ;; esac
        done
    done
    pending="$next"
done

rm -rf "$here/google"
for file in $files; do
    mkdir -p "$here/$(dirname "$file")"
    cp "$source/$file" "$here/$file"
done
(cd "$here" && find google -name '*.proto' | sort | xargs sha256sum >SHA256SUMS)

cat >"$here/README.md" <<MD
# Vendored protos

Google's Cloud Tasks v2 API definitions and exactly the files they import, copied verbatim.
They are licensed by Google under the Apache License 2.0 (\`LICENSE\`); each file keeps its header.

- source package: crates.io \`cloud-tasks-emulator\`, directory \`proto/\` (current googleapis
  copies, with BatchCreateTasks and CmekConfig)
- version: $version
- refreshed with: \`proto/refresh.sh [VERSION]\`
- checksums: \`SHA256SUMS\` (checked by \`.ci/run\` with \`sha256sum -c\`)

| file | sha256 |
|---|---|
$(awk '{print "| `" $2 "` | `" $1 "` |"}' "$here/SHA256SUMS")
MD
echo "vendored$(echo "$files" | wc -w | sed 's/^/ /') files from cloud-tasks-emulator $version"

#!/usr/bin/env bash
# Installs the Debian packages tidemark's build needs, if any is missing:
# - cmake, make, pkg-config and the headers of OpenSSL, SASL, zstd, zlib and libcurl for
#   librdkafka, which the rdkafka crate builds from source;
# - protobuf-compiler (protoc) for the protobuf code generation of tidemark-proto;
# - g++ and libclang-dev for RocksDB, which the rocksdb crate builds from source and binds with
#   bindgen.
# Runs apt-get as root, or through sudo when not root. Does nothing when all are present.
set -euo pipefail

packages=(
  cmake make pkg-config
  libssl-dev libsasl2-dev libzstd-dev zlib1g-dev libcurl4-openssl-dev
  protobuf-compiler
  g++ libclang-dev
)

missing=()
for package in "${packages[@]}"; do
  if ! dpkg-query -W -f='${Status}' "$package" 2>/dev/null | grep -q "install ok installed"; then
    missing+=("$package")
  fi
done
if [ ${#missing[@]} -eq 0 ]; then
  exit 0
fi

sudo=""
if [ "$(id -u)" -ne 0 ]; then
  sudo="sudo"
fi
echo "installing build dependencies: ${missing[*]}" >&2
$sudo apt-get update -qq
DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}" >&2

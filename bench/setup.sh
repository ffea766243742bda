#!/usr/bin/env bash
# Install the bench prerequisites that are missing (Debian/Ubuntu): iperf3, haproxy, OpenSSH,
# redis-server (the cluster phase's presence store; scripts/install-test-deps.sh installs it too).
# Usage: bench/setup.sh   (run as root, or with sudo available)
set -eu
declare -A pkg_for=(
  [iperf3]=iperf3
  [haproxy]=haproxy
  [/usr/sbin/sshd]=openssh-server
  [ssh]=openssh-client
  [ssh-keygen]=openssh-client
  [/usr/bin/redis-server]=redis-server
)
missing=()
for tool in "${!pkg_for[@]}"; do
  if [[ $tool == /* ]]; then
    [[ -x $tool ]] && continue
  else
    command -v "$tool" >/dev/null 2>&1 && continue
    [[ -x /usr/sbin/$tool ]] && continue
  fi
  pkg=${pkg_for[$tool]}
  [[ " ${missing[*]-} " == *" $pkg "* ]] || missing+=("$pkg")
done
if [[ ${#missing[@]} -eq 0 ]]; then
  echo "bench/setup.sh: all prerequisites present" >&2
  exit 0
fi
if ! command -v apt-get >/dev/null 2>&1; then
  echo "bench/setup.sh: missing ${missing[*]} and apt-get is not available; install them by hand" >&2
  exit 1
fi
sudo=()
if [[ $(id -u) -ne 0 ]]; then
  command -v sudo >/dev/null 2>&1 || { echo "bench/setup.sh: need root (or sudo) to install ${missing[*]}" >&2; exit 1; }
  sudo=(sudo)
fi
echo "bench/setup.sh: installing ${missing[*]} with apt-get" >&2
export DEBIAN_FRONTEND=noninteractive
# Update the package lists once if they were never fetched (or the install fails without it).
if ! compgen -G "/var/lib/apt/lists/*_Packages" >/dev/null; then
  "${sudo[@]}" apt-get update -qq
fi
if ! "${sudo[@]}" apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null; then
  "${sudo[@]}" apt-get update -qq
  "${sudo[@]}" apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
echo "bench/setup.sh: installed ${missing[*]}" >&2

#!/usr/bin/env bash
# System packages rtgenre needs (Debian/Ubuntu), installed only when missing; both README commands call this.
#   runtime:  libportaudio2 (sounddevice), libsndfile1 (soundfile), ffmpeg (MP3 files, --input URL)
#   tests:    pulseaudio + ALSA's pulse plugin (a virtual capture device), jackd2 (virtual MIDI ports), tmux (dashboard)
#             icecast2 (a live stream server for the reconnect tests, run as a normal process on 127.0.0.1)
#   --train:  fluidsynth + a General MIDI soundfont and Debian's game-music packages, to rebuild the training corpora
set -euo pipefail
PKGS=(libportaudio2 libsndfile1 ffmpeg
      pulseaudio pulseaudio-utils libasound2-plugins alsa-utils
      jackd2 libjack-jackd2-0 tmux icecast2)
if [ "${1:-}" = "--train" ]; then
  PKGS+=(fluidsynth fluid-soundfont-gm
         wesnoth-music warzone2100-music fb-music-high nexuiz-music ufoai-music hyperrogue-music)
fi
missing=()
for p in "${PKGS[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
[ ${#missing[@]} -eq 0 ] && exit 0
if ! command -v apt-get >/dev/null; then
  echo "rtgenre: please install these system packages with your package manager: ${missing[*]}" >&2
  exit 1
fi
SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
echo "rtgenre: installing system packages: ${missing[*]}" >&2
$SUDO apt-get update -qq
DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null

"""Build the ``games`` corpus: the music of Debian's game-music packages, 16 kHz mono.

Real, produced, unlabelled music (orchestral, rock, electronic, ambient) for
distillation: the teachers supply all targets.  Install the packages first
(``apt-get install wesnoth-music warzone2100-music fb-music-high nexuiz-music
ufoai-music hyperrogue-music``), then::

    python tools/corpus_games.py [--out corpora/games] [--max-minutes 6]

Audio files listed by ``dpkg -L`` are decoded with ffmpeg; ``.pk3`` archives
(zip) are opened and their audio members decoded.  Files ffmpeg cannot decode
(e.g. tracker modules without libopenmpt) are skipped and counted.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from rtgenre.progress import WorkProgress
from rtgenre.training.corpus import Track, convert_audio, write_manifest

PACKAGES = ("wesnoth-music", "warzone2100-music", "fb-music-high", "nexuiz-music", "ufoai-music", "hyperrogue-music")
AUDIO = (".ogg", ".mp3", ".flac", ".wav", ".opus", ".xm", ".mod", ".it", ".s3m")


def package_files(package: str) -> list[Path]:
    """Files installed by a Debian package (empty if it is not installed)."""
    r = subprocess.run(["dpkg", "-L", package], capture_output=True, text=True, check=False)
    if r.returncode != 0:
        return []
    files = [Path(line) for line in r.stdout.splitlines() if line.startswith("/usr/share/")]
    deps = subprocess.run(["dpkg-query", "-W", "-f=${Depends}", package], capture_output=True, text=True, check=False).stdout
    for dep in deps.split(","):  # e.g. wesnoth-music -> wesnoth-1.16-music holds the files
        name = dep.strip().split(" ")[0]
        if name.endswith("-music") and name != package:
            files += package_files(name)
    return [f for f in files if f.is_file()]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=Path("corpora/games"))
    ap.add_argument("--max-minutes", type=float, default=6.0, help="keep at most this much of each track (default: 6)")
    args = ap.parse_args()
    tracks: list[Track] = []
    skipped = 0
    for package in PACKAGES:
        files = sorted(set(package_files(package)))
        if not files:
            print(f"{package}: not installed, skipped")
            continue
        with tempfile.TemporaryDirectory() as tmp:
            sources: list[tuple[str, Path]] = []
            for f in files:
                if f.suffix.lower() in AUDIO:
                    sources.append((f.stem, f))
                elif f.suffix.lower() == ".pk3":
                    with zipfile.ZipFile(f) as z:
                        for m in z.namelist():
                            if Path(m).suffix.lower() in AUDIO:
                                sources.append((Path(m).stem, Path(z.extract(m, tmp))))
            n = 0
            with WorkProgress(package, len(sources)) as bar:
                for stem, src in bar.track(sources):
                    dst = args.out / package / f"{stem}.wav"
                    try:
                        seconds = convert_audio(src, dst)
                    except subprocess.CalledProcessError:
                        skipped += 1
                        continue
                    if seconds > args.max_minutes * 60:
                        import soundfile as sf

                        audio, rate = sf.read(str(dst), frames=int(args.max_minutes * 60 * 16000), dtype="int16")
                        sf.write(str(dst), audio, rate, subtype="PCM_16")
                        seconds = len(audio) / rate
                    if seconds < 8.0:
                        dst.unlink()
                        continue
                    tracks.append(Track(dst, seconds, extra={"source": package}))
                    n += 1
                    bar.add_audio(seconds)
            print(f"{package}: {n} tracks")
    write_manifest(args.out, tracks)
    hours = sum(t.seconds for t in tracks) / 3600
    print(f"games corpus: {len(tracks)} tracks, {hours:.2f} h, {skipped} undecodable files skipped -> {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
